"""Run records: one state directory, atomic records, lookup by id or prefix, nothing half-done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_runner import runs
from kaggle_runner.backends.base import KernelState, KernelStatus
from kaggle_runner.backends.local import LocalBackend
from kaggle_runner.errors import ApiError, UsageError
from kaggle_runner.home import kr_home


def make_record(
    run_id: str, *, created: str = "2026-01-01T00:00:00+00:00", state: str = "queued"
) -> runs.RunRecord:
    return runs.RunRecord(
        run_id=run_id,
        backend="local",
        ref="local/demo-kernel",
        version=1,
        state=state,
        epochs=1,
        created=created,
        updated=created,
    )


def kernel_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "kernel"
    folder.mkdir(exist_ok=True)
    (folder / "script.py").write_text("print('hi')\n")
    (folder / "kernel-metadata.json").write_text(
        json.dumps({"id": "local/demo-kernel", "code_file": "script.py"})
    )
    return folder


def test_state_dir_follows_kr_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KR_HOME", str(tmp_path / "elsewhere"))
    assert runs.runs_dir() == tmp_path / "elsewhere" / "runs"
    monkeypatch.delenv("KR_HOME")
    assert kr_home().name == "kaggle-runner"  # the platform's user data dir


def test_run_ids_sort_by_time_and_are_recognised() -> None:
    run_id = runs.new_run_id()
    assert runs.is_run_id(run_id)
    assert not runs.is_run_id("../etc")


def test_create_run_writes_the_record_and_the_pushed_folder(tmp_path: Path) -> None:
    record = runs.create_run(make_record("20260101-000000-aaaa"), kernel_folder(tmp_path))
    assert runs.find_record("20260101-000000-aaaa") == record
    assert (record.folder / runs.KERNEL_FOLDER / "script.py").read_text() == "print('hi')\n"
    assert json.loads((record.folder / runs.RECORD_FILE).read_text())["ref"] == "local/demo-kernel"


def test_a_failed_create_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        runs.create_run(make_record("20260101-000000-aaaa"), tmp_path / "missing")
    assert list(runs.runs_dir().iterdir()) == []


def test_lookup_by_id_prefix_and_newest(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no runs yet"):
        runs.find_record()
    folder = kernel_folder(tmp_path)
    runs.create_run(make_record("20260101-000000-aaaa", created="2026-01-01T00:00:00+00:00"), folder)
    runs.create_run(make_record("20260102-000000-bbbb", created="2026-01-02T00:00:00+00:00"), folder)
    runs.create_run(make_record("20260102-000000-bbbc", created="2026-01-02T00:00:01+00:00"), folder)
    assert runs.find_record().run_id == "20260102-000000-bbbc"
    assert runs.find_record("20260101").run_id == "20260101-000000-aaaa"
    with pytest.raises(UsageError, match="matches 2 runs"):
        runs.find_record("20260102")
    with pytest.raises(UsageError, match="no run matches"):
        runs.find_record("1999")


def test_listing_skips_chains_and_damaged_records(tmp_path: Path) -> None:
    runs.create_run(make_record("20260101-000000-aaaa"), kernel_folder(tmp_path))
    (runs.runs_dir() / "chain-1").mkdir()
    (runs.runs_dir() / "chain-1" / "chain.json").write_text("{}")
    (runs.runs_dir() / "broken").mkdir()
    (runs.runs_dir() / "broken" / runs.RECORD_FILE).write_text("{half a reco")
    assert [r.run_id for r in runs.list_records()] == ["20260101-000000-aaaa"]


class ScriptedStatus(LocalBackend):
    """The local backend with its status answers scripted: the state machine of a run is what is tested."""

    def __init__(self, states: list[KernelStatus]) -> None:
        super().__init__()
        self.states = states

    def status(self, ref: str, version: int) -> KernelStatus:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def test_wait_follows_the_run_to_a_terminal_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runs.POLL_ENV_VAR, "0.01")
    record = runs.create_run(make_record("20260101-000000-aaaa"), kernel_folder(tmp_path))
    backend = ScriptedStatus([KernelStatus(KernelState.RUNNING), KernelStatus(KernelState.ERROR, "boom")])
    seen: list[str] = []
    final = runs.wait(record, backend, on_change=lambda r: seen.append(r.state))
    assert seen == ["running", "error"]
    assert final.failure_message == "boom"
    assert runs.find_record(record.run_id).state == "error"  # persisted
    assert "boom" in runs.describe_failure(final).message


def test_wait_gives_up_at_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runs.POLL_ENV_VAR, "0.05")
    record = runs.create_run(make_record("20260101-000000-aaaa"), kernel_folder(tmp_path))
    with pytest.raises(ApiError, match="still running"):
        runs.wait(record, ScriptedStatus([KernelStatus(KernelState.RUNNING)]), timeout_s=0.2)


def test_poll_interval_override_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runs.poll_interval_s("kaggle") == runs.POLL_INTERVAL_S["kaggle"]
    monkeypatch.setenv(runs.POLL_ENV_VAR, "soon")
    with pytest.raises(UsageError, match=runs.POLL_ENV_VAR):
        runs.poll_interval_s("local")


def test_timeout_bounds() -> None:
    runs.check_timeout(None)
    runs.check_timeout(3600)
    for bad in (0, -5, 13 * 3600):
        with pytest.raises(UsageError, match="--timeout"):
            runs.check_timeout(bad)
