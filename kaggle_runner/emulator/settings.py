"""The emulator's knobs: how fast time runs, how long things take, and Kaggle's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

KAGGLE_SESSION_LIMIT_S = 12 * 3600  # a batch session's limit when the push names none
WEEKLY_GPU_QUOTA_S = 30 * 3600


@dataclass
class Settings:
    """``time_scale`` is real seconds per Kaggle second: with 0.001 a 12-hour session is killed after 43.2 s
    and a GPU session of 2 real seconds uses 2000 s of quota. ``session_limit_s`` overrides the scaled
    session limit for every push (real seconds)."""

    accounts: dict[str, str] = field(default_factory=lambda: {"testuser": "fakekey"})  # username -> key
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> username (IntrospectToken)
    time_scale: float = 0.001
    session_limit_s: float | None = None
    queue_delay_s: float = 0.2  # a pushed version stays QUEUED this long (real seconds)
    kill_grace_s: float = 2.0  # between SIGTERM and SIGKILL at the time limit (real seconds)
    dataset_processing_s: float = 0.3  # a new dataset version stays blobs_received this long
    max_gpu_sessions: int = 2  # concurrent GPU batch sessions per account
    gpu_quota_s: float = WEEKLY_GPU_QUOTA_S  # Kaggle seconds per week
    max_kernel_source_bytes: int = 1_000_000  # SaveKernel refuses a larger script with HTTP 400
    max_dataset_files: int = 1000
    max_dataset_bytes: int = 20 * 1024**3

    def session_timeout(self, requested_s: int | None) -> float:
        """Real seconds a version may run, from the push's sessionTimeoutSeconds (Kaggle seconds)."""
        if self.session_limit_s is not None:
            return self.session_limit_s
        return (requested_s or KAGGLE_SESSION_LIMIT_S) * self.time_scale
