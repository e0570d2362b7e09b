"""Parsing training.log metric lines and run.json, and merging the overlapping logs of a chain."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from kaggle_runner.metrics_log import (
    SessionFiles,
    load_history,
    parse_log_text,
    read_session_run,
    session_files,
)
from kr_contract.metric_lines import parse_metric_line

SESSION_1 = """\
2026-11-26 23:00:00 INFO starting trainer: model_size=tiny data_name=synthetic
2026-11-26 23:00:01 INFO loaded 2000 training samples, 200 validation samples
2026-11-26 23:10:00 INFO train epoch=1 step=100 loss=3.2100 lr=1.000e-04 samples_per_s=85.1
2026-11-26 23:11:00 INFO train epoch=1 step=200 loss=2.5100 lr=3.000e-04 samples_per_s=86.0
2026-11-26 23:12:00 INFO val epoch=1 step=200 bleu4=0.2512 exact_match=0.0400 edit_distance=0.5012 edit_score=0.4988 loss=2.134
2026-11-26 23:12:01 INFO checkpoint kind=best path=checkpoints/BEST_checkpoint_local_synthetic.pth.tar epoch=1 step=200
2026-11-26 23:12:01 INFO checkpoint kind=last path=checkpoints/last.pth.tar epoch=1 step=200
2026-11-26 23:12:05 INFO stop reason=time_budget epoch=2 step=200 epochs_done=1 steps_done=200
"""

SESSION_2_NEW = """\
2026-11-27 11:00:00 INFO resuming from checkpoints/last.pth.tar (epoch 2, step 200)
2026-11-27 11:10:00 INFO train epoch=2 step=300 loss=1.9000 lr=3.000e-04 samples_per_s=90.2
2026-11-27 11:12:00 INFO val epoch=2 step=400 bleu4=0.4100 exact_match=0.1000 edit_distance=0.3300 edit_score=0.6700 loss=1.500
2026-11-27 11:12:01 INFO checkpoint kind=best path=checkpoints/BEST_checkpoint_local_synthetic.pth.tar epoch=2 step=400
2026-11-27 11:12:05 INFO stop reason=max_epochs epoch=3 step=400 epochs_done=1 steps_done=200
"""


def test_metric_line_fields_are_typed() -> None:
    line = parse_metric_line(
        "2026-11-26 23:10:00 INFO train epoch=1 step=120 loss=2.3456 lr=3.000e-04 samples_per_s=85.1\n"
    )
    assert line is not None
    assert line.kind == "train"
    assert line.fields == {"epoch": 1, "step": 120, "loss": 2.3456, "lr": 3e-4, "samples_per_s": 85.1}
    assert line.timestamp is not None and line.timestamp.hour == 23


def test_free_text_is_not_a_metric() -> None:
    for text in (
        "2026-11-26 23:00:00 INFO train loop starting with 4 workers",
        "2026-11-26 23:00:00 INFO starting trainer: model_size=tiny",
        "Traceback (most recent call last):",
        "train epoch=1 step=5 loss=1.0",  # no level: not written by the trainer's logger
        "",
    ):
        assert parse_metric_line(text) is None, text


def test_metric_line_with_streaming_prefix_and_milliseconds() -> None:
    # Kaggle's streamed log prefixes the elapsed seconds; Python's logging may add milliseconds.
    line = parse_metric_line("  93.2s   12 2026-11-26 23:10:00,123 INFO val epoch=1 step=300 bleu4=0.45")
    assert line is not None and line.kind == "val" and line.fields["bleu4"] == 0.45


def test_parse_log_text_keeps_everything_in_step_order() -> None:
    history = parse_log_text(SESSION_1)
    assert [p.step for p in history.train] == [100, 200]
    assert history.train[1].loss == 2.51 and history.train[1].lr == 3e-4
    assert [(v.step, v.bleu4, v.exact_match, v.edit_distance) for v in history.val] == [
        (200, 0.2512, 0.04, 0.5012)
    ]
    assert [(c.kind, c.step) for c in history.checkpoints] == [("best", 200), ("last", 200)]
    assert [(s.reason, s.step, s.steps_done) for s in history.stops] == [("time_budget", 200, 200)]


def test_partial_last_line_is_ignored() -> None:
    # A kernel killed mid-write leaves "loss=1.9" where "loss=1.9000 lr=..." was meant.
    history = parse_log_text(SESSION_1 + "2026-11-27 11:10:00 INFO train epoch=2 step=300 loss=1.9")
    assert [p.step for p in history.train] == [100, 200]


def test_malformed_values_do_not_break_parsing() -> None:
    text = (
        "2026-11-26 23:10:00 INFO train epoch=1 step=oops loss=2.0\n"  # no usable step: skipped
        "2026-11-26 23:10:00 INFO train epoch=1 step=10 loss=nan lr=abc\n"
        "\x00\x00 garbage \xff\n"
    )
    history = parse_log_text(text)
    assert len(history.train) == 1
    point = history.train[0]
    assert point.step == 10 and point.loss is not None and math.isnan(point.loss) and point.lr is None


def _write_chain(tmp_path: Path) -> list[SessionFiles]:
    """Two sessions as the chain downloads them: session 2's log is session 1's plus new lines."""
    files = []
    for k, text in ((1, SESSION_1), (2, SESSION_1 + SESSION_2_NEW)):
        folder = tmp_path / f"session-{k}"
        folder.mkdir()
        (folder / "training.log").write_text(text)
        files.append(session_files(folder, k))
    return files


def test_overlapping_session_logs_are_deduplicated(tmp_path: Path) -> None:
    history = load_history(_write_chain(tmp_path))
    assert history.sessions == [1, 2]
    assert [(p.step, p.session) for p in history.train] == [(100, 1), (200, 1), (300, 2)]
    assert [(v.step, v.session) for v in history.val] == [(200, 1), (400, 2)]
    assert [(c.kind, c.step, c.session) for c in history.checkpoints] == [
        ("best", 200, 1),
        ("last", 200, 1),
        ("best", 400, 2),
    ]
    assert [(s.step, s.session) for s in history.stops] == [(200, 1), (400, 2)]
    assert history.session_starts() == {2: 200}


def test_best_checkpoint_and_its_validation(tmp_path: Path) -> None:
    history = load_history(_write_chain(tmp_path))
    best = history.best_checkpoint()
    assert best is not None and best.step == 400
    val = history.best_val()
    assert val is not None and val.bleu4 == 0.41


def test_best_val_without_checkpoint_lines_is_the_highest_bleu() -> None:
    text = "".join(
        f"2026-11-26 23:1{i}:00 INFO val epoch={i} step={i * 100} bleu4={b}\n"
        for i, b in enumerate((0.1, 0.5, 0.3), start=1)
    )
    val = parse_log_text(text).best_val()
    assert val is not None and val.step == 200


def test_session_start_falls_back_to_first_new_step_without_stop_line(tmp_path: Path) -> None:
    first = tmp_path / "one.log"
    first.write_text("\n".join(line for line in SESSION_1.splitlines() if " stop " not in line) + "\n")
    second = tmp_path / "two.log"
    second.write_text(first.read_text() + SESSION_2_NEW)
    history = load_history([SessionFiles(1, first), SessionFiles(2, second)])
    assert history.session_starts() == {2: 300}


def test_run_json_is_read(tmp_path: Path) -> None:
    run = {
        "kr_version": "0.1.0",
        "chain": "c1",
        "session": 2,
        "exit_code": 0,
        "stop_reason": "time_budget",
        "seconds": 41000.5,
        "gpus": 2,
        "result": {"epoch": 3, "step": 912, "best": {"bleu4": 0.45, "step": 300}},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    parsed = read_session_run(path, session=2)
    assert parsed is not None
    assert (parsed.exit_code, parsed.stop_reason, parsed.gpus, parsed.step) == (0, "time_budget", 2, 912)
    assert parsed.best["bleu4"] == 0.45


def test_corrupt_run_json_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "session-1"
    folder.mkdir()
    (folder / "training.log").write_text(SESSION_1)
    (folder / "run.json").write_text('{"exit_code": 0, "res')
    history = load_history([session_files(folder, 1)])
    assert history.runs == []
    assert len(history.warnings) == 1 and "run.json" in history.warnings[0]
    assert len(history.train) == 2


def test_run_json_step_marks_session_start_when_logs_have_no_stop(tmp_path: Path) -> None:
    without_stop = "\n".join(line for line in SESSION_1.splitlines() if " stop " not in line) + "\n"
    for k, text in ((1, without_stop), (2, without_stop + SESSION_2_NEW.replace(" stop ", " note "))):
        (tmp_path / f"session-{k}").mkdir()
        (tmp_path / f"session-{k}" / "training.log").write_text(text)
    (tmp_path / "session-1" / "run.json").write_text(json.dumps({"session": 1, "result": {"step": 250}}))
    history = load_history([session_files(tmp_path / f"session-{k}", k) for k in (1, 2)])
    assert history.session_starts() == {2: 250}


def test_module_imports_no_torch_and_no_matplotlib() -> None:
    code = (
        "import sys, kaggle_runner.metrics_log;"
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_logs_that_do_not_extend_the_previous_one_are_still_merged(tmp_path: Path) -> None:
    # Session 1's download was cut mid-line; session 2's log (complete) holds it all plus new lines.
    cut = SESSION_1[: SESSION_1.index("exact_match")]
    (tmp_path / "one.log").write_text(cut)
    (tmp_path / "two.log").write_text(SESSION_1 + SESSION_2_NEW)
    history = load_history([SessionFiles(1, tmp_path / "one.log"), SessionFiles(2, tmp_path / "two.log")])
    assert [(v.step, v.session) for v in history.val] == [(200, 2), (400, 2)]
    assert [(p.step, p.session) for p in history.train] == [(100, 1), (200, 1), (300, 2)]
    # And the other way round: an unrelated log is parsed whole, duplicates dropped.
    (tmp_path / "other.log").write_text(SESSION_2_NEW)
    history = load_history([SessionFiles(1, tmp_path / "two.log"), SessionFiles(2, tmp_path / "other.log")])
    assert [(v.step, v.session) for v in history.val] == [(200, 1), (400, 1)]
