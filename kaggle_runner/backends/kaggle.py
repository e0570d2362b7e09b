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
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import requests

from kaggle_runner.backends.base import (
    Backend,
    DatasetInfo,
    Found,
    KernelState,
    KernelStatus,
    PushRequest,
    PushResult,
    Quota,
)
from kaggle_runner.backends.kaggle_credentials import kaggle_config_dir
from kaggle_runner.backends.kaggle_wire import (  # noqa: F401 - classify_push_error, log_text: re-exported
    STATE_BY_NAME,
    KaggleApiError,
    as_datetime,
    caused_by_404,
    check_create_result,
    check_dataset,
    classify_push_error,
    is_ref,
    log_text,
    push_result,
    read_json_file,
    seconds_of,
    stage_dataset,
    top_level_files,
)
from kaggle_runner.backends.retry import (
    RetryPolicy,
    call_with_retry,
    describe,
    http_status,
    is_transient,
    retry_line,
)
from kaggle_runner.errors import ApiError, KrError, UsageError
from kr_contract.names import MARKER_FILE

T = TypeVar("T")

KERNEL_METADATA = "kernel-metadata.json"
# Text every kernel script kr renders contains (kaggle_runner.render, kr_kernel): how kr check tells its own
# kernel from someone else's under the same slug.
KR_SOURCE_MARKERS = ("kr kernel script", "kr_kernel", "kaggle_runner")
FOLLOW_POLL_S = 15.0  # polling fallback of follow_logs: the log endpoint is not meant to be hammered

NO_CREDENTIALS_HINT = (
    "create an API token at https://www.kaggle.com/settings and save it as kaggle.json in $KAGGLE_CONFIG_DIR "
    "(default ~/.kaggle), or export KAGGLE_API_TOKEN; or run without an account: --backend local"
)


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

    def __init__(
        self,
        *,
        username: str | None = None,
        retry_policy: RetryPolicy | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self._configured_username = username
        self._retry = retry_policy or RetryPolicy()
        self._notice = notice or (lambda message: None)  # retries and fallbacks; the caller shows them
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
            if not retry:
                return attempt()
            return call_with_retry(attempt, what=what, policy=self._retry,
                                   on_retry=lambda notice: self._notice(retry_line(notice)))
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
        metadata = read_json_file(Path(request.folder) / KERNEL_METADATA)
        ref = str(metadata.get("id") or "")
        if not is_ref(ref):
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
        return push_result(ref, response)

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

    def latest_version(self, ref: str) -> int | None:
        return self._call(f"lookup of {ref}", lambda: self._latest_version_once(ref))

    def _latest_version_once(self, ref: str) -> int | None:
        """GetKernel's ``metadata.currentVersionNumber``; None for a kernel Kaggle does not know."""
        response = self._get_kernel(ref)
        metadata = response.metadata if response is not None else None
        number = int(metadata.current_version_number or 0) if metadata is not None else 0
        return number or None

    def _get_kernel(self, ref: str) -> Any:
        """GetKernel (metadata and source of the newest version); None for a kernel Kaggle does not know."""
        request = _import_client().ApiGetKernelRequest()
        request.user_name, request.kernel_slug = ref.split("/")[:2]
        return self._read_or_none(lambda client: client.kernels.kernels_api_client.get_kernel(request))

    def _get_dataset(self, ref: str) -> Any:
        """GetDataset (its files, its newest version); None for a dataset Kaggle does not know."""
        request = _import_client().ApiGetDatasetRequest()
        request.owner_slug, request.dataset_slug = ref.split("/")[:2]
        return self._read_or_none(lambda client: client.datasets.dataset_api_client.get_dataset(request))

    def _read_or_none(self, read: Callable[[Any], T]) -> T | None:
        """One read through the client's typed services; a 404 is None."""
        try:
            with self.api.build_kaggle_client() as client:
                return read(client)
        except requests.exceptions.HTTPError as exc:
            if http_status(exc) == 404:
                return None
            raise

    def account(self) -> str:
        return str(self.api.config_values["username"])

    def find_kernel(self, ref: str) -> Found | None:
        response = self._call(f"lookup of {ref}", lambda: self._get_kernel(ref))
        if response is None:
            return None
        source = str(getattr(getattr(response, "blob", None), "source", None) or "")
        return Found(ref, made_by_kr=any(marker in source for marker in KR_SOURCE_MARKERS))

    def find_dataset(self, ref: str) -> Found | None:
        response = self._call(f"lookup of dataset {ref}", lambda: self._get_dataset(ref))
        if response is None:
            return None
        names = {str(getattr(f, "name", "") or "") for f in (getattr(response, "files", None) or [])}
        return Found(ref, made_by_kr=MARKER_FILE in names)

    def status(self, ref: str, version: int) -> KernelStatus:
        try:
            response = self._call(
                f"status of {ref} v{version}", lambda: self.api.kernels_status(f"{ref}/{version}")
            )
        except ApiError as exc:
            if caused_by_404(exc) and (self.latest_version(ref) or 0) >= version:
                return KernelStatus(KernelState.QUEUED)  # just pushed: its session is not visible yet
            raise
        state = STATE_BY_NAME.get(
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
            self._notice(f"kr: live log stream unavailable ({describe(exc)}); polling instead")
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
            used_s=seconds_of(gpu.time_used),
            allowed_s=seconds_of(gpu.total_time_allowed),
            refresh_time=as_datetime(response.quota_refresh_time),
        )

    # ----------------------------------------------------------------------------------------- datasets

    def dataset_info(self, ref: str) -> DatasetInfo | None:
        try:
            payload = self._call(
                f"status of dataset {ref}", lambda: self.api.dataset_status(ref, format="json")
            )
        except ApiError as exc:
            if caused_by_404(exc):
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
        check_dataset(ref, title)
        files = top_level_files(Path(folder))
        exists = self.dataset_info(ref) is not None
        staging = Path(tempfile.mkdtemp(prefix="kr-dataset-"))  # 0700: private, and the client's TMPDIR
        try:
            stage_dataset(staging, files, ref, title)
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
        check_create_result(what, result)
