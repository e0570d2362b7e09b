"""The small interface every backend implements: Kaggle (the official client) and local (this machine).

A *kernel* is addressed by its ref ``owner/slug`` and the *version* number a push returned; every call after a
push names that version, so status and outputs never describe an older session. A *dataset* is addressed by
``owner/slug``; publishing creates it on first use and adds a version afterwards.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kaggle_runner.errors import ApiError


class KernelState(str, enum.Enum):
    """A pushed kernel version's state, as Kaggle reports it (``KernelWorkerStatus``)."""

    QUEUED = "queued"  # accepted, not started yet (also what Kaggle says when it says nothing)
    RUNNING = "running"
    COMPLETE = "complete"  # the script exited 0
    ERROR = "error"  # the script failed, or the session hit its time limit
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_ACKNOWLEDGED = "cancel_acknowledged"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_KERNEL_STATES

    @property
    def is_failed(self) -> bool:
        return self in (KernelState.ERROR, KernelState.CANCEL_ACKNOWLEDGED)


_TERMINAL_KERNEL_STATES = frozenset(
    {KernelState.COMPLETE, KernelState.ERROR, KernelState.CANCEL_ACKNOWLEDGED}
)


@dataclass(frozen=True)
class PushResult:
    ref: str  # owner/slug
    version: int  # the version this push created: poll exactly this one
    url: str | None = None


@dataclass(frozen=True)
class KernelStatus:
    state: KernelState
    failure_message: str | None = None


@dataclass(frozen=True)
class Quota:
    """Accelerator quota for the week, in seconds. ``None`` fields are unknown."""

    used_s: float | None
    allowed_s: float | None
    refresh_time: datetime | None = None

    @property
    def remaining_s(self) -> float | None:
        if self.used_s is None or self.allowed_s is None:
            return None
        return max(0.0, self.allowed_s - self.used_s)


@dataclass(frozen=True)
class DatasetInfo:
    ref: str  # owner/slug
    status: str  # lower-case DatabundleVersionStatus: "ready", "blobs_received", "failed", ...
    version: int | None = None  # current version number, when the backend knows it

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"


@dataclass(frozen=True)
class Found:
    """What a kernel or dataset ref already holds: ``made_by_kr`` tells a kr kernel or checkpoint dataset from
    something else (None: the backend cannot tell)."""

    ref: str
    made_by_kr: bool | None = None


@dataclass(frozen=True)
class PushRequest:
    """What to push: a rendered kernel folder (script + kernel-metadata.json) and push-time options."""

    folder: Path
    accelerator: str | None = None  # overrides machine_shape of the metadata
    timeout_s: int | None = None  # sessionTimeoutSeconds: Kaggle's only lever on a running session
    extra: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """Where kernels run and checkpoint datasets live. Implementations raise ``kaggle_runner.errors``.

    Transient failures (429, 5xx, dropped connections) are retried inside the backend with backoff; what
    escapes is either ``ApiError`` (gave up, or a permanent failure) or ``UsageError`` (bad input).
    In-band refusals of a push (Kaggle's HTTP 200 with ``error``) raise ``PushRefused``.
    """

    name: str

    @abc.abstractmethod
    def username(self) -> str:
        """The account kernels and datasets belong to (``local`` for the local backend)."""

    @abc.abstractmethod
    def push(self, request: PushRequest) -> PushResult:
        """Push (save and run) a kernel version."""

    @abc.abstractmethod
    def latest_version(self, ref: str) -> int | None:
        """The newest version number of a kernel, or None if it has none: lets a restarted caller find out
        whether a push it was in the middle of went through."""

    @abc.abstractmethod
    def status(self, ref: str, version: int) -> KernelStatus:
        """The state of one pushed version."""

    @abc.abstractmethod
    def download(self, ref: str, version: int, dest: Path, *, pattern: str | None = None) -> list[Path]:
        """Download a finished version's output files into ``dest`` (created fresh); returns their paths.
        ``pattern`` is a regular expression on the file name; the client's generated ``<slug>.log`` is
        never part of the result."""

    @abc.abstractmethod
    def logs(self, ref: str, version: int) -> str:
        """The version's log so far, as plain text."""

    def follow_logs(self, ref: str, version: int) -> Iterator[str]:
        """Yield log lines of a running version as they come; default: the whole log once."""
        yield from self.logs(ref, version).splitlines()

    @abc.abstractmethod
    def quota(self) -> Quota:
        """The accelerator quota (GPU) as the backend reports it."""

    @abc.abstractmethod
    def dataset_info(self, ref: str) -> DatasetInfo | None:
        """Status and current version of a dataset; None when it does not exist."""

    @abc.abstractmethod
    def publish_dataset(self, folder: Path, ref: str, *, title: str, notes: str, private: bool = True) -> None:
        """Upload every file of ``folder`` as the dataset's new version (creating it on first use)."""

    # What ``kr check`` asks before anything is pushed; the defaults answer from the calls above.

    def account(self) -> str:
        """The user the credentials belong to (``username`` may be configured to name another)."""
        return self.username()

    def find_kernel(self, ref: str) -> Found | None:
        """What the kernel ref holds already; None when it is free."""
        return None if self.latest_version(ref) is None else Found(ref)

    def find_dataset(self, ref: str) -> Found | None:
        """What the dataset ref holds already; None when it is free."""
        return None if self.dataset_info(ref) is None else Found(ref)


class PushRefused(ApiError):
    """Raised by ``Backend.push`` when the backend refused the push in-band (HTTP 200 with an error).

    ``reason`` classifies it for the chain's policy: ``gpu_session_limit``, ``quota_exhausted``,
    ``invalid_sources`` or ``other``.
    """

    def __init__(self, message: str, reason: str = "other", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = reason
