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

    def predict_images(checkpoint_path: str, image_paths: list[str]) -> list[str]:
        seen["checkpoint"] = Path(checkpoint_path).read_bytes()
        return [f"x ^ {{ {i} }}" for i, _ in enumerate(image_paths)]

    monkeypatch.setitem(sys.modules, "trainer.predict", types.SimpleNamespace(predict_images=predict_images))
    images = []
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"\x89PNG")
        images.append(str(tmp_path / name))
    code, stdout, _ = _kr("predict", *images, "--checkpoint", str(tarball))
    assert code == 0 and seen["checkpoint"] == b"newest"
    assert stdout.splitlines() == [f"{images[0]}\tx ^ {{ 0 }}", f"{images[1]}\tx ^ {{ 1 }}"]
    code, stdout, _ = _kr("predict", images[0], "--checkpoint", str(tarball), "--json")
    assert json.loads(stdout) == [{"image": images[0], "latex": "x ^ { 0 }"}]
