"""``kr chain --sessions N``: train across sessions, each resuming from the checkpoint the previous published.

Run it again after any interruption (Ctrl-C, kill -9, reboot): it continues the same chain. The state
machine, its failure policy and the state diagram are in ``kaggle_runner/chain.py`` and its README; the
records it persists are in ``kaggle_runner/chain_state.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kaggle_runner import chain, chain_state
from kaggle_runner.chain_summary import summarize
from kaggle_runner.cli._app import _Options, command, print_json, progress
from kaggle_runner.errors import KrError, UsageError

if TYPE_CHECKING:
    from kaggle_runner.backends.base import Backend
    from kaggle_runner.config import KrConfig
    from kaggle_runner.notify import Notifier

# Multiplies every interval and timeout of the chain (kaggle_runner.chain.Timing): the local backend's
# kernels take seconds, not hours; tests and the emulator scale further down.
TIME_SCALE_ENV_VAR = "KR_CHAIN_TIME_SCALE"
LOCAL_TIME_SCALE = 1 / 30


@command("chain")
def chain_command(
    sessions: Annotated[
        int, typer.Option("--sessions", "-n", min=1, help="How many sessions to run in a row.")
    ],
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
        int, typer.Option("--max-retries", min=0, help="Retries of a session whose kernel fails.")
    ] = 2,
    wait_for_quota: Annotated[
        bool, typer.Option("--wait-for-quota", help="When the weekly GPU quota runs out, wait for its reset.")
    ] = False,
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
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print each kernel's log as it runs.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the chain's summary as JSON at the end.")
    ] = False,
) -> None:
    """Run N sessions in a row; each resumes from the checkpoint dataset the previous one published."""
    if chain_id and new:
        raise UsageError("--chain and --new contradict each other", hint="use one of them")
    if chain_id and backend is None:
        backend = chain_state.load_chain(chain_id).spec.backend  # a named chain keeps its backend
    config = _load(config_path, backend)
    target = _backend(config)
    from kaggle_runner.notify import Notifier

    notifier = Notifier(command=notify_cmd, url=notify_url, warn=progress)
    record = _open_chain(config, target, chain_id=chain_id, new=new, sessions=sessions, until_epoch=until_epoch,
                         max_retries=max_retries, wait_for_quota=wait_for_quota)  # fmt: skip
    with chain_state.chain_lock(record.spec.chain_id):
        record = chain_state.load_chain(record.spec.chain_id)  # what the previous holder of the lock left
        _apply_arguments(record, sessions, until_epoch, max_retries, wait_for_quota)
        record = _run_with_display(record, target, config, notifier, follow=follow)
    _report(record, as_json)


def _run_with_display(
    record: chain_state.ChainRecord, target: Backend, config: KrConfig, notifier: Notifier, *, follow: bool
) -> chain_state.ChainRecord:
    """Drive the chain with the live display on stderr: a rich panel on a terminal, plain lines elsewhere.
    Log lines always feed the display; ``--follow`` also prints them in plain mode."""
    from kaggle_runner.progress import SessionProgress

    spec = record.spec
    with SessionProgress(
        title=spec.chain_id,
        budget_s=spec.session_budget_s,
        total_epochs=spec.epochs_per_session,
        plain_log_lines=follow,
    ) as display:

        def notify(event: dict) -> None:
            notifier(event)
            display.chain_event(event)

        runner = chain.ChainRunner(
            record,
            target,
            chain.config_renderer(config, target.username()),
            timing=chain_timing(config.backend),
            notify=notify,
            echo=display.echo,
            follow_logs=True,
        )
        return runner.run()


def _load(config_path: Path | None, backend: str | None) -> KrConfig:
    from kaggle_runner.cli.launch import configured
    from kaggle_runner.config import load_config

    return configured(load_config(config_path or _Options.config_path), backend=backend, accelerator=None)


def _backend(config: KrConfig) -> Backend:
    from kaggle_runner.backends import get_backend

    return get_backend(config.backend, config)


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


def _open_chain(
    config: KrConfig,
    target: Backend,
    *,
    chain_id: str | None,
    new: bool,
    sessions: int,
    until_epoch: int | None,
    max_retries: int,
    wait_for_quota: bool,
) -> chain_state.ChainRecord:
    """The chain to drive: the one named, else the unfinished one of this kernel, else a new one."""
    owner = target.username()
    kernel_ref = f"{owner}/{config.kernel_slug}"
    if chain_id:
        record = chain_state.load_chain(chain_id)
        if (record.spec.backend, record.spec.kernel_ref) != (config.backend, kernel_ref):
            raise UsageError(
                f"chain {chain_id} drives {record.spec.kernel_ref} on the {record.spec.backend} backend, "
                f"this configuration names {kernel_ref} on the {config.backend} backend",
                hint="use the configuration the chain was started with (--config)",
            )
        return record
    if not new:
        found = chain_state.latest_chain(None, backend=config.backend, kernel_ref=kernel_ref)
        if found is not None:
            progress(_continuing(found, sessions))
            return found
    spec = chain_state.ChainSpec(
        chain_id=chain_state.new_chain_id(),
        backend=config.backend,
        kernel_ref=kernel_ref,
        dataset_ref=f"{owner}/{config.dataset_slug}",
        sessions=sessions,
        session_budget_s=float(config.session_budget_s),
        epochs_per_session=config.epochs_per_session,
        until_epoch=until_epoch,
        max_retries=max_retries,
        wait_for_quota=wait_for_quota,
        accelerator=config.accelerator,
        config_path=str(config.source) if config.source else None,
    )
    record = chain_state.create_chain(spec)
    progress(
        f"chain {spec.chain_id}: {sessions} session(s) of {spec.kernel_ref} on the {spec.backend} backend"
    )
    return record


def _continuing(found: chain_state.ChainRecord, sessions: int) -> str:
    spec = found.spec
    if found.state is chain_state.ChainState.SUCCEEDED and sessions <= spec.sessions:
        return (f"chain {spec.chain_id} already finished its {spec.sessions} session(s): --sessions "
                f"{spec.sessions + 1} or more continues it, --new starts another from scratch")
    return (f"continuing chain {spec.chain_id} (session {found.session} of {spec.sessions}, {found.state.value}); "
            "--new starts another")


def _apply_arguments(
    record: chain_state.ChainRecord,
    sessions: int,
    until_epoch: int | None,
    max_retries: int,
    wait_for_quota: bool,
) -> None:
    """A rerun's arguments win over the stored ones: it may extend the chain or change its policy."""
    spec = record.spec
    if sessions < record.session:
        raise UsageError(
            f"chain {spec.chain_id} is already at session {record.session}: --sessions {sessions} is too few"
        )
    spec.sessions = sessions
    spec.until_epoch = until_epoch if until_epoch is not None else spec.until_epoch
    spec.max_retries = max_retries
    spec.wait_for_quota = wait_for_quota


def _report(record: chain_state.ChainRecord, as_json: bool) -> None:
    summary = summarize(record)
    if as_json:
        print_json(summary)
    else:
        print(record.spec.chain_id)
    if record.state is chain_state.ChainState.SUCCEEDED:
        progress(f"chain {record.spec.chain_id} done: {record.message}")
        return
    raise KrError(
        f"chain {record.spec.chain_id} stopped in {record.state.value}: {record.message}",
        hint=_hint(record),
    )


def _hint(record: chain_state.ChainRecord) -> str:
    resume = f"kr chain --chain {record.spec.chain_id} --sessions {record.spec.sessions}"
    if record.state is chain_state.ChainState.FAILED_QUOTA:
        return f"run `{resume}` after the reset, or add --wait-for-quota"
    if record.state is chain_state.ChainState.FAILED_KERNEL:
        return (
            f"read the log tail above, fix the cause, then `{resume}` retries from the last good checkpoint"
        )
    return f"`{resume}` continues from where it stopped"
