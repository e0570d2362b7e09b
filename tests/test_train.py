"""The training loop in-process on tiny data: artifacts, retention, tarballs, appended log, time budget,
damaged checkpoints, BEST warning, bad input, crashes, and a tiny model that overfits to exact match."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.trainer_support import assert_same_tensors, load_state, metric_lines, result, tiny_args
from trainer import train as train_module
from trainer.config import parse_args
from trainer.data import DATA_NAMES
from trainer.synthetic import build_synthetic
from trainer.train import lr_at, run


def train(args: list[str]) -> int:
    return run(parse_args(args), time.time())


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "training.log"}


def tar_list(path: Path) -> list[str]:
    return subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture(scope="module")
def four_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of 4 epochs (16 steps) shared by the artifact tests."""
    out = tmp_path_factory.mktemp("four-epochs")
    cache = tmp_path_factory.mktemp("cache")
    assert train(tiny_args(out, "--max_epochs", "4", "--keep_epochs", "2", "--keep_tarballs", "2",
                           cache_dir=cache)) == 0
    return out


def test_artifacts_and_retention(four_epochs: Path) -> None:
    ckpts = four_epochs / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert "checkpoint_local_synthetic_epoch4.pth.tar" in names
    assert "checkpoint_local_synthetic_epoch3.pth.tar" in names
    assert not any(f"epoch{n}." in name for n in (1, 2) for name in names)
    assert {"last.pth.tar", "BEST_checkpoint_local_synthetic.pth.tar", "MANIFEST.json"} <= set(names)
    manifest = (ckpts / "MANIFEST.json").read_text()
    assert "epoch1" not in manifest and '"step": 16' in manifest
    state = load_state(ckpts / "last.pth.tar")  # weights_only=True
    assert state["progress"] == {"epoch": 4, "batch_in_epoch": 0, "global_step": 16}
    assert state["vocab"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert len(list(four_epochs.glob("checkpoints_*.tar.gz"))) == 2
    assert result(four_epochs)["stop_reason"] == "max_epochs"
    assert [r["epoch"] for r in metric_lines(four_epochs / "training.log", "val")] == ["1", "2", "3", "4"]


def test_tarball_lists_last_best_and_manifest(four_epochs: Path) -> None:
    assert sorted(tar_list(four_epochs / "checkpoints.tar.gz")) == [
        "checkpoints/BEST_checkpoint_local_synthetic.pth.tar", "checkpoints/MANIFEST.json",
        "checkpoints/last.pth.tar"]


def test_second_run_appends_to_the_log_and_counts_epochs_from_the_checkpoint(four_epochs: Path,
                                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(four_epochs, out)
    before = (out / "training.log").read_text()
    assert train(tiny_args(out, "--checkpoint", "latest", "--max_epochs", "1")) == 0
    after = (out / "training.log").read_text()
    assert after.startswith(before) and len(after) > len(before)
    assert result(out)["epoch"] == 5 and result(out)["epochs_done"] == 1
    starts = metric_lines(out / "training.log", "start")
    assert [s["step"] for s in starts] == ["0", "16"]


def test_time_budget_ends_in_time_with_loadable_state(tmp_path: Path, shared_cache_dir: Path) -> None:
    out = tmp_path / "out"
    budget = 6.0
    began = time.time()
    assert train(tiny_args(out, "--time_budget", str(budget), cache_dir=shared_cache_dir)) == 0
    assert time.time() - began < budget
    assert result(out)["stop_reason"] == "time_budget"
    state = load_state(out / "checkpoints" / "last.pth.tar")
    assert state["progress"]["global_step"] == result(out)["step"]
    assert "checkpoints/last.pth.tar" in tar_list(out / "checkpoints.tar.gz")


def test_damaged_newest_state_falls_back_to_the_previous_good_one(four_epochs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(four_epochs, out)
    for path in [out / "checkpoints" / "last.pth.tar", *out.glob("checkpoints*.tar.gz")]:
        data = path.read_bytes()
        path.unlink()  # break hard links first: only this name is damaged
        path.write_bytes(data[: len(data) // 2])
    assert train(tiny_args(out, "--checkpoint", "latest", "--max_steps", "1")) == 0
    log = (out / "training.log").read_text()
    assert log.count("skipped damaged checkpoint") == 4  # last + fixed tarball + 2 timestamped
    assert metric_lines(out / "training.log", "start")[-1]["step"] == "16"  # epoch 4's checkpoint
    assert result(out)["step"] == 17


def test_every_candidate_damaged_is_an_input_error_that_touches_nothing(four_epochs: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    shutil.copytree(four_epochs, out)
    for path in [*(out / "checkpoints").glob("*.pth.tar"), *out.glob("checkpoints*.tar.gz")]:
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data[:1000])
    before = folder_digest(out)
    assert train(tiny_args(out, "--checkpoint", "latest", "--max_steps", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no usable checkpoint")
    assert folder_digest(out) == before


@pytest.mark.parametrize("case", ["missing", "corrupt", "unknown_data", "bad_parquet"])
def test_bad_input_exits_2_with_one_line(case: str, four_epochs: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    shutil.copytree(four_epochs, out)
    extra: list[str] = []
    if case == "missing":
        extra = ["--checkpoint", str(tmp_path / "nope.pth.tar")]
    elif case == "corrupt":
        bad = tmp_path / "bad.pth.tar"
        bad.write_bytes(b"not a checkpoint")
        extra = ["--checkpoint", str(bad)]
    elif case == "unknown_data":
        extra = ["--checkpoint", "latest", "--data_name", "small", "--no_huggingface"]
    else:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"picture": [b"x"], "latex": ["x"]}), data_dir / "train.parquet")
        extra = ["--data_dir", str(data_dir)]
    before = folder_digest(out)
    assert train(tiny_args(out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert folder_digest(out) == before


def test_resuming_from_best_warns_and_names_the_latest_state(four_epochs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(four_epochs, out)
    best = out / "checkpoints" / "BEST_checkpoint_local_synthetic.pth.tar"
    assert train(tiny_args(out, "--checkpoint", str(best), "--max_steps", "1")) == 0
    warnings = [line for line in (out / "training.log").read_text().splitlines() if "WARNING resuming from BEST_" in line]
    assert len(warnings) == 1 and "last.pth.tar" in warnings[0]


def test_crash_is_logged_with_traceback_and_exits_1(tmp_path: Path, shared_cache_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: object, batch: object) -> None:
        raise RuntimeError("boom in a training step")

    monkeypatch.setattr(train_module.Trainer, "_train_step", explode)
    out = tmp_path / "out"
    assert train(tiny_args(out, "--max_steps", "2", cache_dir=shared_cache_dir)) == 1
    log = (out / "training.log").read_text()
    assert "Traceback" in log and "boom in a training step" in log


def test_learning_rate_is_a_pure_function_of_the_step() -> None:
    schedule = {"base_lr": 1.0, "warmup_steps": 10, "total_steps": 110}
    assert lr_at(0, schedule) == pytest.approx(0.1)
    assert lr_at(9, schedule) == pytest.approx(1.0)
    assert lr_at(60, schedule) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, schedule) == pytest.approx(0.1) == lr_at(500, schedule)


def test_config_data_names_match_the_data_layer() -> None:
    from trainer.config import DATA_NAMES as CLI_NAMES

    assert tuple(CLI_NAMES) == tuple(DATA_NAMES)


def test_tiny_model_overfits_a_handful_of_formulas(tmp_path: Path, shared_cache_dir: Path) -> None:
    """Train and validate on the same 8 formulas: free greedy decoding must reproduce them exactly."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    synthetic = build_synthetic(shared_cache_dir, {"train": 16, "validation": 1, "test": 1}, seed=5)
    table = pq.read_table(synthetic / "train.parquet")
    lengths = [len(text.split()) for text in table.column("text").to_pylist()]
    shortest = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))[:4]
    handful = table.take(shortest)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # The same 4 formulas 16 times over: 8 steps per epoch, so few validations and saves.
    pq.write_table(pa.concat_tables([handful] * 16), data_dir / "train.parquet")
    for split in ("validation", "test"):
        pq.write_table(handful, data_dir / f"{split}.parquet")
    out = tmp_path / "out"
    args = ["--data_dir", str(data_dir), "--model_size", "tiny", "--batch_size", "8", "--num_workers", "0",
            "--lr", "3e-3", "--warmup_steps", "10", "--schedule_steps", "200", "--label_smoothing", "0",
            "--max_epochs", "9", "--log_every", "40", "--out_dir", str(out), "--max_target_len", "40",
            "--time_budget", "150", "--threads", "1"]
    assert train(args) == 0
    best = result(out)["best"]
    assert best["exact_match"] == 1.0, best


def test_last_is_refreshed_inside_an_epoch(tmp_path: Path, shared_cache_dir: Path) -> None:
    out = tmp_path / "out"
    assert train(tiny_args(out, "--max_steps", "3", "--save_every_minutes", "0.0001",
                           cache_dir=shared_cache_dir)) == 0
    saves = [r for r in metric_lines(out / "training.log", "checkpoint") if r["kind"] == "last"]
    assert [r["step"] for r in saves] == ["1", "2", "3"]  # every step here; the stop adds nothing new
    assert load_state(out / "checkpoints" / "last.pth.tar")["progress"]["batch_in_epoch"] == 3


def test_worker_count_does_not_change_the_result(tmp_path: Path, shared_cache_dir: Path) -> None:
    finals = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        assert train(tiny_args(out, "--max_steps", "3", cache_dir=shared_cache_dir)
                     + ["--num_workers", workers]) == 0
        finals.append(load_state(out / "checkpoints" / "last.pth.tar"))
    assert_same_tensors(finals[0]["model"], finals[1]["model"], "model")
    assert_same_tensors(finals[0]["rng"], finals[1]["rng"], "rng")


def test_channels_last_is_the_default_layout() -> None:
    assert parse_args(["--data_dir", "x"]).channels_last is True
    assert parse_args(["--data_dir", "x", "--no_channels_last"]).channels_last is False


def test_a_non_finite_loss_stops_the_run_before_it_reaches_the_weights(tmp_path: Path, shared_cache_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real_loss = train_module.Trainer._loss

    def nan_from_step_3(self, batch, images):  # type: ignore[no-untyped-def]
        loss = real_loss(self, batch, images)
        return loss * float("nan") if self.progress.global_step >= 3 else loss

    monkeypatch.setattr(train_module.Trainer, "_loss", nan_from_step_3)
    out = tmp_path / "out"
    assert train(tiny_args(out, "--max_steps", "8", "--save_every_minutes", "0.0001",
                           cache_dir=shared_cache_dir)) == 1
    log = (out / "training.log").read_text()
    assert "diverged at step 3: the training loss became nan" in log and "Traceback" not in log
    outcome = result(out)  # what the kernel script copies into run.json for kr chain
    assert outcome["stop_reason"] == "diverged" and "lower --lr" in outcome["message"]
    last = load_state(out / "checkpoints" / "last.pth.tar")
    assert last["progress"]["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_fp16_gives_up_after_too_many_skipped_steps_in_a_row() -> None:
    counter = train_module.SkippedSteps()
    assert not counter.record(65536.0, 32768.0)  # skipped: the scale was halved
    assert not counter.record(32768.0, 32768.0)  # stepped: the count starts again
    scale = 32768.0
    verdicts = [counter.record(scale, scale := scale / 2) for _ in range(train_module.MAX_SKIPPED_STEPS)]
    assert verdicts[-1] and not any(verdicts[:-1])


def test_a_tunable_setting_named_on_resume_wins_over_the_checkpoint(four_epochs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(four_epochs, out)
    saved = load_state(out / "checkpoints" / "last.pth.tar")
    assert train(tiny_args(out, "--checkpoint", "latest", "--max_steps", "1", "--lr", "1e-4",
                           "--weight_decay", "0.05", "--batch_size", "4")) == 0
    state = load_state(out / "checkpoints" / "last.pth.tar")
    assert state["schedule"] == {**saved["schedule"], "base_lr": 1e-4}
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.05
    assert state["train_config"]["lr"] == 1e-4 and state["train_config"]["batch_size"] == 8  # not tunable
    log = (out / "training.log").read_text()
    assert "instead of the checkpoint's: lr None -> 0.0001, weight_decay 0.01 -> 0.05" in log
    assert "resuming with the checkpoint's settings: batch_size=8" in log


def test_settings_not_named_on_resume_are_the_checkpoints(four_epochs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(four_epochs, out)
    saved = load_state(out / "checkpoints" / "last.pth.tar")
    assert train(tiny_args(out, "--checkpoint", "latest", "--max_steps", "1")) == 0
    assert load_state(out / "checkpoints" / "last.pth.tar")["schedule"] == saved["schedule"]
    assert "instead of the checkpoint's" not in (out / "training.log").read_text()


def test_image_size_is_a_flag_and_a_resumed_run_keeps_its_checkpoints(tmp_path: Path,
                                                                      shared_cache_dir: Path) -> None:
    out = tmp_path / "out"
    assert train(tiny_args(out, "--max_steps", "1", "--image_height", "32", "--max_width", "512",
                           cache_dir=shared_cache_dir)) == 0
    spec = load_state(out / "checkpoints" / "last.pth.tar")["image_spec"]
    assert (spec["height"], spec["max_width"]) == (32, 512)
    assert train(tiny_args(out, "--max_steps", "1", "--checkpoint", "latest", "--image_height", "48",
                           cache_dir=shared_cache_dir)) == 0
    state = load_state(out / "checkpoints" / "last.pth.tar")
    assert state["image_spec"]["height"] == 32 and state["train_config"]["image_height"] == 32
    assert "ignoring --image_height 48: the checkpoint's model was trained on 32x512 images" in (
        out / "training.log").read_text()


@pytest.mark.parametrize("value", ["40", "8", "0"])
def test_image_sizes_must_divide_by_16(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--data_dir", "x", "--image_height", value])
    assert exited.value.code == 2 and "multiple of 16" in capsys.readouterr().err
