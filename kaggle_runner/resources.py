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


def package_source_dir(name: str) -> Path:
    """The source folder of a top-level package shipped beside kaggle_runner (``trainer``, ``kr_contract``,
    ``kr_kernel``), found without importing it (the trainer imports torch)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {name} package is not installed next to kaggle_runner")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def trainer_source_dir() -> Path:
    return package_source_dir("trainer")
