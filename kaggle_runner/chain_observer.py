"""What a running chain reports, as typed calls: ``ChainObserver``.

``ChainRunner`` never writes to the terminal. It tells its observer what happened (a state change, a retry,
kernel log lines, a failed kernel's log tail, outputs that did not verify, a failed notification, a stage's
timing); the CLI's display (``progress.SessionProgress``) shows them live, ``LineObserver`` turns them into
plain lines (tests, logs, pipes). Every method has a do-nothing default, so an observer implements only what
it shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kaggle_runner.chain_machine import ChainState


@dataclass(frozen=True)
class StateChange:
    """One persisted transition."""

    chain_id: str
    backend: str
    kernel_ref: str
    session: int  # 0 before the first session
    sessions: int
    previous: ChainState
    state: ChainState
    reason: str
    message: str | None
    at: float

    def event(self) -> dict[str, Any]:
        """The JSON event ``--notify-cmd`` / ``--notify-url`` receive (kaggle_runner/README.md)."""
        return {
            "event": "chain.state",
            "chain": self.chain_id,
            "backend": self.backend,
            "kernel": self.kernel_ref,
            "session": self.session,
            "sessions": self.sessions,
            "state": self.state.value,
            "previous": self.previous.value,
            "reason": self.reason,
            "message": self.message,
            "terminal": self.state.is_terminal,
            "failed": self.state.is_failed,
            "at": self.at,
        }

    def line(self) -> str:
        where = f"session {self.session}/{self.sessions}" if self.session else "chain"
        return f"[{self.chain_id}] {where}: {self.state.value} ({self.message or self.reason})"


@dataclass(frozen=True)
class Retrying:
    """A backend call failed and will be tried again after ``delay_s``."""

    what: str
    problem: str
    delay_s: float
    checks_first: bool  # a push or publish: it is looked up before it is repeated

    def line(self) -> str:
        checking = "checking it did not go through, " if self.checks_first else ""
        return f"{self.what} failed ({self.problem}); {checking}retrying in {self.delay_s:.0f}s"


@dataclass(frozen=True)
class KernelFailed:
    """A pushed version ended without completing; ``log_tail`` is the end of its log."""

    kernel_ref: str
    version: int
    state: str
    log_tail: str

    def lines(self) -> list[str]:
        head = f"kernel {self.kernel_ref} version {self.version} ended in {self.state}; log tail:"
        return [head, *(f"  | {line}" for line in self.log_tail.splitlines())]


class ChainObserver:
    """Receives what a chain does. The defaults do nothing."""

    def state_changed(self, change: StateChange) -> None:
        """A transition was persisted."""

    def retrying(self, retry: Retrying) -> None:
        """A backend call failed and is retried."""

    def log_lines(self, lines: Sequence[str]) -> None:
        """New lines of the running kernel's log (with ``follow_logs``)."""

    def kernel_failed(self, failed: KernelFailed) -> None:
        """A kernel version failed; its log tail is worth showing."""

    def outputs_rejected(self, version: int, problem: str) -> None:
        """A version's downloaded outputs did not verify; they are downloaded again."""

    def notification_failed(self, problem: str) -> None:
        """``--notify-cmd`` / ``--notify-url`` failed (the chain goes on)."""

    def stage_timed(self, stage: str, seconds: float) -> None:
        """A stage of a session (push, queue, run, ...) took ``seconds`` (``kr chain --smoke`` reports them)."""


class LineObserver(ChainObserver):
    """Every report as plain text lines, written by ``write`` (``print``, a list's ``append``, a logger)."""

    def __init__(self, write: Callable[[str], None], *, log_lines: bool = True) -> None:
        self.write = write
        self.show_log_lines = log_lines

    def state_changed(self, change: StateChange) -> None:
        self.write(change.line())

    def retrying(self, retry: Retrying) -> None:
        self.write(retry.line())

    def log_lines(self, lines: Sequence[str]) -> None:
        if self.show_log_lines:
            for line in lines:
                self.write(f"  | {line}")

    def kernel_failed(self, failed: KernelFailed) -> None:
        for line in failed.lines():
            self.write(line)

    def outputs_rejected(self, version: int, problem: str) -> None:
        self.write(outputs_rejected_line(version, problem))

    def notification_failed(self, problem: str) -> None:
        self.write(f"notification failed: {problem}")

    def stage_timed(self, stage: str, seconds: float) -> None:
        self.write(f"{stage}: {seconds:.1f}s")


def outputs_rejected_line(version: int, problem: str) -> str:
    return f"outputs of version {version} do not verify ({problem}); downloading again"
