"""A few decoded validation formulas in training.log after each validation, so that a user reading the log
sees what the model reads, not only the scores. The same samples every validation (spread over the
validation split), so their lines show the progress on one formula from epoch to epoch."""

from __future__ import annotations

from collections.abc import Sequence

from trainer.logs import get_logger

EXAMPLES_PER_VALIDATION = 3


def example_indices(samples: int, count: int = EXAMPLES_PER_VALIDATION) -> list[int]:
    """``count`` indices spread evenly over ``samples`` (first and last included), without repeats."""
    if samples <= 0 or count <= 0:
        return []
    if count == 1 or samples == 1:
        return [0]
    return sorted({round(i * (samples - 1) / (count - 1)) for i in range(count)})


def example_lines(hypotheses: Sequence[str], references: Sequence[str],
                  count: int = EXAMPLES_PER_VALIDATION) -> list[str]:
    """Three lines per example (each its own log record): whether the reading equals the reference, the
    reference, the model's reading."""
    lines = []
    indices = example_indices(len(references), count)
    for number, index in enumerate(indices, start=1):
        verdict = "equal" if hypotheses[index].split() == references[index].split() else "differs"
        lines += [f"example {number}/{len(indices)} (validation sample {index}): {verdict}",
                  f"example {number} truth: {references[index]}",
                  f"example {number} read:  {hypotheses[index] or '(nothing)'}"]
    return lines


def log_examples(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    log = get_logger()
    for line in example_lines(hypotheses, references):
        log.info(line)
