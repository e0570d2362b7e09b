"""``kr logs [RUN] [-f]``: a run's log; live while the session is running."""

from __future__ import annotations

from typing import Annotated

import typer

from kaggle_runner import runs
from kaggle_runner.backends import get_backend
from kaggle_runner.cli._app import command
from kaggle_runner.cli.download import RunArgument


@command("logs")
def logs(
    run: RunArgument = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing while the session runs.")
    ] = False,
) -> None:
    """Print the log of a run (the newest by default)."""
    record = runs.find_record(run)
    backend = get_backend(record.backend)
    if follow:
        for line in runs.follow_logs(record, backend):
            print(line, flush=True)
        return
    text = backend.logs(record.ref, record.version)
    print(text, end="" if text.endswith("\n") or not text else "\n")
