"""The chain's persisted state: the records saved in ``$KR_HOME/runs/<chain_id>/chain.json`` at every
transition, and the functions that create, load, list, find and lock them.

Nothing here talks to a backend: ``chain_machine.py`` declares the states and their transitions,
``kaggle_runner/chain.py`` drives them, ``chain_outputs.py`` checks what a session left, ``chain_summary.py``
turns records into ``kr status`` rows. ``ChainState`` and ``FailureKind`` are re-exported from here.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kaggle_runner.chain_machine import (  # noqa: F401 - re-exported: the records' vocabulary
    FAILED_STATES,
    TERMINAL_STATES,
    WAITING_STATES,
    ChainState,
    FailureKind,
)
from kaggle_runner.errors import KrError, UsageError
from kaggle_runner.home import runs_dir
from kr_contract.atomic import atomic_write_json, read_json

FORMAT_VERSION = 1

T = TypeVar("T")


class Clock(Protocol):
    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time: deadlines are persisted, so they must survive a restart of the process."""

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


# --------------------------------------------------------------------------------------------- records


@dataclass
class ChainSpec:
    """What the chain was asked to do. Fixed at creation except what a rerun may change (``sessions``,
    ``until_epoch``, ``max_retries``, ``wait_for_quota``), and ``--update-config`` (a new ``config``)."""

    chain_id: str
    backend: str
    kernel_ref: str  # owner/slug of the kernel every session pushes a version of
    dataset_ref: str  # owner/slug of the checkpoint dataset every session publishes a version of
    sessions: int
    session_budget_s: float
    epochs_per_session: int | None = None
    until_epoch: int | None = None
    max_retries: int = 2
    wait_for_quota: bool = False
    accelerator: str | None = None
    config_path: str | None = None  # the kr.toml the snapshot was taken from, for messages
    # The resolved configuration (``KrConfig.to_mapping()``) at creation: every session renders from it.
    config: dict[str, Any] | None = None


@dataclass
class Attempt:
    """One push of a session's kernel (a session needs more than one when a kernel fails)."""

    number: int
    reason: str  # why it exists: "first", or the FailureKind / event that caused it
    budget_s: float  # rendered into the kernel: the trainer stops in time for it
    timeout_s: int  # sessionTimeoutSeconds at push: the backend's hard kill
    pre_push_version: int | None = None
    version: int | None = None
    pushed_at: float | None = None
    running_at: float | None = None
    ended_at: float | None = None
    kernel_state: str | None = None
    outcome: str | None = None  # "complete" or a FailureKind value
    failure_message: str | None = None
    log_excerpt: str | None = None
    render_started_at: float | None = None
    stall: dict[str, Any] | None = None  # run.json's ``stall`` when the watchdog stopped this attempt


@dataclass
class SessionRecord:
    index: int  # 1-based
    attempts: list[Attempt] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    pre_publish_version: int | None = None
    publish_started_at: float | None = None
    dataset_version: int | None = None
    epoch: int | None = None
    step: int | None = None
    stop_reason: str | None = None
    best: dict[str, Any] | None = None
    gpu_seconds: float = 0.0
    kr_seconds: float = 0.0  # kr's own time, not spent waiting on the backend or sleeping
    started_at: float | None = None
    finished_at: float | None = None
    error_retries: int = 0
    time_limit_retries: int = 0
    stale_relaunches: int = 0
    stall_relaunches: int = 0
    gpu_wait_started_at: float | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage: push, queue, run, ...

    @property
    def attempt(self) -> Attempt:
        return self.attempts[-1]


@dataclass
class ChainRecord:
    spec: ChainSpec
    state: ChainState = ChainState.NEW
    session: int = 0  # index of the current session, 0 before the first
    sessions: list[SessionRecord] = field(default_factory=list)
    wait_until: float | None = None
    message: str | None = None  # why the chain stopped or waits, for people
    halted: str | None = None  # the error that stopped the last ``kr chain`` process, if any
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    format_version: int = FORMAT_VERSION

    @property
    def current(self) -> SessionRecord:
        return self.sessions[self.session - 1]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChainRecord:
        sessions = [
            _build(SessionRecord, {**s, "attempts": [_build(Attempt, a) for a in s.get("attempts", [])]})
            for s in data.get("sessions", [])
        ]
        record = _build(cls, {**data, "spec": _build(ChainSpec, data["spec"]), "sessions": sessions})
        record.state = ChainState(data["state"])
        return record


def _build(kind: type[T], data: dict[str, Any]) -> T:
    """A dataclass from a dict, ignoring keys a newer kr may have added."""
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    return kind(**{k: v for k, v in data.items() if k in names})


# --------------------------------------------------------------------------------------------- storage


def chain_dir(chain_id: str, home: Path | None = None) -> Path:
    return runs_dir(home) / chain_id


def chain_file(chain_id: str, home: Path | None = None) -> Path:
    return chain_dir(chain_id, home) / "chain.json"


def save_chain(record: ChainRecord, home: Path | None = None) -> None:
    atomic_write_json(chain_file(record.spec.chain_id, home), record.to_dict())


def load_chain(chain_id: str, home: Path | None = None) -> ChainRecord:
    path = chain_file(chain_id, home)
    if not path.is_file():
        raise UsageError(
            f"no chain {chain_id!r} under {path.parent.parent}", hint="`kr status` lists the chains"
        )
    try:
        return ChainRecord.from_dict(read_json(path))
    except (ValueError, KeyError, TypeError) as exc:
        raise KrError(f"{path} is not a chain state file kr can read ({exc})") from None


def list_chains(home: Path | None = None) -> list[ChainRecord]:
    """Every readable chain under ``runs/``, oldest first."""
    runs = runs_dir(home)
    records = []
    for path in sorted(runs.glob("*/chain.json")) if runs.is_dir() else []:
        try:
            records.append(ChainRecord.from_dict(read_json(path)))
        except (ValueError, KeyError, TypeError, OSError):
            continue  # a foreign or damaged file must not hide the other chains
    return sorted(records, key=lambda r: r.created_at)


def new_chain_id(clock: Clock | None = None) -> str:
    stamp = datetime.fromtimestamp((clock or SystemClock()).time(), tz=timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"chain-{stamp}-{secrets.token_hex(2)}"


def create_chain(spec: ChainSpec, home: Path | None = None, clock: Clock | None = None) -> ChainRecord:
    now = (clock or SystemClock()).time()
    if chain_file(spec.chain_id, home).exists():
        raise UsageError(
            f"chain {spec.chain_id!r} already exists", hint=f"`kr chain --chain {spec.chain_id}` continues it"
        )
    record = ChainRecord(spec=spec, created_at=now, updated_at=now)
    save_chain(record, home)
    return record


def latest_chain(home: Path | None, *, backend: str, kernel_ref: str) -> ChainRecord | None:
    """The newest chain driving this kernel on this backend, finished or not: rerunning ``kr chain`` continues
    it, extends it when ``--sessions`` grew, or only reports it when it is done (never a fresh chain that would
    train from scratch again; ``--new`` is for that)."""
    candidates = [r for r in list_chains(home) if r.spec.backend == backend and r.spec.kernel_ref == kernel_ref]
    return candidates[-1] if candidates else None


@contextmanager
def chain_lock(chain_id: str, home: Path | None = None) -> Iterator[None]:
    """Hold the chain's lock: two ``kr chain`` processes never drive the same chain. The OS frees it when
    the holder dies, so a SIGKILL or a reboot never leaves it stuck."""
    from filelock import FileLock, Timeout

    path = chain_dir(chain_id, home) / "chain.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise KrError(
            f"chain {chain_id} is already being driven by another kr chain process",
            hint="wait for it, or stop it first; `kr status` shows where it stands",
        ) from None
    try:
        yield
    finally:
        lock.release()


def is_locked(chain_id: str, home: Path | None = None) -> bool:
    """Whether a ``kr chain`` process is driving the chain right now."""
    from filelock import FileLock, Timeout

    path = chain_dir(chain_id, home) / "chain.lock"
    if not path.exists():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False
