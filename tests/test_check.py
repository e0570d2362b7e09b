"""``kr check``: a good set-up passes and each broken one names its problem (exit 1), against the emulated
Kaggle; the local backend's set-up from ``kr init``; the checkpoint size table against the real model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaggle_runner import model_sizes
from kaggle_runner.cli import app
from kaggle_runner.emulator import Settings
from tests.cli_support import Result
from tests.emulator_plugin import KEY, USERNAME, TestEmulator

GOOD = """\
kernel_slug = "kr-check"
backend = "kaggle"
accelerator = "NvidiaTeslaT4"
internet = true
session_budget_s = 7200

[trainer]
data_name = "synthetic"
use_huggingface = false
model_size = "base"
"""


@pytest.fixture
def emulator_settings() -> Settings:
    return Settings(accounts={USERNAME: KEY, "alice": "alices-key"}, time_scale=0.001)


class Checked(Result):
    def lines(self, status: str) -> dict[str, str]:
        """check name -> its line, for the lines of one status."""
        found = {}
        for line in self.stdout.splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3 and parts[0] == {"ok": "ok", "warning": "warning", "problem": "PROBLEM"}[status]:
                found[parts[1]] = parts[2]
        return found


def check(folder: Path, *args: str, toml: str = GOOD) -> Checked:
    (folder / "kr.toml").write_text(toml)
    return Checked(CliRunner().invoke(app, ["--config", str(folder / "kr.toml"), "check", *args]))


def test_a_good_set_up_passes_and_prints_no_credential(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    result = check(tmp_path)
    assert result.exit_code == 0, result
    passed = result.lines("ok")
    for name in ("config", "accelerator", "internet", "credentials", "username", "kernel", "dataset", "quota",
                 "script", "checkpoint"):
        assert name in passed, (name, result)
    assert "testuser/kr-check is free" in passed["kernel"]
    assert "kB" in passed["script"] and "base" in passed["checkpoint"]
    assert KEY not in result.stdout + result.stderr
    as_json = Checked(CliRunner().invoke(app, ["--config", str(tmp_path / "kr.toml"), "check", "--json"]))
    data = json.loads(as_json.stdout)
    assert data["passed"] is True and {c["status"] for c in data["checks"]} == {"ok"}


def test_no_credentials(tmp_path: Path) -> None:
    result = check(tmp_path)
    assert result.exit_code == 1, result
    assert "no Kaggle credentials" in result.lines("problem")["credentials"]
    assert "kaggle.com/settings" in result.stdout  # what to do


def test_rejected_credentials(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    credentials = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    credentials.write_text(json.dumps({"username": USERNAME, "key": "revoked-key"}))
    result = check(tmp_path)
    assert result.exit_code == 1, result
    assert "refused" in result.lines("problem")["credentials"] and "401" in result.stdout
    assert "revoked-key" not in result.stdout + result.stderr


def test_a_slug_owned_by_another_user(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    kaggle_emulator.kernels.add_existing("alice", "kr-check", source="print('alice')\n")
    result = check(tmp_path, toml=GOOD.replace('backend = "kaggle"', 'backend = "kaggle"\nusername = "alice"'))
    assert result.exit_code == 1, result
    problems = result.lines("problem")
    assert "names username alice, the credentials are testuser's" in problems["username"]
    assert "alice/kr-check belongs to alice" in problems["kernel"]


def test_a_kernel_not_made_by_kr_is_a_warning(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    kaggle_emulator.kernels.add_existing(USERNAME, "kr-check", source="print('my own notebook')\n")
    result = check(tmp_path)
    assert result.exit_code == 0, result
    assert "was not made by kr" in result.lines("warning")["kernel"]


def test_an_unknown_accelerator_is_named_and_the_rest_still_checked(
    kaggle_emulator: TestEmulator, tmp_path: Path
) -> None:
    result = check(tmp_path, toml=GOOD.replace('"NvidiaTeslaT4"', '"NvidiaK80"'))
    assert result.exit_code == 1, result
    assert "'NvidiaK80' is not a Kaggle machine shape" in result.lines("problem")["accelerator"]
    assert "credentials" in result.lines("ok")


def test_internet_off_with_hugging_face_data(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    toml = GOOD.replace("internet = true", "internet = false").replace(
        'data_name = "synthetic"\nuse_huggingface = false', 'data_name = "full"\nuse_huggingface = true')
    result = check(tmp_path, toml=toml)
    assert result.exit_code == 1, result
    assert "internet = false" in result.lines("problem")["internet"]
    assert "set internet = true" in result.stdout


def test_quota_too_small_for_the_chain(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    quota = kaggle_emulator.kernels.quota
    quota.gpu_used_s = quota.gpu_allowed_s - 1200  # 20 minutes left, the session needs 2 hours
    result = check(tmp_path)
    assert result.exit_code == 1, result
    assert "0.3 h of GPU quota left" in result.lines("problem")["quota"]
    quota.gpu_used_s = quota.gpu_allowed_s - 5 * 3600  # two of four 2-hour sessions fit: a warning
    many = check(tmp_path, "--sessions", "4")
    assert many.exit_code == 0, many
    assert "2 fit this week" in many.lines("warning")["quota"] and "--wait-for-quota" in many.stdout


def test_local_backend_in_a_folder_made_by_kr_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["init", "--yes", "--backend", "local"]).exit_code == 0
    result = Checked(CliRunner().invoke(app, ["check", "--backend", "local"]))
    assert result.exit_code == 0, result
    assert {"config", "trainer", "kernel", "dataset", "script", "checkpoint"} <= set(result.lines("ok"))


def test_the_size_table_is_the_real_model() -> None:
    from kr_contract.names import MODEL_SIZES
    from trainer.model import ImageToLatex, model_config_for

    assert set(model_sizes.MODEL_PARAMETERS) == set(MODEL_SIZES)
    for size in MODEL_SIZES:
        for vocab in (57, 300):
            model = ImageToLatex(model_config_for(size, vocab, 64))
            assert sum(p.numel() for p in model.parameters()) == model_sizes.parameters(size, vocab), size
    # Measured base tarball (bench/README.md, checkpoint_io.py): 485.1 MB; the estimate bounds it from above.
    assert 485e6 <= model_sizes.tarball_bytes("base") <= 1.1 * 485e6


def test_a_tpu_chain_is_told_its_quota_is_not_checked(kaggle_emulator: TestEmulator, tmp_path: Path) -> None:
    result = check(tmp_path, toml=GOOD.replace('"NvidiaTeslaT4"', '"TpuV5E8"'))
    assert result.exit_code == 0, result
    assert "GPU quota only" in result.lines("warning")["quota"]
