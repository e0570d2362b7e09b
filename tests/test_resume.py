"""Exact resume (issue 3): K steps uninterrupted equal the same K steps as runs stopped by --max_steps, a time
budget and SIGTERM, each resumed from the tarball the previous run packed, in a fresh folder (a new Kaggle
session) that only carries training.log over. Final weights, optimizer state and every logged loss and
validation line must be identical, bit for bit on CPU."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer_support import (
    REPO,
    assert_same_tensors,
    load_state,
    metric_lines,
    result,
    run_trainer,
    tiny_args,
    trainer_env,
)

K = 18  # 4.5 epochs of 4 steps: stops land inside epochs and at their ends, validation included
LOG_EVERY = ["--log_every", "3"]  # windows that straddle the stops: the saved loss window must carry over


def new_session(previous: Path | None, root: Path, name: str) -> Path:
    """A fresh working folder with the previous session's training.log, as the kernel script prepares it."""
    folder = root / name
    folder.mkdir()
    if previous is not None:
        shutil.copy(previous / "training.log", folder / "training.log")
    return folder


def stop_with_sigterm(args: list[str], start_step: int) -> subprocess.CompletedProcess[str]:
    """Start the trainer, wait for a train line past ``start_step``, then SIGTERM it."""
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=REPO, env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " train " in line and int(line.split("step=")[1].split()[0]) > start_step:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, err)


def losses(log: Path) -> list[tuple[str, str]]:
    return [(r["step"], r["loss"]) for r in metric_lines(log, "train")]


def validations(log: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in metric_lines(log, "val")]


@pytest.mark.slow
def test_interrupted_runs_equal_one_uninterrupted_run(tmp_path: Path, shared_cache_dir: Path) -> None:
    def args(out: Path, *extra: str) -> list[str]:
        return tiny_args(out, *LOG_EVERY, *extra, cache_dir=shared_cache_dir)

    reference = new_session(None, tmp_path, "reference")
    began = time.time()
    done = run_trainer(args(reference, "--max_steps", str(K)))
    reference_seconds = time.time() - began
    assert done.returncode == 0, done.stderr
    assert result(reference)["step"] == K
    first_train = metric_lines(reference / "training.log", "train")[0]
    assert first_train["step"] == "3"

    # 1: stopped by --max_steps.
    s1 = new_session(None, tmp_path, "s1")
    assert run_trainer(args(s1, "--max_steps", "5")).returncode == 0
    assert result(s1)["stop_reason"] == "max_steps" and result(s1)["step"] == 5

    # 2: stopped by a time budget, resumed from the tarball of 1. The budget lets it get part of the way. It
    # counts from process start, so it must leave room beyond the start-up itself (imports, data, restore: on a
    # busy machine several seconds, which no deadline logic can win back); run 1's time measures that.
    s2 = new_session(s1, tmp_path, "s2")
    budget = max(4.0, 0.55 * reference_seconds, result(s1)["seconds"] + 3.0)
    run2 = run_trainer(args(s2, "--checkpoint", str(s1 / "checkpoints.tar.gz"), "--time_budget", f"{budget:.1f}",
                            "--max_steps", str(K - 5 - 4)))
    assert run2.returncode == 0, run2.stderr
    r2 = result(s2)
    assert r2["stop_reason"] in ("time_budget", "max_steps") and 5 <= r2["step"] <= K - 4
    assert r2["seconds"] < budget

    # 3: stopped by SIGTERM after its first new train line.
    s3 = new_session(s2, tmp_path, "s3")
    run3 = stop_with_sigterm(args(s3, "--checkpoint", str(s2 / "checkpoints.tar.gz"),
                                  "--max_steps", str(K - r2["step"])), r2["step"])
    assert run3.returncode == 0, run3.stderr
    r3 = result(s3)
    assert r3["stop_reason"] in ("signal", "max_steps") and r3["step"] <= K

    # 4: the rest, resumed from the tarball of 3.
    s4 = new_session(s3, tmp_path, "s4")
    remaining = K - r3["step"]
    if remaining:
        run4 = run_trainer(args(s4, "--checkpoint", str(s3 / "checkpoints.tar.gz"), "--max_steps", str(remaining)))
        assert run4.returncode == 0, run4.stderr
        assert result(s4)["step"] == K
    else:
        s4 = s3

    assert losses(s4 / "training.log") == losses(reference / "training.log")
    assert validations(s4 / "training.log") == validations(reference / "training.log")
    final, expected = load_state(s4 / "checkpoints/last.pth.tar"), load_state(reference / "checkpoints/last.pth.tar")
    for key in ("model", "optimizer", "progress", "loss_window", "rng", "best", "schedule"):
        assert_same_tensors(final[key], expected[key], key)
    stops = [r["reason"] for r in metric_lines(s4 / "training.log", "stop")]
    assert stops[:2] == ["max_steps", r2["stop_reason"]] and stops[2] == r3["stop_reason"]
