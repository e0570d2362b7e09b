"""``kr plot`` on a recorded 3-session chain: the PNG, its series, session boundaries and best checkpoint."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from kaggle_runner.errors import UsageError
from kaggle_runner.metrics_log import load_history
from kaggle_runner.plot import SERIES_GID, build_figure, plot_training, resolve_source

STEPS_PER_SESSION = 1000
TRAIN_EVERY = 50
VAL_EVERY = 250
PEAK_LR = 3e-4
TOTAL_STEPS = 3 * STEPS_PER_SESSION
EXPECTED_SERIES = {"train loss", "val loss", "BLEU-4", "exact match", "edit distance", "learning rate"}


def _lr(step: int) -> float:
    """Linear warm-up over 200 steps, then cosine decay: the shape the trainer's schedule has."""
    if step < 200:
        return PEAK_LR * step / 200
    progress = (step - 200) / (TOTAL_STEPS - 200)
    return PEAK_LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _bleu(step: int) -> float:
    # Rises, then dips in the last session (overfitting), so the best checkpoint is not the last one.
    return round(0.75 * (1 - math.exp(-step / 900)) - (0.06 if step > 2500 else 0.0), 4)


def _session_lines(session: int, first_epoch: int) -> tuple[list[str], float]:
    """The lines session ``session`` appends to training.log, and the best BLEU-4 so far at its end."""
    start = (session - 1) * STEPS_PER_SESSION
    day = 25 + session
    lines = [
        f"2026-11-{day} 08:00:00 INFO trainer 0.1.0: model_size=base data_name=full device=cuda:0 world_size=2",
    ]
    if session > 1:
        lines.append(
            f"2026-11-{day} 08:00:03 INFO resumed from checkpoints/last.pth.tar: epoch={first_epoch} step={start}"
        )
    best = max((_bleu(s) for s in range(VAL_EVERY, start + 1, VAL_EVERY)), default=0.0)
    for step in range(start + TRAIN_EVERY, start + STEPS_PER_SESSION + 1, TRAIN_EVERY):
        epoch = first_epoch + (step - start - 1) // 500
        minute = (step - start) // 10
        stamp = f"2026-11-{day} {8 + minute // 60:02d}:{minute % 60:02d}:00"
        loss = 4.2 * math.exp(-step / 700) + 0.35 + 0.05 * math.sin(step / 37)
        lines.append(
            f"{stamp} INFO train epoch={epoch} step={step} loss={loss:.4f} lr={_lr(step):.3e} samples_per_s=84.{step % 10}"
        )
        if step % VAL_EVERY == 0:
            bleu = _bleu(step)
            lines.append(f"{stamp} INFO validating on 500 samples (beam=1)")
            lines.append(
                f"{stamp} INFO val epoch={epoch} step={step} bleu4={bleu:.4f} exact_match={bleu * 0.55:.4f} "
                f"edit_distance={0.9 - bleu:.4f} edit_score={0.1 + bleu:.4f} loss={loss + 0.2:.3f}"
            )
            if bleu > best:
                best = bleu
                lines.append(
                    f"{stamp} INFO checkpoint kind=best path=checkpoints/BEST_checkpoint_hf_full.pth.tar "
                    f"epoch={epoch} step={step}"
                )
            lines.append(
                f"{stamp} INFO checkpoint kind=last path=checkpoints/last.pth.tar epoch={epoch} step={step}"
            )
    end = start + STEPS_PER_SESSION
    lines.append(f"2026-11-{day} 19:40:00 WARNING time budget nearly spent: stopping after this step")
    lines.append(
        f"2026-11-{day} 19:40:05 INFO stop reason=time_budget epoch={first_epoch + 2} step={end} "
        f"epochs_done=2 steps_done={STEPS_PER_SESSION}"
    )
    return lines, best


def write_recorded_chain(folder: Path, sessions: int = 3) -> Path:
    """A chain folder as ``kr chain`` leaves it: session-<k>/ with training.log (cumulative) and run.json."""
    log: list[str] = []
    for session in range(1, sessions + 1):
        new_lines, best = _session_lines(session, first_epoch=1 + 2 * (session - 1))
        log += new_lines
        out = folder / f"session-{session}"
        out.mkdir(parents=True)
        (out / "training.log").write_text("\n".join(log) + "\n")
        result = {
            "stop_reason": "time_budget",
            "epoch": 1 + 2 * session,
            "step": session * STEPS_PER_SESSION,
            "best": {"bleu4": best},
        }
        run = {
            "kr_version": "0.1.0",
            "chain": folder.name,
            "session": session,
            "exit_code": 0,
            "stop_reason": "time_budget",
            "seconds": 42000.0,
            "gpus": 2,
            "result": result,
        }
        (out / "run.json").write_text(json.dumps(run))
    (folder / "chain.json").write_text("{}")  # only its presence matters to the lookup
    return folder


@pytest.fixture
def chain_folder(tmp_path: Path) -> Path:
    return write_recorded_chain(tmp_path / "chain-20261126-080000-ab12")


def test_plot_of_recorded_chain_writes_png_with_every_series(chain_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots" / "chain.png"
    summary = plot_training(resolve_source(str(chain_folder)), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # three panels of curves, not an empty canvas
    assert set(summary.series) == EXPECTED_SERIES
    assert summary.series["train loss"] == TOTAL_STEPS // TRAIN_EVERY  # deduplicated across the 3 logs
    assert summary.series["BLEU-4"] == TOTAL_STEPS // VAL_EVERY
    assert summary.session_starts == {2: 1000, 3: 2000}
    assert summary.best_step == 2500 and summary.best_bleu4 == _bleu(2500)
    assert (summary.first_step, summary.last_step) == (TRAIN_EVERY, TOTAL_STEPS)
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_figure_lines_are_the_series_plus_marks(chain_folder: Path) -> None:
    source = resolve_source(str(chain_folder))
    figure, _ = build_figure(load_history(source.sessions), title="chain")
    loss_ax, val_ax, lr_ax = figure.axes
    gids = [[line.get_gid() or "" for line in ax.get_lines()] for ax in figure.axes]
    series = [[g.removeprefix(SERIES_GID) for g in ax_gids if g.startswith(SERIES_GID)] for ax_gids in gids]
    assert series == [
        ["train loss", "val loss"],
        ["BLEU-4", "exact match", "edit distance"],
        ["learning rate"],
    ]
    for ax_gids in gids:  # each panel shows both session boundaries
        assert sorted(g for g in ax_gids if g.startswith("session:")) == ["session:2", "session:3"]
    best = [line for line in val_ax.get_lines() if line.get_gid() == "best"]
    assert len(best) == 1 and list(best[0].get_xdata()) == [2500]
    assert lr_ax.get_yscale() == "log"
    assert "3 sessions" in figure.get_suptitle() and "best BLEU-4" in figure.get_suptitle()
    bleu_line = next(line for line in val_ax.get_lines() if line.get_gid() == SERIES_GID + "BLEU-4")
    assert list(bleu_line.get_xdata()) == list(range(VAL_EVERY, TOTAL_STEPS + 1, VAL_EVERY))
    assert loss_ax.get_ylabel() == "loss"


def test_plot_resolves_chain_id_prefix_under_kr_home(chain_folder: Path, tmp_path: Path) -> None:
    runs = Path(os.environ["KR_HOME"]) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    chain_folder.rename(runs / chain_folder.name)
    source = resolve_source("chain-20261126")
    assert source.name == chain_folder.name and [s.session for s in source.sessions] == [1, 2, 3]
    assert resolve_source(None).name == chain_folder.name  # the newest when none is named


def test_plot_of_a_single_training_log(chain_folder: Path, tmp_path: Path) -> None:
    summary = plot_training(
        resolve_source(str(chain_folder / "session-3" / "training.log")), tmp_path / "one.png"
    )
    # One file holds everything, so there is no session boundary to mark.
    assert summary.sessions == 1 and summary.session_starts == {}
    assert summary.series["train loss"] == TOTAL_STEPS // TRAIN_EVERY


def test_plot_of_a_run_folder_reads_its_output(chain_folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "20261126-080000-cd34"
    (run / "output").mkdir(parents=True)
    (run / "output" / "training.log").write_bytes((chain_folder / "session-1" / "training.log").read_bytes())
    summary = plot_training(resolve_source(str(run)), tmp_path / "run.png")
    assert summary.series["BLEU-4"] == STEPS_PER_SESSION // VAL_EVERY
    # Named after the run, whether the folder or the log inside it is given.
    assert (
        resolve_source(str(run)).name == resolve_source(str(run / "output" / "training.log")).name == run.name
    )


def test_unknown_target_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="neither a file, a folder"):
        resolve_source("no-such-chain")


def test_log_without_metrics_is_a_usage_error_and_keeps_old_png(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    log.write_text("2026-11-26 08:00:00 INFO hello\nTraceback (most recent call last):\n")
    out = tmp_path / "old.png"
    out.write_bytes(b"previous picture")
    with pytest.raises(UsageError, match="no metric lines"):
        plot_training(resolve_source(str(log)), out)
    assert out.read_bytes() == b"previous picture"


def test_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no training.log"):
        resolve_source(str(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------ the command


def _kr(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from kaggle_runner.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_kr_plot_command_writes_png_and_prints_its_path(chain_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    code, stdout, stderr = _kr("plot", str(chain_folder), "--out", str(out))
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert "3 session(s), steps 50-3000, best BLEU-4 0.7034 at step 2500" in stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_kr_plot_json_into_a_folder(chain_folder: Path, tmp_path: Path) -> None:
    code, stdout, _ = _kr("plot", str(chain_folder), "--out", str(tmp_path), "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["out"] == str(tmp_path / f"{chain_folder.name}.png")
    assert summary["session_starts"] == {"2": 1000, "3": 2000} and len(summary["series"]) == 6


def test_kr_plot_bad_input_is_one_line_error(chain_folder: Path, tmp_path: Path) -> None:
    code, stdout, stderr = _kr("plot", str(chain_folder), "--out", str(tmp_path / "curves.jpg"))
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: --out") and "hint: use --out" in stderr and "Traceback" not in stderr
    code, _, stderr = _kr("plot", "nothing-like-this")
    assert code == 2 and stderr.startswith("error: 'nothing-like-this' is neither")


def test_huge_edit_distance_of_an_untrained_model_keeps_the_scale_readable() -> None:
    from kaggle_runner.metrics_log import parse_log_text

    text = (
        "2026-11-26 23:10:00 INFO train epoch=1 step=10 loss=5.0 lr=1.000e-03\n"
        "2026-11-26 23:10:00 INFO val epoch=1 step=10 bleu4=0.0 exact_match=0.0 edit_distance=41.3333\n"
        "2026-11-26 23:11:00 INFO val epoch=2 step=20 bleu4=0.4 exact_match=0.2 edit_distance=0.5\n"
    )
    figure, summary = build_figure(parse_log_text(text), title="early")
    assert figure.axes[1].get_ylim()[1] == pytest.approx(1.05)
    assert summary.series["edit distance"] == 2  # still plotted, only clipped


def test_missing_matplotlib_is_a_clear_message(
    chain_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(
        sys.modules, "matplotlib.figure", None
    )  # what an install without matplotlib looks like
    code, stdout, stderr = _kr("plot", str(chain_folder), "--out", str(tmp_path / "x.png"))
    assert code == 2 and stdout == ""
    assert "kr plot needs matplotlib" in stderr and "pip install matplotlib" in stderr
    assert not (tmp_path / "x.png").exists()
