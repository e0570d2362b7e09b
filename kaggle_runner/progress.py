"""The live display while ``kr launch --wait`` and ``kr chain`` wait on a session.

On a terminal: a rich Live panel with the session's state, elapsed and remaining time, epoch/step progress
(from the newest ``train`` metric line in the streamed log) and the last log lines. Elsewhere (a pipe, a file,
CI): plain timestamped lines, one per change of state and at most one progress line per interval.

Everything goes to stderr: stdout carries only results, so ``--json`` output stays clean whatever the
display does. It is also ``kr chain``'s ``ChainObserver``: state changes, retries and the kernel's log lines
arrive as typed calls. Usage::

    with SessionProgress(title="alice/kr-ocr v3", total_steps=5000, budget_s=43200) as progress:
        while waiting:
            progress.update(state=status.state.value, log_lines=new_lines)
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kaggle_runner.chain_machine import ChainState
from kaggle_runner.chain_observer import (
    ChainObserver,
    KernelFailed,
    Retrying,
    StateChange,
    outputs_rejected_line,
)
from kr_contract.metric_lines import MetricLine, parse_metric_line

LOG_TAIL_LINES = 8
PLAIN_INTERVAL_S = 60.0  # a progress line at most this often in plain mode: a 12-hour session stays readable
REFRESH_PER_SECOND = 2


class SessionProgress(ChainObserver):
    """Shows where a waiting session stands; ``update`` it whenever something new is known."""

    def __init__(
        self,
        *,
        title: str = "session",
        total_steps: int | None = None,
        start_step: int = 0,
        total_epochs: int | None = None,
        start_epoch: int = 0,
        budget_s: float | None = None,
        started_at: float | None = None,
        console: Console | None = None,
        plain: bool | None = None,
        log_tail: int = LOG_TAIL_LINES,
        plain_interval_s: float = PLAIN_INTERVAL_S,
        plain_log_lines: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``total_steps``/``total_epochs``: what this session was asked to do *more* than ``start_step``/
        ``start_epoch`` (the trainer's ``--max_steps``/``--max_epochs``); the trainer's ``start`` log line,
        when streamed, corrects both starts. ``budget_s``: the session's time budget, counted from
        ``started_at`` (default: now). ``plain=None`` chooses by whether stderr is a terminal."""
        self.console = console or Console(stderr=True, highlight=False)
        self.plain = (
            (not self.console.is_terminal or self.console.is_dumb_terminal) if plain is None else plain
        )
        self.title = title
        self.total_steps, self.start_step = total_steps, start_step
        self.total_epochs, self.start_epoch = total_epochs, start_epoch
        self.budget_s = budget_s
        self._clock = clock
        self.started_at = clock() if started_at is None else started_at
        self.state: str | None = None
        self.message: str | None = None
        self.last_train: MetricLine | None = None
        self.last_val: MetricLine | None = None
        self.log_tail: deque[str] = deque(maxlen=log_tail)
        self._plain_interval_s = plain_interval_s
        self._plain_log_lines = plain_log_lines
        self._last_plain_progress: float | None = None
        self._unprinted = False  # progress seen that no plain line has shown yet
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._session: int | None = None  # the chain session shown (state_changed)

    # ------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SessionProgress:
        if not self.plain:
            # stdout is not redirected: results printed meanwhile must stay on stdout, not join the display.
            self._live = Live(
                get_renderable=self._render,
                console=self.console,
                refresh_per_second=REFRESH_PER_SECOND,
                redirect_stdout=False,
                redirect_stderr=True,
                transient=False,
            )
            self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._unprinted and exc_type is None:
            self._emit_plain(self._status_line())  # the newest progress, which the throttle held back

    # ------------------------------------------------------------------------------------ updates

    def update(
        self,
        *,
        state: str | None = None,
        log_lines: Iterable[str] = (),
        message: str | None = None,
        title: str | None = None,
    ) -> None:
        """Record what is new: the backend's state, log lines received since the last call, a note."""
        with self._lock:
            changed = self._apply_state(state, message, title)
            new_val = self._take_lines(log_lines)
        if self.plain:
            self._print_plain(changed=changed or new_val)
        elif self._live is not None:
            self._live.refresh()

    # ------------------------------------------------------------------------------------ ChainObserver

    def state_changed(self, change: StateChange) -> None:
        """A chain's transition: printed once as a line; the title follows the session, and the clock restarts
        whenever a kernel is pushed and starts running."""
        self.note(change.line())
        with self._lock:
            if change.session != self._session:
                self._session = change.session
                self.last_train, self.last_val = None, None
                self.log_tail.clear()
            if change.state is ChainState.RUNNING:
                self.started_at = change.at
            where = f" · session {change.session}/{change.sessions}" if change.session else ""
            self.title = f"{change.chain_id}{where}"
            self.state = change.state.value
            self.message = change.message or None
        if self._live is not None:
            self._live.refresh()

    def log_lines(self, lines: Sequence[str]) -> None:
        self.update(log_lines=lines)

    def retrying(self, retry: Retrying) -> None:
        self.note(retry.line())

    def kernel_failed(self, failed: KernelFailed) -> None:
        for line in failed.lines():
            self.note(line)

    def outputs_rejected(self, version: int, problem: str) -> None:
        self.note(outputs_rejected_line(version, problem))

    def notification_failed(self, problem: str) -> None:
        self.note(f"notification failed: {problem}")

    def note(self, text: str) -> None:
        """A one-off line (e.g. "downloading outputs") printed above the display, or as a plain line."""
        if self.plain:
            self._emit_plain(text)
        else:
            self.console.print(Text(text))

    def _apply_state(self, state: str | None, message: str | None, title: str | None) -> bool:
        changed = False
        if state is not None and state != self.state:
            self.state, changed = state, True
        if message is not None and message != self.message:
            self.message, changed = message, True
        if title is not None and title != self.title:
            self.title, changed = title, True
        return changed

    def _take_lines(self, lines: Iterable[str]) -> bool:
        """Keep the tail and the newest metrics; True when a validation line arrived (worth a plain line)."""
        new_val = False
        for raw in lines:
            line = raw.rstrip("\r\n")
            self.log_tail.append(line)
            if self.plain and self._plain_log_lines:
                self._emit_plain(f"| {line}")
            metric = parse_metric_line(line)
            if metric is None:
                continue
            if metric.kind == "start":
                self._take_start(metric)
            elif metric.kind == "train":
                self.last_train, self._unprinted = metric, True
            elif metric.kind == "val":
                self.last_val, new_val = metric, True
        return new_val

    def _take_start(self, metric: MetricLine) -> None:
        """The trainer's ``start`` line says where this run resumed: progress counts from there."""
        epoch, step = metric.fields.get("epoch"), metric.fields.get("step")
        if isinstance(epoch, int):
            self.start_epoch = epoch
        if isinstance(step, int):
            self.start_step = step

    # ------------------------------------------------------------------------------------ plain mode

    def _print_plain(self, *, changed: bool) -> None:
        now = self._clock()
        due = self._last_plain_progress is None or now - self._last_plain_progress >= self._plain_interval_s
        if changed or (due and self._unprinted):
            self._emit_plain(self._status_line())
            self._last_plain_progress = now
            self._unprinted = False

    def _emit_plain(self, text: str) -> None:
        stamp = datetime.fromtimestamp(self._clock()).strftime("%Y-%m-%d %H:%M:%S")
        stream: IO[str] = self.console.file if self.console.file is not None else sys.stderr
        stream.write(f"{stamp} {text}\n")
        stream.flush()

    def _status_line(self) -> str:
        parts = [f"{self.title}: {self.state or 'waiting'}", f"elapsed {format_duration(self.elapsed_s())}"]
        remaining = self.remaining_s()
        if remaining is not None:
            parts.append(f"{format_duration(remaining)} left")
        parts += [text for text in (self._train_text(), self._val_text(), self.message) if text]
        return " · ".join(parts)

    # ------------------------------------------------------------------------------------ numbers

    def elapsed_s(self) -> float:
        return max(0.0, self._clock() - self.started_at)

    def remaining_s(self) -> float | None:
        if self.budget_s is None:
            return None
        return max(0.0, self.budget_s - self.elapsed_s())

    def step_fraction(self) -> float | None:
        """How much of ``total_steps`` this session has done, from the newest train line."""
        step = self._train_int("step")
        if self.total_steps is None or self.total_steps <= 0 or step is None:
            return None
        return min(1.0, max(0.0, (step - self.start_step) / self.total_steps))

    def _train_int(self, name: str) -> int | None:
        value = self.last_train.fields.get(name) if self.last_train else None
        return value if isinstance(value, int) else None

    def _train_text(self) -> str:
        if self.last_train is None:
            return ""
        fields = self.last_train.fields
        epoch, step = self._train_int("epoch"), self._train_int("step")
        parts = []
        if epoch is not None:
            target = f"/{self.start_epoch + self.total_epochs}" if self.total_epochs else ""
            parts.append(f"epoch {epoch}{target}")
        if step is not None:
            target = f"/{self.start_step + self.total_steps}" if self.total_steps else ""
            parts.append(f"step {step}{target}")
        parts += [_metric_text(name, fields.get(key)) for key, name in (("loss", "loss"), ("lr", "lr"))]
        return " ".join(p for p in parts if p)

    def _val_text(self) -> str:
        if self.last_val is None:
            return ""
        fields = self.last_val.fields
        names = (("bleu4", "BLEU-4"), ("exact_match", "exact"), ("edit_distance", "edit dist"))
        parts = [_metric_text(name, fields.get(key)) for key, name in names]
        return f"val@{fields.get('step', '?')} " + " ".join(p for p in parts if p)

    # ------------------------------------------------------------------------------------ live mode

    def _render(self) -> RenderableType:
        with self._lock:
            table = Table.grid(padding=(0, 2))
            table.add_column(style="bold", no_wrap=True)
            table.add_column()
            table.add_row("state", Text(self.state or "waiting"))
            table.add_row("time", Text(self._time_text()))
            if self.last_train is not None:
                table.add_row("progress", self._progress_renderable())
            if self.last_val is not None:
                table.add_row("validation", Text(self._val_text()))
            if self.message:
                table.add_row("note", Text(self.message))
            parts: list[RenderableType] = [table]
            if self.log_tail:
                log = Text("\n").join(Text(line) for line in self.log_tail)
                log.no_wrap, log.overflow = True, "ellipsis"  # one screen line per log line, cut at the edge
                parts.append(Panel(log, title="log", title_align="left", border_style="dim"))
            return Panel(Group(*parts), title=Text(self.title), title_align="left")

    def _time_text(self) -> str:
        text = f"elapsed {format_duration(self.elapsed_s())}"
        remaining = self.remaining_s()
        return text if remaining is None else f"{text} · {format_duration(remaining)} left"

    def _progress_renderable(self) -> RenderableType:
        fraction = self.step_fraction()
        text = Text(self._train_text())
        if fraction is None:
            return text
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=1.0, completed=fraction, width=30), Text(f"{fraction:.0%}"), text)
        return bar


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (hours grow past 24: a chain runs for days)."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _metric_text(name: str, value: object) -> str:
    if isinstance(value, float):
        return f"{name} {value:.3e}" if name == "lr" else f"{name} {value:.4g}"
    if isinstance(value, int):
        return f"{name} {value}"
    return ""
