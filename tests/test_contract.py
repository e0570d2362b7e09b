"""The contract package: the one tarball writer and verifier, the marker, metric lines, run.json, heartbeats."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kr_contract import names
from kr_contract.atomic import sha256_file
from kr_contract.errors import ContractError
from kr_contract.heartbeat import Heartbeat, read_heartbeat
from kr_contract.marker import Marker, marker_problem, read_marker, write_marker
from kr_contract.metric_lines import metric_line, parse_metric_line
from kr_contract.runjson import read_run_json, write_run_json
from kr_contract.tarball import (
    Manifest,
    extract_tarball,
    pack_tarball,
    tarball_manifest,
    verify_folder,
    verify_tarball,
    write_manifest,
)

REPO = Path(__file__).resolve().parent.parent


def _checkpoints(folder: Path) -> dict[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in ((names.LAST_CHECKPOINT, b"last state" * 30000), ("BEST_checkpoint_local_synthetic.pth.tar", b"best")):
        (folder / name).write_bytes(data)
        files[folder / name] = sha256_file(folder / name)
    return files


def _tarball(tmp_path: Path) -> Path:
    dest = tmp_path / names.TARBALL
    pack_tarball(dest, _checkpoints(tmp_path / "src"), epoch=2, step=40, format_version=1)
    return dest


def _write_raw_tarball(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)


def _manifest_bytes(files: dict[str, bytes]) -> bytes:
    import hashlib

    return json.dumps({"files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}).encode()


def test_packed_tarball_verifies_and_extracts(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path)
    manifest = verify_tarball(tarball)
    assert (manifest.epoch, manifest.step, manifest.format_version) == (2, 40, 1)
    assert set(manifest.files) == {names.LAST_CHECKPOINT, "BEST_checkpoint_local_synthetic.pth.tar"}
    folder = extract_tarball(tarball, tmp_path / "out")
    assert (folder / names.LAST_CHECKPOINT).read_bytes() == b"last state" * 30000
    assert tarball_manifest(tarball) == manifest
    with tarfile.open(tarball, "r:gz") as tar:  # plain tar can read it
        assert names.MANIFEST_MEMBER in tar.getnames()


@pytest.mark.parametrize(
    "members, problem",
    [
        ({"checkpoints/last.pth.tar": b"x"}, "has no checkpoints/MANIFEST.json"),
        ({"checkpoints/BEST_x.pth.tar": b"x", "checkpoints/MANIFEST.json": _manifest_bytes({"BEST_x.pth.tar": b"x"})},
         "does not list last.pth.tar"),
        ({"checkpoints/last.pth.tar": b"changed", "checkpoints/MANIFEST.json": _manifest_bytes({"last.pth.tar": b"x"})},
         "does not match its sha256"),
        ({"checkpoints/MANIFEST.json": _manifest_bytes({"last.pth.tar": b"x"})}, "is missing"),
        ({"checkpoints/last.pth.tar": b"x", "checkpoints/extra.pth.tar": b"y",
          "checkpoints/MANIFEST.json": _manifest_bytes({"last.pth.tar": b"x"})}, "is not listed"),
        ({"../escape": b"x"}, "unexpected member"),
        ({"checkpoints/sub/last.pth.tar": b"x"}, "unexpected member"),
    ],
)
def test_verifier_refuses_tarballs_kr_did_not_pack(tmp_path: Path, members: dict[str, bytes], problem: str) -> None:
    path = tmp_path / names.TARBALL
    _write_raw_tarball(path, members)
    with pytest.raises(ContractError, match=problem):
        verify_tarball(path)
    with pytest.raises(ContractError, match=problem):
        extract_tarball(path, tmp_path / "scratch")


def test_verifier_refuses_links_and_truncation(tmp_path: Path) -> None:
    linked = tmp_path / "linked.tar.gz"
    _write_raw_tarball(linked, {}, symlink="checkpoints/last.pth.tar")
    with pytest.raises(ContractError, match="unexpected member"):
        verify_tarball(linked)
    good = _tarball(tmp_path)
    for keep in (good.stat().st_size // 2, good.stat().st_size - 100):  # in a member, in the end padding
        cut = tmp_path / "cut.tar.gz"
        cut.write_bytes(good.read_bytes()[:keep])
        with pytest.raises(ContractError, match="truncated or corrupt"):
            verify_tarball(cut)


def test_verify_folder_checks_each_listed_file(tmp_path: Path) -> None:
    files = _checkpoints(tmp_path / "ck")
    write_manifest(tmp_path / "ck", Manifest({p.name: d for p, d in files.items()}, 1, 5, 1))
    assert verify_folder(tmp_path / "ck").step == 5
    (tmp_path / "ck" / names.LAST_CHECKPOINT).write_bytes(b"flipped")
    with pytest.raises(ContractError, match="does not match"):
        verify_folder(tmp_path / "ck")


def test_marker_round_trip_and_problems(tmp_path: Path) -> None:
    tarball = _tarball(tmp_path)
    marker = write_marker(tmp_path, "chain-x", 2, tarball)
    assert (marker.epoch, marker.step, marker.sha256) == (2, 40, sha256_file(tarball))
    assert read_marker(tmp_path) == marker
    expected = marker.expectation()
    assert marker_problem(marker.to_json(), expected) is None
    assert "session=1" in (marker_problem({**marker.to_json(), "session": 1}, expected) or "")
    assert "no kr-marker.json" in (marker_problem(None, expected) or "")
    (tmp_path / names.MARKER_FILE).write_text("{not json")
    with pytest.raises(ContractError):
        read_marker(tmp_path)
    with pytest.raises(ContractError):
        Marker.from_json({"chain": "c", "session": True, "sha256": "x"})


def test_metric_lines_round_trip_and_free_text() -> None:
    message = metric_line("val", epoch=3, step=900, bleu4=0.45, lr=3e-4, path="a b")
    assert message == "val epoch=3 step=900 bleu4=0.4500 lr=3.000e-04 path=a_b"
    parsed = parse_metric_line(f"2026-11-26 23:12:00 INFO {message}")
    assert parsed is not None and parsed.kind == "val" and parsed.fields["step"] == 900
    assert parsed.timestamp is not None and parsed.timestamp.minute == 12
    assert parse_metric_line("12.5s 2026-11-26 23:12:00 INFO train step=3 loss=1.5") is not None  # Kaggle prefix
    assert parse_metric_line("2026-11-26 23:12:00 INFO resuming with seed=3 as before") is None
    with pytest.raises(ValueError, match="unknown metric kind"):
        metric_line("nonsense", a=1)


def test_run_json_has_exactly_the_contract_fields(tmp_path: Path) -> None:
    path = write_run_json(tmp_path, {"chain": "c", "session": 1, "exit_code": 0, "stop_reason": "max_epochs"})
    run = read_run_json(path)
    assert run["stall"] is None and run["exit_code"] == 0
    with pytest.raises(ValueError, match="no field"):
        write_run_json(tmp_path, {"chian": "typo"})
    path.write_text("[1]")
    with pytest.raises(ContractError, match="not a JSON object"):
        read_run_json(path)


def test_heartbeat_is_throttled_per_phase_and_silent_without_a_folder(tmp_path: Path) -> None:
    now = [100.0]
    beat = Heartbeat(tmp_path, clock=lambda: now[0])
    beat.beat("train", step=1)
    now[0] += 1
    beat.beat("train", step=2)  # dropped: within the interval, same phase
    assert read_heartbeat(tmp_path)["step"] == 1
    beat.beat("validate", step=2)  # a new phase always beats
    assert read_heartbeat(tmp_path)["phase"] == "validate"
    now[0] += 10
    beat.beat("validate", step=3, batches=4)
    record = read_heartbeat(tmp_path)
    assert record["time"] == 111.0 and record["detail"] == {"batches": 4}
    Heartbeat(None).beat("train", step=9)
    Heartbeat(tmp_path / "rank1", enabled=False).beat("train", step=9)
    assert not (tmp_path / "rank1").exists()


def test_contract_imports_only_the_standard_library() -> None:
    code = (
        "import sys, kr_contract.names, kr_contract.atomic, kr_contract.tarball, kr_contract.marker, "
        "kr_contract.metric_lines, kr_contract.runjson, kr_contract.heartbeat\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('kaggle_runner', 'trainer', 'kr_kernel', 'torch', 'numpy', 'jinja2', 'typer'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-I", "-c", code], cwd=REPO, check=True)
