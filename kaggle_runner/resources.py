"""Where kr finds its data files, in a plain install (inside the package) and in a checkout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_ROOT = _PACKAGE_DIR.parent


def _data_dir(name: str) -> Path:
    installed = _PACKAGE_DIR / "_data" / name
    if installed.is_dir():
        return installed
    in_checkout = _CHECKOUT_ROOT / name
    if in_checkout.is_dir():
        return in_checkout
    raise FileNotFoundError(f"kr's data folder {name!r} is missing from this installation")


def templates_dir() -> Path:
    """The Jinja templates of the kernel script (top-level ``templates/``)."""
    return _data_dir("templates")


def kernel_metadata_dir() -> Path:
    """The Jinja templates of kernel-metadata.json and dataset-metadata.json (``kernel-metadata/``)."""
    return _data_dir("kernel-metadata")


def trainer_source_dir() -> Path:
    """The source folder of the ``trainer`` package, found without importing it (it imports torch)."""
    spec = importlib.util.find_spec("trainer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the trainer package is not installed next to kaggle_runner")
    return Path(next(iter(spec.submodule_search_locations))).resolve()
