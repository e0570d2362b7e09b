"""The Kaggle backend: the real ``kaggle`` client against the emulator, faults injected at the HTTP boundary."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from kaggle_runner.backends.base import KernelState, PushRefused, PushRequest
from kaggle_runner.backends.kaggle import KaggleBackend, classify_push_error, log_text
from kaggle_runner.backends.retry import RetryPolicy, call_with_retry, retry_after_s
from kaggle_runner.emulator import GPU_SESSION_LIMIT_ERROR
from kaggle_runner.errors import ApiError, UsageError
from kr_contract.names import OUTPUT_PATTERN
from tests.backend_support import wait_terminal

FAST_RETRY = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05, deadline_s=10.0)
SLUG = "demo-kernel"

SCRIPT = """
import os, pathlib
for name in ("checkpoints.tar.gz", "training.log", "run.json", "scratch.bin"):
    pathlib.Path(name).write_text(name)
print("credentials visible:", any(k in os.environ for k in ("KAGGLE_KEY", "KAGGLE_USERNAME")))
print("done")
"""


def kernel_folder(
    tmp_path: Path, owner: str, *, sources: list[str] | None = None, script: str = SCRIPT, gpu: bool = False
) -> Path:
    folder = tmp_path / f"kernel-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "script.py").write_text(script)
    metadata: dict[str, Any] = {
        "id": f"{owner}/{SLUG}",
        "title": SLUG,
        "code_file": "script.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": gpu,
        "enable_internet": False,
        "dataset_sources": sources or [],
    }
    if gpu:
        metadata["machine_shape"] = "NvidiaTeslaT4"
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture
def backend(kaggle_emulator: Any) -> KaggleBackend:
    return KaggleBackend(retry_policy=FAST_RETRY)


def test_push_poll_download_logs(backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path) -> None:
    ref = f"{kaggle_emulator.username}/{SLUG}"
    assert backend.username() == kaggle_emulator.username
    assert backend.latest_version(ref) is None
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username)))
    assert (result.ref, result.version) == (ref, 1)
    second = backend.push(PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username)))
    assert second.version == 2 and backend.latest_version(ref) == 2
    assert wait_terminal(backend, ref, 1) is KernelState.COMPLETE

    dest = tmp_path / "out"
    files = backend.download(ref, 1, dest, pattern=OUTPUT_PATTERN)
    assert sorted(p.name for p in files) == ["checkpoints.tar.gz", "run.json", "training.log"]
    assert not (dest / f"{SLUG}.log").exists()  # the client's generated log is not an output
    assert (dest / "run.json").read_text() == "run.json"
    everything = backend.download(ref, 1, dest)
    assert {p.name for p in everything} == {"checkpoints.tar.gz", "run.json", "training.log", "scratch.bin"}

    log = backend.logs(ref, 1)
    assert "credentials visible: False" in log and "done" in log
    assert wait_terminal(backend, ref, 2) is KernelState.COMPLETE
    assert "done" in list(backend.follow_logs(ref, 2))


def test_follow_logs_falls_back_to_polling(
    backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kaggle_runner.backends.kaggle as kaggle_module

    monkeypatch.setattr(kaggle_module, "FOLLOW_POLL_S", 0.05)
    script = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.2)\n"
    result = backend.push(
        PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username, script=script))
    )
    kaggle_emulator.faults.add("LogsStream", status=404)
    lines = list(backend.follow_logs(result.ref, result.version))
    assert [line for line in lines if line.startswith("line")] == ["line 0", "line 1", "line 2"]


@pytest.mark.parametrize("call", ["GetKernelSessionStatus", "ListKernelSessionOutput"])
@pytest.mark.parametrize("fault", [{"status": 429, "retry_after": 0.01}, {"status": 503}, {"drop": True}])
def test_transient_failures_are_retried(
    backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path, call: str, fault: dict[str, Any]
) -> None:
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username)))
    assert wait_terminal(backend, result.ref, result.version) is KernelState.COMPLETE
    kaggle_emulator.faults.add(call, times=2, **fault)
    if call == "GetKernelSessionStatus":
        assert backend.status(result.ref, result.version).state is KernelState.COMPLETE
    else:
        assert backend.download(result.ref, result.version, tmp_path / "out", pattern=OUTPUT_PATTERN)
    hits = [status for name, status in kaggle_emulator.calls if name == call]
    assert hits[-3:-1] == [fault.get("status", 0)] * 2 and hits[-1] == 200


def test_retries_give_up_with_a_clear_error(kaggle_emulator: Any, tmp_path: Path) -> None:
    backend = KaggleBackend(retry_policy=RetryPolicy(max_attempts=3, initial_delay_s=0.01))
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username)))
    kaggle_emulator.faults.add("GetKernelSessionStatus", status=500, times=3)
    with pytest.raises(ApiError, match="HTTP 500") as failed:
        backend.status(result.ref, result.version)
    assert "retry later" in (failed.value.hint or "")


def test_push_retried_on_429(backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path) -> None:
    kaggle_emulator.faults.add("SaveKernel", status=429, retry_after=0.01)
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username)))
    assert result.version == 1


def test_gpu_session_limit_is_refused_in_band(
    backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path
) -> None:
    kaggle_emulator.faults.add("SaveKernel", in_band=GPU_SESSION_LIMIT_ERROR.format(limit=2))
    with pytest.raises(PushRefused) as refused:
        backend.push(PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username, gpu=True)))
    assert refused.value.reason == "gpu_session_limit"
    assert "session count" in refused.value.message and refused.value.hint
    assert backend.latest_version(f"{kaggle_emulator.username}/{SLUG}") is None


def test_invalid_dataset_source_is_refused(
    backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path
) -> None:
    folder = kernel_folder(tmp_path, kaggle_emulator.username, sources=["testuser/no-such-dataset"])
    with pytest.raises(PushRefused) as refused:
        backend.push(PushRequest(folder=folder))
    assert refused.value.reason == "invalid_sources"
    assert "testuser/no-such-dataset" in refused.value.message


def test_refusal_reasons() -> None:
    assert classify_push_error("Maximum batch GPU session count of 2 reached") == "gpu_session_limit"
    assert classify_push_error("You've exceeded the number of hours allowed to use GPU.") == "quota_exhausted"
    assert classify_push_error("Notebook not found") == "other"


def test_datasets_create_then_version(backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path) -> None:
    ref = f"{kaggle_emulator.username}/demo-checkpoints"
    assert backend.dataset_info(ref) is None
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "checkpoints.tar.gz").write_bytes(b"x" * 1000)
    (folder / "kr-marker.json").write_text("{}")
    backend.publish_dataset(folder, ref, title="Demo checkpoints", notes="session 1")
    first = backend.dataset_info(ref)
    assert first is not None and first.version == 1
    deadline = time.monotonic() + 10
    while not backend.dataset_info(ref).is_ready:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    backend.publish_dataset(folder, ref, title="Demo checkpoints", notes="session 2")
    assert backend.dataset_info(ref).version == 2  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="slug"):
        backend.publish_dataset(
            folder, f"{kaggle_emulator.username}/short", title="Demo checkpoints", notes=""
        )


def test_quota_from_quota_view(backend: KaggleBackend, kaggle_emulator: Any) -> None:
    kaggle_emulator.kernels.quota.gpu_used_s = 3600.0
    quota = backend.quota()
    assert quota.used_s == pytest.approx(3600.0)
    assert quota.allowed_s == pytest.approx(kaggle_emulator.kernels.quota.gpu_allowed_s)
    assert quota.refresh_time is not None


def test_missing_credentials_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match="no Kaggle credentials") as missing:
        KaggleBackend().username()
    assert "--backend local" in (missing.value.hint or "")
    out, err = capsys.readouterr()
    assert out == ""  # the client's auth help is captured, not printed


def test_credentials_never_reach_messages(
    kaggle_emulator: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = KaggleBackend(retry_policy=RetryPolicy(max_attempts=1))
    kaggle_emulator.faults.add("GetKernelSessionStatus", status=401)
    with pytest.raises(ApiError) as refused:
        backend.status(f"{kaggle_emulator.username}/{SLUG}", 1)
    out, err = capsys.readouterr()
    assert "fakekey" not in str(refused.value) + (refused.value.hint or "") + out + err


def test_retry_after_and_backoff() -> None:
    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "7"
    assert retry_after_s(requests.HTTPError("slow down", response=response)) == 7.0
    waits: list[float] = []
    attempts = iter([requests.HTTPError("busy", response=response), requests.ConnectionError("reset"), None])

    def flaky() -> str:
        failure = next(attempts)
        if failure is not None:
            raise failure
        return "ok"

    assert (
        call_with_retry(flaky, what="test", policy=RetryPolicy(initial_delay_s=2), sleep=waits.append) == "ok"
    )
    assert waits == [7.0, 4.0]  # Retry-After first, then the backoff of attempt 2
    with pytest.raises(ValueError):
        call_with_retry(
            lambda: (_ for _ in ()).throw(ValueError("permanent")), what="test", sleep=waits.append
        )


def test_log_text_joins_kaggle_log_events() -> None:
    events = [{"stream_name": "stdout", "time": 0.1, "data": "a\n"}, {"stream_name": "stderr", "data": "b\n"}]
    assert log_text(json.dumps(events)) == "a\nb\n"
    assert log_text("plain text") == "plain text"
    assert log_text("") == ""


def test_404_right_after_a_push_means_pending(
    backend: KaggleBackend, kaggle_emulator: Any, tmp_path: Path
) -> None:
    result = backend.push(PushRequest(folder=kernel_folder(tmp_path, kaggle_emulator.username)))
    kaggle_emulator.faults.add("GetKernelSessionStatus", status=404)
    assert backend.status(result.ref, result.version).state is KernelState.QUEUED
    kaggle_emulator.faults.add("GetKernelSessionStatus", status=404)
    with pytest.raises(ApiError, match="HTTP 404"):
        backend.status(result.ref, result.version + 5)  # a version that was never pushed
