"""The training history of a run or a chain, from the trainer's metric lines (``training.log``) and the
kernel's ``run.json``.

Both formats are the contract's (``kr_contract.metric_lines`` parses a line, ``kr_contract.runjson`` reads
run.json); this module merges them. A metric line's kind (``train``, ``val``, ``checkpoint``, ``stop``, ...)
is followed by ``key=value`` fields; anything else in the log is free text and is skipped.

A chain's logs overlap: the kernel copies the previous session's ``training.log`` into its working dir and the
trainer appends to it, so session k's log is session k-1's log plus new lines. Records are therefore
deduplicated by (kind, step) across sessions, and each keeps the session in which it first appeared.

Pure Python: no torch, no matplotlib, so ``kr status`` and the live display can use it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kr_contract.errors import ContractError
from kr_contract.metric_lines import VAL_METRICS, MetricLine, parse_metric_line
from kr_contract.names import RUN_JSON, TRAINING_LOG
from kr_contract.runjson import read_run_json

# What the history keeps (the live display also reads ``start``: where a trainer run began).
HISTORY_KINDS = ("train", "val", "checkpoint", "stop")


@dataclass(frozen=True)
class TrainPoint:
    session: int
    step: int
    epoch: int | None
    loss: float | None
    lr: float | None
    samples_per_s: float | None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ValPoint:
    session: int
    step: int
    epoch: int | None
    bleu4: float | None
    exact_match: float | None
    edit_distance: float | None
    edit_score: float | None
    loss: float | None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class CheckpointEvent:
    session: int
    step: int
    kind: str  # "best", "last", "epoch", ... as the trainer names it
    path: str | None
    epoch: int | None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class StopEvent:
    session: int
    step: int
    reason: str | None
    epoch: int | None
    epochs_done: int | None
    steps_done: int | None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class SessionRun:
    """The parts of a kernel's ``run.json`` that the display and the plot use; ``raw`` keeps all of it."""

    session: int
    exit_code: int | None
    stop_reason: str | None
    seconds: float | None
    gpus: int | None
    epoch: int | None
    step: int | None
    best: dict[str, Any]
    raw: dict[str, Any]


@dataclass
class TrainingHistory:
    """Everything the logs and run.json files of one run or one chain say, in step order."""

    train: list[TrainPoint] = field(default_factory=list)
    val: list[ValPoint] = field(default_factory=list)
    checkpoints: list[CheckpointEvent] = field(default_factory=list)
    stops: list[StopEvent] = field(default_factory=list)
    runs: list[SessionRun] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def session_starts(self) -> dict[int, int]:
        """The global step at which each session after the first started (where the previous one stopped)."""
        starts: dict[int, int] = {}
        for index, session in enumerate(self.sessions[1:], start=1):
            step = self._last_step_of(self.sessions[index - 1])
            if step is None:
                step = self._first_step_of(session)
            if step is not None:
                starts[session] = step
        return starts

    def best_checkpoint(self) -> CheckpointEvent | None:
        """The newest ``checkpoint kind=best`` record: the checkpoint the trainer itself considers best."""
        best = [c for c in self.checkpoints if c.kind == "best"]
        return max(best, key=lambda c: c.step) if best else None

    def best_val(self) -> ValPoint | None:
        """The validation point of the best checkpoint, or the highest BLEU-4 if the log names no best."""
        marked = self.best_checkpoint()
        if marked is not None:
            at_step = [v for v in self.val if v.step == marked.step]
            if at_step:
                return at_step[-1]
        scored = [v for v in self.val if v.bleu4 is not None and not math.isnan(v.bleu4)]
        return max(scored, key=lambda v: (v.bleu4, v.step)) if scored else None

    def last_train(self) -> TrainPoint | None:
        return self.train[-1] if self.train else None

    def _last_step_of(self, session: int) -> int | None:
        stops = [s.step for s in self.stops if s.session == session]
        if stops:
            return max(stops)
        for run in self.runs:
            if run.session == session and run.step is not None:
                return run.step
        return None

    def _first_step_of(self, session: int) -> int | None:
        steps = [p.step for p in self.train if p.session == session]
        steps += [p.step for p in self.val if p.session == session]
        return min(steps) if steps else None


def complete_lines(text: str) -> list[str]:
    """The lines of ``text`` that were fully written: a last line without its newline may be cut mid-number."""
    lines = text.split("\n")
    return lines[:-1]


def parse_log_text(text: str, *, session: int = 1) -> TrainingHistory:
    """Parse one log; each record is attributed to ``session``."""
    history = TrainingHistory(sessions=[session])
    _merge_lines(history, complete_lines(text), session, seen=set())
    _sort(history)
    return history


@dataclass(frozen=True)
class SessionFiles:
    """The downloaded outputs of one session; either file may be missing (None)."""

    session: int
    log: Path | None
    run_json: Path | None = None


def load_history(sessions: Sequence[SessionFiles]) -> TrainingHistory:
    """Merge the logs and run.json files of consecutive sessions (oldest first, as given)."""
    history = TrainingHistory()
    seen: set[tuple[Any, ...]] = set()
    previous = ""
    for files in sessions:
        history.sessions.append(files.session)
        text = _read_text(files.log, history) if files.log is not None else None
        if text is not None:
            _merge_lines(history, complete_lines(_new_part(text, previous)), files.session, seen)
            previous = text
        if files.run_json is not None:
            run = read_session_run(files.run_json, session=files.session, warnings=history.warnings)
            if run is not None:
                history.runs.append(run)
    _sort(history)
    return history


def _new_part(text: str, previous: str) -> str:
    """What ``text`` adds to the previous session's log. A chain's log is the previous one plus new lines,
    so the shared prefix (up to its last complete line) need not be parsed again: parsing stays linear in
    the number of sessions. Logs that do not overlap are parsed whole; dedupe covers partial overlaps."""
    shared = previous[: previous.rfind("\n") + 1]
    return text[len(shared) :] if shared and text.startswith(shared) else text


def session_files(folder: Path, session: int) -> SessionFiles:
    """The training.log / run.json found in one downloaded-output folder."""
    return SessionFiles(session, _existing(folder / TRAINING_LOG), _existing(folder / RUN_JSON))


def read_session_run(path: Path, *, session: int, warnings: list[str] | None = None) -> SessionRun | None:
    """The summary of one kernel run; None (and a warning) if the file is not the JSON object it should be."""
    try:
        raw = read_run_json(path)
    except ContractError as exc:
        _warn(warnings, f"{path}: {exc}, ignored")
        return None
    result = _as_dict(raw.get("result"))
    best = _as_dict(result.get("best"))
    return SessionRun(
        session=session,
        exit_code=_as_int(raw.get("exit_code")),
        stop_reason=_as_str(raw.get("stop_reason")) or _as_str(result.get("stop_reason")),
        seconds=_as_float(raw.get("seconds")),
        gpus=_as_int(raw.get("gpus")),
        epoch=_as_int(result.get("epoch")),
        step=_as_int(result.get("step")),
        best=best,
        raw=raw,
    )


def _merge_lines(
    history: TrainingHistory, lines: Iterable[str], session: int, seen: set[tuple[Any, ...]]
) -> None:
    for line in lines:
        metric = parse_metric_line(line)
        if metric is None or metric.kind not in HISTORY_KINDS:
            continue
        step = _as_int(metric.fields.get("step"))
        if step is None:
            continue  # a record without a step cannot be placed on the curve or deduplicated
        key = _dedupe_key(metric, step)
        if key in seen:
            continue
        seen.add(key)
        _append(history, metric, step, session)


def _dedupe_key(metric: MetricLine, step: int) -> tuple[Any, ...]:
    # "best" and "last" checkpoints written at the same step are two different events.
    if metric.kind == "checkpoint":
        return (metric.kind, step, metric.fields.get("kind"))
    return (metric.kind, step)


def _append(history: TrainingHistory, metric: MetricLine, step: int, session: int) -> None:
    f, ts = metric.fields, metric.timestamp
    epoch = _as_int(f.get("epoch"))
    if metric.kind == "train":
        loss, lr, rate = (_as_float(f.get(name)) for name in ("loss", "lr", "samples_per_s"))
        history.train.append(TrainPoint(session, step, epoch, loss, lr, rate, ts))
    elif metric.kind == "val":
        bleu4, exact, distance, score, val_loss = (_as_float(f.get(name)) for name in VAL_METRICS)
        history.val.append(ValPoint(session, step, epoch, bleu4, exact, distance, score, val_loss, ts))
    elif metric.kind == "checkpoint":
        kind, path = _as_str(f.get("kind")) or "unknown", _as_str(f.get("path"))
        history.checkpoints.append(CheckpointEvent(session, step, kind, path, epoch, ts))
    else:
        reason, epochs_done, steps_done = (
            _as_str(f.get("reason")),
            _as_int(f.get("epochs_done")),
            _as_int(f.get("steps_done")),
        )
        history.stops.append(StopEvent(session, step, reason, epoch, epochs_done, steps_done, ts))


def _sort(history: TrainingHistory) -> None:
    # Stable: records at the same step keep their log order.
    for records in (history.train, history.val, history.checkpoints, history.stops):
        records.sort(key=lambda r: r.step)
    history.runs.sort(key=lambda r: r.session)


def _read_text(path: Path, history: TrainingHistory) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        history.warnings.append(f"{path}: cannot read ({exc.strerror or exc}), skipped")
        return None


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _as_str(value: object) -> str | None:
    if value is None:
        return None
    return str(value)


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _warn(warnings: list[str] | None, message: str) -> None:
    if warnings is not None:
        warnings.append(message)
