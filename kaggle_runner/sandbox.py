"""Run a kernel script in a Kaggle-like folder layout as a detached, supervised process.

Used by the local backend (a kernel version on this machine) and by the Kaggle emulator (each pushed version).
The layout of one sandbox ``<root>`` (docs/architecture.md §4)::

    <root>/source/<code_file>                  the script
    <root>/input/<slug>/...                    each mounted dataset (old Kaggle layout) ...
    <root>/input/datasets/<owner>/<slug>/...   ... and the new layout: symlinks to the same files
    <root>/working/                            cwd of the script; its contents are the outputs
    <root>/log.txt                             stdout + stderr of the script
    <root>/status.json                         state, pid, exit_code, started, ended, failure_message

``start`` launches ``python -m kaggle_runner.sandbox <root>`` in a new session, re-parented away from the
caller, so the run survives the caller's death. That supervisor runs the script in its own process group,
enforces the session timeout (SIGTERM to the group, SIGKILL after a grace period) and writes ``status.json``
atomically. ``read_status`` notices a supervisor that died without a final status and reports ``error``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from kr_contract.atomic import atomic_write_json, read_json
from kr_contract.processes import pid_alive

QUEUED, RUNNING, COMPLETE, ERROR = "queued", "running", "complete", "error"
TERMINAL_STATES = frozenset({COMPLETE, ERROR})

# What a script must never see: Kaggle never hands a kernel the account's credentials.
STRIPPED_ENV_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR")

DEFAULT_GRACE_S = 10.0  # between SIGTERM and SIGKILL, at the time limit and on kill()
_POLL_S = 0.05
_SETTINGS = "sandbox.json"  # code file, timeout and grace for the supervisor; never the environment
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SandboxStatus:
    """The content of ``status.json``. ``pid`` is the supervisor's, ``script_pid`` the script's group."""

    state: str
    pid: int | None = None
    script_pid: int | None = None
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    failure_message: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SandboxError(RuntimeError):
    """A sandbox folder that cannot be prepared or started (bad layout, missing script, started twice)."""


# ----------------------------------------------------------------------------------------------- layout


def source_dir(root: Path) -> Path:
    return Path(root) / "source"


def input_dir(root: Path) -> Path:
    return Path(root) / "input"


def working_dir(root: Path) -> Path:
    return Path(root) / "working"


def log_path(root: Path) -> Path:
    return Path(root) / "log.txt"


def status_path(root: Path) -> Path:
    return Path(root) / "status.json"


def prepare(
    root: Path, script: Path | str, mounts: Mapping[str, Path], *, code_file: str = "script.py"
) -> Path:
    """Lay out a fresh sandbox: the script, the mounted datasets, an empty working dir; state ``queued``.

    ``script`` is a file (copied under its own name) or the script's source text (written as ``code_file``).
    ``mounts`` maps a dataset ref ``owner/slug`` to the folder holding that dataset version's files.
    Returns the path of the script inside the sandbox.
    """
    root = Path(root)
    if status_path(root).exists():
        raise SandboxError(f"{root} is already a sandbox; use a fresh folder for each run")
    target = _write_script(root, script, code_file)
    for ref, folder in mounts.items():
        _mount(input_dir(root), ref, Path(folder))
    working_dir(root).mkdir(parents=True, exist_ok=True)
    log_path(root).touch()
    atomic_write_json(root / _SETTINGS, {"code_file": target.name})
    _write_status(root, SandboxStatus(state=QUEUED))
    return target


def _write_script(root: Path, script: Path | str, code_file: str) -> Path:
    source_dir(root).mkdir(parents=True, exist_ok=True)
    if isinstance(script, Path):
        if not script.is_file():
            raise SandboxError(f"script {script} does not exist")
        target = source_dir(root) / script.name
        shutil.copyfile(script, target)
    else:
        target = source_dir(root) / Path(code_file).name
        target.write_text(script, encoding="utf-8")
    return target


def _mount(input_root: Path, ref: str, folder: Path) -> None:
    """Mount one dataset version at ``input/<slug>`` and ``input/datasets/<owner>/<slug>``.

    Both are real folders of per-file symlinks, so ``os.walk``/``rglob`` (which skip symlinked folders)
    find the files as they would on Kaggle, and nothing is copied.
    """
    owner, _, slug = ref.partition("/")
    if not owner or not slug or "/" in slug:
        raise SandboxError(f"dataset ref {ref!r} is not owner/slug")
    if not folder.is_dir():
        raise SandboxError(f"dataset folder {folder} for {ref} does not exist")
    for mount_point in (input_root / slug, input_root / "datasets" / owner / slug):
        _link_tree(folder.resolve(), mount_point)


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        if entry.is_dir():
            _link_tree(entry, dst / entry.name)
        else:
            (dst / entry.name).symlink_to(entry)


# --------------------------------------------------------------------------------------------- starting


def script_env(root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The script's environment: ``base`` (default: ours) minus credentials, plus Kaggle's variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in STRIPPED_ENV_VARS}
    env["KR_KAGGLE_INPUT"] = str(input_dir(root).resolve())
    env["KAGGLE_KERNEL_RUN_TYPE"] = "Batch"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(
    root: Path, *, timeout_s: float, env: Mapping[str, str] | None = None, grace_s: float = DEFAULT_GRACE_S
) -> int:
    """Start the supervisor of a prepared sandbox, detached from the caller; returns the supervisor's pid.

    ``env`` is the base environment of the script (default: this process's); credentials are stripped.
    """
    root = Path(root).resolve()
    status = read_status(root)
    if status.state != QUEUED or status.pid is not None:
        raise SandboxError(f"sandbox {root} was already started (state {status.state})")
    settings = read_json(root / _SETTINGS)
    atomic_write_json(
        root / _SETTINGS, {**settings, "timeout_s": float(timeout_s), "grace_s": float(grace_s)}
    )
    # A short-lived launcher starts the supervisor and exits, so the supervisor is re-parented (no zombie
    # left in a long-lived caller such as the emulator) and survives the caller's death.
    launcher = subprocess.run(
        [sys.executable, "-m", "kaggle_runner.sandbox", "--spawn", str(root)],
        env=script_env(root, env),
        cwd=_PACKAGE_PARENT,  # "-m" imports from the cwd: kaggle_runner is found even when not installed
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if launcher.returncode != 0 or not launcher.stdout.strip().isdigit():
        raise SandboxError(f"could not start the supervisor of {root}: {launcher.stderr.strip()[-500:]}")
    pid = int(launcher.stdout.strip())
    (root / "supervisor.pid").write_text(f"{pid}\n")
    return pid


def _spawn_supervisor(root: Path) -> int:
    """In the launcher: start the supervisor in its own session and return its pid without waiting."""
    with open(root / "supervisor.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kaggle_runner.sandbox", str(root)],
            cwd=_PACKAGE_PARENT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


# ----------------------------------------------------------------------------------------------- status


def read_status(root: Path) -> SandboxStatus:
    """The sandbox's state. A run whose supervisor is gone without a final status is reported ``error``."""
    root = Path(root)
    status = _load_status(root)
    if status.is_terminal:
        return status
    pid = status.pid or _launched_pid(root)
    if pid is None or pid_alive(pid):
        return status
    # The supervisor may have written its final status just before exiting: read once more.
    status = _load_status(root)
    if status.is_terminal:
        return status
    return _end_as_error(root, status, pid, "the sandbox supervisor died before the script finished")


def _load_status(root: Path) -> SandboxStatus:
    try:
        raw = read_json(status_path(root))
    except FileNotFoundError:
        raise SandboxError(f"{root} is not a prepared sandbox (no status.json)") from None
    known = SandboxStatus.__dataclass_fields__
    return SandboxStatus(**{k: v for k, v in raw.items() if k in known})


def _write_status(root: Path, status: SandboxStatus) -> None:
    atomic_write_json(status_path(root), status.as_dict())


def _launched_pid(root: Path) -> int | None:
    try:
        return int((Path(root) / "supervisor.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------- kill


def kill(root: Path, *, wait_s: float = DEFAULT_GRACE_S + 5.0) -> SandboxStatus:
    """Stop a run: SIGTERM to the supervisor (which stops the script), SIGKILL if it does not finish in time.

    A sandbox that never started is marked ``error`` at once. Returns the final status.
    """
    root = Path(root)
    status = read_status(root)
    if status.is_terminal:
        return status
    pid = status.pid or _launched_pid(root)
    if pid is None:
        cancelled = SandboxStatus(state=ERROR, ended=time.time(), failure_message="cancelled before start")
        _write_status(root, cancelled)
        return cancelled
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = read_status(root)
        if status.is_terminal:
            return status
        time.sleep(_POLL_S)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return _end_as_error(root, status, pid, "killed")


def _end_as_error(root: Path, status: SandboxStatus, pid: int, message: str) -> SandboxStatus:
    """Record a sandbox whose supervisor is gone as failed, and make sure its script is gone too."""
    ended = SandboxStatus(
        state=ERROR,
        pid=pid,
        script_pid=status.script_pid,
        started=status.started,
        ended=time.time(),
        failure_message=message,
    )
    _write_status(root, ended)
    if status.script_pid:
        _signal_group(status.script_pid, signal.SIGKILL)
    return ended


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ------------------------------------------------------------------------------------------- supervisor

_stop_signal: list[str] = []  # set by the supervisor's SIGTERM/SIGINT handler, polled by its wait loop


def _request_stop(signum: int, _frame: object) -> None:
    _stop_signal.append(signal.Signals(signum).name)


def supervise(root: Path) -> int:
    """Run the sandbox's script to completion, the time limit, or a stop signal; write the final status."""
    root = Path(root).resolve()
    settings = read_json(root / _SETTINGS)
    timeout_s, grace_s = float(settings["timeout_s"]), float(settings["grace_s"])
    started = time.time()
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    with open(log_path(root), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(source_dir(root) / settings["code_file"])],
            cwd=working_dir(root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the time limit stops its children too
        )
    _write_status(root, SandboxStatus(state=RUNNING, pid=os.getpid(), script_pid=proc.pid, started=started))
    exit_code, failure = _wait(proc, started + timeout_s, grace_s, timeout_s)
    state = COMPLETE if exit_code == 0 and failure is None else ERROR
    if state == ERROR and failure is None:
        failure = f"the script exited with code {exit_code}"
    final = SandboxStatus(
        state=state,
        pid=os.getpid(),
        script_pid=proc.pid,
        exit_code=exit_code,
        started=started,
        ended=time.time(),
        failure_message=failure,
    )
    _write_status(root, final)
    return 0


def _wait(
    proc: subprocess.Popen[bytes], deadline: float, grace_s: float, timeout_s: float
) -> tuple[int, str | None]:
    """Wait for the script; stop it at the deadline or on a stop signal. Returns (exit code, failure)."""
    while proc.poll() is None:
        if _stop_signal:
            _terminate(proc, grace_s)
            return proc.returncode, f"stopped by {_stop_signal[0]}"
        if time.time() >= deadline:
            _terminate(proc, grace_s)
            return proc.returncode, f"the session exceeded its time limit of {timeout_s:g} seconds"
        time.sleep(_POLL_S)
    # The script is gone; stragglers it left in its group must not outlive the session.
    _signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode, None


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the script's process group, SIGKILL it after ``grace_s`` seconds."""
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaggle_runner.sandbox", description=supervise.__doc__)
    parser.add_argument("root", type=Path, help="a sandbox folder made by kaggle_runner.sandbox.prepare")
    parser.add_argument("--spawn", action="store_true", help="start the supervisor detached, print its pid")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not status_path(root).is_file() or not (root / _SETTINGS).is_file():
        print(f"error: {root} is not a started sandbox; use kaggle_runner.sandbox.start()", file=sys.stderr)
        return 2
    if args.spawn:
        print(_spawn_supervisor(root))
        return 0
    return supervise(root)


if __name__ == "__main__":
    sys.exit(main())
