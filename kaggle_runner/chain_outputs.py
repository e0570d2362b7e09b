"""What a finished session left: verification of its downloaded outputs (the three files, run.json, the
checkpoint tarball through the contract's one verifier) and the classification of a kernel that did not
complete."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_runner.backends.base import KernelStatus
from kaggle_runner.chain_machine import FailureKind
from kaggle_runner.errors import KrError
from kr_contract.atomic import sha256_file
from kr_contract.errors import ContractError
from kr_contract.names import (
    EXIT_STALE_INPUT,
    EXIT_STALLED,
    OUTPUT_FILES,
    RUN_JSON,
    STOP_DIVERGED,
    STOP_STALLED,
    TAG_STALE_INPUT,
    TAG_STALLED,
    TARBALL,
)
from kr_contract.runjson import read_run_json
from kr_contract.tarball import Manifest, verify_tarball

# A kernel that ran this fraction of its timeout and ended in ERROR without run.json hit the time limit.
TIME_LIMIT_FRACTION = 0.95
LOG_EXCERPT_LINES = 25


class OutputsInvalid(KrError):
    """Downloaded outputs that do not verify."""


@dataclass(frozen=True)
class VerifiedOutputs:
    sha256: dict[str, str]  # file name -> sha256
    run: dict[str, Any]  # run.json
    manifest: Manifest  # of the checkpoint tarball: its files, epoch and step


def verify_outputs(folder: Path, *, chain_id: str, session: int, salvage: bool = False) -> VerifiedOutputs:
    """Check a session's downloaded outputs: the three files, run.json of *this* session with exit code 0
    (any exit code with ``salvage``: a killed or stalled kernel), and a tarball that ``kr_contract``'s verifier
    accepts (it reads, has a MANIFEST, and every member matches it), so that nothing is published that the
    next session's kernel would refuse."""
    for name in OUTPUT_FILES:
        if not (folder / name).is_file():
            raise OutputsInvalid(f"{name} is missing from the outputs")
    try:
        run = read_run_json(folder / RUN_JSON)
    except ContractError as exc:
        raise OutputsInvalid(str(exc)) from None
    if run.get("chain") not in (None, chain_id) or run.get("session") not in (None, session):
        raise OutputsInvalid(f"run.json belongs to chain {run.get('chain')} session {run.get('session')}")
    if not salvage and run.get("exit_code") not in (None, 0):
        raise OutputsInvalid(f"run.json says the trainer exited with {run.get('exit_code')}")
    try:
        manifest = verify_tarball(folder / TARBALL)
    except ContractError as exc:
        raise OutputsInvalid(str(exc)) from None
    sha = {name: sha256_file(folder / name) for name in OUTPUT_FILES}
    return VerifiedOutputs(sha256=sha, run=run, manifest=manifest)


def classify_failure(
    status: KernelStatus, log_text: str, run: dict[str, Any] | None, *, ran_s: float | None, timeout_s: float
) -> FailureKind:
    """Why a kernel version ended without completing. Pure, so every branch is tested directly."""
    if TAG_STALE_INPUT in log_text or TAG_STALE_INPUT in (status.failure_message or ""):
        return FailureKind.STALE_INPUT
    if run is not None and run.get("exit_code") == EXIT_STALE_INPUT:
        return FailureKind.STALE_INPUT
    if run is not None and (run.get("stop_reason") == STOP_STALLED or run.get("exit_code") == EXIT_STALLED):
        return FailureKind.STALLED
    if run is None and TAG_STALLED in log_text:
        return FailureKind.STALLED  # the watchdog said so, and the kernel died before writing run.json
    if run is not None and run.get("stop_reason") == STOP_DIVERGED:
        return FailureKind.DIVERGED
    # A positive exit code is the trainer's own failure; a negative one is the signal of the kill.
    exit_code = run.get("exit_code") if run is not None else None
    trainer_crashed = isinstance(exit_code, int) and exit_code > 0
    if not trainer_crashed and _looks_like_time_limit(status.failure_message, ran_s, timeout_s):
        return FailureKind.TIME_LIMIT
    return FailureKind.KERNEL_ERROR


_TIME_LIMIT_WORDS = re.compile(r"time ?limit|timeout|timed out|exceeded .*(time|hours|seconds)", re.IGNORECASE)


def _looks_like_time_limit(message: str | None, ran_s: float | None, timeout_s: float) -> bool:
    if message and _TIME_LIMIT_WORDS.search(message):
        return True
    return ran_s is not None and ran_s >= TIME_LIMIT_FRACTION * timeout_s


def log_excerpt(text: str, lines: int = LOG_EXCERPT_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
