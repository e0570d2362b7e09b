"""kaggle_runner.sandbox: layout, a supervised run to each end state, and a supervisor that dies."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from kaggle_runner import sandbox


def _wait_terminal(root: Path, timeout_s: float = 20.0) -> sandbox.SandboxStatus:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = sandbox.read_status(root)
        if status.is_terminal:
            return status
        time.sleep(0.05)
    raise AssertionError(f"sandbox {root} did not finish: {sandbox.read_status(root)}")


def _wait_for_file(path: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _wait_until_dead(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sandbox.pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.05)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "ds-v1"
    (folder / "sub").mkdir(parents=True)
    (folder / "kr-marker.json").write_text('{"session": 1}')
    (folder / "sub" / "deep.txt").write_text("deep")
    return folder


def test_prepare_lays_out_both_mount_layouts_and_queues(tmp_path: Path, dataset: Path) -> None:
    root = tmp_path / "box"
    script = sandbox.prepare(root, "print('hi')\n", {"alice/ckpt-data": dataset}, code_file="run.py")

    assert script == root / "source" / "run.py"
    for mount in (root / "input" / "ckpt-data", root / "input" / "datasets" / "alice" / "ckpt-data"):
        assert mount.is_dir() and not mount.is_symlink()
        assert json.loads((mount / "kr-marker.json").read_text()) == {"session": 1}
        assert (mount / "sub" / "deep.txt").read_text() == "deep"
    found = sorted(p.name for p in (root / "input").rglob("kr-marker.json"))
    assert found == ["kr-marker.json", "kr-marker.json"]
    assert (root / "working").is_dir() and not any((root / "working").iterdir())
    assert sandbox.read_status(root).state == sandbox.QUEUED


def test_prepare_refuses_bad_input(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(sandbox.SandboxError, match="owner/slug"):
        sandbox.prepare(tmp_path / "a", "pass", {"no-owner": dataset})
    with pytest.raises(sandbox.SandboxError, match="does not exist"):
        sandbox.prepare(tmp_path / "b", "pass", {"alice/x": tmp_path / "missing"})
    sandbox.prepare(tmp_path / "c", "pass", {})
    with pytest.raises(sandbox.SandboxError, match="already a sandbox"):
        sandbox.prepare(tmp_path / "c", "pass", {})


def test_run_completes_with_outputs_log_and_kaggle_env(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    script = tmp_path / "train.py"
    script.write_text(
        "import json, os, pathlib, sys\n"
        "root = pathlib.Path(os.environ['KR_KAGGLE_INPUT'])\n"
        "marker = json.loads((root / 'datasets/alice/ckpt-data/kr-marker.json').read_text())\n"
        "pathlib.Path('sub').mkdir()\n"
        "pathlib.Path('sub/out.json').write_text(json.dumps({\n"
        "    'marker': marker, 'cwd': os.getcwd(),\n"
        "    'env': {k: os.environ.get(k) for k in\n"
        "            ('KAGGLE_KEY', 'KAGGLE_USERNAME', 'KAGGLE_CONFIG_DIR', 'KAGGLE_KERNEL_RUN_TYPE',\n"
        "             'PYTHONUNBUFFERED', 'EXTRA')}}))\n"
        "print('to stdout'); print('to stderr', file=sys.stderr)\n"
    )
    root = tmp_path / "box"
    sandbox.prepare(root, script, {"alice/ckpt-data": dataset})
    pid = sandbox.start(root, timeout_s=30, env={**os.environ, "EXTRA": "yes"})
    assert pid > 0

    status = _wait_terminal(root)

    assert status.state == sandbox.COMPLETE, status
    assert status.exit_code == 0 and status.failure_message is None
    assert status.started is not None and status.ended is not None and status.ended >= status.started
    out = json.loads((root / "working" / "sub" / "out.json").read_text())
    assert out["marker"] == {"session": 1}
    assert Path(out["cwd"]) == (root / "working").resolve()
    assert out["env"] == {
        "KAGGLE_KEY": None,
        "KAGGLE_USERNAME": None,
        "KAGGLE_CONFIG_DIR": None,
        "KAGGLE_KERNEL_RUN_TYPE": "Batch",
        "PYTHONUNBUFFERED": "1",
        "EXTRA": "yes",
    }
    log = (root / "log.txt").read_text()
    assert "to stdout" in log and "to stderr" in log
    with pytest.raises(sandbox.SandboxError, match="already started"):
        sandbox.start(root, timeout_s=30)


def test_failing_script_is_error_with_exit_code(tmp_path: Path) -> None:
    root = tmp_path / "box"
    sandbox.prepare(root, "import sys\nprint('boom')\nsys.exit(3)\n", {})
    sandbox.start(root, timeout_s=30)

    status = _wait_terminal(root)

    assert status.state == sandbox.ERROR
    assert status.exit_code == 3
    assert "code 3" in (status.failure_message or "")


def test_time_limit_sends_sigterm_then_sigkill(tmp_path: Path) -> None:
    # The script ignores SIGTERM (after noting it), so only the SIGKILL after the grace period ends it.
    root = tmp_path / "box"
    sandbox.prepare(
        root,
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: pathlib.Path('got-sigterm').touch())\n"
        "pathlib.Path('started').touch()\n"
        "while True: time.sleep(0.05)\n",
        {},
    )
    sandbox.start(root, timeout_s=1.0, grace_s=0.5)

    status = _wait_terminal(root)

    assert status.state == sandbox.ERROR
    assert status.exit_code == -signal.SIGKILL
    assert "time limit of 1 seconds" in (status.failure_message or "")
    assert (root / "working" / "got-sigterm").exists()
    assert status.ended is not None and status.started is not None
    assert 1.0 <= status.ended - status.started < 10


def test_kill_stops_a_running_script(tmp_path: Path) -> None:
    root = tmp_path / "box"
    sandbox.prepare(root, "import pathlib, time\npathlib.Path('up').touch()\ntime.sleep(60)\n", {})
    sandbox.start(root, timeout_s=60, grace_s=1)
    _wait_for_file(root / "working" / "up")

    status = sandbox.kill(root)

    assert status.state == sandbox.ERROR
    assert "SIGTERM" in (status.failure_message or "")
    assert status.script_pid is not None
    assert not sandbox.pid_alive(status.script_pid)


def test_kill_before_start_marks_error(tmp_path: Path) -> None:
    root = tmp_path / "box"
    sandbox.prepare(root, "pass", {})
    assert sandbox.kill(root).state == sandbox.ERROR
    assert sandbox.read_status(root).failure_message == "cancelled before start"


def test_dead_supervisor_is_noticed_and_its_script_stopped(tmp_path: Path) -> None:
    root = tmp_path / "box"
    sandbox.prepare(root, "import pathlib, time\npathlib.Path('up').touch()\ntime.sleep(60)\n", {})
    pid = sandbox.start(root, timeout_s=60)
    _wait_for_file(root / "working" / "up")
    running = sandbox.read_status(root)
    assert running.state == sandbox.RUNNING and running.pid == pid

    os.kill(pid, signal.SIGKILL)
    status = _wait_terminal(root)

    assert status.state == sandbox.ERROR
    assert "supervisor died" in (status.failure_message or "")
    assert running.script_pid is not None
    _wait_until_dead(running.script_pid)


def test_supervisor_command_line_refuses_a_folder_that_is_not_a_sandbox(tmp_path: Path) -> None:
    assert sandbox.main([str(tmp_path)]) == 2
