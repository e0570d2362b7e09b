"""The pieces of a training state that the loop moves and a checkpoint holds: the position, the loss window,
the per-rank seeds, and the checkpoint dict itself (what ``last.pth.tar`` holds: docs/architecture.md §2)."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import FORMAT_VERSION


@dataclass
class Progress:
    epoch: int = 0  # completed epochs; the epoch being trained has index `epoch`
    batch_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0


@dataclass
class LossWindow:
    """Train-loss average since the last train line; saved so resumed lines match uninterrupted ones."""

    loss_sum: float = 0.0
    steps: int = 0
    samples: int = 0

    def add(self, loss: float, samples: int) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.samples += samples


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank ``rank``'s own random numbers (dropout, the DataLoader's worker seeds). Rank 0 keeps
    ``seed`` itself at step 0, so its stream is a one-process run's; the others get unrelated streams. ``step``
    reseeds a rank whose own saved state is absent (a checkpoint written by another process count)."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, rank, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Seed this process's training RNGs for ``rank``; a no-op for rank 0 at step 0 (already seeded)."""
    if rank or step:
        seed_everything(rank_seed(seed, rank, step))


def plain(obj: Any) -> Any:
    """Dataclass/Path-free copy for a weights_only checkpoint."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def training_state(*, model: torch.nn.Module, model_config: dict[str, Any], optimizer: torch.optim.Optimizer,
                   scaler: dict[str, Any], schedule: dict[str, float], rng_by_rank: list[dict[str, Any]],
                   progress: Progress, window: LossWindow, train_loss: float | None, best: dict[str, Any] | None,
                   last_val: dict[str, Any] | None, vocab: list[str], image_spec: dict[str, Any],
                   data_config: dict[str, Any], train_config: dict[str, Any]) -> dict[str, Any]:
    """The full (resumable) checkpoint dict: plain tensors and primitives, ``torch.load(weights_only=True)``."""
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "model_config": model_config,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler,
        "schedule": dict(schedule),
        "rng": rng_by_rank[0],
        "rng_by_rank": rng_by_rank,  # one per process; a different process count resumes with rank 0's
        "world_size": len(rng_by_rank),
        "progress": asdict(progress),
        "loss_window": asdict(window),
        "train_loss": train_loss,
        "best": best,
        "last_val": last_val,
        "vocab": vocab,
        "image_spec": image_spec,
        "data_config": plain(data_config),
        "train_config": plain(train_config),
        "saved_at": time.time(),
    }
