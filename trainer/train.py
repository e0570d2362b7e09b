"""The training loop: exact resume, deadline-aware stopping, validation, checkpoints and tarballs.

Exactness (bit for bit on CPU): the data order is a pure function of (seed, epoch) and the position in the
epoch; the DataLoader draws from its own generator, never from the global torch RNG; every RNG, the
optimizer, the scaler, the schedule position and the running loss window are in the checkpoint; validation
and saving consume no random numbers. So a run stopped anywhere and resumed takes the same steps with the
same numbers as one that never stopped.
"""

from __future__ import annotations

import functools
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kr_contract.names import (
    STOP_COMPLETED,
    STOP_MAX_EPOCHS,
    STOP_MAX_STEPS,
    STOP_SIGNAL,
)
from kr_contract.runjson import write_trainer_result
from trainer import checkpoint as ckpt
from trainer import distributed, splits, watch
from trainer.augment import training_items
from trainer.buckets import ShapeBuckets, describe_buckets, order_keys
from trainer.budget import StopClock, read_env_deadline
from trainer.config import TrainConfig
from trainer.data import (
    Batch,
    OcrDataset,
    PreparedSplit,
    WidthBucketSampler,
    collate,
    padding_share,
)
from trainer.examples import log_examples
from trainer.exchange import SplitExchange
from trainer.inference import decode_part, join_parts
from trainer.loader import batches, build_loader
from trainer.logs import get_logger, log_metrics
from trainer.metrics import score_texts
from trainer.model import ImageToLatex, ModelConfig, count_parameters, model_config_for
from trainer.optim import (
    MAX_SKIPPED_STEPS,
    SkippedSteps,
    TrainingDiverged,
    build_optimizer,
    lr_at,
    new_schedule,
)
from trainer.precision import choose_precision, configure_backends
from trainer.resume import load_weights, own_rng, plan_resume, position_for_world_size
from trainer.runtime import Runtime
from trainer.saving import SaveTarget, log_saved, save_state
from trainer.state import LossWindow, Progress, rank_seed, seed_everything, seed_rank, training_state
from trainer.tokenizer import Vocab

__all__ = ["MAX_SKIPPED_STEPS", "SkippedSteps", "Trainer", "TrainingDiverged", "lr_at", "run"]

# ------------------------------------------------------------------------------------------------ setup


class Trainer:
    def __init__(self, cfg: TrainConfig, runtime: Runtime, start: float) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.start = start
        self.log = get_logger()
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / ckpt.CHECKPOINT_DIR
        self.clock = StopClock.create(start, cfg.time_budget, read_env_deadline())
        self.stop_signal: int | None = None
        self.progress = Progress()
        self.window = LossWindow()
        self.best: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        self.last_train_loss: float | None = None
        self.steps_done = self.epochs_done = 0
        self.dirty = True  # state differs from what last.pth.tar holds
        self.overridden: set[str] = set()  # tunable settings the command line changed on resume
        self.last_save_time = time.time()
        self.window_started = time.time()

    # The order matters for exactness: everything that consumes random numbers (model init) happens
    # before the RNG states are restored from the checkpoint.
    # Model init is identical on every rank; each rank's own stream (dropout, its loader's worker seeds) is
    # offset from rank 1 on, rank 0's being a one-process run's (trainer/state.py rank_seed).
    def setup(self) -> None:
        self.exchange = SplitExchange.for_job(self.runtime.rank, self.runtime.world_size)
        if self.exchange is not None:
            self.exchange.announce()
        watch.beat("start", detail="resume" if self.cfg.checkpoint else "fresh")
        plan = plan_resume(self.cfg, self.out_dir, is_main=self.runtime.is_main_process)
        self.resumed, self.spec, self.overridden = plan.resumed, plan.spec, plan.overridden
        state = plan.state
        self._choose_shapes_and_precision()
        seed_everything(self.cfg.seed)
        self.data_cfg = splits.data_config(self.cfg)
        self.tag = ckpt.source_tag(self.data_cfg.use_huggingface)
        self.vocab, self.train_split = self._load_train(state)
        self.val_split = self._load_validation()
        keys = order_keys(self.buckets, self.train_split.widths, self.train_split.targets)
        self.sampler = WidthBucketSampler(self.train_split.widths, self.cfg.batch_size, self.cfg.seed,
                                          rank=self.runtime.rank, world_size=self.runtime.world_size, order_keys=keys)
        self.steps_per_epoch = len(self.sampler)
        self._build_model(state)
        seed_rank(self.cfg.seed, self.runtime.rank)
        if state is not None:
            self._restore(state)
        self._wrap_for_training()
        self._prime_clock()
        self._log_start()
        if self.exchange is not None:  # every rank has mapped the shared splits: their files can go
            distributed.barrier(self.runtime)
            self.exchange.remove()

    def _choose_shapes_and_precision(self) -> None:
        """Few training batch shapes (or not), this device's precision, and the backend settings they imply."""
        self.buckets = (ShapeBuckets.for_training(self.spec.max_width, self.spec.width_multiple, self.cfg.max_target_len)
                        if self.cfg.shape_buckets else None)
        self.precision = choose_precision(self.cfg.precision, self.runtime.device)
        self.backend_note = configure_backends(self.precision, self.runtime.device, self.buckets is not None)

    def _prime_clock(self) -> None:
        """Guesses that stand until validation and saving have been timed once in this run."""
        batches = -(-len(self.val_split) // self.cfg.batch_size)
        self.clock.val_batches = -(-batches // self.runtime.world_size)  # each rank decodes its share
        # model + two AdamW moments, written, hashed and packed at a cautious 50 MB/s
        state_bytes = 3 * 4 * count_parameters(self.model)
        self.clock.save_guess_s = 1.0 + state_bytes / 50e6

    def _load_train(self, state: dict[str, Any] | None) -> tuple[Vocab, PreparedSplit]:
        procs = splits.prepare_procs(self.runtime.world_size, self.exchange)
        split, vocab = splits.shared(self.exchange, "train", lambda: splits.load_train(
            self.cfg, self.data_cfg, self.spec, state["vocab"] if state else None, procs))
        assert vocab is not None  # the train split always carries its vocabulary
        return Vocab.from_list(vocab), split

    def _load_validation(self) -> PreparedSplit:
        procs = splits.prepare_procs(self.runtime.world_size, self.exchange)
        return splits.shared(self.exchange, "validation", lambda: splits.load_validation(
            self.cfg, self.data_cfg, self.spec, self.vocab, procs))[0]

    def _build_model(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            model_cfg = ModelConfig.from_dict(state["model_config"])
        else:
            model_cfg = model_config_for(self.cfg.model_size, len(self.vocab), self.cfg.max_target_len + 2,
                                         **self.cfg.shape_overrides())
        self.model = ImageToLatex(model_cfg).to(self.runtime.device)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)  # only the CNN's 4-D weights change layout
        self.optimizer = build_optimizer(self.model, self.cfg.resolved_lr, self.cfg.weight_decay,
                                         fused=self.runtime.is_cuda)
        self.scaler = torch.amp.GradScaler(self.runtime.device.type, enabled=self.precision.uses_scaler)
        self.skipped = SkippedSteps()
        self.schedule = state["schedule"] if state else self._new_schedule()
        if "lr" in self.overridden:  # the same warm-up and horizon, from the new peak
            self.schedule = {**self.schedule, "base_lr": self.cfg.resolved_lr}

    def _wrap_for_training(self) -> None:
        """The module the training step calls: DDP around the model when several processes train, compiled
        on request. ``self.model`` stays the plain module: checkpoints, validation and prediction use it, so a
        checkpoint is the same whatever the wrapping."""
        module: torch.nn.Module = self.model
        if self.runtime.world_size > 1:
            device_ids = [self.runtime.local_rank] if self.runtime.is_cuda else None
            module = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # Widths and target lengths change from batch to batch: dynamic shapes compile once, not per shape.
        self.train_model = torch.compile(module, dynamic=True, mode=self.cfg.compile_mode) if self.cfg.compile else module

    def _new_schedule(self) -> dict[str, float]:
        total = self.cfg.schedule_steps or self.cfg.schedule_epochs * self.steps_per_epoch
        return new_schedule(self.cfg.resolved_lr, self.cfg.warmup_steps, total)

    def _restore(self, state: dict[str, Any]) -> None:
        """A full state resumes exactly. A weights-only BEST_ restarts from its weights with the fresh optimizer
        and scaler built above, the RNGs as seeded, and its progress (saved at an epoch end: the next epoch's
        data order and the schedule continue from its step)."""
        load_weights(state, self.model, self.optimizer, self.scaler,
                     weight_decay=self.cfg.weight_decay if "weight_decay" in self.overridden else None,
                     where=self.resumed.path if self.resumed else "?")
        self.progress = position_for_world_size(state, self.runtime.world_size, self.steps_per_epoch)
        self.window = LossWindow(**state.get("loss_window", {}))
        self.best = state.get("best")
        self.last_val = state.get("last_val")
        self.last_train_loss = state.get("train_loss")
        if ckpt.is_weights_only(state):
            self.dirty = True  # last.pth.tar, if any, holds another state
            return
        rng, reseed = own_rng(state, self.runtime.rank, self.runtime.world_size)
        ckpt.restore_rng(rng)
        if reseed:
            seed_rank(self.cfg.seed, self.runtime.rank, self.progress.global_step)
        self.dirty = not (self.ckpt_dir / ckpt.LAST_NAME).exists() or not (self.out_dir / ckpt.TARBALL_NAME).exists()

    def _log_start(self) -> None:
        p = self.progress
        source = f"resumed from {self.resumed.origin}" if self.resumed else "fresh start"
        self.log.info(f"{source}; device {self.runtime.device} x{self.runtime.world_size}; {count_parameters(self.model):,} parameters; "
                      f"{self.steps_per_epoch} steps per epoch; schedule {self.schedule}")
        self.log.info("; ".join(filter(None, (self.precision.describe(), self.backend_note, describe_buckets(self.buckets)))))
        log_metrics("start", epoch=p.epoch, step=p.global_step, batch_in_epoch=p.batch_in_epoch,
                    model_size=self.cfg.model_size, batch_size=self.cfg.batch_size,
                    padding_share=round(padding_share(self.sampler, self.train_split.widths, p.epoch, self.buckets), 4))
        if self.clock.deadline is not None:
            self.log.info(f"deadline: stopping by {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.clock.deadline))} "
                          f"({self.clock.reason}, margin {self.clock.margin_s:.0f} s)")

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> dict[str, Any]:
        self.window_started = time.time()
        reason = self._train_until_stop()
        if self.dirty:
            self._save(epoch_file=False, best_file=False)
        return self._finish(reason)

    def _train_until_stop(self) -> str:
        loader = self._loader()
        while True:
            if self.progress.batch_in_epoch >= self.steps_per_epoch:
                reason = self._finish_epoch()
                if reason:
                    return reason
                continue
            reason = self._agreed_stop_reason(after_step=False)
            if reason:
                return reason
            self.sampler.set_epoch(self.progress.epoch, self.progress.batch_in_epoch)
            for batch in batches(loader):
                self._train_step(batch)
                reason = self._agreed_stop_reason(after_step=True)
                if reason:
                    return reason

    def _loader(self) -> torch.utils.data.DataLoader:
        # Its own generator: workers' seeds never come from (and never advance) the global torch RNG.
        seed = rank_seed(self.cfg.seed, self.runtime.rank)
        dataset, sampler = training_items(OcrDataset(self.train_split), self.sampler, self.spec, seed, self.cfg.augment)
        return build_loader(dataset, sampler, workers=self.cfg.num_workers, pin_memory=self.runtime.is_cuda, seed=seed,
                            timeout_s=watch.loader_timeout_s(), collate_fn=functools.partial(collate, buckets=self.buckets))

    def _agreed_stop_reason(self, *, after_step: bool) -> str | None:
        """Why to stop, agreed by every rank; after a step, also a periodic save when one is due on any rank."""
        save_due = after_step and self._periodic_save_due()
        reason, save_due = distributed.agree_stop(self.runtime, self._stop_reason(), save_due)
        if save_due and not reason:
            self._save(epoch_file=False, best_file=False)
        return reason

    def _stop_reason(self) -> str | None:
        """Why to stop before the next step, if at all."""
        if self.stop_signal is not None:
            return STOP_SIGNAL
        if self.cfg.max_steps is not None and self.steps_done >= self.cfg.max_steps:
            return STOP_MAX_STEPS
        if self.progress.global_step >= self.schedule["total_steps"]:
            return STOP_COMPLETED
        ends_epoch = self.progress.batch_in_epoch + 1 >= self.steps_per_epoch
        if not self.clock.room_for_step(ends_epoch):
            return self.clock.reason
        return None

    def _train_step(self, batch: Batch) -> None:
        began = time.time()
        batch = batch.to(self.runtime.device, non_blocking=True)
        images = batch.images.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else batch.images
        lr = lr_at(self.progress.global_step, self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self._loss(batch, images)
        loss_value = float(loss.item())
        if not math.isfinite(loss_value) and not self.precision.uses_scaler:
            raise TrainingDiverged(f"the training loss became {loss_value}")
        self._optimizer_step(loss)
        self.progress.global_step += 1
        self.progress.batch_in_epoch += 1
        self.steps_done += 1
        self.dirty = True
        self.window.add(loss_value, len(batch))
        self.clock.record_step(time.time() - began)
        watch.beat("train", step=self.progress.global_step, epoch=self.progress.epoch + 1)
        if self.progress.global_step % self.cfg.log_every == 0 or self.progress.batch_in_epoch >= self.steps_per_epoch:
            self._log_train(lr)

    def _loss(self, batch: Batch, images: torch.Tensor) -> torch.Tensor:
        self.model.train()
        with self.precision.autocast(self.runtime.device.type):
            logits = self.train_model(images, batch.tgt_in, batch.widths)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=Vocab.PAD,
                               label_smoothing=self.cfg.label_smoothing)

    def _optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, clip, step. In fp32 a non-finite gradient stops the run before it reaches the weights; in
        fp16 the scaler skips such steps, and too many in a row stop the run."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        try:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip,
                                           error_if_nonfinite=not self.precision.uses_scaler)
        except RuntimeError as exc:
            raise TrainingDiverged("the gradient became non-finite") from exc
        scale_before = self.scaler.get_scale() if self.precision.uses_scaler else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.precision.uses_scaler and self.skipped.record(scale_before, self.scaler.get_scale()):
            raise TrainingDiverged(f"the fp16 gradient was not finite for {MAX_SKIPPED_STEPS} steps in a row, "
                                   f"down to loss scale {self.scaler.get_scale():.3g}")

    def _log_train(self, lr: float) -> None:
        elapsed = max(time.time() - self.window_started, 1e-9)
        self.last_train_loss = self.window.loss_sum / max(self.window.steps, 1)
        log_metrics("train", epoch=self.progress.epoch + 1, step=self.progress.global_step,
                    loss=self.last_train_loss, lr=lr,
                    samples_per_s=self.window.samples * self.runtime.world_size / elapsed)
        self.window = LossWindow()
        self.window_started = time.time()

    # ----------------------------------------------------------------------------------- epoch end

    def _finish_epoch(self) -> str | None:
        """Validate, then count the epoch and save its checkpoint. A stop request during validation leaves the
        epoch pending (the next run validates it)."""
        signalled, _ = distributed.agree_stop(self.runtime, STOP_SIGNAL if self.stop_signal is not None else None, False)
        if signalled:
            return signalled
        began = time.time()
        metrics, stopped = self._validate()
        if metrics is None:
            return stopped
        self.clock.record_validation(time.time() - began)
        self.window_started += time.time() - began  # samples_per_s measures training steps only
        self.progress.epoch += 1
        self.progress.batch_in_epoch = 0
        self.epochs_done += 1
        self.dirty = True
        self.last_val = {**metrics, "epoch": self.progress.epoch, "step": self.progress.global_step}
        log_metrics("val", epoch=self.progress.epoch, step=self.progress.global_step, **metrics)
        improved = self._is_improvement(metrics)
        if improved:
            self.best = dict(self.last_val)
        self._save(epoch_file=True, best_file=improved)
        if self.cfg.max_epochs is not None and self.epochs_done >= self.cfg.max_epochs:
            return STOP_MAX_EPOCHS
        return None

    def _validate(self) -> tuple[dict[str, float] | None, str]:
        """Every rank decodes its share of the validation batches; rank 0 scores the whole split and every rank
        acts on its outcome: the metrics, or None and why it stopped."""
        decoded = 0

        def should_continue() -> bool:
            nonlocal decoded
            watch.beat("validate", step=self.progress.global_step, epoch=self.progress.epoch, batches=decoded)
            decoded += 1
            return self.stop_signal is None and self.clock.room_for(self.clock.step_estimate())

        # Each rank's BatchNorm running statistics moved with its own last batch: validate with rank 0's,
        # the ones its checkpoint holds.
        distributed.broadcast_buffers_from_main(self.runtime, self.model)
        part = decode_part(self.model, self.val_split, self.vocab, self.cfg.batch_size, self.runtime.device,
                           should_continue, self.runtime.rank, self.runtime.world_size, self.precision)
        parts = distributed.gather_to_main(self.runtime, part)
        if not all(p.complete for p in parts):
            self.log.info("validation interrupted; the next run validates this epoch")
            local = STOP_SIGNAL if self.stop_signal is not None else self.clock.reason
            return None, distributed.agree_stop(self.runtime, local, False)[0] or local
        metrics: dict[str, float] | None = None
        if self.runtime.is_main_process:
            result = join_parts(parts, len(self.val_split))
            metrics = {**score_texts(result.hypotheses, self.val_split.texts), "loss": result.loss,
                       "samples": len(self.val_split)}
            log_examples(result.hypotheses, self.val_split.texts)
        return distributed.broadcast_from_main(self.runtime, metrics), ""

    def _is_improvement(self, metrics: dict[str, float]) -> bool:
        key = self.cfg.best_metric
        if self.best is None:
            return True
        return (metrics[key], metrics["edit_score"]) > (self.best[key], self.best["edit_score"])

    # -------------------------------------------------------------------------------------- saving

    def _periodic_save_due(self) -> bool:
        return time.time() - self.last_save_time >= self.cfg.save_every_minutes * 60

    def _save(self, *, epoch_file: bool, best_file: bool) -> None:
        """Every rank calls this together (it gathers the ranks' RNG states); rank 0 writes."""
        began = time.time()
        watch.beat("save", step=self.progress.global_step, epoch=self.progress.epoch, force=True)
        rng_by_rank = distributed.gather_to_main(self.runtime, ckpt.capture_rng())
        if self.runtime.is_main_process:
            saved = save_state(self._save_target(), self._state(rng_by_rank),
                               epoch=self.progress.epoch if epoch_file else None, best=best_file)
        self.dirty = False
        self.last_save_time = time.time()
        if not self.runtime.is_main_process:
            return
        self.clock.record_save(self.last_save_time - began)
        self.window_started += self.last_save_time - began
        log_saved(saved, self.progress.epoch, self.progress.global_step, self.last_save_time - began)

    def _save_target(self) -> SaveTarget:
        return SaveTarget(self.out_dir, self.tag, self.cfg.data_name, self.cfg.keep_epochs, self.cfg.keep_tarballs)

    def _state(self, rng_by_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return training_state(
            model=self.model, model_config=self.model.cfg.to_dict(), optimizer=self.optimizer,
            scaler=self.scaler.state_dict() if self.precision.uses_scaler else {}, schedule=self.schedule,
            rng_by_rank=rng_by_rank, progress=self.progress, window=self.window, train_loss=self.last_train_loss,
            best=self.best, last_val=self.last_val, vocab=self.vocab.to_list(), image_spec=asdict(self.spec),
            data_config=asdict(self.data_cfg), train_config=self.cfg.to_dict())

    # ---------------------------------------------------------------------------------------- finish

    def _finish(self, reason: str, message: str | None = None) -> dict[str, Any]:
        p = self.progress
        log_metrics("stop", reason=reason, epoch=p.epoch, step=p.global_step, epochs_done=self.epochs_done,
                    steps_done=self.steps_done)
        result = {
            "stop_reason": reason, "epoch": p.epoch, "step": p.global_step, "batch_in_epoch": p.batch_in_epoch,
            "epochs_done": self.epochs_done, "steps_done": self.steps_done, "best": self.best,
            "last_val": self.last_val, "train_loss": self.last_train_loss,
            "seconds": round(time.time() - self.start, 3), "model_size": self.cfg.model_size,
            "data_name": self.cfg.data_name,
        }
        if message:
            result["message"] = message
        if self.runtime.is_main_process:
            write_trainer_result(self.out_dir, result)
        watch.beat("stop", step=p.global_step, epoch=p.epoch, force=True, reason=reason)
        return result

    def request_stop(self, signum: int, _frame: object) -> None:
        if self.stop_signal is None:
            self.log.info(f"received {signal.Signals(signum).name}: finishing the current step, then saving")
        self.stop_signal = signum


# ------------------------------------------------------------------------------------------------ entry


def run(cfg: TrainConfig, start: float) -> int:
    """Train as configured; returns the process exit code (trainer/entry.py, docs/architecture.md §2)."""
    from trainer.entry import run_training  # the process around the loop; it imports this module

    return run_training(cfg, start)
