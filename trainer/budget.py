"""When to stop: the earlier of --time_budget and KR_DEADLINE, minus what the remaining work needs.

Before each step the loop asks whether one more step (and, if that step ends the epoch, the validation and
the epoch checkpoint) plus the final save and pack still fit before the deadline with a safety margin.
Durations are measured as the run goes; until a phase has been measured once, a cautious guess stands in.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field

from kr_contract.names import ENV_DEADLINE as DEADLINE_ENV
from kr_contract.names import STOP_COMPLETED, STOP_DEADLINE, STOP_TIME_BUDGET

MIN_MARGIN_S = 2.0
MAX_MARGIN_S = 120.0
MARGIN_SHARE = 0.005  # of the whole span: 3.6 min of a 12-hour session, capped at MAX_MARGIN_S
STEP_WINDOW = 20  # recent step durations kept; the slowest one is the estimate (data stalls, GC)


class DeadlineError(ValueError):
    pass


def read_env_deadline() -> float | None:
    raw = os.environ.get(DEADLINE_ENV)
    if raw is None or raw.strip() == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise DeadlineError(f"{DEADLINE_ENV}={raw!r} is not a Unix time in seconds: unset it or pass a number") from None


@dataclass
class StopClock:
    """Deadline bookkeeping. ``deadline`` is absolute wall-clock time (time.time())."""

    deadline: float | None
    reason: str  # stop_reason when the deadline binds: "time_budget" or "deadline"
    margin_s: float = MIN_MARGIN_S
    step_times: deque[float] = field(default_factory=lambda: deque(maxlen=STEP_WINDOW))
    val_s: float | None = None
    save_s: float | None = None
    save_guess_s: float = 1.0
    val_batches: int = 1

    @classmethod
    def create(cls, start: float, time_budget: float | None, env_deadline: float | None) -> StopClock:
        candidates = []
        if time_budget is not None:
            candidates.append((start + time_budget, STOP_TIME_BUDGET))
        if env_deadline is not None:
            candidates.append((env_deadline, STOP_DEADLINE))
        if not candidates:
            return cls(deadline=None, reason=STOP_COMPLETED)
        deadline, reason = min(candidates)
        margin = min(MAX_MARGIN_S, max(MIN_MARGIN_S, MARGIN_SHARE * (deadline - start)))
        return cls(deadline=deadline, reason=reason, margin_s=margin)

    def record_step(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def record_validation(self, seconds: float) -> None:
        self.val_s = seconds if self.val_s is None else max(seconds, 0.5 * (self.val_s + seconds))

    def record_save(self, seconds: float) -> None:
        self.save_s = seconds if self.save_s is None else max(seconds, 0.5 * (self.save_s + seconds))

    def step_estimate(self) -> float:
        return max(self.step_times) if self.step_times else 0.0

    def save_estimate(self) -> float:
        return self.save_s if self.save_s is not None else self.save_guess_s

    def validation_estimate(self) -> float:
        """Until measured: a greedy-decoded batch costs about as much as a few training steps. A wrong guess
        is safe: validation checks the deadline before every batch and leaves the epoch pending."""
        if self.val_s is not None:
            return self.val_s
        return 1.0 + 4 * self.val_batches * self.step_estimate()

    def seconds_left(self, now: float | None = None) -> float:
        if self.deadline is None:
            return float("inf")
        return self.deadline - (time.time() if now is None else now)

    def room_for_step(self, ends_epoch: bool, now: float | None = None) -> bool:
        """True when one more step, its epoch-end work if any, and the final save all fit."""
        need = self.step_estimate() + self.save_estimate() + self.margin_s
        if ends_epoch:
            need += self.validation_estimate() + self.save_estimate()
        return self.seconds_left(now) > need

    def room_for(self, seconds: float, now: float | None = None) -> bool:
        """True when ``seconds`` of work plus the final save still fit (used inside validation)."""
        return self.seconds_left(now) > seconds + self.save_estimate() + self.margin_s
