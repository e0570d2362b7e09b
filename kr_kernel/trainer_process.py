"""Starting the trainer: missing packages, GPUs, the command line, its environment and deadline."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kr_contract.names import CLEAN_STOPS, ENV_DEADLINE, ENV_STALL_TIMEOUT, ENV_WATCHDOG_DIR, TRAINER_RESULT
from kr_contract.runjson import read_trainer_result
from kr_kernel.settings import KernelSettings

# pip on a slow mirror can hang; the trainer then stops on the missing module with a clear error.
PIP_TIMEOUT_S = 900.0
NVIDIA_SMI_TIMEOUT_S = 60.0

Log = Callable[[str], None]


def install_missing(settings: KernelSettings, log: Log) -> None:
    missing = [spec for module, spec in sorted(settings.requirements.items())
               if importlib.util.find_spec(module) is None]
    if not missing:
        return
    if not settings.internet:
        log("internet is off; not installing " + ", ".join(missing))
        return
    log("installing " + ", ".join(missing))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", *missing]
    try:
        done = subprocess.run(command, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        log(f"pip install did not finish in {PIP_TIMEOUT_S:.0f} s; the trainer may stop on a missing module")
        return
    if done.returncode != 0:
        log(f"pip install failed (exit {done.returncode}); the trainer may stop on a missing module")


def gpu_count() -> int:
    """CUDA devices this session may use, found without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listing.returncode != 0:
        return 0
    return len([line for line in listing.stdout.splitlines() if line.startswith("GPU ")])


def trainer_command(settings: KernelSettings, gpus: int, checkpoint: str | None) -> list[str]:
    args = [*settings.trainer_args, "--out_dir", ".", "--max_epochs", str(settings.epochs)]
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    if gpus >= 2:
        # torchrun, through the interpreter so that PATH does not matter.
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
        return [sys.executable, *launcher, "-m", "trainer", *args]
    return [sys.executable, "-m", "trainer", *args]


def session_deadline(settings: KernelSettings) -> float:
    """The trainer's deadline: the script's start + budget - margin, or an earlier inherited KR_DEADLINE."""
    deadline = settings.started + settings.budget_s - settings.deadline_margin_s
    imposed = os.environ.get(ENV_DEADLINE)
    if imposed:
        with contextlib.suppress(ValueError):
            deadline = min(deadline, float(imposed))
    return deadline


def trainer_env(settings: KernelSettings, watchdog_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([settings.source_dir] + [p for p in [env.get("PYTHONPATH")] if p])
    env[ENV_DEADLINE] = f"{session_deadline(settings):.3f}"
    env[ENV_WATCHDOG_DIR] = str(watchdog_dir)
    env[ENV_STALL_TIMEOUT] = f"{settings.stall_timeout_s:g}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def settled_exit_code(exit_code: int, gpus: int, started: float, log: Log) -> int:
    """torchrun exits non-zero once it has been signalled, even when every worker then stopped cleanly and
    saved: under torchrun, trust the result file rank 0 writes at a clean stop, if this run wrote it."""
    if exit_code == 0 or gpus < 2:
        return exit_code
    result = read_trainer_result(".")
    try:
        fresh = os.path.getmtime(TRAINER_RESULT) >= started
    except OSError:
        fresh = False
    if fresh and result and result.get("stop_reason") in CLEAN_STOPS:
        log(f"torchrun exited with code {exit_code} after a clean {result['stop_reason']} stop")
        return 0
    return exit_code
