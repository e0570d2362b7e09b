"""Backends: where kernels run and checkpoint datasets live. ``get_backend`` picks one by name.

Neither backend module is imported until asked for: the Kaggle one pulls in the official client, which
reads credentials and prints help when it finds none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kaggle_runner.backends.base import Backend
from kaggle_runner.errors import UsageError

if TYPE_CHECKING:
    from kaggle_runner.config import KrConfig

BACKEND_NAMES = ("kaggle", "local")


def get_backend(name: str, config: KrConfig | None = None, *, notice: Callable[[str], None] | None = None) -> Backend:
    """The backend called ``name``; ``config`` supplies the Kaggle user name when it sets one. ``notice``
    receives what the backend has to say on the way (a retried call); without one it stays unsaid."""
    if name == "local":
        from kaggle_runner.backends.local import LocalBackend

        return LocalBackend()
    if name == "kaggle":
        from kaggle_runner.backends.kaggle import KaggleBackend

        return KaggleBackend(username=config.username if config is not None else None, notice=notice)
    raise UsageError(f"unknown backend {name!r}", hint=f"choose one of: {', '.join(BACKEND_NAMES)}")


__all__ = ["BACKEND_NAMES", "Backend", "get_backend"]
