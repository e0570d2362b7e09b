"""kr_kernel's helpers in-process: settings, finding the expected checkpoint, the trainer's command and
environment, the deadline, and the torchrun exit-code rule. tests/test_kernel_script.py runs whole scripts."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from kr_contract.atomic import sha256_file
from kr_contract.marker import write_marker
from kr_contract.names import ENV_DEADLINE, ENV_STALL_TIMEOUT, ENV_WATCHDOG_DIR, EXIT_STALE_INPUT
from kr_contract.tarball import pack_tarball
from kr_kernel.inputs import KernelExit, candidate_dirs, find_checkpoint_dir
from kr_kernel.settings import KernelSettings
from kr_kernel.trainer_process import (
    gpu_count,
    session_deadline,
    settled_exit_code,
    trainer_command,
    trainer_env,
)


def settings(**overrides: object) -> KernelSettings:
    values: dict[str, object] = {
        "kr_version": "0", "chain": "chain-a", "session": 2, "budget_s": 600.0, "deadline_margin_s": 30.0,
        "epochs": 3, "trainer_args": ["--data_name", "synthetic"], "trainer_sha256": "ab" * 32,
        "source_dir": "/src", "scratch_dir": "/scratch", "started": 1000.0, "stall_timeout_s": 120.0,
    }
    values.update(overrides)
    return KernelSettings.from_mapping(values)


def test_settings_from_a_newer_kr_are_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="re-render"):
        settings(surprise=1)


def test_trainer_command_uses_torchrun_from_two_gpus_and_resumes_when_asked() -> None:
    single = trainer_command(settings(), 1, None)
    assert single[:3] == [sys.executable, "-m", "trainer"]
    assert single[-4:] == ["--out_dir", ".", "--max_epochs", "3"]
    double = trainer_command(settings(), 2, "checkpoints/last.pth.tar")
    assert double[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert double[-2:] == ["--checkpoint", "checkpoints/last.pth.tar"]


@pytest.mark.parametrize(("visible", "count"), [("", 0), ("-1", 0), ("0", 1), ("0,1", 2), (" 0 , 1 ,", 2)])
def test_gpu_count_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str, count: int) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_count() == count


@pytest.mark.parametrize(("inherited", "expected"), [(None, 1570.0), ("1200.5", 1200.5), ("9999", 1570.0),
                                                      ("garbage", 1570.0)])
def test_deadline_is_start_plus_budget_minus_margin_or_an_earlier_inherited_one(
    monkeypatch: pytest.MonkeyPatch, inherited: str | None, expected: float
) -> None:
    if inherited is None:
        monkeypatch.delenv(ENV_DEADLINE, raising=False)
    else:
        monkeypatch.setenv(ENV_DEADLINE, inherited)
    assert session_deadline(settings()) == expected


def test_trainer_env_puts_the_archive_first_and_tells_the_trainer_about_the_watchdog(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = trainer_env(settings(), tmp_path)
    assert env["PYTHONPATH"] == os.pathsep.join(["/src", "/elsewhere"])
    assert env[ENV_WATCHDOG_DIR] == str(tmp_path) and env[ENV_STALL_TIMEOUT] == "120"
    assert float(env[ENV_DEADLINE]) == 1570.0 and env["PYTHONUNBUFFERED"] == "1"


def test_torchrun_s_nonzero_exit_after_a_clean_stop_counts_as_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    started = time.time()
    assert settled_exit_code(1, 2, started, lines.append) == 1  # no result file: a failure
    Path("trainer_result.json").write_text(json.dumps({"stop_reason": "signal"}))
    assert settled_exit_code(1, 1, started - 5, lines.append) == 1  # one process: its exit code stands
    assert settled_exit_code(1, 2, started - 5, lines.append) == 0 and "clean signal stop" in lines[-1]
    assert settled_exit_code(1, 2, time.time() + 60, lines.append) == 1  # a result from an earlier run
    Path("trainer_result.json").write_text(json.dumps({"stop_reason": "diverged"}))
    assert settled_exit_code(1, 2, started - 5, lines.append) == 1


def _published(folder: Path, chain: str, session: int, tmp_path: Path) -> dict:
    source = tmp_path / f"src-{chain}-{session}"
    source.mkdir()
    (source / "last.pth.tar").write_bytes(f"{chain} {session}".encode())
    folder.mkdir(parents=True)
    pack_tarball(folder / "checkpoints.tar.gz", {source / "last.pth.tar": sha256_file(source / "last.pth.tar")},
                 epoch=1, step=4, format_version=1)
    return write_marker(folder, chain, session, folder / "checkpoints.tar.gz").expectation()


def test_the_expected_marker_is_found_under_either_layout_among_decoys(tmp_path: Path) -> None:
    root = tmp_path / "input"
    _published(root / "datasets" / "someone" / "other", "chain-x", 7, tmp_path)
    expect = _published(root / "datasets" / "someone" / "ckpts", "chain-a", 1, tmp_path)
    assert find_checkpoint_dir(root, ("someone/ckpts",), expect) == root / "datasets" / "someone" / "ckpts"
    assert find_checkpoint_dir(root, (), expect) == root / "datasets" / "someone" / "ckpts"  # found by search
    assert candidate_dirs(root, ("someone/ckpts",))[:2] == [root / "ckpts", root / "datasets" / "someone" / "ckpts"]
    with pytest.raises(KernelExit) as stopped:
        find_checkpoint_dir(root, ("someone/ckpts",), {**expect, "session": 2})
    assert stopped.value.code == EXIT_STALE_INPUT and "session=1" in stopped.value.message
