"""Few batch shapes by design: image widths padded to a small fixed set of buckets, target lengths to a step.

Why: every distinct (batch, width, target length) is a new problem for cuDNN (an algorithm search per
convolution shape with ``cudnn.benchmark``, a plan look-up without), autocast's cast cache, the CUDA caching
allocator and ``torch.compile`` (a recompile). Batches grouped by width alone meet up to 64 widths (1024 / 16)
and 201 target lengths in a session; with buckets they meet ``len(widths)`` x ``max_length / length_step``
at most, and far fewer in practice (width and length go together).

The width buckets grow geometrically (each about ``WIDTH_RATIO`` times the last, on the CNN's multiple of
16): a fixed share of extra columns at any width, so the padding they add stays a small, bounded share
(bench/batch_shapes.py measures it on the real formulas and the synthetic set: bench/README.md). Lengths are
rounded up to a multiple of ``LENGTH_STEP``: the decoder is causal and the loss ignores PAD, so extra PAD
positions at the end change neither the loss nor any earlier position's output.

Only training batches are bucketed. Validation, ``trainer.evaluate`` and prediction keep their exact
widths, so their numbers do not depend on this setting and a checkpoint is the same with it on or off.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# 1.15: 21 widths for 16..1024; the extra columns are under 15 % of a batch at worst, about 6 % on average.
WIDTH_RATIO = 1.15
LENGTH_STEP = 16


def width_buckets(max_width: int, multiple: int = 16, ratio: float = WIDTH_RATIO) -> tuple[int, ...]:
    """Multiples of ``multiple`` from ``multiple`` to ``max_width``, each the smallest multiple at least
    ``ratio`` times the one before."""
    if multiple < 1 or max_width < multiple or ratio <= 1.0:
        raise ValueError(f"need max_width >= multiple >= 1 and ratio > 1, got {max_width}, {multiple}, {ratio}")
    buckets = [multiple]
    while buckets[-1] < max_width:
        grown = -(-int(np.ceil(buckets[-1] * ratio)) // multiple) * multiple
        buckets.append(min(max_width, max(grown, buckets[-1] + multiple)))
    return tuple(buckets)


@dataclass(frozen=True)
class ShapeBuckets:
    """The padded shape of a training batch: its widest image's width bucket and its longest target rounded
    up to ``length_step`` (never past ``max_length``, the longest a collated target can be)."""

    widths: tuple[int, ...]
    length_step: int = LENGTH_STEP
    max_length: int | None = None

    @classmethod
    def for_training(cls, max_width: int, width_multiple: int, max_target_len: int) -> ShapeBuckets:
        """The trainer's buckets: every width up to ``max_width``; targets are at most ``max_target_len``
        tokens, + BOS/EOS shift = ``max_target_len + 1`` positions."""
        return cls(width_buckets(max_width, width_multiple), LENGTH_STEP, max_target_len + 1)

    def pad_width(self, width: int) -> int:
        index = bisect.bisect_left(self.widths, width)
        return self.widths[index] if index < len(self.widths) else width

    def pad_length(self, length: int) -> int:
        rounded = -(-length // self.length_step) * self.length_step
        if self.max_length is not None:
            rounded = min(rounded, self.max_length)
        return max(rounded, length)

    def lengths(self) -> tuple[int, ...] | None:
        """Every padded length a batch can have (None without a ``max_length``)."""
        if self.max_length is None:
            return None
        return tuple(sorted({self.pad_length(n) for n in range(1, self.max_length + 1)}))


def order_keys(buckets: ShapeBuckets | None, widths: np.ndarray, targets: Sequence[Sequence[int]]) -> np.ndarray | None:
    """Sort keys for the training sampler: width bucket first, target length within it (None without
    buckets: the sampler sorts by width). A batch is padded to its bucket's width anyway, so grouping by
    length inside a bucket costs no pixels and saves PAD positions (the decoder's work grows with them)."""
    if buckets is None:
        return None
    bucket = np.searchsorted(np.asarray(buckets.widths), np.asarray(widths), side="left")
    lengths = target_lengths(targets)
    return bucket.astype(np.int64) * (int(lengths.max(initial=0)) + 1) + lengths


def describe_buckets(buckets: ShapeBuckets | None) -> str:
    """For the training log."""
    if buckets is None:
        return "batches padded to their widest image and longest target (--no_shape_buckets)"
    return (f"batches padded to {len(buckets.widths)} widths and to target lengths in steps of "
            f"{buckets.length_step} (--no_shape_buckets: each batch's own)")


def target_lengths(targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Token count of each target (packed targets answer from their offsets without unpacking)."""
    offsets = getattr(targets, "offsets", None)
    if offsets is not None:
        return np.diff(np.asarray(offsets)).astype(np.int64)
    return np.array([len(ids) for ids in targets], dtype=np.int64)


@dataclass(frozen=True)
class EpochShapes:
    """What an epoch's batches look like once collated: distinct (width, target length) shapes, the share of
    image pixels that are padding and the share of target positions that are PAD."""

    distinct_shapes: int
    distinct_widths: int
    distinct_lengths: int
    pixel_padding: float
    token_padding: float

    def as_dict(self) -> dict[str, float]:
        return {"distinct_shapes": self.distinct_shapes, "distinct_widths": self.distinct_widths,
                "distinct_lengths": self.distinct_lengths, "pixel_padding": self.pixel_padding,
                "token_padding": self.token_padding}


def epoch_shapes(batches: Iterable[Sequence[int]], widths: np.ndarray, lengths: np.ndarray,
                 buckets: ShapeBuckets | None) -> EpochShapes:
    """The collated shapes of ``batches`` (index lists) given each sample's image width and token count,
    padded as ``collate`` pads them (``buckets`` None: to the batch's widest and longest)."""
    shapes: set[tuple[int, int]] = set()
    pixels = padded_pixels = tokens = padded_tokens = 0
    for batch in batches:
        batch_widths, batch_lengths = widths[batch], lengths[batch] + 1  # + EOS (tgt_out) / BOS (tgt_in)
        width, length = int(batch_widths.max()), int(batch_lengths.max())
        if buckets is not None:
            width, length = buckets.pad_width(width), buckets.pad_length(length)
        shapes.add((width, length))
        pixels += int(batch_widths.sum())
        padded_pixels += width * len(batch)
        tokens += int(batch_lengths.sum())
        padded_tokens += length * len(batch)
    return EpochShapes(len(shapes), len({w for w, _ in shapes}), len({n for _, n in shapes}),
                       1 - pixels / padded_pixels if padded_pixels else 0.0,
                       1 - tokens / padded_tokens if padded_tokens else 0.0)
