"""``kr plot``: the training curves of a run or a whole chain, in one PNG.

Three panels over global steps: losses, validation metrics (BLEU-4, exact match, edit distance), learning
rate. Session boundaries are vertical lines, the best checkpoint a star on the BLEU-4 curve. The figure is
built from the ``training.log`` / ``run.json`` files kr downloads, so it works on anything downloaded by
hand too. matplotlib is imported only when a figure is drawn (it belongs to the ``train`` extra).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_runner.errors import UsageError
from kaggle_runner.metrics_log import (
    SessionFiles,
    TrainingHistory,
    load_history,
    session_files,
)
from kr_contract.atomic import atomic_write_bytes
from kr_contract.names import RUN_JSON, TRAINING_LOG

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_SESSION_DIR = re.compile(r"session-(\d+)$")
FIGURE_SIZE_IN = (11.0, 10.0)
DPI = 110
VALIDATION_TOP = 1.05
GENERIC_FOLDER_NAMES = ("output", "out", "working")
# Lines drawn from data carry this gid prefix, so a caller (or a test) can tell series from decorations.
SERIES_GID = "series:"
MISSING_MATPLOTLIB_HINT = (
    "pip install matplotlib   (or everything for training: pip install 'kaggle-runner[train]')"
)


@dataclass(frozen=True)
class PlotSource:
    """What to plot: a display name and the session files, oldest first."""

    name: str
    sessions: list[SessionFiles]


@dataclass
class PlotSummary:
    """What the figure shows: points per series, the session starts and the best checkpoint."""

    out: Path | None
    series: dict[str, int] = field(default_factory=dict)
    session_starts: dict[int, int] = field(default_factory=dict)
    best_step: int | None = None
    best_bleu4: float | None = None
    sessions: int = 0
    first_step: int | None = None
    last_step: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out) if self.out else None,
            "series": self.series,
            "session_starts": {str(k): v for k, v in self.session_starts.items()},
            "best_step": self.best_step,
            "best_bleu4": self.best_bleu4,
            "sessions": self.sessions,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "warnings": self.warnings,
        }


# ------------------------------------------------------------------------------------------ sources


def sources_in_folder(folder: Path, name: str | None = None) -> PlotSource:
    """The sessions in a chain folder (``session-<k>/``), a run folder (``output/``) or a plain folder."""
    name = name or folder.name
    numbered = sorted(
        (int(match.group(1)), child)
        for child in folder.iterdir()
        if child.is_dir() and (match := _SESSION_DIR.match(child.name))
    )
    sessions = [session_files(child, k) for k, child in numbered]
    sessions = [s for s in sessions if s.log is not None or s.run_json is not None]
    if sessions:
        return PlotSource(name, sessions)
    if (folder / TRAINING_LOG).is_file() or (folder / RUN_JSON).is_file():
        return PlotSource(name, [session_files(folder, 1)])
    if (folder / "output").is_dir():
        return sources_in_folder(folder / "output", name)
    raise UsageError(
        f"no {TRAINING_LOG} in {folder} (nor in session-<k>/ or output/ below it)",
        hint="download the outputs first (kr chain / kr launch --wait do), or pass a training.log",
    )


def resolve_source(target: str | None) -> PlotSource:
    """A path (folder or training.log), a chain id, a run id (or unique prefix), or the newest of them."""
    if target is not None:
        path = Path(target).expanduser()
        if path.is_file():
            run_json = path.parent / RUN_JSON
            return PlotSource(_name_for_log(path), [SessionFiles(1, path, _if_file(run_json))])
        if path.is_dir():
            return sources_in_folder(path)
    from kaggle_runner.runs import state_folder

    return sources_in_folder(*state_folder(target))


def _name_for_log(log: Path) -> str:
    """A run's log sits in ``runs/<id>/output/``: name it after the run, not after ``output``."""
    folder = log.resolve().parent
    if folder.name in GENERIC_FOLDER_NAMES and folder.parent.name:
        folder = folder.parent
    return folder.name or log.stem


def _if_file(path: Path) -> Path | None:
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------ drawing


def plot_training(source: PlotSource, out: Path) -> PlotSummary:
    """Draw ``source`` into the PNG ``out`` (written atomically) and say what the figure shows."""
    history = load_history(source.sessions)
    if not history.train and not history.val:
        logs = ", ".join(str(s.log) for s in source.sessions if s.log) or "no training.log"
        raise UsageError(
            f"no metric lines (train/val) in {logs}",
            hint="is this a kr training.log? metric lines look like: ... INFO train epoch=1 step=120 loss=2.3",
        )
    figure, summary = build_figure(history, title=source.name)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(out, buffer.getvalue())
    summary.out = out
    return summary


def build_figure(history: TrainingHistory, *, title: str) -> tuple[Figure, PlotSummary]:
    """The figure (not yet saved) and its summary."""
    figure_class = _matplotlib_figure()
    figure = figure_class(figsize=FIGURE_SIZE_IN, layout="constrained")
    loss_ax, val_ax, lr_ax = figure.subplots(3, 1, sharex=True)
    summary = PlotSummary(out=None, sessions=len(history.sessions), warnings=list(history.warnings))

    _draw_losses(loss_ax, history, summary)
    _draw_validation(val_ax, history, summary)
    _draw_learning_rate(lr_ax, history, summary)
    _mark_sessions((loss_ax, val_ax, lr_ax), history, summary)
    _mark_best(val_ax, history, summary)

    steps = [p.step for p in history.train] + [v.step for v in history.val]
    summary.first_step, summary.last_step = min(steps), max(steps)
    lr_ax.set_xlabel("global step")
    for ax in (loss_ax, val_ax, lr_ax):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    figure.suptitle(_title(title, summary))
    return figure, summary


def _matplotlib_figure() -> type[Figure]:
    try:
        # Figure + its Agg canvas: no pyplot, no global state, no display needed.
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "kr plot needs matplotlib, which is not installed", hint=MISSING_MATPLOTLIB_HINT
        ) from None
    return Figure


def _series(
    ax: Axes, summary: PlotSummary, name: str, xs: Sequence[int], ys: Sequence[float | None], **style: Any
) -> None:
    """Plot one named series, skipping missing values; an all-missing series is left out."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    if not points:
        return
    px, py = zip(*points, strict=True)
    ax.plot(px, py, label=name, gid=SERIES_GID + name, **style)
    summary.series[name] = len(points)


def _draw_losses(ax: Axes, history: TrainingHistory, summary: PlotSummary) -> None:
    steps = [p.step for p in history.train]
    _series(
        ax, summary, "train loss", steps, [p.loss for p in history.train], linewidth=1.0, color="tab:blue"
    )
    val_steps = [v.step for v in history.val]
    _series(
        ax,
        summary,
        "val loss",
        val_steps,
        [v.loss for v in history.val],
        marker="o",
        markersize=3,
        linestyle="--",
        color="tab:orange",
    )
    ax.set_ylabel("loss")
    ax.set_title("Loss", loc="left", fontsize="medium")


def _draw_validation(ax: Axes, history: TrainingHistory, summary: PlotSummary) -> None:
    steps = [v.step for v in history.val]
    style = {"marker": "o", "markersize": 3}
    # BLEU-4 wide and exact match dashed on top: on short formulas the two often coincide.
    bleu = [v.bleu4 for v in history.val]
    _series(ax, summary, "BLEU-4", steps, bleu, color="tab:green", linewidth=2.5, **style)
    exact = [v.exact_match for v in history.val]
    _series(
        ax, summary, "exact match", steps, exact, color="tab:purple", linewidth=1.2, linestyle="--", **style
    )
    distance = [v.edit_distance for v in history.val]
    _series(ax, summary, "edit distance", steps, distance, color="tab:red", linewidth=1.2, **style)
    if any(d is not None and d > VALIDATION_TOP for d in distance):
        # An untrained model's garbage can be many times longer than the reference (distance >> 1); keep
        # the 0-1 scale readable and say so.
        ax.set_ylim(-0.03, VALIDATION_TOP)
        ax.text(
            0.99, 0.02, "edit distance above 1 clipped", transform=ax.transAxes, ha="right", fontsize="small"
        )
    ax.set_ylabel("validation (0-1)")
    ax.set_title("Validation: BLEU-4 and exact match up, edit distance down", loc="left", fontsize="medium")


def _draw_learning_rate(ax: Axes, history: TrainingHistory, summary: PlotSummary) -> None:
    rates = [p.lr for p in history.train]
    _series(
        ax, summary, "learning rate", [p.step for p in history.train], rates, color="tab:gray", linewidth=1.0
    )
    if any(r is not None and r > 0 for r in rates) and all(r is None or r > 0 for r in rates):
        ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate", loc="left", fontsize="medium")


def _mark_sessions(axes: Sequence[Axes], history: TrainingHistory, summary: PlotSummary) -> None:
    summary.session_starts = history.session_starts()
    for session, step in summary.session_starts.items():
        for ax in axes:
            ax.axvline(step, color="black", linestyle=":", linewidth=1.0, alpha=0.7, gid=f"session:{session}")
        # Label at the top of the first panel, in axes coordinates vertically so it never leaves the plot.
        axes[0].text(
            step,
            0.98,
            f" session {session}",
            transform=axes[0].get_xaxis_transform(),
            va="top",
            ha="left",
            fontsize="small",
        )


def _mark_best(ax: Axes, history: TrainingHistory, summary: PlotSummary) -> None:
    best = history.best_val()
    if best is None or best.bleu4 is None:
        return
    summary.best_step, summary.best_bleu4 = best.step, best.bleu4
    ax.plot(
        [best.step],
        [best.bleu4],
        marker="*",
        markersize=16,
        color="gold",
        markeredgecolor="black",
        linestyle="none",
        label=f"best checkpoint (step {best.step})",
        gid="best",
    )
    ax.annotate(
        f"BLEU-4 {best.bleu4:.3f}",
        (best.step, best.bleu4),
        textcoords="offset points",
        xytext=(8, -14),
        fontsize="small",
    )


def _title(name: str, summary: PlotSummary) -> str:
    sessions = f"{summary.sessions} session" + ("s" if summary.sessions != 1 else "")
    text = f"{name}: {sessions}, steps {summary.first_step}-{summary.last_step}"
    if summary.best_step is not None and summary.best_bleu4 is not None:
        text += f", best BLEU-4 {summary.best_bleu4:.3f} at step {summary.best_step}"
    return text
