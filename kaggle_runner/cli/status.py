"""``kr status [RUN] [--json]``: runs (and chains) with their state, refreshed from their backend."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kaggle_runner import runs
from kaggle_runner.backends import Backend, get_backend
from kaggle_runner.cli._app import command, print_json, print_table, progress
from kaggle_runner.cli.download import RunArgument
from kaggle_runner.errors import KrError
from kaggle_runner.fsutil import read_json


def chain_summaries() -> list[dict[str, Any]]:
    """The chains ``kaggle_runner.chain`` keeps under the same state directory (one dict each)."""
    from kaggle_runner import chain

    return chain.chain_summaries()


class _Backends:
    """One backend object per name for the whole listing (the Kaggle one authenticates once)."""

    def __init__(self) -> None:
        self._made: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        if name not in self._made:
            self._made[name] = get_backend(name)
        return self._made[name]


def _refreshed_quietly(record: runs.RunRecord, backends: _Backends) -> runs.RunRecord:
    """For a listing: one unreachable backend must not hide every other run, so warn and show the last state."""
    try:
        return runs.refresh(record, backends.get(record.backend))
    except KrError as exc:
        progress(f"warning: run {record.run_id}: state not refreshed: {exc.message}")
        return record


def run_result(record: runs.RunRecord) -> dict[str, Any] | None:
    """What the session's run.json says (stop reason, metrics), once it has been downloaded."""
    path = record.output_dir / "run.json"
    if "run.json" not in record.output_files or not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _show_run(record: runs.RunRecord) -> None:
    fields = [
        ("run", record.run_id),
        ("backend", record.backend),
        ("kernel", f"{record.ref} v{record.version}"),
        ("state", record.state),
        ("epochs", str(record.epochs)),
        ("accelerator", record.accelerator or "-"),
        ("created", record.created),
        ("updated", record.updated),
    ]
    if record.url:
        fields.append(("url", record.url))
    if record.failure_message:
        fields.append(("failure", record.failure_message))
    result = run_result(record)
    if result is not None:
        trainer = result.get("result") or {}
        fields.append(("stop reason", str(result.get("stop_reason") or trainer.get("stop_reason") or "-")))
        best = trainer.get("best") or {}
        if best:
            fields.append(("best", ", ".join(f"{k}={v}" for k, v in sorted(best.items()))))
    if record.output_files:
        fields.append(("outputs", str(record.output_dir)))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}")


def _show_listing(records: list[runs.RunRecord], chains: list[dict[str, Any]]) -> None:
    if not records and not chains:
        progress("no runs yet: start one with kr launch --epochs 1, or kr chain --sessions N")
        return
    if records:
        rows = [
            [r.run_id, r.backend, f"{r.ref} v{r.version}", r.state, str(r.epochs), r.created] for r in records
        ]
        print_table(["RUN", "BACKEND", "KERNEL", "STATE", "EPOCHS", "CREATED"], rows)
    if chains:
        if records:
            print()
        from kaggle_runner.chain import CHAIN_TABLE_HEADERS, chain_table_row

        print_table(CHAIN_TABLE_HEADERS, [chain_table_row(c) for c in chains])


@command("status")
def status(
    run: RunArgument = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Without RUN: every run and chain. With RUN (an id or prefix): that run, refreshed from its backend."""
    if run is not None:
        record = runs.find_record(run)
        record = runs.refresh(record, get_backend(record.backend))
        if as_json:
            print_json({**record.to_json(), "result": run_result(record)})
        else:
            _show_run(record)
        return
    backends = _Backends()
    records = [_refreshed_quietly(r, backends) for r in runs.list_records()]
    chains = chain_summaries()
    if as_json:
        print_json({"runs": [r.to_json() for r in records], "chains": chains})
    else:
        _show_listing(records, chains)
