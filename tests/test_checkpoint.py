"""Checkpoint files, RNG capture, manifest verification, retention, tarballs, and choosing what to resume."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainer import FORMAT_VERSION
from trainer import checkpoint as ckpt


def fake_state(step: int) -> dict[str, object]:
    return {"format_version": FORMAT_VERSION, "model": {"w": torch.full((3,), float(step))}, "model_config": {},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.98)}]},
            "progress": {"epoch": step // 4, "batch_in_epoch": step % 4, "global_step": step},
            "rng": ckpt.capture_rng(), "vocab": ["<pad>", "<bos>", "<eos>", "<unk>"], "schedule": {}}


def save(folder: Path, name: str, step: int, hashes: dict[str, str] | None = None) -> Path:
    data = ckpt.serialize(fake_state(step))
    ckpt.write_checkpoint(folder, name, data)
    if hashes is not None:
        hashes[name] = ckpt.sha256_bytes(data)
        ckpt.write_manifest(folder, hashes, step // 4, step)
    return folder / name


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a new inode: hard-linked twins stay intact
    path.write_bytes(data[: len(data) // 2])


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    path = save(tmp_path, "last.pth.tar", 5)
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = torch.load(path, weights_only=True)
    ckpt.restore_rng(state["rng"])
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_load_verifies_manifest_and_contents(tmp_path: Path) -> None:
    hashes: dict[str, str] = {}
    path = save(tmp_path, "last.pth.tar", 7, hashes)
    assert ckpt.load_checkpoint(path)["progress"]["global_step"] == 7
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte that a zip reader may not notice
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="MANIFEST"):
        ckpt.load_checkpoint(path)


def test_truncated_and_foreign_files_are_rejected(tmp_path: Path) -> None:
    path = save(tmp_path, "a.pth.tar", 3)
    truncate(path)
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(path)
    torch.save({"hello": 1}, tmp_path / "b.pth.tar")
    with pytest.raises(ckpt.CheckpointError, match="not a kr trainer checkpoint"):
        ckpt.load_checkpoint(tmp_path / "b.pth.tar")
    state = fake_state(1) | {"format_version": FORMAT_VERSION + 1}
    torch.save(state, tmp_path / "c.pth.tar")
    with pytest.raises(ckpt.CheckpointError, match="format"):
        ckpt.load_checkpoint(tmp_path / "c.pth.tar")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pth.tar")


def test_epoch_retention_keeps_the_newest(tmp_path: Path) -> None:
    for epoch in range(1, 8):
        save(tmp_path, ckpt.epoch_file_name("local", "synthetic", epoch), epoch * 4)
    removed = ckpt.prune_epoch_files(tmp_path, keep=5)
    assert sorted(removed) == ["checkpoint_local_synthetic_epoch1.pth.tar", "checkpoint_local_synthetic_epoch2.pth.tar"]
    assert [epoch for epoch, _ in ckpt.epoch_files(tmp_path)] == [7, 6, 5, 4, 3]


def pack_run(out: Path, step: int, keep: int = 3) -> Path:
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    last = save(folder, "last.pth.tar", step)
    best = save(folder, ckpt.best_file_name("hf", "full"), step - 1)
    members = {last: ckpt.sha256_bytes(last.read_bytes()), best: ckpt.sha256_bytes(best.read_bytes())}
    return ckpt.pack(out, members, step // 4, step, keep)


def test_tarball_members_manifest_and_extraction(tmp_path: Path) -> None:
    tarball = pack_run(tmp_path, 9)
    listing = subprocess.run(["tar", "-tzvf", str(tarball)], capture_output=True, text=True, check=True).stdout
    names = sorted(line.split()[-1] for line in listing.splitlines())
    assert names == ["checkpoints/BEST_checkpoint_hf_full.pth.tar", "checkpoints/MANIFEST.json",
                     "checkpoints/last.pth.tar"]
    assert all(line.startswith("-") for line in listing.splitlines())  # regular files, no links
    folder = ckpt.extract_tarball(tarball, tmp_path / "x")
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["step"] == 9 and manifest["format_version"] == FORMAT_VERSION
    assert set(manifest["files"]) == {"last.pth.tar", "BEST_checkpoint_hf_full.pth.tar"}
    assert ckpt.load_checkpoint(folder / "last.pth.tar")["progress"]["global_step"] == 9


def test_timestamped_tarballs_are_pruned(tmp_path: Path) -> None:
    for stamp in ["20260101-000001", "20260101-000002", "20260101-000003"]:
        (tmp_path / f"checkpoints_{stamp}.tar.gz").write_bytes(b"old")
    pack_run(tmp_path, 4, keep=2)
    kept = [p.name for p in ckpt.timestamped_tarballs(tmp_path)]
    assert len(kept) == 2 and kept[1] == "checkpoints_20260101-000003.tar.gz"
    assert (tmp_path / ckpt.TARBALL_NAME).is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_damaged_tarballs_are_detected(tmp_path: Path) -> None:
    tarball = pack_run(tmp_path, 5)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.extract_tarball(truncated, tmp_path / "a")
    # A member whose bytes no longer match the manifest.
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tarball) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("last.pth.tar"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(ckpt.CheckpointError, match="does not match"):
        ckpt.extract_tarball(tampered, tmp_path / "b")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as dst:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        dst.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ckpt.CheckpointError, match="unexpected member"):
        ckpt.extract_tarball(evil, tmp_path / "c")
    assert not (tmp_path / "escape.txt").exists()


def test_latest_prefers_last_then_newest_valid(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert ckpt.find_latest(tmp_path, scratch) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    hashes: dict[str, str] = {}
    save(folder, ckpt.epoch_file_name("local", "synthetic", 1), 4, hashes)
    time.sleep(0.01)
    save(folder, ckpt.epoch_file_name("local", "synthetic", 2), 8, hashes)
    last = save(folder, "last.pth.tar", 10, hashes)
    found = ckpt.find_latest(tmp_path, scratch)
    assert found is not None and found.path == last and found.skipped == []
    truncate(last)
    found = ckpt.find_latest(tmp_path, scratch)
    assert found is not None and found.state["progress"]["global_step"] == 8
    assert len(found.skipped) == 1 and "last.pth.tar" in found.skipped[0]
    for path in folder.glob("*.pth.tar"):
        truncate(path)
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint"):
        ckpt.find_latest(tmp_path, scratch)


def test_latest_falls_back_to_a_tarball(tmp_path: Path) -> None:
    pack_run(tmp_path, 12)
    truncate(tmp_path / "checkpoints" / "last.pth.tar")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    found = ckpt.find_latest(tmp_path, scratch)
    assert found is not None and found.origin.name.endswith(".tar.gz")
    assert found.state["progress"]["global_step"] == 12


def test_best_file_is_carried_into_a_new_working_folder(tmp_path: Path) -> None:
    tarball = pack_run(tmp_path / "old", 6)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    resumed = ckpt.resolve_checkpoint(str(tarball), tmp_path / "new", scratch)
    assert resumed is not None
    target = ckpt.carry_best(resumed, tmp_path / "new" / "checkpoints")
    assert target is not None and target.name == "BEST_checkpoint_hf_full.pth.tar"
    assert ckpt.load_checkpoint(target, expected_sha256=None)["progress"]["global_step"] == 5
    assert os.path.getsize(target) > 0


def test_saves_within_one_second_get_their_own_timestamped_tarballs(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The checkpoint module's clock, standing still inside one second.
    standing = SimpleNamespace(time=lambda: 1_800_000_000.25, strftime=time.strftime, localtime=time.localtime)
    monkeypatch.setattr(ckpt, "time", standing)
    names = []
    for _ in range(3):
        path = ckpt.free_stamped_path(tmp_path)
        path.write_bytes(b"x")
        names.append(path.name)
    assert len(set(names)) == 3 and names == sorted(names)
