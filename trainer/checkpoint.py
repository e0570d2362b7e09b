"""Checkpoint files, their manifest, retention, tarballs, and finding the state to resume from.

A checkpoint is a plain dict of tensors and primitives (``torch.load(weights_only=True)``). Layout in OUT_DIR
(docs/architecture.md §2):

    checkpoints/last.pth.tar                                     newest resumable state
    checkpoints/checkpoint_{hf|local}_{data_name}_epoch{N}.pth.tar  newest ``keep`` epochs
    checkpoints/BEST_checkpoint_{hf|local}_{data_name}.pth.tar   weights only (see weights_only)
    checkpoints/MANIFEST.json   {"files": {file name: sha256}, "epoch", "step", "format_version"}
    checkpoints.tar.gz, checkpoints_{YYYYmmdd-HHMMSS}.tar.gz      last + BEST + their own MANIFEST.json

``last`` and the epoch files are full training states (exact resume). BEST_ is weights only: what inference,
evaluation and a restart from the best weights need, without the optimizer, scaler, RNG states or loss window,
so it is about a third of a full state and each chain link moves a third less data. BEST_ files written before
that change are full states and still load.

Every file is written to a temp file and renamed. The manifest lets a reader tell a corrupt file from a good
one (a truncated zip fails to load; flipped bytes only show in the hash). The file names, the tarball writer
and its one verifier are the contract's (``kr_contract.names``, ``kr_contract.tarball``): what kr publishes and
the kernel unpacks is what this module reads.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from kr_contract import tarball
from kr_contract.atomic import atomic_write_bytes, sha256_file
from kr_contract.errors import ContractError
from kr_contract.names import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    MANIFEST_NAME,
    TARBALL,
    TIMESTAMPED_TARBALL_PREFIX,
    best_checkpoint_name,
    epoch_checkpoint_name,
    is_best_name,
)
from trainer import FORMAT_VERSION

__all__ = ["CHECKPOINT_DIR", "MANIFEST_NAME", "is_best_name", "sha256_file"]  # the contract's, used by callers

# The contract's names under the names this module's callers know.
LAST_NAME = LAST_CHECKPOINT
TARBALL_NAME = TARBALL
TARBALL_PREFIX = TIMESTAMPED_TARBALL_PREFIX
epoch_file_name = epoch_checkpoint_name
best_file_name = best_checkpoint_name
# Every checkpoint has these; a full (resumable) state also has TRAINING_KEYS.
REQUIRED_KEYS = ("format_version", "model", "model_config", "progress", "vocab", "schedule")
TRAINING_KEYS = ("optimizer", "rng")
# What only an exact resume needs; weights_only drops them (the optimizer's AdamW moments are 2/3 of a state).
RESUME_ONLY_KEYS = ("optimizer", "scaler", "rng", "rng_by_rank", "loss_window")
_EPOCH_RE = re.compile(r"^checkpoint_(hf|local)_(.+)_epoch(\d+)\.pth\.tar$")
_TIMESTAMPED_RE = re.compile(r"^checkpoints_\d{8}-\d{6}\.tar\.gz$")


class CheckpointError(Exception):
    """A checkpoint or tarball that cannot be used; the message names the file and what to do."""


def source_tag(use_huggingface: bool) -> str:
    return "hf" if use_huggingface else "local"


# ------------------------------------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """Every RNG the training consumes, as tensors and primitives (weights_only-safe)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = cast(tuple, np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# --------------------------------------------------------------------------------------- save and load


def serialize(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def weights_only(state: dict[str, Any]) -> dict[str, Any]:
    """The BEST_ form of a full state: the same dict without what only an exact resume needs."""
    return {key: value for key, value in state.items() if key not in RESUME_ONLY_KEYS}


def is_weights_only(state: dict[str, Any]) -> bool:
    """True for a BEST_ written as weights only (no optimizer or RNG states: not an exact resume)."""
    return any(key not in state for key in TRAINING_KEYS)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(ckpt_dir: Path, name: str, data: bytes) -> None:
    atomic_write_bytes(ckpt_dir / name, data, mode=0o644)


def link_or_copy(src: Path, dst: Path) -> None:
    """Give ``dst`` the content of ``src`` atomically; a hard link costs no disk time when the file system
    allows it (a later save replaces the name, never the shared content)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The folder's MANIFEST.json as a dict; ``{"files": {}}`` when it has none or it does not parse."""
    manifest = tarball.read_manifest(directory)
    return manifest.to_json() if manifest is not None else {"files": {}}


def write_manifest(directory: Path, hashes: dict[str, str], epoch: int, step: int) -> None:
    """The manifest lists exactly the checkpoint files present, with their sha256."""
    tarball.write_manifest(directory, tarball.Manifest(dict(hashes), epoch, step, FORMAT_VERSION))


def load_checkpoint(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Load and verify one checkpoint file; CheckpointError says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass an existing file or --checkpoint latest")
    if expected_sha256 is None:
        expected_sha256 = read_manifest(path.parent)["files"].get(path.name)
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CheckpointError(f"checkpoint {path} does not match its MANIFEST.json sha256 (corrupt or truncated)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, pickle errors... for damaged files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {_first_line(exc)}): "
                              "it is truncated or corrupt; use another one or --checkpoint latest") from None
    _check_contents(path, state)
    return state


def _check_contents(path: Path, state: Any) -> None:
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a kr trainer checkpoint (missing keys): pass a file this trainer wrote")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {state['format_version']}, this trainer reads "
                              f"{FORMAT_VERSION}: use the trainer version that wrote it")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else ""


# -------------------------------------------------------------------------------------------- retention


def epoch_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Epoch checkpoints, newest epoch first."""
    found = []
    for path in ckpt_dir.glob("checkpoint_*_epoch*.pth.tar"):
        match = _EPOCH_RE.match(path.name)
        if match:
            found.append((int(match.group(3)), path))
    return sorted(found, reverse=True)


def prune_epoch_files(ckpt_dir: Path, keep: int) -> list[str]:
    removed = []
    for _, path in epoch_files(ckpt_dir)[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


# --------------------------------------------------------------------------------------------- tarballs


def pack(out_dir: Path, members: dict[Path, str], epoch: int, step: int, keep_timestamped: int) -> Path:
    """Write a timestamped tarball holding ``members`` (path -> sha256) and a MANIFEST.json of them (the
    contract's writer), then point checkpoints.tar.gz at it; old timestamped tarballs are pruned."""
    stamped = free_stamped_path(out_dir)
    tarball.pack_tarball(stamped, members, epoch=epoch, step=step, format_version=FORMAT_VERSION)
    link_or_copy(stamped, out_dir / TARBALL_NAME)
    prune_tarballs(out_dir, keep_timestamped)
    return out_dir / TARBALL_NAME


def free_stamped_path(out_dir: Path) -> Path:
    """``checkpoints_{YYYYmmdd-HHMMSS}.tar.gz`` for now, or for the next second no tarball has: two saves in one
    second must not share a name (the second would replace the first, and retention would keep one state
    fewer). Within a run the names still sort in the order of the saves."""
    stamp = time.time()
    while True:
        path = out_dir / f"{TARBALL_PREFIX}{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}.tar.gz"
        if not path.exists():
            return path
        stamp += 1


def timestamped_tarballs(out_dir: Path) -> list[Path]:
    """Newest first (the timestamp sorts as text)."""
    return sorted((p for p in out_dir.glob(f"{TARBALL_PREFIX}*.tar.gz") if _TIMESTAMPED_RE.match(p.name)),
                  reverse=True)


def prune_tarballs(out_dir: Path, keep: int) -> None:
    for path in timestamped_tarballs(out_dir)[keep:]:
        path.unlink(missing_ok=True)


def extract_tarball(path: Path, dest: Path) -> Path:
    """Extract a checkpoints tarball into ``dest`` after the contract's checks (every member a plain
    ``checkpoints/<name>`` file listed in its MANIFEST.json with the sha256 it has). Returns the folder."""
    try:
        return tarball.extract_tarball(path, dest)
    except ContractError as exc:
        raise CheckpointError(f"{exc}; use an older checkpoints_*.tar.gz or another checkpoint") from None


# ------------------------------------------------------------------------------------ what to resume


@dataclass
class Resumed:
    """A loaded checkpoint, where it came from, and what was skipped on the way."""

    state: dict[str, Any]
    path: Path  # the .pth.tar file the state came from (inside a scratch folder for a tarball)
    origin: Path  # what the user named or what `latest` picked: a file or a tarball
    folder: Path  # the folder that held it (siblings such as BEST_ live there)
    skipped: list[str] = field(default_factory=list)


def resolve_checkpoint(spec: str, out_dir: Path, scratch: Path) -> Resumed | None:
    """``spec`` is a path (checkpoint file or tarball) or ``latest``. None: ``latest`` found nothing at all."""
    if spec == "latest":
        return find_latest(out_dir, scratch)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass an existing file or --checkpoint latest")
    return load_candidate(path, scratch)


def load_candidate(path: Path, scratch: Path) -> Resumed:
    """A checkpoint file, a checkpoints tarball, or a folder (an out_dir or its checkpoints folder)."""
    if path.is_dir():
        folder = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
        return load_from_folder(folder, origin=path)
    if path.name.endswith(".tar.gz"):
        folder = extract_tarball(path, Path(tempfile.mkdtemp(prefix="resume-", dir=scratch)))
        return load_from_folder(folder, origin=path)
    return Resumed(state=load_checkpoint(path), path=path, origin=path, folder=path.parent)


def best_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("BEST_checkpoint_*.pth.tar") if path.is_file())


def load_from_folder(folder: Path, origin: Path) -> Resumed:
    """last.pth.tar when it loads, else the BEST_ file (a weights-only BEST_ restarts from the best weights;
    the caller tells the two apart with is_weights_only)."""
    files = ([folder / LAST_NAME] if (folder / LAST_NAME).is_file() else []) + best_files(folder)
    if not files:
        raise CheckpointError(f"{origin} holds no {LAST_NAME} and no BEST_ checkpoint: pass a checkpoint file, "
                              "a checkpoints tarball or --checkpoint latest")
    skipped: list[str] = []
    for inner in files:
        try:
            state = load_checkpoint(inner)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        return Resumed(state=state, path=inner, origin=origin, folder=folder, skipped=skipped)
    raise CheckpointError(skipped[0])


def latest_candidates(out_dir: Path) -> list[Path]:
    """Where the newest state can be, best first: last.pth.tar (refreshed at every save), then the tarballs
    and epoch checkpoints by modification time (a pack follows every save, so a tarball usually holds the
    state that a damaged last.pth.tar held), then the BEST_ file (weights only: the last resort)."""
    ckpt_dir = out_dir / CHECKPOINT_DIR
    first = [ckpt_dir / LAST_NAME] if (ckpt_dir / LAST_NAME).is_file() else []
    others = [p for p in [out_dir / TARBALL_NAME, *timestamped_tarballs(out_dir)] if p.is_file()]
    others += [path for _, path in epoch_files(ckpt_dir)]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return first + others + best_files(ckpt_dir)


def find_latest(out_dir: Path, scratch: Path) -> Resumed | None:
    """The newest candidate that loads and verifies, a full state before any weights-only BEST_ (that one
    loses the optimizer: only when no full state is usable). None when there is no candidate at all;
    CheckpointError when every candidate is damaged (starting fresh would overwrite them)."""
    candidates = latest_candidates(out_dir)
    skipped: list[str] = []
    fallback: Resumed | None = None
    for path in candidates:
        try:
            resumed = load_candidate(path, scratch)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        skipped += resumed.skipped
        if is_weights_only(resumed.state):
            fallback = fallback or resumed
            continue
        resumed.skipped = skipped
        return resumed
    if fallback is not None:
        fallback.skipped = skipped
        return fallback
    if candidates:
        raise CheckpointError(f"no usable checkpoint in {out_dir}: all {len(candidates)} are damaged "
                              f"(first: {skipped[0]}); move them away to start fresh")
    return None


def carry_best(resumed: Resumed, ckpt_dir: Path) -> Path | None:
    """Copy the BEST_ file that sat beside the resumed state into OUT_DIR/checkpoints if that has none, so the
    next tarball keeps it (a new session starts with an empty working folder)."""
    if resumed.folder.resolve() == ckpt_dir.resolve():
        return None
    for best in sorted(resumed.folder.glob("BEST_checkpoint_*.pth.tar")):
        target = ckpt_dir / best.name
        if not target.exists():
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            link_or_copy(best, target)
            return target
    return None
