"""``kr download [RUN]``: fetch a finished run's outputs into its folder under the state directory."""

from __future__ import annotations

from typing import Annotated

import typer

from kaggle_runner import runs
from kaggle_runner.cli._app import command, open_backend, print_json, progress
from kaggle_runner.errors import UsageError

RunArgument = Annotated[
    str | None, typer.Argument(help="Run id or a unique prefix of it (default: the newest run).")
]


@command("download")
def download(
    run: RunArgument = None,
    all_files: Annotated[
        bool,
        typer.Option("--all", help="Every output file, not only checkpoints.tar.gz, training.log, run.json."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Download checkpoints.tar.gz, training.log and run.json of a finished run (prints their paths)."""
    record = runs.find_record(run)
    backend = open_backend(record.backend)
    record = runs.refresh(record, backend)
    if not record.is_terminal:
        raise UsageError(
            f"run {record.run_id} is still {record.state}: its outputs exist once it has ended",
            hint=f"wait for it: kr status {record.run_id}",
        )
    record = runs.download(record, backend, all_files=all_files)
    paths = [str(record.output_dir / name) for name in record.output_files]
    if not paths:
        progress(f"run {record.run_id} ({record.state}) left no output files")
    if as_json:
        print_json(
            {
                "run_id": record.run_id,
                "state": record.state,
                "output_dir": str(record.output_dir),
                "files": paths,
            }
        )
        return
    for path in paths:
        print(path)
