"""The Kaggle backend, over the official client's Python API (``kaggle.api.kaggle_api_extended.KaggleApi``).

What the client leaves to its callers (see /work/shared/docs/kaggle-api.md), done here:

* A push refused *in-band* (HTTP 200 with ``error``, or ``invalid*Sources`` lists) raises ``PushRefused``.
* Every call after a push names the pushed version (``owner/slug/N``): status and outputs never describe
  an older session.
* Status, output listing, push, GetKernel and dataset status are not retried by the client: kr retries
  them on 429 (honouring Retry-After), 5xx and dropped connections (``retry.call_with_retry``).
* Outputs land in a fresh folder per version with ``force=True``, without the client's ``<slug>.log``.

The client is imported only here, lazily: at import it tries to authenticate and prints help when there
are no credentials. That text is captured; missing credentials become a ``UsageError`` with the next step.
Nothing the client knows about the key or token is ever printed or logged by kr.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import requests

from kaggle_runner.backends.base import (
    Backend,
    DatasetInfo,
    KernelState,
    KernelStatus,
    PushRefused,
    PushRequest,
    PushResult,
    Quota,
)
from kaggle_runner.backends.retry import RetryPolicy, call_with_retry, describe, http_status, is_transient
from kaggle_runner.config import kaggle_config_dir
from kaggle_runner.errors import ApiError, KrError, UsageError

T = TypeVar("T")

KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
FOLLOW_POLL_S = 15.0  # polling fallback of follow_logs: the log endpoint is not meant to be hammered
DATASET_SLUG_LEN = (6, 50)
DATASET_TITLE_LEN = (6, 50)

_STATE_BY_NAME = {
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

NO_CREDENTIALS_HINT = (
    "create an API token at https://www.kaggle.com/settings and save it as kaggle.json in $KAGGLE_CONFIG_DIR "
    "(default ~/.kaggle), or export KAGGLE_API_TOKEN; or run without an account: --backend local"
)


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


@contextlib.contextmanager
def _client_output_to_stderr() -> Iterator[None]:
    """The client prints progress and warnings to stdout; kr's stdout carries results only."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _import_client() -> Any:
    """Import the client with its import-time output captured (auth help when no credentials exist)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from kaggle.api import kaggle_api_extended
    except SystemExit:
        raise ApiError(
            "the kaggle client exited while loading", hint="reinstall kr: pip install kaggle-runner"
        ) from None
    except ImportError as exc:
        raise ApiError(
            f"the kaggle client cannot be imported: {exc}", hint="reinstall kr: pip install kaggle-runner"
        ) from None
    return kaggle_api_extended


class KaggleBackend(Backend):
    name = "kaggle"

    def __init__(self, *, username: str | None = None, retry_policy: RetryPolicy | None = None) -> None:
        self._configured_username = username
        self._retry = retry_policy or RetryPolicy()
        self._client: Any = None

    # ------------------------------------------------------------------------------------ the client

    @property
    def api(self) -> Any:
        """The authenticated client, made on first use."""
        if self._client is None:
            self._client = self._authenticate()
        return self._client

    def _authenticate(self) -> Any:
        module = _import_client()
        api = module.KaggleApi()
        # The class reads KAGGLE_API_ENVIRONMENT once, when the module is first imported; honour the
        # environment of this backend's creation instead, so a long-lived process sees what it was given.
        local = os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST"
        api.args = [a for a in api.args if a != "--local"] + (["--local"] if local else [])
        # The credentials file's location is also fixed at import: find it by the same rules, now.
        api.config_dir = str(kaggle_config_dir())
        api.config = os.path.join(api.config_dir, api.config_file)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                api.authenticate()
        except SystemExit:
            raise UsageError("no Kaggle credentials found", hint=NO_CREDENTIALS_HINT) from None
        except Exception as exc:
            raise self._api_error("authentication", exc) from None
        if not api.config_values.get("username"):
            raise UsageError("the Kaggle credentials name no user", hint=NO_CREDENTIALS_HINT)
        return api

    def _call(self, what: str, func: Callable[[], T], *, retry: bool = True) -> T:
        """Run one client call: retried when transient, its output kept off stdout, errors made kr's own."""

        def attempt() -> T:
            with _client_output_to_stderr():
                return func()

        try:
            return call_with_retry(attempt, what=what, policy=self._retry) if retry else attempt()
        except KrError:
            raise
        except Exception as exc:
            raise self._api_error(what, exc) from None

    @staticmethod
    def _api_error(what: str, exc: BaseException) -> KaggleApiError:
        status = http_status(exc)
        if status in (401, 403) or (isinstance(exc, ValueError) and "denied" in str(exc)):
            return KaggleApiError(
                f"Kaggle refused {what} ({describe(exc)})",
                hint="check that the credentials belong to the kernel's owner and are still valid",
                http_status=status,
            )
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return KaggleApiError(
                f"cannot reach Kaggle for {what}: {describe(exc)}", hint="check the network and retry"
            )
        hint = "Kaggle is busy or failing: retry later" if is_transient(exc) else None
        return KaggleApiError(f"Kaggle {what} failed: {describe(exc)}", hint=hint, http_status=status)

    # ------------------------------------------------------------------------------------------ kernels

    def username(self) -> str:
        return str(self._configured_username or self.api.config_values["username"])

    def push(self, request: PushRequest) -> PushResult:
        metadata = _read_json_file(Path(request.folder) / KERNEL_METADATA)
        ref = str(metadata.get("id") or "")
        if not _is_ref(ref):
            raise UsageError(
                f"{KERNEL_METADATA} has no valid id (owner/slug): {ref!r}", hint="render it with kr render"
            )
        baseline = self._quiet_latest_version(ref)

        def save() -> Any:
            try:
                return self.api.kernels_push(
                    str(request.folder),
                    timeout=str(request.timeout_s) if request.timeout_s else None,
                    acc=request.accelerator,
                )
            except Exception as exc:
                landed = self._push_that_landed(ref, baseline, exc)
                if landed is not None:
                    return landed
                raise

        response = self._call(f"push of {ref}", save)
        if isinstance(response, int):  # an ambiguous failure, but the version exists: it went through
            return PushResult(ref=ref, version=response)
        return self._push_result(ref, response)

    def _push_that_landed(self, ref: str, baseline: int | None, exc: BaseException) -> int | None:
        """After a 5xx or a dropped connection the push may still have gone through: look before retrying."""
        if not is_transient(exc) or http_status(exc) == 429 or baseline is None:
            return None
        newest = self._quiet_latest_version(ref)
        return newest if newest is not None and newest > baseline else None

    def _quiet_latest_version(self, ref: str) -> int | None:
        """``latest_version`` for bookkeeping: 0 when the kernel is new, None when it cannot be told."""
        try:
            return self._latest_version_once(ref) or 0
        except Exception:
            return None

    @staticmethod
    def _push_result(ref: str, response: Any) -> PushResult:
        error = (getattr(response, "error", None) or "").strip()
        if error:
            raise PushRefused(
                f"Kaggle refused the push of {ref}: {error}",
                reason=classify_push_error(error),
                hint=_refusal_hint(classify_push_error(error)),
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
            ref=_ref_from_response(getattr(response, "ref", None)) or ref,
            version=version,
            url=getattr(response, "url", None) or None,
        )

    def latest_version(self, ref: str) -> int | None:
        return self._call(f"lookup of {ref}", lambda: self._latest_version_once(ref))

    def _latest_version_once(self, ref: str) -> int | None:
        """GetKernel's ``metadata.currentVersionNumber``; None for a kernel Kaggle does not know."""
        module = _import_client()
        owner, slug = ref.split("/")[:2]
        request = module.ApiGetKernelRequest()
        request.user_name = owner
        request.kernel_slug = slug
        try:
            with self.api.build_kaggle_client() as client:
                response = client.kernels.kernels_api_client.get_kernel(request)
        except requests.exceptions.HTTPError as exc:
            if http_status(exc) == 404:
                return None
            raise
        metadata = response.metadata
        number = int(metadata.current_version_number or 0) if metadata is not None else 0
        return number or None

    def status(self, ref: str, version: int) -> KernelStatus:
        try:
            response = self._call(
                f"status of {ref} v{version}", lambda: self.api.kernels_status(f"{ref}/{version}")
            )
        except ApiError as exc:
            if _caused_by_404(exc) and (self.latest_version(ref) or 0) >= version:
                return KernelStatus(KernelState.QUEUED)  # just pushed: its session is not visible yet
            raise
        state = _STATE_BY_NAME.get(
            getattr(response.status, "name", str(response.status)).upper(), KernelState.QUEUED
        )
        return KernelStatus(state=state, failure_message=(response.failure_message or None))

    def download(self, ref: str, version: int, dest: Path, *, pattern: str | None = None) -> list[Path]:
        dest = Path(dest)
        generated_log = dest / f"{ref.split('/')[1]}.log"

        def fetch() -> list[str]:
            if dest.exists():
                shutil.rmtree(dest)  # each attempt starts fresh: no file from a half-done try survives
            dest.mkdir(parents=True)
            files, _ = self.api.kernels_output(
                f"{ref}/{version}", str(dest), file_pattern=pattern, force=True
            )
            return list(files)

        files = self._call(f"output of {ref} v{version}", fetch)
        generated_log.unlink(missing_ok=True)
        return [Path(f) for f in files if Path(f) != generated_log and Path(f).is_file()]

    def logs(self, ref: str, version: int) -> str:
        raw = self._call(f"log of {ref} v{version}", lambda: self.api.kernels_logs(f"{ref}/{version}"))
        return log_text(raw)

    def follow_logs(self, ref: str, version: int) -> Iterator[str]:
        """Lines from the live stream; if the stream is unavailable, poll the log until the version ends."""
        seen = 0  # characters already yielded: a reconnect or the fallback replays from the start
        pending = ""
        try:
            with _client_output_to_stderr():
                for event in self.api.kernels_logs_stream(f"{ref}/{version}"):
                    text = str(event.get("data", "")) if isinstance(event, dict) else str(event)
                    seen += len(text)
                    pending += text
                    *lines, pending = pending.split("\n")
                    yield from lines
            if pending:
                yield pending
            return
        except KrError:
            raise
        except Exception as exc:
            print(f"kr: live log stream unavailable ({describe(exc)}); polling instead", file=sys.stderr)
        yield from self._poll_logs(ref, version, seen, pending)

    def _poll_logs(self, ref: str, version: int, seen: int, pending: str) -> Iterator[str]:
        while True:
            finished = self.status(ref, version).state.is_terminal  # before reading: the tail is never lost
            text = self.logs(ref, version)
            pending += text[seen:]
            seen = max(seen, len(text))
            *lines, pending = pending.split("\n")
            yield from lines
            if finished:
                break
            time.sleep(FOLLOW_POLL_S)
        if pending:
            yield pending

    def quota(self) -> Quota:
        response = self._call("quota", lambda: self.api.quota_view())
        gpu = response.gpu_quota
        if gpu is None:
            return Quota(used_s=None, allowed_s=None, refresh_time=response.quota_refresh_time)
        return Quota(
            used_s=_seconds(gpu.time_used),
            allowed_s=_seconds(gpu.total_time_allowed),
            refresh_time=_as_datetime(response.quota_refresh_time),
        )

    # ----------------------------------------------------------------------------------------- datasets

    def dataset_info(self, ref: str) -> DatasetInfo | None:
        try:
            payload = self._call(
                f"status of dataset {ref}", lambda: self.api.dataset_status(ref, format="json")
            )
        except ApiError as exc:
            if _caused_by_404(exc):
                return None
            raise
        data = json.loads(payload)
        version = data.get("current_version_number")
        return DatasetInfo(
            ref=ref, status=str(data["status"]).lower(), version=int(version) if version else None
        )

    def publish_dataset(
        self, folder: Path, ref: str, *, title: str, notes: str, private: bool = True
    ) -> None:
        _check_dataset(ref, title)
        files = _top_level_files(Path(folder))
        exists = self.dataset_info(ref) is not None
        staging = Path(tempfile.mkdtemp(prefix="kr-dataset-"))  # 0700: private, and the client's TMPDIR
        try:
            _stage_dataset(staging, files, ref, title)
            if exists:
                what = f"new version of dataset {ref}"
                result = self._call(
                    what,
                    lambda: self.api.dataset_create_version(str(staging), notes, quiet=True, dir_mode="skip"),
                    retry=False,
                )
            else:
                what = f"creation of dataset {ref}"
                result = self._call(
                    what,
                    lambda: self.api.dataset_create_new(
                        str(staging), public=not private, quiet=True, dir_mode="skip"
                    ),
                    retry=False,
                )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _check_create_result(what, result)


# ----------------------------------------------------------------------------------------------- helpers


def _is_ref(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts)


def _ref_from_response(value: str | None) -> str | None:
    """SaveKernel's ``ref`` may be ``owner/slug`` or a path such as ``/code/owner/slug``."""
    if not value:
        return None
    parts = [p for p in value.strip("/").split("/") if p]
    if parts and parts[0] == "code":
        parts = parts[1:]
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def _caused_by_404(exc: BaseException) -> bool:
    return isinstance(exc, KaggleApiError) and exc.http_status == 404


def _refusal_hint(reason: str) -> str:
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


def _seconds(value: object) -> float | None:
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


def _as_datetime(value: object) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist", hint="render the kernel folder with kr render") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object")
    return data


def _check_dataset(ref: str, title: str) -> None:
    """Kaggle's own limits, checked before anything is uploaded."""
    if not _is_ref(ref):
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


def _top_level_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"dataset folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != DATASET_METADATA)
    if not files:
        raise UsageError(f"dataset folder {folder} has no files to publish")
    return files


def _stage_dataset(staging: Path, files: list[Path], ref: str, title: str) -> None:
    from kaggle_runner.render import render_dataset_metadata

    for path in files:
        try:
            os.link(path, staging / path.name)  # same file system: no copy of a large tarball
        except OSError:
            shutil.copy2(path, staging / path.name)
    render_dataset_metadata(staging, ref, title)


def _check_create_result(what: str, result: Any) -> None:
    """CreateDataset* report business errors in-band: ``status: error`` with HTTP 200."""
    error = (getattr(result, "error", None) or "").strip()
    status = str(getattr(result, "status", "") or "").lower()
    if error or status == "error":
        raise ApiError(
            f"Kaggle refused the {what}: {error or 'status error'}",
            hint="check the dataset slug, and wait until its previous version is ready",
        )
