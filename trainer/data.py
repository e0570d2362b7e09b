"""Data: loading a split, preparing it once per session, batching it by width.

- ``load_texts_and_images`` reads raw (text, undecoded image) pairs from Hugging Face, local parquet files or
  the offline synthetic set; all three end in the same lists and the same image decoding (``load_image``).
- ``prepare_split`` decodes and preprocesses every image once and keeps the result in memory, so epochs
  after the first cost no decoding; it counts (never silently drops) what it had to change.
- ``WidthBucketSampler`` groups images of similar width into batches (little padding) in an order that is a
  pure function of (seed, epoch): a resumed run sees exactly the batches it would have seen, and every DDP
  rank computes the same order and takes its own share.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kr_contract.names import DATA_NAMES
from trainer.images import ImageSpec, preprocess_batch, worker_context
from trainer.tokenizer import Vocab

SPLITS = ("train", "validation", "test")
# Other names a split's parquet files go by in local folders.
SPLIT_ALIASES = {"validation": ("validation", "valid", "val"), "train": ("train",), "test": ("test",)}
# Batches per shuffling pool: large enough that sorted pools cut into batches of near-equal width, small
# enough that batch composition still changes from epoch to epoch.
POOL_BATCHES = 50
MAX_ERRORS_KEPT = 5


class DataError(Exception):
    """A data problem the user can fix; the message is one line that says what to do."""


@dataclass
class DataConfig:
    data_name: str = "full"
    use_huggingface: bool = True
    hf_repo: str = "linxy/LaTeX_OCR"
    data_dir: str | None = None
    cache_dir: str | None = None  # None -> $KR_CACHE_DIR or ~/.cache/kaggle-runner
    synthetic_train: int = 4000
    synthetic_val: int = 300
    synthetic_test: int = 300
    seed: int = 0


def default_cache_dir() -> Path:
    return Path(os.environ.get("KR_CACHE_DIR") or Path.home() / ".cache" / "kaggle-runner")


def resolve_cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


# ---------------------------------------------------------------------------------------------- loading


def load_texts_and_images(cfg: DataConfig, split: str) -> tuple[list[str], list[Any]]:
    """Texts and raw images (HF image dicts, bytes or paths; decoded later by ``load_image``) of a split.

    Source, in order: ``cfg.data_dir`` if set, the synthetic set for ``data_name == "synthetic"``, else
    Hugging Face (``cfg.use_huggingface``)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if cfg.data_dir:
        texts, images = _load_data_dir(Path(cfg.data_dir), split)
    elif cfg.data_name == "synthetic":
        texts, images = _load_synthetic(cfg, split)
    elif cfg.data_name not in DATA_NAMES:
        raise DataError(f"unknown data_name {cfg.data_name!r}: use one of {', '.join(DATA_NAMES)}")
    elif cfg.use_huggingface:
        texts, images = _load_huggingface(cfg.hf_repo, cfg.data_name, split)
    else:
        raise DataError(
            f"no data source for {cfg.data_name!r} without Hugging Face: pass --data_dir DIR with parquet "
            "files, --use_huggingface, or --data_name synthetic"
        )
    if not texts:
        raise DataError(f"the {split} split is empty: check the data source ({_describe_source(cfg)})")
    return texts, images


def _describe_source(cfg: DataConfig) -> str:
    if cfg.data_dir:
        return f"data_dir {cfg.data_dir}"
    if cfg.data_name == "synthetic":
        return "synthetic set: raise --synthetic_train/--synthetic_val/--synthetic_test"
    return f"Hugging Face {cfg.hf_repo} config {cfg.data_name}"


def _load_huggingface(repo: str, name: str, split: str) -> tuple[list[str], list[Any]]:
    """``datasets.load_dataset(repo, name, split=split)`` with images left undecoded (HF image dicts)."""
    import datasets  # heavy import, only on this path

    try:
        ds = datasets.load_dataset(repo, name, split=split)
    except (ValueError, KeyError) as exc:
        if split in str(exc) or "split" in str(exc).lower():
            raise DataError(
                f"{repo} config {name!r} has no {split!r} split: pick another --data_name or use --data_dir"
            ) from None
        raise DataError(f"cannot load {repo} config {name!r}: {_first_line(exc)}") from None
    except Exception as exc:  # network, hub and cache errors come in many types
        raise DataError(
            f"cannot load {repo} config {name!r} split {split!r} from Hugging Face ({_first_line(exc)}): "
            "check internet access (on Kaggle: enable internet) or use --data_dir DIR or --data_name synthetic"
        ) from None
    _check_columns(ds.column_names, f"{repo} config {name!r}")
    if isinstance(ds.features.get("image"), datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return [str(t) for t in ds["text"]], list(ds["image"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_columns(columns: Sequence[str], where: str) -> None:
    missing = [c for c in ("image", "text") if c not in columns]
    if missing:
        raise DataError(
            f"{where} has columns {list(columns)} but lacks {missing}: expected 'image' (image bytes or "
            "{bytes, path}) and 'text' (space-separated LaTeX tokens), the linxy/LaTeX_OCR schema"
        )


def split_files(data_dir: Path, split: str) -> list[Path]:
    """``DIR/{split}*.parquet`` (``val*``/``valid*`` also name the validation split), sorted."""
    if not data_dir.is_dir():
        raise DataError(
            f"data_dir {data_dir} does not exist or is not a folder: pass a folder with parquet files"
        )
    files: set[Path] = set()
    for prefix in SPLIT_ALIASES[split]:
        files.update(data_dir.glob(f"{prefix}*.parquet"))
    if split == "train":  # "train*" must not pick up a folder's other splits by accident
        files = {f for f in files if not f.name.startswith(("validation", "test"))}
    return sorted(files)


def _load_data_dir(data_dir: Path, split: str) -> tuple[list[str], list[Any]]:
    files = split_files(data_dir, split)
    if not files:
        raise DataError(
            f"no {split} files in {data_dir}: expected {data_dir}/{split}*.parquet with columns image and text"
        )
    texts: list[str] = []
    images: list[Any] = []
    for path in files:
        file_texts, file_images = read_parquet(path)
        texts.extend(file_texts)
        images.extend(file_images)
    return texts, images


def read_parquet(path: Path) -> tuple[list[str], list[Any]]:
    """Texts and raw images of one parquet file in the dataset's schema. A relative image ``path`` (with no
    bytes) is resolved against the file's folder."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(
            f"{path} is not a readable parquet file ({_first_line(exc)}): replace or remove it"
        ) from None
    _check_columns(parquet.schema_arrow.names, str(path))
    table = parquet.read(columns=["image", "text"])
    texts = ["" if t is None else str(t) for t in table.column("text").to_pylist()]
    images = [_absolute_image_path(image, path.parent) for image in table.column("image").to_pylist()]
    return texts, images


def _absolute_image_path(image: Any, base: Path) -> Any:
    if isinstance(image, dict) and not image.get("bytes") and image.get("path"):
        candidate = Path(image["path"])
        if not candidate.is_absolute() and (base / candidate).exists():
            return {"bytes": None, "path": str(base / candidate)}
    if isinstance(image, str) and not Path(image).is_absolute() and (base / image).exists():
        return str(base / image)
    return image


def _load_synthetic(cfg: DataConfig, split: str) -> tuple[list[str], list[Any]]:
    from trainer.synthetic import build_synthetic  # matplotlib is imported only for the synthetic set

    sizes = {"train": cfg.synthetic_train, "validation": cfg.synthetic_val, "test": cfg.synthetic_test}
    if any(n < 0 for n in sizes.values()):
        raise DataError(f"synthetic sizes must be >= 0, got {sizes}")
    folder = build_synthetic(resolve_cache_dir(cfg), sizes, cfg.seed)
    return read_parquet(folder / f"{split}.parquet")


# -------------------------------------------------------------------------------------------- preparing


@dataclass
class PreparedSplit:
    """A split decoded and preprocessed once, kept in memory for the whole session."""

    images: list[np.ndarray]  # uint8 (H, W), ink high, background 0 (see trainer.images)
    targets: list[list[int]]  # token ids, no BOS/EOS, at most max_target_len
    texts: list[str]  # the reference texts (for metrics), aligned with images
    widths: np.ndarray  # int64 (N,) image widths, for width bucketing
    report: dict[str, int]  # counts of what preparing changed; the training loop logs them
    errors: list[str] = field(default_factory=list)  # the first few undecodable images' messages

    def __len__(self) -> int:
        return len(self.images)


def prepare_split(
    texts: Sequence[str],
    images: Sequence[Any],
    vocab: Vocab,
    spec: ImageSpec,
    max_target_len: int,
    num_proc: int = 1,
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
    results = _preprocess_all(list(images), spec, num_proc)
    split = PreparedSplit(images=[], targets=[], texts=[], widths=np.zeros(0, dtype=np.int64), report={})
    report = dict.fromkeys(
        ("samples", "shrunk_to_fit", "undecodable", "blank_images", "unknown_tokens", "truncated_targets"), 0
    )
    for index, (text, result) in enumerate(zip(texts, results, strict=True)):
        if isinstance(result, str):
            report["undecodable"] += 1
            if len(split.errors) < MAX_ERRORS_KEPT:
                split.errors.append(f"sample {index}: {result}")
            continue
        canvas, shrunk = result
        ids = vocab.encode(text)
        report["shrunk_to_fit"] += int(shrunk)
        report["blank_images"] += int(not canvas.any())
        report["unknown_tokens"] += sum(1 for i in ids if i == Vocab.UNK)
        report["truncated_targets"] += int(len(ids) > max_target_len)
        split.images.append(canvas)
        split.targets.append(ids[:max_target_len])
        split.texts.append(text)
    report["samples"] = len(split.images)
    split.report = report
    split.widths = np.array([img.shape[1] for img in split.images], dtype=np.int64)
    return split


def _preprocess_all(images: list[Any], spec: ImageSpec, num_proc: int) -> list[tuple[np.ndarray, bool] | str]:
    if num_proc <= 1 or len(images) < 256:
        return preprocess_batch(images, spec)
    chunks = _chunks(images, num_proc * 8)
    context = worker_context()
    with ProcessPoolExecutor(max_workers=num_proc, mp_context=context) as pool:
        parts = pool.map(preprocess_batch, chunks, [spec] * len(chunks))
        return [result for part in parts for result in part]


def _chunks(items: list[Any], count: int) -> list[list[Any]]:
    size = max(1, -(-len(items) // count))
    return [items[i : i + size] for i in range(0, len(items), size)]


# -------------------------------------------------------------------------------------------- batching


class OcrDataset(torch.utils.data.Dataset):
    """Items of a PreparedSplit: (uint8 tensor (1, H, W), token ids)."""

    def __init__(self, split: PreparedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> tuple[Tensor, list[int]]:
        return torch.from_numpy(self.split.images[index]).unsqueeze(0), self.split.targets[index]


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


def collate(items: Sequence[tuple[Tensor, Sequence[int]]]) -> Batch:
    """Pad images to the batch's widest (background 0) and targets to the longest (PAD)."""
    height = max(int(image.shape[-2]) for image, _ in items)
    width = max(int(image.shape[-1]) for image, _ in items)
    length = max(len(ids) for _, ids in items) + 1
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.widths = np.asarray(widths, dtype=np.int64)
        if self.widths.size == 0:
            raise DataError("cannot batch an empty split")
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
            batches.extend(self._cut(pool[np.argsort(self.widths[pool], kind="stable")]))
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


def padding_share(sampler: WidthBucketSampler, widths: Sequence[int] | np.ndarray, epoch: int) -> float:
    """Share of the pixels of an epoch's batches that are batch padding (heights are fixed, so widths)."""
    widths = np.asarray(widths, dtype=np.int64)
    padded = total = 0
    for batch in sampler.epoch_batches(epoch):
        batch_widths = widths[batch]
        total += int(batch_widths.max()) * len(batch)
        padded += int(batch_widths.max()) * len(batch) - int(batch_widths.sum())
    return padded / total if total else 0.0
