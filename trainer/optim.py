"""The optimizer, the learning-rate schedule, and what counts as divergence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_LR_RATIO = 0.1  # the cosine ends at this share of the peak learning rate
# fp16 steps skipped in a row (the gradient not finite at any loss scale) before the run gives up: a normal
# start skips a handful while the scaler finds its scale.
MAX_SKIPPED_STEPS = 64


class TrainingDiverged(Exception):
    """The loss or the gradient stopped being finite; nothing of the failing step reached the weights."""


@dataclass
class SkippedSteps:
    """Counts optimizer steps the fp16 gradient scaler skipped in a row (it lowers its scale when it skips)."""

    in_a_row: int = 0

    def record(self, scale_before: float, scale_after: float) -> bool:
        """True when too many steps in a row were skipped."""
        self.in_a_row = self.in_a_row + 1 if scale_after < scale_before else 0
        return self.in_a_row >= MAX_SKIPPED_STEPS


def lr_at(step: int, schedule: dict[str, float]) -> float:
    """Linear warmup, then cosine to MIN_LR_RATIO x peak at the horizon; a pure function of the step."""
    peak, warmup, total = schedule["base_lr"], int(schedule["warmup_steps"]), int(schedule["total_steps"])
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def new_schedule(base_lr: float, warmup_steps: int, total_steps: int) -> dict[str, float]:
    """Fixed at a run's first start and kept in its checkpoints: the warm-up is at most a fifth of the horizon."""
    return {"base_lr": base_lr, "warmup_steps": min(warmup_steps, total_steps // 5), "total_steps": total_steps}


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), fused=fused or None)
