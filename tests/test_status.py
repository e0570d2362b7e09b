"""``kr status``: recorded runs and chains, with the metrics their downloaded outputs report.

Nothing trains here: a run's outputs (run.json, training.log) and a chain's chain.json are written the way the
kernel and ``kr chain`` write them, so the listing is tested against the file contracts alone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from kaggle_runner import chain_state, runs
from kaggle_runner.cli import app
from kaggle_runner.cli import status as status_cli

LOG = """\
2026-11-26 23:00:00 INFO start epoch=0 step=0 batch_in_epoch=0
2026-11-26 23:10:00 INFO train epoch=1 step=120 loss=2.3456 lr=3.000e-04 samples_per_s=85.1
2026-11-26 23:12:00 INFO val epoch=1 step=300 bleu4=0.4512 exact_match=0.1200 edit_distance=0.3012 edit_score=0.7012 loss=1.234
2026-11-26 23:12:01 INFO checkpoint kind=best path=checkpoints/BEST_checkpoint_local_synthetic.pth.tar epoch=1 step=300
some free text the parser skips
2026-11-26 23:20:00 INFO val epoch=2 step=600 bleu4=0.3000 exact_match=0.0500 edit_distance=0.4000 edit_score=0.6000 loss=1.5
2026-11-26 23:21:00 INFO stop reason=max_epochs epoch=2 step=600 epochs_done=2 steps_done=600
"""


def kr(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def record_run(run_id: str, *, outputs: dict[str, str], state: str = "complete") -> runs.RunRecord:
    """A finished local run as ``kr launch`` records it, with ``outputs`` as its last download."""
    record = runs.RunRecord(
        run_id=run_id,
        backend="local",
        ref="local/kr-latex-ocr",
        version=1,
        state=state,
        epochs=2,
        created="2026-11-26T23:00:00+00:00",
        updated="2026-11-26T23:21:00+00:00",
        output_files=sorted(outputs),
    )
    record.output_dir.mkdir(parents=True)
    for name, text in outputs.items():
        (record.output_dir / name).write_text(text)
    runs.save_record(record)
    return record


def run_json(*, best: dict[str, Any] | None, seconds: float = 7200.0) -> str:
    result = {"stop_reason": "max_epochs", "epoch": 2, "step": 600, "best": best}
    return json.dumps(
        {"exit_code": 0, "stop_reason": "max_epochs", "seconds": seconds, "gpus": 1, "result": result}
    )


def record_chain(chain_id: str) -> None:
    """A chain at session 2 of 3, waiting for its dataset, with one retry behind it."""
    spec = chain_state.ChainSpec(
        chain_id=chain_id,
        backend="kaggle",
        kernel_ref="me/kr-latex-ocr",
        dataset_ref="me/kr-latex-ocr-checkpoints",
        sessions=3,
        session_budget_s=41400,
    )
    first = chain_state.SessionRecord(
        index=1,
        attempts=[
            chain_state.Attempt(1, "first", 41400, 43200),
            chain_state.Attempt(2, "kernel_error", 41400, 43200),
        ],
        dataset_version=1,
        epoch=4,
        step=4000,
        best={"bleu4": 0.61, "exact_match": 0.25, "edit_score": 0.8},
        gpu_seconds=3 * 3600,
    )
    second = chain_state.SessionRecord(
        index=2,
        attempts=[chain_state.Attempt(1, "first", 41400, 43200)],
        dataset_version=2,
        epoch=9,
        step=9000,
        best={"bleu4": 0.72, "exact_match": 0.375, "edit_score": 0.9},
        gpu_seconds=3600,
    )
    record = chain_state.ChainRecord(
        spec=spec,
        state=chain_state.ChainState.WAITING_DATASET,
        session=2,
        sessions=[first, second],
        created_at=1.0,
        updated_at=2.0,
    )
    chain_state.save_chain(record)


@pytest.fixture
def recorded() -> None:
    record_run("20261126-230000-aaaa", outputs={"run.json": run_json(best={"bleu4": 0.4512, "exact_match": 0.12}),
                                                "training.log": LOG})  # fmt: skip
    record_run("20261126-220000-bbbb", outputs={"training.log": LOG})  # killed before writing run.json
    record_run("20261126-210000-cccc", outputs={}, state="error")  # nothing downloaded
    record_chain("chain-20261126-200000-dddd")


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_listing_shows_runs_and_chains_with_their_metrics(recorded: None) -> None:
    result = kr("status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    (full,) = lines_with(out, "aaaa")
    assert " complete " in full and " 1/1 " in full and " 2 " in full
    assert "bleu4=0.4512 exact_match=0.12" in full and " 2.00 " in full  # 7200 s of session time
    (log_only,) = lines_with(out, "bbbb")
    # No run.json: epoch and the best checkpoint's metrics come from training.log, GPU hours are unknown.
    assert "bleu4=0.4512 exact_match=0.12" in log_only and " 2 " in log_only and " - " in log_only
    (bare,) = lines_with(out, "cccc")
    assert " error " in bare and "bleu4" not in bare
    (row,) = lines_with(out, "chain-20261126-200000-dddd")
    assert " 2/3 " in row and "waiting_dataset" in row and " 9 " in row
    assert "bleu4=0.72 exact_match=0.375" in row and " 4.00 " in row and "1 (kernel_error)" in row
    assert "\x1b[" not in out and "│" not in out  # not a terminal: plain text


def test_json_is_all_of_stdout_and_carries_the_metrics(recorded: None) -> None:
    result = kr("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_id = {r["run_id"]: r["metrics"] for r in data["runs"]}
    assert by_id["20261126-230000-aaaa"] == {
        "epoch": 2, "step": 600, "best": {"bleu4": 0.4512, "exact_match": 0.12},
        "stop_reason": "max_epochs", "gpu_hours": 2.0,
    }  # fmt: skip
    assert by_id["20261126-220000-bbbb"]["best"]["bleu4"] == pytest.approx(0.4512)
    assert by_id["20261126-220000-bbbb"]["step"] == 600 and by_id["20261126-220000-bbbb"]["gpu_hours"] is None
    assert by_id["20261126-210000-cccc"] == {
        "epoch": None, "step": None, "best": None, "stop_reason": None, "gpu_hours": None
    }  # fmt: skip
    (summary,) = data["chains"]
    assert summary["session"] == 2 and summary["sessions"] == 3 and summary["gpu_hours"] == 4.0
    assert summary["best"]["exact_match"] == 0.375


def test_one_run_shows_its_metrics(recorded: None) -> None:
    shown = kr("status", "20261126-23")
    assert shown.exit_code == 0, shown.output
    assert "stop reason  max_epochs" in shown.stdout and "epoch        2 (step 600)" in shown.stdout
    data = json.loads(kr("status", "20261126-23", "--json").stdout)
    assert data["result"]["result"]["best"]["bleu4"] == 0.4512 and data["metrics"]["gpu_hours"] == 2.0


def test_a_damaged_run_json_falls_back_to_the_log(recorded: None) -> None:
    record_run("20261126-235900-eeee", outputs={"run.json": "{not json", "training.log": LOG})
    data = json.loads(kr("status", "--json").stdout)
    metrics = {r["run_id"]: r["metrics"] for r in data["runs"]}["20261126-235900-eeee"]
    assert metrics["epoch"] == 2 and metrics["best"]["exact_match"] == pytest.approx(0.12)


def test_terminal_gets_one_rich_table_with_notes(recorded: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_cli, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "100")
    result = kr("status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "RUN / CHAIN" in out and "BLEU-4" in out and "─" in out
    (run_row,) = lines_with(out, "20261126-230000-aaaa")
    assert run_row.split()[1:] == ["complete", "1/1", "2", "0.451", "0.120", "2.00"]
    (chain_row, note) = lines_with(out, "chain-20261126-200000-dddd")
    assert chain_row.split()[1:] == ["waiting_dataset", "2/3", "9", "0.720", "0.375", "4.00"]
    assert note == "chain-20261126-200000-dddd: 1 retry (kernel_error)"


def test_empty_listing_says_how_to_start() -> None:
    result = kr("status")
    assert result.exit_code == 0 and result.stdout == ""
    assert "kr launch" in result.stderr
