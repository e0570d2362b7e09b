"""``kr chain --smoke``: the whole loop, small, before the first real chain.

Two sessions of a few minutes each, with the user's own backend, account, accelerator, data source and
internet setting, but a tiny model, a handful of steps and the kernel and dataset slugs suffixed ``-smoke``
(so the real chain's kernel and dataset stay untouched). It goes through push, queue, run, download, verify,
publish, the dataset version becoming ready, and the second session mounting it and resuming; each stage's
time is kept with its session (``SessionRecord.stages``) and reported as a table.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from kaggle_runner.config import DATASET_SLUG_LEN, KERNEL_SLUG_LEN, config_from_mapping

if TYPE_CHECKING:
    from kaggle_runner.chain_state import ChainRecord
    from kaggle_runner.config import KrConfig

SUFFIX = "-smoke"
SESSIONS = 2
STEPS_PER_SESSION = 10
SESSION_BUDGET_S = 900  # the hard limit of each smoke session: a hang costs at most this
STALL_TIMEOUT_S = 300
SYNTHETIC_SIZES = {"synthetic_train": 32, "synthetic_val": 8, "synthetic_test": 8}
# The trainer flags the smoke sets; the user's own values of them are replaced. Short targets and few
# validation samples: an untrained model decodes every sample to the longest target, which would make the
# smoke's validation its slowest part.
SMOKE_FLAGS = {"--max_steps": str(STEPS_PER_SESSION), "--max_target_len": "32", "--val_max_samples": "4",
               "--log_every": "1"}
# mount+resume: the second session's kernel time around the trainer (mount, verify, unpack and resume from
# the first session's checkpoint, pack at the end), a part of its "run".
STAGES = ("push", "queue", "run", "mount+resume", "download", "verify", "publish", "dataset ready")


def suffixed(slug: str, longest: int) -> str:
    """``slug-smoke`` within Kaggle's slug length (the slug is cut, never the suffix)."""
    return slug[: longest - len(SUFFIX)].rstrip("-") + SUFFIX


def smoke_config(config: KrConfig) -> KrConfig:
    """The user's configuration, made small: same backend, account, accelerator, data source and internet."""
    data = config.to_mapping()
    kernel_slug = suffixed(config.kernel_slug, KERNEL_SLUG_LEN[1])
    trainer: dict[str, Any] = dict(data["trainer"])
    trainer.update(model_size="tiny", batch_size=min(config.trainer.batch_size, 8),
                   extra_args=_smoke_args(config.trainer.extra_args))
    if config.trainer.data_name == "synthetic":
        trainer.update(SYNTHETIC_SIZES)
    data.update(
        kernel_slug=kernel_slug,
        kernel_title=kernel_slug.replace("-", " "),
        dataset_slug=suffixed(config.dataset_slug, DATASET_SLUG_LEN[1]),
        epochs_per_session=1,
        session_budget_s=min(config.session_budget_s, SESSION_BUDGET_S),
        stall_timeout_s=min(config.stall_timeout_s, STALL_TIMEOUT_S),
        trainer=trainer,
    )
    return dataclasses.replace(config_from_mapping(data, where="smoke settings"), source=config.source)


def _smoke_args(extra_args: tuple[str, ...]) -> list[str]:
    """The user's trainer flags without the ones the smoke sets, then the smoke's."""
    kept: list[str] = []
    skip_value = False
    for arg in extra_args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=")[0]
        if name in SMOKE_FLAGS:
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return kept + [part for flag, value in SMOKE_FLAGS.items() for part in (flag, value)]


def stage_table(record: ChainRecord) -> list[str]:
    """Each stage's seconds per session, and what the second session resumed from."""
    sessions = record.sessions
    header = f"{'stage':<14}" + "".join(f"{'session ' + str(s.index):>12}" for s in sessions)
    lines = [header]
    for stage in STAGES:
        cells = [s.stages.get(stage) for s in sessions]
        lines.append(f"{stage:<14}" + "".join(f"{'-' if c is None else f'{c:.1f}s':>12}" for c in cells))
    # mount+resume is the kernel's own part of "run": not counted twice.
    total = [sum(v for k, v in s.stages.items() if k != "mount+resume") for s in sessions]
    lines.append(f"{'total':<14}" + "".join(f"{t:>11.1f}s" for t in total))
    if len(sessions) >= 2 and sessions[1].step is not None:
        lines.append(f"session 2 resumed from session 1's checkpoint (step {sessions[0].step}) and reached step "
                     f"{sessions[1].step}")
    return lines
