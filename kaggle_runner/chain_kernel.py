"""The kernel half of a session: check the quota, render, push (or adopt an earlier push), poll, and handle a
version that did not complete through the failure policy (``chain_policy``)."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from kaggle_runner.backends.base import KernelState, KernelStatus, PushRefused, PushRequest, Quota
from kaggle_runner.chain_core import ChainCore, SessionRequest
from kaggle_runner.chain_machine import ChainState, FailureKind
from kaggle_runner.chain_observer import KernelFailed
from kaggle_runner.chain_outputs import (
    OutputsInvalid,
    VerifiedOutputs,
    classify_failure,
    log_excerpt,
    verify_outputs,
)
from kaggle_runner.chain_policy import MIN_SESSION_BUDGET_S, QUOTA_MARGIN_S, Failure, decide
from kaggle_runner.chain_state import Attempt, SessionRecord
from kr_contract.errors import ContractError
from kr_contract.names import OUTPUT_PATTERN, RUN_JSON, TARBALL
from kr_contract.runjson import read_run_json


class KernelSteps(ChainCore):
    # -- quota

    def _check_quota(self) -> None:
        quota: Quota = self._call("reading the GPU quota", self.backend.quota)
        attempt = self.record.current.attempt
        remaining = quota.remaining_s
        if remaining is None or remaining >= attempt.budget_s + QUOTA_MARGIN_S:
            self._transition(ChainState.RENDERING, "quota ok")
        elif remaining - QUOTA_MARGIN_S >= MIN_SESSION_BUDGET_S:
            attempt.budget_s = remaining - QUOTA_MARGIN_S
            self._transition(ChainState.RENDERING, f"budget cut to the {remaining / 3600:.1f} h of quota left")
        else:
            self._quota_exhausted(quota.refresh_time, f"{remaining / 3600:.1f} h of GPU quota left")

    def _quota_exhausted(self, refresh: datetime | None, detail: str) -> None:
        when = refresh.astimezone().strftime("%Y-%m-%d %H:%M %Z") if refresh else "an unknown time"
        if self.spec.wait_for_quota:
            wait_until = refresh.timestamp() if refresh else self.clock.time() + self.timing.quota_recheck_s
            if wait_until <= self.clock.time():
                wait_until = self.clock.time() + self.timing.quota_recheck_s
            self.record.wait_until = wait_until
            self._transition(ChainState.WAITING_QUOTA, "quota_exhausted",
                             message=f"{detail}; waiting for the reset at {when}")
            return
        self._transition(
            ChainState.FAILED_QUOTA,
            "quota_exhausted",
            message=f"weekly GPU quota exhausted ({detail}, the session needs "
            f"{self.record.current.attempt.budget_s / 3600:.1f} h); it resets at {when}",
        )

    # -- render and push

    def _render(self) -> None:
        session, attempt = self.record.current, self.record.current.attempt
        folder = self.session_dir() / f"kernel-{attempt.number}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        attempt.render_started_at = self.clock.time()
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
            expect = {"chain": self.spec.chain_id, "session": previous.index, "sha256": previous.outputs[TARBALL]}
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
        if attempt.render_started_at is not None:
            self._stage("push", attempt.pushed_at - attempt.render_started_at)
        self._transition(ChainState.RUNNING, reason, message=f"{self.spec.kernel_ref} version {version}")

    def _refused(self, refused: PushRefused) -> None:
        session = self.record.current
        if refused.reason == "gpu_session_limit":
            now = self.clock.time()
            session.gpu_wait_started_at = session.gpu_wait_started_at or now
            if now - session.gpu_wait_started_at > self.timing.gpu_slot_max_wait_s:
                self._transition(ChainState.FAILED_REFUSED, "gpu_session_limit",
                                 message=f"no GPU slot came free: {refused.message}")
                return
            self.record.wait_until = now + self.timing.gpu_slot_wait_s
            self._transition(ChainState.WAITING_GPU_SLOT, "gpu_session_limit", message=refused.message)
        elif refused.reason == "quota_exhausted":
            self._quota_exhausted(None, refused.message)
        elif refused.reason == "invalid_sources" and self.record.session > 1:
            # The checkpoint dataset is ready but not yet visible to kernels: the stale-input branch.
            attempt = session.attempt
            attempt.outcome, attempt.failure_message = FailureKind.STALE_INPUT.value, refused.message
            self._failed(FailureKind.STALE_INPUT, refused.message)
        else:
            self._transition(ChainState.FAILED_REFUSED, refused.reason, message=f"push refused: {refused.message}")

    # -- poll

    def _poll_kernel(self) -> None:
        attempt = self.record.current.attempt
        version = pushed_version(attempt)
        interval, last_state, log_offset = self.timing.poll_initial_s, None, 0
        while True:
            status = self._call("reading the kernel's status", lambda: self.backend.status(self.spec.kernel_ref, version))
            if status.state is KernelState.RUNNING and attempt.running_at is None:
                attempt.running_at = self.clock.time()
                if attempt.pushed_at is not None:
                    self._stage("queue", attempt.running_at - attempt.pushed_at)
                self._save()
            if self.follow_logs:
                log_offset = self._forward_new_log(version, log_offset)
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

    def _forward_new_log(self, version: int, offset: int) -> int:
        text = self._call_once(lambda: self.backend.logs(self.spec.kernel_ref, version))
        if not text or len(text) <= offset:
            return offset
        self.observer.log_lines(text[offset:].splitlines())
        return len(text)

    def _kernel_ended(self, attempt: Attempt, status: KernelStatus) -> None:
        attempt.ended_at = self.clock.time()
        attempt.kernel_state = status.state.value
        attempt.failure_message = status.failure_message
        ran = ran_s(attempt)
        if ran is not None:
            self._stage("run", ran)
        if status.state is KernelState.COMPLETE:
            self._transition(ChainState.DOWNLOADING, "kernel complete")
        else:
            self._kernel_failed(attempt, status)

    # -- a version that did not complete

    def _kernel_failed(self, attempt: Attempt, status: KernelStatus) -> None:
        session = self.record.current
        version = pushed_version(attempt)
        log_text = self._call_once(lambda: self.backend.logs(self.spec.kernel_ref, version)) or ""
        incoming = self.session_dir() / ".incoming"
        run = self._failed_outputs(version, incoming)
        kind = classify_failure(status, log_text, run, ran_s=ran_s(attempt), timeout_s=attempt.timeout_s)
        attempt.outcome = kind.value
        attempt.log_excerpt = log_excerpt(log_text) or None
        if kind is FailureKind.STALLED:
            attempt.stall = _stall_of(run)
        if kind in (FailureKind.TIME_LIMIT, FailureKind.STALLED) and self._salvage(session, incoming, kind):
            return
        shutil.rmtree(incoming, ignore_errors=True)
        session.gpu_seconds += ran_s(attempt) or 0.0
        if kind is not FailureKind.STALE_INPUT and attempt.log_excerpt:
            self.observer.kernel_failed(KernelFailed(self.spec.kernel_ref, version, status.state.value,
                                                     attempt.log_excerpt))
        detail = (run or {}).get("message") if kind in (FailureKind.DIVERGED, FailureKind.STALLED) else None
        self._failed(kind, detail or status.failure_message or kind.value)

    def _failed_outputs(self, version: int, incoming: Path) -> dict[str, Any] | None:
        """Fetch what a failed version left (best effort) into ``incoming``; its run.json tells a crash from a
        kill or a stall, and a kill or stall that left a good checkpoint is salvaged."""
        files = self._call_once(
            lambda: self.backend.download(self.spec.kernel_ref, version, incoming, pattern=OUTPUT_PATTERN)
        )
        found = [p for p in files or [] if p.name == RUN_JSON]
        try:
            return read_run_json(found[0]) if found else None
        except ContractError:
            return None

    def _salvage(self, session: SessionRecord, incoming: Path, kind: FailureKind) -> bool:
        """A session stopped at the time limit, or by the watchdog, that still saved a checkpoint beyond where
        it started made progress: keep it, and the session counts."""
        try:
            verified = verify_outputs(incoming, chain_id=self.spec.chain_id, session=session.index, salvage=True)
        except OutputsInvalid:
            return False
        if (verified.manifest.step or 0) <= self._start_step(session):
            return False  # nothing gained: a relaunch from the same checkpoint is the same
        self._keep_outputs(session, incoming, verified)
        session.pre_publish_version = self._dataset_version()
        why = "killed at the time limit" if kind is FailureKind.TIME_LIMIT else "stalled"
        self._transition(ChainState.PUBLISHING, f"{why}; its saved checkpoint is kept")
        return True

    def _keep_outputs(self, session: SessionRecord, incoming: Path, verified: VerifiedOutputs) -> None:
        """Move verified outputs into the session's folder and take its figures from them."""
        for name in verified.sha256:
            os.replace(incoming / name, self.session_dir() / name)
        shutil.rmtree(incoming, ignore_errors=True)
        run, result = verified.run, verified.run.get("result") or {}
        session.outputs = dict(verified.sha256)
        # A killed or stalled trainer wrote no result: the checkpoint's manifest says where it stands.
        session.epoch = result.get("epoch", verified.manifest.epoch)
        session.step = result.get("step", verified.manifest.step)
        session.stop_reason = run.get("stop_reason") or result.get("stop_reason")
        session.best = result.get("best")
        seconds = run.get("seconds")
        session.gpu_seconds += (
            float(seconds) if isinstance(seconds, (int, float)) else (ran_s(session.attempt) or 0.0)
        )
        startup = _startup_s(seconds, result.get("seconds"))
        if session.index > 1 and startup is not None:
            self._stage("mount+resume", startup)

    def _start_step(self, session: SessionRecord) -> int:
        """The step this session resumed from: where the previous session's checkpoint stood."""
        previous = self.record.sessions[session.index - 2] if session.index > 1 else None
        return (previous.step or 0) if previous is not None else 0

    def _failed(self, kind: FailureKind, detail: str) -> None:
        """The failure policy decides: a new attempt after a wait, or a failed state."""
        session = self.record.current
        decision = decide(Failure(kind, session, self.spec, self.timing, detail, session.attempt.stall))
        if not decision.retry:
            self._transition(decision.state, kind.value, message=decision.message)
            return
        budget = decision.budget_s if decision.budget_s is not None else session.attempt.budget_s
        session.attempts.append(self._attempt(len(session.attempts) + 1, kind.value, budget))
        self.record.wait_until = self.clock.time() + decision.wait_s
        self._transition(decision.state, kind.value, message=decision.message)


def _startup_s(kernel_s: object, trainer_s: object) -> float | None:
    """The kernel's own time around the trainer: mount, verify, unpack and resume, then pack."""
    if isinstance(kernel_s, (int, float)) and isinstance(trainer_s, (int, float)) and kernel_s >= trainer_s:
        return float(kernel_s) - float(trainer_s)
    return None


def _stall_of(run: dict[str, Any] | None) -> dict[str, Any] | None:
    stall = (run or {}).get("stall")
    return dict(stall) if isinstance(stall, dict) else None


def ran_s(attempt: Attempt) -> float | None:
    start = attempt.running_at or attempt.pushed_at
    if start is None or attempt.ended_at is None:
        return None
    return attempt.ended_at - start


def pushed_version(attempt: Attempt) -> int:
    if attempt.version is None:
        raise AssertionError("the attempt has no pushed version yet")  # states after PUSHING always have one
    return attempt.version
