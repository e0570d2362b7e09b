"""``kr-marker.json``: which chain and session a checkpoint dataset version holds.

kr publishes it next to ``checkpoints.tar.gz`` with every dataset version; the kernel of the next session
checks it before resuming, so that a kernel that mounted an older version (Kaggle does not say which version a
fresh push mounts) stops at once instead of training from stale weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kr_contract.atomic import atomic_write_json, sha256_file
from kr_contract.errors import ContractError
from kr_contract.names import MARKER_FILE
from kr_contract.tarball import tarball_manifest

# What the kernel compares with what it expects; epoch and step are informational.
CHECKED_FIELDS = ("chain", "session", "sha256")


@dataclass(frozen=True)
class Marker:
    chain: str
    session: int
    sha256: str  # of checkpoints.tar.gz
    epoch: int | None = None
    step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def expectation(self) -> dict[str, Any]:
        """The fields a kernel checks, as rendered into its settings."""
        return {name: getattr(self, name) for name in CHECKED_FIELDS}

    @classmethod
    def from_json(cls, data: object) -> Marker:
        if not isinstance(data, dict):
            raise ContractError(f"{MARKER_FILE} is not a JSON object")
        chain, session, sha256 = data.get("chain"), data.get("session"), data.get("sha256")
        if not isinstance(chain, str) or not isinstance(session, int) or isinstance(session, bool) \
                or not isinstance(sha256, str):
            raise ContractError(f"{MARKER_FILE} needs chain (text), session (number) and sha256 (text)")
        epoch, step = data.get("epoch"), data.get("step")
        return cls(chain, session, sha256, epoch if _is_int(epoch) else None, step if _is_int(step) else None)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def marker_problem(found: dict[str, Any] | None, expected: dict[str, Any]) -> str | None:
    """What is wrong with a marker (``found``, None when absent) for a session expecting ``expected``
    ({chain, session, sha256}); None when it matches."""
    if found is None:
        return f"no {MARKER_FILE} in the mounted datasets (the new dataset version is not mounted yet?)"
    for name in CHECKED_FIELDS:
        if found.get(name) != expected.get(name):
            return f"{MARKER_FILE} has {name}={found.get(name)!r}, this session expects {expected.get(name)!r}"
    return None


def write_marker(folder: str | os.PathLike[str], chain: str, session: int, tarball: str | os.PathLike[str]) -> Marker:
    """Write ``folder/kr-marker.json`` for ``tarball``: its sha256 and its manifest's epoch and step."""
    manifest = tarball_manifest(tarball)
    marker = Marker(chain=chain, session=session, sha256=sha256_file(tarball),
                    epoch=manifest.epoch if manifest else None, step=manifest.step if manifest else None)
    atomic_write_json(Path(folder) / MARKER_FILE, marker.to_json())
    return marker


def read_marker(folder: str | os.PathLike[str]) -> Marker | None:
    """The marker in ``folder``; None when there is none. A malformed one is a ContractError."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContractError(f"{path} does not parse: {exc}") from None
    return Marker.from_json(data)
