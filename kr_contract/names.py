"""Names every side agrees on: files, folders, stop reasons, exit codes, environment variables, choices."""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------------------------ files

TARBALL = "checkpoints.tar.gz"  # the latest checkpoints, fixed name: what a chain carries between sessions
TRAINING_LOG = "training.log"  # appended across sessions
RUN_JSON = "run.json"  # the kernel's summary of its session
TRAINER_RESULT = "trainer_result.json"  # the trainer's summary of its run
MARKER_FILE = "kr-marker.json"  # which chain and session a checkpoint dataset version holds
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pth.tar"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_MEMBER = f"{CHECKPOINT_DIR}/{MANIFEST_NAME}"
LAST_MEMBER = f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}"
TIMESTAMPED_TARBALL_PREFIX = "checkpoints_"
BEST_PREFIX = "BEST_checkpoint_"
CHECKPOINT_SUFFIX = ".pth.tar"

# What kr downloads from a finished session.
OUTPUT_FILES = (TARBALL, TRAINING_LOG, RUN_JSON)
OUTPUT_PATTERN = "^(" + "|".join(re.escape(name) for name in OUTPUT_FILES) + ")$"
# What kr publishes as one checkpoint dataset version.
DATASET_FILES = (TARBALL, TRAINING_LOG, MARKER_FILE)


def epoch_checkpoint_name(tag: str, data_name: str, epoch: int) -> str:
    return f"checkpoint_{tag}_{data_name}_epoch{epoch}{CHECKPOINT_SUFFIX}"


def best_checkpoint_name(tag: str, data_name: str) -> str:
    return f"{BEST_PREFIX}{tag}_{data_name}{CHECKPOINT_SUFFIX}"


def is_best_name(name: str) -> bool:
    return name.startswith(BEST_PREFIX) and name.endswith(CHECKPOINT_SUFFIX)


# --------------------------------------------------------------------------------------- stop reasons

# The trainer stopped on purpose with everything saved (exit code 0).
STOP_MAX_EPOCHS = "max_epochs"
STOP_MAX_STEPS = "max_steps"
STOP_TIME_BUDGET = "time_budget"
STOP_DEADLINE = "deadline"
STOP_SIGNAL = "signal"
STOP_COMPLETED = "completed"  # the learning-rate schedule's horizon is reached
CLEAN_STOPS = frozenset(
    {STOP_MAX_EPOCHS, STOP_MAX_STEPS, STOP_TIME_BUDGET, STOP_DEADLINE, STOP_SIGNAL, STOP_COMPLETED}
)
# The trainer gave up: the loss or gradient stopped being finite (a retry from the same state repeats it).
STOP_DIVERGED = "diverged"
# The kernel stopped before or around the trainer.
STOP_STALE_INPUT = "stale_input"  # the mounted checkpoint is not the one this session expects
STOP_BAD_INPUT = "bad_input"  # the mounted checkpoint matches but does not unpack or verify
STOP_BAD_SCRIPT = "bad_script"  # the embedded archive does not match its sha256
STOP_STALLED = "stalled"  # the watchdog saw no progress for stall_timeout_s and stopped the trainer
STOP_CRASH = "crash"  # the trainer exited non-zero without saying why
STOP_UNKNOWN = "unknown"  # the trainer exited 0 but left no result file

# Tags that start the one line the kernel prints for a stop of its own (the chain greps the log for them).
TAG_STALE_INPUT = "KR_STALE_INPUT"
TAG_BAD_INPUT = "KR_BAD_INPUT"
TAG_BAD_SCRIPT = "KR_BAD_SCRIPT"
TAG_STALLED = "KR_STALLED"

# ----------------------------------------------------------------------------------------- exit codes

EXIT_OK = 0
EXIT_CRASH = 1  # a crash, a divergence, or a mounted checkpoint that does not verify
EXIT_USAGE = 2  # the trainer's bad input: a one-line error, nothing saved touched
EXIT_STALE_INPUT = 3  # the chain relaunches once the right dataset version is mounted
EXIT_STALLED = 4  # the watchdog stopped a trainer that made no progress

# -------------------------------------------------------------------------------- environment variables

ENV_DEADLINE = "KR_DEADLINE"  # absolute Unix time by which the trainer must have exited
ENV_WATCHDOG_DIR = "KR_WATCHDOG_DIR"  # where the trainer writes its heartbeat, pid and stack files
ENV_STALL_TIMEOUT = "KR_STALL_TIMEOUT_S"  # the watchdog's limit, so the trainer can size its own timeouts
ENV_KAGGLE_INPUT = "KR_KAGGLE_INPUT"  # the input root (/kaggle/input on Kaggle; the sandbox's elsewhere)

# -------------------------------------------------------------------------------------------- choices

DATA_NAMES = ("small", "full", "synthetic_handwrite", "human_handwrite", "human_handwrite_print", "synthetic")
MODEL_SIZES = ("tiny", "small", "base")
