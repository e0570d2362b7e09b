"""The chain: N training sessions in a row, each resuming from the checkpoint the previous one published.

The chain is an explicit state machine (``ChainState``) persisted atomically in
``$KR_HOME/runs/<chain_id>/chain.json`` at every transition, so that a ``kr chain`` killed at any line
(Ctrl-C, SIGKILL, reboot) and started again continues the same chain: it re-attaches to a running kernel,
finds out whether an interrupted push went through (``latest_version`` against the version recorded before
the push) instead of pushing a duplicate, and redoes an interrupted download or publish. The diagram is in
``kaggle_runner/README.md``. The records and their storage are in ``chain_state.py``, the checks of a
session's outputs in ``chain_outputs.py``, the ``kr status`` summaries in ``chain_summary.py``.

Per session: check the quota -> render -> record intent -> push -> poll -> download + verify -> publish
``checkpoints.tar.gz``, ``training.log`` and ``kr-marker.json`` as a new dataset version -> wait until the
dataset is ready at a higher version -> next session, mounting it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kaggle_runner.backends.base import (
    Backend,
    DatasetInfo,
    KernelState,
    KernelStatus,
    PushRefused,
    PushRequest,
    Quota,
)
from kaggle_runner.chain_outputs import (
    OUTPUT_PATTERN,
    RUN_JSON,
    TARBALL,
    TRAINING_LOG,
    OutputsInvalid,
    VerifiedOutputs,
    classify_failure,
    log_excerpt,
    read_run_json,
    verify_outputs,
)
from kaggle_runner.chain_state import (
    WAITING_STATES,
    Attempt,
    ChainRecord,
    ChainSpec,
    ChainState,
    Clock,
    FailureKind,
    SessionRecord,
    SystemClock,
    chain_dir,
    kr_home,
    save_chain,
)
from kaggle_runner.errors import ApiError, KrError

if TYPE_CHECKING:
    from kaggle_runner.config import KrConfig

# Waiting on the kernel: Kaggle sessions last hours, polling faster only spends rate limit.
POLL_INITIAL_S = 30.0
POLL_MAX_S = 300.0
POLL_GROWTH = 1.5
# Transient API errors that escaped the backend's own retries: back off, then give up (state kept).
API_BACKOFF_INITIAL_S = 15.0
API_BACKOFF_MAX_S = 600.0
API_MAX_ATTEMPTS = 8
# "Maximum batch GPU session count reached": another session holds the slot; it ends within 12 h.
GPU_SLOT_WAIT_S = 600.0
GPU_SLOT_MAX_WAIT_S = 13 * 3600.0
# A kernel that mounted an older dataset version: give Kaggle time to serve the new one, then relaunch.
STALE_INPUT_WAIT_S = 180.0
MAX_STALE_RELAUNCHES = 5
# Publishing: how often to look at the dataset and how long "processing" may take before giving up.
DATASET_POLL_S = 20.0
DATASET_READY_TIMEOUT_S = 2 * 3600.0
# Weekly quota: recheck this often when the backend does not say when it resets.
QUOTA_RECHECK_S = 3600.0
# A session shorter than this is not worth the start-up cost: below it the quota counts as exhausted.
MIN_SESSION_BUDGET_S = 1800.0
# Kept free between the quota left and the budget asked for, since the kernel's start-up also counts.
QUOTA_MARGIN_S = 300.0
# A session killed at the time limit is retried with its budget multiplied by this, at most this often.
TIME_LIMIT_BUDGET_FACTOR = 0.75
MAX_TIME_LIMIT_RETRIES = 2
# Pause before relaunching a kernel that failed, so that a crash loop does not burn the quota at once.
RETRY_DELAY_S = 60.0
# Downloads whose files do not verify are fetched again this often before the session counts as failed.
DOWNLOAD_ATTEMPTS = 3
# chain.json keeps only this many of the latest transitions, so it stays small over a long chain.
HISTORY_LIMIT = 500

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Every interval, backoff and timeout the chain uses. Tests pass ``Timing().scaled(0.001)``."""

    poll_initial_s: float = POLL_INITIAL_S
    poll_max_s: float = POLL_MAX_S
    api_backoff_initial_s: float = API_BACKOFF_INITIAL_S
    api_backoff_max_s: float = API_BACKOFF_MAX_S
    gpu_slot_wait_s: float = GPU_SLOT_WAIT_S
    gpu_slot_max_wait_s: float = GPU_SLOT_MAX_WAIT_S
    stale_input_wait_s: float = STALE_INPUT_WAIT_S
    dataset_poll_s: float = DATASET_POLL_S
    dataset_ready_timeout_s: float = DATASET_READY_TIMEOUT_S
    quota_recheck_s: float = QUOTA_RECHECK_S
    retry_delay_s: float = RETRY_DELAY_S
    poll_growth: float = POLL_GROWTH
    api_max_attempts: int = API_MAX_ATTEMPTS
    max_stale_relaunches: int = MAX_STALE_RELAUNCHES
    max_time_limit_retries: int = MAX_TIME_LIMIT_RETRIES
    download_attempts: int = DOWNLOAD_ATTEMPTS

    def scaled(self, factor: float) -> Timing:
        """The same policy with every duration (``*_s`` field) multiplied by ``factor``."""
        durations = {
            f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self) if f.name.endswith("_s")
        }
        return dataclasses.replace(self, **durations)


# --------------------------------------------------------------------------------------------- rendering


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


def config_renderer(config: KrConfig, owner: str) -> Renderer:
    """The renderer of real kernels: ``kaggle_runner.render`` with the chain's session spec."""

    def render(request: SessionRequest, folder: Path) -> None:
        from kaggle_runner.marker import Marker
        from kaggle_runner.render import SessionSpec, render_kernel

        expect = Marker(**request.expect) if request.expect else None
        spec = SessionSpec(
            chain_id=request.chain_id,
            session=request.session,
            expect=expect,
            dataset_sources=request.dataset_sources,
            budget_s=request.budget_s,
            epochs=request.epochs,
        )
        render_kernel(config, folder, session=spec, owner=owner)

    return render


Notify = Callable[[dict[str, Any]], None]
Echo = Callable[[str], None]


# --------------------------------------------------------------------------------------------- runner


class ChainRunner:
    """Drives one chain from its persisted state to a terminal state. Create it under ``chain_lock``."""

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
        echo: Echo | None = None,
        follow_logs: bool = False,
    ) -> None:
        self.record = record
        self.backend = backend
        self.renderer = renderer
        self.home = home or kr_home()
        self.timing = timing or Timing()
        self.clock = clock or SystemClock()
        self.notify = notify or (lambda event: None)
        self.echo = echo or (lambda line: None)
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

    # -- main loop

    def run(self) -> ChainRecord:
        """Step until a terminal state. API errors that outlast the backoff escape as ``ApiError`` with the
        state kept, so that the next ``kr chain`` continues from the same step."""
        self._reopen_if_finished()
        handlers = self._handlers()
        try:
            while not self.record.state.is_terminal:
                self._timed_step(handlers[self.record.state])
            self._save()  # the last step's kr_seconds
        except KrError as exc:
            self.record.halted = exc.message
            self._save()
            raise
        return self.record

    def _timed_step(self, handler: Callable[[], None]) -> None:
        started, self._waited_s = self.clock.time(), 0.0
        session = self.record.session
        handler()
        if session:
            own = max(0.0, self.clock.time() - started - self._waited_s)
            self.record.sessions[session - 1].kr_seconds += own

    def _handlers(self) -> dict[ChainState, Callable[[], None]]:
        waiting = {state: self._wait for state in WAITING_STATES}
        return {
            ChainState.NEW: self._start,
            ChainState.CHECKING_QUOTA: self._check_quota,
            ChainState.RENDERING: self._render,
            ChainState.PUSHING: self._push,
            ChainState.RUNNING: self._poll_kernel,
            ChainState.DOWNLOADING: self._download,
            ChainState.PUBLISHING: self._publish,
            ChainState.WAITING_DATASET: self._wait_dataset,
            **waiting,
        }

    # -- transitions

    def _transition(self, state: ChainState, reason: str, *, message: str | None = None) -> None:
        previous = self.record.state
        now = self.clock.time()
        self.record.state = state
        self.record.message = message
        self.record.halted = None
        self.record.updated_at = now
        self.record.history.append(
            {
                "at": now,
                "session": self.record.session,
                "from": previous.value,
                "to": state.value,
                "reason": reason,
            }
        )
        del self.record.history[:-HISTORY_LIMIT]
        self._save()
        self._entered_here = True
        self.echo(self._progress_line(state, reason, message))
        self._notify(previous, state, reason, message)

    def _save(self) -> None:
        save_chain(self.record, self.home)

    def _progress_line(self, state: ChainState, reason: str, message: str | None) -> str:
        where = f"session {self.record.session}/{self.spec.sessions}" if self.record.session else "chain"
        return f"[{self.spec.chain_id}] {where}: {state.value} ({message or reason})"

    def _notify(self, previous: ChainState, state: ChainState, reason: str, message: str | None) -> None:
        event = {
            "event": "chain.state",
            "chain": self.spec.chain_id,
            "backend": self.spec.backend,
            "kernel": self.spec.kernel_ref,
            "session": self.record.session,
            "sessions": self.spec.sessions,
            "state": state.value,
            "previous": previous.value,
            "reason": reason,
            "message": message,
            "terminal": state.is_terminal,
            "failed": state.is_failed,
            "at": self.clock.time(),
        }
        try:
            self.notify(event)
        except Exception as exc:  # noqa: BLE001 - a notification must never stop the chain
            self.echo(f"notification failed: {exc}")

    # -- backend calls

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """One backend call, retried with backoff on transient errors (``ApiError`` that is not a refusal,
        network ``OSError``); after ``api_max_attempts`` the error escapes with the state kept."""
        delay = self.timing.api_backoff_initial_s
        for attempt in range(1, self.timing.api_max_attempts + 1):
            try:
                return self._timed_call(call)
            except PushRefused:
                raise
            except (ApiError, OSError) as exc:
                if attempt == self.timing.api_max_attempts or _is_permanent(exc):
                    raise ApiError(f"{what} kept failing: {_short(exc)}", hint=self._resume_hint()) from None
                self.echo(f"{what} failed ({_short(exc)}); retrying in {delay:.0f}s")
                self._sleep(delay)
                delay = min(delay * 2, self.timing.api_backoff_max_s)
        raise AssertionError("unreachable")

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

    # -- state handlers

    def _start(self) -> None:
        self._begin_session(1)

    def _begin_session(self, index: int) -> None:
        self.record.session = index
        if len(self.record.sessions) < index:
            session = SessionRecord(index=index, started_at=self.clock.time())
            session.attempts.append(self._attempt(1, "first", self.spec.session_budget_s))
            self.record.sessions.append(session)
        self._transition(ChainState.CHECKING_QUOTA, "session start")

    def _attempt(self, number: int, reason: str, budget_s: float) -> Attempt:
        return Attempt(
            number=number, reason=reason, budget_s=budget_s, timeout_s=int(self.spec.session_budget_s)
        )

    def _check_quota(self) -> None:
        quota: Quota = self._call("reading the GPU quota", self.backend.quota)
        attempt = self.record.current.attempt
        remaining = quota.remaining_s
        if remaining is None or remaining >= attempt.budget_s + QUOTA_MARGIN_S:
            self._transition(ChainState.RENDERING, "quota ok")
        elif remaining - QUOTA_MARGIN_S >= MIN_SESSION_BUDGET_S:
            attempt.budget_s = remaining - QUOTA_MARGIN_S
            self._transition(
                ChainState.RENDERING, f"budget cut to the {remaining / 3600:.1f} h of quota left"
            )
        else:
            self._quota_exhausted(quota.refresh_time, f"{remaining / 3600:.1f} h of GPU quota left")

    def _quota_exhausted(self, refresh: datetime | None, detail: str) -> None:
        when = refresh.astimezone().strftime("%Y-%m-%d %H:%M %Z") if refresh else "an unknown time"
        if self.spec.wait_for_quota:
            wait_until = refresh.timestamp() if refresh else self.clock.time() + self.timing.quota_recheck_s
            if wait_until <= self.clock.time():
                wait_until = self.clock.time() + self.timing.quota_recheck_s
            self.record.wait_until = wait_until
            self._transition(
                ChainState.WAITING_QUOTA,
                "quota_exhausted",
                message=f"{detail}; waiting for the reset at {when}",
            )
            return
        self._transition(
            ChainState.FAILED_QUOTA,
            "quota_exhausted",
            message=f"weekly GPU quota exhausted ({detail}, the session needs "
            f"{self.record.current.attempt.budget_s / 3600:.1f} h); it resets at {when}",
        )

    def _render(self) -> None:
        session, attempt = self.record.current, self.record.current.attempt
        folder = self.session_dir() / f"kernel-{attempt.number}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.renderer(self._session_request(session, attempt), folder)
        attempt.pre_push_version = self._call(
            "reading the kernel's latest version", lambda: self.backend.latest_version(self.spec.kernel_ref)
        )
        self._transition(ChainState.PUSHING, "rendered; push intent recorded")

    def _session_request(self, session: SessionRecord, attempt: Attempt) -> SessionRequest:
        previous = self.record.sessions[session.index - 2] if session.index > 1 else None
        expect = None
        sources: tuple[str, ...] = ()
        if previous is not None:
            expect = {
                "chain": self.spec.chain_id,
                "session": previous.index,
                "sha256": previous.outputs[TARBALL],
            }
            sources = (self.spec.dataset_ref,)
        return SessionRequest(
            chain_id=self.spec.chain_id,
            session=session.index,
            expect=expect,
            dataset_sources=sources,
            budget_s=attempt.budget_s,
            epochs=self._epochs_for(previous),
        )

    def _epochs_for(self, previous: SessionRecord | None) -> int | None:
        done = (previous.epoch or 0) if previous else 0
        if self.spec.until_epoch is None:
            return self.spec.epochs_per_session
        left = max(1, self.spec.until_epoch - done)
        return left if self.spec.epochs_per_session is None else min(left, self.spec.epochs_per_session)

    def _push(self) -> None:
        attempt = self.record.current.attempt
        if not self._entered_here and self._adopt_pushed_version(attempt):
            return
        request = PushRequest(
            folder=self.session_dir() / f"kernel-{attempt.number}",
            accelerator=self.spec.accelerator,
            timeout_s=attempt.timeout_s,
        )
        try:
            result = self._call_until_done("pushing the kernel", lambda: self.backend.push(request),
                                           lambda: self._adopt_pushed_version(attempt))
        except PushRefused as refused:
            self._refused(refused)
            return
        if result is not None:
            self._pushed(attempt, result.version, "pushed")

    def _call_until_done(self, what: str, call: Callable[[], T], went_through: Callable[[], bool]) -> T | None:
        """``call`` again after transient errors, with backoff. A request may have been carried out before its
        error reached us, so ``went_through`` is asked before each retry: None when it was. An in-band refusal
        (``PushRefused``) is not transient and goes to the caller."""
        delay = self.timing.api_backoff_initial_s
        for tries in range(1, self.timing.api_max_attempts + 1):
            try:
                return self._timed_call(call)
            except PushRefused:
                raise
            except (ApiError, OSError) as exc:
                if tries == self.timing.api_max_attempts:
                    raise ApiError(f"{what} kept failing: {_short(exc)}", hint=self._resume_hint()) from None
                self.echo(f"{what} failed ({_short(exc)}); checking it did not go through, retrying in {delay:.0f}s")
                self._sleep(delay)
                delay = min(delay * 2, self.timing.api_backoff_max_s)
                if went_through():
                    return None
        raise AssertionError("api_max_attempts must be at least 1")

    def _adopt_pushed_version(self, attempt: Attempt) -> bool:
        """After a restart or a failed push: if the kernel has a newer version than before our push, it is
        ours (the push went through): poll it instead of pushing a duplicate."""
        latest = self._call(
            "reading the kernel's latest version", lambda: self.backend.latest_version(self.spec.kernel_ref)
        )
        if latest is None or (attempt.pre_push_version is not None and latest <= attempt.pre_push_version):
            return False
        self._pushed(attempt, latest, "re-attached to the version an earlier push created")
        return True

    def _pushed(self, attempt: Attempt, version: int, reason: str) -> None:
        attempt.version = version
        attempt.pushed_at = self.clock.time()
        self.record.current.gpu_wait_started_at = None
        self._transition(ChainState.RUNNING, reason, message=f"{self.spec.kernel_ref} version {version}")

    def _refused(self, refused: PushRefused) -> None:
        session = self.record.current
        if refused.reason == "gpu_session_limit":
            now = self.clock.time()
            session.gpu_wait_started_at = session.gpu_wait_started_at or now
            if now - session.gpu_wait_started_at > self.timing.gpu_slot_max_wait_s:
                self._transition(
                    ChainState.FAILED_REFUSED,
                    "gpu_session_limit",
                    message=f"no GPU slot came free: {refused.message}",
                )
                return
            self.record.wait_until = now + self.timing.gpu_slot_wait_s
            self._transition(ChainState.WAITING_GPU_SLOT, "gpu_session_limit", message=refused.message)
        elif refused.reason == "quota_exhausted":
            self._quota_exhausted(None, refused.message)
        elif refused.reason == "invalid_sources" and self.record.session > 1:
            # The checkpoint dataset is ready but not yet visible to kernels: the stale-input branch.
            attempt = session.attempt
            attempt.outcome, attempt.failure_message = FailureKind.STALE_INPUT.value, refused.message
            self._retry_after(FailureKind.STALE_INPUT, refused.message)
        else:
            self._transition(
                ChainState.FAILED_REFUSED, refused.reason, message=f"push refused: {refused.message}"
            )

    def _wait(self) -> None:
        remaining = (self.record.wait_until or 0.0) - self.clock.time()
        if remaining > 0:
            self._sleep(remaining)
        self.record.wait_until = None
        self._transition(ChainState.CHECKING_QUOTA, f"waited ({self.record.state.value})")

    def _poll_kernel(self) -> None:
        attempt = self.record.current.attempt
        version = _pushed_version(attempt)
        interval, last_state, log_offset = self.timing.poll_initial_s, None, 0
        while True:
            status = self._call(
                "reading the kernel's status",
                lambda: self.backend.status(self.spec.kernel_ref, version),
            )
            if status.state is KernelState.RUNNING and attempt.running_at is None:
                attempt.running_at = self.clock.time()
                self._save()
            if self.follow_logs:
                log_offset = self._print_new_log(version, log_offset)
            if status.state.is_terminal:
                self._kernel_ended(attempt, status)
                return
            interval = (
                self.timing.poll_initial_s
                if status.state != last_state
                else min(interval * self.timing.poll_growth, self.timing.poll_max_s)
            )
            last_state = status.state
            self._sleep(interval)

    def _print_new_log(self, version: int, offset: int) -> int:
        text = self._call_once(lambda: self.backend.logs(self.spec.kernel_ref, version))
        if not text or len(text) <= offset:
            return offset
        for line in text[offset:].splitlines():
            self.echo(f"  | {line}")
        return len(text)

    def _kernel_ended(self, attempt: Attempt, status: KernelStatus) -> None:
        attempt.ended_at = self.clock.time()
        attempt.kernel_state = status.state.value
        attempt.failure_message = status.failure_message
        if status.state is KernelState.COMPLETE:
            self._transition(ChainState.DOWNLOADING, "kernel complete")
        else:
            self._kernel_failed(attempt, status)

    def _kernel_failed(self, attempt: Attempt, status: KernelStatus) -> None:
        session = self.record.current
        version = _pushed_version(attempt)
        log_text = self._call_once(lambda: self.backend.logs(self.spec.kernel_ref, version)) or ""
        incoming = self.session_dir() / ".incoming"
        run = self._failed_outputs(version, incoming)
        kind = classify_failure(
            status, log_text, run, ran_s=self._ran_s(attempt), timeout_s=attempt.timeout_s
        )
        attempt.outcome = kind.value
        attempt.log_excerpt = log_excerpt(log_text) or None
        if kind is FailureKind.TIME_LIMIT and self._salvage(session, incoming):
            return
        shutil.rmtree(incoming, ignore_errors=True)
        session.gpu_seconds += self._ran_s(attempt) or 0.0
        if kind is not FailureKind.STALE_INPUT and attempt.log_excerpt:
            self.echo(
                f"kernel {self.spec.kernel_ref} version {version} ended in {status.state.value}; log tail:"
            )
            for line in attempt.log_excerpt.splitlines():
                self.echo(f"  | {line}")
        detail = (run or {}).get("message") if kind is FailureKind.DIVERGED else None
        self._retry_after(kind, detail or status.failure_message)

    def _ran_s(self, attempt: Attempt) -> float | None:
        start = attempt.running_at or attempt.pushed_at
        if start is None or attempt.ended_at is None:
            return None
        return attempt.ended_at - start

    def _failed_outputs(self, version: int, incoming: Path) -> dict[str, Any] | None:
        """Fetch what a failed version left (best effort) into ``incoming``; its run.json tells a crash from a
        kill, and a kill that left a good checkpoint is salvaged."""
        files = self._call_once(
            lambda: self.backend.download(self.spec.kernel_ref, version, incoming, pattern=OUTPUT_PATTERN)
        )
        found = [p for p in files or [] if p.name == RUN_JSON]
        try:
            return read_run_json(found[0]) if found else None
        except OutputsInvalid:
            return None

    def _salvage(self, session: SessionRecord, incoming: Path) -> bool:
        """A session stopped at the time limit that still saved a checkpoint made progress: keep it."""
        try:
            verified = verify_outputs(incoming, chain_id=self.spec.chain_id, session=session.index)
        except OutputsInvalid:
            return False
        self._keep_outputs(session, incoming, verified)
        session.pre_publish_version = self._dataset_version()
        self._transition(ChainState.PUBLISHING, "killed at the time limit; its saved checkpoint is kept")
        return True

    def _retry_after(self, kind: FailureKind, failure: str | None) -> None:
        """The failure policy: each kind of failure has its own counter, limit and next state."""
        if kind is FailureKind.STALE_INPUT:
            self._relaunch_stale_input()
        elif kind is FailureKind.TIME_LIMIT:
            self._retry_shorter()
        elif kind is FailureKind.DIVERGED:
            self._stop_diverged(failure or kind.value)
        else:
            self._retry_error(kind, failure or kind.value)

    def _relaunch_stale_input(self) -> None:
        """Not the user's fault: relaunch with the same budget once Kaggle had time to serve the new version."""
        session, kind = self.record.current, FailureKind.STALE_INPUT
        if session.stale_relaunches >= self.timing.max_stale_relaunches:
            self._transition(
                ChainState.FAILED_STALE_INPUT,
                kind.value,
                message=f"the kernel kept mounting an older version of {self.spec.dataset_ref}",
            )
            return
        session.stale_relaunches += 1
        self._next_attempt(
            kind,
            session.attempt.budget_s,
            ChainState.WAITING_STALE_INPUT,
            self.timing.stale_input_wait_s,
            "the kernel mounted an older checkpoint version; relaunching",
        )

    def _retry_shorter(self) -> None:
        """Killed at the time limit without a checkpoint: a shorter budget gives the trainer a wider margin."""
        session, kind = self.record.current, FailureKind.TIME_LIMIT
        if session.time_limit_retries >= self.timing.max_time_limit_retries:
            self._transition(
                ChainState.FAILED_TIME_LIMIT,
                kind.value,
                message=f"killed at the time limit {session.time_limit_retries + 1} times without outputs",
            )
            return
        session.time_limit_retries += 1
        budget = session.attempt.budget_s * TIME_LIMIT_BUDGET_FACTOR
        self._next_attempt(
            kind,
            budget,
            ChainState.WAITING_RETRY,
            0.0,
            f"killed at the time limit; retrying with a {budget / 3600:.2f} h budget",
        )

    def _stop_diverged(self, detail: str) -> None:
        """The trainer diverged: resuming from the same checkpoint with the same settings diverges again."""
        self._transition(
            ChainState.FAILED_KERNEL,
            FailureKind.DIVERGED.value,
            message=f"{detail}. Not retried: it would diverge again. Lower the learning rate in kr.toml "
            '(trainer.extra_args = ["--lr", "1e-4"]) and run kr chain again',
        )

    def _retry_error(self, kind: FailureKind, detail: str) -> None:
        """A kernel error or outputs that never verified: counts against ``--max-retries``."""
        session = self.record.current
        if session.error_retries >= self.spec.max_retries:
            self._transition(
                ChainState.FAILED_KERNEL,
                kind.value,
                message=f"the kernel failed {session.error_retries + 1} times; last: {detail}",
            )
            return
        session.error_retries += 1
        self._next_attempt(
            kind,
            session.attempt.budget_s,
            ChainState.WAITING_RETRY,
            self.timing.retry_delay_s,
            f"{detail}; retry {session.error_retries} of {self.spec.max_retries} from the last good checkpoint",
        )

    def _next_attempt(
        self, kind: FailureKind, budget_s: float, state: ChainState, wait_s: float, message: str
    ) -> None:
        session = self.record.current
        session.attempts.append(self._attempt(len(session.attempts) + 1, kind.value, budget_s))
        self.record.wait_until = self.clock.time() + wait_s
        self._transition(state, kind.value, message=message)

    def _download(self) -> None:
        session, attempt = self.record.current, self.record.current.attempt
        version = _pushed_version(attempt)
        incoming = self.session_dir() / ".incoming"
        problem = ""
        for _ in range(self.timing.download_attempts):
            self._call(
                "downloading the outputs",
                lambda: self.backend.download(
                    self.spec.kernel_ref, version, incoming, pattern=OUTPUT_PATTERN
                ),
            )
            try:
                verified = verify_outputs(incoming, chain_id=self.spec.chain_id, session=session.index)
            except OutputsInvalid as exc:
                problem = exc.message
                self.echo(
                    f"outputs of version {attempt.version} do not verify ({problem}); downloading again"
                )
                continue
            self._keep_outputs(session, incoming, verified)
            attempt.outcome = "complete"
            session.pre_publish_version = self._dataset_version()
            self._transition(ChainState.PUBLISHING, "outputs verified; publish intent recorded")
            return
        shutil.rmtree(incoming, ignore_errors=True)
        attempt.outcome = FailureKind.BAD_OUTPUTS.value
        self._retry_after(FailureKind.BAD_OUTPUTS, f"outputs do not verify: {problem}")

    def _keep_outputs(self, session: SessionRecord, incoming: Path, verified: VerifiedOutputs) -> None:
        for name in verified.sha256:
            os.replace(incoming / name, self.session_dir() / name)
        shutil.rmtree(incoming, ignore_errors=True)
        run, result = verified.run, verified.run.get("result") or {}
        session.outputs = dict(verified.sha256)
        session.epoch = result.get("epoch")
        session.step = result.get("step")
        session.stop_reason = run.get("stop_reason") or result.get("stop_reason")
        session.best = result.get("best")
        seconds = run.get("seconds")
        attempt = session.attempt
        session.gpu_seconds += (
            float(seconds) if isinstance(seconds, (int, float)) else (self._ran_s(attempt) or 0.0)
        )

    def _dataset_version(self) -> int | None:
        info: DatasetInfo | None = self._call(
            "reading the checkpoint dataset", lambda: self.backend.dataset_info(self.spec.dataset_ref)
        )
        return info.version if info is not None else None

    def _publish(self) -> None:
        session = self.record.current
        if not self._entered_here and self._publish_went_through(session):
            self._published(session)
            return
        folder = self._publish_folder(session)
        self._call_until_done(
            "publishing the checkpoint",
            lambda: self.backend.publish_dataset(folder, self.spec.dataset_ref, title=self._dataset_title(),
                                                 notes=self._dataset_notes(session)),
            lambda: self._publish_went_through(session),
        )
        shutil.rmtree(folder, ignore_errors=True)
        self._published(session)

    def _publish_went_through(self, session: SessionRecord) -> bool:
        version = self._dataset_version()
        return version is not None and (
            session.pre_publish_version is None or version > session.pre_publish_version
        )

    def _published(self, session: SessionRecord) -> None:
        session.publish_started_at = self.clock.time()
        self._transition(ChainState.WAITING_DATASET, "published")

    def _publish_folder(self, session: SessionRecord) -> Path:
        """The dataset version's files: the tarball, the log and the marker the next kernel checks."""
        from kaggle_runner.marker import write_marker

        folder = self.session_dir() / ".publish"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in (TARBALL, TRAINING_LOG):
            _link_or_copy(self.session_dir() / name, folder / name)
        marker = write_marker(
            folder, chain=self.spec.chain_id, session=session.index, tarball=folder / TARBALL
        )
        if marker.sha256 != session.outputs[TARBALL]:
            raise OutputsInvalid(
                f"{TARBALL} of session {session.index} changed on disk since it was verified"
            )
        return folder

    def _dataset_title(self) -> str:
        # Kaggle wants 6 to 50 characters; the slug already has that length.
        return self.spec.dataset_ref.split("/")[-1]

    def _dataset_notes(self, session: SessionRecord) -> str:
        return (
            f"chain {self.spec.chain_id} session {session.index}: epoch {session.epoch} step {session.step}"
        )

    def _wait_dataset(self) -> None:
        session = self.record.current
        started = session.publish_started_at or self.clock.time()
        while True:
            info = self._call(
                "reading the checkpoint dataset", lambda: self.backend.dataset_info(self.spec.dataset_ref)
            )
            if info is not None and info.is_ready and self._version_went_up(info, session):
                self._dataset_ready(session, info)
                return
            if info is not None and info.status == "failed":
                self._transition(
                    ChainState.FAILED_DATASET,
                    "dataset_failed",
                    message=f"{self.spec.dataset_ref}: processing the new version failed",
                )
                return
            if self.clock.time() - started > self.timing.dataset_ready_timeout_s:
                status = info.status if info else "not found"
                self._transition(
                    ChainState.FAILED_DATASET,
                    "dataset_timeout",
                    message=f"{self.spec.dataset_ref} still {status} {self.timing.dataset_ready_timeout_s / 60:.0f} min after publishing",
                )
                return
            self._sleep(self.timing.dataset_poll_s)

    def _version_went_up(self, info: DatasetInfo, session: SessionRecord) -> bool:
        if info.version is None:
            return True  # a backend that cannot tell versions apart: the kernel's marker check guards it
        return session.pre_publish_version is None or info.version > session.pre_publish_version

    def _dataset_ready(self, session: SessionRecord, info: DatasetInfo) -> None:
        session.dataset_version = info.version
        session.finished_at = self.clock.time()
        if self._chain_done(session):
            message = f"final model in {self.session_dir(session.index)} and {self.spec.dataset_ref}"
            self._transition(ChainState.SUCCEEDED, "all sessions done", message=message)
        else:
            self._begin_session(session.index + 1)

    def _chain_done(self, session: SessionRecord) -> bool:
        if self.spec.until_epoch is not None and (session.epoch or 0) >= self.spec.until_epoch:
            return True
        return session.index >= self.spec.sessions

    # -- reopening

    def _reopen_if_finished(self) -> None:
        """A rerun of a failed chain tries its current step again with fresh retry counts; a succeeded chain
        whose ``sessions`` was raised goes on with the next session."""
        state = self.record.state
        if state is ChainState.SUCCEEDED and self.record.session and self.record.session < self.spec.sessions:
            if self.spec.until_epoch is None or (self.record.current.epoch or 0) < self.spec.until_epoch:
                self._begin_session(self.record.session + 1)
            return
        if not state.is_failed:
            return
        session = self.record.current
        session.error_retries = session.time_limit_retries = session.stale_relaunches = 0
        session.gpu_wait_started_at = None
        if state is ChainState.FAILED_DATASET:
            session.publish_started_at = self.clock.time()
            self._transition(ChainState.WAITING_DATASET, "resumed by the user")
            return
        if session.attempt.version is not None:
            session.attempts.append(
                self._attempt(len(session.attempts) + 1, "resumed", self.spec.session_budget_s)
            )
        self._transition(ChainState.CHECKING_QUOTA, "resumed by the user")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _pushed_version(attempt: Attempt) -> int:
    if attempt.version is None:
        raise AssertionError("the attempt has no pushed version yet")  # states after PUSHING always have one
    return attempt.version


def _is_permanent(exc: BaseException) -> bool:
    """A 4xx other than 408/429 (bad credentials, no permission, not found): waiting will not fix it."""
    status = getattr(exc, "http_status", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
