"""The chain's state machine: its states, the kinds of failure, and every transition it may make.

``TRANSITIONS`` declares, for each state, the states the runner may move to from it. ``ChainRunner`` checks
each transition against it (``check_transition``): an undeclared one is a bug in kr, so it raises instead
of persisting a state nobody planned for. ``kaggle_runner/README.md`` draws the same table as a mermaid
diagram, and a test keeps the two equal, edge for edge.
"""

from __future__ import annotations

import enum


class ChainState(str, enum.Enum):
    """Where a chain stands. Session-scoped states apply to ``ChainRecord.session``."""

    NEW = "new"  # chain.json written, no session begun
    CHECKING_QUOTA = "checking_quota"  # comparing the weekly GPU quota left with the session's budget
    RENDERING = "rendering"  # writing the session's kernel folder
    PUSHING = "pushing"  # intent + pre-push version recorded; the push may or may not have gone through
    RUNNING = "running"  # the pushed version is known; polling it until it ends
    DOWNLOADING = "downloading"  # the kernel completed; fetching and verifying its outputs
    PUBLISHING = "publishing"  # outputs verified; uploading them as a new checkpoint dataset version
    WAITING_DATASET = "waiting_dataset"  # uploaded; waiting for "ready" at a higher version number
    WAITING_GPU_SLOT = "waiting_gpu_slot"  # push refused: the account's concurrent GPU sessions are in use
    WAITING_QUOTA = "waiting_quota"  # weekly quota too low; waiting for its reset (--wait-for-quota)
    WAITING_STALE_INPUT = "waiting_stale_input"  # the kernel mounted an older dataset version; relaunch soon
    WAITING_RETRY = "waiting_retry"  # the kernel failed; pausing before the next attempt
    SUCCEEDED = "succeeded"  # every session done (or --until-epoch reached); final model published
    FAILED_KERNEL = "failed_kernel"  # the kernel kept failing: more than --max-retries errors
    FAILED_TIME_LIMIT = "failed_time_limit"  # killed at the time limit even with shorter budgets
    FAILED_STALLED = "failed_stalled"  # the trainer stalled at the same place twice (or too often)
    FAILED_QUOTA = "failed_quota"  # weekly GPU quota exhausted and not waiting for its reset
    FAILED_DATASET = "failed_dataset"  # the checkpoint dataset stayed in processing past the timeout
    FAILED_STALE_INPUT = "failed_stale_input"  # the kernel kept mounting an old dataset version
    FAILED_REFUSED = "failed_refused"  # the backend refused the push for a reason waiting does not fix

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def is_failed(self) -> bool:
        return self in FAILED_STATES

    @property
    def is_waiting(self) -> bool:
        return self in WAITING_STATES


S = ChainState

FAILED_STATES = frozenset(
    {
        S.FAILED_KERNEL,
        S.FAILED_TIME_LIMIT,
        S.FAILED_STALLED,
        S.FAILED_QUOTA,
        S.FAILED_DATASET,
        S.FAILED_STALE_INPUT,
        S.FAILED_REFUSED,
    }
)
TERMINAL_STATES = FAILED_STATES | {S.SUCCEEDED}
# States that sleep until ``ChainRecord.wait_until`` and then go back to CHECKING_QUOTA.
WAITING_STATES = frozenset({S.WAITING_GPU_SLOT, S.WAITING_QUOTA, S.WAITING_STALE_INPUT, S.WAITING_RETRY})


class FailureKind(str, enum.Enum):
    """Why a pushed kernel version did not complete; each kind is one branch of ``chain_policy.POLICY``."""

    KERNEL_ERROR = "kernel_error"  # user code failed: counts against --max-retries
    TIME_LIMIT = "time_limit"  # killed at the session limit without outputs: retried with a shorter budget
    STALE_INPUT = "stale_input"  # mounted an older checkpoint version: relaunched, not the user's fault
    BAD_OUTPUTS = "bad_outputs"  # completed, but its outputs never verified: counts like a kernel error
    DIVERGED = "diverged"  # the loss went non-finite: a retry from the same checkpoint would repeat it, so none
    STALLED = "stalled"  # the kernel's watchdog stopped a trainer that made no progress: relaunched once


# Every transition the runner makes (from -> the states it may go to). Reruns of a finished chain reopen it:
# a failed one at its current step, a succeeded one with more sessions at the next session.
TRANSITIONS: dict[ChainState, frozenset[ChainState]] = {
    S.NEW: frozenset({S.CHECKING_QUOTA}),
    S.CHECKING_QUOTA: frozenset({S.RENDERING, S.WAITING_QUOTA, S.FAILED_QUOTA}),
    S.RENDERING: frozenset({S.PUSHING}),
    S.PUSHING: frozenset(
        {S.RUNNING, S.WAITING_GPU_SLOT, S.WAITING_QUOTA, S.FAILED_QUOTA, S.WAITING_STALE_INPUT,
         S.FAILED_STALE_INPUT, S.FAILED_REFUSED}
    ),
    S.RUNNING: frozenset(
        {S.DOWNLOADING, S.WAITING_RETRY, S.WAITING_STALE_INPUT, S.PUBLISHING, S.FAILED_KERNEL,
         S.FAILED_TIME_LIMIT, S.FAILED_STALLED, S.FAILED_STALE_INPUT}
    ),
    S.DOWNLOADING: frozenset({S.PUBLISHING, S.WAITING_RETRY, S.FAILED_KERNEL}),
    S.PUBLISHING: frozenset({S.WAITING_DATASET}),
    S.WAITING_DATASET: frozenset({S.CHECKING_QUOTA, S.SUCCEEDED, S.FAILED_DATASET}),
    S.WAITING_GPU_SLOT: frozenset({S.CHECKING_QUOTA}),
    S.WAITING_QUOTA: frozenset({S.CHECKING_QUOTA}),
    S.WAITING_RETRY: frozenset({S.CHECKING_QUOTA}),
    S.WAITING_STALE_INPUT: frozenset({S.CHECKING_QUOTA}),
    S.SUCCEEDED: frozenset({S.CHECKING_QUOTA}),
    S.FAILED_KERNEL: frozenset({S.CHECKING_QUOTA}),
    S.FAILED_TIME_LIMIT: frozenset({S.CHECKING_QUOTA}),
    S.FAILED_STALLED: frozenset({S.CHECKING_QUOTA}),
    S.FAILED_QUOTA: frozenset({S.CHECKING_QUOTA}),
    S.FAILED_DATASET: frozenset({S.WAITING_DATASET}),
    S.FAILED_STALE_INPUT: frozenset({S.CHECKING_QUOTA}),
    S.FAILED_REFUSED: frozenset({S.CHECKING_QUOTA}),
}


class IllegalTransition(AssertionError):
    """The runner tried a transition ``TRANSITIONS`` does not declare: a bug in kr, never the user's."""


def check_transition(previous: ChainState, state: ChainState) -> None:
    if state not in TRANSITIONS.get(previous, frozenset()):
        raise IllegalTransition(
            f"chain transition {previous.value} -> {state.value} is not in kaggle_runner.chain_machine.TRANSITIONS"
        )
