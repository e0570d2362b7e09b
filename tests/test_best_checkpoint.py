"""The weights-only BEST_ checkpoint: what it holds, its size, restarting from it, `latest` never preferring it
over an intact full state, older full-state BEST_ files, and inference on it."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kr_contract.errors import ContractError
from tests.trainer_support import assert_same_tensors, load_state, metric_lines, result, tiny_args
from trainer import checkpoint as ckpt
from trainer import evaluate
from trainer.config import parse_args
from trainer.predict import predict_images
from trainer.train import run

BEST = "BEST_checkpoint_local_synthetic.pth.tar"


def train(args: list[str]) -> int:
    return run(parse_args(args), time.time())


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a new inode: a hard-linked epoch twin stays intact
    path.write_bytes(data[: len(data) // 2])


def warnings(out: Path) -> list[str]:
    return [line for line in (out / "training.log").read_text().splitlines() if " WARNING " in line]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Path:
    """One epoch (BEST_ at step 4), then 2 more steps: last.pth.tar at step 6 is newer than BEST_."""
    out = tmp_path_factory.mktemp("best")
    assert train(tiny_args(out, "--max_epochs", "1", cache_dir=shared_cache_dir)) == 0
    assert train(tiny_args(out, "--checkpoint", "latest", "--max_steps", "2", cache_dir=shared_cache_dir)) == 0
    return out


@pytest.fixture
def out(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(trained, copy)
    return copy


def test_best_holds_weights_only_and_loads_with_weights_only(trained: Path) -> None:
    best = load_state(trained / "checkpoints" / BEST)  # weights_only=True
    for key in ckpt.RESUME_ONLY_KEYS:
        assert key not in best
    for key in ("model", "model_config", "vocab", "image_spec", "data_config", "format_version", "best"):
        assert key in best
    assert best["progress"] == {"epoch": 1, "batch_in_epoch": 0, "global_step": 4}
    assert best["best"]["step"] == 4 and ckpt.is_weights_only(best)
    last = load_state(trained / "checkpoints" / "last.pth.tar")
    assert "optimizer" in last and not ckpt.is_weights_only(last)
    manifest = json.loads((trained / "checkpoints" / "MANIFEST.json").read_text())
    assert manifest["files"][BEST] == ckpt.sha256_bytes((trained / "checkpoints" / BEST).read_bytes())
    assert manifest["files"][BEST] != manifest["files"]["last.pth.tar"]


def test_best_is_under_half_a_full_state_and_the_tarball_a_third_smaller(trained: Path) -> None:
    last_size = (trained / "checkpoints" / "last.pth.tar").stat().st_size
    best_size = (trained / "checkpoints" / BEST).stat().st_size
    assert best_size < 0.5 * last_size
    with tarfile.open(trained / "checkpoints.tar.gz") as tar:
        packed = {member.name: member.size for member in tar}
    assert packed[f"checkpoints/{BEST}"] == best_size
    assert sum(packed.values()) < 0.75 * 2 * last_size  # two full states before


def test_resume_from_best_restarts_from_its_weights_with_a_fresh_optimizer(out: Path) -> None:
    best_path = out / "checkpoints" / BEST
    best = load_state(best_path)
    assert train(tiny_args(out, "--checkpoint", str(best_path), "--max_steps", "1")) == 0
    starts = metric_lines(out / "training.log", "start")
    assert (starts[-1]["epoch"], starts[-1]["step"], starts[-1]["batch_in_epoch"]) == ("1", "4", "0")
    last = load_state(out / "checkpoints" / "last.pth.tar")
    assert last["progress"] == {"epoch": 1, "batch_in_epoch": 1, "global_step": 5}
    assert last["schedule"] == best["schedule"]
    steps = {float(s["step"]) for s in last["optimizer"]["state"].values()}
    assert steps == {1.0}, "AdamW restarted: one step since the BEST_ weights"
    assert result(out)["step"] == 5
    warned = [line for line in warnings(out) if "resuming from BEST_" in line]
    assert len(warned) == 1 and "weights only" in warned[0] and "step 4" in warned[0]
    assert f"--checkpoint {out / 'checkpoints' / 'last.pth.tar'}" in warned[0]


def test_a_folder_holding_only_best_restarts_from_it_and_a_tarball_must_hold_last(out: Path, tmp_path: Path) -> None:
    source = tmp_path / "only-best"
    (source / "checkpoints").mkdir(parents=True)
    best_path = shutil.copy(out / "checkpoints" / BEST, source / "checkpoints" / BEST)
    # The one tarball verifier (kr_contract) refuses a tarball without last.pth.tar: the trainer never packs one.
    with pytest.raises(ContractError, match="does not list last.pth.tar"):
        ckpt.pack(source, {Path(best_path): ckpt.sha256_file(Path(best_path))}, 1, 4, keep_timestamped=1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    resumed = ckpt.load_candidate(source, scratch)
    assert resumed.path.name == BEST and ckpt.is_weights_only(resumed.state)
    assert_same_tensors(resumed.state["model"], load_state(out / "checkpoints" / BEST)["model"], "model")
    assert train(tiny_args(out, "--checkpoint", str(source), "--max_steps", "1")) == 0
    assert result(out)["step"] == 5
    assert any("weights only" in line and "--checkpoint latest" in line for line in warnings(out))


def test_latest_picks_an_older_tarballs_full_state_over_an_intact_best(out: Path) -> None:
    ckpts = out / "checkpoints"
    truncate(ckpts / "last.pth.tar")
    for _, path in ckpt.epoch_files(ckpts):
        truncate(path)
    now = time.time()
    for tarball in [out / ckpt.TARBALL_NAME, *ckpt.timestamped_tarballs(out)]:
        os.utime(tarball, (now - 60, now - 60))
    os.utime(ckpts / BEST, (now, now))  # BEST_ is the newest intact file
    scratch = out / "scratch"
    scratch.mkdir()
    found = ckpt.find_latest(out, scratch)
    assert found is not None and found.origin.name.endswith(".tar.gz")
    assert found.path.name == "last.pth.tar" and not ckpt.is_weights_only(found.state)
    assert found.state["progress"]["global_step"] == 6
    assert any("last.pth.tar" in problem for problem in found.skipped)


def test_latest_restarts_from_best_only_when_no_full_state_is_usable(out: Path) -> None:
    ckpts = out / "checkpoints"
    for path in [ckpts / "last.pth.tar", *(p for _, p in ckpt.epoch_files(ckpts))]:
        truncate(path)
    for tarball in [out / ckpt.TARBALL_NAME, *ckpt.timestamped_tarballs(out)]:
        truncate(tarball)
    assert train(tiny_args(out, "--checkpoint", "latest", "--max_steps", "1")) == 0
    assert result(out)["step"] == 5
    warned = [line for line in warnings(out) if "resuming from BEST_" in line]
    assert len(warned) == 1 and "no intact last.pth.tar" in warned[0]


def test_an_older_full_state_best_still_resumes_exactly(out: Path) -> None:
    """BEST_ files written before weights-only BEST_ are full states: they keep their optimizer."""
    ckpts = out / "checkpoints"
    epoch1 = ckpts / ckpt.epoch_file_name("local", "synthetic", 1)
    old_best = load_state(epoch1)
    data = ckpt.serialize(old_best)
    ckpt.write_checkpoint(ckpts, BEST, data)
    hashes = dict(ckpt.read_manifest(ckpts)["files"]) | {BEST: ckpt.sha256_bytes(data)}
    ckpt.write_manifest(ckpts, hashes, 1, 6)
    assert train(tiny_args(out, "--checkpoint", str(ckpts / BEST), "--max_steps", "1")) == 0
    last = load_state(ckpts / "last.pth.tar")
    steps = {float(s["step"]) for s in last["optimizer"]["state"].values()}
    assert steps == {5.0}, "the saved AdamW state continued"
    warned = [line for line in warnings(out) if "resuming from BEST_" in line]
    assert len(warned) == 1 and "weights only" not in warned[0]


def test_evaluate_and_predict_on_best(trained: Path, shared_cache_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    best = trained / "checkpoints" / BEST
    code = evaluate.main(["--checkpoint", str(best), "--data_name", "synthetic", "--cache_dir", str(shared_cache_dir),
                          "--split", "test", "--max_samples", "4", "--batch_size", "4", "--device", "cpu"])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["samples"] == 4 and scores["step"] == 4 and 0.0 <= scores["edit_score"] <= 1.0
    # Any two rendered test formulas: the shared cache holds other tests' sets too, some with a 1-image test split.
    rows = [row for split in sorted(shared_cache_dir.glob("synthetic/*/test.parquet"))
            for row in pq.read_table(split).column("image").to_pylist()]
    images = []
    for i, row in enumerate(rows[:2]):
        images.append(tmp_path / f"formula{i}.png")
        images[-1].write_bytes(row["bytes"])
    lines = predict_images(best, images, device="cpu")
    assert len(lines) == 2 and all(isinstance(line, str) for line in lines)
