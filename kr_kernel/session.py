"""One session: restore the expected checkpoint, run the trainer under the watchdog, write run.json."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

from kr_contract.names import EXIT_STALLED, STOP_CRASH, STOP_STALLED, STOP_UNKNOWN, TRAINER_RESULT
from kr_contract.runjson import read_trainer_result, write_run_json
from kr_kernel.inputs import KernelExit, continue_log, find_checkpoint_dir, input_root, restore_checkpoints
from kr_kernel.settings import KernelSettings
from kr_kernel.trainer_process import (
    gpu_count,
    install_missing,
    settled_exit_code,
    trainer_command,
    trainer_env,
)
from kr_kernel.watchdog import Stall, Watchdog


def log(message: str) -> None:
    print("[kr] " + message, flush=True)


def run_session(settings: KernelSettings) -> int:
    args: list[str] = []
    gpus = 0
    try:
        log(f"chain {settings.chain} session {settings.session}, budget {settings.budget_s:g}s, "
            f"stall timeout {settings.stall_timeout_s:g}s")
        checkpoint = _restore(settings)
        install_missing(settings, log)
        gpus = gpu_count()
        command = trainer_command(settings, gpus, checkpoint)
        args = command[1:]
        started = time.time()
        exit_code, stall = run_watched(settings, command)
        if stall is not None:
            _write_run(settings, EXIT_STALLED, args, gpus, stop_reason=STOP_STALLED, message=stall.message(),
                       stall=stall)
            log(f"the watchdog stopped the trainer; exit code {EXIT_STALLED}")
            return EXIT_STALLED
        exit_code = settled_exit_code(exit_code, gpus, started, log)
        _write_run(settings, exit_code, args, gpus, fresh_since=started)
        log(f"trainer exited with code {exit_code}")
        return exit_code
    except KernelExit as stop:
        print(f"{stop.tag}: {stop.message}", flush=True)
        _write_run(settings, stop.code, args, gpus, stop_reason=stop.stop_reason, message=stop.message)
        return stop.code


def _restore(settings: KernelSettings) -> str | None:
    """The --checkpoint for the trainer, after restoring the expected one (None for a fresh start)."""
    if settings.expect is None:
        return None
    folder = find_checkpoint_dir(input_root(), settings.dataset_sources, settings.expect)
    log(f"resuming from {folder}")
    checkpoint = restore_checkpoints(folder, Path(settings.scratch_dir), settings.expect, log)
    continue_log(folder)
    return checkpoint


def run_watched(settings: KernelSettings, command: list[str]) -> tuple[int, Stall | None]:
    """Run the trainer, forwarding SIGTERM/SIGINT to it (it saves and exits cleanly on them), under the
    watchdog. Returns its exit code and the stall, if the watchdog stopped it."""
    folder = Path(settings.scratch_dir) / "watchdog"
    folder.mkdir(parents=True, exist_ok=True)
    log("running " + " ".join(command[1:]))
    process = subprocess.Popen(command, env=trainer_env(settings, folder))

    def forward(signum: int, frame: FrameType | None) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stall = Watchdog(folder, settings.stall_timeout_s, log).wait(process)
        return process.wait(), stall
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_run(settings: KernelSettings, exit_code: int, args: list[str], gpus: int, *,
               stop_reason: str | None = None, message: str | None = None, stall: Stall | None = None,
               fresh_since: float | None = None) -> None:
    """run.json (kr_contract.runjson). Without a stop reason of its own, the trainer's result says why."""
    result = _fresh_result(fresh_since) if stop_reason is None else None
    if stop_reason is None:
        stop_reason = (result or {}).get("stop_reason") or (STOP_CRASH if exit_code else STOP_UNKNOWN)
    ended = time.time()
    run: dict[str, Any] = {
        "kr_version": settings.kr_version,
        "chain": settings.chain,
        "session": settings.session,
        "trainer_sha256": settings.trainer_sha256,
        "args": args,
        "exit_code": exit_code,
        "stop_reason": stop_reason,
        "message": message if message is not None else (result or {}).get("message"),
        "resumed_from": settings.expect,
        "started": _iso(settings.started),
        "ended": _iso(ended),
        "seconds": round(ended - settings.started, 3),
        "gpus": gpus,
        "result": result,
        "stall": stall.to_json() if stall is not None else None,
    }
    write_run_json(".", run)


def _fresh_result(since: float | None) -> dict[str, Any] | None:
    """trainer_result.json, when this session's trainer wrote it."""
    try:
        if since is not None and os.path.getmtime(TRAINER_RESULT) < since - 1:
            return None
    except OSError:
        return None
    return read_trainer_result(".")


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
