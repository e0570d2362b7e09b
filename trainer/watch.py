"""What the kernel's progress watchdog sees of the trainer (``kr_contract.heartbeat``: the protocol), and the
trainer's own timeouts, sized below the watchdog's.

Every rank writes its pid and dumps its stacks on SIGUSR1 (``start``). Rank 0 beats as it makes progress:
``start`` (before torch is imported), ``download`` (a Hugging Face download: only when its cache grew),
``prepare`` (per chunk of images decoded), ``train`` (per step), ``validate`` (per batch), ``save``, ``stop``.
A beat is throttled within a phase, so calling ``beat`` per step costs nothing.

Timeouts: a stuck DataLoader worker or a peer rank that stops answering must end the run with a clear error
before the watchdog has to kill it (``KR_STALL_TIMEOUT_S``, 15 minutes when unset), but a legitimate wait
must never trip them: the longest is a collective waiting while rank 0 scores a validation and saves (well
under a minute measured on the base model, bench/README.md); a batch from a worker takes milliseconds.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from kr_contract.heartbeat import Heartbeat, install_stack_dump, watchdog_dir
from kr_contract.names import ENV_STALL_TIMEOUT

DEFAULT_STALL_TIMEOUT_S = 15 * 60.0  # the watchdog's default (kr.toml stall_timeout_s)
COLLECTIVE_SHARE = 2 / 3  # a peer that stops answering ends the run at 2/3 of the stall timeout: 10 min
MIN_COLLECTIVE_TIMEOUT_S = 10.0
LOADER_TIMEOUT_S = 120.0  # a DataLoader worker silent for this long is stuck (a batch takes milliseconds)
LOADER_SHARE = 1 / 3
MIN_LOADER_TIMEOUT_S = 2.0
DOWNLOAD_POLL_S = 10.0

_heartbeat: Heartbeat | None = None
_started = False


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def start(rank: int | None = None) -> None:
    """Once per process, as early as possible: pid file and stack dumps (every rank), the ``start`` beat."""
    global _started
    if _started:
        return
    _started = True
    rank = env_rank() if rank is None else rank
    install_stack_dump(watchdog_dir(), rank)
    heartbeat().beat("start", force=True)


def heartbeat() -> Heartbeat:
    global _heartbeat
    if _heartbeat is None:
        _heartbeat = Heartbeat.from_env(env_rank())
    return _heartbeat


def beat(phase: str, *, step: int | None = None, epoch: int | None = None, force: bool = False,
         **detail: Any) -> None:
    heartbeat().beat(phase, step=step, epoch=epoch, force=force, **detail)


def stall_timeout_s() -> float:
    raw = os.environ.get(ENV_STALL_TIMEOUT, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_STALL_TIMEOUT_S
    except ValueError:
        value = DEFAULT_STALL_TIMEOUT_S
    return value if value > 0 else DEFAULT_STALL_TIMEOUT_S


def collective_timeout_s() -> float:
    """How long a collective waits for a peer: shorter than the watchdog's stall timeout, so that a rank that
    stops answering ends the run with the process group's error instead of a silent stall."""
    return max(MIN_COLLECTIVE_TIMEOUT_S, COLLECTIVE_SHARE * stall_timeout_s())


def loader_timeout_s() -> float:
    """How long the training loop waits for one batch from a DataLoader worker."""
    return max(MIN_LOADER_TIMEOUT_S, min(LOADER_TIMEOUT_S, LOADER_SHARE * stall_timeout_s()))


# ------------------------------------------------------------------------------------------- downloads


def folder_bytes(folders: Iterable[Path]) -> int:
    """Bytes of the files under ``folders`` (missing ones count 0; files vanishing mid-walk are skipped)."""
    total = 0
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            for name in files:
                with suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
    return total


class GrowthWatcher:
    """A thread that beats ``phase`` each time the bytes under ``folders`` grew since its last look, and
    never otherwise: a download that stops making progress must look like a stall to the watchdog."""

    def __init__(self, folders: list[Path], phase: str = "download", interval_s: float = DOWNLOAD_POLL_S,
                 **detail: Any) -> None:
        self.folders = folders
        self.phase = phase
        self.interval_s = interval_s
        self.detail = detail
        self.last_bytes = folder_bytes(folders)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kr-download-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = folder_bytes(self.folders)
            if now > self.last_bytes:
                self.last_bytes = now
                beat(self.phase, bytes=now, **self.detail)

    def __enter__(self) -> GrowthWatcher:
        beat(self.phase, force=True, bytes=self.last_bytes, **self.detail)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()  # before the caller beats again: one writer at a time


@contextmanager
def download_progress(folders: list[Path], **detail: Any) -> Iterator[GrowthWatcher]:
    with GrowthWatcher(folders, **detail) as watcher:
        yield watcher
