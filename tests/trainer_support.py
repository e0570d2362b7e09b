"""Shared by the trainer tests: tiny-run arguments, running the trainer, reading its log and checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent

# A tiny model on 32 synthetic formulas: 4 steps per epoch, validation on 8 samples.
TINY_ARGS = [
    "--data_name", "synthetic", "--model_size", "tiny", "--synthetic_train", "32", "--synthetic_val", "8",
    "--synthetic_test", "8", "--batch_size", "8", "--num_workers", "0", "--max_target_len", "24",
    "--seed", "3", "--schedule_steps", "200", "--warmup_steps", "4", "--threads", "1",
]


def tiny_args(out_dir: Path, *extra: str, cache_dir: Path | None = None) -> list[str]:
    args = [*TINY_ARGS, "--out_dir", str(out_dir), *extra]
    if cache_dir is not None:
        args += ["--cache_dir", str(cache_dir)]
    return args


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_trainer(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, env=trainer_env(),
                          capture_output=True, text=True, timeout=timeout)


def metric_lines(log: Path, kind: str) -> list[dict[str, str]]:
    """The key=value fields of every ``kind`` line in a training.log."""
    records = []
    for line in log.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) > 3 and words[3] == kind:
            records.append(dict(word.split("=", 1) for word in words[4:] if "=" in word))
    return records


def result(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "trainer_result.json").read_text())


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """Bit-for-bit equality of nested dicts/lists of tensors and primitives."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"
