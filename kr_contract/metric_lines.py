"""The machine-readable metric lines of ``training.log``: the trainer writes them, kr reads them.

After the timestamp and the level, a metric line is its kind followed by ``key=value`` fields only::

    2026-11-26 23:10:00 INFO train epoch=1 step=120 loss=2.3456 lr=3.000e-04 samples_per_s=85.1
    2026-11-26 23:12:00 INFO val epoch=1 step=300 bleu4=0.4512 exact_match=0.1200 ... loss=1.234

Values contain no spaces. Anything else is free text. ``epoch`` counts completed epochs, except on ``train``
lines where it is the (1-based) epoch being trained. The parser does not anchor at the start of a line, so a
streamed log that prefixes each line (Kaggle adds elapsed seconds) parses too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

# Kinds a reader may key on: train, val (one validation), checkpoint (a file written), stop (why a run ended),
# start (where a run began), data (what preparing a split changed), tarball (a pack).
METRIC_KINDS = ("train", "val", "checkpoint", "stop", "start", "data", "tarball")
VAL_METRICS = ("bleu4", "exact_match", "edit_distance", "edit_score", "loss")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# How each known field is printed; other floats get 4 decimals.
_FIELD_FORMATS = {"lr": "{:.3e}", "samples_per_s": "{:.1f}", "seconds": "{:.1f}"}
_LINE = re.compile(
    r"\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)[ \t]+(" + "|".join(METRIC_KINDS)
    + r")((?:[ \t]+[A-Za-z_][\w.]*=\S*)+)\s*$"
)
_SPACE = re.compile(r"\s")
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})(?:[.,]\d+)?[ \t]+$")

Value = int | float | str


@dataclass(frozen=True)
class MetricLine:
    kind: str
    fields: dict[str, Value]
    timestamp: datetime | None = None


def format_value(key: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return _FIELD_FORMATS.get(key, "{:.4f}").format(value)


def metric_line(kind: str, /, **fields: object) -> str:
    """``train epoch=1 step=120 loss=2.3456``: the message part of a metric line."""
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown metric kind {kind!r}: one of {', '.join(METRIC_KINDS)}")
    # A value with a space would end the record early: spaces become underscores (a log line never stops a run).
    parts = [kind] + [f"{key}={_SPACE.sub('_', format_value(key, value)) or '-'}" for key, value in fields.items()]
    return " ".join(parts)


def parse_metric_line(line: str) -> MetricLine | None:
    """The metric record on a logged line (timestamp and level included), or None for free text."""
    if "=" not in line:
        return None  # most free text: skip the regex
    match = _LINE.search(line)
    if match is None:
        return None
    fields = {}
    for token in match.group(2).split():
        key, _, value = token.partition("=")
        fields[key] = _convert(value)
    stamp = _TIMESTAMP.search(line, 0, match.start())
    return MetricLine(match.group(1), fields, _parse_timestamp(stamp.group(1) if stamp else None))


def _convert(value: str) -> Value:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _parse_timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("T", " "))
    except ValueError:
        return None
