"""What a finished session left: verification of its downloaded outputs (the three files, run.json, the
checkpoint tarball against its MANIFEST) and the classification of a kernel that did not complete."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_runner.backends.base import KernelStatus
from kaggle_runner.chain_state import FailureKind
from kaggle_runner.errors import KrError
from kaggle_runner.fsutil import read_json, sha256_file

# Outputs kr downloads from a finished session (architecture.md §3).
OUTPUT_PATTERN = r"^(checkpoints\.tar\.gz|training\.log|run\.json)$"
TARBALL = "checkpoints.tar.gz"
TRAINING_LOG = "training.log"
RUN_JSON = "run.json"
STALE_INPUT_TOKEN = "KR_STALE_INPUT"
STALE_INPUT_EXIT_CODE = 3
# A kernel that ran this fraction of its timeout and ended in ERROR without run.json hit the time limit.
TIME_LIMIT_FRACTION = 0.95
LOG_EXCERPT_LINES = 25


class OutputsInvalid(KrError):
    """Downloaded outputs that do not verify."""


@dataclass(frozen=True)
class VerifiedOutputs:
    sha256: dict[str, str]  # file name -> sha256
    run: dict[str, Any]  # run.json


def verify_outputs(folder: Path, *, chain_id: str, session: int) -> VerifiedOutputs:
    """Check a session's downloaded outputs: the three files, run.json of *this* session with exit code 0,
    and a tarball that reads and whose members match its MANIFEST."""
    for name in (TARBALL, TRAINING_LOG, RUN_JSON):
        if not (folder / name).is_file():
            raise OutputsInvalid(f"{name} is missing from the outputs")
    run = read_run_json(folder / RUN_JSON)
    if run.get("chain") not in (None, chain_id) or run.get("session") not in (None, session):
        raise OutputsInvalid(f"run.json belongs to chain {run.get('chain')} session {run.get('session')}")
    if run.get("exit_code") not in (None, 0):
        raise OutputsInvalid(f"run.json says the trainer exited with {run.get('exit_code')}")
    verify_tarball(folder / TARBALL)
    sha = {name: sha256_file(folder / name) for name in (TARBALL, TRAINING_LOG, RUN_JSON)}
    return VerifiedOutputs(sha256=sha, run=run)


def read_run_json(path: Path) -> dict[str, Any]:
    try:
        run = read_json(path)
    except (ValueError, OSError) as exc:
        raise OutputsInvalid(f"run.json does not parse ({exc})") from None
    if not isinstance(run, dict):
        raise OutputsInvalid("run.json is not an object")
    return run


def verify_tarball(path: Path) -> None:
    """The tarball reads to the end, holds ``checkpoints/last.pth.tar`` and every file its MANIFEST lists
    has the sha256 the MANIFEST says."""
    digests: dict[str, str] = {}
    manifest: dict[str, Any] | None = None
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                data = archive.extractfile(member)
                assert data is not None  # a regular file always has data
                if member.name.endswith("MANIFEST.json"):
                    manifest = json.loads(data.read())
                else:
                    digests[member.name] = _sha256_stream(data)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise OutputsInvalid(f"{path.name} does not read as a tar.gz ({exc})") from None
    if "checkpoints/last.pth.tar" not in digests:
        raise OutputsInvalid(f"{path.name} holds no checkpoints/last.pth.tar")
    _check_manifest(manifest, digests, path.name)


def _check_manifest(manifest: dict[str, Any] | None, digests: dict[str, str], tar_name: str) -> None:
    if manifest is None:
        return  # an older trainer wrote no manifest: readable is all we can check
    by_base = {Path(name).name: sha for name, sha in digests.items()}
    for name, expected in (manifest.get("files") or {}).items():
        actual = digests.get(name) or by_base.get(Path(name).name)
        if actual != expected:
            raise OutputsInvalid(f"{tar_name}: {name} does not match its MANIFEST sha256")


def _sha256_stream(handle: Any) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def classify_failure(
    status: KernelStatus, log_text: str, run: dict[str, Any] | None, *, ran_s: float | None, timeout_s: float
) -> FailureKind:
    """Why a kernel version ended without completing. Pure, so every branch is tested directly."""
    if STALE_INPUT_TOKEN in log_text or STALE_INPUT_TOKEN in (status.failure_message or ""):
        return FailureKind.STALE_INPUT
    if run is not None and run.get("exit_code") == STALE_INPUT_EXIT_CODE:
        return FailureKind.STALE_INPUT
    if run is not None and run.get("stop_reason") == "diverged":
        return FailureKind.DIVERGED
    # A positive exit code is the trainer's own failure; a negative one is the signal of the kill.
    exit_code = run.get("exit_code") if run is not None else None
    trainer_crashed = isinstance(exit_code, int) and exit_code > 0
    if not trainer_crashed and _looks_like_time_limit(status.failure_message, ran_s, timeout_s):
        return FailureKind.TIME_LIMIT
    return FailureKind.KERNEL_ERROR


_TIME_LIMIT_WORDS = re.compile(
    r"time ?limit|timeout|timed out|exceeded .*(time|hours|seconds)", re.IGNORECASE
)


def _looks_like_time_limit(message: str | None, ran_s: float | None, timeout_s: float) -> bool:
    if message and _TIME_LIMIT_WORDS.search(message):
        return True
    return ran_s is not None and ran_s >= TIME_LIMIT_FRACTION * timeout_s


def log_excerpt(text: str, lines: int = LOG_EXCERPT_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
