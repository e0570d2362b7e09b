"""Prepare once under torchrun: rank 0 decodes each split with every CPU and shares it with the other ranks.

Rank 0 writes a split as ``.npy`` files (flat pixels, offsets, widths, tokens, offsets: trainer/packed.py) and
a JSON of its texts, report and vocabulary into a scratch folder of the job under TMPDIR, then the marker
``<split>.ready`` (atomically, last). Every rank, rank 0 included, maps the arrays read-only: the pixels sit
once in the page cache, shared by all ranks and their DataLoader workers, instead of once per rank.

The other ranks wait for the marker by polling the folder, not in a collective (a download or a long decode
must not trip the process group's timeout), and stop waiting when rank 0 reports an error there
(``<split>.error``) or is no longer alive. After set-up every rank has mapped the files and rank 0 removes the
folder (the mappings stay valid).

Only for ranks on one machine (``torchrun --standalone``, the Kaggle case); otherwise each rank prepares.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from kr_contract.atomic import atomic_write_json, atomic_write_text
from kr_contract.processes import pid_alive
from trainer.data import DataError, PreparedSplit
from trainer.packed import PackedImages, PackedTargets
from trainer.sockets import original_tempdir

POLL_S = 0.2
# How long the other ranks wait for rank 0 to say it is alive (it does so first thing in its set-up).
ANNOUNCE_TIMEOUT_S = 600.0
PID_FILE = "rank0.pid"


class ExchangeError(RuntimeError):
    """Rank 0 died or failed before it shared a split."""


def job_folder_name() -> str:
    """The same on every rank of one torchrun job, another for the next job (or restart) on the machine: the
    job's id, its restart count and torchrun's agent (the parent of every local rank)."""
    job = os.environ.get("TORCHELASTIC_RUN_ID") or f"{os.environ.get('MASTER_ADDR', '')}-{os.environ.get('MASTER_PORT', '')}"
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{job}-{restart}-{os.getppid()}")
    return f"kr-prepared-{safe}"


def on_one_machine(world_size: int) -> bool:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) == world_size


class SplitExchange:
    def __init__(self, folder: Path, rank: int) -> None:
        self.folder = folder
        self.rank = rank

    @classmethod
    def for_job(cls, rank: int, world_size: int) -> SplitExchange | None:
        """The exchange of this torchrun job; None for one process or ranks on several machines."""
        if world_size <= 1 or not on_one_machine(world_size):
            return None
        return cls(Path(original_tempdir()) / job_folder_name(), rank)

    @property
    def is_source(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------------- rank 0

    def announce(self) -> None:
        """Rank 0, first thing: the folder exists and says which process fills it."""
        if self.is_source:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / PID_FILE, str(os.getpid()))

    def publish(self, name: str, split: PreparedSplit, vocab: list[str] | None = None) -> PreparedSplit:
        """Write ``split`` for the other ranks; returns it mapped from the files (rank 0's copy in memory is
        dropped with the caller's reference)."""
        images = split.images if isinstance(split.images, PackedImages) else PackedImages.pack(list(split.images),
                                                                                                _height(split))
        targets = split.targets if isinstance(split.targets, PackedTargets) else PackedTargets.pack(split.targets)
        images.save(self.folder, f"{name}.images")
        targets.save(self.folder, f"{name}.targets")
        np.save(self.folder / f"{name}.widths.npy", split.widths)
        meta = {"texts": split.texts, "report": split.report, "errors": split.errors, "height": images.height,
                "vocab": vocab}
        atomic_write_json(self.folder / f"{name}.json", meta)
        atomic_write_text(self.folder / f"{name}.ready", "")
        return self._load(name)[0]

    def publish_error(self, name: str, exc: BaseException) -> None:
        """Tell the waiting ranks why ``name`` will not come (they stop with the same message)."""
        if self.is_source and self.folder.is_dir():
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            atomic_write_json(self.folder / f"{name}.error", {"input": isinstance(exc, DataError), "message": message})

    def remove(self) -> None:
        if self.is_source:
            shutil.rmtree(self.folder, ignore_errors=True)

    # ----------------------------------------------------------------------------------- other ranks

    def receive(self, name: str) -> tuple[PreparedSplit, list[str] | None]:
        """Wait for rank 0 to share ``name``; the split (mapped read-only) and the vocabulary it sent."""
        pid = self._wait_for_source()
        while not (self.folder / f"{name}.ready").exists():
            self._raise_if_failed(name, pid)
            time.sleep(POLL_S)
        return self._load(name)

    def _wait_for_source(self) -> int:
        deadline = time.monotonic() + ANNOUNCE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return int((self.folder / PID_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                time.sleep(POLL_S)
        raise ExchangeError(f"rank 0 did not start preparing the data within {ANNOUNCE_TIMEOUT_S:.0f} s "
                            f"(no {self.folder / PID_FILE})")

    def _raise_if_failed(self, name: str, pid: int) -> None:
        error = self.folder / f"{name}.error"
        if error.exists():
            report = json.loads(error.read_text(encoding="utf-8"))
            message = f"rank 0 could not prepare the {name} split: {report['message']}"
            raise DataError(message) if report.get("input") else ExchangeError(message)
        if not pid_alive(pid):
            raise ExchangeError(f"rank 0 (pid {pid}) ended before it shared the {name} split")

    def _load(self, name: str) -> tuple[PreparedSplit, list[str] | None]:
        meta: dict[str, Any] = json.loads((self.folder / f"{name}.json").read_text(encoding="utf-8"))
        split = PreparedSplit(images=PackedImages.load(self.folder, f"{name}.images", meta["height"]),
                              targets=PackedTargets.load(self.folder, f"{name}.targets"), texts=meta["texts"],
                              widths=np.load(self.folder / f"{name}.widths.npy"), report=meta["report"],
                              errors=meta["errors"])
        return split, meta.get("vocab")


def _height(split: PreparedSplit) -> int:
    return int(split.images[0].shape[0]) if len(split) else 1
