"""``kr logs [RUN|CHAIN] [-f]``: a run's log, or the log of a chain's newest kernel; live while it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from kaggle_runner import runs
from kaggle_runner.backends.base import Backend
from kaggle_runner.cli._app import command, open_backend
from kaggle_runner.errors import UsageError

TargetArgument = Annotated[
    str | None,
    typer.Argument(help="Run or chain id, or a unique prefix (default: the newest run or chain)."),
]


@command("logs")
def logs(
    target: TargetArgument = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing while the session runs.")
    ] = False,
) -> None:
    """Print the log of a run, or of a chain's newest kernel (the newest run or chain by default)."""
    backend, ref, version = kernel_of(target)
    if follow and not backend.status(ref, version).state.is_terminal:
        for line in backend.follow_logs(ref, version):
            print(line, flush=True)
        return
    text = backend.logs(ref, version)
    print(text, end="" if text.endswith("\n") or not text else "\n")


def kernel_of(target: str | None) -> tuple[Backend, str, int]:
    """The backend, kernel ref and pushed version whose log ``target`` names."""
    folder, name = runs.state_folder(target)
    if not (folder / "chain.json").is_file():
        record = runs.find_record(name)
        return open_backend(record.backend), record.ref, record.version
    from kaggle_runner import chain_state

    chained = chain_state.load_chain(name)
    versions = [a.version for s in chained.sessions for a in s.attempts if a.version is not None]
    if not versions:
        raise UsageError(f"chain {name} has not pushed a kernel yet", hint=f"kr status {name}")
    return open_backend(chained.spec.backend), chained.spec.kernel_ref, versions[-1]
