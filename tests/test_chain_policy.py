"""The chain's state machine and failure policy, branch by branch, against a scripted ``Backend``
(``tests/chain_support.py``). End-to-end runs against the emulator and the local backend are in
``test_chain_e2e.py``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kaggle_runner import chain as chain_mod
from kaggle_runner import chain_state, chain_summary
from kaggle_runner.backends.base import KernelState, KernelStatus, PushRequest, PushResult, Quota
from kaggle_runner.chain import Timing
from kaggle_runner.chain_outputs import OutputsInvalid, classify_failure, verify_outputs
from kaggle_runner.chain_state import ChainState, FailureKind, chain_lock, latest_chain, load_chain
from kaggle_runner.chain_summary import chain_summaries
from kaggle_runner.errors import ApiError, KrError
from kr_contract.atomic import atomic_write_json, sha256_file
from tests.chain_support import (
    DIVERGED_MESSAGE,
    HOUR,
    Crash,
    FakeClock,
    KernelPlan,
    make_tarball,
    quota_left,
    refusal,
    start,
)

# ------------------------------------------------------------------------------------------------ happy path


def test_three_sessions_chain_their_checkpoints(tmp_path: Path) -> None:
    h = start(tmp_path)
    record = h.run()

    assert record.state is ChainState.SUCCEEDED
    assert h.backend.pushes == 3 and h.backend.count("publish_dataset") == 3
    assert [s.epoch for s in record.sessions] == [1, 2, 3]
    # Session k mounts the dataset and expects exactly the tarball session k-1 produced.
    assert h.requests[0]["expect"] is None and h.requests[0]["dataset_sources"] == ()
    for k in (1, 2):
        published = h.backend.dataset_versions[k - 1]
        assert h.requests[k]["expect"] == {
            "chain": "chain-test",
            "session": k,
            "sha256": published["marker"]["sha256"],
        }
        assert h.requests[k]["dataset_sources"] == ("tester/checkpoints",)
        assert published["marker"]["session"] == k
    # The final model is in the last session's folder, verified, and in the dataset.
    last = h.home / "runs" / "chain-test" / "session-3"
    assert sha256_file(last / "checkpoints.tar.gz") == record.sessions[2].outputs["checkpoints.tar.gz"]
    assert (
        h.backend.dataset_versions[-1]["files"]["checkpoints.tar.gz"]
        == (last / "checkpoints.tar.gz").read_bytes()
    )
    assert [s.dataset_version for s in record.sessions] == [1, 2, 3]
    assert load_chain("chain-test", h.home).state is ChainState.SUCCEEDED


def test_every_transition_is_persisted_and_notified(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.run()
    expected = [
        "checking_quota",
        "rendering",
        "pushing",
        "running",
        "downloading",
        "publishing",
        "waiting_dataset",
        "succeeded",
    ]
    assert h.states() == expected
    history = load_chain("chain-test", h.home).history
    assert [entry["to"] for entry in history] == expected
    assert h.events[-1]["terminal"] is True and h.events[-1]["failed"] is False


def test_until_epoch_stops_early_and_trims_the_last_session(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=5, epochs_per_session=2, until_epoch=3)
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert [r["epochs"] for r in h.requests] == [2, 1]
    assert record.sessions[-1].epoch == 3 and h.backend.pushes == 2


# ------------------------------------------------------------------------------------------------ policy branches


def test_transient_api_errors_back_off_and_retry(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.failures = {"status": 3, "quota": 2, "dataset_info": 2, "download": 1}
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert h.backend.pushes == 1
    retries = [line for line in h.lines if "retrying in" in line]
    assert len(retries) == 8
    # Exponential backoff: 15, 30, 60 s for the three status errors.
    assert any("retrying in 60s" in line for line in retries)


def test_api_errors_that_outlast_the_backoff_stop_the_process_but_keep_the_state(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.failures = {"status": chain_mod.API_MAX_ATTEMPTS}
    with pytest.raises(ApiError, match="kept failing") as caught:
        h.run()
    assert "kr chain --chain chain-test" in (caught.value.hint or "")
    saved = load_chain("chain-test", h.home)
    assert saved.state is ChainState.RUNNING and "kept failing" in (saved.halted or "")
    assert h.run().state is ChainState.SUCCEEDED
    assert h.backend.pushes == 1


def test_kernel_error_is_retried_from_the_last_checkpoint_with_its_log_shown(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.plans = [KernelPlan(), KernelPlan("error")]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    second = record.sessions[1]
    assert [a.reason for a in second.attempts] == ["first", "kernel_error"]
    assert second.error_retries == 1 and second.attempts[0].outcome == "kernel_error"
    assert "CUDA out of memory" in (second.attempts[0].log_excerpt or "")
    assert any("CUDA out of memory" in line for line in h.lines)
    # The retry mounts the same checkpoint as the failed attempt.
    assert h.requests[1]["expect"] == h.requests[2]["expect"]
    assert "waiting_retry" in h.states()


def test_kernel_errors_beyond_max_retries_fail_the_chain(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2, max_retries=2)
    h.backend.plans = [KernelPlan("error"), KernelPlan("crash_with_run"), KernelPlan("error")]
    record = h.run()
    assert record.state is ChainState.FAILED_KERNEL and record.state.is_failed
    assert h.backend.pushes == 3
    assert "failed 3 times" in (record.message or "")
    assert (
        record.sessions[0].attempts[1].outcome == "kernel_error"
    )  # run.json with exit 1: a crash, not a kill


def test_a_diverged_trainer_fails_the_chain_at_once_with_what_to_change(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2, max_retries=2)
    h.backend.plans = [KernelPlan(), KernelPlan("diverged")]
    record = h.run()
    assert record.state is ChainState.FAILED_KERNEL
    assert h.backend.pushes == 2, "a retry from the same checkpoint would diverge again"
    assert record.sessions[1].attempts[0].outcome == "diverged"
    assert DIVERGED_MESSAGE in (record.message or "") and "--lr" in (record.message or "")


def test_time_limit_kill_without_outputs_is_retried_with_a_shorter_budget(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.plans = [KernelPlan("time_limit")]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    attempts = record.sessions[0].attempts
    assert [a.outcome for a in attempts] == ["time_limit", "complete"]
    assert attempts[1].budget_s == pytest.approx(4 * HOUR * chain_mod.TIME_LIMIT_BUDGET_FACTOR)
    assert h.requests[1]["budget_s"] == attempts[1].budget_s
    assert attempts[1].timeout_s == attempts[0].timeout_s  # the hard limit stays: the margin grows
    assert record.sessions[0].error_retries == 0


def test_time_limit_kill_that_saved_a_checkpoint_is_salvaged(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.plans = [KernelPlan("time_limit_saved")]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert h.backend.pushes == 2 and [len(s.attempts) for s in record.sessions] == [1, 1]
    assert (
        record.sessions[0].attempts[0].outcome == "time_limit" and record.sessions[0].stop_reason == "signal"
    )
    assert h.requests[1]["expect"]["sha256"] == record.sessions[0].outputs["checkpoints.tar.gz"]


def test_repeated_time_limit_kills_fail_the_chain(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.plans = [KernelPlan("time_limit")] * 3
    record = h.run()
    assert record.state is ChainState.FAILED_TIME_LIMIT
    assert h.backend.pushes == 3


def test_gpu_session_limit_waits_and_retries_without_counting(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.push_refusals = [refusal("gpu_session_limit"), refusal("gpu_session_limit")]
    before = h.clock.now
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert h.states().count("waiting_gpu_slot") == 2
    assert h.clock.now - before >= 2 * chain_mod.GPU_SLOT_WAIT_S
    assert record.sessions[0].error_retries == 0 and len(record.sessions[0].attempts) == 1


def test_gpu_slot_that_never_frees_fails_after_the_maximum_wait(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.push_refusals = [refusal("gpu_session_limit")] * 200
    record = h.run()
    assert record.state is ChainState.FAILED_REFUSED
    assert "GPU slot" in (record.message or "")


def test_exhausted_quota_stops_with_the_reset_time(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    reset = datetime(2027, 1, 4, 0, 0, tzinfo=timezone.utc)
    h.backend.quota_value = quota_left(0.1 * HOUR, reset)
    record = h.run()
    assert record.state is ChainState.FAILED_QUOTA
    assert "resets at 2027-01-0" in (record.message or "") and h.backend.pushes == 0


def test_exhausted_quota_is_waited_for_with_wait_for_quota(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1, wait_for_quota=True)
    reset = datetime.fromtimestamp(h.clock.now + 2 * 86400, tz=timezone.utc)
    h.backend.quota_value = quota_left(0.0, reset)

    def refill(seconds: float) -> None:
        FakeClock.sleep(h.clock, seconds)
        if h.clock.now >= reset.timestamp():
            h.backend.quota_value = quota_left(30 * HOUR)

    h.clock.sleep = refill  # type: ignore[method-assign]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert "waiting_quota" in h.states() and h.clock.now >= reset.timestamp()


def test_low_quota_cuts_the_budget_instead_of_stopping(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.quota_value = quota_left(2 * HOUR)
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert h.requests[0]["budget_s"] == pytest.approx(2 * HOUR - chain_mod.QUOTA_MARGIN_S)


def test_push_refused_for_quota_takes_the_quota_branch(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.push_refusals = [refusal("quota_exhausted")]
    record = h.run()
    assert record.state is ChainState.FAILED_QUOTA
    assert "exceeded the number of hours" in (record.message or "")


def test_push_refused_for_invalid_sources_fails_at_once(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.push_refusals = [refusal("invalid_sources")]
    record = h.run()
    assert record.state is ChainState.FAILED_REFUSED and h.backend.pushes == 0


def test_invalid_sources_on_a_resumed_session_wait_like_a_stale_mount(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.plans = [KernelPlan()]
    real_push = h.backend.push

    def refuse_first_resume(request: PushRequest) -> PushResult:
        if (
            h.backend.pushes == 1
            and not h.backend.push_refusals
            and h.states().count("waiting_stale_input") == 0
        ):
            h.backend.push_refusals.append(refusal("invalid_sources"))
        return real_push(request)

    h.backend.push = refuse_first_resume  # type: ignore[method-assign]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert record.sessions[1].stale_relaunches == 1 and record.sessions[1].error_retries == 0


def test_permanent_api_errors_stop_at_once(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)

    def forbidden() -> Quota:
        error = ApiError("quota: 401 Unauthorized")
        error.http_status = 401  # type: ignore[attr-defined]
        raise error

    h.backend.quota = forbidden  # type: ignore[method-assign]
    with pytest.raises(ApiError, match="401"):
        h.run()
    assert h.clock.slept == 0 and load_chain("chain-test", h.home).state is ChainState.CHECKING_QUOTA


def test_dataset_stuck_in_processing_times_out_with_a_clear_message(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.dataset_stuck = True
    record = h.run()
    assert record.state is ChainState.FAILED_DATASET
    assert "tester/checkpoints still blobs_received" in (record.message or "")
    assert h.backend.pushes == 1  # the next session never started on an unready checkpoint
    # Rerunning once Kaggle caught up continues the chain where it stopped.
    h.backend.dataset_stuck = False
    assert h.run().state is ChainState.SUCCEEDED
    assert h.backend.pushes == 2 and h.backend.count("publish_dataset") == 2


def test_stale_input_relaunches_without_counting_as_a_user_failure(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2, max_retries=0)
    h.backend.plans = [KernelPlan(), KernelPlan("stale"), KernelPlan("stale")]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    second = record.sessions[1]
    assert second.stale_relaunches == 2 and second.error_retries == 0
    assert h.states().count("waiting_stale_input") == 2


def test_a_kernel_that_keeps_mounting_stale_input_fails(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.plans = [KernelPlan()] + [KernelPlan("stale")] * (chain_mod.MAX_STALE_RELAUNCHES + 1)
    record = h.run()
    assert record.state is ChainState.FAILED_STALE_INPUT


def test_outputs_that_do_not_verify_are_downloaded_again(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.plans = [KernelPlan(corrupt_downloads=1)]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED and h.backend.count("download") == 2
    assert any("MANIFEST" in line for line in h.lines)


def test_outputs_that_never_verify_count_as_a_failed_attempt(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.plans = [KernelPlan(corrupt_downloads=chain_mod.DOWNLOAD_ATTEMPTS)]
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert [a.outcome for a in record.sessions[0].attempts] == ["bad_outputs", "complete"]


# ------------------------------------------------------------------------------------------------ crash safety


def test_a_push_whose_response_was_lost_is_adopted_not_repeated(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.fail_after = {"push": 1}
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert h.backend.pushes == 1 and record.sessions[0].attempt.version == 1


def test_a_publish_whose_response_was_lost_is_not_repeated(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.backend.fail_after = {"publish_dataset": 1}
    record = h.run()
    assert record.state is ChainState.SUCCEEDED and len(h.backend.dataset_versions) == 1


def _calls_of_a_clean_run(tmp_path: Path, sessions: int) -> int:
    h = start(tmp_path / "clean", sessions=sessions)
    h.run()
    return len(h.backend.calls)


@pytest.mark.parametrize("sessions", [2])
def test_a_crash_after_any_backend_call_loses_nothing_and_pushes_no_duplicate(
    tmp_path: Path, sessions: int
) -> None:
    """SIGKILL stand-in after every single backend call of a clean run, then a restart from chain.json."""
    total = _calls_of_a_clean_run(tmp_path, sessions)
    for crash_at in range(1, total + 1):
        h = start(tmp_path / f"crash-{crash_at}", sessions=sessions)
        h.backend.crash_on_call = crash_at
        with pytest.raises(Crash):
            h.run()
        h.backend.crash_on_call = None
        record = h.run()
        assert record.state is ChainState.SUCCEEDED, crash_at
        assert h.backend.pushes == sessions, f"duplicate push after a crash at call {crash_at}"
        assert len(h.backend.dataset_versions) == sessions, (
            f"duplicate publish after a crash at call {crash_at}"
        )
        markers = [v["marker"]["session"] for v in h.backend.dataset_versions]
        assert sorted(set(markers)) == list(range(1, sessions + 1)), crash_at
        assert [s.epoch for s in record.sessions] == list(range(1, sessions + 1)), crash_at


def test_a_crash_after_any_transition_resumes(tmp_path: Path) -> None:
    """A crash right after each persisted transition (inside the notification) resumes to the same result."""
    transitions = 8 * 2
    for crash_at in range(1, transitions):
        h = start(tmp_path / f"t-{crash_at}", sessions=2)
        seen: list[dict[str, Any]] = []

        def crash_on(event: dict[str, Any], seen: list[dict[str, Any]] = seen, at: int = crash_at) -> None:
            seen.append(event)
            if len(seen) == at:
                raise Crash(event["state"])

        runner = h.runner()
        runner.notify = crash_on
        with pytest.raises(Crash):
            runner.run()
        assert h.run().state is ChainState.SUCCEEDED
        assert h.backend.pushes == 2, crash_at


def test_two_processes_never_drive_the_same_chain(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with chain_lock("chain-x", home):
        assert chain_state.is_locked("chain-x", home)
        with pytest.raises(KrError, match="already being driven"), chain_lock("chain-x", home):
            pass
    assert not chain_state.is_locked("chain-x", home)
    with chain_lock("chain-x", home):
        pass


def test_a_failed_chain_rerun_retries_with_fresh_counts(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1, max_retries=0)
    h.backend.plans = [KernelPlan("error")]
    assert h.run().state is ChainState.FAILED_KERNEL
    record = h.run()
    assert record.state is ChainState.SUCCEEDED
    assert [a.reason for a in record.sessions[0].attempts] == ["first", "resumed"]


def test_a_succeeded_chain_extended_with_more_sessions_goes_on(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    h.run()
    record = load_chain("chain-test", h.home)
    record.spec.sessions = 2
    assert h.run(record=record).state is ChainState.SUCCEEDED
    assert h.backend.pushes == 2 and record.sessions[1].epoch == 2


def test_latest_chain_is_the_newest_of_the_same_kernel_even_when_finished(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    assert latest_chain(h.home, backend="scripted", kernel_ref="tester/kernel") is not None
    assert latest_chain(h.home, backend="scripted", kernel_ref="tester/other") is None
    h.run()
    found = latest_chain(h.home, backend="scripted", kernel_ref="tester/kernel")
    # A rerun of the same command reports the finished chain instead of training a new one from scratch.
    assert found is not None and found.state is ChainState.SUCCEEDED


def test_notification_failures_never_stop_the_chain(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=1)
    runner = h.runner()

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("webhook down")

    runner.notify = broken
    assert runner.run().state is ChainState.SUCCEEDED
    assert any("notification failed" in line for line in h.lines)


# ------------------------------------------------------------------------------------------------ pure parts


def test_classify_failure() -> None:
    error = KernelStatus(KernelState.ERROR, "Kernel exited with a non-zero code")
    assert (
        classify_failure(error, "KR_STALE_INPUT: marker", None, ran_s=5, timeout_s=100)
        is FailureKind.STALE_INPUT
    )
    assert classify_failure(error, "", {"exit_code": 3}, ran_s=5, timeout_s=100) is FailureKind.STALE_INPUT
    assert classify_failure(error, "", None, ran_s=99, timeout_s=100) is FailureKind.TIME_LIMIT
    timed_out = KernelStatus(KernelState.ERROR, "exceeded the max allowed execution time")
    assert classify_failure(timed_out, "", None, ran_s=5, timeout_s=100) is FailureKind.TIME_LIMIT
    assert classify_failure(error, "", None, ran_s=5, timeout_s=100) is FailureKind.KERNEL_ERROR
    # run.json says the trainer crashed: a user-code failure, whatever the time.
    assert classify_failure(error, "", {"exit_code": 1}, ran_s=99, timeout_s=100) is FailureKind.KERNEL_ERROR
    diverged = {"exit_code": 1, "stop_reason": "diverged"}
    assert classify_failure(error, "", diverged, ran_s=99, timeout_s=100) is FailureKind.DIVERGED
    # The trainer stopped cleanly on the kill's SIGTERM: still the time limit.
    signal = {"exit_code": 0, "stop_reason": "signal"}
    assert classify_failure(timed_out, "", signal, ran_s=5, timeout_s=100) is FailureKind.TIME_LIMIT
    # The kill's SIGTERM reached the trainer before it could handle it.
    terminated = {"exit_code": -15, "stop_reason": "crash"}
    assert classify_failure(timed_out, "", terminated, ran_s=5, timeout_s=100) is FailureKind.TIME_LIMIT


def _outputs(folder: Path, *, chain: str = "c", session: int = 1, tarball: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "run.json", {"chain": chain, "session": session, "exit_code": 0, "result": {}})
    (folder / "training.log").write_text("log\n")
    (folder / "checkpoints.tar.gz").write_bytes(tarball if tarball is not None else make_tarball("w", 1))
    return folder


def test_verify_outputs_accepts_good_outputs(tmp_path: Path) -> None:
    verified = verify_outputs(_outputs(tmp_path / "ok"), chain_id="c", session=1)
    assert set(verified.sha256) == {"checkpoints.tar.gz", "training.log", "run.json"}


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("manifest", "MANIFEST"),
        ("truncated", "does not read"),
        ("other_session", "belongs to chain"),
        ("missing_log", "training.log is missing"),
    ],
)
def test_verify_outputs_rejects_bad_outputs(tmp_path: Path, case: str, match: str) -> None:
    good = make_tarball("w", 1)
    tarball = {"manifest": make_tarball("w", 1, corrupt=True), "truncated": good[: len(good) // 2]}.get(case)
    folder = _outputs(tmp_path / case, session=2 if case == "other_session" else 1, tarball=tarball)
    if case == "missing_log":
        (folder / "training.log").unlink()
    with pytest.raises(OutputsInvalid, match=match):
        verify_outputs(folder, chain_id="c", session=1)


def test_chain_summaries_report_progress_gpu_hours_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.plans = [KernelPlan("error")]
    h.run()
    monkeypatch.setenv("KR_HOME", str(h.home))
    (summary,) = chain_summaries()
    assert summary["chain"] == "chain-test" and summary["state"] == "succeeded"
    assert summary["session"] == 2 and summary["sessions"] == 2 and summary["sessions_done"] == 2
    assert summary["epoch"] == 2 and summary["best"]["bleu4"] == pytest.approx(0.2)
    assert summary["retries"] == [{"session": 1, "attempt": 2, "why": "kernel_error"}]
    assert summary["gpu_hours"] > 0 and summary["active"] is False


def test_timing_scaled_scales_durations_only() -> None:
    timing = Timing().scaled(0.01)
    assert timing.poll_initial_s == pytest.approx(chain_mod.POLL_INITIAL_S * 0.01)
    assert timing.api_max_attempts == chain_mod.API_MAX_ATTEMPTS


def test_chain_table_row_shows_progress_best_gpu_hours_and_retries(tmp_path: Path) -> None:
    h = start(tmp_path, sessions=2)
    h.backend.plans = [KernelPlan("error")]
    h.run()
    (summary,) = chain_summaries(h.home)
    row = dict(zip(chain_summary.CHAIN_TABLE_HEADERS, chain_summary.chain_table_row(summary), strict=True))
    assert row["SESSION"] == "2/2" and row["STATE"] == "succeeded" and row["EPOCH"] == "2"
    assert row["BEST"] == "bleu4=0.2" and row["RETRIES"] == "1 (kernel_error)"
    assert float(row["GPU H"]) > 0
