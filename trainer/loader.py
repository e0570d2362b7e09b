"""The training DataLoader, and turning a dead or silent worker into one clear error instead of a hang.

A batch from a worker takes milliseconds; when none comes for ``timeout_s`` (trainer/watch.py sizes it below
the watchdog's stall timeout), the loop stops with a ``LoaderError`` that names the worker, its pid and the
cause: the error the worker hit while sending a batch (e.g. ``OSError: AF_UNIX path too long``, which
multiprocessing only prints in the worker), or where it is stuck (its stack, dumped on request). A worker that
died is named the same way.

Workers are forked (no re-import of ``__main__``; the split's arrays, mapped read-only, are shared as they are)
and draw their seeds from the loader's own generator, never from the global torch RNG (exact resume).
"""

from __future__ import annotations

import atexit
import faulthandler
import functools
import multiprocessing.queues
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.images import worker_context
from trainer.logs import get_logger
from trainer.sockets import ensure_short_tempdir

PREFETCH_BATCHES = 4
STACK_WAIT_S = 2.0  # for a stuck worker to write its stack after SIGUSR1
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_kept_open: list[IO[str]] = []  # a worker's stack file stays open for faulthandler


class LoaderError(Exception):
    """A DataLoader worker died or went silent; the message is one line: which worker, why, what now."""


def build_loader(dataset: Dataset[Any], batch_sampler: Sampler[list[int]], *, workers: int, pin_memory: bool,
                 seed: int, timeout_s: float, collate_fn: Callable[[Any], Any] | None = None) -> DataLoader[Any]:
    """Batches of ``batch_sampler``'s indices; with workers, persistent, prefetching and timed out."""
    if workers == 0:
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, pin_memory=pin_memory,
                          generator=torch.Generator().manual_seed(seed))
    note = ensure_short_tempdir()  # before the first socket: workers send batches through one
    if note:
        get_logger().info(note)
    diagnostics = WorkerDiagnostics.create()
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=True, prefetch_factor=PREFETCH_BATCHES,
                      generator=torch.Generator().manual_seed(seed), timeout=timeout_s,
                      worker_init_fn=functools.partial(_init_worker, diagnostics.folder),
                      multiprocessing_context=worker_context())


def batches(loader: DataLoader[Any]) -> Iterator[Any]:
    """``iter(loader)``, with a silent or dead worker raised as a LoaderError."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError as exc:
            problem = describe_failure(loader, iterator, exc)
            if problem is None:
                raise
            raise LoaderError(problem) from exc
        yield batch


def describe_failure(loader: DataLoader[Any], iterator: Any, exc: RuntimeError) -> str | None:
    """The one-line account of a loader failure, or None when ``exc`` is not one (a dataset's own error)."""
    text = str(exc)
    if "timed out" in text:
        worker_id, pid = _awaited_worker(iterator)
        cause = WorkerDiagnostics.of(loader).cause(worker_id, pid)
        return (f"DataLoader worker {worker_id} (pid {pid}) delivered no batch for {loader.timeout:.0f} s: {cause}; "
                "nothing after the last checkpoint was saved: resume from it")
    if "exited unexpectedly" in text or "killed by signal" in text:
        return (f"{text.strip().rstrip('.')} (out of memory? fewer --num_workers need less); nothing after the last "
                "checkpoint was saved: resume from it")
    return None


def _awaited_worker(iterator: Any) -> tuple[int | str, int | str]:
    """The worker that owes the batch the loader waits for (the DataLoader's bookkeeping), and its pid."""
    try:
        worker_id = int(iterator._task_info[iterator._rcvd_idx][0])
        return worker_id, int(iterator._workers[worker_id].pid)
    except (AttributeError, KeyError, IndexError, TypeError):
        return "?", "?"


class WorkerDiagnostics:
    """A private folder where each worker records why it failed to send a batch and, on SIGUSR1, its stack."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def create(cls) -> WorkerDiagnostics:
        folder = Path(tempfile.mkdtemp(prefix="kr-loader-"))
        atexit.register(_remove, folder, os.getpid())
        return cls(folder)

    @classmethod
    def of(cls, loader: DataLoader[Any]) -> WorkerDiagnostics:
        init = loader.worker_init_fn
        folder = init.args[0] if isinstance(init, functools.partial) and init.args else tempfile.gettempdir()
        return cls(Path(folder))

    def cause(self, worker_id: int | str, pid: int | str) -> str:
        sent = self._send_errors(worker_id)
        if sent:
            return f"it failed to send a batch ({sent})"
        where = self._stuck_at(worker_id, pid)
        return f"it is stuck {where}" if where else "it is alive but silent"

    def _send_errors(self, worker_id: int | str) -> str | None:
        found = sorted(self.folder.glob(f"worker-{worker_id}.err")) or sorted(self.folder.glob("worker-*.err"))
        for path in found:
            lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            if lines:
                return f"{lines[-1]} in worker {path.stem.removeprefix('worker-')}"
        return None

    def _stuck_at(self, worker_id: int | str, pid: int | str) -> str | None:
        stack = self.folder / f"worker-{worker_id}.stack"
        if not isinstance(pid, int) or not stack.is_file():
            return None
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            return None
        # faulthandler writes the newest thread first (the worker's socket threads), its loop thread last:
        # a dump read while it is being written may not have reached the loop thread yet, so wait for it.
        deadline = time.monotonic() + STACK_WAIT_S
        while True:
            expired = time.monotonic() >= deadline
            frames = innermost_frames(stack.read_text(encoding="utf-8", errors="replace"), any_thread=expired)
            if frames:
                return "in " + " called from ".join(frames)
            if expired:
                return None
            time.sleep(0.05)


def innermost_frames(dump: str, *, any_thread: bool = False) -> list[str]:
    """From a faulthandler dump, where the worker's loop thread is: its innermost frame, and the innermost
    one outside Python's and torch's own files when that is another (the user's dataset code). Without the
    loop thread in the dump, nothing; or, with ``any_thread``, the first thread's."""
    blocks = dump.split("\n\n")
    loop = next((b for b in blocks if "_worker_loop" in b), blocks[0] if blocks and any_thread else "")
    frames = [m.groupdict() for m in (_FRAME.match(line) for line in loop.splitlines()) if m]
    if not frames:
        return []
    own = next((f for f in frames if not _is_library(f["file"])), None)
    chosen = [frames[0]] + ([own] if own is not None and own is not frames[0] else [])
    return [f"{f['func']} ({Path(f['file']).name}:{f['line']})" for f in chosen]


def _is_library(path: str) -> bool:
    return any(part in path for part in (f"{os.sep}torch{os.sep}", f"{os.sep}multiprocessing{os.sep}",
                                         "python3.", "site-packages"))


def _init_worker(folder: Path, worker_id: int) -> None:
    """In each worker: its stack on SIGUSR1 into ``worker-<id>.stack``; an error while sending a batch (raised
    in the queue's feeder thread, which multiprocessing only prints) also into ``worker-<id>.err``."""
    stack = open(folder / f"worker-{worker_id}.stack", "w", encoding="utf-8")  # noqa: SIM115 - kept open
    _kept_open.append(stack)
    faulthandler.register(signal.SIGUSR1, file=stack, all_threads=True, chain=False)
    printer = multiprocessing.queues.Queue._on_queue_feeder_error  # type: ignore[attr-defined]

    def record(error: BaseException, obj: object) -> None:
        with open(folder / f"worker-{worker_id}.err", "a", encoding="utf-8") as handle:
            handle.write(f"{type(error).__name__}: {error}\n")
        printer(error, obj)

    multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(record)  # type: ignore[attr-defined]


def _remove(folder: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


__all__: Sequence[str] = ("LoaderError", "batches", "build_loader", "describe_failure", "innermost_frames")
