"""Kernels: pushed versions, each run in its own ``kaggle_runner.sandbox``; status, outputs, logs, quota."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_runner import sandbox
from kaggle_runner.emulator.datasets import DatasetStore
from kaggle_runner.emulator.faults import Faults
from kaggle_runner.emulator.settings import Settings
from kaggle_runner.emulator.wire import ApiFailure, compact, duration, not_found, timestamp, version_number

GPU_SESSION_LIMIT_ERROR = "Maximum batch GPU session count of {limit} reached"
SOURCE_TOO_LARGE_ERROR = "The kernel source must be less than 1 megabytes in size."
GPU_QUOTA_ERROR = (
    "You've exceeded the number of hours allowed to use GPU. Your quota will reset in {days} days. "
    "You will not be able to commit unless you turn off GPU."
)
_EXTENSIONS = {("python", "script"): ".py", ("python", "notebook"): ".ipynb", ("r", "script"): ".R"}


@dataclass
class KernelVersion:
    number: int
    source: str
    meta: dict[str, Any]  # the SaveKernel request fields that describe the kernel (wire names)
    root: Path  # its sandbox
    timeout_s: float  # real seconds
    runs: bool  # False for a QUICK_SAVE push
    pushed: float
    forced_failure: str | None = None
    started: bool = False
    quota_counted: bool = False

    @property
    def gpu(self) -> bool:
        return bool(self.meta.get("enableGpu")) or "Gpu" in str(self.meta.get("machineShape") or "")


@dataclass
class Kernel:
    id: int
    owner: str
    slug: str
    title: str
    versions: list[KernelVersion] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def version(self, number: int | None) -> KernelVersion:
        if not self.versions:
            raise not_found(f"kernel session of {self.ref}")
        if number is None:
            return self.versions[-1]
        if not 1 <= number <= len(self.versions):
            raise not_found(f"version {number} of kernel {self.ref}")
        return self.versions[number - 1]


@dataclass
class Quota:
    """GPU time in Kaggle seconds; each finished GPU session adds its scaled run time."""

    gpu_used_s: float = 0.0
    gpu_allowed_s: float = 30 * 3600
    refresh_time: float = field(default_factory=lambda: time.time() + 3 * 86400)

    @property
    def exhausted(self) -> bool:
        return self.gpu_used_s >= self.gpu_allowed_s


class KernelStore:
    def __init__(self, root: Path, settings: Settings, faults: Faults, datasets: DatasetStore) -> None:
        self.root = root
        self.settings = settings
        self.faults = faults
        self.datasets = datasets
        self.quota = Quota(gpu_allowed_s=settings.gpu_quota_s)
        self._kernels: dict[str, Kernel] = {}
        self._lock = threading.RLock()

    # --------------------------------------------------------------------------------------- SaveKernel

    def save(self, user: str, body: dict[str, Any], base_url: str) -> dict[str, Any]:
        """SaveKernel: a new version (queued, run by ``tick``), or an in-band ``error``."""
        owner, slug = self._target(user, body)
        if len((body.get("text") or "").encode()) >= self.settings.max_kernel_source_bytes:
            raise ApiFailure(400, SOURCE_TOO_LARGE_ERROR)  # what Kaggle answers (JovianHQ/kernel-run#2)
        with self._lock:
            kernel = self._kernels.get(f"{owner}/{slug}")
            if kernel is None and not body.get("newTitle"):
                return {"error": "A title is required to create a new kernel"}
            refusal = self._refusal(body)
            if refusal:
                return {"error": refusal}
            if kernel is None:
                kernel = Kernel(len(self._kernels) + 1, owner, slug, body["newTitle"])
                self._kernels[kernel.ref] = kernel
            version = self._new_version(kernel, body)
            kernel.versions.append(version)
            kernel.title = body.get("newTitle") or kernel.title
        self.faults.pushed(kernel.ref)
        return {
            "ref": f"/code/{kernel.ref}",
            "url": f"{base_url}/code/{kernel.ref}",
            "versionNumber": version.number,
            "kernelId": kernel.id,
            "invalidDatasetSources": self.datasets.unknown(body.get("datasetDataSources") or []),
            "invalidKernelSources": [
                k for k in body.get("kernelDataSources") or [] if k not in self._kernels
            ],
        }

    def add_existing(self, owner: str, slug: str, source: str, title: str | None = None) -> Kernel:
        """A kernel that already exists (any owner: made in the web editor, or by someone else), with one saved
        version that does not run. ``kr check`` tells such a kernel from its own."""
        with self._lock:
            kernel = Kernel(len(self._kernels) + 1, owner, slug, title or slug.replace("-", " "))
            root = self.root / "kernels" / owner / slug / "1"
            meta = {"language": "python", "kernelType": "script", "isPrivate": True}
            kernel.versions.append(KernelVersion(1, source, meta, root, 0.0, runs=False, pushed=time.time()))
            self._kernels[kernel.ref] = kernel
        return kernel

    def _target(self, user: str, body: dict[str, Any]) -> tuple[str, str]:
        if body.get("id") and not body.get("slug"):
            kernel = next((k for k in self._kernels.values() if k.id == body["id"]), None)
            if kernel is None:
                raise not_found(f"kernel id {body['id']}")
            return kernel.owner, kernel.slug
        owner, _, slug = str(body.get("slug") or "").partition("/")
        if not owner or not slug or "/" in slug:
            raise ApiFailure(400, "slug must be owner/kernel-slug")
        if owner != user:
            raise ApiFailure(403, f"Permission 'kernels.update' was denied for {owner}/{slug}")
        return owner, slug

    def _refusal(self, body: dict[str, Any]) -> str | None:
        wants_gpu = bool(body.get("enableGpu")) or "Gpu" in str(body.get("machineShape") or "")
        if not wants_gpu or body.get("kernelExecutionType") == "QUICK_SAVE":
            return None
        if self.quota.exhausted:
            days = max(0, round((self.quota.refresh_time - time.time()) / 86400))
            return GPU_QUOTA_ERROR.format(days=days)
        if self._gpu_sessions() >= self.settings.max_gpu_sessions:
            return GPU_SESSION_LIMIT_ERROR.format(limit=self.settings.max_gpu_sessions)
        return None

    def _gpu_sessions(self) -> int:
        return sum(
            1
            for kernel in self._kernels.values()
            for v in kernel.versions
            if v.runs and v.gpu and self._state(kernel, v)[0] not in ("COMPLETE", "ERROR")
        )

    def _new_version(self, kernel: Kernel, body: dict[str, Any]) -> KernelVersion:
        number = len(kernel.versions) + 1
        limit = self.faults.time_limits.get(kernel.ref)
        timeout = (
            limit if limit is not None else self.settings.session_timeout(body.get("sessionTimeoutSeconds"))
        )
        meta = {k: v for k, v in body.items() if k not in ("text", "id", "slug", "newTitle")}
        return KernelVersion(
            number=number,
            source=body.get("text") or "",
            meta=meta,
            root=self.root / "kernels" / kernel.owner / kernel.slug / str(number),
            timeout_s=timeout,
            runs=body.get("kernelExecutionType") != "QUICK_SAVE",
            pushed=time.time(),
            forced_failure=self.faults.failing_kernels.pop(kernel.ref, None),
        )

    # ------------------------------------------------------------------------------------------ running

    def tick(self) -> None:
        """Start versions whose queue time is over; count finished GPU sessions against the quota."""
        with self._lock:
            pending = [(k, v) for k in self._kernels.values() for v in k.versions]
        for kernel, version in pending:
            if version.runs and not version.started and not version.forced_failure:
                if time.time() - version.pushed >= self.settings.queue_delay_s:
                    self._start(kernel, version)
            elif version.started and version.gpu and not version.quota_counted:
                self._count_quota(version)

    def _start(self, kernel: Kernel, version: KernelVersion) -> None:
        mounts = self.datasets.mounts(version.meta.get("datasetDataSources") or [])
        code_file = kernel.slug + _EXTENSIONS.get(
            (str(version.meta.get("language")), str(version.meta.get("kernelType"))), ".py"
        )
        sandbox.prepare(version.root, version.source, mounts, code_file=code_file)
        sandbox.start(version.root, timeout_s=version.timeout_s, grace_s=self.settings.kill_grace_s)
        version.started = True

    def _count_quota(self, version: KernelVersion) -> None:
        status = sandbox.read_status(version.root)
        if not status.is_terminal or status.started is None or status.ended is None:
            return
        with self._lock:
            self.quota.gpu_used_s += (status.ended - status.started) / self.settings.time_scale
            version.quota_counted = True

    def stop_all(self) -> None:
        """Kill every running version (the emulator is shutting down)."""
        with self._lock:
            started = [v for k in self._kernels.values() for v in k.versions if v.started]
        for version in started:
            sandbox.kill(version.root, wait_s=self.settings.kill_grace_s + 3)

    # ----------------------------------------------------------------------------------- status & reads

    def kernel(self, owner: str, slug: str) -> Kernel:
        with self._lock:
            kernel = self._kernels.get(f"{owner}/{slug}")
        if kernel is None:
            raise not_found(f"kernel {owner}/{slug}")
        return kernel

    def _state(self, kernel: Kernel, version: KernelVersion) -> tuple[str, str | None]:
        if version.forced_failure:
            return "ERROR", version.forced_failure
        if not version.started:
            return "QUEUED", None
        status = sandbox.read_status(version.root)
        names = {sandbox.QUEUED: "QUEUED", sandbox.RUNNING: "RUNNING", sandbox.COMPLETE: "COMPLETE"}
        return names.get(status.state, "ERROR"), status.failure_message

    def status(self, owner: str, slug: str, label: str | None) -> dict[str, Any]:
        kernel = self.kernel(owner, slug)
        number = version_number(label)
        version = kernel.version(number)
        if self.faults.take_stale(kernel.ref):
            if number is not None and number == len(kernel.versions):
                raise not_found(f"kernel session of {kernel.ref} version {number}")
            if number is None and len(kernel.versions) > 1:
                version = kernel.versions[-2]
        state, failure = self._state(kernel, version)
        # QUEUED is the enum's default: the server leaves it out and the client fills it in.
        return compact({"status": None if state == "QUEUED" else state, "failureMessage": failure})

    def outputs(
        self,
        owner: str,
        slug: str,
        label: str | None,
        page_size: int | None,
        token: str | None,
        base_url: str,
    ) -> dict[str, Any]:
        """ListKernelSessionOutput: a page of output files (when the session is over) and the log so far."""
        kernel = self.kernel(owner, slug)
        version = kernel.version(version_number(label))
        state, _ = self._state(kernel, version)
        files = self.output_files(version) if state in ("COMPLETE", "ERROR") else []
        start = int(token) if token and token.isdigit() else 0
        size = page_size or 20
        page = files[start : start + size]
        url = f"{base_url}/kernel-output/{kernel.ref}/{version.number}/"
        return compact(
            {
                "files": [{"fileName": name, "url": url + name} for name in page],
                "log": json.dumps(self.log_events(version)) if version.started else None,
                "nextPageToken": str(start + size) if start + size < len(files) else None,
            }
        )

    @staticmethod
    def output_files(version: KernelVersion) -> list[str]:
        working = sandbox.working_dir(version.root)
        if not working.is_dir():
            return []
        return sorted(str(p.relative_to(working)) for p in working.rglob("*") if p.is_file())

    def output_path(self, owner: str, slug: str, number: int, name: str) -> Path:
        version = self.kernel(owner, slug).version(number)
        if name not in self.output_files(version):
            raise not_found(f"output file {name}")
        return sandbox.working_dir(version.root) / name

    def log_events(self, version: KernelVersion) -> list[dict[str, Any]]:
        """The log as Kaggle serves it: ``[{stream_name, time, data}]``, one event per line."""
        path = sandbox.log_path(version.root)
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
        started = sandbox.read_status(version.root).started or version.pushed
        now = time.time() - started
        return [
            {"stream_name": "stdout", "time": round(now, 3), "data": line} for line in text.splitlines(True)
        ]

    def is_over(self, owner: str, slug: str, number: int | None) -> bool:
        kernel = self.kernel(owner, slug)
        return self._state(kernel, kernel.version(number))[0] in ("COMPLETE", "ERROR")

    def get(self, owner: str, slug: str, label: str | None) -> dict[str, Any]:
        """GetKernel: the pushed source and metadata (``currentVersionNumber`` is the newest version)."""
        kernel = self.kernel(owner, slug)
        version = kernel.version(version_number(label))
        blob = {
            "source": version.source,
            "language": version.meta.get("language"),
            "kernelType": version.meta.get("kernelType"),
            "slug": kernel.slug,
        }
        return compact({"metadata": self._metadata(kernel, version), "blob": blob})

    def _metadata(self, kernel: Kernel, version: KernelVersion) -> dict[str, Any]:
        meta = version.meta
        keys = [
            "language",
            "kernelType",
            "isPrivate",
            "enableGpu",
            "enableTpu",
            "enableInternet",
            "categoryIds",
            "datasetDataSources",
            "kernelDataSources",
            "competitionDataSources",
            "modelDataSources",
            "dockerImage",
            "machineShape",
        ]
        return {
            "id": kernel.id,
            "ref": kernel.ref,
            "title": kernel.title,
            "author": kernel.owner,
            "slug": kernel.slug,
            "lastRunTime": timestamp(version.pushed),
            "currentVersionNumber": len(kernel.versions),
            **{key: meta.get(key) for key in keys},
        }

    def list(self, body: dict[str, Any], user: str) -> dict[str, Any]:
        """ListKernels: the account's kernels (``mine``), or a user's, filtered by ``search``."""
        wanted_owner = body.get("user") or (user if body.get("group") == "PROFILE" else None)
        search = str(body.get("search") or "").lower()
        with self._lock:
            kernels = [
                k
                for k in self._kernels.values()
                if (wanted_owner is None or k.owner == wanted_owner)
                and (search in k.slug.lower() or search in k.title.lower())
            ]
        page, size = int(body.get("page") or 1), int(body.get("pageSize") or 20)
        chosen = kernels[(page - 1) * size : page * size]
        return compact({"kernels": [self._metadata(k, k.versions[-1]) for k in chosen if k.versions]})

    # ------------------------------------------------------------------------------------------- quota

    def quota_statistics(self) -> dict[str, Any]:
        with self._lock:
            used, allowed = self.quota.gpu_used_s, self.quota.gpu_allowed_s
            refresh = self.quota.refresh_time
        return {
            "quotaRefreshTime": timestamp(refresh),
            "gpuQuota": {
                "timeUsed": duration(used),
                "timeReserved": duration(0),
                "totalTimeAllowed": duration(allowed),
                "minimumTimeAllowed": duration(allowed),
                "hasEverRun": used > 0,
            },
            "tpuQuota": {"timeUsed": duration(0), "totalTimeAllowed": duration(20 * 3600)},
        }
