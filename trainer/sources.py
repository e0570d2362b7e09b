"""Where a split's raw (text, undecoded image) pairs come from: Hugging Face, local parquet files, or the
offline synthetic set. All three end in the same lists; decoding happens later, once (trainer.data).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kr_contract.names import DATA_NAMES
from trainer import watch

SPLITS = ("train", "validation", "test")
# Other names a split's parquet files go by in local folders.
SPLIT_ALIASES = {"validation": ("validation", "valid", "val"), "train": ("train",), "test": ("test",)}


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
        # A download can take minutes: the watchdog hears of it while the cache folders grow, and only then.
        with watch.download_progress(hf_cache_folders(), repo=repo, config=name, split=split):
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


def hf_cache_folders() -> list[Path]:
    """Where ``datasets.load_dataset`` writes: the hub's download cache and the datasets' arrow cache."""
    import datasets.config
    import huggingface_hub.constants

    return [Path(huggingface_hub.constants.HF_HUB_CACHE), Path(datasets.config.HF_DATASETS_CACHE)]


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
