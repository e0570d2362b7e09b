"""``kr plot [RUN|CHAIN|PATH] [--out FILE.png]``: the training curves of a run or a whole chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaggle_runner.cli._app import command, print_json, progress
from kaggle_runner.errors import UsageError
from kaggle_runner.plot import PlotSummary, plot_training, resolve_source

TargetArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="[RUN|CHAIN|PATH]",
        help="A run or chain id (or unique prefix), a folder of downloaded outputs, or a training.log "
        "(default: the newest run or chain).",
    ),
]


@command("plot")
def plot(
    target: TargetArgument = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The PNG to write, or a folder for it (default: ./<name>.png)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what the figure shows as JSON.")] = False,
) -> None:
    """Draw loss, validation BLEU-4 / exact match / edit distance and learning rate over all sessions."""
    source = resolve_source(target)
    summary = plot_training(source, output_path(out, source.name))
    for warning in summary.warnings:
        progress(f"warning: {warning}")
    if as_json:
        print_json(summary.to_json())
    else:
        print(summary.out)
        progress(describe(summary))


def output_path(out: Path | None, name: str) -> Path:
    """Where the PNG goes: the given file, ``<name>.png`` in the given folder, or in the current one."""
    if out is None:
        return Path(f"{name}.png")
    if out.is_dir():
        return out / f"{name}.png"
    if out.suffix.lower() != ".png":
        raise UsageError(
            f"--out {out}: kr plot writes PNG files", hint=f"use --out {out.with_suffix('.png')}"
        )
    return out


def describe(summary: PlotSummary) -> str:
    text = f"{summary.sessions} session(s), steps {summary.first_step}-{summary.last_step}"
    if summary.best_step is not None:
        text += f", best BLEU-4 {summary.best_bleu4:.4f} at step {summary.best_step}"
    return text
