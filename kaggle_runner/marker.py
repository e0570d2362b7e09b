"""``kr-marker.json``: the small file that says which chain and session a checkpoint dataset version holds.

The chain publishes it next to ``checkpoints.tar.gz`` with every dataset version; the kernel script of the next
session checks it before resuming, so that a kernel that mounted an older version (Kaggle does not say which
version a fresh push mounts) fails fast instead of training from stale weights.

This module is the one source of truth for the file's name and fields: ``kaggle_runner.render`` inlines
``marker_problem`` (standard library only) into the kernel script.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kaggle_runner.errors import KrError
from kaggle_runner.fsutil import atomic_write_json, sha256_file
from kr_contract.marker import Marker

MARKER_FILE = "kr-marker.json"
TARBALL_FILE = "checkpoints.tar.gz"
LOG_FILE = "training.log"
MANIFEST_MEMBER = "checkpoints/MANIFEST.json"
# Fields the kernel compares with what it expects; epoch and step are informational.
CHECKED_FIELDS = ("chain", "session", "sha256")


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def marker_problem(found: dict | None, expected: dict) -> str | None:
    """What is wrong with a ``kr-marker.json`` (``found``, None when absent) for a session that expects the
    checkpoint ``expected`` ({chain, session, sha256}); None when it matches. Standard library only: the kernel
    script carries a copy of this function."""
    if found is None:
        return "no kr-marker.json in the mounted datasets (the new dataset version is not mounted yet?)"
    for name in ("chain", "session", "sha256"):
        if found.get(name) != expected.get(name):
            return (
                f"kr-marker.json has {name}={found.get(name)!r}, this session expects {expected.get(name)!r}"
            )
    return None


def tarball_progress(tarball: Path) -> tuple[int | None, int | None]:
    """(epoch, step) recorded in the tarball's MANIFEST.json, or (None, None) when it has none."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            member = archive.extractfile(MANIFEST_MEMBER)
            manifest = json.load(member) if member is not None else {}
    except (KeyError, OSError, tarfile.TarError, ValueError):
        return None, None
    if not isinstance(manifest, dict):
        return None, None
    return _optional_int(manifest.get("epoch")), _optional_int(manifest.get("step"))


def write_marker(folder: Path, chain: str, session: int, tarball: Path) -> Marker:
    """Write ``folder/kr-marker.json`` for ``tarball`` (its sha256, and the epoch/step of its manifest)."""
    epoch, step = tarball_progress(tarball)
    marker = Marker(chain=chain, session=session, sha256=sha256_file(tarball), epoch=epoch, step=step)
    atomic_write_json(Path(folder) / MARKER_FILE, marker.to_json())
    return marker


def read_marker(folder: Path) -> Marker | None:
    """The marker in ``folder``, or None when there is none. A malformed one is an error, never ignored."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        return Marker.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise KrError(f"{path} is malformed: {exc}", "republish the checkpoint dataset version") from None
