"""``kr render --out DIR``: write the kernel folder ``kr launch`` would push, without pushing it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaggle_runner import runs
from kaggle_runner.cli._app import command, load_config, progress
from kaggle_runner.cli.launch import configured
from kaggle_runner.errors import UsageError


@command("render")
def render(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write script.py and kernel-metadata.json into.")
    ],
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", min=1, help="Epochs for the session (default: epochs_per_session)."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="kaggle or local (default: the config's).")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option("--accelerator", help="Override the config's accelerator.")
    ] = None,
) -> None:
    """Render the kernel folder for inspection: the exact bytes kr launch pushes."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder", hint="name a new or existing folder")
    config = configured(load_config(), backend=backend, accelerator=accelerator)
    folder = runs.render_launch(config, out, epochs=epochs)
    progress(f"rendered the kernel folder for {config.backend}")
    print(folder)
