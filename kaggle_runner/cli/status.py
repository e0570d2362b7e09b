"""``kr status [RUN] [--json]``: runs and chains with their state, progress and best metrics.

Without RUN it lists every run (refreshed from its backend) and every chain: state, session k/N, epoch, best
BLEU-4 / exact match and GPU hours. A run's figures come from its downloaded ``run.json`` and
``training.log`` (``kaggle_runner.metrics_log``); a run whose outputs were not downloaded shows ``-``.
On a terminal the listing is a rich table; piped, it is plain aligned text that grep and awk can read;
``--json`` prints nothing but JSON on stdout.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any

import typer

from kaggle_runner import metrics_log, runs
from kaggle_runner.backends import Backend
from kaggle_runner.cli._app import command, open_backend, print_json, print_table, progress
from kaggle_runner.cli.download import RunArgument
from kaggle_runner.errors import KrError
from kr_contract.atomic import read_json_object
from kr_contract.names import RUN_JSON, TRAINING_LOG

RUN_TABLE_HEADERS = ["RUN", "BACKEND", "KERNEL", "STATE", "SESSION", "EPOCH", "BEST", "GPU H", "CREATED"]
# The metrics a table row shows, in this order (all of them are in --json).
BEST_SHOWN = ("bleu4", "exact_match")
BEST_KEYS = ("bleu4", "exact_match", "edit_distance", "edit_score", "epoch", "step")


def chain_summaries() -> list[dict[str, Any]]:
    """The chains ``kr chain`` keeps under the same state directory (one dict each)."""
    from kaggle_runner import chain_summary

    return chain_summary.chain_summaries()


class _Backends:
    """One backend object per name for the whole listing (the Kaggle one authenticates once)."""

    def __init__(self) -> None:
        self._made: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        if name not in self._made:
            self._made[name] = open_backend(name)
        return self._made[name]


def _refreshed_quietly(record: runs.RunRecord, backends: _Backends) -> runs.RunRecord:
    """For a listing: one unreachable backend must not hide every other run, so warn and show the last state."""
    try:
        return runs.refresh(record, backends.get(record.backend))
    except KrError as exc:
        progress(f"warning: run {record.run_id}: state not refreshed: {exc.message}")
        return record


# ------------------------------------------------------------------------------------------- run figures


def _downloaded(record: runs.RunRecord, name: str) -> bool:
    """Only files of the last complete download count (a stray file in the folder is not an output)."""
    return name in record.output_files and (record.output_dir / name).is_file()


def run_result(record: runs.RunRecord) -> dict[str, Any] | None:
    """What the session's run.json says (stop reason, metrics), once it has been downloaded."""
    if not _downloaded(record, RUN_JSON):
        return None
    return read_json_object(record.output_dir / RUN_JSON)


def _history(record: runs.RunRecord) -> metrics_log.TrainingHistory | None:
    files = metrics_log.SessionFiles(
        session=1,
        log=record.output_dir / TRAINING_LOG if _downloaded(record, TRAINING_LOG) else None,
        run_json=(
            record.output_dir / RUN_JSON
            if _downloaded(record, RUN_JSON)
            else None
        ),
    )
    if files.log is None and files.run_json is None:
        return None
    return metrics_log.load_history([files])


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _best_from_log(history: metrics_log.TrainingHistory) -> dict[str, Any] | None:
    point = history.best_val()
    if point is None:
        return None
    return {key: getattr(point, key) for key in BEST_KEYS}


def _last_epoch_from_log(history: metrics_log.TrainingHistory) -> int | None:
    """Completed epochs as the log last reported them (stop and val lines count completed epochs)."""
    for records in (history.stops, history.val):
        epochs = [r.epoch for r in records if r.epoch is not None]
        if epochs:
            return epochs[-1]
    return None


def run_metrics(record: runs.RunRecord) -> dict[str, Any]:
    """A run's epoch, step, best validation metrics, stop reason and GPU hours, from its downloaded outputs.

    ``run.json`` (the kernel's own summary) wins; ``training.log`` fills in what it lacks, e.g. for a session
    that was killed before it wrote run.json. Every value is None when nothing was downloaded.
    """
    history = _history(record)
    session = history.runs[-1] if history is not None and history.runs else None
    best = dict(session.best) if session is not None and session.best else None
    epoch = session.epoch if session is not None else None
    step = session.step if session is not None else None
    if history is not None:
        best = best or _best_from_log(history)
        epoch = epoch if epoch is not None else _last_epoch_from_log(history)
        if step is None:
            steps = (
                [r.step for r in history.stops]
                + [r.step for r in history.val]
                + [r.step for r in history.train]
            )
            step = max(steps, default=None)
    seconds = _finite(session.seconds) if session is not None else None
    return {
        "epoch": epoch,
        "step": step,
        "best": best,
        "stop_reason": session.stop_reason if session is not None else None,
        "gpu_hours": None if seconds is None else round(seconds / 3600, 3),
    }


# ------------------------------------------------------------------------------------------- rendering


def format_best(best: dict[str, Any] | None) -> str:
    shown = [
        f"{key}={value:.4g}" for key in BEST_SHOWN if (value := _finite((best or {}).get(key))) is not None
    ]
    return " ".join(shown) or "-"


def run_table_row(record: runs.RunRecord, metrics: dict[str, Any]) -> list[str]:
    """One row under ``RUN_TABLE_HEADERS``. A launch is one session of its own: 1/1."""
    return [
        record.run_id,
        record.backend,
        f"{record.ref} v{record.version}",
        record.state,
        "1/1",
        "-" if metrics["epoch"] is None else str(metrics["epoch"]),
        format_best(metrics["best"]),
        "-" if metrics["gpu_hours"] is None else f"{metrics['gpu_hours']:.2f}",
        record.created,
    ]


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


# The terminal view: one table of what tells how training goes, narrow enough for an 80-column terminal;
# what a row has to say beyond that (a failure, retries, where the final model is) follows as a note.
# Piped output keeps every column (backend, kernel, created, retries, message) for grep and awk.
TERMINAL_HEADERS = ["RUN / CHAIN", "STATE", "SESSION", "EPOCH", "BLEU-4", "EXACT", "GPU H"]
_FIGURES = frozenset(TERMINAL_HEADERS[2:])


def _figure(value: object, digits: int = 3) -> str:
    number = _finite(value)
    return "-" if number is None else f"{number:.{digits}f}"


def _terminal_run_row(record: runs.RunRecord, metrics: dict[str, Any]) -> tuple[list[str], str | None]:
    best = metrics["best"] or {}
    row = [
        record.run_id,
        record.state,
        "1/1",
        "-" if metrics["epoch"] is None else str(metrics["epoch"]),
        _figure(best.get("bleu4")),
        _figure(best.get("exact_match")),
        _figure(metrics["gpu_hours"], 2),
    ]
    return row, record.failure_message


def _terminal_chain_row(summary: dict[str, Any]) -> tuple[list[str], str | None]:
    best = summary.get("best") or {}
    retries = summary.get("retries") or []
    notes = []
    if retries:
        why = ", ".join(sorted({r["why"] for r in retries}))
        notes.append(f"{len(retries)} {'retry' if len(retries) == 1 else 'retries'} ({why})")
    if summary.get("halted") or summary.get("message"):
        notes.append(str(summary.get("halted") or summary.get("message")))
    row = [
        str(summary["chain"]),
        summary["state"] + (" (running)" if summary.get("active") else ""),
        f"{summary['session']}/{summary['sessions']}",
        "-" if summary.get("epoch") is None else str(summary["epoch"]),
        _figure(best.get("bleu4")),
        _figure(best.get("exact_match")),
        _figure(summary.get("gpu_hours") or 0, 2),
    ]
    return row, "; ".join(notes) or None


def _print_rich_table(rows: list[tuple[list[str], str | None]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True)
    for header in TERMINAL_HEADERS:
        table.add_column(header, no_wrap=True, justify="right" if header in _FIGURES else "left")
    for cells, _ in rows:
        table.add_row(*cells)
    console = Console(file=sys.stdout, highlight=False)
    console.print(table)
    for cells, note in rows:
        if note:
            console.print(f"{cells[0]}: {note}", style="dim", markup=False)


def _show_listing(records: list[runs.RunRecord], chains: list[dict[str, Any]]) -> None:
    if not records and not chains:
        progress("no runs yet: start one with kr launch --epochs 1, or kr chain --sessions N")
        return
    metrics = [run_metrics(r) for r in records]
    if stdout_is_terminal():
        rows = [_terminal_run_row(r, m) for r, m in zip(records, metrics, strict=True)]
        _print_rich_table(rows + [_terminal_chain_row(c) for c in chains])
        return
    from kaggle_runner.chain_summary import CHAIN_TABLE_HEADERS, chain_table_row

    if records:
        print_table(RUN_TABLE_HEADERS, [run_table_row(r, m) for r, m in zip(records, metrics, strict=True)])
    if chains:
        if records:
            print()
        print_table(CHAIN_TABLE_HEADERS, [chain_table_row(c) for c in chains])


def _show_run(record: runs.RunRecord, metrics: dict[str, Any]) -> None:
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
    if metrics["stop_reason"]:
        fields.append(("stop reason", str(metrics["stop_reason"])))
    if metrics["epoch"] is not None:
        fields.append(("epoch", f"{metrics['epoch']} (step {metrics['step']})"))
    if metrics["best"]:
        best = metrics["best"]
        fields.append(("best", ", ".join(f"{k}={best[k]}" for k in BEST_KEYS if best.get(k) is not None)))
    if metrics["gpu_hours"] is not None:
        fields.append(("gpu hours", f"{metrics['gpu_hours']:.3f}"))
    if record.output_files:
        fields.append(("outputs", str(record.output_dir)))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}")


@command("status")
def status(
    run: RunArgument = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Without RUN: every run and chain. With RUN (an id or prefix): that run, refreshed from its backend."""
    if run is not None:
        record = runs.find_record(run)
        record = runs.refresh(record, open_backend(record.backend))
        metrics = run_metrics(record)
        if as_json:
            print_json({**record.to_json(), "result": run_result(record), "metrics": metrics})
        else:
            _show_run(record, metrics)
        return
    backends = _Backends()
    records = [_refreshed_quietly(r, backends) for r in runs.list_records()]
    chains = chain_summaries()
    if as_json:
        listed = [{**r.to_json(), "metrics": run_metrics(r)} for r in records]
        print_json({"runs": listed, "chains": chains})
    else:
        _show_listing(records, chains)
