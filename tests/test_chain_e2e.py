"""``kr chain`` end to end: real kernels (tiny model, 32 synthetic formulas, one epoch per session) through the
emulated Kaggle and through the local backend, with faults injected and with ``kr chain`` killed by SIGKILL.

Every chain must end with exactly the weights of one uninterrupted run of the same number of epochs: the
reference run is trained once per module and its per-epoch checkpoints are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kaggle_runner import chain, chain_state
from kaggle_runner.backends import get_backend
from kaggle_runner.chain_observer import LineObserver
from kaggle_runner.config import load_config
from kaggle_runner.emulator import GPU_SESSION_LIMIT_ERROR, Settings
from tests.emulator_plugin import KEY, USERNAME, TestEmulator
from tests.trainer_support import REPO, assert_same_tensors, load_state

pytestmark = pytest.mark.slow

TIME_SCALE = 0.005  # the chain's poll intervals, backoffs and waits, scaled down (kaggle_runner.chain.Timing)
KERNEL = f"{USERNAME}/kr-chain-e2e"
DATASET = f"{USERNAME}/kr-chain-e2e-ckpt"

CONFIG = """\
kernel_slug = "kr-chain-e2e"
kernel_title = "kr chain e2e"
dataset_slug = "kr-chain-e2e-ckpt"
backend = "{backend}"
accelerator = "None"
internet = false
epochs_per_session = 1
session_budget_s = 900

[trainer]
data_name = "synthetic"
use_huggingface = false
model_size = "tiny"
batch_size = 8
seed = 3
synthetic_train = 32
synthetic_val = 8
synthetic_test = 8
extra_args = ["--num_workers", "0", "--max_target_len", "24", "--schedule_steps", "200", "--warmup_steps", "4"]
"""


@pytest.fixture
def emulator_settings() -> Settings:
    """Kaggle seconds = real seconds: sessionTimeoutSeconds (the budget) must not kill these kernels."""
    return Settings(
        accounts={USERNAME: KEY},
        time_scale=1.0,
        queue_delay_s=0.2,
        kill_grace_s=1.0,
        dataset_processing_s=0.3,
    )


def write_config(folder: Path, backend: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kr.toml"
    path.write_text(CONFIG.format(backend=backend))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Path:
    """One uninterrupted 4-epoch run with the chain's trainer arguments; its checkpoints/ folder."""
    folder = tmp_path_factory.mktemp("reference")
    config = load_config(write_config(folder, "local"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env.update(PYTHONPATH=str(REPO), HOME=str(folder), KR_CACHE_DIR=str(shared_cache_dir))
    argv = [*config.trainer.to_argv(), "--out_dir", str(folder / "out"), "--max_epochs", "4"]
    done = subprocess.run(
        [sys.executable, "-m", "trainer", *argv],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "out" / "checkpoints"


def assert_matches_reference(session_dir: Path, reference: Path, epoch: int, tmp_path: Path) -> None:
    """The chain's final last.pth.tar holds the weights and optimizer state of the reference at ``epoch``."""
    with tarfile.open(session_dir / "checkpoints.tar.gz") as archive:
        archive.extract("checkpoints/last.pth.tar", tmp_path / "final", filter="data")
    final = load_state(tmp_path / "final" / "checkpoints" / "last.pth.tar")
    expected = load_state(reference / f"checkpoint_local_synthetic_epoch{epoch}.pth.tar")
    assert final["progress"] == expected["progress"]
    assert_same_tensors(final["model"], expected["model"], "model")
    assert_same_tensors(final["optimizer"], expected["optimizer"], "optimizer")


def new_chain(config_path: Path, sessions: int, **spec: Any) -> tuple[chain_state.ChainRecord, Any, Any]:
    config = load_config(config_path)
    backend = get_backend(config.backend, config)
    owner = backend.username()
    record = chain_state.create_chain(
        chain_state.ChainSpec(
            chain_id=chain_state.new_chain_id(),
            backend=config.backend,
            kernel_ref=f"{owner}/{config.kernel_slug}",
            dataset_ref=f"{owner}/{config.dataset_slug}",
            sessions=sessions,
            session_budget_s=float(config.session_budget_s),
            epochs_per_session=config.epochs_per_session,
            **spec,
        )
    )
    return record, backend, chain.config_renderer(config, owner)


def drive(
    record: chain_state.ChainRecord, backend: Any, renderer: Any, notify: Any = None
) -> chain_state.ChainRecord:
    runner = chain.ChainRunner(
        record, backend, renderer, timing=chain.Timing().scaled(TIME_SCALE), notify=notify,
        observer=LineObserver(print),
    )
    with chain_state.chain_lock(record.spec.chain_id):
        return runner.run()


def session_dir(record: chain_state.ChainRecord, k: int) -> Path:
    return chain_state.chain_dir(record.spec.chain_id) / f"session-{k}"


# -------------------------------------------------------------------------------------------- emulator


def test_four_sessions_through_429_storms_and_a_503_upload_equal_one_run(
    kaggle_emulator: TestEmulator, reference: Path, tmp_path: Path
) -> None:
    faults = kaggle_emulator.faults
    faults.add("GetKernelSessionStatus", status=429, retry_after=0.05, times=6)
    faults.add("ListKernelSessionOutput", status=429, times=2)
    faults.add("GetDatasetStatus", status=503, times=2)
    faults.add("BlobUpload", status=503)
    record, backend, renderer = new_chain(write_config(tmp_path / "project", "kaggle"), 4)

    record = drive(record, backend, renderer)

    assert record.state is chain_state.ChainState.SUCCEEDED, record.message
    assert kaggle_emulator.call_count("SaveKernel") == 4
    assert kaggle_emulator.call_count("BlobUpload", 503) == 1
    assert kaggle_emulator.call_count("GetKernelSessionStatus", 429) == 6
    assert [s.epoch for s in record.sessions] == [1, 2, 3, 4]
    assert [len(s.attempts) for s in record.sessions] == [1, 1, 1, 1]
    assert_matches_reference(session_dir(record, 4), reference, 4, tmp_path)
    # The training log continues across sessions: four sessions' stop lines in the last one's log.
    log = (session_dir(record, 4) / "training.log").read_text()
    assert log.count(" stop reason=max_epochs") == 4
    assert kaggle_emulator.errors == []


def test_kernel_error_timeout_kill_busy_gpu_slot_and_stale_mount_are_all_recovered(
    kaggle_emulator: TestEmulator, reference: Path, tmp_path: Path
) -> None:
    faults = kaggle_emulator.faults
    faults.add("SaveKernel", in_band=GPU_SESSION_LIMIT_ERROR.format(limit=2))  # the first push finds the GPU slots busy
    faults.kernel_errors(KERNEL, "Kernel failed: injected error")  # the first version that runs fails
    events: list[dict[str, Any]] = []
    second_session_started: list[bool] = []

    def script_faults(event: dict[str, Any]) -> None:
        events.append(event)
        if event["state"] == "waiting_retry" and event["reason"] == "kernel_error":
            faults.kernel_time_limit(KERNEL, 0.5)  # the retry is killed at its "time limit"
        elif event["state"] == "running" and KERNEL in faults.time_limits:
            faults.time_limits.pop(KERNEL)  # that push carried the limit; the next ones run normally
        elif event["state"] == "checking_quota" and event["session"] == 2 and not second_session_started:
            second_session_started.append(True)
            kaggle_emulator.datasets.serve_stale_mounts(1)  # session 2's first kernel mounts nothing new

    record, backend, renderer = new_chain(write_config(tmp_path / "project", "kaggle"), 2)
    record = drive(record, backend, renderer, notify=script_faults)

    assert record.state is chain_state.ChainState.SUCCEEDED, record.message
    first, second = record.sessions
    assert [a.outcome for a in first.attempts] == ["kernel_error", "time_limit", "complete"]
    assert first.attempts[2].budget_s == pytest.approx(900 * chain.TIME_LIMIT_BUDGET_FACTOR)
    assert [a.outcome for a in second.attempts] == ["stale_input", "complete"]
    assert first.error_retries == 1 and second.error_retries == 0 and second.stale_relaunches == 1
    states = [e["state"] for e in events]
    assert "waiting_gpu_slot" in states and "waiting_stale_input" in states
    assert "injected error" in (first.attempts[0].failure_message or "")
    assert_matches_reference(session_dir(record, 2), reference, 2, tmp_path)


def test_kr_chain_killed_at_random_points_resumes_without_duplicates_or_losses(
    kaggle_emulator: TestEmulator, reference: Path, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path / "project", "kaggle")
    env = kaggle_emulator.client_env({**os.environ, "KR_CHAIN_TIME_SCALE": str(TIME_SCALE)})
    command = [
        sys.executable,
        "-m",
        "kaggle_runner.cli",
        "chain",
        "--sessions",
        "3",
        "--config",
        str(config_path),
    ]
    rng = random.Random(20261126)
    kills = 0
    for _ in range(4):
        with run_until(command, env, tmp_path, kill_after=rng.uniform(1.0, 12.0)) as proc:
            kills += proc.returncode == -signal.SIGKILL
        if proc.returncode == 0:  # a fast machine finished the chain inside this window: nothing left to kill
            break
    final = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]

    assert kills >= 2  # the chain really was interrupted (the first two windows are 6.2 s and 1.4 s)
    (record,) = chain_state.list_chains()
    assert record.state is chain_state.ChainState.SUCCEEDED
    assert kaggle_emulator.call_count("SaveKernel") == 3, "a killed kr chain pushed a duplicate"
    assert [s.epoch for s in record.sessions] == [1, 2, 3]
    assert [s.dataset_version for s in record.sessions] == [1, 2, 3]
    assert_matches_reference(session_dir(record, 3), reference, 3, tmp_path)


class run_until:  # noqa: N801 - used as a context manager, reads like a function
    """Start ``command``; SIGKILL it after ``kill_after`` seconds unless it ended first."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, kill_after: float) -> None:
        self.proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.kill_after = kill_after

    def __enter__(self) -> subprocess.Popen[bytes]:
        try:
            self.proc.wait(timeout=self.kill_after)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -------------------------------------------------------------------------------------------- local


def test_local_backend_chain_through_the_cli_equals_one_run(reference: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "project", "local")
    env = {**os.environ, "KR_CHAIN_TIME_SCALE": str(TIME_SCALE)}
    command = [
        sys.executable,
        "-m",
        "kaggle_runner.cli",
        "chain",
        "--sessions",
        "2",
        "--config",
        str(config_path),
    ]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    chain_id = done.stdout.strip().splitlines()[-1]
    record = chain_state.load_chain(chain_id)
    assert record.state is chain_state.ChainState.SUCCEEDED and record.spec.backend == "local"
    # The finished chain's final checkpoint reads a few test images, side by side with their references.
    assert "the model reads 6 test images" in done.stderr and "read exactly" in done.stderr, done.stderr[-3000:]
    assert_matches_reference(session_dir(record, 2), reference, 2, tmp_path)
    status = subprocess.run(
        [sys.executable, "-m", "kaggle_runner.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    (summary,) = [c for c in json.loads(status.stdout)["chains"] if c["chain"] == chain_id]
    assert summary["state"] == "succeeded" and summary["sessions_done"] == 2 and summary["epoch"] == 2
    # `kr logs` (and `kr logs -f` on an ended session) prints the chain's newest kernel log: session 2's.
    for extra in ([], ["-f"]):
        logs = subprocess.run(
            [sys.executable, "-m", "kaggle_runner.cli", "logs", chain_id[:16], *extra],
            env=env,
            capture_output=True,
            text=True,
        )
        assert logs.returncode == 0, logs.stderr
        assert f"chain {chain_id} session 2" in logs.stdout and "trainer exited with code 0" in logs.stdout
    # The same command again reports the finished chain; it does not start a new one from scratch.
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"chain {chain_id} already finished its 2 session(s)" in again.stderr
    assert "the model reads" not in again.stderr  # a rerun that only reports the chain does not read again
    assert [c.spec.chain_id for c in chain_state.list_chains()] == [chain_id]
    assert len(chain_state.load_chain(chain_id).sessions) == 2
