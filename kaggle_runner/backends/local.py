"""The local backend: kernels run on this machine in a Kaggle-like sandbox, datasets are versioned folders.

No account and no network. Layout under ``$KR_HOME/local`` (docs/architecture.md §5)::

    kernels/<owner>/<slug>/<version>/    one sandbox per pushed version (kaggle_runner.sandbox)
    datasets/<owner>/<slug>/<version>/   one folder per published dataset version

A push returns as soon as the sandbox's detached supervisor has started; the run goes on after ``kr`` exits.
Datasets mount the newest version that exists at push time, as on Kaggle.

Quota: unlimited by default (``allowed_s`` is None). ``KR_LOCAL_GPU_QUOTA_HOURS`` sets a weekly allowance,
counted against the run time of local kernel versions that started in the last 7 days, so quota policies
can be exercised without an account.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kaggle_runner import sandbox
from kaggle_runner.backends.base import (
    Backend,
    DatasetInfo,
    Found,
    KernelState,
    KernelStatus,
    PushRefused,
    PushRequest,
    PushResult,
    Quota,
)
from kaggle_runner.errors import ApiError, UsageError
from kaggle_runner.home import local_dir
from kr_contract.names import MARKER_FILE

LOCAL_USERNAME = "local"
QUOTA_ENV_VAR = "KR_LOCAL_GPU_QUOTA_HOURS"
DEFAULT_TIMEOUT_S = 12 * 3600  # Kaggle's GPU session limit
QUOTA_WINDOW_S = 7 * 24 * 3600
FOLLOW_POLL_S = 0.5
KERNEL_METADATA = "kernel-metadata.json"
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]*$")


def local_root() -> Path:
    return local_dir()


def _split_ref(ref: str) -> tuple[str, str]:
    if not _REF_RE.match(ref):
        raise UsageError(
            f"{ref!r} is not a valid owner/slug reference", hint="use lower-case letters, digits and '-'"
        )
    owner, slug = ref.split("/")
    return owner, slug


def _versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(entry.name) for entry in folder.iterdir() if entry.name.isdigit() and entry.is_dir())


class LocalBackend(Backend):
    name = "local"

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else local_root()

    # ------------------------------------------------------------------------------------------ kernels

    def username(self) -> str:
        return LOCAL_USERNAME

    def kernel_dir(self, ref: str, version: int) -> Path:
        owner, slug = _split_ref(ref)
        return self.root / "kernels" / owner / slug / str(version)

    def push(self, request: PushRequest) -> PushResult:
        metadata = _read_kernel_metadata(request.folder)
        ref = str(metadata["id"])
        script = Path(request.folder) / str(metadata["code_file"])
        if not script.is_file():
            raise UsageError(f"{script} named by code_file in {KERNEL_METADATA} does not exist")
        mounts = self._resolve_mounts(metadata.get("dataset_sources") or [])
        version, root = self._new_kernel_version(ref)
        try:
            sandbox.prepare(root, script, mounts)
            sandbox.start(root, timeout_s=request.timeout_s or DEFAULT_TIMEOUT_S)
        except sandbox.SandboxError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise ApiError(f"could not start local kernel {ref}: {exc}") from exc
        return PushResult(ref=ref, version=version, url=str(root))

    def _resolve_mounts(self, sources: list[str]) -> dict[str, Path]:
        """The newest version of each dataset source; a missing one refuses the push, as Kaggle would."""
        mounts: dict[str, Path] = {}
        missing = []
        for ref in sources:
            ref = "/".join(str(ref).split("/")[:2])  # a pinned owner/slug/version mounts the newest here too
            newest = self._newest_dataset_version(ref)
            if newest is None:
                missing.append(ref)
            else:
                mounts[ref] = newest
        if missing:
            raise PushRefused(
                f"dataset source(s) not found: {', '.join(missing)}",
                reason="invalid_sources",
                hint="publish the dataset first (kr chain does), or remove it from dataset_sources",
            )
        return mounts

    def _new_kernel_version(self, ref: str) -> tuple[int, Path]:
        """Claim the next version number: mkdir is atomic, so two pushes never share a folder."""
        owner, slug = _split_ref(ref)
        parent = self.root / "kernels" / owner / slug
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            version = (_versions(parent) or [0])[-1] + 1
            try:
                (parent / str(version)).mkdir()
            except FileExistsError:
                continue
            return version, parent / str(version)

    def latest_version(self, ref: str) -> int | None:
        owner, slug = _split_ref(ref)
        versions = _versions(self.root / "kernels" / owner / slug)
        return versions[-1] if versions else None

    def _sandbox(self, ref: str, version: int) -> Path:
        root = self.kernel_dir(ref, version)
        if not sandbox.status_path(root).is_file():
            raise ApiError(f"local kernel {ref} has no version {version}", hint="kr status lists the runs")
        return root

    def status(self, ref: str, version: int) -> KernelStatus:
        current = sandbox.read_status(self._sandbox(ref, version))
        return KernelStatus(state=KernelState(current.state), failure_message=current.failure_message)

    def download(self, ref: str, version: int, dest: Path, *, pattern: str | None = None) -> list[Path]:
        working = sandbox.working_dir(self._sandbox(ref, version))
        wanted = re.compile(pattern) if pattern else None
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        copied = []
        for path in sorted(p for p in working.rglob("*") if p.is_file()):
            name = path.relative_to(working).as_posix()
            if wanted and not wanted.search(name):
                continue
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied.append(target)
        return copied

    def logs(self, ref: str, version: int) -> str:
        return sandbox.log_path(self._sandbox(ref, version)).read_text(encoding="utf-8", errors="replace")

    def follow_logs(self, ref: str, version: int) -> Iterator[str]:
        """Tail log.txt until the version ends, then yield what is left."""
        root = self._sandbox(ref, version)
        with open(sandbox.log_path(root), encoding="utf-8", errors="replace") as log:
            pending = ""
            while True:
                finished = sandbox.read_status(root).is_terminal  # read before draining: no line is lost
                pending += log.read()
                *lines, pending = pending.split("\n")
                yield from lines
                if finished:
                    break
                time.sleep(FOLLOW_POLL_S)
            if pending:
                yield pending

    def quota(self) -> Quota:
        allowed = os.environ.get(QUOTA_ENV_VAR)
        if allowed is None:
            return Quota(used_s=self._seconds_used_this_week(), allowed_s=None)
        try:
            allowed_s = float(allowed) * 3600
        except ValueError:
            raise UsageError(f"{QUOTA_ENV_VAR}={allowed!r} is not a number of hours") from None
        now = datetime.now(timezone.utc)
        return Quota(
            used_s=self._seconds_used_this_week(), allowed_s=allowed_s, refresh_time=now + timedelta(days=7)
        )

    def _seconds_used_this_week(self) -> float:
        since = time.time() - QUOTA_WINDOW_S
        used = 0.0
        for status_file in (self.root / "kernels").glob("*/*/*/status.json"):
            current = sandbox.read_status(status_file.parent)
            if current.started is not None and current.started >= since:
                used += (current.ended or time.time()) - current.started
        return used

    def find_kernel(self, ref: str) -> Found | None:
        """Only kr pushes kernels to this backend."""
        return None if self.latest_version(ref) is None else Found(ref, made_by_kr=True)

    # ----------------------------------------------------------------------------------------- datasets

    def find_dataset(self, ref: str) -> Found | None:
        newest = self._newest_dataset_version(ref)
        return None if newest is None else Found(ref, made_by_kr=(newest / MARKER_FILE).is_file())

    def dataset_dir(self, ref: str) -> Path:
        owner, slug = _split_ref(ref)
        return self.root / "datasets" / owner / slug

    def _newest_dataset_version(self, ref: str) -> Path | None:
        versions = _versions(self.dataset_dir(ref))
        return self.dataset_dir(ref) / str(versions[-1]) if versions else None

    def dataset_info(self, ref: str) -> DatasetInfo | None:
        versions = _versions(self.dataset_dir(ref))
        if not versions:
            return None
        return DatasetInfo(ref=ref, status="ready", version=versions[-1])

    def publish_dataset(
        self, folder: Path, ref: str, *, title: str, notes: str, private: bool = True
    ) -> None:
        """Copy the folder's top-level files into a temp dir, then rename it to the next version number."""
        files = _top_level_files(Path(folder))
        parent = self.dataset_dir(ref)
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=parent))
        try:
            for path in files:
                shutil.copy2(path, staging / path.name)
            meta = {"id": ref, "title": title, "notes": notes, "private": private}
            (staging / ".kr-dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            _rename_to_next_version(staging, parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _top_level_files(folder: Path) -> list[Path]:
    """What Kaggle would upload: the folder's files (sub-folders are skipped, as with dir_mode='skip')."""
    if not folder.is_dir():
        raise UsageError(f"dataset folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "dataset-metadata.json")
    if not files:
        raise UsageError(f"dataset folder {folder} has no files to publish")
    return files


def _rename_to_next_version(staging: Path, parent: Path) -> int:
    while True:
        version = (_versions(parent) or [0])[-1] + 1
        try:
            os.rename(staging, parent / str(version))  # fails if a concurrent publish took the number
        except OSError:
            if (parent / str(version)).exists():
                continue
            raise
        return version


def _read_kernel_metadata(folder: Path) -> dict[str, Any]:
    path = Path(folder) / KERNEL_METADATA
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="render the kernel folder with kr render") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    for key in ("id", "code_file"):
        if not metadata.get(key):
            raise UsageError(f"{path} has no {key!r}", hint="render the kernel folder with kr render")
    return metadata
