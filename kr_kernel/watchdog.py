"""The progress watchdog: a trainer that makes no progress for ``stall_timeout_s`` is stopped in minutes,
not at Kaggle's 12-hour wall.

A stuck DataLoader worker, a stuck NCCL collective, a Hugging Face download that never finishes or a trainer
that never starts training would otherwise burn the whole session (a third of a week's GPU quota). The trainer
beats into ``$KR_WATCHDOG_DIR/heartbeat.json`` whenever it progresses (kr_contract.heartbeat); the watchdog
polls it while it waits for the trainer. When no new beat comes for the timeout it

1. sends SIGUSR1 to every trainer process (their pids are in the same folder), which dumps every thread's
   Python stack into ``stacks-rank<R>.txt`` (faulthandler works even when the interpreter is stuck in C code),
   and copies the stacks into the log;
2. prints one ``KR_STALLED: ...`` line that says where rank 0's main thread is stuck;
3. stops the trainer: SIGTERM (it saves if it still can), then SIGKILL to every trainer process and its
   process group (torchrun starts each worker in a session of its own).

The checkpoint saved before the stall is untouched: every save is atomic, and nothing is saved after a kill.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kr_contract.heartbeat import STACK_SIGNAL, read_heartbeat, stacks_file_name
from kr_contract.names import TAG_STALLED

MAX_POLL_S = 10.0
MAX_GRACE_S = 60.0  # between SIGTERM and SIGKILL
STACK_WAIT_S = 5.0  # for the dumps to land after SIGUSR1
_PID_FILE = re.compile(r"^pid-rank(\d+)$")
_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):$")
_FRAME = re.compile(r'^\s+File "(.+)", line (\d+) in (.+)$')

Log = Callable[[str], None]


@dataclass(frozen=True)
class Stall:
    """What the watchdog saw: the last heartbeat's phase and step, the silence, where rank 0 was stuck."""

    phase: str | None
    step: int | None
    epoch: int | None
    silent_s: float
    where: str

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "step": self.step, "epoch": self.epoch, "silent_s": self.silent_s,
                "where": self.where}

    def message(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        epoch = f" (epoch {self.epoch})" if self.epoch is not None else ""
        phase = f"in phase {self.phase}" if self.phase else "before the trainer's first heartbeat"
        return f"no progress for {self.silent_s:.0f} s {phase}{at}{epoch}; stuck at {self.where}"


class Watchdog:
    def __init__(self, folder: Path, timeout_s: float, log: Log, *, clock: Callable[[], float] = time.monotonic,
                 out: Callable[[str], None] | None = None) -> None:
        self.folder = folder
        self.timeout_s = timeout_s
        self.poll_s = max(0.2, min(MAX_POLL_S, timeout_s / 10))
        self.grace_s = min(MAX_GRACE_S, max(2.0, timeout_s / 4))
        self.log = log
        self.out = out or _print_raw
        self.clock = clock

    def wait(self, process: subprocess.Popen[Any]) -> Stall | None:
        """Wait until the trainer exits (None), or stop it when it makes no progress (the Stall)."""
        silent_since, seen, beat = self.clock(), None, None
        while True:
            try:
                process.wait(timeout=self.poll_s)
                return None
            except subprocess.TimeoutExpired:
                pass
            latest = read_heartbeat(self.folder)
            if latest is not None and latest.get("time") != seen:
                silent_since, seen, beat = self.clock(), latest.get("time"), latest
            silent = self.clock() - silent_since
            if silent >= self.timeout_s:
                return self._stop(process, beat, silent)

    def _stop(self, process: subprocess.Popen[Any], beat: dict[str, Any] | None, silent: float) -> Stall:
        beat = beat or {}
        pids = self._trainer_pids()
        stacks = self._dump_stacks(pids)
        for rank, text in sorted(stacks.items()):
            self.log(f"stacks of rank {rank} (pid {pids[rank]}), most recent call first:")
            self.out(text.rstrip())
        main_rank = min(stacks) if stacks else None
        where = locate(stacks[main_rank], beat.get("main_thread")) if main_rank is not None else (
            "an unknown place (no trainer process answered with its stack)")
        stall = Stall(_str(beat.get("phase")), _int(beat.get("step")), _int(beat.get("epoch")), round(silent, 1),
                      where if main_rank in (0, None) else f"{where} (rank {main_rank})")
        self.out(f"{TAG_STALLED}: {stall.message()}")
        self._terminate(process, pids)
        return stall

    def _trainer_pids(self) -> dict[int, int]:
        pids = {}
        for path in self.folder.glob("pid-rank*"):
            match = _PID_FILE.match(path.name)
            try:
                if match:
                    pids[int(match.group(1))] = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
        return pids

    def _dump_stacks(self, pids: dict[int, int]) -> dict[int, str]:
        """Ask each trainer process for its stacks and read what each wrote (after what it held before)."""
        offsets: dict[int, int] = {}
        for rank, pid in pids.items():
            path = self.folder / stacks_file_name(rank)
            offsets[rank] = path.stat().st_size if path.is_file() else 0
            try:
                os.kill(pid, STACK_SIGNAL)
            except OSError:
                offsets.pop(rank)
        # A dump is complete once it stops growing between two polls.
        deadline = time.monotonic() + STACK_WAIT_S
        previous: dict[int, str] = {}
        stacks: dict[int, str] = {}
        while offsets and time.monotonic() < deadline:
            time.sleep(0.2)
            for rank in list(offsets):
                text = _read_from(self.folder / stacks_file_name(rank), offsets[rank])
                if text.strip() and text == previous.get(rank):
                    stacks[rank] = text
                    offsets.pop(rank)
                previous[rank] = text
        stacks.update({rank: previous[rank] for rank in offsets if previous.get(rank, "").strip()})
        return stacks

    def _terminate(self, process: subprocess.Popen[Any], pids: dict[int, int]) -> None:
        self.log(f"stopping the trainer (SIGTERM, SIGKILL after {self.grace_s:.0f} s)")
        _signal(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.grace_s)
        for pid in pids.values():
            _kill_with_group(pid)
        _kill_with_group(process.pid)
        process.wait()


def locate(stacks: str, main_thread: object) -> str:
    """Where the main thread (or, without its id, the first thread listed) is: the innermost frame of the
    trainer's own code, and the innermost frame of all when that lies deeper (a library's wait)."""
    threads = _parse_threads(stacks)
    if not threads:
        return "an unknown place (the stack dump was empty)"
    ident = main_thread if isinstance(main_thread, int) else None
    frames = threads.get(ident) if ident is not None else None
    frames = frames or next(iter(threads.values()))
    if not frames:
        return "an unknown place (no Python frame)"
    innermost = _frame_text(frames[0])
    own = next((f for f in frames if "/trainer/" in f[0].replace(os.sep, "/")), None)
    if own is None or own is frames[0]:
        return innermost
    return f"{_frame_text(own)}, waiting in {innermost}"


def _parse_threads(text: str) -> dict[int, list[tuple[str, int, str]]]:
    threads: dict[int, list[tuple[str, int, str]]] = {}
    current: list[tuple[str, int, str]] | None = None
    for line in text.splitlines():
        header = _THREAD.match(line.strip())
        if header:
            current = threads.setdefault(int(header.group(1), 16), [])
            continue
        frame = _FRAME.match(line)
        if frame and current is not None:
            current.append((frame.group(1), int(frame.group(2)), frame.group(3).strip()))
    return threads


def _frame_text(frame: tuple[str, int, str]) -> str:
    path, line, function = frame
    posix = path.replace(os.sep, "/")
    short = posix[posix.rindex("/trainer/") + 1:] if "/trainer/" in posix else posix
    return f"{short}:{line} in {function}"


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            return handle.read()
    except OSError:
        return ""


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def _kill_with_group(pid: int) -> None:
    """SIGKILL ``pid`` and, when it leads a process group other than ours, that group (its DataLoader workers)."""
    try:
        group = os.getpgid(pid)
    except OSError:
        return
    if group == pid and group != os.getpgrp():
        try:
            os.killpg(group, signal.SIGKILL)
            return
        except OSError:
            pass
    _signal(pid, signal.SIGKILL)


def _print_raw(text: str) -> None:
    print(text, flush=True)
    sys.stdout.flush()


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
