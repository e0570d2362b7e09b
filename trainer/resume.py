"""Resume planning: which checkpoint a run starts from, what it adopts from it, and how its state is put back.

The order matters for exactness (trainer/train.py): planning consumes no random numbers; the model is built
from the seeded RNGs; only then are the checkpoint's weights, optimizer, position and RNG states restored.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.images import ImageSpec
from trainer.logs import get_logger
from trainer.state import Progress

# Settings that define a training run; a resumed run keeps the checkpoint's values (exact resume needs them)...
IDENTITY_KEYS = ("seed", "batch_size", "lr", "weight_decay", "grad_clip", "label_smoothing", "max_target_len",
                 "model_size", "best_metric")
# ...except these when the command line names them (a deliberate change, e.g. a lower LR after divergence).
TUNABLE_KEYS = ("lr", "weight_decay", "grad_clip", "label_smoothing", "best_metric")


class InputError(Exception):
    """Bad input found while setting up; one line that says what to do."""


@dataclass
class ResumePlan:
    """What a run starts from: the loaded checkpoint (None: a fresh start), the tunable settings the command
    line changed, and the input geometry (the checkpoint's when resuming)."""

    resumed: ckpt.Resumed | None
    spec: ImageSpec
    overridden: set[str] = field(default_factory=set)

    @property
    def state(self) -> dict[str, Any] | None:
        return self.resumed.state if self.resumed else None


def plan_resume(cfg: TrainConfig, out_dir: Path, *, is_main: bool) -> ResumePlan:
    """Resolve ``--checkpoint`` and adopt the checkpoint's settings into ``cfg`` (warnings in the log). Only
    the main process copies files (a BEST_ beside the resumed state) into OUT_DIR."""
    resumed = resolve_checkpoint(cfg.checkpoint, out_dir, carry_best=is_main)
    state = resumed.state if resumed else None
    overridden = adopt_identity(cfg, state) if state is not None else set()
    return ResumePlan(resumed, image_spec(cfg, state), overridden)


def resolve_checkpoint(spec: str | None, out_dir: Path, *, carry_best: bool) -> ckpt.Resumed | None:
    if not spec:
        return None
    log = get_logger()
    ckpt_dir = out_dir / ckpt.CHECKPOINT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kr-resume-", dir=out_dir) as scratch:
        resumed = ckpt.resolve_checkpoint(spec, out_dir, Path(scratch))
        for problem in resumed.skipped if resumed else []:
            log.warning(f"skipped damaged checkpoint: {problem}")
        if resumed is None:
            log.warning(f"--checkpoint latest: no checkpoint in {out_dir}, starting fresh")
            return None
        carried = ckpt.carry_best(resumed, ckpt_dir) if carry_best else None
        if carried:
            log.info(f"copied {carried.name} from {resumed.origin} into {ckpt_dir}")
    warn_if_best(resumed)
    return resumed


def warn_if_best(resumed: ckpt.Resumed) -> None:
    """Resuming from BEST_ throws away the training after it (and, weights only, the optimizer): say so, and
    name what resumes the latest state exactly."""
    weights_only = ckpt.is_weights_only(resumed.state)
    if not weights_only and not ckpt.is_best_name(resumed.path.name):
        return
    progress = resumed.state["progress"]
    where = f"epoch {progress['epoch']}, step {progress['global_step']}"
    sibling = resumed.folder / ckpt.LAST_NAME
    from_tarball = resumed.origin.name.endswith(".tar.gz")
    if resumed.skipped:
        hint = f"no intact {ckpt.LAST_NAME} or other full state was found (skipped above)"
    elif sibling.is_file() and not from_tarball:
        hint = f"--checkpoint {sibling} ({ckpt.LAST_NAME}) resumes the latest state exactly"
    else:
        hint = f"--checkpoint latest ({ckpt.LAST_NAME}) resumes the latest state exactly"
    if weights_only:
        consequence = (f": weights only, so the optimizer and scaler start fresh while the schedule and epoch "
                       f"count continue from step {progress['global_step']}; the training after the best epoch "
                       "is thrown away")
    else:
        consequence = " throws away the training after the best epoch"
    get_logger().warning(f"resuming from {resumed.path.name} ({where}){consequence}; {hint}")


def adopt_identity(cfg: TrainConfig, state: dict[str, Any]) -> set[str]:
    """The checkpoint's settings into ``cfg``, except the tunable ones the command line names (a warning says
    so); returns those overridden."""
    saved = state.get("train_config", {})
    adopted, overridden, changed = [], [], set()
    for key in IDENTITY_KEYS:
        if key not in saved or saved[key] == getattr(cfg, key):
            continue
        if key in TUNABLE_KEYS and key in cfg.explicit:
            overridden.append(f"{key} {saved[key]} -> {getattr(cfg, key)}")
            changed.add(key)
        else:
            adopted.append(f"{key}={saved[key]}")
            setattr(cfg, key, saved[key])
    log = get_logger()
    if adopted:
        log.info("resuming with the checkpoint's settings: " + " ".join(adopted))
    if overridden:
        log.warning("resuming with the command line's settings instead of the checkpoint's: "
                    + ", ".join(overridden) + " (the run no longer continues exactly as before)")
    data = state.get("data_config", {})
    if data and data.get("data_name") != cfg.data_name:
        raise InputError(f"the checkpoint trained on data_name {data.get('data_name')!r}, not "
                         f"{cfg.data_name!r}: pass --data_name {data.get('data_name')} or start without --checkpoint")
    return changed


def image_spec(cfg: TrainConfig, state: dict[str, Any] | None) -> ImageSpec:
    """The checkpoint's input geometry when resuming (the model learned it), else the flags'."""
    if state is None:
        return ImageSpec(height=cfg.image_height, max_width=cfg.max_width)
    spec = ImageSpec(**state["image_spec"])
    saved = {"image_height": spec.height, "max_width": spec.max_width}
    ignored = [f"--{key} {getattr(cfg, key)}" for key, value in saved.items()
               if key in cfg.explicit and getattr(cfg, key) != value]
    if ignored:
        get_logger().warning(f"ignoring {', '.join(ignored)}: the checkpoint's model was trained on "
                             f"{spec.height}x{spec.max_width} images")
    cfg.image_height, cfg.max_width = spec.height, spec.max_width
    return spec


def load_weights(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, weight_decay: float | None, where: object) -> None:
    """The checkpoint's model, and for a full state its optimizer and scaler. ``weight_decay``: the command
    line's value when it overrides the checkpoint's (the saved param groups carry the old one)."""
    try:
        model.load_state_dict(state["model"])
        if not ckpt.is_weights_only(state):
            optimizer.load_state_dict(state["optimizer"])
            if weight_decay is not None:
                optimizer.param_groups[0]["weight_decay"] = weight_decay
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ckpt.CheckpointError(f"{where} does not fit this model ({str(exc).splitlines()[0][:160]}): "
                                   "use a checkpoint this trainer wrote") from None


def position_for_world_size(state: dict[str, Any], world_size: int, steps_per_epoch: int) -> Progress:
    """The saved position; saved with another process count, the position in the epoch is converted to
    the same share of the epoch (exact only when the count is unchanged)."""
    progress = Progress(**state["progress"])
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size and progress.batch_in_epoch:
        converted = progress.batch_in_epoch * saved_world // world_size
        progress.batch_in_epoch = min(converted, steps_per_epoch)
        get_logger().info(f"checkpoint written by {saved_world} processes, resuming with {world_size}: "
                          f"batch {progress.batch_in_epoch} of the epoch")
    return progress


def own_rng(state: dict[str, Any], rank: int, world_size: int) -> tuple[dict[str, Any], bool]:
    """This rank's saved RNG states when the process count is unchanged, else rank 0's; the flag says whether
    this rank must still reseed its own stream (another process count, rank above 0)."""
    by_rank = state.get("rng_by_rank") or []
    if len(by_rank) == world_size:
        return by_rank[rank], False
    return state["rng"], rank > 0
