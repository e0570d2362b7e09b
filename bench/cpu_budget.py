"""Run a command for a fixed budget of CPU seconds (not wall seconds), so that other jobs on a shared machine
do not change how much training a benchmark gets.

The command's CPU time (user + system of the process and of the children it has waited for, read from
/proc) is polled; when it reaches the budget the process gets SIGTERM (the trainer finishes its step, saves
and stops with reason "signal"). While it runs, the step and the validation lines of its training.log are
recorded against CPU time: the learning curve in CPU seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from kr_contract.metric_lines import parse_metric_line

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and of its waited-for children; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": the state is field 0 here
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


@dataclass
class BudgetRun:
    returncode: int
    cpu_s: float
    wall_s: float
    stopped_by_budget: bool
    steps: list[tuple[float, int]] = field(default_factory=list)  # (cpu seconds, global step)
    validations: list[tuple[float, str]] = field(default_factory=list)  # (cpu seconds, the val line)


def run_with_cpu_budget(cmd: list[str], budget_s: float, *, log: Path | None = None, cwd: Path | None = None,
                        env: dict[str, str] | None = None, poll_s: float = 0.5,
                        output: Path | None = None) -> BudgetRun:
    """Run ``cmd`` until it exits or has used ``budget_s`` CPU seconds (then SIGTERM, and wait); its stdout
    and stderr go to ``output`` (default: nowhere)."""
    began = time.time()
    with open(output or os.devnull, "wb") as sink:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        return _watch(process, budget_s, log, poll_s, began)


def _watch(process: subprocess.Popen[bytes], budget_s: float, log: Path | None, poll_s: float,
           began: float) -> BudgetRun:
    run = BudgetRun(returncode=0, cpu_s=0.0, wall_s=0.0, stopped_by_budget=False)
    seen_lines = 0
    while process.poll() is None:
        used = cpu_seconds(process.pid)
        if used is not None:
            run.cpu_s = used
            seen_lines = _read_progress(log, seen_lines, used, run)
            if used >= budget_s and not run.stopped_by_budget:
                run.stopped_by_budget = True
                process.send_signal(signal.SIGTERM)
        time.sleep(poll_s)
    run.returncode = process.returncode
    run.wall_s = time.time() - began
    _read_progress(log, seen_lines, run.cpu_s, run)
    return run


def _read_progress(log: Path | None, seen: int, cpu: float, run: BudgetRun) -> int:
    """New train/val lines of the log, stamped with the CPU time they were first seen at."""
    if log is None or not log.is_file():
        return seen
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines[seen:]:
        record = parse_metric_line(line)
        if record is None:
            continue
        if record.kind == "train" and "step" in record.fields:
            run.steps.append((round(cpu, 1), int(record.fields["step"])))
        elif record.kind == "val":
            run.validations.append((round(cpu, 1), line.split(" val ", 1)[1].strip()))
    return len(lines)


def steps_per_cpu_second(run: BudgetRun) -> float:
    """The step rate between the first and the last train line (start-up excluded)."""
    if len(run.steps) < 2:
        raise RuntimeError("the probe logged fewer than two train lines: raise its steps")
    (c0, s0), (c1, s1) = run.steps[0], run.steps[-1]
    return (s1 - s0) / max(c1 - c0, 1e-3)
