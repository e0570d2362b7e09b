"""The previous session's checkpoint: find the mounted dataset version this session expects, verify it and
restore it into the working directory.

Kaggle mounts a dataset at ``/kaggle/input/<slug>/`` on older images and ``/kaggle/input/datasets/<owner>/
<slug>/`` on newer ones, and which version a fresh push mounts is undocumented: the marker decides, and a
mismatch stops the session at once (exit 3, the chain relaunches) instead of training from stale weights.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from kr_contract.atomic import read_json_object, sha256_file
from kr_contract.errors import ContractError
from kr_contract.marker import marker_problem
from kr_contract.names import (
    CHECKPOINT_DIR,
    ENV_KAGGLE_INPUT,
    EXIT_CRASH,
    EXIT_STALE_INPUT,
    LAST_MEMBER,
    MANIFEST_NAME,
    MARKER_FILE,
    STOP_BAD_INPUT,
    STOP_STALE_INPUT,
    TAG_BAD_INPUT,
    TAG_STALE_INPUT,
    TARBALL,
    TRAINING_LOG,
)
from kr_contract.tarball import extract_tarball, verify_folder

DEFAULT_INPUT_ROOT = "/kaggle/input"
# How deep below the input root a dataset's files may sit (<root>/datasets/<owner>/<slug>/...).
SEARCH_DEPTH = 4

Log = Callable[[str], None]


class KernelExit(Exception):
    """Stop the session before the trainer: ``tag`` starts the one line the chain greps the log for."""

    def __init__(self, code: int, tag: str, stop_reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.tag, self.stop_reason, self.message = code, tag, stop_reason, message


def stale(message: str) -> KernelExit:
    return KernelExit(EXIT_STALE_INPUT, TAG_STALE_INPUT, STOP_STALE_INPUT, message)


def bad_input(message: str) -> KernelExit:
    return KernelExit(EXIT_CRASH, TAG_BAD_INPUT, STOP_BAD_INPUT, message)


def input_root() -> Path:
    return Path(os.environ.get(ENV_KAGGLE_INPUT) or DEFAULT_INPUT_ROOT)


def candidate_dirs(root: Path, sources: tuple[str, ...]) -> list[Path]:
    """Where a mounted dataset's files may be: both mount layouts of each source, then any folder below the
    root that holds a marker."""
    seen: list[Path] = []
    for source in sources:
        owner, slug = source.split("/")[:2]
        for path in (root / slug, root / "datasets" / owner / slug):
            if path not in seen:
                seen.append(path)
    base_depth = len(root.parts)
    for folder, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        if len(Path(folder).parts) - base_depth >= SEARCH_DEPTH:
            subdirs[:] = []
        if MARKER_FILE in files and Path(folder) not in seen:
            seen.append(Path(folder))
    return seen


def find_checkpoint_dir(root: Path, sources: tuple[str, ...], expect: dict) -> Path:
    """The mounted folder whose marker names the checkpoint this session expects. When none does, the error
    names the first marker's problem: the named sources come first, other datasets' markers are decoys."""
    problems: list[str] = []
    for folder in candidate_dirs(root, sources):
        path = folder / MARKER_FILE
        if not path.is_file():
            continue
        found = read_json_object(path)
        problem = marker_problem(found, expect) if found is not None else f"{path} is not valid JSON"
        if problem is None:
            return folder
        problems.append(problem)
    first = problems[0] if problems else marker_problem(None, expect)
    raise stale(f"{first} (searched {root})")


def restore_checkpoints(folder: Path, scratch: Path, expect: dict, log: Log) -> str:
    """Verify and unpack the previous session's tarball; its files go to ./checkpoints so that the trainer
    continues from them and the best checkpoint survives a session that does not improve on it. Returns the
    ``--checkpoint`` argument for the trainer."""
    tarball = folder / TARBALL
    if not tarball.is_file():
        return _restore_unpacked(folder, scratch, log)
    digest = sha256_file(tarball)
    if digest != expect["sha256"]:
        raise stale(f"{tarball} has sha256 {digest}, the marker says {expect['sha256']}")
    try:
        unpacked = extract_tarball(tarball, scratch / "resume")
    except ContractError as exc:
        raise bad_input(f"{tarball} is not a valid archive: {exc}") from None
    return _move_into_working_dir(unpacked)


def _restore_unpacked(folder: Path, scratch: Path, log: Log) -> str:
    """Kaggle may have unpacked the uploaded tarball (into a folder of its name, or in place). The marker has
    already matched; the MANIFEST's sha256s then vouch for every file in place of the tarball's sha256."""
    for base in (folder / TARBALL, folder):
        checkpoints = base / CHECKPOINT_DIR
        if (checkpoints / MANIFEST_NAME).is_file():
            log(f"{TARBALL} was unpacked by Kaggle; verifying its files against the manifest")
            copy = scratch / "resume" / CHECKPOINT_DIR
            shutil.copytree(checkpoints, copy)
            try:
                verify_folder(copy)
            except ContractError as exc:
                raise bad_input(f"{base}: {exc}") from None
            return _move_into_working_dir(copy)
    raise stale(f"{folder / TARBALL} is missing")


def _move_into_working_dir(source_dir: Path) -> str:
    target_dir = Path.cwd() / CHECKPOINT_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source_dir.iterdir()):
        shutil.move(str(entry), str(target_dir / entry.name))
    return LAST_MEMBER


def continue_log(folder: Path) -> None:
    """Copy the previous sessions' training.log so that this session appends to it."""
    previous = folder / TRAINING_LOG
    if previous.is_file() and not Path(TRAINING_LOG).exists():
        shutil.copyfile(previous, TRAINING_LOG)
