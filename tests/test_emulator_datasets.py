"""The official client's dataset calls against the emulator: create, version, status, uploads, limits, faults."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

REF = "testuser/ckpt-dataset"


def write_dataset(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    metadata = {"id": REF, "title": "Checkpoint dataset", "licenses": [{"name": "CC0-1.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(metadata))
    return folder


def wait_ready(api: Any, ref: str = REF, timeout_s: float = 10.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = api.dataset_status(ref)
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "ready":
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{ref} never became ready: {seen}")


def test_create_then_version_then_ready_and_a_kernel_mounts_the_newest_ready_version(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    with pytest.raises(requests.HTTPError) as raised:
        kaggle_api.dataset_status(REF)
    assert raised.value.response.status_code == 404

    created = kaggle_api.dataset_create_new(
        str(write_dataset(tmp_path / "d1", {"a.txt": b"one"})), quiet=True
    )
    assert created.status == "ok" and not created.error
    assert wait_ready(kaggle_api) == ["blobs_received", "ready"]

    folder = write_dataset(tmp_path / "d2", {"a.txt": b"two", "kr-marker.json": b'{"session": 2}'})
    version = kaggle_api.dataset_create_version(str(folder), "session 2", quiet=True)
    assert version.status == "ok"
    assert json.loads(kaggle_api.dataset_status(REF, format="json")) == {
        "status": "blobs_received",
        "current_version_number": 2,
    }
    wait_ready(kaggle_api)

    kernel = tmp_path / "k"
    kernel.mkdir()
    (kernel / "run.py").write_text(
        "import os, pathlib\n"
        "root = pathlib.Path(os.environ['KR_KAGGLE_INPUT'])\n"
        "old = (root / 'ckpt-dataset' / 'a.txt').read_text()\n"
        "new = (root / 'datasets/testuser/ckpt-dataset/kr-marker.json').read_text()\n"
        "pathlib.Path('seen.txt').write_text(old + '|' + new)\n"
    )
    meta = {
        "id": "testuser/reader",
        "title": "Reader",
        "code_file": "run.py",
        "language": "python",
        "kernel_type": "script",
        "dataset_sources": [REF],
    }
    (kernel / "kernel-metadata.json").write_text(json.dumps(meta))
    kaggle_api.kernels_push(str(kernel))
    deadline = time.monotonic() + 20
    while kaggle_api.kernels_status("testuser/reader/1").status.name not in ("COMPLETE", "ERROR"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kaggle_api.kernels_output("testuser/reader/1", str(tmp_path / "out"), force=True)
    assert (tmp_path / "out" / "seen.txt").read_text() == 'two|{"session": 2}'


def test_create_refuses_a_taken_slug_and_too_many_files(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    kaggle_emulator.settings.max_dataset_files = 2
    too_many = kaggle_api.dataset_create_new(
        str(write_dataset(tmp_path / "d", {"a": b"1", "b": b"2", "c": b"3"})), quiet=True
    )
    assert too_many.status == "error" and "exceeds the maximum of 2" in too_many.error

    kaggle_api.dataset_create_new(str(write_dataset(tmp_path / "ok", {"a": b"1"})), quiet=True)
    taken = kaggle_api.dataset_create_new(str(write_dataset(tmp_path / "again", {"a": b"1"})), quiet=True)
    assert taken.status == "error" and "already in use" in taken.error


def test_version_while_the_first_one_is_processing_is_refused_and_a_stuck_dataset_stays_unready(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    kaggle_emulator.faults.dataset_stuck(REF)
    kaggle_api.dataset_create_new(str(write_dataset(tmp_path / "d1", {"a": b"1"})), quiet=True)
    time.sleep(kaggle_emulator.settings.dataset_processing_s + 0.2)
    assert kaggle_api.dataset_status(REF) == "blobs_received"

    with pytest.raises(requests.HTTPError) as raised:
        kaggle_api.dataset_create_version(str(write_dataset(tmp_path / "d2", {"a": b"2"})), "v2", quiet=True)
    assert raised.value.response.status_code == 403

    kaggle_emulator.faults.dataset_stuck(REF, False)
    assert kaggle_api.dataset_status(REF) == "ready"


def test_upload_503_is_resumed_from_what_arrived(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 64
    kaggle_emulator.faults.add("BlobUpload", status=503)

    created = kaggle_api.dataset_create_new(
        str(write_dataset(tmp_path / "d", {"blob.bin": payload})), quiet=True
    )

    assert created.status == "ok"
    assert [s for n, s in kaggle_emulator.calls if n == "BlobUpload"] == [503, 308, 200]
    assert kaggle_emulator.call_count("StartBlobUpload") == 1
    version_folder = kaggle_emulator.root / "datasets" / "testuser" / "ckpt-dataset" / "1"
    assert (version_folder / "blob.bin").read_bytes() == payload


def test_429_with_retry_after_on_create_version_is_retried(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    kaggle_api.dataset_create_new(str(write_dataset(tmp_path / "d1", {"a": b"1"})), quiet=True)
    wait_ready(kaggle_api)
    kaggle_emulator.faults.add("CreateDatasetVersion", status=429, retry_after=0.2)
    kaggle_emulator.faults.add("StartBlobUpload", drop=True)

    version = kaggle_api.dataset_create_version(
        str(write_dataset(tmp_path / "d2", {"a": b"2"})), "v2", quiet=True
    )

    assert version.status == "ok"
    assert kaggle_emulator.call_count("CreateDatasetVersion", 429) == 1
    assert kaggle_emulator.call_count("CreateDatasetVersion", 200) == 1
    assert kaggle_emulator.call_count("StartBlobUpload", 0) == 1  # the dropped connection was retried too


def test_in_band_error_on_create_version(kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path) -> None:
    kaggle_api.dataset_create_new(str(write_dataset(tmp_path / "d1", {"a": b"1"})), quiet=True)
    wait_ready(kaggle_api)
    kaggle_emulator.faults.add("CreateDatasetVersion", in_band="Incompatible Dataset Type")

    refused = kaggle_api.dataset_create_version(
        str(write_dataset(tmp_path / "d2", {"a": b"2"})), "v2", quiet=True
    )

    assert refused.status == "error" and refused.error == "Incompatible Dataset Type"
    assert json.loads(kaggle_api.dataset_status(REF, format="json"))["current_version_number"] == 1



def test_stale_mount_fault_shows_the_version_before_the_newest_ready_one(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    kaggle_api.dataset_create_new(str(write_dataset(tmp_path / "d1", {"a.txt": b"one"})), quiet=True)
    wait_ready(kaggle_api)
    kaggle_api.dataset_create_version(str(write_dataset(tmp_path / "d2", {"a.txt": b"two"})), "v2", quiet=True)
    wait_ready(kaggle_api)
    store = kaggle_emulator.datasets

    def mounted() -> str | None:
        folder = store.mounts([REF]).get(REF)
        return None if folder is None else (folder / "a.txt").read_text()

    assert mounted() == "two"
    store.serve_stale_mounts(2)
    assert [mounted(), mounted(), mounted()] == ["one", "one", "two"]
    assert store.mounts([]) == {}  # a kernel without dataset sources does not use up the fault
