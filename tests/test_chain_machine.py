"""The chain's declared transition table (against the README's diagram and the runner), the failure-policy
table, and the stalled branch (issue 12) against the scripted backend of ``tests/chain_support.py``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kaggle_runner.backends.base import KernelState, KernelStatus, PushRequest
from kaggle_runner.chain_machine import (
    FAILED_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    ChainState,
    FailureKind,
    IllegalTransition,
)
from kaggle_runner.chain_outputs import classify_failure
from kaggle_runner.chain_policy import POLICY, Failure, Timing, decide
from kaggle_runner.chain_state import Attempt, SessionRecord, load_chain
from kaggle_runner.errors import ApiError
from kr_contract.names import EXIT_STALLED, STOP_STALLED, TAG_STALLED
from tests.chain_support import KernelPlan, make_spec, start

README = Path(__file__).resolve().parent.parent / "kaggle_runner" / "README.md"
_EDGE = re.compile(r"^\s*(\[\*\]|[A-Z_]+)\s*-->\s*(\[\*\]|[A-Z_]+)\s*(?::.*)?$")


def diagram_edges() -> set[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    start_at = text.index("```mermaid")
    block = text[start_at : text.index("```", start_at + 3)]
    edges = set()
    for line in block.splitlines():
        match = _EDGE.match(line)
        if match and "[*]" not in match.groups():
            edges.add((match.group(1), match.group(2)))
    return edges


def test_the_transition_table_is_the_readme_diagram() -> None:
    declared = {(a.name, b.name) for a, targets in TRANSITIONS.items() for b in targets}
    drawn = diagram_edges()
    assert declared - drawn == set(), "transitions the diagram does not draw"
    assert drawn - declared == set(), "transitions drawn that the table does not declare"


def test_every_state_has_its_row_and_only_success_is_a_dead_end_for_a_rerun() -> None:
    assert set(TRANSITIONS) == set(ChainState)
    for state in FAILED_STATES:
        assert TRANSITIONS[state], f"{state} cannot be reopened by a rerun"
    assert ChainState.SUCCEEDED in TERMINAL_STATES


def test_an_undeclared_transition_is_a_bug_that_raises(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    runner = h.runner()
    with pytest.raises(IllegalTransition, match="new -> downloading"):
        runner._transition(ChainState.DOWNLOADING, "skipping ahead")
    assert load_chain("chain-test", h.home).state is ChainState.NEW  # nothing persisted


def test_every_branch_of_a_full_run_is_declared(tmp_path: Path) -> None:
    """Runs that visit most edges (failures, retries, salvage, reruns) go through the checked transition."""
    scripts = ([KernelPlan("error"), KernelPlan("time_limit"), KernelPlan("time_limit_saved")],
               [KernelPlan("stalled", stall=_stall("train", 40)), KernelPlan(corrupt_downloads=3)])
    for number, plans in enumerate(scripts):
        h = start(tmp_path / f"run-{number}", sessions=2)
        h.backend.plans = list(plans)
        assert h.run().state is ChainState.SUCCEEDED


# ------------------------------------------------------------------------------------------ policy table


def test_the_policy_has_one_named_branch_per_failure_kind() -> None:
    assert set(POLICY) == set(FailureKind)
    assert len({branch.name for branch in POLICY.values()}) == len(POLICY)
    for kind, branch in POLICY.items():
        assert branch.failed_state in FAILED_STATES, kind
        assert branch.retry_state.is_waiting, kind


def _failure(kind: FailureKind, session: SessionRecord, **extra: object) -> Failure:
    return Failure(kind, session, make_spec(max_retries=1), Timing(), "boom", **extra)  # type: ignore[arg-type]


def _session(*stalls: dict[str, object] | None) -> SessionRecord:
    session = SessionRecord(index=1)
    for number, stall in enumerate(stalls, start=1):
        session.attempts.append(Attempt(number=number, reason="first", budget_s=3600, timeout_s=3600, stall=stall))
    return session


def test_decide_counts_and_stops_at_the_limit() -> None:
    session = _session(None)
    first = decide(_failure(FailureKind.KERNEL_ERROR, session))
    assert first.retry and first.state is ChainState.WAITING_RETRY and session.error_retries == 1
    second = decide(_failure(FailureKind.KERNEL_ERROR, session))
    assert not second.retry and second.state is ChainState.FAILED_KERNEL and "failed 2 times" in second.message
    diverged = decide(_failure(FailureKind.DIVERGED, _session(None)))
    assert not diverged.retry and diverged.state is ChainState.FAILED_KERNEL
    shorter = decide(_failure(FailureKind.TIME_LIMIT, _session(None)))
    assert shorter.budget_s == pytest.approx(3600 * 0.75) and shorter.wait_s == 0


# ------------------------------------------------------------------------------------------ stalled


def _stall(phase: str, step: int, where: str = "trainer/train.py:212 in fetch_batch") -> dict[str, object]:
    return {"phase": phase, "step": step, "epoch": 1, "silent_s": 912.0, "where": where}


def test_classify_failure_knows_a_stall() -> None:
    error = KernelStatus(KernelState.ERROR, "Kernel exited with a non-zero code")
    stalled = {"exit_code": EXIT_STALLED, "stop_reason": STOP_STALLED, "stall": _stall("train", 40)}
    assert classify_failure(error, "", stalled, ran_s=5, timeout_s=100) is FailureKind.STALLED
    assert classify_failure(error, "", {"exit_code": EXIT_STALLED}, ran_s=99, timeout_s=100) is FailureKind.STALLED
    log = f"{TAG_STALLED}: no progress for 900 s in validate at step 40"
    assert classify_failure(error, log, None, ran_s=5, timeout_s=100) is FailureKind.STALLED


def test_a_stall_is_relaunched_once_from_the_last_checkpoint(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2, max_retries=0)
    h.backend.plans = [KernelPlan(), KernelPlan("stalled", stall=_stall("train", 40))]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    second = record.sessions[1]
    assert [a.outcome for a in second.attempts] == ["stalled", "complete"]
    assert second.stall_relaunches == 1 and second.error_retries == 0  # not the user's failure
    assert second.attempts[0].stall == _stall("train", 40)
    assert h.requests[1]["expect"] == h.requests[2]["expect"]  # the relaunch resumes the same checkpoint
    assert any("stalled at train at step 40" in line for line in h.lines)


def test_a_second_stall_at_the_same_place_stops_the_chain_with_what_to_do(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.plans = [KernelPlan("stalled", stall=_stall("train", 40))] * 2
    record = h.run()
    assert record.state is ChainState.FAILED_STALLED and h.backend.pushes == 2
    message = record.message or ""
    assert "twice at the same place: train at step 40 (trainer/train.py:212 in fetch_batch)" in message
    assert "stall_timeout_s" in message and "kr logs" in message
    assert "--update-config" in message


def test_stalls_at_different_places_are_relaunched_up_to_the_cap(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.plans = [KernelPlan("stalled", stall=_stall("train", step)) for step in (40, 80, 120)]
    record = h.run()
    assert record.state is ChainState.FAILED_STALLED
    assert h.backend.pushes == Timing().max_stall_relaunches + 1
    assert "stalled 3 times; last at train at step 120" in (record.message or "")


def test_a_stall_after_a_newer_checkpoint_keeps_it_like_a_time_limit_kill(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.plans = [KernelPlan("stalled_saved", stall=_stall("validate", 10))]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    first = record.sessions[0]
    assert [a.outcome for a in first.attempts] == ["stalled"] and h.backend.pushes == 2
    assert first.step == 10 and first.stop_reason == STOP_STALLED  # from the tarball's manifest
    assert h.requests[1]["expect"]["sha256"] == first.outputs["checkpoints.tar.gz"]
    assert h.backend.count("publish_dataset") == 2


def test_a_rerun_after_the_stall_stop_compares_places_afresh(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.plans = [KernelPlan("stalled", stall=_stall("train", 40))] * 2
    assert h.run().state is ChainState.FAILED_STALLED
    h.backend.plans = [KernelPlan("stalled", stall=_stall("train", 40)), KernelPlan()]
    record = h.run()  # e.g. after raising stall_timeout_s: one more stall there is relaunched
    assert record.state is ChainState.SUCCEEDED
    assert [a.reason for a in record.sessions[0].attempts] == ["first", "stalled", "resumed", "stalled"]


# ------------------------------------------------------------------------------------------ issue 16 bugs


def test_a_tarball_without_manifest_is_never_published(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1, max_retries=0)
    h.backend.plans = [KernelPlan(no_manifest=True)]
    record = h.run()
    assert h.backend.count("publish_dataset") == 0, "a tarball the next kernel refuses was published"
    assert record.state is ChainState.FAILED_KERNEL
    assert "MANIFEST" in (record.message or "") and h.backend.count("download") == 3


@pytest.mark.parametrize("status", [401, 403, 400])
def test_a_permanent_error_on_push_stops_at_once(tmp_path: Path, status: int) -> None:
    h = start(tmp_path, sessions=1)

    def refused(request: PushRequest) -> None:
        h.backend.calls.append("push")
        error = ApiError(f"push: {status} Unauthorized")
        error.http_status = status  # type: ignore[attr-defined]
        raise error

    h.backend.push = refused  # type: ignore[method-assign, assignment]
    with pytest.raises(ApiError, match=str(status)) as caught:
        h.run()
    assert h.backend.count("push") == 1 and h.clock.slept == 0
    assert "kr chain --chain chain-test" in (caught.value.hint or "")
    assert load_chain("chain-test", h.home).state is ChainState.PUSHING  # kept: a fix and a rerun go on


def test_a_permanent_error_on_publish_stops_at_once(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)

    def forbidden(*args: object, **kwargs: object) -> None:
        h.backend.calls.append("publish_dataset")
        error = ApiError("new version of dataset: 403 Permission denied")
        error.http_status = 403  # type: ignore[attr-defined]
        raise error

    h.backend.publish_dataset = forbidden  # type: ignore[method-assign]
    with pytest.raises(ApiError, match="403"):
        h.run()
    assert h.backend.count("publish_dataset") == 1
    assert load_chain("chain-test", h.home).state is ChainState.PUBLISHING
