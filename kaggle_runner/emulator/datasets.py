"""Datasets and blobs: resumable uploads (GCS semantics), dataset versions with a processing delay, limits."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_runner.emulator.faults import Faults
from kaggle_runner.emulator.settings import Settings
from kaggle_runner.emulator.wire import ApiFailure, compact, not_found, timestamp

_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)$")


@dataclass
class Blob:
    token: str
    name: str
    size: int
    path: Path
    received: int = 0

    @property
    def complete(self) -> bool:
        return self.received == self.size


class BlobStore:
    """``StartBlobUpload`` sessions and the ``PUT createUrl`` protocol (shared/docs/kaggle-api.md §4)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs: dict[str, Blob] = {}
        self._lock = threading.Lock()

    def start(self, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        name = os.path.basename(str(body.get("name") or ""))
        if not name:
            raise ApiFailure(400, "name is required")
        token = uuid.uuid4().hex
        blob = Blob(token, name, int(body.get("contentLength") or 0), self.root / "blobs" / token)
        blob.path.parent.mkdir(parents=True, exist_ok=True)
        blob.path.write_bytes(b"")
        with self._lock:
            self._blobs[token] = blob
        return {"token": token, "createUrl": f"{base_url}/upload/{token}"}

    def get(self, token: str) -> Blob | None:
        with self._lock:
            return self._blobs.get(token)

    def put(
        self, token: str, content_range: str | None, data: bytes, keep: int | None = None
    ) -> tuple[int, dict[str, str]]:
        """One PUT to a createUrl; returns (HTTP status, headers). ``keep`` stores only a prefix (a 503)."""
        blob = self.get(token)
        if blob is None:
            return 404, {}
        if content_range and content_range.startswith("bytes */"):
            return self._progress(blob)
        start = 0
        if content_range:
            match = _RANGE.match(content_range)
            if match is None or int(match.group(3)) != blob.size:
                return 400, {}
            start = int(match.group(1))
        if start > blob.received:
            return 400, {}
        chunk = data if keep is None else data[:keep]
        with open(blob.path, "r+b") as handle:
            handle.seek(start)
            handle.write(chunk)
            handle.truncate()
        blob.received = min(blob.size, start + len(chunk))
        if keep is not None:
            return 503, {}
        return (200, {}) if blob.complete else self._progress(blob)

    @staticmethod
    def _progress(blob: Blob) -> tuple[int, dict[str, str]]:
        if blob.complete:
            return 200, {}
        if blob.received == 0:
            return 308, {}
        return 308, {"Range": f"bytes=0-{blob.received - 1}"}


@dataclass
class DatasetVersion:
    number: int
    folder: Path
    created: float
    ready_at: float | None  # None: stuck in processing until the fault is lifted
    notes: str = ""


@dataclass
class Dataset:
    id: int
    owner: str
    slug: str
    title: str
    license_name: str = ""
    subtitle: str = ""
    description: str = ""
    is_private: bool = True
    versions: list[DatasetVersion] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"


class DatasetStore:
    def __init__(self, root: Path, settings: Settings, faults: Faults, blobs: BlobStore) -> None:
        self.root = root
        self.settings = settings
        self.faults = faults
        self.blobs = blobs
        self._datasets: dict[str, Dataset] = {}
        self._lock = threading.RLock()
        self._stale_mounts = 0  # fault: kernels still to be shown the version before the newest ready one

    def serve_stale_mounts(self, times: int = 1) -> None:
        """Fault: the next ``times`` kernels that mount datasets see, for each, the version before the newest
        ready one (nothing, if there is none): a kernel pushed before Kaggle serves a new version."""
        with self._lock:
            self._stale_mounts += times

    def find(self, owner: str, slug: str) -> Dataset:
        with self._lock:
            dataset = self._datasets.get(f"{owner}/{slug}")
        if dataset is None:
            raise not_found(f"dataset {owner}/{slug}")
        return dataset

    def by_id(self, dataset_id: int) -> Dataset:
        with self._lock:
            found = next((d for d in self._datasets.values() if d.id == dataset_id), None)
        if found is None:
            raise not_found(f"dataset id {dataset_id}")
        return found

    def _ready(self, dataset: Dataset, version: DatasetVersion) -> bool:
        if version.ready_at is None and dataset.ref not in self.faults.stuck_datasets:
            version.ready_at = time.time()  # the stuck-dataset fault was lifted: processing finishes now
        return version.ready_at is not None and time.time() >= version.ready_at

    # --------------------------------------------------------------------------------- create & version

    def create(self, user: str, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        owner, slug = str(body.get("ownerSlug") or user), str(body.get("slug") or "")
        if owner != user:
            raise ApiFailure(403, f"Permission 'datasets.create' was denied for {owner}")
        with self._lock:
            if f"{owner}/{slug}" in self._datasets:
                return _in_band(f'The requested slug "{slug}" is already in use by a dataset.')
            files, problem = self._collect(body.get("files") or [])
            if problem:
                return _in_band(problem)
            dataset = Dataset(
                id=len(self._datasets) + 1,
                owner=owner,
                slug=slug,
                title=str(body.get("title") or slug),
                license_name=str(body.get("licenseName") or ""),
                subtitle=str(body.get("subtitle") or ""),
                description=str(body.get("description") or ""),
                is_private=bool(body.get("isPrivate", False)),
            )
            self._datasets[dataset.ref] = dataset
            self._add_version(dataset, files, "")
        return {"ref": dataset.ref, "url": f"{base_url}/datasets/{dataset.ref}", "status": "ok"}

    def create_version(self, dataset: Dataset, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        with self._lock:
            if dataset.versions and not self._ready(dataset, dataset.versions[0]):
                # Kaggle refuses a new version while the first one is still being processed (kagglehub#182).
                raise ApiFailure(403, "The dataset is still being processed; try again when it is ready")
            files, problem = self._collect(body.get("files") or [])
            if problem:
                return _in_band(problem)
            self._add_version(dataset, files, str(body.get("versionNotes") or ""))
            for key, attr in (("subtitle", "subtitle"), ("description", "description")):
                if body.get(key):
                    setattr(dataset, attr, body[key])
        return {"ref": dataset.ref, "url": f"{base_url}/datasets/{dataset.ref}", "status": "ok"}

    def _collect(self, new_files: list[dict[str, Any]]) -> tuple[list[Blob], str | None]:
        blobs = []
        for item in new_files:
            blob = self.blobs.get(str(item.get("token") or ""))
            if blob is None or not blob.complete:
                return [], f"Invalid or incomplete upload token: {item.get('token')!r}"
            blobs.append(blob)
        if not blobs:
            return [], "A dataset version needs at least one file"
        if len(blobs) > self.settings.max_dataset_files:
            return [], f"The file count exceeds the maximum of {self.settings.max_dataset_files}"
        total = sum(b.size for b in blobs)
        if total > self.settings.max_dataset_bytes:
            return (
                [],
                f"The dataset size of {total} bytes exceeds the maximum of {self.settings.max_dataset_bytes}",
            )
        return blobs, None

    def _add_version(self, dataset: Dataset, blobs: list[Blob], notes: str) -> None:
        number = len(dataset.versions) + 1
        folder = self.root / "datasets" / dataset.owner / dataset.slug / str(number)
        folder.mkdir(parents=True)
        for blob in blobs:
            target = folder / blob.name
            target.unlink(missing_ok=True)
            os.link(blob.path, target)  # blobs never change once complete: share the bytes
        now = time.time()
        stuck = dataset.ref in self.faults.stuck_datasets
        ready_at = None if stuck else now + self.settings.dataset_processing_s
        dataset.versions.append(DatasetVersion(number, folder, now, ready_at, notes))

    # ------------------------------------------------------------------------------------------- reads

    def status(self, owner: str, slug: str) -> dict[str, Any]:
        """GetDatasetStatus: the newest version's processing state."""
        dataset = self.find(owner, slug)
        return {"status": "READY" if self._ready(dataset, dataset.versions[-1]) else "BLOBS_RECEIVED"}

    def get(self, owner: str, slug: str, base_url: str) -> dict[str, Any]:
        """GetDataset: ``currentVersionNumber`` is the newest version, ready or not."""
        dataset = self.find(owner, slug)
        newest = dataset.versions[-1]
        files = sorted(newest.folder.iterdir())
        return compact(
            {
                "id": dataset.id,
                "ref": dataset.ref,
                "title": dataset.title,
                "subtitle": dataset.subtitle,
                "description": dataset.description,
                "licenseName": dataset.license_name,
                "isPrivate": dataset.is_private,
                "ownerName": dataset.owner,
                "ownerRef": dataset.owner,
                "url": f"{base_url}/datasets/{dataset.ref}",
                "lastUpdated": timestamp(newest.created),
                "currentVersionNumber": newest.number,
                "totalBytes": sum(p.stat().st_size for p in files),
                "files": [{"ref": p.name, "name": p.name, "totalBytes": p.stat().st_size} for p in files],
                "versions": [
                    {
                        "versionNumber": v.number,
                        "creationDate": timestamp(v.created),
                        "versionNotes": v.notes,
                        "status": "ready" if self._ready(dataset, v) else "blobs_received",
                    }
                    for v in dataset.versions
                ],
            }
        )

    def unknown(self, refs: list[str]) -> list[str]:
        """The dataset sources of a push that do not exist (Kaggle lists them, the push goes through)."""
        with self._lock:
            return [ref for ref in refs if "/".join(ref.split("/")[:2]) not in self._datasets]

    def mounts(self, refs: list[str]) -> dict[str, Path]:
        """What a starting kernel sees: per source, the pinned version or else the newest *ready* one."""
        mounted: dict[str, Path] = {}
        with self._lock:
            stale = bool(refs) and self._stale_mounts > 0
            self._stale_mounts -= stale
            for ref in refs:
                owner, slug, *pin = ref.split("/")
                dataset = self._datasets.get(f"{owner}/{slug}")
                if dataset is None:
                    continue
                ready = [
                    v
                    for v in dataset.versions
                    if self._ready(dataset, v) and (not pin or str(v.number) == pin[0])
                ]
                if stale:
                    ready = ready[:-1]
                if ready:
                    mounted[dataset.ref] = ready[-1].folder
        return mounted


def _in_band(message: str) -> dict[str, Any]:
    """Create* business errors come back with HTTP 200."""
    return {"status": "error", "error": message}
