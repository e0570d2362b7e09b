"""The live display: plain timestamped lines off a terminal, a rich panel on one, never a byte on stdout."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from kaggle_runner.chain_machine import ChainState
from kaggle_runner.chain_observer import StateChange
from kaggle_runner.progress import SessionProgress, format_duration

T0 = 1_764_000_000.0
STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} "


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _train(step: int, loss: float = 2.5, epoch: int = 1) -> str:
    return f"2026-11-26 23:10:00 INFO train epoch={epoch} step={step} loss={loss:.4f} lr=3.000e-04 samples_per_s=85.1"


def _plain_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_non_terminal_prints_plain_timestamped_lines() -> None:
    console, buffer = _plain_console()
    clock = FakeClock()
    with SessionProgress(
        title="alice/kr-ocr v3", total_steps=1000, budget_s=3600, console=console, clock=clock
    ) as p:
        assert p.plain
        p.update(state="queued")
        clock.now += 30
        p.update(state="running", log_lines=["Installing packages...", _train(100)])
        clock.now += 10
        p.update(log_lines=[_train(200, loss=2.0)])  # within the interval: no line
        clock.now += 60
        p.update(log_lines=[_train(300, loss=1.5)])  # interval passed: one line
        clock.now += 1
        p.update(
            log_lines=[
                "2026-11-26 23:12:00 INFO val epoch=1 step=300 bleu4=0.4512 exact_match=0.1200 edit_distance=0.3012"
            ]
        )  # a validation result is worth a line at once
        clock.now += 5
        p.update(state="complete")
    lines = buffer.getvalue().splitlines()
    assert all(re.match(STAMP, line) for line in lines), lines
    assert "\x1b" not in buffer.getvalue()  # no colour codes, no cursor movement
    bodies = [re.sub(STAMP, "", line, count=1) for line in lines]
    assert bodies[0] == "alice/kr-ocr v3: queued · elapsed 0:00:00 · 1:00:00 left"
    assert bodies[1].startswith(
        "alice/kr-ocr v3: running · elapsed 0:00:30 · 0:59:30 left · epoch 1 step 100/1000"
    )
    assert "step 300/1000 loss 1.5" in bodies[2]
    assert "val@300 BLEU-4 0.4512 exact 0.12 edit dist 0.3012" in bodies[3]
    assert bodies[4].startswith("alice/kr-ocr v3: complete · elapsed 0:01:46")
    assert len(lines) == 5
    assert not any("step 200" in body for body in bodies)


def test_plain_mode_closes_with_progress_the_throttle_held_back() -> None:
    console, buffer = _plain_console()
    clock = FakeClock()
    with SessionProgress(console=console, clock=clock) as p:
        p.update(state="running", log_lines=[_train(100)])
        clock.now += 5
        p.update(log_lines=[_train(200)])
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and "step 100" in lines[0] and "step 200" in lines[1]


def test_plain_mode_can_echo_log_lines() -> None:
    console, buffer = _plain_console()
    with SessionProgress(console=console, plain_log_lines=True, clock=FakeClock()) as p:
        p.update(state="running", log_lines=["epoch 1 starting", "[bold]not markup[/bold]"])
    text = buffer.getvalue()
    assert re.search(STAMP + r"\| epoch 1 starting$", text, re.M)
    assert "| [bold]not markup[/bold]" in text


def test_notes_are_plain_lines_too() -> None:
    console, buffer = _plain_console()
    with SessionProgress(console=console, clock=FakeClock()) as p:
        p.note("downloading outputs")
    assert re.fullmatch(STAMP + "downloading outputs\n", buffer.getvalue())


@pytest.mark.parametrize("force_terminal", [False, True])
def test_progress_never_writes_to_stdout(capfd: pytest.CaptureFixture[str], force_terminal: bool) -> None:
    """What ``--json`` relies on: the display goes to stderr, stdout carries only the command's result."""
    console = Console(stderr=True, force_terminal=force_terminal) if force_terminal else None
    with SessionProgress(title="run 1", total_steps=500, console=console) as p:
        p.update(state="running", log_lines=[_train(120)])
        print(json.dumps({"state": "running"}))  # the command's own output, printed meanwhile
        p.note("downloading outputs")
        p.update(state="complete")
    out, err = capfd.readouterr()
    assert json.loads(out) == {"state": "running"}
    assert "complete" in err and "downloading outputs" in err


def test_terminal_shows_a_live_panel_with_progress_and_log_tail() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    clock = FakeClock()
    progress = SessionProgress(
        title="alice/kr-ocr v3 · session 2/5",
        total_steps=5000,
        start_step=1000,
        total_epochs=2,
        start_epoch=2,
        budget_s=12 * 3600,
        console=console,
        log_tail=3,
        clock=clock,
    )
    with progress as p:
        assert not p.plain
        clock.now += 725
        lines = [f"free text {i}" for i in range(5)] + [
            _train(2200, loss=1.234, epoch=3),
            "[red]literal[/red]",
        ]
        p.update(state="running", log_lines=lines)
        assert p.step_fraction() == pytest.approx(0.24)
    screen = buffer.getvalue()
    for expected in (
        "alice/kr-ocr v3 · session 2/5",
        "running",
        "elapsed 0:12:05 · 11:47:55 left",
        "24%",
        "epoch 3/4 step 2200/6000 loss 1.234",
        "[red]literal[/red]",  # log text is shown as written, never interpreted as markup
    ):
        assert expected in screen, expected
    final_frame = screen[screen.rfind("alice/kr-ocr v3") :]
    assert "free text 4" in final_frame and "free text 3" not in final_frame  # only the last 3 lines


def test_remaining_time_never_negative() -> None:
    clock = FakeClock()
    progress = SessionProgress(budget_s=60, console=_plain_console()[0], clock=clock)
    clock.now += 3600
    assert progress.remaining_s() == 0.0
    assert SessionProgress(console=_plain_console()[0]).remaining_s() is None


def test_format_duration() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(3 * 86400 + 61.9) == "72:01:01"


def _change(state: str, session: int, at: float, message: str | None = None) -> StateChange:
    return StateChange("chain-1", "local", "local/k", session, 3, ChainState.PUSHING, ChainState(state),
                       "pushed", message, at)


def test_chain_runner_hooks_drive_the_display() -> None:
    """What ``kr chain`` wires in: the display is the runner's observer (state changes, kernel log lines)."""
    console, buffer = _plain_console()
    clock = FakeClock()
    with SessionProgress(budget_s=3600, console=console, clock=clock) as p:
        p.state_changed(_change("running", 1, clock.now, "pushed version 4"))
        clock.now += 120
        p.log_lines([_train(100, loss=2.0)])
        assert p.title == "chain-1 · session 1/3" and p.elapsed_s() == 120
        assert p.last_train is not None and p.last_train.fields["step"] == 100
    bodies = [re.sub(STAMP, "", line, count=1) for line in buffer.getvalue().splitlines()]
    assert bodies[0] == "[chain-1] session 1/3: running (pushed version 4)"
    assert bodies[1].startswith(
        "chain-1 · session 1/3: running · elapsed 0:02:00 · 0:58:00 left · epoch 1 step 100"
    )
    assert len(bodies) == 2  # each state change is printed once
    with SessionProgress(budget_s=3600, console=_plain_console()[0], clock=clock) as p:
        p.state_changed(_change("running", 1, clock.now))
        p.log_lines([_train(100, loss=2.0)])
        clock.now += 600
        p.state_changed(_change("running", 2, clock.now - 30))
        assert p.last_train is None and not p.log_tail  # a new session starts with a clean slate
        assert p.elapsed_s() == 30 and p.remaining_s() == 3570


def test_trainer_start_line_sets_where_progress_counts_from() -> None:
    """A chain's later session resumes mid-way: `--max_epochs 2` then means epochs 4 and 5 of 5."""
    console, buffer = _plain_console()
    with SessionProgress(total_epochs=2, total_steps=400, console=console, clock=FakeClock()) as p:
        p.update(
            state="running",
            log_lines=[
                "2026-11-26 23:00:00 INFO start epoch=3 step=1200 batch_in_epoch=0 model_size=base batch_size=32",
                _train(1300, epoch=4),
            ],
        )
        assert (p.start_epoch, p.start_step) == (3, 1200)
        assert p.step_fraction() == pytest.approx(0.25)
    assert "epoch 4/5 step 1300/1600" in buffer.getvalue()


def test_long_log_lines_take_one_screen_line() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80, color_system=None)
    with SessionProgress(title="t", console=console) as p:
        p.update(state="running", log_lines=["x" * 200, "short"])
    frame = buffer.getvalue()[buffer.getvalue().rfind("╭─ t") :]
    rows = [row for row in frame.splitlines() if "x" * 20 in row]
    assert len(rows) == 1 and rows[0].rstrip(" │").endswith("…")
