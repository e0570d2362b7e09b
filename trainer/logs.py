"""training.log (appended across runs) and stdout, with machine-readable metric lines.

A metric line is ``<kind> key=value key=value ...`` after the timestamp and level (docs/architecture.md §2);
``kr plot`` and ``kr status`` key on the first word after the level.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOG_NAME = "training.log"
LOGGER_NAME = "trainer"
_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# How each known field is printed; other floats get 4 decimals.
_FIELD_FORMATS = {"lr": "{:.3e}", "samples_per_s": "{:.1f}", "seconds": "{:.1f}"}


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup_logging(out_dir: Path, *, enabled: bool, rank: int = 0) -> logging.Logger:
    """Log to OUT_DIR/training.log (append) and stdout. Only the main process logs (enabled=False elsewhere);
    the other ranks still write their errors to stderr (the kernel log), named by rank, so that a crash on
    any rank says why."""
    logger = get_logger()
    close_logging()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not enabled:
        errors = logging.StreamHandler(sys.stderr)
        errors.setLevel(logging.ERROR)
        errors.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(message)s", _DATE_FORMAT))
        logger.addHandler(errors)
        return logger
    out_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(_FORMAT, _DATE_FORMAT)
    for handler in (logging.FileHandler(out_dir / LOG_NAME, mode="a", encoding="utf-8"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def close_logging() -> None:
    logger = get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def format_value(key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return _FIELD_FORMATS.get(key, "{:.4f}").format(value)


def metric_line(kind: str, /, **fields: object) -> str:
    """``train epoch=1 step=120 loss=2.3456``: values must not contain spaces."""
    parts = [kind] + [f"{key}={format_value(key, value)}" for key, value in fields.items()]
    return " ".join(parts)


def log_metrics(kind: str, /, **fields: object) -> None:
    get_logger().info(metric_line(kind, **fields))


def parse_metric_line(line: str) -> tuple[str, dict[str, str]] | None:
    """Inverse of a logged metric line (timestamp and level included); None for free text."""
    words = line.split()
    if len(words) < 4 or words[2] not in ("INFO", "WARNING", "ERROR"):
        return None
    fields = dict(word.split("=", 1) for word in words[4:] if "=" in word)
    if not fields:
        return None
    return words[3], fields
