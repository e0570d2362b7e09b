"""The trainer's progress heartbeat and stack dumps, which the kernel's watchdog reads.

When ``$KR_WATCHDOG_DIR`` is set (the kernel sets it), the trainer

- writes ``heartbeat.json`` there (rank 0 only) whenever it makes progress, at most every few seconds and at
  least every minute while it progresses: ``{"time", "phase", "step", "epoch", "pid", "main_thread",
  "detail"}``. ``phase`` is what it is doing (``start``, ``download``, ``prepare``, ``train``, ``validate``,
  ``save``, ...); a phase that can take long reports its own progress (bytes downloaded, images decoded);
- writes ``pid-rank<R>`` (every rank) and registers a stack dump on SIGUSR1 into ``stacks-rank<R>.txt``
  (Python's faulthandler: every thread's stack, even when the interpreter is stuck in C code).

The watchdog treats a heartbeat whose ``time`` moved as progress. When none comes for its timeout it sends
SIGUSR1 to each pid, reads the stacks, then stops the trainer.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kr_contract.atomic import read_json_object
from kr_contract.names import ENV_WATCHDOG_DIR

HEARTBEAT_FILE = "heartbeat.json"
# Beats closer together than this are dropped (the same phase); the watchdog's timeout is minutes.
MIN_BEAT_INTERVAL_S = 5.0
STACK_SIGNAL = signal.SIGUSR1


def stacks_file_name(rank: int) -> str:
    return f"stacks-rank{rank}.txt"


def pid_file_name(rank: int) -> str:
    return f"pid-rank{rank}"


def watchdog_dir() -> Path | None:
    raw = os.environ.get(ENV_WATCHDOG_DIR)
    return Path(raw) if raw else None


class Heartbeat:
    """Progress reports of one process. A no-op without a folder (no watchdog) or on ranks other than 0."""

    def __init__(self, folder: Path | None, *, enabled: bool = True, min_interval_s: float = MIN_BEAT_INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = folder if enabled else None
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last_time = float("-inf")
        self._last_phase: str | None = None

    @classmethod
    def from_env(cls, rank: int = 0) -> Heartbeat:
        return cls(watchdog_dir(), enabled=rank == 0)

    def beat(self, phase: str, *, step: int | None = None, epoch: int | None = None, force: bool = False,
             **detail: Any) -> None:
        """Report progress. Throttled: a beat within ``min_interval_s`` of the last one in the same phase is
        dropped unless ``force``."""
        if self.folder is None:
            return
        now = self.clock()
        if not force and phase == self._last_phase and now - self._last_time < self.min_interval_s:
            return
        self._last_time, self._last_phase = now, phase
        record = {"time": now, "phase": phase, "step": step, "epoch": epoch, "pid": os.getpid(),
                  "main_thread": threading.main_thread().ident, "detail": detail}
        # No fsync: a heartbeat only matters while this machine runs; the rename keeps it whole.
        tmp = self.folder / f".{HEARTBEAT_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(record, default=str), encoding="utf-8")
            os.replace(tmp, self.folder / HEARTBEAT_FILE)
        except OSError:
            pass  # a full disk must not stop training; the watchdog then sees silence and says so


def read_heartbeat(folder: Path) -> dict[str, Any] | None:
    return read_json_object(folder / HEARTBEAT_FILE)


_stack_files: list[IO[str]] = []  # kept open for the life of the process: faulthandler writes to its fd


def install_stack_dump(folder: Path | None, rank: int) -> bool:
    """Write this process's pid and dump every thread's stack into the rank's stack file on SIGUSR1.
    Does nothing (False) without a watchdog folder; call it from the main thread."""
    if folder is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / stacks_file_name(rank), "w", encoding="utf-8")  # noqa: SIM115 - kept open
    _stack_files.append(handle)
    faulthandler.register(STACK_SIGNAL, file=handle, all_threads=True, chain=False)
    (folder / pid_file_name(rank)).write_text(str(os.getpid()), encoding="utf-8")
    return True
