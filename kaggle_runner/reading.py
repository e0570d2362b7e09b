"""The model reading: a few test images' reference and predicted LaTeX side by side, after a chain.

``kr chain`` (and so ``make demo``) shows it for the final checkpoint. The decoding needs torch, which kr
never imports: it runs ``kaggle_runner.reading_worker`` in a subprocess with the same Python. Without torch
here (a chain on Kaggle needs none locally), or without the data the checkpoint was trained on, it says so in
one line and the chain's result is unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kr_contract.errors import ContractError
from kr_contract.tarball import verify_tarball

SAMPLES = 6
WORKER_TIMEOUT_S = 300.0  # loading torch and the data, decoding a handful of images: seconds, on any machine
COLUMN = 44  # the reference column's width; longer formulas are cut with an ellipsis


@dataclass(frozen=True)
class Reading:
    epoch: int | None
    step: int | None
    pairs: list[tuple[str, str]]  # (reference, prediction)

    @property
    def exact(self) -> int:
        return sum(1 for reference, prediction in self.pairs if reference.split() == prediction.split())


def read_test_images(checkpoint: Path, samples: int = SAMPLES) -> Reading | str:
    """The reading of ``samples`` test images by a checkpoints tarball, or a one-line note why there is none."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("trainer") is None:
        return "the model's reading of test images needs torch here: pip install 'kaggle-runner[train]'"
    try:
        verify_tarball(checkpoint)  # a damaged file is said at once, without starting torch for it
    except ContractError as exc:
        return f"no reading of test images ({exc})"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kaggle_runner.reading_worker", str(checkpoint), "--samples", str(samples)],
            capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        return f"the model's reading of test images took more than {WORKER_TIMEOUT_S:.0f} s; skipped"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"no reading of test images ({reason})"
    data = json.loads(done.stdout.strip().splitlines()[-1])
    pairs = [(str(s["reference"]), str(s["prediction"])) for s in data["samples"]]
    return Reading(data.get("epoch"), data.get("step"), pairs)


def reading_lines(reading: Reading, where: str) -> list[str]:
    """The reading as a small table: mark, reference, prediction."""
    at = f"epoch {reading.epoch}, step {reading.step}" if reading.epoch is not None else "final checkpoint"
    lines = [f"the model reads {len(reading.pairs)} test images ({where}, {at}):",
             f"  {'':9}  {'reference'.ljust(COLUMN)}  predicted"]
    for reference, prediction in reading.pairs:
        mark = "equal" if reference.split() == prediction.split() else "not equal"
        lines.append(f"  {mark:9}  {_cut(reference).ljust(COLUMN)}  {_cut(prediction)}")
    lines.append(f"  {reading.exact} of {len(reading.pairs)} read exactly")
    return lines


def show_reading(checkpoint: Path, where: str, write: Callable[[str], None], samples: int = SAMPLES) -> Reading | None:
    """Write the reading (or the note why there is none) with ``write``."""
    reading = read_test_images(checkpoint, samples)
    if isinstance(reading, str):
        write(reading)
        return None
    for line in reading_lines(reading, where):
        write(line)
    return reading


def _cut(text: str) -> str:
    return text if len(text) <= COLUMN else text[: COLUMN - 1] + "…"
