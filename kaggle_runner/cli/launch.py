"""``kr launch``: render the kernel, push it to a backend, record the run; with ``--wait``, see it through."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import typer

from kaggle_runner import runs
from kaggle_runner.backends import Backend
from kaggle_runner.cli._app import command, load_config, open_backend, print_json, progress
from kaggle_runner.errors import KrError

if TYPE_CHECKING:
    from kaggle_runner.config import KrConfig

BackendOption = Annotated[
    str | None, typer.Option("--backend", help="kaggle or local (default: the config's backend).")
]
AcceleratorOption = Annotated[
    str | None,
    typer.Option(
        "--accelerator", help="Machine shape, e.g. NvidiaTeslaT4 (default: the config's accelerator)."
    ),
]


def configured(config: KrConfig, *, backend: str | None, accelerator: str | None) -> KrConfig:
    """The config with command-line overrides applied, validated by the same rules as kr.toml."""
    overrides = {k: v for k, v in (("backend", backend), ("accelerator", accelerator)) if v is not None}
    if not overrides:
        return config
    from kaggle_runner.config import config_from_mapping

    def warn_about_overrides(message: str) -> None:
        # The file's own warnings were printed when it was loaded; repeat only what an override caused.
        if any(key in message for key in overrides):
            progress(f"warning: {message}")

    data = {**config.to_mapping(), **overrides}
    updated = config_from_mapping(data, where="command line", warn=warn_about_overrides)
    return dataclasses.replace(updated, source=config.source)


def _download_outputs(record: runs.RunRecord, backend: Backend) -> runs.RunRecord:
    """A failed session may have left nothing to download: say so, and report the failure itself."""
    try:
        record = runs.download(record, backend)
    except KrError as exc:
        if not record.kernel_state.is_failed:
            raise
        progress(f"warning: no outputs downloaded: {exc.message}")
        return record
    progress(f"outputs in {record.output_dir}")
    return record


def _wait_with_display(record: runs.RunRecord, target: Backend, *, epochs: int, budget_s: float) -> runs.RunRecord:
    """Follow the session's log into the live display (stderr) until it ends, then settle its final state."""
    from kaggle_runner.progress import SessionProgress

    title = f"run {record.run_id}: {record.ref} v{record.version}"
    with SessionProgress(title=title, total_epochs=epochs, budget_s=budget_s) as display:
        display.update(state=record.state)
        for line in runs.follow_logs(record, target):  # both backends stream until the version ends
            display.update(state="running", log_lines=[line])
        return runs.wait(record, target, on_change=lambda r: display.update(state=r.state))


@command("launch")
def launch(
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs to train in this session.")],
    backend: BackendOption = None,
    accelerator: AcceleratorOption = None,
    timeout: Annotated[
        int | None,
        typer.Option("--timeout", help="Session time limit in seconds (Kaggle's sessionTimeoutSeconds)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the session ends, then download its outputs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as JSON only.")] = False,
) -> None:
    """Push one training session and record it as a run (prints the run id)."""
    config = configured(load_config(), backend=backend, accelerator=accelerator)
    target = open_backend(config.backend, config)
    account = target.username()  # missing credentials stop here, before anything is rendered
    progress(f"pushing {account}/{config.kernel_slug} ({epochs} epoch(s)) to the {config.backend} backend")
    record = runs.launch(config, target, epochs=epochs, timeout_s=timeout)
    progress(f"run {record.run_id}: {record.ref} version {record.version} is {record.state}")
    if wait:
        record = _wait_with_display(record, target, epochs=epochs, budget_s=timeout or config.session_budget_s)
        record = _download_outputs(record, target)
    else:
        progress(f"follow it with: kr status {record.run_id}   or   kr logs {record.run_id} -f")
    if as_json:
        print_json(record.to_json())
    else:
        print(record.run_id)
    if record.is_terminal and record.kernel_state.is_failed:
        raise runs.describe_failure(record)
