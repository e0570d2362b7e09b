"""Data: loading a split, preparing it once per session, batching it by width.

- ``load_texts_and_images`` (trainer/sources.py) reads raw (text, undecoded image) pairs from Hugging Face,
  local parquet files or the offline synthetic set; all three end in the same image decoding (``load_image``).
- ``prepare_split`` decodes and preprocesses every image once and keeps the result in memory, so epochs
  after the first cost no decoding; it counts (never silently drops) what it had to change.
- ``WidthBucketSampler`` groups images of similar width into batches (little padding) in an order that is a
  pure function of (seed, epoch): a resumed run sees exactly the batches it would have seen, and every DDP
  rank computes the same order and takes its own share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainer.buckets import ShapeBuckets, epoch_shapes
from trainer.images import ImageSpec, preprocess_batch, worker_context
from trainer.packed import PackedImages, PackedTargets
from trainer.sources import (  # noqa: F401 - the loading half, under the names its callers know
    DATA_NAMES,
    SPLITS,
    DataConfig,
    DataError,
    default_cache_dir,
    load_texts_and_images,
    read_parquet,
    resolve_cache_dir,
    split_files,
)
from trainer.tokenizer import Vocab

# Batches per shuffling pool: large enough that sorted pools cut into batches of near-equal width, small
# enough that batch composition still changes from epoch to epoch.
POOL_BATCHES = 50
MAX_ERRORS_KEPT = 5
# Worker processes pay their start-up only for a split this large; a serial split reports every chunk.
PARALLEL_MIN_IMAGES = 256
SERIAL_CHUNK = 512


# -------------------------------------------------------------------------------------------- preparing


@dataclass
class PreparedSplit:
    """A split decoded and preprocessed once, kept for the whole session (in memory, or mapped from the files
    rank 0 published: trainer/exchange.py)."""

    images: Sequence[np.ndarray]  # uint8 (H, W), ink high, background 0 (see trainer.images): PackedImages
    targets: Sequence[list[int]]  # token ids, no BOS/EOS, at most max_target_len: PackedTargets
    texts: list[str]  # the reference texts (for metrics), aligned with images
    widths: np.ndarray  # int64 (N,) image widths, for width bucketing
    report: dict[str, int]  # counts of what preparing changed; the training loop logs them
    errors: list[str] = field(default_factory=list)  # the first few undecodable images' messages

    def __len__(self) -> int:
        return len(self.images)


Progress = Callable[[int, int], None]  # (images done, images in all): reported after each chunk


def prepare_split(
    texts: Sequence[str],
    images: Sequence[Any],
    vocab: Vocab,
    spec: ImageSpec,
    max_target_len: int,
    num_proc: int = 1,
    on_progress: Progress | None = None,
) -> PreparedSplit:
    """Decode, preprocess and tokenize a split once.

    Report keys: ``samples`` (kept), ``shrunk_to_fit`` (images resized to the limits), ``undecodable``
    (images that could not be read: the only samples left out, and counted), ``blank_images`` (no ink),
    ``unknown_tokens`` (tokens mapped to <unk>), ``truncated_targets`` (texts longer than
    ``max_target_len`` tokens, cut to it)."""
    if len(texts) != len(images):
        raise DataError(f"{len(texts)} texts but {len(images)} images: the data source is inconsistent")
    if max_target_len < 1:
        raise DataError(f"max_target_len must be >= 1, got {max_target_len}")
    results = _preprocess_all(list(images), spec, num_proc, on_progress)
    canvases: list[np.ndarray] = []
    targets: list[list[int]] = []
    kept_texts: list[str] = []
    errors: list[str] = []
    report = dict.fromkeys(
        ("samples", "shrunk_to_fit", "undecodable", "blank_images", "unknown_tokens", "truncated_targets"), 0
    )
    for index, (text, result) in enumerate(zip(texts, results, strict=True)):
        if isinstance(result, str):
            report["undecodable"] += 1
            if len(errors) < MAX_ERRORS_KEPT:
                errors.append(f"sample {index}: {result}")
            continue
        canvas, shrunk = result
        ids = vocab.encode(text)
        report["shrunk_to_fit"] += int(shrunk)
        report["blank_images"] += int(not canvas.any())
        report["unknown_tokens"] += sum(1 for i in ids if i == Vocab.UNK)
        report["truncated_targets"] += int(len(ids) > max_target_len)
        canvases.append(canvas)
        targets.append(ids[:max_target_len])
        kept_texts.append(text)
    del results
    report["samples"] = len(canvases)
    widths = np.array([canvas.shape[1] for canvas in canvases], dtype=np.int64)
    return PreparedSplit(images=PackedImages.pack(canvases, spec.height), targets=PackedTargets.pack(targets),
                         texts=kept_texts, widths=widths, report=report, errors=errors)


def _preprocess_all(images: list[Any], spec: ImageSpec, num_proc: int,
                    on_progress: Progress | None) -> list[tuple[np.ndarray, bool] | str]:
    """In chunks (in worker processes when there are many), reporting after each."""
    parallel = num_proc > 1 and len(images) >= PARALLEL_MIN_IMAGES
    chunks = _chunks(images, num_proc * 8) if parallel else _chunks_of(images, SERIAL_CHUNK)
    results: list[tuple[np.ndarray, bool] | str] = []
    if not parallel:
        for chunk in chunks:
            results += preprocess_batch(chunk, spec)
            _report(on_progress, len(results), len(images))
        return results
    with ProcessPoolExecutor(max_workers=num_proc, mp_context=worker_context()) as pool:
        for part in pool.map(preprocess_batch, chunks, [spec] * len(chunks)):
            results += part
            _report(on_progress, len(results), len(images))
    return results


def _report(on_progress: Progress | None, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(done, total)


def _chunks(items: list[Any], count: int) -> list[list[Any]]:
    return _chunks_of(items, max(1, -(-len(items) // count)))


def _chunks_of(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -------------------------------------------------------------------------------------------- batching


class OcrDataset(torch.utils.data.Dataset):
    """Items of a PreparedSplit: (uint8 tensor (1, H, W), token ids)."""

    def __init__(self, split: PreparedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> tuple[Tensor, list[int]]:
        image = self.split.images[index]
        if not image.flags.writeable:  # mapped read-only (shared between ranks): torch wants its own buffer
            image = image.copy()
        return torch.from_numpy(image).unsqueeze(0), self.split.targets[index]


@dataclass
class Batch:
    images: Tensor  # float32 (B, 1, H, W): ink 1.0, background and padding 0.0
    tgt_in: Tensor  # int64 (B, L): BOS + ids, then PAD
    tgt_out: Tensor  # int64 (B, L): ids + EOS, then PAD
    widths: Tensor  # int64 (B,): each image's width before batch padding (to mask padded columns)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.images, self.tgt_in, self.tgt_out, self.widths

    def __len__(self) -> int:
        return int(self.images.shape[0])


def collate(items: Sequence[tuple[Tensor, Sequence[int]]], buckets: ShapeBuckets | None = None) -> Batch:
    """Pad images to the batch's widest (background 0) and targets to the longest (PAD); with ``buckets``,
    further to the widest's width bucket and the longest's rounded length (trainer/buckets.py)."""
    height = max(int(image.shape[-2]) for image, _ in items)
    width = max(int(image.shape[-1]) for image, _ in items)
    length = max(len(ids) for _, ids in items) + 1
    if buckets is not None:
        width, length = buckets.pad_width(width), buckets.pad_length(length)
    images = torch.zeros(len(items), 1, height, width, dtype=torch.uint8)
    tgt_in = torch.full((len(items), length), Vocab.PAD, dtype=torch.long)
    tgt_out = torch.full((len(items), length), Vocab.PAD, dtype=torch.long)
    widths = torch.empty(len(items), dtype=torch.long)
    for row, (image, ids) in enumerate(items):
        h, w = int(image.shape[-2]), int(image.shape[-1])
        images[row, :, :h, :w] = image
        widths[row] = w
        ids_tensor = torch.as_tensor(list(ids), dtype=torch.long)
        tgt_in[row, 0] = Vocab.BOS
        tgt_in[row, 1 : len(ids) + 1] = ids_tensor
        tgt_out[row, : len(ids)] = ids_tensor
        tgt_out[row, len(ids)] = Vocab.EOS
    return Batch(images=images.float().div_(255.0), tgt_in=tgt_in, tgt_out=tgt_out, widths=widths)


class WidthBucketSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler: batches of similar-width images, in an order that is a pure function of
    (seed, epoch).

    Shuffled: indices are permuted, cut into pools of ``POOL_BATCHES`` batches, each pool sorted by width
    and cut into batches; groups of ``world_size`` neighbouring batches (similar widths, so no rank waits
    for a wider one) are shuffled, and rank r takes the r-th batch of every group. Groups that are not
    complete are dropped so every rank gets the same number of batches (a different few samples each
    epoch). Not shuffled (evaluation): sorted by width, and the last group is completed by wrapping
    around so that every sample is seen (a few twice when world_size > 1).

    ``order_keys`` (shuffled only): what pools are sorted by instead of the widths. With shape buckets the
    trainer passes (width bucket, target length) (trainer/buckets.py ``order_keys``): batches padded to one
    bucket cost the same pixels whatever their widths inside it, so sorting by length there cuts PAD positions.
    """

    def __init__(
        self,
        widths: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int,
        *,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        order_keys: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.widths = np.asarray(widths, dtype=np.int64)
        if self.widths.size == 0:
            raise DataError("cannot batch an empty split")
        self.keys = self.widths if order_keys is None else np.asarray(order_keys, dtype=np.int64)
        if self.keys.shape != self.widths.shape:
            raise ValueError(f"{self.keys.size} order keys for {self.widths.size} samples")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches for ``epoch``, in step order (groups of world_size consecutive batches)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        if self.shuffle:
            batches = self._shuffled_batches(epoch)
        else:
            batches = self._cut(np.argsort(self.widths, kind="stable"))
        batches = self._complete_groups(batches)
        self._cached = (epoch, batches)
        return batches

    def _shuffled_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch])
        permuted = rng.permutation(self.widths.size)
        # Whole groups per pool, so that no group straddles two pools (a wide and a narrow batch).
        pool_size = self.batch_size * self.world_size * max(1, POOL_BATCHES // self.world_size)
        # The remainder joins the last full pool: a small pool of its own would span every width.
        bounds = (
            [*range(0, permuted.size - pool_size + 1, pool_size)][1:] if permuted.size >= pool_size else []
        )
        batches: list[list[int]] = []
        for pool in np.split(permuted, bounds):
            batches.extend(self._cut(pool[np.argsort(self.keys[pool], kind="stable")]))
        groups = [batches[i : i + self.world_size] for i in range(0, len(batches), self.world_size)]
        if len(groups) > 1 and len(groups[-1]) < self.world_size:
            # Every rank must get the same number of batches: the incomplete group sits out (a different
            # set of samples each epoch, since pools are drawn at random).
            groups.pop()
        order = rng.permutation(len(groups))
        return [batch for i in order for batch in groups[i]]

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        return [order[i : i + self.batch_size].tolist() for i in range(0, order.size, self.batch_size)]

    def _complete_groups(self, batches: list[list[int]]) -> list[list[int]]:
        """Wrap around until the batch count is a multiple of world_size, so every sample is seen and every
        rank gets the same number of batches."""
        missing = -len(batches) % self.world_size
        return batches + [batches[i % len(batches)] for i in range(missing)]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch``."""
        return self.all_batches(epoch)[self.rank :: self.world_size]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate over ``epoch`` from this rank's batch ``start_batch`` on (exact resume mid-epoch)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        """Batches per epoch for this rank (a whole epoch, whatever start_batch is)."""
        return len(self.epoch_batches(self.epoch))


def padding_share(sampler: WidthBucketSampler, widths: Sequence[int] | np.ndarray, epoch: int,
                  buckets: ShapeBuckets | None = None) -> float:
    """Share of the pixels of an epoch's batches that are batch padding (heights are fixed, so widths), with
    each batch padded to its widest image or, with ``buckets``, to that width's bucket."""
    widths = np.asarray(widths, dtype=np.int64)
    no_lengths = np.zeros_like(widths)  # the pixels do not depend on the targets
    return epoch_shapes(sampler.epoch_batches(epoch), widths, no_lengths, buckets).pixel_padding
