"""Faults a test arms on the emulator: per call (by RPC name) or per kernel, each for a number of calls.

Call names are the RPC method names (``SaveKernel``, ``GetKernelSessionStatus``, ``CreateDatasetVersion``, ...)
plus three for the plain-HTTP endpoints: ``BlobUpload`` (the PUT to a ``createUrl``), ``DownloadOutput`` (the GET
of an output file URL) and ``LogsStream`` (the log stream GET).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Fault:
    """One armed fault. Exactly one of ``status``, ``drop`` or ``in_band`` says what happens.

    ``status``: answer with this HTTP status and a JSON error body (``envelope="kaggle"``:
    ``{"code", "message"}``; ``"google"``: ``{"error": {"code", "message", "status"}}``, which only trips
    ``raise_for_status``), with ``Retry-After`` when ``retry_after`` is set. ``drop``: close the connection
    without an answer. ``in_band``: HTTP 200 with this error text where Kaggle puts business errors
    (SaveKernel ``error``; Create* ``status: "error"``). For ``BlobUpload`` a 503 first stores ``partial``
    of the body, so the client's resume query learns how much arrived.
    """

    call: str
    status: int | None = None
    retry_after: float | None = None
    envelope: str = "kaggle"
    drop: bool = False
    in_band: str | None = None
    message: str | None = None
    kernel: str | None = None  # only calls about this "owner/slug"
    times: int = 1  # how many matching calls it hits; -1: until cleared
    partial: float = 0.5
    hits: int = 0


class Faults:
    """The armed faults, and the per-kernel and per-dataset misbehaviours, of one emulator."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.stale_status: dict[str, int] = {}  # kernel ref -> status calls still answered stale
        self.failing_kernels: dict[str, str] = {}  # kernel ref -> failure message of its next version
        self.time_limits: dict[str, float] = {}  # kernel ref -> real seconds its next versions may run
        self.stuck_datasets: set[str] = set()  # dataset refs whose new versions never become ready

    def add(
        self,
        call: str,
        *,
        status: int | None = None,
        times: int = 1,
        retry_after: float | None = None,
        envelope: str = "kaggle",
        drop: bool = False,
        in_band: str | None = None,
        message: str | None = None,
        kernel: str | None = None,
        partial: float = 0.5,
    ) -> Fault:
        """Arm a fault for the next ``times`` calls named ``call`` (about ``kernel``, if given)."""
        if sum((status is not None, drop, in_band is not None)) != 1:
            raise ValueError("a fault needs exactly one of status=, drop=True or in_band=")
        if envelope not in ("kaggle", "google"):
            raise ValueError("envelope is 'kaggle' or 'google'")
        fault = Fault(call, status, retry_after, envelope, drop, in_band, message, kernel, times, partial)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, call: str, kernel: str | None = None) -> Fault | None:
        """The fault that hits this call, if any (and count the hit)."""
        with self._lock:
            for fault in self._faults:
                if fault.call != call or (fault.kernel is not None and fault.kernel != kernel):
                    continue
                fault.hits += 1
                if fault.times > 0 and fault.hits >= fault.times:
                    self._faults.remove(fault)
                return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.stale_status.clear()
            self.failing_kernels.clear()
            self.time_limits.clear()
            self.stuck_datasets.clear()

    # Per-kernel and per-dataset misbehaviour -------------------------------------------------------------

    def stale_status_after_push(self, kernel: str, times: int = 2) -> None:
        """The next ``times`` GetKernelSessionStatus calls about ``kernel`` after its next push describe the
        previous version (no versionLabel), or answer 404 (versionLabel of the new version)."""
        with self._lock:
            self.stale_status[kernel] = -times  # armed; SaveKernel flips it positive

    def take_stale(self, kernel: str) -> bool:
        with self._lock:
            left = self.stale_status.get(kernel, 0)
            if left <= 0:
                return False
            self.stale_status[kernel] = left - 1
            return True

    def pushed(self, kernel: str) -> None:
        with self._lock:
            if self.stale_status.get(kernel, 0) < 0:
                self.stale_status[kernel] = -self.stale_status[kernel]

    def kernel_errors(self, kernel: str, message: str = "Kernel failed: injected error") -> None:
        """The next version of ``kernel`` goes to ERROR with ``message`` instead of running."""
        with self._lock:
            self.failing_kernels[kernel] = message

    def kernel_time_limit(self, kernel: str, seconds: float) -> None:
        """Versions of ``kernel`` pushed from now on are killed after ``seconds`` real seconds."""
        with self._lock:
            self.time_limits[kernel] = seconds

    def dataset_stuck(self, dataset: str, stuck: bool = True) -> None:
        """New versions of ``dataset`` stay in ``blobs_received`` (until called again with False)."""
        with self._lock:
            (self.stuck_datasets.add if stuck else self.stuck_datasets.discard)(dataset)
