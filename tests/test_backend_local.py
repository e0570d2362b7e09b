"""The local backend: real sandboxes (subprocesses) under $KR_HOME/local, versioned dataset folders."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kaggle_runner.backends import get_backend
from kaggle_runner.backends.base import KernelState, PushRefused, PushRequest
from kaggle_runner.backends.local import QUOTA_ENV_VAR, LocalBackend
from kaggle_runner.errors import UsageError
from kaggle_runner.home import kr_home
from kr_contract.names import OUTPUT_PATTERN
from tests.backend_support import wait_terminal

# A kernel script that behaves like the real one at its edges: reads its input, prints, leaves outputs.
SCRIPT = """
import os, pathlib, sys
root = pathlib.Path(os.environ["KR_KAGGLE_INPUT"])
for path in sorted(root.rglob("note.txt")):
    print("input", path.relative_to(root), path.read_text().strip())
print("credentials visible:", any(k in os.environ for k in ("KAGGLE_KEY", "KAGGLE_USERNAME")))
for name in ("checkpoints.tar.gz", "training.log", "run.json", "scratch.bin"):
    pathlib.Path(name).write_text(name)
pathlib.Path("checkpoints").mkdir()
pathlib.Path("checkpoints/last.pth.tar").write_text("weights")
print("done")
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def kernel_folder(
    tmp_path: Path, *, slug: str = "demo-kernel", sources: list[str] | None = None, script: str = SCRIPT
) -> Path:
    folder = tmp_path / f"kernel-{slug}-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "script.py").write_text(script)
    metadata = {
        "id": f"local/{slug}",
        "title": slug,
        "code_file": "script.py",
        "language": "python",
        "kernel_type": "script",
        "dataset_sources": sources or [],
    }
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata))
    return folder


def publish(backend: LocalBackend, tmp_path: Path, ref: str, text: str) -> None:
    folder = tmp_path / f"dataset-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "note.txt").write_text(text)
    (folder / "sub").mkdir()
    (folder / "sub" / "skipped.txt").write_text("sub-folders are not part of a version")
    backend.publish_dataset(folder, ref, title="Demo checkpoints", notes=text)


def test_get_backend_by_name() -> None:
    assert get_backend("local").name == "local"
    assert get_backend("local").username() == "local"
    with pytest.raises(UsageError, match="unknown backend"):
        get_backend("colab")


def test_push_runs_the_script_and_downloads_only_the_pattern(tmp_path: Path) -> None:
    backend = LocalBackend()
    assert backend.latest_version("local/demo-kernel") is None
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path)))
    assert (result.ref, result.version) == ("local/demo-kernel", 1)
    assert backend.latest_version("local/demo-kernel") == 1
    assert backend.kernel_dir(result.ref, 1).is_relative_to(kr_home() / "local" / "kernels")
    assert wait_terminal(backend, result.ref, 1) is KernelState.COMPLETE

    dest = tmp_path / "out"
    (dest / "stale").mkdir(parents=True)  # a previous download: the folder is made fresh
    files = backend.download(result.ref, 1, dest, pattern=OUTPUT_PATTERN)
    assert sorted(p.name for p in files) == ["checkpoints.tar.gz", "run.json", "training.log"]
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoints.tar.gz", "run.json", "training.log"]
    everything = backend.download(result.ref, 1, tmp_path / "all")
    assert "checkpoints/last.pth.tar" in {p.relative_to(tmp_path / "all").as_posix() for p in everything}

    log = backend.logs(result.ref, 1)
    assert "credentials visible: False" in log and log.rstrip().endswith("done")


def test_versions_count_up_and_failures_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend()
    first = backend.push(PushRequest(folder=kernel_folder(tmp_path)))
    monkeypatch.setenv("EXIT_CODE", "3")
    second = backend.push(PushRequest(folder=kernel_folder(tmp_path)))
    assert (first.version, second.version) == (1, 2)
    assert wait_terminal(backend, second.ref, 2) is KernelState.ERROR
    assert "exited with code 3" in (backend.status(second.ref, 2).failure_message or "")
    assert wait_terminal(backend, first.ref, 1) is KernelState.COMPLETE


def test_follow_logs_streams_until_the_end(tmp_path: Path) -> None:
    script = "import time\nfor i in range(5):\n    print('line', i, flush=True)\n    time.sleep(0.2)\n"
    backend = LocalBackend()
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, script=script)))
    lines = list(backend.follow_logs(result.ref, result.version))
    assert lines == [f"line {i}" for i in range(5)]
    assert backend.status(result.ref, result.version).state is KernelState.COMPLETE


def test_session_timeout_stops_the_run(tmp_path: Path) -> None:
    backend = LocalBackend()
    script = "import time\nprint('start', flush=True)\ntime.sleep(60)\n"
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, script=script), timeout_s=1))
    assert wait_terminal(backend, result.ref, result.version, timeout_s=20) is KernelState.ERROR
    assert "time limit" in (backend.status(result.ref, result.version).failure_message or "")


def test_datasets_are_versioned_and_the_newest_is_mounted(tmp_path: Path) -> None:
    backend = LocalBackend()
    ref = "local/demo-checkpoints"
    assert backend.dataset_info(ref) is None
    publish(backend, tmp_path, ref, "first")
    publish(backend, tmp_path, ref, "second")
    info = backend.dataset_info(ref)
    assert info is not None and info.is_ready and info.version == 2
    version_dir = kr_home() / "local" / "datasets" / "local" / "demo-checkpoints" / "2"
    assert (version_dir / "note.txt").read_text() == "second"
    assert not (version_dir / "sub").exists()
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left

    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, sources=[ref])))
    assert wait_terminal(backend, result.ref, result.version) is KernelState.COMPLETE
    log = backend.logs(result.ref, result.version)
    assert "input demo-checkpoints/note.txt second" in log
    assert "input datasets/local/demo-checkpoints/note.txt second" in log
    assert "first" not in log


def test_missing_dataset_source_refuses_the_push_and_leaves_nothing(tmp_path: Path) -> None:
    backend = LocalBackend()
    with pytest.raises(PushRefused) as refused:
        backend.push(PushRequest(folder=kernel_folder(tmp_path, sources=["local/not-published"])))
    assert refused.value.reason == "invalid_sources"
    assert "local/not-published" in refused.value.message
    assert backend.latest_version("local/demo-kernel") is None


def test_publishing_an_empty_folder_is_refused(tmp_path: Path) -> None:
    backend = LocalBackend()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no files"):
        backend.publish_dataset(
            tmp_path / "empty", "local/demo-checkpoints", title="Demo checkpoints", notes=""
        )
    assert backend.dataset_info("local/demo-checkpoints") is None


def test_bad_kernel_folders_are_usage_errors(tmp_path: Path) -> None:
    backend = LocalBackend()
    with pytest.raises(UsageError, match="does not exist"):
        backend.push(PushRequest(folder=tmp_path))
    folder = kernel_folder(tmp_path)
    (folder / "kernel-metadata.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        backend.push(PushRequest(folder=folder))
    folder = kernel_folder(tmp_path, slug="Bad_Slug")
    with pytest.raises(UsageError, match="not a valid owner/slug"):
        backend.push(PushRequest(folder=folder))


def test_quota_is_unlimited_unless_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend()
    assert backend.quota().allowed_s is None and backend.quota().remaining_s is None
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path)))
    wait_terminal(backend, result.ref, result.version)
    monkeypatch.setenv(QUOTA_ENV_VAR, "2")
    quota = backend.quota()
    assert quota.allowed_s == 7200
    assert quota.used_s is not None and 0 < quota.used_s < 60
    assert quota.remaining_s == pytest.approx(7200 - quota.used_s)
    monkeypatch.setenv(QUOTA_ENV_VAR, "lots")
    with pytest.raises(UsageError, match=QUOTA_ENV_VAR):
        backend.quota()
