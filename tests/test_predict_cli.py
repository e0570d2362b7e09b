"""``kr predict``: which checkpoint it takes, how it reads a kr tarball, its errors, and (slow) a real model
trained on synthetic formula images reading those images back."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import types
from pathlib import Path

import pytest

from kaggle_runner.cli.predict import checkpoint_file, extract_checkpoint, newest_tarball
from kaggle_runner.errors import KrError, UsageError

BEST_NAME = "BEST_checkpoint_local_synthetic.pth.tar"


def write_tarball(path: Path, members: dict[str, bytes], *, manifest: dict[str, str] | None = None) -> Path:
    """A checkpoints tarball laid out as the trainer packs it (checkpoints/<name> + MANIFEST.json)."""
    if manifest is None:
        manifest = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    contents = {f"checkpoints/{name}": data for name, data in members.items()}
    contents["checkpoints/MANIFEST.json"] = json.dumps({"files": manifest, "epoch": 1, "step": 10}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _kr(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from kaggle_runner.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    return write_tarball(tmp_path / "checkpoints.tar.gz", {"last.pth.tar": b"newest", BEST_NAME: b"best"})


def test_extracts_last_checkpoint_by_default(tarball: Path, tmp_path: Path) -> None:
    extracted = extract_checkpoint(tarball, tmp_path)
    assert extracted == tmp_path / "last.pth.tar" and extracted.read_bytes() == b"newest"


def test_extracts_best_checkpoint_on_request(tarball: Path, tmp_path: Path) -> None:
    extracted = checkpoint_file(tarball, tmp_path, best=True)
    assert extracted.name == BEST_NAME and extracted.read_bytes() == b"best"


def test_checkpoint_file_given_directly_is_used_as_is(tmp_path: Path) -> None:
    path = tmp_path / "last.pth.tar"
    path.write_bytes(b"PK\x03\x04 torch zip")
    assert checkpoint_file(path, tmp_path / "scratch") == path


def test_corrupt_member_is_refused(tmp_path: Path) -> None:
    bad = write_tarball(
        tmp_path / "c.tar.gz", {"last.pth.tar": b"newest"}, manifest={"last.pth.tar": "0" * 64}
    )
    (tmp_path / "out").mkdir()
    with pytest.raises(KrError, match="does not match its MANIFEST"):
        extract_checkpoint(bad, tmp_path / "out")


def test_tarball_without_last_checkpoint_is_refused(tmp_path: Path) -> None:
    other = write_tarball(tmp_path / "c.tar.gz", {"notes.txt": b"x"})
    with pytest.raises(KrError, match="not a kr checkpoints tarball"):
        extract_checkpoint(other, tmp_path)


def test_truncated_tarball_is_a_clear_error(tarball: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tarball.read_bytes()[:60])
    (tmp_path / "out").mkdir()
    with pytest.raises(KrError, match="cannot read"):
        checkpoint_file(cut, tmp_path / "out")


def test_newest_tarball_of_a_chain_is_its_last_session_that_has_one(tmp_path: Path) -> None:
    chain = Path(os.environ["KR_HOME"]) / "runs" / "chain-20261126-080000-ab12"
    for k in (1, 2):
        write_tarball(chain / f"session-{k}" / "checkpoints.tar.gz", {"last.pth.tar": f"s{k}".encode()})
    (chain / "session-3").mkdir()  # running: nothing downloaded yet
    (chain / "chain.json").write_text("{}")
    assert newest_tarball("chain-2026") == chain / "session-2" / "checkpoints.tar.gz"
    assert newest_tarball(str(chain)) == chain / "session-2" / "checkpoints.tar.gz"


def test_newest_tarball_of_a_run_is_in_its_output(tmp_path: Path) -> None:
    run = Path(os.environ["KR_HOME"]) / "runs" / "20261126-080000-cd34"
    write_tarball(run / "output" / "checkpoints.tar.gz", {"last.pth.tar": b"r"})
    (run / "record.json").write_text("{}")
    assert newest_tarball(None) == run / "output" / "checkpoints.tar.gz"


def test_run_without_downloads_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(UsageError, match="nothing has been downloaded"):
        newest_tarball(str(tmp_path / "run"))


def test_missing_training_extra_names_the_install_command(
    tarball: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "f.png"
    image.write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "trainer.predict", None)  # what an install without torch looks like
    code, stdout, stderr = _kr("predict", str(image), "--checkpoint", str(tarball))
    assert code == 2 and stdout == ""
    assert "needs the training extra" in stderr and "pip install 'kaggle-runner[train]'" in stderr
    assert "Traceback" not in stderr


def test_usage_errors(tarball: Path, tmp_path: Path) -> None:
    code, _, stderr = _kr("predict", str(tmp_path / "missing.png"), "--checkpoint", str(tarball))
    assert code == 2 and "no such image file" in stderr
    code, _, stderr = _kr("predict", str(tarball), "--checkpoint", str(tarball), "--run", "x")
    assert code == 2 and "not both" in stderr


def test_command_hands_the_extracted_checkpoint_to_the_trainer(
    tarball: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's plumbing, with the trainer's entry point recording what it is given."""
    seen: dict[str, object] = {}

    def predict_images(checkpoint_path: str, image_paths: list[str], *, beam: int = 1) -> list[str]:
        seen["checkpoint"] = Path(checkpoint_path).read_bytes()
        seen["beam"] = beam
        return [f"x ^ {{ {i} }}" for i, _ in enumerate(image_paths)]

    stand_in = types.SimpleNamespace(
        predict_images=predict_images, PredictError=type("PredictError", (Exception,), {})
    )
    monkeypatch.setitem(sys.modules, "trainer.predict", stand_in)
    images = []
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"\x89PNG")
        images.append(str(tmp_path / name))
    code, stdout, _ = _kr("predict", *images, "--checkpoint", str(tarball))
    assert code == 0 and seen["checkpoint"] == b"newest"
    assert stdout.splitlines() == [f"{images[0]}\tx ^ {{ 0 }}", f"{images[1]}\tx ^ {{ 1 }}"]
    assert seen["beam"] == 1  # greedy unless asked
    code, stdout, _ = _kr("predict", images[0], "--checkpoint", str(tarball), "--json", "--beam", "4")
    assert json.loads(stdout) == [{"image": images[0], "latex": "x ^ { 0 }"}]
    assert seen["beam"] == 4
    code, _, stderr = _kr("predict", images[0], "--checkpoint", str(tarball), "--beam", "0")
    assert code == 2 and "--beam must be at least 1" in stderr


# ------------------------------------------------------------------------------------------ a real model

# Two formulas the tiny model learns to read exactly in about 40 steps (2 x 40 copies, batch 4: 20 steps an
# epoch); 80 steps leave a margin. Each image must get its own formula back, so the model reads the images.
KNOWN_FORMULAS = ["x ^ { 2 }", "a + b"]
OVERFIT_ARGS = [
    "--model_size", "tiny", "--batch_size", "4", "--max_epochs", "4", "--lr", "3e-3", "--warmup_steps", "10",
    "--schedule_steps", "80", "--label_smoothing", "0", "--num_workers", "0", "--log_every", "20",
    "--max_target_len", "24", "--seed", "0", "--device", "cpu",
]  # fmt: skip


def _train_tiny_model(root: Path) -> tuple[Path, list[Path]]:
    """Render the formulas with the synthetic renderer, overfit a tiny model on them in-process; the
    checkpoints tarball and the image files."""
    import numpy as np

    from trainer.__main__ import main as train
    from trainer.rendering import render_formula
    from trainer.synthetic import write_parquet

    rng = np.random.default_rng(0)
    pngs = [render_formula(formula, rng) for formula in KNOWN_FORMULAS]
    assert all(png is not None for png in pngs)
    images = []
    for index, png in enumerate(pngs):
        images.append(root / f"formula-{index}.png")
        images[-1].write_bytes(png or b"")
    data = root / "data"
    data.mkdir()
    write_parquet(data / "train.parquet", KNOWN_FORMULAS * 40, [p or b"" for p in pngs] * 40)
    for split in ("validation", "test"):
        write_parquet(data / f"{split}.parquet", KNOWN_FORMULAS, [p or b"" for p in pngs])
    out = root / "out"
    assert train(["--data_dir", str(data), "--out_dir", str(out), *OVERFIT_ARGS]) == 0
    return out / "checkpoints.tar.gz", images


@pytest.mark.slow
def test_predict_reads_back_the_formulas_a_trained_tiny_model_knows(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    tarball, images = _train_tiny_model(tmp_path)
    code, stdout, stderr = _kr("predict", *map(str, images), "--checkpoint", str(tarball))
    assert code == 0, stderr
    assert [line.split("\t", 1)[1] for line in stdout.splitlines()] == KNOWN_FORMULAS
    code, stdout, stderr = _kr("predict", *map(str, images), "--checkpoint", str(tarball), "--beam", "3")
    assert code == 0, stderr
    assert [line.split("\t", 1)[1] for line in stdout.splitlines()] == KNOWN_FORMULAS  # beam search reads them too
    # The same model found as the newest checkpoint of a run, images in the other order.
    run = Path(os.environ["KR_HOME"]) / "runs" / "20261126-080000-ef56"
    (run / "output").mkdir(parents=True)
    tarball.rename(run / "output" / "checkpoints.tar.gz")
    (run / "record.json").write_text("{}")
    code, stdout, stderr = _kr("predict", str(images[1]), str(images[0]), "--run", "20261126", "--json")
    assert code == 0, stderr
    assert [item["latex"] for item in json.loads(stdout)] == KNOWN_FORMULAS[::-1]
    # A file that is no image is bad input: one line, exit 2.
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    code, stdout, stderr = _kr("predict", str(not_an_image), "--run", "20261126")
    assert code == 2 and stdout == "" and "notes.png" in stderr and "Traceback" not in stderr
