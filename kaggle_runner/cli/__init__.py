"""The ``kr`` command line. ``main`` is the console entry point (``kr = kaggle_runner.cli:main``).

Each command group lives in its own module and registers itself on ``_app.app`` when imported; the imports
below are the whole list. Nothing here imports torch: the trainer runs only inside a kernel.
"""

from __future__ import annotations

from kaggle_runner.cli import (  # noqa: F401  (imported for their commands)
    chain,
    check,
    download,
    init,
    launch,
    logs,
    plot,
    predict,
    quota,
    render,
    status,
)
from kaggle_runner.cli._app import app


def main() -> None:
    app(prog_name="kr")


__all__ = ["app", "main"]
