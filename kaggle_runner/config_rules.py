"""What each kr.toml key allows, and the rules between keys: every value is checked here before kr uses it.

An error names the key, the bad value and what is allowed; a warning (a retired accelerator, a title that
does not match the slug) goes to the caller's ``warn`` callback, never to the terminal directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kaggle_runner.errors import UsageError
from kr_contract.names import DATA_NAMES, MODEL_SIZES

if TYPE_CHECKING:
    from kaggle_runner.config import KrConfig

BACKENDS = ("local", "kaggle")

# Kaggle's machine shapes (kaggle-cli docs/kernels.md, Feb 2026). "None" runs the kernel on CPU.
CPU_ACCELERATOR = "None"
GPU_ACCELERATORS = (
    "NvidiaTeslaT4",
    "NvidiaTeslaT4Highmem",
    "NvidiaL4",
    "NvidiaL4X1",
    "NvidiaTeslaA100",
    "NvidiaH100",
    "NvidiaRtxPro6000",
)
TPU_ACCELERATORS = ("TpuV5E8", "TpuV6E8")
ACCELERATORS = (*GPU_ACCELERATORS, *TPU_ACCELERATORS, CPU_ACCELERATOR)
# Retired shapes still go through a push (the client only warns); Kaggle runs them on these instead.
RETIRED_ACCELERATORS = {
    "NvidiaTeslaP100": "NvidiaTeslaT4",
    "TpuV38": "TpuV5E8",
    "Tpu1VmV38": "TpuV5E8",
    "TpuV232": CPU_ACCELERATOR,
    "TpuV2256": CPU_ACCELERATOR,
}

HOUR_S = 3600
GPU_SESSION_LIMIT_S = 12 * HOUR_S
TPU_SESSION_LIMIT_S = 9 * HOUR_S
# Half an hour under Kaggle's 12 h limit: room for start-up, packing and Kaggle saving the outputs.
DEFAULT_SESSION_BUDGET_S = GPU_SESSION_LIMIT_S - HOUR_S // 2
# The kernel's watchdog ends a session whose trainer reported no progress for this long. The trainer beats
# at least once a minute while it progresses, and every long phase (a Hugging Face download, decoding the
# images, a validation pass of the full set: about 2 minutes on a T4) reports its own progress, so 15 minutes
# is several times the longest silence of a healthy run, and a hang costs 15 minutes instead of 12 hours.
DEFAULT_STALL_TIMEOUT_S = 900
STALL_TIMEOUT_S = (60, GPU_SESSION_LIMIT_S)

# Kaggle's own limits (kaggle client 2.2.5 validation and the site's slug rules).
KERNEL_SLUG_LEN = (5, 50)
DATASET_SLUG_LEN = (6, 50)
KERNEL_TITLE_LEN = (5, 50)
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")
_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Trainer flags that kr sets itself: per session (out_dir, checkpoint, max_epochs) or from their own keys.
RESERVED_TRAINER_FLAGS = frozenset(
    [
        "--out_dir",
        "--checkpoint",
        "--max_epochs",
        "--data_name",
        "--use_huggingface",
        "--no_huggingface",
        "--hf_repo",
        "--model_size",
        "--batch_size",
        "--seed",
        "--synthetic_train",
        "--synthetic_val",
        "--synthetic_test",
    ]
)

Warn = Callable[[str], None]


def ignore_warning(message: str) -> None:
    """The default ``warn``: a caller that shows warnings passes its own."""


def bad_value(key: str, value: object, allowed: str, where: str = "config") -> UsageError:
    return UsageError(f"{where}: {key} = {value!r} is not allowed: {allowed}")


def check_choice(key: str, value: object, choices: tuple[str, ...], where: str = "config") -> None:
    if value not in choices:
        raise bad_value(key, value, f"one of {', '.join(choices)}", where)


def _check_bool(key: str, value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise bad_value(key, value, "true or false", where)
    return value


def _check_int(key: str, value: object, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_value(key, value, f"a whole number from {low} to {high}", where)
    return value


def _check_slug(key: str, value: object, lengths: tuple[int, int], where: str) -> str:
    low, high = lengths
    allowed = f"{low}-{high} characters of lower-case letters, digits and single hyphens (as Kaggle requires)"
    if not isinstance(value, str) or not low <= len(value) <= high or not _SLUG_RE.match(value):
        raise bad_value(key, value, allowed, where)
    return value


def is_slug(value: str, lengths: tuple[int, int]) -> bool:
    return lengths[0] <= len(value) <= lengths[1] and bool(_SLUG_RE.match(value))


def slugify_title(title: str) -> str:
    """The slug Kaggle derives from a title (the official client uses python-slugify the same way)."""
    try:
        from slugify import slugify
    except ImportError:  # python-slugify comes with the kaggle client; this fallback matches it on ASCII
        return "-".join(re.findall(r"[a-z0-9]+", title.lower().replace("'", "")))
    return str(slugify(title))


def validated_top(key: str, value: object, where: str) -> Any:
    if key == "kernel_slug":
        return _check_slug(key, value, KERNEL_SLUG_LEN, where)
    if key == "dataset_slug":
        return _check_slug(key, value, DATASET_SLUG_LEN, where)
    if key == "kernel_title":
        low, high = KERNEL_TITLE_LEN
        if not isinstance(value, str) or not low <= len(value.strip()) <= high:
            raise bad_value(key, value, f"a title of {low}-{high} characters", where)
        return value
    if key == "backend":
        check_choice(key, value, BACKENDS, where)
        return value
    if key == "accelerator":
        if value not in ACCELERATORS and value not in RETIRED_ACCELERATORS:
            raise bad_value(key, value, f"one of {', '.join(ACCELERATORS)}", where)
        return value
    if key in ("internet", "private"):
        return _check_bool(key, value, where)
    if key == "epochs_per_session":
        return _check_int(key, value, 1, 100_000, where)
    if key == "session_budget_s":
        return _check_int(key, value, 1, GPU_SESSION_LIMIT_S, where)
    if key == "stall_timeout_s":
        return _check_int(key, value, *STALL_TIMEOUT_S, where)
    if key == "username":
        if not isinstance(value, str) or not _USERNAME_RE.match(value):
            raise bad_value(key, value, "a Kaggle username (letters, digits, '-' or '_')", where)
        return value
    raise AssertionError(f"unhandled key {key}")  # config.TOP_KEYS and this function are kept in step


def validated_trainer(key: str, value: object, where: str) -> Any:
    name = f"trainer.{key}"
    if key == "data_name":
        check_choice(name, value, DATA_NAMES, where)
        return value
    if key == "model_size":
        check_choice(name, value, MODEL_SIZES, where)
        return value
    if key == "use_huggingface":
        return _check_bool(name, value, where)
    if key == "hf_repo":
        if not isinstance(value, str) or not _HF_REPO_RE.match(value):
            raise bad_value(name, value, "a Hugging Face dataset id such as linxy/LaTeX_OCR", where)
        return value
    if key == "batch_size":
        return _check_int(name, value, 1, 4096, where)
    if key == "seed":
        return _check_int(name, value, 0, 2**31 - 1, where)
    if key in ("synthetic_train", "synthetic_val", "synthetic_test"):
        return _check_int(name, value, 1, 10_000_000, where)
    if key == "extra_args":
        if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
            raise bad_value(name, value, 'a list of strings, e.g. ["--lr", "3e-4"]', where)
        for arg in value:
            if arg.split("=")[0] in RESERVED_TRAINER_FLAGS:
                raise bad_value(name, value, f"trainer flags other than {arg.split('=')[0]}: kr sets that one", where)
        return tuple(value)
    raise AssertionError(f"unhandled key {name}")


def check_consistency(config: KrConfig, where: str, warn: Warn) -> None:
    """Rules that involve more than one key."""
    trainer = config.trainer
    if trainer.use_huggingface and trainer.data_name == "synthetic":
        raise UsageError(
            f"{where}: trainer.use_huggingface = true with trainer.data_name = 'synthetic': the synthetic set is "
            "generated, not downloaded",
            "set trainer.use_huggingface = false, or choose a Hugging Face config such as 'full'",
        )
    if config.uses_tpu and config.session_budget_s > TPU_SESSION_LIMIT_S:
        raise bad_value(
            "session_budget_s", config.session_budget_s, f"at most {TPU_SESSION_LIMIT_S} on a TPU (9 h sessions)", where
        )
    if config.accelerator in RETIRED_ACCELERATORS:
        warn(
            f"accelerator {config.accelerator!r} is retired: Kaggle runs it on {config.effective_accelerator!r}; "
            f"set accelerator = {config.effective_accelerator!r} to silence this"
        )
    if config.backend == "kaggle" and trainer.use_huggingface and not config.internet:
        warn(HF_WITHOUT_INTERNET)
    if slugify_title(config.kernel_title) != config.kernel_slug:
        warn(
            f"kernel_title {config.kernel_title!r} resolves to the slug {slugify_title(config.kernel_title)!r}, not "
            f"kernel_slug {config.kernel_slug!r}: Kaggle derives a new kernel's slug from its title"
        )


HF_WITHOUT_INTERNET = "trainer.use_huggingface = true but internet = false: the kernel cannot download the data set"
