"""The one retry primitive: call, back off, call again, with two hooks that decide when to stop.

``permanent(error)`` says that waiting will not help (a 401, a refused push): the error goes up at once.
``went_through()`` is asked before each new try of a call that changes something (a push, a publish): the
request may have been carried out before its answer was lost, and then it must not be repeated.

Both the Kaggle client wrapper (``backends/retry.py``: 429, 5xx and dropped connections, seconds apart) and the
chain (``chain_core.py``: what outlasted the client's retries, minutes apart) retry through here. Nothing here
writes to the terminal: each retry is reported to ``on_retry``, and the caller decides what to show.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, overload

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial_s`` doubling (``multiplier``) up to ``max_s`` per wait, at most
    ``max_attempts`` calls, and, when ``deadline_s`` is set, no wait that would end after it."""

    initial_s: float
    max_s: float
    max_attempts: int
    multiplier: float = 2.0
    deadline_s: float | None = None

    def delay_s(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1))


@dataclass(frozen=True)
class RetryNotice:
    """One retry about to happen: what failed, how, and how long the wait before the next try is."""

    what: str
    attempt: int  # the attempt that just failed (1-based)
    error: BaseException
    delay_s: float
    checks_first: bool  # whether ``went_through`` is asked before the next try


def never_permanent(error: BaseException) -> bool:
    return False


@overload
def retry(
    call: Callable[[], T],
    *,
    what: str,
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...] = ...,
    permanent: Callable[[BaseException], bool] = ...,
    went_through: None = None,
    delay_hint: Callable[[BaseException], float | None] | None = ...,
    on_retry: Callable[[RetryNotice], None] | None = ...,
    sleep: Callable[[float], None] = ...,
    clock: Callable[[], float] = ...,
) -> T: ...


@overload
def retry(
    call: Callable[[], T],
    *,
    what: str,
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...] = ...,
    permanent: Callable[[BaseException], bool] = ...,
    went_through: Callable[[], bool],
    delay_hint: Callable[[BaseException], float | None] | None = ...,
    on_retry: Callable[[RetryNotice], None] | None = ...,
    sleep: Callable[[float], None] = ...,
    clock: Callable[[], float] = ...,
) -> T | None: ...


def retry(
    call: Callable[[], T],
    *,
    what: str,
    backoff: Backoff,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    permanent: Callable[[BaseException], bool] = never_permanent,
    went_through: Callable[[], bool] | None = None,
    delay_hint: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[RetryNotice], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T | None:
    """``call()`` until it succeeds. An error not in ``retry_on``, a ``permanent`` one, the last allowed
    attempt's, or one whose wait would pass the deadline propagates unchanged. Returns None (without calling
    again) when ``went_through`` says the failed request was carried out after all."""
    deadline = None if backoff.deadline_s is None else clock() + backoff.deadline_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except retry_on as error:
            if permanent(error) or attempt >= backoff.max_attempts:
                raise
            hinted = delay_hint(error) if delay_hint is not None else None
            delay = min(backoff.max_s, backoff.delay_s(attempt) if hinted is None else hinted)
            if deadline is not None and clock() + delay > deadline:
                raise
            if on_retry is not None:
                on_retry(RetryNotice(what, attempt, error, delay, went_through is not None))
            sleep(delay)
        if went_through is not None and went_through():
            return None
