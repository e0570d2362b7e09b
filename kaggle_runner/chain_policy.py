"""The chain's failure policy and its intervals: one table of named branches, and ``Timing``.

A pushed kernel that did not complete is classified (``chain_outputs.classify_failure``) into a
``FailureKind``; ``POLICY`` maps each kind to its branch: which counter of the session it uses, how often it
may happen, the state to wait in before the next attempt and for how long, the budget of that attempt, the
failed state it ends in, and what the chain says in either case. ``decide`` applies a branch; it is pure, so
every branch is tested directly (tests/test_chain_policy.py). The README's failure-policy section describes
the same table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kaggle_runner.chain_machine import ChainState, FailureKind

if TYPE_CHECKING:
    from kaggle_runner.chain_state import ChainSpec, SessionRecord

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
# A stall is most often transient (a stuck DataLoader worker, a hung download): relaunch, but not forever.
MAX_STALL_RELAUNCHES = 2
# Downloads whose files do not verify are fetched again this often before the session counts as failed.
DOWNLOAD_ATTEMPTS = 3


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
    max_stall_relaunches: int = MAX_STALL_RELAUNCHES
    download_attempts: int = DOWNLOAD_ATTEMPTS

    def scaled(self, factor: float) -> Timing:
        """The same policy with every duration (``*_s`` field) multiplied by ``factor``."""
        durations = {
            f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self) if f.name.endswith("_s")
        }
        return dataclasses.replace(self, **durations)


@dataclass(frozen=True)
class Failure:
    """What the policy needs to know about one failed attempt."""

    kind: FailureKind
    session: SessionRecord
    spec: ChainSpec
    timing: Timing
    detail: str  # the kernel's failure message, the trainer's, or why the outputs did not verify
    stall: dict[str, Any] | None = None  # run.json's ``stall`` of a stalled attempt


@dataclass(frozen=True)
class Decision:
    """What the runner does next: a new attempt after ``wait_s`` in ``state``, or stop in a failed ``state``."""

    state: ChainState
    message: str
    retry: bool
    wait_s: float = 0.0
    budget_s: float | None = None  # the next attempt's budget


RERUN_REASON = "resumed"  # the reason of the attempt a rerun of a failed chain adds
UPDATE_HINT = "run kr chain --update-config to continue this chain with the changed kr.toml"

Text = Callable[[Failure, int], str]  # a message from the failure and its counter (after this failure)


@dataclass(frozen=True)
class Branch:
    """One row of the policy table."""

    name: str
    counter: str | None  # the SessionRecord field counting this kind; None: never retried
    limit: Callable[[Failure], int]
    retry_state: ChainState
    failed_state: ChainState
    wait_s: Callable[[Timing], float]
    retry_message: Text
    failed_message: Text
    budget_factor: float = 1.0
    gives_up: Callable[[Failure], bool] = lambda failure: False  # stop before the limit (same stall again)


def _stall_place(stall: dict[str, Any] | None) -> str:
    if not stall:
        return "an unknown place"
    where = f"{stall.get('phase') or 'unknown phase'} at step {stall.get('step')}"
    return f"{where} ({stall['where']})" if stall.get("where") else where


def stalled_here_before(failure: Failure) -> bool:
    """The same session stalled at the same phase and step on an earlier attempt since the last rerun of
    ``kr chain``: it will again (a rerun after a fix starts the comparison afresh)."""
    if not failure.stall:
        return False
    place = (failure.stall.get("phase"), failure.stall.get("step"))
    current = failure.session.attempt
    for attempt in reversed(failure.session.attempts):
        if attempt is not current and attempt.stall and (attempt.stall.get("phase"), attempt.stall.get("step")) == place:
            return True
        if attempt.reason == RERUN_REASON:
            break
    return False


def _stall_failed(failure: Failure, count: int) -> str:
    place = _stall_place(failure.stall)
    if stalled_here_before(failure):
        why = f"the trainer stalled twice at the same place: {place}"
    else:
        why = f"the trainer stalled {count} times; last at {place}"
    return (f"{why}. Read the stack dump in the log (kr logs) to see what it waited for; if that step is just "
            f"slow, raise stall_timeout_s in kr.toml; then {UPDATE_HINT}")


def _error_retry(failure: Failure, count: int) -> str:
    return f"{failure.detail}; retry {count} of {failure.spec.max_retries} from the last good checkpoint"


_ERROR = Branch(
    name="kernel error",
    counter="error_retries",
    limit=lambda f: f.spec.max_retries,
    retry_state=ChainState.WAITING_RETRY,
    failed_state=ChainState.FAILED_KERNEL,
    wait_s=lambda t: t.retry_delay_s,
    retry_message=_error_retry,
    failed_message=lambda f, n: f"the kernel failed {n} times; last: {f.detail}",
)

POLICY: dict[FailureKind, Branch] = {
    FailureKind.KERNEL_ERROR: _ERROR,
    FailureKind.BAD_OUTPUTS: dataclasses.replace(_ERROR, name="outputs never verified"),
    FailureKind.STALE_INPUT: Branch(
        name="stale input",
        counter="stale_relaunches",
        limit=lambda f: f.timing.max_stale_relaunches,
        retry_state=ChainState.WAITING_STALE_INPUT,
        failed_state=ChainState.FAILED_STALE_INPUT,
        wait_s=lambda t: t.stale_input_wait_s,
        retry_message=lambda f, n: "the kernel mounted an older checkpoint version; relaunching",
        failed_message=lambda f, n: f"the kernel kept mounting an older version of {f.spec.dataset_ref}",
    ),
    FailureKind.TIME_LIMIT: Branch(
        name="time limit",
        counter="time_limit_retries",
        limit=lambda f: f.timing.max_time_limit_retries,
        retry_state=ChainState.WAITING_RETRY,
        failed_state=ChainState.FAILED_TIME_LIMIT,
        wait_s=lambda t: 0.0,
        budget_factor=TIME_LIMIT_BUDGET_FACTOR,
        retry_message=lambda f, n: "killed at the time limit; retrying with a "
        f"{f.session.attempt.budget_s * TIME_LIMIT_BUDGET_FACTOR / 3600:.2f} h budget",
        failed_message=lambda f, n: f"killed at the time limit {n} times without outputs",
    ),
    FailureKind.DIVERGED: Branch(
        name="diverged",
        counter=None,
        limit=lambda f: 0,
        retry_state=ChainState.WAITING_RETRY,
        failed_state=ChainState.FAILED_KERNEL,
        wait_s=lambda t: 0.0,
        retry_message=lambda f, n: "",
        failed_message=lambda f, n: f"{f.detail}. Not retried: it would diverge again. Lower the learning "
        f'rate in kr.toml (trainer.extra_args = ["--lr", "1e-4"]), then {UPDATE_HINT}',
    ),
    FailureKind.STALLED: Branch(
        name="stalled",
        counter="stall_relaunches",
        limit=lambda f: f.timing.max_stall_relaunches,
        retry_state=ChainState.WAITING_RETRY,
        failed_state=ChainState.FAILED_STALLED,
        wait_s=lambda t: t.retry_delay_s,
        retry_message=lambda f, n: f"the trainer stalled at {_stall_place(f.stall)}; relaunch {n} of "
        f"{f.timing.max_stall_relaunches} from the last checkpoint",
        failed_message=_stall_failed,
        gives_up=stalled_here_before,
    ),
}


def decide(failure: Failure) -> Decision:
    """Apply the failure's branch: count it, and retry or stop. Updates the session's counter."""
    branch = POLICY[failure.kind]
    done = getattr(failure.session, branch.counter) if branch.counter else 0
    if done >= branch.limit(failure) or branch.gives_up(failure):
        return Decision(branch.failed_state, branch.failed_message(failure, done + 1), retry=False)
    assert branch.counter is not None  # a branch with a limit above 0 counts
    setattr(failure.session, branch.counter, done + 1)
    return Decision(
        branch.retry_state,
        branch.retry_message(failure, done + 1),
        retry=True,
        wait_s=branch.wait_s(failure.timing),
        budget_s=failure.session.attempt.budget_s * branch.budget_factor,
    )
