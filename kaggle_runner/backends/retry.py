"""Backoff and retry for the Kaggle calls the official client does not retry itself.

The client retries only uploads and dataset creation. Status, output listing, push, GetKernel and dataset
status raise on the first 429 or 5xx, so kr wraps them (through ``kaggle_runner.retry``, the one retry
primitive): exponential backoff capped per wait, ``Retry-After`` honoured on 429, and a monotonic deadline so a
flaky API can never keep a command waiting forever. Each retry is reported to ``on_retry``; nothing here
writes to the terminal.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests

from kaggle_runner.retry import Backoff, RetryNotice, retry

T = TypeVar("T")

RETRY_MAX_ATTEMPTS = 8
RETRY_INITIAL_DELAY_S = 1.0
RETRY_MULTIPLIER = 2.0
RETRY_MAX_DELAY_S = 60.0  # one wait, whatever Retry-After asks for
RETRY_DEADLINE_S = 300.0  # all attempts of one call together

_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = RETRY_MAX_ATTEMPTS
    initial_delay_s: float = RETRY_INITIAL_DELAY_S
    multiplier: float = RETRY_MULTIPLIER
    max_delay_s: float = RETRY_MAX_DELAY_S
    deadline_s: float = RETRY_DEADLINE_S

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based) when the server gave no hint."""
        return self.backoff().delay_s(attempt)

    def backoff(self) -> Backoff:
        return Backoff(self.initial_delay_s, self.max_delay_s, self.max_attempts, self.multiplier, self.deadline_s)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a ``requests`` error, when there is one."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) if response is not None else None


def is_transient(exc: BaseException) -> bool:
    """429, any 5xx, and dropped or refused connections are worth another try; nothing else is."""
    if isinstance(exc, requests.exceptions.HTTPError):
        status = http_status(exc)
        return status is not None and (status == 429 or status >= 500)
    return isinstance(exc, _TRANSIENT_EXCEPTIONS)


def retry_after_s(exc: BaseException) -> float | None:
    """The server's Retry-After (seconds or an HTTP date) on a 429, else None."""
    if http_status(exc) != 429:
        return None
    value = exc.response.headers.get("Retry-After")  # type: ignore[attr-defined]
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def describe(exc: BaseException) -> str:
    status = http_status(exc)
    text = str(exc).strip() or type(exc).__name__
    return f"HTTP {status}: {text}" if status is not None and str(status) not in text else text


def call_with_retry(
    func: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[RetryNotice], None] | None = None,
) -> T:
    """Run ``func`` until it succeeds, retrying transient failures; the last failure propagates."""
    return retry(
        func,
        what=what,
        backoff=(policy or RetryPolicy()).backoff(),
        permanent=lambda exc: not is_transient(exc),
        delay_hint=retry_after_s,
        on_retry=on_retry,
        sleep=sleep,
        clock=clock,
    )


def retry_line(notice: RetryNotice) -> str:
    """How a client-level retry reads on the terminal."""
    return f"kr: {notice.what} failed ({describe(notice.error)}); retrying in {notice.delay_s:.1f}s"
