"""training.log (appended across runs) and stdout, with machine-readable metric lines.

The metric-line format is the contract's (``kr_contract.metric_lines``): ``<kind> key=value ...`` after the
timestamp and level; ``kr plot`` and ``kr status`` parse it with the same module.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from kr_contract.metric_lines import LOG_DATE_FORMAT, LOG_FORMAT, metric_line
from kr_contract.names import TRAINING_LOG

LOGGER_NAME = "trainer"


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
        errors.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(message)s", LOG_DATE_FORMAT))
        logger.addHandler(errors)
        return logger
    out_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT)
    for handler in (logging.FileHandler(out_dir / TRAINING_LOG, mode="a", encoding="utf-8"),
                    logging.StreamHandler(sys.stdout)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def close_logging() -> None:
    logger = get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def log_metrics(kind: str, /, **fields: object) -> None:
    get_logger().info(metric_line(kind, **fields))
