"""What every step of ``ChainRunner`` shares: the record, transitions (checked against the declared table),
persistence, notifications, and backend calls through the one retry primitive with kr's time accounting.

The steps themselves are in ``chain_kernel.py`` (quota, render, push, poll, a failed kernel) and
``chain_dataset.py`` (download, publish, wait for the dataset); ``chain.py`` assembles the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kaggle_runner.backends.base import Backend, DatasetInfo, PushRefused
from kaggle_runner.chain_machine import ChainState, check_transition
from kaggle_runner.chain_observer import ChainObserver, Retrying, StateChange
from kaggle_runner.chain_policy import Timing
from kaggle_runner.chain_state import (
    Attempt,
    ChainRecord,
    ChainSpec,
    Clock,
    SessionRecord,
    SystemClock,
    chain_dir,
    save_chain,
)
from kaggle_runner.errors import ApiError, KrError
from kaggle_runner.home import kr_home
from kaggle_runner.retry import Backoff, RetryNotice, retry

T = TypeVar("T")

# chain.json keeps only this many of the latest transitions, so it stays small over a long chain.
HISTORY_LIMIT = 500

Notify = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SessionRequest:
    """What one session's kernel must do; the renderer turns it into a kernel folder."""

    chain_id: str
    session: int
    expect: dict[str, Any] | None  # marker of the previous session the kernel must find, None for the first
    dataset_sources: tuple[str, ...]  # the checkpoint dataset to mount (empty for the first session)
    budget_s: float
    epochs: int | None


Renderer = Callable[[SessionRequest, Path], None]


class ChainCore:
    """The runner's state and the primitives its steps are made of. Create the runner under ``chain_lock``."""

    def __init__(
        self,
        record: ChainRecord,
        backend: Backend,
        renderer: Renderer,
        *,
        home: Path | None = None,
        timing: Timing | None = None,
        clock: Clock | None = None,
        notify: Notify | None = None,
        observer: ChainObserver | None = None,
        follow_logs: bool = False,
    ) -> None:
        self.record = record
        self.backend = backend
        self.renderer = renderer
        self.home = home or kr_home()
        self.timing = timing or Timing()
        self.clock = clock or SystemClock()
        self.notify = notify or (lambda event: None)
        self.observer = observer or ChainObserver()
        self.follow_logs = follow_logs
        self._entered_here = False  # whether this process made the last transition (no resume checks then)
        self._waited_s = 0.0  # time spent in the backend or asleep during the current step

    @property
    def spec(self) -> ChainSpec:
        return self.record.spec

    @property
    def dir(self) -> Path:
        return chain_dir(self.spec.chain_id, self.home)

    def session_dir(self, index: int | None = None) -> Path:
        return self.dir / f"session-{index or self.record.session}"

    # -- transitions

    def _transition(self, state: ChainState, reason: str, *, message: str | None = None) -> None:
        previous = self.record.state
        check_transition(previous, state)
        now = self.clock.time()
        self.record.state = state
        self.record.message = message
        self.record.halted = None
        self.record.updated_at = now
        self.record.history.append(
            {"at": now, "session": self.record.session, "from": previous.value, "to": state.value, "reason": reason}
        )
        del self.record.history[:-HISTORY_LIMIT]
        self._save()
        self._entered_here = True
        change = StateChange(self.spec.chain_id, self.spec.backend, self.spec.kernel_ref, self.record.session,
                             self.spec.sessions, previous, state, reason, message, now)
        self.observer.state_changed(change)
        try:
            self.notify(change.event())
        except Exception as exc:  # noqa: BLE001 - a notification must never stop the chain
            self.observer.notification_failed(str(exc))

    def _save(self) -> None:
        save_chain(self.record, self.home)

    def _attempt(self, number: int, reason: str, budget_s: float) -> Attempt:
        return Attempt(number=number, reason=reason, budget_s=budget_s, timeout_s=int(self.spec.session_budget_s))

    def _begin_session(self, index: int) -> None:
        self.record.session = index
        if len(self.record.sessions) < index:
            session = SessionRecord(index=index, started_at=self.clock.time())
            session.attempts.append(self._attempt(1, "first", self.spec.session_budget_s))
            self.record.sessions.append(session)
        self._transition(ChainState.CHECKING_QUOTA, "session start")

    def _stage(self, stage: str, seconds: float) -> None:
        """How long a stage of this session took: kept with the session and reported."""
        self.record.current.stages[stage] = round(self.record.current.stages.get(stage, 0.0) + seconds, 3)
        self.observer.stage_timed(stage, seconds)

    # -- backend calls

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """One backend call, retried with backoff while its error is transient; an error that outlasts the
        backoff, or a permanent one (a 4xx other than 408/429), escapes as ``ApiError`` with the state kept.
        An in-band refusal of a push (``PushRefused``) goes to the caller as it is."""
        with self._api_errors(what):
            return retry(lambda: self._timed_call(call), what=what, **self._retry_options())

    def _call_until_done(self, what: str, call: Callable[[], T], went_through: Callable[[], bool]) -> T | None:
        """``_call`` for a request that changes something (push, publish): its answer may be lost after it was
        carried out, so ``went_through`` is asked before each retry; None when it says it was."""
        with self._api_errors(what):
            return retry(lambda: self._timed_call(call), what=what, went_through=went_through,
                         **self._retry_options())

    def _retry_options(self) -> dict[str, Any]:
        backoff = Backoff(self.timing.api_backoff_initial_s, self.timing.api_backoff_max_s,
                          self.timing.api_max_attempts)
        return {"backoff": backoff, "retry_on": (ApiError, OSError), "permanent": _is_permanent,
                "on_retry": self._report_retry, "sleep": self._sleep}

    @contextmanager
    def _api_errors(self, what: str) -> Iterator[None]:
        """What escapes the retries, as one ``ApiError`` that says how to continue the chain."""
        try:
            yield
        except PushRefused:
            raise
        except (ApiError, OSError) as exc:
            if _is_permanent(exc):
                hint = "; ".join(h for h in (getattr(exc, "hint", None), self._resume_hint()) if h)
                raise ApiError(f"{what} failed: {_short(exc)}", hint=hint) from None
            raise ApiError(f"{what} kept failing: {_short(exc)}", hint=self._resume_hint()) from None

    def _report_retry(self, notice: RetryNotice) -> None:
        self.observer.retrying(Retrying(notice.what, _short(notice.error), notice.delay_s, notice.checks_first))

    def _dataset_version(self) -> int | None:
        info: DatasetInfo | None = self._call(
            "reading the checkpoint dataset", lambda: self.backend.dataset_info(self.spec.dataset_ref)
        )
        return info.version if info is not None else None

    def _call_once(self, call: Callable[[], T]) -> T | None:
        """A best-effort call (logs, outputs of a failed kernel): None when it fails."""
        try:
            return self._timed_call(call)
        except (KrError, OSError):
            return None

    def _timed_call(self, call: Callable[[], T]) -> T:
        started = self.clock.time()
        try:
            return call()
        finally:
            self._waited_s += self.clock.time() - started

    def _sleep(self, seconds: float) -> None:
        started = self.clock.time()
        self.clock.sleep(seconds)
        self._waited_s += self.clock.time() - started

    def _resume_hint(self) -> str:
        return f"the chain's state is kept: `kr chain --chain {self.spec.chain_id}` continues it"


def _is_permanent(exc: BaseException) -> bool:
    """A refusal, or a 4xx other than 408/429 (bad credentials, no permission, bad request): waiting will not
    fix it."""
    if isinstance(exc, PushRefused):
        return True
    status = getattr(exc, "http_status", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
