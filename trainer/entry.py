"""The process around the training loop: the runtime (torchrun's ranks), logging, signals, the watchdog's
hooks, and every way a run ends as an exit code with one clear line (docs/architecture.md §2):
0 done or stopped cleanly with everything saved, 2 bad input (nothing saved touched), 1 a crash, a divergence
or a dead DataLoader worker (the last checkpoint intact)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import torch

from kr_contract.names import EXIT_CRASH, EXIT_OK, EXIT_USAGE, STOP_CRASH, STOP_DIVERGED
from trainer import checkpoint as ckpt
from trainer import distributed, watch
from trainer.budget import DeadlineError
from trainer.config import TrainConfig
from trainer.data import DataError
from trainer.loader import LoaderError
from trainer.logs import close_logging, get_logger, setup_logging
from trainer.optim import TrainingDiverged
from trainer.resume import InputError
from trainer.runtime import Runtime, RuntimeSetupError
from trainer.sockets import ensure_short_tempdir
from trainer.train import Trainer

INPUT_ERRORS = (InputError, DataError, ckpt.CheckpointError, DeadlineError, RuntimeSetupError)


def run_training(cfg: TrainConfig, start: float) -> int:
    """Train as configured; returns the process exit code (docs/architecture.md §2)."""
    watch.start()
    try:
        runtime = distributed.init_runtime(cfg.device)
    except RuntimeSetupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    log = setup_logging(Path(cfg.out_dir), enabled=runtime.is_main_process, rank=runtime.rank)
    note = ensure_short_tempdir()
    if note:
        log.info(note)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    code = EXIT_CRASH
    try:
        code = _setup_and_train(cfg, runtime, start, log)
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        close_logging()
        distributed.shutdown(clean=code == EXIT_OK)


def _setup_and_train(cfg: TrainConfig, runtime: Runtime, start: float, log: logging.Logger) -> int:
    try:
        trainer = Trainer(cfg, runtime, start)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, trainer.request_stop)
        trainer.setup()
    except INPUT_ERRORS as exc:
        return _input_error(exc)
    except Exception:
        log.exception("crashed while setting up")
        return EXIT_CRASH
    try:
        trainer.run()
    except TrainingDiverged as exc:
        saved = (trainer.ckpt_dir / ckpt.LAST_NAME).is_file()
        advice = ("nothing was saved after the last checkpoint; resume from it" if saved else
                  "no checkpoint was saved yet; start again")
        message = (f"diverged at step {trainer.progress.global_step}: {exc}; {advice} with a lower --lr"
                   + (" or --precision fp32" if trainer.precision.dtype is not None else ""))
        log.error(message)
        trainer._finish(STOP_DIVERGED, message)  # trainer_result.json tells the kernel (and kr chain) why
        return EXIT_CRASH
    except LoaderError as exc:
        message = f"stopped at step {trainer.progress.global_step}: {exc}"
        log.error(message)
        trainer._finish(STOP_CRASH, message)
        return EXIT_CRASH
    except Exception:
        log.exception(f"crashed at step {trainer.progress.global_step}")
        return EXIT_CRASH
    return EXIT_OK


def _input_error(exc: BaseException) -> int:
    """One line on stderr (and in the log), exit code 2; nothing saved has been touched."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    get_logger().error(f"input error: {message}")
    sys.stderr.write(f"error: {message}\n")
    return EXIT_USAGE
