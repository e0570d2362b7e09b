"""``kr chain --smoke`` on the local backend and against the emulated Kaggle: two real sessions of a tiny model
through the whole loop, each stage timed; its settings; and the model reading shown after a chain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_runner import chain_state
from kaggle_runner.config import config_from_mapping, default_config
from kaggle_runner.emulator import Settings
from kaggle_runner.reading import Reading, read_test_images, reading_lines
from kaggle_runner.smoke import STAGES, smoke_config, suffixed
from kr_contract.atomic import sha256_file
from kr_contract.tarball import pack_tarball
from tests.emulator_plugin import KEY, USERNAME, TestEmulator

TIME_SCALE = "0.005"


@pytest.fixture
def emulator_settings() -> Settings:
    """Kaggle seconds = real seconds: the smoke's 15-minute session limit must not kill these kernels."""
    return Settings(accounts={USERNAME: KEY}, time_scale=1.0, queue_delay_s=0.2, kill_grace_s=1.0,
                    dataset_processing_s=0.3)


def kr(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaggle_runner.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def assert_smoke_ran(done: subprocess.CompletedProcess[str], kernel_slug: str) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    chain_id = done.stdout.strip().splitlines()[-1]
    record = chain_state.load_chain(chain_id)
    assert record.state is chain_state.ChainState.SUCCEEDED and len(record.sessions) == 2
    assert record.spec.kernel_ref.endswith(f"/{kernel_slug}-smoke")
    assert record.spec.dataset_ref.endswith("-smoke") and record.spec.max_retries == 0
    first, second = record.sessions
    assert second.step is not None and first.step is not None and second.step > first.step  # it resumed
    assert set(STAGES) <= set(second.stages)  # mount+resume: the second session's kernel resumed
    assert set(STAGES) - {"mount+resume"} <= set(first.stages)
    table = done.stderr[done.stderr.index("stage "):]
    for stage in STAGES:
        assert stage in table
    assert "session 2 resumed from session 1's checkpoint" in done.stderr


@pytest.mark.slow
def test_smoke_on_the_local_backend(tmp_path: Path) -> None:
    env = {**os.environ, "KR_CHAIN_TIME_SCALE": TIME_SCALE}
    init = kr(["init", "--yes", "--backend", "local", "--kernel-slug", "kr-smoke-test"], env, tmp_path)
    assert init.returncode == 0, init.stderr
    assert_smoke_ran(kr(["chain", "--smoke"], env, tmp_path), "kr-smoke-test")


@pytest.mark.slow
def test_smoke_against_the_emulator(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    env = kaggle_emulator.client_env({**os.environ, "KR_CHAIN_TIME_SCALE": TIME_SCALE})
    (tmp_path / "kr.toml").write_text(
        'kernel_slug = "kr-smoke-test"\nbackend = "kaggle"\naccelerator = "NvidiaTeslaT4"\ninternet = false\n'
        '[trainer]\ndata_name = "synthetic"\nuse_huggingface = false\nmodel_size = "base"\n'
    )
    assert_smoke_ran(kr(["chain", "--smoke"], env, tmp_path), "kr-smoke-test")
    assert kaggle_emulator.call_count("SaveKernel") == 2
    assert kaggle_emulator.errors == []


def test_smoke_settings_keep_the_users_source_and_fit_kaggles_slug_limits() -> None:
    long_slug = "a-kernel-slug-that-is-already-fifty-characters-lon"
    assert len(long_slug) == 50
    config = config_from_mapping({"kernel_slug": long_slug, "backend": "kaggle", "accelerator": "NvidiaL4",
                                  "trainer": {"extra_args": ["--lr", "1e-4", "--max_steps", "9999"]}})
    smoke = smoke_config(config)
    assert smoke.kernel_slug == suffixed(long_slug, 50) and len(smoke.kernel_slug) <= 50
    assert smoke.kernel_slug.endswith("-smoke") and len(smoke.dataset_slug) <= 50
    assert (smoke.backend, smoke.accelerator, smoke.internet) == ("kaggle", "NvidiaL4", config.internet)
    assert (smoke.trainer.data_name, smoke.trainer.use_huggingface) == ("full", True)  # the user's data source
    assert smoke.trainer.model_size == "tiny" and smoke.session_budget_s <= 900
    args = list(smoke.trainer.extra_args)
    assert args[:2] == ["--lr", "1e-4"] and "9999" not in args and args.count("--max_steps") == 1
    local = smoke_config(default_config("local"))
    assert local.trainer.synthetic_train == 32 and local.kernel_slug == "kr-latex-ocr-smoke"


# ------------------------------------------------------------------------------------------ the model reading


def test_the_reading_is_a_side_by_side_table_marked_equal_or_not() -> None:
    reading = Reading(epoch=3, step=120, pairs=[("x ^ { 2 }", "x ^ { 2 }"), ("\\frac { a } { b }", "\\frac { a }")])
    lines = reading_lines(reading, "chain c, session 3")
    assert lines[0] == "the model reads 2 test images (chain c, session 3, epoch 3, step 120):"
    assert lines[2].split() == ["equal", "x", "^", "{", "2", "}", "x", "^", "{", "2", "}"]
    assert lines[3].lstrip().startswith("not equal")
    assert lines[-1].strip() == "1 of 2 read exactly" and reading.exact == 1


def test_without_torch_the_reading_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    note = read_test_images(tmp_path / "checkpoints.tar.gz")
    assert isinstance(note, str) and "needs torch" in note and "\n" not in note


def test_a_reading_that_fails_is_one_line_not_a_crash(tmp_path: Path) -> None:
    broken = tmp_path / "checkpoints.tar.gz"
    broken.write_bytes(b"not a tarball")
    note = read_test_images(broken)
    assert isinstance(note, str) and note.startswith("no reading of test images (") and "\n" not in note
    # A tarball that verifies but holds no model: the worker fails, and says so in one line.
    (tmp_path / "last.pth.tar").write_bytes(b"no torch state in here")
    packed = tmp_path / "packed.tar.gz"
    pack_tarball(packed, {tmp_path / "last.pth.tar": sha256_file(tmp_path / "last.pth.tar")}, epoch=1, step=1,
                 format_version=1)
    note = read_test_images(packed)
    assert isinstance(note, str) and note.startswith("no reading of test images (") and "\n" not in note
