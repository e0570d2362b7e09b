"""``kr`` through typer's CliRunner: the real ``kaggle`` client against the emulator, and the local backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from kaggle_runner import runs
from kaggle_runner.emulator import GPU_SESSION_LIMIT_ERROR
from tests.cli_support import Result, kr

# Small enough to train on a busy 2-core machine in seconds; same data and model as everywhere else.
TINY = [
    "--model-size", "tiny", "--data-name", "synthetic", "--use-huggingface", "false",
    "--synthetic-train", "8", "--synthetic-val", "2", "--synthetic-test", "2", "--batch-size", "4",
    "--internet", "false", "--extra-args", "--max_target_len 24 --val_max_samples 2",
]  # fmt: skip


def runs_left() -> list[str]:
    return sorted(p.name for p in runs.runs_dir().iterdir()) if runs.runs_dir().exists() else []


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A kr.toml written by ``kr init --yes``; returns its path."""
    result = kr("init", "--yes", "--dir", str(tmp_path / "project"), *TINY)
    assert result.exit_code == 0, result
    path = Path(result.stdout.strip())
    assert path == tmp_path / "project" / "kr.toml" and path.is_file()
    return path


def set_key(config: Path, key: str, value: str) -> None:
    lines = [
        f"{key} = {value}" if line.startswith(f"{key} =") else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")


def assert_usage_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result
    assert result.stderr.startswith("error: "), result
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result


# ------------------------------------------------------------------------------------------- fast tests


def test_help_lists_the_commands() -> None:
    result = kr("--help")
    assert result.exit_code == 0
    for name in ("init", "render", "launch", "status", "logs", "download", "quota"):
        assert name in result.stdout


def test_init_refuses_to_overwrite_and_validates(project: Path) -> None:
    assert_usage_error(kr("init", "--yes", "--dir", str(project.parent)), "already exists", "hint: ")
    assert_usage_error(
        kr("init", "--yes", "--force", "--dir", str(project.parent), "--batch-size", "lots"), "batch_size"
    )
    assert "batch_size = 4" in project.read_text()  # the good file survived


def test_parser_errors_exit_2() -> None:
    assert kr("launch").exit_code == 2  # --epochs is required
    assert kr("launch", "--epochs", "0").exit_code == 2
    assert kr("no-such-command").exit_code == 2


def test_malformed_kr_toml(project: Path) -> None:
    project.write_text("kernel_slug = [unclosed\n")
    assert_usage_error(kr("--config", str(project), "launch", "--epochs", "1"), str(project))
    assert runs_left() == []


def test_unknown_accelerator(project: Path) -> None:
    result = kr("--config", str(project), "launch", "--epochs", "1", "--accelerator", "NvidiaTeslaK80")
    assert_usage_error(result, "accelerator", "NvidiaTeslaK80", "NvidiaTeslaT4")
    assert runs_left() == []


def test_slug_kaggle_would_refuse(project: Path) -> None:
    set_key(project, "kernel_slug", '"My_Kernel!"')
    assert_usage_error(kr("--config", str(project), "launch", "--epochs", "1"), "kernel_slug", "My_Kernel!")
    assert runs_left() == []


def test_missing_credentials(project: Path) -> None:
    result = kr("--config", str(project), "launch", "--epochs", "1", "--backend", "kaggle")
    assert_usage_error(result, "no Kaggle credentials", "hint: ", "--backend local")
    assert runs_left() == []


def test_debug_shows_the_traceback(project: Path) -> None:
    project.write_text("kernel_slug = [unclosed\n")
    result = kr("--config", str(project), "launch", "--epochs", "1", env={"KR_DEBUG": "1"})
    assert result.exit_code == 2 and "Traceback" in result.stderr


def test_empty_state(project: Path) -> None:
    listing = kr("status", "--json")
    assert listing.exit_code == 0 and json.loads(listing.stdout) == {"runs": [], "chains": []}
    assert_usage_error(kr("status", "20260101"), "no runs yet", "kr launch")
    assert_usage_error(kr("download"), "no runs yet")


def test_quota_json_for_local(project: Path) -> None:
    result = kr("--config", str(project), "quota", "--json")
    assert result.exit_code == 0, result
    data = json.loads(result.stdout)
    assert data["backend"] == "local" and data["allowed_s"] is None


def test_render_is_deterministic(project: Path, tmp_path: Path) -> None:
    first = kr("--config", str(project), "render", "--out", str(tmp_path / "a"), "--epochs", "2")
    second = kr("--config", str(project), "render", "--out", str(tmp_path / "b"), "--epochs", "2")
    assert first.exit_code == second.exit_code == 0, first
    for name in ("script.py", "kernel-metadata.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.loads((tmp_path / "a" / "kernel-metadata.json").read_text())["id"] == "local/kr-latex-ocr"


def test_push_refused_for_the_gpu_session_limit(project: Path, kaggle_emulator: Any) -> None:
    kaggle_emulator.faults.add("SaveKernel", in_band=GPU_SESSION_LIMIT_ERROR.format(limit=2))
    result = kr("--config", str(project), "launch", "--epochs", "1", "--backend", "kaggle")
    assert result.exit_code == 1, result
    assert "\nerror: Kaggle refused the push" in result.stderr and "GPU session count" in result.stderr
    assert "hint: wait for one of your running GPU sessions" in result.stderr
    assert runs_left() == []


def test_same_checkout_and_config_push_the_same_bytes(project: Path, kaggle_emulator: Any) -> None:
    for _ in range(2):
        # --timeout 1: the emulator stops each session at once; only what it received matters here.
        result = kr(
            "--config", str(project), "launch", "--epochs", "1", "--backend", "kaggle", "--timeout", "1"
        )
        assert result.exit_code == 0, result
    kernel = kaggle_emulator.kernels.kernel(kaggle_emulator.username, "kr-latex-ocr")
    first, second = (version.source for version in kernel.versions)
    assert first == second and "import" in first
    assert "fakekey" not in first  # no credential is ever rendered
    listing = json.loads(kr("status", "--json").stdout)
    assert sorted(r["version"] for r in listing["runs"]) == [1, 2]


def test_no_credentials_needed_for_local_status_and_logs(project: Path, tmp_path: Path) -> None:
    """A run whose script is not the trainer: the commands around it, without training."""
    from kaggle_runner.backends.local import LocalBackend

    monkey_config = kr("--config", str(project), "render", "--out", str(tmp_path / "kernel"))
    assert monkey_config.exit_code == 0
    (tmp_path / "kernel" / "script.py").write_text("print('hello from the sandbox')\n")
    record = runs.RunRecord(
        run_id=runs.new_run_id(),
        backend="local",
        ref="local/kr-latex-ocr",
        version=0,
        state="queued",
        epochs=1,
        created="2026-01-01T00:00:00+00:00",
        updated="2026-01-01T00:00:00+00:00",
    )
    from kaggle_runner.backends.base import PushRequest

    pushed = LocalBackend().push(PushRequest(folder=tmp_path / "kernel"))
    record.version = pushed.version
    runs.create_run(record, tmp_path / "kernel")
    followed = kr("logs", record.run_id[:10], "-f")
    assert followed.exit_code == 0 and "hello from the sandbox" in followed.stdout, followed
    shown = kr("status", record.run_id, "--json")
    assert json.loads(shown.stdout)["state"] == "complete"


# ------------------------------------------------------------------------------------- trained for real


def resume_from(tarball: Path, work: Path) -> dict[str, Any]:
    """Run the trainer on the downloaded tarball: it must pick up where the session stopped."""
    work.mkdir()
    with tarfile.open(tarball) as archive:
        archive.extractall(work, filter="data")
    args = [
        sys.executable,
        "-m",
        "trainer",
        "--data_name",
        "synthetic",
        "--no_huggingface",
        "--model_size",
        "tiny",
        "--batch_size",
        "4",
        "--synthetic_train",
        "8",
        "--synthetic_val",
        "2",
        "--synthetic_test",
        "2",
        "--max_target_len",
        "24",
        "--val_max_samples",
        "2",
        "--out_dir",
        str(work),
        "--checkpoint",
        "latest",
        "--max_steps",
        "1",
    ]
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "trainer_result.json").read_text())


@pytest.mark.slow
def test_kaggle_launch_status_download_resume(
    project: Path, kaggle_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runs.POLL_ENV_VAR, "0.2")
    launched = kr("--config", str(project), "launch", "--epochs", "1", "--backend", "kaggle")
    assert launched.exit_code == 0, launched
    run_id = launched.stdout.strip()
    assert runs.is_run_id(run_id)

    deadline = time.monotonic() + 240
    state = "queued"
    while state not in ("complete", "error"):
        assert time.monotonic() < deadline, f"still {state}"
        shown = kr("status", run_id, "--json")
        assert shown.exit_code == 0, shown
        state = json.loads(shown.stdout)["state"]
        time.sleep(0.5)
    assert state == "complete", kr("logs", run_id).stdout[-3000:]

    downloaded = kr("download", run_id)
    assert downloaded.exit_code == 0, downloaded
    files = {Path(line).name: Path(line) for line in downloaded.stdout.split()}
    assert set(files) == {"checkpoints.tar.gz", "training.log", "run.json"}
    run_json = json.loads(files["run.json"].read_text())
    assert run_json["exit_code"] == 0 and run_json["result"]["epochs_done"] == 1
    assert "stop reason=max_epochs" in kr("logs", run_id).stdout

    resumed = resume_from(files["checkpoints.tar.gz"], tmp_path / "resume")
    assert resumed["step"] == run_json["result"]["step"] + 1


@pytest.mark.slow
def test_local_launch_wait_without_any_account(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not any(k.startswith("KAGGLE_") and k != "KAGGLE_CONFIG_DIR" for k in os.environ)
    assert not any(Path(os.environ["KAGGLE_CONFIG_DIR"]).iterdir())
    monkeypatch.setenv(runs.POLL_ENV_VAR, "0.2")
    launched = kr(
        "--config", str(project), "launch", "--epochs", "1", "--backend", "local", "--wait", "--json"
    )
    assert launched.exit_code == 0, launched
    record = json.loads(launched.stdout)  # --json: nothing but JSON on stdout
    assert record["state"] == "complete" and record["backend"] == "local"
    assert "run " in launched.stderr  # progress went to stderr
    output = runs.find_record(record["run_id"]).output_dir
    assert sorted(p.name for p in output.iterdir()) == ["checkpoints.tar.gz", "run.json", "training.log"]
    listing = kr("status")
    assert record["run_id"] in listing.stdout and "complete" in listing.stdout
    resumed = resume_from(output / "checkpoints.tar.gz", tmp_path / "resume")
    assert resumed["step"] == json.loads((output / "run.json").read_text())["result"]["step"] + 1
