"""The official client's kernel calls against the emulator: push, status, outputs, pull, logs, quota, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from kaggle_runner.emulator import GPU_SESSION_LIMIT_ERROR

REF = "testuser/tiny-kernel"

OUTPUT_SCRIPT = """\
import os, pathlib, sys
print("hello from the kernel")
print("to stderr", file=sys.stderr)
pathlib.Path("sub").mkdir()
pathlib.Path("sub/metrics.json").write_text('{"loss": 1.5}')
pathlib.Path("big.bin").write_bytes(bytes(range(256)) * 40)
pathlib.Path("env.txt").write_text(os.environ.get("KAGGLE_KERNEL_RUN_TYPE", "") + "," + str(os.environ.get("KAGGLE_USERNAME")))
"""


def write_kernel(folder: Path, script: str, *, slug: str = "tiny-kernel", **meta: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.py").write_text(script)
    metadata = {
        "id": f"testuser/{slug}",
        "title": slug.replace("-", " ").title(),
        "code_file": "run.py",
        "language": "python",
        "kernel_type": "script",
        "enable_gpu": False,
        "enable_internet": False,
        **meta,
    }
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata))
    return folder


def wait_for(api: Any, ref: str, timeout_s: float = 20.0) -> tuple[list[str], Any]:
    """Poll status until terminal; returns every status name seen and the last response."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = api.kernels_status(ref)
        if not seen or seen[-1] != response.status.name:
            seen.append(response.status.name)
        if response.status.name in ("COMPLETE", "ERROR"):
            return seen, response
        time.sleep(0.05)
    raise AssertionError(f"{ref} did not finish: {seen}")


def test_push_runs_the_kernel_and_outputs_download_with_pages_and_nested_names(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    response = kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", OUTPUT_SCRIPT)))
    assert not response.error and response.version_number == 1

    seen, final = wait_for(kaggle_api, f"{REF}/1")

    assert seen[0] == "QUEUED" and seen[-1] == "COMPLETE", seen
    assert not final.failure_message
    out = tmp_path / "out"
    files, token = kaggle_api.kernels_output(f"{REF}/1", str(out), page_size=2, force=True)
    names = sorted(str(Path(f).relative_to(out)) for f in files)
    assert names == ["big.bin", "env.txt", "sub/metrics.json", "tiny-kernel.log"]
    assert token in (None, "")
    assert kaggle_emulator.call_count("ListKernelSessionOutput") == 2  # two pages of two files
    assert (out / "sub" / "metrics.json").read_text() == '{"loss": 1.5}'
    assert (out / "big.bin").read_bytes() == bytes(range(256)) * 40
    assert (out / "env.txt").read_text() == "Batch,None"  # Kaggle's env, no credentials
    log = json.loads((out / "tiny-kernel.log").read_text())
    assert [e["data"] for e in log] == ["hello from the kernel\n", "to stderr\n"]
    assert "hello from the kernel" in kaggle_api.kernels_logs(REF)
    assert kaggle_emulator.errors == []


def test_output_urls_serve_ranges_and_validators(kaggle_api: Any, tmp_path: Path) -> None:
    kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", OUTPUT_SCRIPT)))
    wait_for(kaggle_api, f"{REF}/1")
    client = kaggle_api.build_kaggle_client()
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    request = ApiListKernelSessionOutputRequest()
    request.user_name, request.kernel_slug, request.version_label = "testuser", "tiny-kernel", "v1"
    with client as kaggle:
        listing = kaggle.kernels.kernels_api_client.list_kernel_session_output(request)
    url = next(f.url for f in listing.files if f.file_name == "big.bin")

    full = requests.get(url, timeout=10)
    part = requests.get(url, headers={"Range": "bytes=100-199", "If-Range": full.headers["ETag"]}, timeout=10)
    stale = requests.get(url, headers={"Range": "bytes=100-199", "If-Range": '"other"'}, timeout=10)

    assert full.status_code == 200 and full.headers["Content-Length"] == "10240"
    assert full.headers["Accept-Ranges"] == "bytes" and full.headers["Last-Modified"].endswith("GMT")
    assert part.status_code == 206 and part.content == full.content[100:200]
    assert part.headers["Content-Range"] == "bytes 100-199/10240"
    assert stale.status_code == 200 and len(stale.content) == 10240


def test_pull_returns_source_and_the_newest_version_number(kaggle_api: Any, tmp_path: Path) -> None:
    folder = write_kernel(tmp_path / "k", "print(1)\n", dataset_sources=["testuser/missing-data"])
    first = kaggle_api.kernels_push(str(folder))
    assert first.invalid_dataset_sources == ["testuser/missing-data"]  # listed, push still goes through
    (folder / "run.py").write_text("print(2)\n")
    assert kaggle_api.kernels_push(str(folder)).version_number == 2

    pulled = Path(kaggle_api.kernels_pull(REF, str(tmp_path / "pulled"), metadata=True))
    listed = kaggle_api.kernels_list(user="testuser", search="tiny-kernel")

    assert (pulled / "tiny-kernel.py").read_text() == "print(2)\n"
    meta = json.loads((pulled / "kernel-metadata.json").read_text())
    assert meta["id"] == REF and meta["enable_gpu"] is False and meta["language"] == "python"
    assert [k.current_version_number for k in listed] == [2]
    old = Path(kaggle_api.kernels_pull(f"{REF}/1", str(tmp_path / "v1")))
    assert old.read_text() == "print(1)\n"


def test_failing_script_is_error_with_its_log(kaggle_api: Any, tmp_path: Path) -> None:
    kaggle_api.kernels_push(
        str(write_kernel(tmp_path / "k", "print('about to fail')\nraise SystemExit(4)\n"))
    )

    seen, final = wait_for(kaggle_api, f"{REF}/1")

    assert seen[-1] == "ERROR" and "code 4" in final.failure_message
    assert "about to fail" in kaggle_api.kernels_logs(f"{REF}/1")


def test_time_limit_kills_the_session(kaggle_api: Any, tmp_path: Path) -> None:
    # 2000 Kaggle seconds at time_scale 0.001 = 2 real seconds.
    script = "import time\nprint('working', flush=True)\ntime.sleep(30)\n"
    kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", script)), timeout="1000")

    seen, final = wait_for(kaggle_api, f"{REF}/1")

    assert seen == ["QUEUED", "RUNNING", "ERROR"], seen
    assert "time limit" in final.failure_message


def test_injected_kernel_error_and_per_kernel_time_limit(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    kaggle_emulator.faults.kernel_errors(REF, "Kernel died")
    kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", "print(1)\n")))
    assert wait_for(kaggle_api, f"{REF}/1")[1].failure_message == "Kernel died"

    kaggle_emulator.faults.kernel_time_limit(REF, 0.5)
    kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", "import time\ntime.sleep(30)\n")))
    assert "time limit" in wait_for(kaggle_api, f"{REF}/2")[1].failure_message


def test_log_stream_follows_a_running_kernel_to_the_end(kaggle_api: Any, tmp_path: Path) -> None:
    script = "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)\n"
    kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", script)))
    deadline = time.monotonic() + 10
    while kaggle_api.kernels_status(f"{REF}/1").status.name == "QUEUED":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    lines = [event["data"] for event in kaggle_api.kernels_logs_stream(f"{REF}/1")]

    assert lines == ["line 0\n", "line 1\n", "line 2\n"]
    finished = [event["data"] for event in kaggle_api.kernels_logs_stream(f"{REF}/1")]
    assert finished == lines


def test_quota_counts_gpu_sessions_and_refuses_pushes_when_used_up(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    kaggle_api.kernels_push(
        str(write_kernel(tmp_path / "k", "import time\ntime.sleep(0.3)\n", enable_gpu=True))
    )
    wait_for(kaggle_api, f"{REF}/1")
    deadline = time.monotonic() + 5
    while kaggle_api.quota_view().gpu_quota.time_used.total_seconds() == 0:
        assert time.monotonic() < deadline, "the GPU session was never counted"
        time.sleep(0.05)
    used = kaggle_api.quota_view().gpu_quota.time_used.total_seconds()
    assert 300 <= used < 10_000  # >= 0.3 real seconds at time_scale 0.001

    quota = kaggle_emulator.kernels.quota
    quota.gpu_used_s = quota.gpu_allowed_s
    refused = kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", "print(1)\n", enable_gpu=True)))

    assert "exceeded the number of hours allowed to use GPU" in refused.error
    cpu = kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", "print(1)\n", enable_gpu=False)))
    assert not cpu.error and cpu.version_number == 2


def test_gpu_session_limit_is_in_band(kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path) -> None:
    long_gpu = "import time\ntime.sleep(30)\n"
    for slug in ("gpu-one", "gpu-two"):
        assert (
            kaggle_api.kernels_push(
                str(write_kernel(tmp_path / slug, long_gpu, slug=slug, enable_gpu=True))
            ).error
            == ""
        )

    third = kaggle_api.kernels_push(
        str(write_kernel(tmp_path / "k3", long_gpu, slug="gpu-three", enable_gpu=True))
    )

    assert third.error == GPU_SESSION_LIMIT_ERROR.format(limit=2)
    assert not third.version_number


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ({"status": 429}, lambda e: e.response.status_code == 429 and str(e) == "TooManyRequests"),
        ({"status": 429, "envelope": "google"}, lambda e: e.response.status_code == 429),
        ({"status": 503}, lambda e: e.response.status_code == 503),
    ],
)
def test_status_errors_raise_at_once(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path, fault: dict, check: Any
) -> None:
    kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", "print(1)\n")))
    kaggle_emulator.faults.add("GetKernelSessionStatus", times=1, **fault)

    with pytest.raises(requests.HTTPError) as raised:
        kaggle_api.kernels_status(f"{REF}/1")

    assert check(raised.value)
    assert kaggle_emulator.call_count("GetKernelSessionStatus") == 1  # the client does not retry it
    assert kaggle_api.kernels_status(f"{REF}/1").status.name in ("QUEUED", "RUNNING", "COMPLETE")


def test_dropped_connection_and_in_band_push_error(
    kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path
) -> None:
    folder = write_kernel(tmp_path / "k", "print(1)\n")
    kaggle_emulator.faults.add("SaveKernel", drop=True)
    with pytest.raises(requests.ConnectionError):
        kaggle_api.kernels_push(str(folder))

    kaggle_emulator.faults.add("SaveKernel", in_band="Maximum batch GPU session count of 2 reached")
    refused = kaggle_api.kernels_push(str(folder))
    assert refused.error == "Maximum batch GPU session count of 2 reached"

    assert kaggle_api.kernels_push(str(folder)).version_number == 1  # nothing was saved before


def test_stale_status_right_after_a_push(kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path) -> None:
    folder = write_kernel(tmp_path / "k", "print(1)\n")
    kaggle_api.kernels_push(str(folder))
    wait_for(kaggle_api, f"{REF}/1")
    kaggle_emulator.faults.stale_status_after_push(REF, times=2)
    kaggle_api.kernels_push(str(folder), timeout="60000")

    assert kaggle_api.kernels_status(REF).status.name == "COMPLETE"  # the previous version's status
    with pytest.raises(requests.HTTPError) as raised:
        kaggle_api.kernels_status(f"{REF}/2")
    assert raised.value.response.status_code == 404
    assert kaggle_api.kernels_status(f"{REF}/2").status.name in ("QUEUED", "RUNNING")


def test_expired_output_url_is_403(kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path) -> None:
    kaggle_api.kernels_push(str(write_kernel(tmp_path / "k", OUTPUT_SCRIPT)))
    wait_for(kaggle_api, f"{REF}/1")
    kaggle_emulator.faults.add("DownloadOutput", status=403, kernel=REF)

    with pytest.raises(requests.HTTPError) as raised:
        kaggle_api.kernels_output(f"{REF}/1", str(tmp_path / "out"), force=True)

    assert raised.value.response.status_code == 403


def test_unknown_kernel_and_bad_credentials(kaggle_api: Any, kaggle_emulator: Any, tmp_path: Path) -> None:
    with pytest.raises(requests.HTTPError) as raised:
        kaggle_api.kernels_status("testuser/no-such-kernel")
    assert raised.value.response.status_code == 404

    kaggle_emulator.settings.accounts["testuser"] = "another-key"
    with pytest.raises(ValueError, match="Permission"):
        kaggle_api.kernels_status("testuser/no-such-kernel")


def test_a_child_process_reaches_the_emulator_through_client_env(
    kaggle_emulator: Any, tmp_path: Path
) -> None:
    write_kernel(tmp_path / "k", "print(1)\n")
    code = (
        "import sys, kaggle\n"
        "r = kaggle.api.kernels_push(sys.argv[1])\n"
        "print(r.version_number, kaggle.api.kernels_status('testuser/tiny-kernel/1').status.name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "k")],
        env=kaggle_emulator.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["1", "QUEUED"]
    assert "KAGGLE_API_ENVIRONMENT" not in os.environ or os.environ["KAGGLE_API_ENVIRONMENT"] == "LOCALHOST"
