"""The shapes of Kaggle's answers as the official client returns them, and the checks kr makes before a call:
kernel states by name, in-band refusals of a push, log text, quota durations, dataset limits and staging.
Pure functions (no client, no network), so each is tested on its own."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kaggle_runner.backends.base import KernelState, PushRefused, PushResult
from kaggle_runner.errors import ApiError, UsageError

DATASET_METADATA = "dataset-metadata.json"
DATASET_SLUG_LEN = (6, 50)
DATASET_TITLE_LEN = (6, 50)

STATE_BY_NAME = {
    "QUEUED": KernelState.QUEUED,
    "NEW_SCRIPT": KernelState.QUEUED,
    "RUNNING": KernelState.RUNNING,
    "COMPLETE": KernelState.COMPLETE,
    "ERROR": KernelState.ERROR,
    "CANCEL_REQUESTED": KernelState.CANCEL_REQUESTED,
    "CANCEL_ACKNOWLEDGED": KernelState.CANCEL_ACKNOWLEDGED,
}
_INVALID_SOURCE_FIELDS = (
    ("invalid_dataset_sources", "dataset"),
    ("invalid_kernel_sources", "kernel"),
    ("invalid_competition_sources", "competition"),
    ("invalid_model_sources", "model"),
)
_GPU_LIMIT_RE = re.compile(r"maximum .*session count", re.IGNORECASE)
_QUOTA_RE = re.compile(r"quota|hours allowed|exceeded the number of hours", re.IGNORECASE)

class KaggleApiError(ApiError):
    """An ApiError that remembers the HTTP status behind it (404 means "not there" to some callers)."""

    def __init__(self, message: str, hint: str | None = None, *, http_status: int | None = None) -> None:
        super().__init__(message, hint)
        self.http_status = http_status


def classify_push_error(message: str) -> str:
    """The chain's reason for an in-band SaveKernel error: retry later, stop, or fix the sources."""
    if _GPU_LIMIT_RE.search(message):
        return "gpu_session_limit"
    if _QUOTA_RE.search(message):
        return "quota_exhausted"
    return "other"


def push_result(ref: str, response: Any) -> PushResult:
    """SaveKernel's answer as a ``PushResult``; an in-band refusal as ``PushRefused``."""
    error = (getattr(response, "error", None) or "").strip()
    if error:
        raise PushRefused(
            f"Kaggle refused the push of {ref}: {error}",
            reason=classify_push_error(error),
            hint=refusal_hint(classify_push_error(error)),
        )
    invalid = [
        f"{kind} {source}"
        for attr, kind in _INVALID_SOURCE_FIELDS
        for source in (getattr(response, attr, None) or [])
    ]
    version = int(getattr(response, "version_number", 0) or 0)
    if invalid:
        pushed = f" (version {version} was saved and runs without them)" if version else ""
        raise PushRefused(
            f"Kaggle does not know these sources of {ref}: {', '.join(invalid)}{pushed}",
            reason="invalid_sources",
            hint="check the dataset_sources in kernel-metadata.json: each must exist and be visible to you",
        )
    if version <= 0:
        raise ApiError(f"Kaggle accepted the push of {ref} but returned no version number")
    return PushResult(
        ref=ref_from_response(getattr(response, "ref", None)) or ref,
        version=version,
        url=getattr(response, "url", None) or None,
    )


def is_ref(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts)


def ref_from_response(value: str | None) -> str | None:
    """SaveKernel's ``ref`` may be ``owner/slug`` or a path such as ``/code/owner/slug``."""
    if not value:
        return None
    parts = [p for p in value.strip("/").split("/") if p]
    if parts and parts[0] == "code":
        parts = parts[1:]
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def caused_by_404(exc: BaseException) -> bool:
    return isinstance(exc, KaggleApiError) and exc.http_status == 404


def refusal_hint(reason: str) -> str:
    if reason == "gpu_session_limit":
        return "wait for one of your running GPU sessions to finish, then launch again"
    if reason == "quota_exhausted":
        return "the weekly GPU quota is used up: see kr quota for when it refreshes"
    return "read the message above; kr render --out DIR shows exactly what was pushed"


def log_text(raw: str) -> str:
    """Kaggle's log is a JSON array of ``{stream_name, time, data}``; plain text passes through."""
    if not raw:
        return ""
    try:
        events = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(events, list):
        return raw
    return "".join(str(e.get("data", "")) for e in events if isinstance(e, dict))


def seconds_of(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text[:-1] if text.endswith("s") else text)
    except ValueError:
        return None


def as_datetime(value: object) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="render the kernel folder with kr render") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object")
    return data


def check_dataset(ref: str, title: str) -> None:
    """Kaggle's own limits, checked before anything is uploaded."""
    if not is_ref(ref):
        raise UsageError(f"dataset ref {ref!r} is not owner/slug")
    slug = ref.split("/")[1]
    low, high = DATASET_SLUG_LEN
    if not low <= len(slug) <= high:
        raise UsageError(
            f"dataset slug {slug!r} must be {low}-{high} characters", hint="set dataset_slug in kr.toml"
        )
    low, high = DATASET_TITLE_LEN
    if not low <= len(title) <= high:
        raise UsageError(f"dataset title {title!r} must be {low}-{high} characters")


def top_level_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"dataset folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != DATASET_METADATA)
    if not files:
        raise UsageError(f"dataset folder {folder} has no files to publish")
    return files


def stage_dataset(staging: Path, files: list[Path], ref: str, title: str) -> None:
    from kaggle_runner.render import render_dataset_metadata

    for path in files:
        try:
            os.link(path, staging / path.name)  # same file system: no copy of a large tarball
        except OSError:
            shutil.copy2(path, staging / path.name)
    render_dataset_metadata(staging, ref, title)


def check_create_result(what: str, result: Any) -> None:
    """CreateDataset* report business errors in-band: ``status: error`` with HTTP 200."""
    error = (getattr(result, "error", None) or "").strip()
    status = str(getattr(result, "status", "") or "").lower()
    if error or status == "error":
        raise ApiError(
            f"Kaggle refused the {what}: {error or 'status error'}",
            hint="check the dataset slug, and wait until its previous version is ready",
        )
