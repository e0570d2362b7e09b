"""A local emulator of the Kaggle API surface kr uses, served over real HTTP to the unmodified ``kaggle`` client.

Start it in-process (``Emulator(root).start()``; the pytest fixture ``kaggle_emulator`` in
``tests/emulator_plugin.py`` does this) or by hand: ``python -m kaggle_runner.emulator --port 7777 --root DIR``.
Point the client at it with ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` plus ``HTTP_PROXY=<emulator url>`` (any
process) or ``kagglesdk.kaggle_env._env_to_endpoint[KaggleEnv.LOCAL] = <url>`` (in-process).

Calls (``POST /api/v1/<service>/<Method>`` or ``/v1/...``, absolute-form request lines accepted):

- kernels: ``SaveKernel`` (a version runs in its own ``kaggle_runner.sandbox``: QUEUED for
  ``queue_delay_s``, then RUNNING, then COMPLETE or ERROR; the session limit is ``sessionTimeoutSeconds`` or
  12 h, times ``time_scale``), ``GetKernelSessionStatus`` (``versionLabel`` "vN"; QUEUED is left out as the
  enum default), ``ListKernelSessionOutput`` (paged; files only once the session is over; ``log`` is the
  JSON array of ``{stream_name, time, data}``), ``GetKernel`` (source + metadata), ``ListKernels``,
  ``GetAcceleratorQuotaStatistics`` (each finished GPU session adds its run time / ``time_scale``).
  **A kernel's newest version number** is ``metadata.currentVersionNumber`` of ``GetKernel`` (and of each
  ``ListKernels`` entry): ``KaggleApi.kernels_list(user=owner, search=slug)`` or a ``get_kernel`` call
  through ``KaggleApi.build_kaggle_client()``.
- datasets: ``GetDatasetStatus`` (404 for an unknown dataset; ``BLOBS_RECEIVED`` for
  ``dataset_processing_s`` after a version is created, then ``READY``), ``GetDataset``
  (``currentVersionNumber`` = newest version, ready or not), ``CreateDataset``, ``CreateDatasetVersion``,
  ``CreateDatasetVersionById`` (in-band ``{"status": "error"}`` for a taken slug, a bad token, more than
  ``max_dataset_files`` files or ``max_dataset_bytes`` bytes; HTTP 403 while the first version is processing).
- blobs: ``StartBlobUpload`` -> ``createUrl`` served here: ``PUT`` with the GCS resumable semantics
  (``bytes */N`` query -> 200 / 308 with ``Range`` / 404 for an unknown session).
- ``IntrospectToken`` for access tokens listed in ``Settings.tokens``.
- ``GET`` output file URLs (Content-Length, Last-Modified, ETag, Accept-Ranges, Range, If-Range) and
  ``GET /api/v1/kernels/logs/stream/<owner>/<slug>?versionLabel=vN`` (SSE while running, ``END_OF_LOG``).
- Kernels run with the newest *ready* version of each ``dataset_sources`` entry (or the pinned
  ``owner/slug/N``), mounted at ``input/<slug>`` and ``input/datasets/<owner>/<slug>``.
- SaveKernel refuses in-band (``error``) a GPU push beyond ``max_gpu_sessions`` concurrent GPU sessions
  (``GPU_SESSION_LIMIT_ERROR``) or with the GPU quota used up (``GPU_QUOTA_ERROR``), and with HTTP 400 a script
  of ``max_kernel_source_bytes`` (1 MB) or more (``SOURCE_TOO_LARGE_ERROR``).
- ``emulator.kernels.add_existing(owner, slug, source)``: a kernel that exists already (someone else's, or one
  not made by kr), with one saved version that does not run.

Faults (``emulator.faults``, see ``faults.py``), each for ``times`` calls:

- ``add(call, status=429, retry_after=1)``, ``status=429`` alone, ``envelope="google"``, ``status=5xx``,
  ``drop=True`` (connection closed without an answer), ``in_band="..."`` (e.g. "Maximum batch GPU session
  count of 2 reached" on SaveKernel), ``kernel="owner/slug"`` to hit only calls about that kernel.
- ``add("BlobUpload", status=503)``: half the body is stored, then 503, so the client resumes.
- ``add("DownloadOutput", status=403)``: an expired signed output URL.
- ``stale_status_after_push(kernel, times)``, ``kernel_errors(kernel, message)``,
  ``kernel_time_limit(kernel, seconds)``, ``dataset_stuck(dataset)``; exhaust the quota with
  ``emulator.kernels.quota.gpu_used_s = emulator.kernels.quota.gpu_allowed_s``.
- ``emulator.datasets.serve_stale_mounts(times)``: the next kernels see the version before the newest ready
  one (or none): a kernel pushed before Kaggle serves a new dataset version.

``emulator.calls`` records ``(call name, HTTP status)`` of every answered call (0: dropped).
"""

from __future__ import annotations

import threading
from pathlib import Path

from kaggle_runner.emulator.datasets import BlobStore, DatasetStore
from kaggle_runner.emulator.faults import Faults
from kaggle_runner.emulator.kernels import (
    GPU_QUOTA_ERROR,
    GPU_SESSION_LIMIT_ERROR,
    SOURCE_TOO_LARGE_ERROR,
    KernelStore,
)
from kaggle_runner.emulator.server import EmulatorServer, serve
from kaggle_runner.emulator.settings import Settings

__all__ = ["GPU_QUOTA_ERROR", "GPU_SESSION_LIMIT_ERROR", "SOURCE_TOO_LARGE_ERROR", "Emulator", "Settings"]

_TICK_S = 0.05


class Emulator:
    """One emulated Kaggle: its state lives under ``root``; ``start`` serves it on ``host:port`` (0: free)."""

    def __init__(self, root: Path, settings: Settings | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings or Settings()
        self.faults = Faults()
        self.blobs: BlobStore = BlobStore(self.root)
        self.datasets: DatasetStore = DatasetStore(self.root, self.settings, self.faults, self.blobs)
        self.kernels: KernelStore = KernelStore(self.root, self.settings, self.faults, self.datasets)
        self.calls: list[tuple[str, int]] = []
        self.calls_lock = threading.Lock()
        self.stopping = threading.Event()
        self.errors: list[str] = []  # what went wrong inside the emulator itself (tests may assert empty)
        self.url = ""
        self._server: EmulatorServer | None = None
        self._threads: list[threading.Thread] = []

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Emulator:
        self._server, server_thread = serve(self, host, port)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        scheduler = threading.Thread(target=self._schedule, name="emulator-scheduler", daemon=True)
        scheduler.start()
        self._threads = [server_thread, scheduler]
        return self

    def _schedule(self) -> None:
        while not self.stopping.wait(_TICK_S):
            try:
                self.kernels.tick()
            except Exception as error:  # noqa: BLE001 - one bad version must not stop the others
                self.errors.append(f"scheduler: {error!r}")

    def stop(self) -> None:
        """Stop serving and kill every kernel still running."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.kernels.stop_all()

    def call_count(self, name: str, status: int | None = None) -> int:
        with self.calls_lock:
            return sum(1 for n, s in self.calls if n == name and (status is None or s == status))

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
