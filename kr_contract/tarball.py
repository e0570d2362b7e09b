"""The checkpoint tarball and its MANIFEST: the one writer and the one verifier every side uses.

``checkpoints.tar.gz`` holds ``checkpoints/<name>`` regular files and ``checkpoints/MANIFEST.json``:
``{"files": {name: sha256}, "epoch": E, "step": S, "format_version": V}``, one entry per checkpoint file in
the tarball, ``last.pth.tar`` among them. The trainer's ``checkpoints/`` folder has a MANIFEST.json of the
same form listing every checkpoint file there.

A tarball is valid when it reads to the end, holds nothing but such files (no links, devices or paths that
leave ``checkpoints/``), has a MANIFEST, lists ``last.pth.tar``, and every file it holds is listed with the
sha256 it has. kr checks this before it publishes a tarball, the kernel before it resumes from one, the
trainer before it loads one: what one accepts, all accept.

The gzip framing stores deflate blocks (level 0): float weights shrink only ~7 % at level 1, which cost 34 s
per pack of the base model on a Kaggle-class CPU against under 1 s stored; it is still a gzip file that
``tar -tzf`` and ``tarfile`` "r:gz" read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kr_contract.atomic import atomic_write_json, read_json_object, sha256_file
from kr_contract.errors import ContractError
from kr_contract.names import CHECKPOINT_DIR, LAST_CHECKPOINT, MANIFEST_NAME

GZIP_LEVEL = 0
_MEMBER_RE = re.compile(r"^checkpoints/([A-Za-z0-9_][A-Za-z0-9_.\-]*)$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Manifest:
    files: dict[str, str]  # file name inside checkpoints/ -> sha256
    epoch: int | None = None
    step: int | None = None
    format_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"files": dict(sorted(self.files.items())), "epoch": self.epoch, "step": self.step,
                "format_version": self.format_version}

    @classmethod
    def from_json(cls, data: object, where: str) -> Manifest:
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ContractError(f"{where}: {MANIFEST_NAME} has no valid 'files' table")
        assert isinstance(data, dict)
        return cls({str(k): v for k, v in files.items()}, _int_or_none(data.get("epoch")),
                   _int_or_none(data.get("step")), _int_or_none(data.get("format_version")))


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ------------------------------------------------------------------------------------------- manifests


def read_manifest(folder: str | os.PathLike[str]) -> Manifest | None:
    """The MANIFEST.json of a checkpoints folder; None when it has none or it does not parse."""
    data = read_json_object(Path(folder) / MANIFEST_NAME)
    if data is None:
        return None
    try:
        return Manifest.from_json(data, str(folder))
    except ContractError:
        return None


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    atomic_write_json(Path(folder) / MANIFEST_NAME, manifest.to_json())


def verify_folder(folder: str | os.PathLike[str]) -> Manifest:
    """A checkpoints folder whose MANIFEST lists last.pth.tar and whose listed files all match."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise ContractError(f"{folder} has no valid {MANIFEST_NAME}")
    _require_last(manifest, str(folder))
    for name, expected in sorted(manifest.files.items()):
        path = folder / name
        if not path.is_file() or sha256_file(path) != expected:
            raise ContractError(f"{folder}: {name} is missing or does not match its {MANIFEST_NAME} sha256")
    return manifest


def _require_last(manifest: Manifest, where: str) -> None:
    if LAST_CHECKPOINT not in manifest.files:
        raise ContractError(f"{where}: its {MANIFEST_NAME} does not list {LAST_CHECKPOINT}")


# -------------------------------------------------------------------------------------------- writing


def pack_tarball(dest: str | os.PathLike[str], members: Mapping[Path, str], *, epoch: int, step: int,
                 format_version: int) -> Manifest:
    """Write ``dest`` atomically: ``members`` (path -> its sha256) as ``checkpoints/<name>`` plus a MANIFEST of
    them. Regular members only, so any tar extracts it."""
    dest = Path(dest)
    manifest = Manifest({path.name: digest for path, digest in members.items()}, epoch, step, format_version)
    _require_last(manifest, str(dest))
    encoded = json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=GZIP_LEVEL) as tar:
                for path in members:
                    with path.open("rb") as source:
                        _add_regular(tar, f"{CHECKPOINT_DIR}/{path.name}", path.stat().st_size, source)
                _add_regular(tar, f"{CHECKPOINT_DIR}/{MANIFEST_NAME}", len(encoded), io.BytesIO(encoded))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return manifest


def _add_regular(tar: tarfile.TarFile, name: str, size: int, fileobj: IO[bytes]) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, fileobj)


# ------------------------------------------------------------------------------------------- reading


def verify_tarball(path: str | os.PathLike[str]) -> Manifest:
    """Read the whole tarball and check it (module docstring); its manifest, or ContractError."""
    return _read_tarball(Path(path), None)


def extract_tarball(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Verify and extract into ``dest/checkpoints`` (returned), its MANIFEST.json included, so that the folder
    is one ``verify_folder`` accepts and a reader can check each file's sha256 again. On ContractError, what was
    extracted stays in ``dest`` for the caller to remove (it is the caller's scratch folder)."""
    folder = Path(dest) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, _read_tarball(Path(path), folder))
    return folder


def tarball_manifest(path: str | os.PathLike[str]) -> Manifest | None:
    """The MANIFEST of a tarball without hashing its members (epoch and step for a marker); None if absent."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile(f"{CHECKPOINT_DIR}/{MANIFEST_NAME}")
            data = json.load(member) if member is not None else None
    except (KeyError, OSError, EOFError, tarfile.TarError, ValueError):
        return None
    try:
        return Manifest.from_json(data, str(path))
    except ContractError:
        return None


def _read_tarball(path: Path, extract_to: Path | None) -> Manifest:
    """One pass over the members: hash each (and write it when extracting), then check the manifest."""
    where = path.name
    digests: dict[str, str] = {}
    manifest_data: object = None
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = _member_name(member, where)
                if name is None:
                    continue
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has data
                if name == MANIFEST_NAME:
                    manifest_data = json.loads(source.read())
                else:
                    digests[name] = _hash_member(source, extract_to / name if extract_to else None)
            _drain(tar)
    except ContractError:
        raise
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        raise ContractError(f"{where} does not read as a tar.gz ({type(exc).__name__}: {_first_line(exc)}): "
                            "it is truncated or corrupt") from None
    if manifest_data is None:
        raise ContractError(f"{where} has no {CHECKPOINT_DIR}/{MANIFEST_NAME}: it was not packed by kr")
    manifest = Manifest.from_json(manifest_data, where)
    _require_last(manifest, where)
    _match(manifest, digests, where)
    return manifest


def _drain(tar: tarfile.TarFile) -> None:
    """Read the gzip stream to its end, so that its length and CRC are checked even when the cut falls in
    the tar's end padding (the members before it would all hash right)."""
    stream = tar.fileobj
    if stream is not None:
        while stream.read(_CHUNK):
            pass


def _member_name(member: tarfile.TarInfo, where: str) -> str | None:
    """The file name inside checkpoints/ of a regular member; None for the checkpoints folder entry itself."""
    if member.isdir() and member.name.rstrip("/") == CHECKPOINT_DIR:
        return None
    match = _MEMBER_RE.match(member.name)
    if not member.isfile() or match is None:
        raise ContractError(f"{where}: unexpected member {member.name!r} (only regular files in "
                            f"{CHECKPOINT_DIR}/ belong in a kr checkpoints tarball)")
    return match.group(1)


def _hash_member(source: IO[bytes], target: Path | None) -> str:
    digest = hashlib.sha256()
    sink = open(target, "wb") if target is not None else None  # noqa: SIM115 - closed below
    try:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            digest.update(chunk)
            if sink is not None:
                sink.write(chunk)
    finally:
        if sink is not None:
            sink.close()
    return digest.hexdigest()


def _match(manifest: Manifest, digests: dict[str, str], where: str) -> None:
    for name, expected in sorted(manifest.files.items()):
        if name not in digests:
            raise ContractError(f"{where}: {CHECKPOINT_DIR}/{name} listed in {MANIFEST_NAME} is missing")
        if digests[name] != expected:
            raise ContractError(f"{where}: {CHECKPOINT_DIR}/{name} does not match its sha256 in {MANIFEST_NAME}")
    unlisted = sorted(set(digests) - set(manifest.files))
    if unlisted:
        raise ContractError(f"{where}: {CHECKPOINT_DIR}/{unlisted[0]} is not listed in its {MANIFEST_NAME}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else ""
