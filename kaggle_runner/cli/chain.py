"""``kr chain --sessions N``: train across sessions, each resuming from the checkpoint the previous published.

Run it again after any interruption (Ctrl-C, kill -9, reboot): it continues the same chain. A chain owns its
configuration: the resolved kr.toml is stored in chain.json when the chain starts and every session, reruns
included, renders from that snapshot, wherever ``kr chain`` runs. A rerun may change only the options in
``RERUN_OPTIONS``; ``--update-config`` adopts an edited kr.toml for the rest of the chain, ``--new`` starts
a new chain with it. The state machine is in ``kaggle_runner/chain.py`` and its README.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kaggle_runner import chain, chain_state
from kaggle_runner.chain_summary import summarize
from kaggle_runner.cli._app import _Options, command, open_backend, print_json, progress, warn
from kaggle_runner.errors import KrError, UsageError

if TYPE_CHECKING:
    from kaggle_runner.backends.base import Backend
    from kaggle_runner.config import KrConfig
    from kaggle_runner.notify import Notifier

# Multiplies every interval and timeout of the chain (kaggle_runner.chain.Timing): the local backend's
# kernels take seconds, not hours; tests and the emulator scale further down.
TIME_SCALE_ENV_VAR = "KR_CHAIN_TIME_SCALE"
LOCAL_TIME_SCALE = 1 / 30
# What a rerun of an existing chain may change (README "Rerunning a chain"); everything else is the chain's.
RERUN_OPTIONS = ("--sessions", "--until-epoch", "--max-retries", "--wait-for-quota", "--notify-cmd",
                 "--notify-url", "--follow")
# Settings that name what a chain drives: --update-config cannot change them.
IDENTITY_KEYS = ("backend", "kernel_slug", "dataset_slug", "username")
DEFAULT_MAX_RETRIES = 2


@dataclasses.dataclass(frozen=True)
class RerunOptions:
    """The options a rerun may change; None keeps the chain's stored value."""

    sessions: int | None
    until_epoch: int | None
    max_retries: int | None
    wait_for_quota: bool | None


@command("chain")
def chain_command(
    sessions: Annotated[
        int | None,
        typer.Option("--sessions", "-n", min=1, help="Sessions in all (needed to start a chain; a rerun may raise it)."),
    ] = None,
    until_epoch: Annotated[
        int | None, typer.Option("--until-epoch", min=1, help="Stop once training reached this epoch.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="kaggle or local (default: the config's backend).")
    ] = None,
    config_path: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="kr.toml (default: the global --config or ./kr.toml)."),
    ] = None,
    max_retries: Annotated[
        int | None,
        typer.Option("--max-retries", min=0, help=f"Retries of a session whose kernel fails (default {DEFAULT_MAX_RETRIES})."),
    ] = None,
    wait_for_quota: Annotated[
        bool | None,
        typer.Option("--wait-for-quota/--no-wait-for-quota", help="When the weekly GPU quota runs out, wait for its reset."),
    ] = None,
    notify_cmd: Annotated[
        str | None,
        typer.Option("--notify-cmd", help="Shell command run at every state change (event JSON on stdin)."),
    ] = None,
    notify_url: Annotated[
        str | None, typer.Option("--notify-url", help="URL that receives every state change as a JSON POST.")
    ] = None,
    chain_id: Annotated[
        str | None, typer.Option("--chain", help="Continue this chain (default: the newest one of this kernel).")
    ] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new chain (from scratch) even if one exists.")] = False,
    update_config: Annotated[
        bool, typer.Option("--update-config", help="Continue the chain with the current kr.toml's settings.")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print each kernel's log as it runs.")] = False,
    smoke: Annotated[
        bool, typer.Option("--smoke", help="2 short sessions of a tiny model through the whole loop, timed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain's summary as JSON at the end.")] = False,
) -> None:
    """Run N sessions in a row; each resumes from the checkpoint dataset the previous one published."""
    if chain_id and new:
        raise UsageError("--chain and --new contradict each other", hint="use one of them")
    if new and update_config:
        raise UsageError("--new already starts from the current kr.toml; --update-config is for an existing chain")
    rerun = RerunOptions(sessions, until_epoch, max_retries, wait_for_quota)
    from kaggle_runner.notify import Notifier

    notifier = Notifier(command=notify_cmd, url=notify_url, warn=progress)
    if smoke:
        _smoke(chain_id, new, update_config, rerun, config_path, backend, notifier, follow, as_json)
        return
    record = _open_chain(chain_id, new=new, backend=backend, config_path=config_path, rerun=rerun)
    with chain_state.chain_lock(record.spec.chain_id):
        record = chain_state.load_chain(record.spec.chain_id)  # what the previous holder of the lock left
        if record.spec.config is None and not update_config:
            progress(f"chain {record.spec.chain_id} was started by an older kr and keeps no settings: "
                     "it takes the current kr.toml's and keeps them from now on")
        if update_config or record.spec.config is None:
            _update_config(record, _current_config(config_path, backend))
        apply_rerun_options(record, rerun)
        chain_state.save_chain(record)
        config = chain_config(record)
        finished_before = record.state is chain_state.ChainState.SUCCEEDED
        record = _run_with_display(record, _backend(config), config, notifier, follow=follow)
    _report(record, as_json)
    if not finished_before:
        _show_reading(record)


def _smoke(chain_id: str | None, new: bool, update_config: bool, rerun: RerunOptions, config_path: Path | None,
           backend: str | None, notifier: Notifier, follow: bool, as_json: bool) -> None:
    """``--smoke``: a new 2-session chain of the user's settings made small (kaggle_runner.smoke), timed."""
    from kaggle_runner.smoke import SESSIONS, smoke_config, stage_table

    given = [flag for flag, value in (("--chain", chain_id), ("--new", new), ("--update-config", update_config),
                                      ("--sessions", rerun.sessions), ("--until-epoch", rerun.until_epoch)) if value]
    if given:
        raise UsageError(f"--smoke runs a chain of its own: leave out {', '.join(given)}")
    config = smoke_config(_current_config(config_path, backend))
    target = _backend(config)
    progress(f"smoke chain: {SESSIONS} sessions of {config.kernel_slug} (tiny model, a few steps each)")
    record = new_chain(config, target, RerunOptions(SESSIONS, None, 0, False))
    with chain_state.chain_lock(record.spec.chain_id):
        record = _run_with_display(record, target, config, notifier, follow=follow)
    for line in stage_table(record):
        progress(line)
    _report(record, as_json)


# ------------------------------------------------------------------------------------------ which chain


def _open_chain(
    chain_id: str | None, *, new: bool, backend: str | None, config_path: Path | None, rerun: RerunOptions
) -> chain_state.ChainRecord:
    """The chain to drive: the one named, else the newest one of this kernel, else a new one."""
    if chain_id:
        record = chain_state.load_chain(chain_id)
        if backend is not None and backend != record.spec.backend:
            raise UsageError(f"chain {chain_id} runs on the {record.spec.backend} backend, not {backend}",
                             hint="leave out --backend: a chain keeps its backend")
        _say_if_config_differs(record, config_path)
        return record
    config = _current_config(config_path, backend)
    target = _backend(config)
    kernel_ref = f"{target.username()}/{config.kernel_slug}"
    if not new:
        found = chain_state.latest_chain(None, backend=config.backend, kernel_ref=kernel_ref)
        if found is not None:
            progress(_continuing(found, rerun.sessions))
            _say_if_config_differs(found, config_path, config)
            return found
    if rerun.sessions is None:
        raise UsageError("--sessions is needed to start a chain", hint="e.g. kr chain --sessions 4")
    return new_chain(config, target, rerun)


def new_chain(config: KrConfig, target: Backend, rerun: RerunOptions) -> chain_state.ChainRecord:
    """Create a chain of ``rerun.sessions`` sessions that renders every session from ``config``."""
    owner = target.username()
    assert rerun.sessions is not None  # checked by the caller
    spec = chain_state.ChainSpec(
        chain_id=chain_state.new_chain_id(),
        backend=config.backend,
        kernel_ref=f"{owner}/{config.kernel_slug}",
        dataset_ref=f"{owner}/{config.dataset_slug}",
        sessions=rerun.sessions,
        session_budget_s=float(config.session_budget_s),
        epochs_per_session=config.epochs_per_session,
        until_epoch=rerun.until_epoch,
        max_retries=DEFAULT_MAX_RETRIES if rerun.max_retries is None else rerun.max_retries,
        wait_for_quota=bool(rerun.wait_for_quota),
        accelerator=config.accelerator,
        config_path=str(config.source) if config.source else None,
        config=config.to_mapping(),
    )
    record = chain_state.create_chain(spec)
    progress(f"chain {spec.chain_id}: {spec.sessions} session(s) of {spec.kernel_ref} on the {spec.backend} backend")
    return record


def _continuing(found: chain_state.ChainRecord, sessions: int | None) -> str:
    spec = found.spec
    if found.state is chain_state.ChainState.SUCCEEDED and (sessions or 0) <= spec.sessions:
        return (f"chain {spec.chain_id} already finished its {spec.sessions} session(s): --sessions "
                f"{spec.sessions + 1} or more continues it, --new starts another from scratch")
    return (f"continuing chain {spec.chain_id} (session {found.session} of {spec.sessions}, {found.state.value}); "
            "--new starts another")


# ------------------------------------------------------------------------------------------ its settings


def chain_config(record: chain_state.ChainRecord) -> KrConfig:
    """The configuration every session of the chain renders from: its snapshot."""
    from kaggle_runner.config import config_from_mapping

    assert record.spec.config is not None  # chain_command adopts one for a chain made by an older kr
    return config_from_mapping(record.spec.config, where=f"chain {record.spec.chain_id}")


def _current_config(config_path: Path | None, backend: str | None) -> KrConfig:
    from kaggle_runner.cli.launch import configured
    from kaggle_runner.config import load_config

    loaded = load_config(config_path or _Options.config_path, warn=warn)
    return configured(loaded, backend=backend, accelerator=None)


def _say_if_config_differs(record: chain_state.ChainRecord, config_path: Path | None,
                           current: KrConfig | None = None) -> None:
    """A kr.toml edited after the chain started is not picked up: say so, and how to use it."""
    from kaggle_runner.config import changed_keys, find_config, load_config

    if record.spec.config is None:
        return
    if current is None:
        path = config_path or _Options.config_path or find_config()
        if path is None:
            return
        current = load_config(path)
    if current.kernel_slug != record.spec.kernel_ref.split("/")[-1]:
        return  # the file is about another kernel: it says nothing about this chain
    changed = changed_keys(record.spec.config, current.to_mapping())
    if changed:
        source = record.spec.config_path or "its kr.toml"
        warn(f"kr.toml differs from the settings chain {record.spec.chain_id} started with ({source}) in "
             f"{', '.join(changed)}: the chain keeps its own. --update-config continues it with the new "
             "settings, --new starts a new chain with them")


def _update_config(record: chain_state.ChainRecord, config: KrConfig) -> None:
    """``--update-config``: the rest of the chain renders from ``config``; what names the chain stays."""
    from kaggle_runner.config import changed_keys

    old = record.spec.config or {}
    locked = [key for key in IDENTITY_KEYS if old and old.get(key) != config.to_mapping().get(key)]
    if config.kernel_slug != record.spec.kernel_ref.split("/")[-1]:
        locked.append("kernel_slug")
    if locked:
        raise UsageError(f"--update-config cannot change {', '.join(sorted(set(locked)))} of chain "
                         f"{record.spec.chain_id}: they name what it drives", hint="--new starts a chain with them")
    changed = changed_keys(old, config.to_mapping())
    spec = record.spec
    spec.config = config.to_mapping()
    spec.config_path = str(config.source) if config.source else spec.config_path
    spec.session_budget_s = float(config.session_budget_s)
    spec.epochs_per_session = config.epochs_per_session
    spec.accelerator = config.accelerator
    progress(f"chain {spec.chain_id} continues with the current kr.toml"
             + (f" (changed: {', '.join(changed)})" if changed else " (nothing changed)"))


def apply_rerun_options(record: chain_state.ChainRecord, rerun: RerunOptions) -> None:
    """What a rerun may change; an option left out keeps the chain's stored value."""
    spec = record.spec
    if rerun.sessions is not None:
        if rerun.sessions < record.session:
            raise UsageError(
                f"chain {spec.chain_id} is already at session {record.session}: --sessions {rerun.sessions} is too few"
            )
        spec.sessions = rerun.sessions
    if rerun.until_epoch is not None:
        spec.until_epoch = rerun.until_epoch
    if rerun.max_retries is not None:
        spec.max_retries = rerun.max_retries
    if rerun.wait_for_quota is not None:
        spec.wait_for_quota = rerun.wait_for_quota


# ------------------------------------------------------------------------------------------ running it


def _run_with_display(
    record: chain_state.ChainRecord, target: Backend, config: KrConfig, notifier: Notifier, *, follow: bool
) -> chain_state.ChainRecord:
    """Drive the chain with the live display on stderr: a rich panel on a terminal, plain lines elsewhere.
    Log lines always feed the display; ``--follow`` also prints them in plain mode."""
    from kaggle_runner.progress import SessionProgress

    spec = record.spec
    owner = spec.kernel_ref.split("/")[0]
    with SessionProgress(
        title=spec.chain_id, budget_s=spec.session_budget_s, total_epochs=spec.epochs_per_session,
        plain_log_lines=follow,
    ) as display:
        runner = chain.ChainRunner(
            record,
            target,
            chain.config_renderer(config, owner),
            timing=chain_timing(spec.backend),
            notify=notifier,
            observer=display,
            follow_logs=True,
        )
        return runner.run()


def _backend(config: KrConfig) -> Backend:
    return open_backend(config.backend, config)


def chain_timing(backend: str) -> chain.Timing:
    """The chain's intervals for this backend, scaled by ``$KR_CHAIN_TIME_SCALE`` when set."""
    scale = 1.0 if backend == "kaggle" else LOCAL_TIME_SCALE
    raw = os.environ.get(TIME_SCALE_ENV_VAR)
    if raw:
        try:
            scale = float(raw)
        except ValueError:
            raise UsageError(f"{TIME_SCALE_ENV_VAR}={raw!r} is not a number") from None
        if not scale > 0:
            raise UsageError(f"{TIME_SCALE_ENV_VAR}={raw!r} must be more than 0")
    return chain.Timing().scaled(scale)


def _report(record: chain_state.ChainRecord, as_json: bool) -> None:
    summary = summarize(record)
    if as_json:
        print_json(summary)
    else:
        print(record.spec.chain_id)
    if record.state is chain_state.ChainState.SUCCEEDED:
        progress(f"chain {record.spec.chain_id} done: {record.message}")
        return
    raise KrError(f"chain {record.spec.chain_id} stopped in {record.state.value}: {record.message}",
                  hint=_hint(record))


def _show_reading(record: chain_state.ChainRecord) -> None:
    """The finished chain's final checkpoint reads a few test images (on stderr: stdout keeps the result)."""
    from kaggle_runner.reading import show_reading
    from kr_contract.names import TARBALL

    if record.state is chain_state.ChainState.SUCCEEDED and record.session:
        tarball = chain_state.chain_dir(record.spec.chain_id) / f"session-{record.session}" / TARBALL
        show_reading(tarball, f"chain {record.spec.chain_id}, session {record.session}", progress)


def _hint(record: chain_state.ChainRecord) -> str:
    resume = f"kr chain --chain {record.spec.chain_id}"
    if record.state is chain_state.ChainState.FAILED_QUOTA:
        return f"run `{resume}` after the reset, or add --wait-for-quota"
    if record.state in (chain_state.ChainState.FAILED_KERNEL, chain_state.ChainState.FAILED_STALLED):
        return (f"read the log tail above and fix the cause; `{resume}` retries from the last good checkpoint "
                "(with --update-config if you changed kr.toml)")
    return f"`{resume}` continues from where it stopped"
