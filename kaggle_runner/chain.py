"""The chain: N training sessions in a row, each resuming from the checkpoint the previous one published.

The chain is an explicit state machine (``chain_machine``: its states and the table of allowed transitions)
persisted atomically in ``$KR_HOME/runs/<chain_id>/chain.json`` at every transition, so that a ``kr chain``
killed at any line (Ctrl-C, SIGKILL, reboot) and started again continues the same chain: it re-attaches to a
running kernel, finds out whether an interrupted push went through (``latest_version`` against the version
recorded before the push) instead of pushing a duplicate, and redoes an interrupted download or publish.

Per session: check the quota -> render -> record intent -> push -> poll -> download + verify -> publish
``checkpoints.tar.gz``, ``training.log`` and ``kr-marker.json`` as a new dataset version -> wait until the
dataset is ready at a higher version -> next session, mounting it.

The modules (kaggle_runner/README.md has the diagram and the tables):

- ``chain_machine``: ``ChainState``, ``FailureKind``, ``TRANSITIONS``;
- ``chain_policy``: ``Timing`` and the failure policy, one table of named branches;
- ``chain_state``: the records in chain.json, their storage, the lock;
- ``chain_core``, ``chain_kernel``, ``chain_dataset``: the runner's steps; this module assembles them;
- ``chain_observer``: what the runner reports (it never writes to the terminal itself);
- ``chain_outputs``: the checks of a session's outputs and ``classify_failure``;
- ``chain_summary``: what ``kr status`` shows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kaggle_runner.chain_core import HISTORY_LIMIT, Renderer, SessionRequest
from kaggle_runner.chain_dataset import DatasetSteps
from kaggle_runner.chain_machine import WAITING_STATES, ChainState
from kaggle_runner.chain_policy import (  # noqa: F401 - the policy's constants, as chain.<NAME>
    API_MAX_ATTEMPTS,
    DOWNLOAD_ATTEMPTS,
    GPU_SLOT_WAIT_S,
    MAX_STALE_RELAUNCHES,
    MAX_STALL_RELAUNCHES,
    POLL_INITIAL_S,
    QUOTA_MARGIN_S,
    RERUN_REASON,
    TIME_LIMIT_BUDGET_FACTOR,
    Timing,
)
from kaggle_runner.chain_state import ChainRecord
from kaggle_runner.errors import KrError

if TYPE_CHECKING:
    from kaggle_runner.config import KrConfig

__all__ = ["HISTORY_LIMIT", "ChainRunner", "Renderer", "SessionRequest", "Timing", "config_renderer"]


def config_renderer(config: KrConfig, owner: str) -> Renderer:
    """The renderer of real kernels: ``kaggle_runner.render`` with the chain's session spec."""

    def render(request: SessionRequest, folder: Path) -> None:
        from kaggle_runner.render import SessionSpec, render_kernel
        from kr_contract.marker import Marker

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


class ChainRunner(DatasetSteps):
    """Drives one chain from its persisted state to a terminal state. Create it under ``chain_lock``."""

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
            ChainState.NEW: lambda: self._begin_session(1),
            ChainState.CHECKING_QUOTA: self._check_quota,
            ChainState.RENDERING: self._render,
            ChainState.PUSHING: self._push,
            ChainState.RUNNING: self._poll_kernel,
            ChainState.DOWNLOADING: self._download,
            ChainState.PUBLISHING: self._publish,
            ChainState.WAITING_DATASET: self._wait_dataset,
            **waiting,
        }

    def _wait(self) -> None:
        remaining = (self.record.wait_until or 0.0) - self.clock.time()
        if remaining > 0:
            self._sleep(remaining)
        self.record.wait_until = None
        self._transition(ChainState.CHECKING_QUOTA, f"waited ({self.record.state.value})")

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
        session.stall_relaunches = 0
        session.gpu_wait_started_at = None
        if state is ChainState.FAILED_DATASET:
            session.publish_started_at = self.clock.time()
            self._transition(ChainState.WAITING_DATASET, "resumed by the user")
            return
        if session.attempt.version is not None:
            session.attempts.append(self._attempt(len(session.attempts) + 1, RERUN_REASON, self.spec.session_budget_s))
        self._transition(ChainState.CHECKING_QUOTA, "resumed by the user")
