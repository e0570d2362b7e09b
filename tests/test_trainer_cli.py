"""The command lines: python -m trainer (flags, errors, exit codes), trainer.evaluate and trainer.predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.trainer_support import REPO, result, run_trainer, tiny_args, trainer_env
from trainer.config import parse_args
from trainer.predict import PredictError, predict_images
from trainer.train import run

CONTRACT_FLAGS = ["--data_name", "--use_huggingface", "--no_huggingface", "--hf_repo", "--data_dir",
                  "--synthetic_train", "--synthetic_val", "--synthetic_test", "--out_dir", "--checkpoint",
                  "--max_epochs", "--max_steps", "--time_budget", "--model_size", "--seed", "--batch_size", "--lr",
                  "--num_workers", "--save_every_minutes", "--cache_dir"]


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env or trainer_env(), capture_output=True,
                          text=True, timeout=240)


def test_help_documents_every_contract_flag() -> None:
    done = python("-m", "trainer", "--help")
    assert done.returncode == 0
    for flag in CONTRACT_FLAGS:
        assert flag in done.stdout, flag


def test_unknown_data_name_is_one_line_exit_2(tmp_path: Path) -> None:
    done = python("-m", "trainer", "--data_name", "nonsense", "--out_dir", str(tmp_path / "out"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nonsense" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_deadline_variable_is_one_line_exit_2(tmp_path: Path) -> None:
    env = trainer_env() | {"KR_DEADLINE": "tomorrow"}
    done = python("-m", "trainer", *tiny_args(tmp_path / "out"), env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: KR_DEADLINE='tomorrow' is not a Unix time in seconds: unset it or pass a number"]


def test_package_and_argument_parsing_import_no_torch() -> None:
    code = "import sys, trainer, trainer.config; trainer.config.parse_args([]); print('torch' in sys.modules)"
    assert python("-c", code).stdout.strip() == "False"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    cache = tmp_path_factory.mktemp("cache")
    assert run(parse_args(tiny_args(out, "--max_epochs", "1", cache_dir=cache)), time.time()) == 0
    return out


@pytest.mark.slow
def test_evaluate_prints_the_four_metrics_as_json(trained: Path) -> None:
    cache = next(p for p in trained.parent.iterdir() if p.name.startswith("cache"))
    done = python("-m", "trainer.evaluate", "--checkpoint", str(trained / "checkpoints.tar.gz"), "--data_name",
                  "synthetic", "--cache_dir", str(cache), "--split", "test")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert scores["samples"] == 8 and scores["split"] == "test" and scores["step"] == result(trained)["step"]
    for key in ("bleu4", "exact_match", "edit_score"):
        assert 0.0 <= scores[key] <= 1.0
    assert scores["edit_distance"] >= 0.0


def test_evaluate_missing_checkpoint_is_exit_2(tmp_path: Path) -> None:
    done = python("-m", "trainer.evaluate", "--checkpoint", str(tmp_path / "x.pth.tar"), "--data_name", "small")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_predict_prints_one_line_per_image_like_the_function(trained: Path, tmp_path: Path) -> None:
    cache = next(p for p in trained.parent.iterdir() if p.name.startswith("cache"))
    test_file = next(cache.rglob("test.parquet"))
    images = pq.read_table(test_file).column("image").to_pylist()[:3]
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"formula{i}.png"
        path.write_bytes(image["bytes"])
        paths.append(str(path))
    checkpoint = trained / "checkpoints" / "last.pth.tar"
    expected = predict_images(checkpoint, paths, device="cpu")
    assert len(expected) == 3 and all(isinstance(line, str) for line in expected)
    done = python("-m", "trainer.predict", "--checkpoint", str(checkpoint), *paths)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == expected
    # A batch of one gives the same text as a batch of three: padding columns are masked.
    assert predict_images(checkpoint, paths[:1], device="cpu") == expected[:1]


def test_predict_reports_a_missing_image(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="does not exist"):
        predict_images(trained / "checkpoints" / "last.pth.tar", [tmp_path / "missing.png"], device="cpu")


@pytest.mark.slow
def test_cli_run_writes_result_and_exit_0(tmp_path: Path, shared_cache_dir: Path) -> None:
    out = tmp_path / "out"
    done = run_trainer(tiny_args(out, "--max_steps", "2", cache_dir=shared_cache_dir))
    assert done.returncode == 0, done.stderr
    assert result(out)["stop_reason"] == "max_steps"
    assert " stop reason=max_steps " in done.stdout  # the log lines also go to stdout
    assert os.path.getsize(out / "training.log") > 0


@pytest.mark.parametrize(("flags", "message"), [
    (["--cnn_channels", "16,x,64,64"], "comma-separated integers"),
    (["--cnn_channels", "16,32,64"], "at least 4 positive channel counts"),
    (["--dropout", "1.5"], "must be in [0, 1)"),
    (["--d_model", "0"], "must be >= 1"),
])
def test_bad_shape_flags_are_one_line_exit_2(flags: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--data_dir", "x", *flags])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_shape_flags_reach_the_model_config() -> None:
    cfg = parse_args(["--data_dir", "x", "--model_size", "tiny", "--d_model", "128", "--cnn_channels",
                      "16,32,64,128", "--residual_encoder", "--augment"])
    assert cfg.augment and cfg.shape_overrides() == {"d_model": 128, "decoder_layers": None, "ff_dim": None,
                                                     "cnn_channels": (16, 32, 64, 128), "dropout": None,
                                                     "residual": True}
    assert parse_args(["--data_dir", "x"]).shape_overrides()["residual"] is None  # the preset's (plain)


@pytest.mark.slow
def test_evaluate_takes_a_beam_width(trained: Path) -> None:
    cache = next(p for p in trained.parent.iterdir() if p.name.startswith("cache"))
    base = ["-m", "trainer.evaluate", "--checkpoint", str(trained / "checkpoints.tar.gz"), "--data_name",
            "synthetic", "--cache_dir", str(cache), "--split", "test", "--threads", "1"]
    done = python(*base, "--beam", "3")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert scores["beam"] == 3 and scores["samples"] == 8 and 0.0 <= scores["bleu4"] <= 1.0
    bad = python(*base, "--beam", "0")
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr
