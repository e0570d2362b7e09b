"""Run records: one launched kernel version each, under ``$KR_HOME/runs/<run_id>/record.json``.

A record is written only after the backend accepted the push, in one atomic step (the run folder is
assembled under a temp name and renamed into place), so a failed launch leaves nothing behind. Records are
refreshed from the backend by ``refresh`` and rewritten atomically.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_runner.backends.base import Backend, KernelState, PushRequest
from kaggle_runner.errors import ApiError, KrError, UsageError
from kaggle_runner.home import runs_dir
from kr_contract.atomic import atomic_write_json, read_json
from kr_contract.names import OUTPUT_PATTERN

if TYPE_CHECKING:
    from kaggle_runner.config import KrConfig

RECORD_FILE = "record.json"
KERNEL_FOLDER = "kernel"  # the rendered folder that was pushed, kept for inspection
OUTPUT_FOLDER = "output"
# Polling a kernel: gentle on Kaggle (rate limits are unpublished), quick on this machine.
POLL_INTERVAL_S = {"kaggle": 30.0, "local": 1.0}
DEFAULT_POLL_INTERVAL_S = 30.0
POLL_ENV_VAR = "KR_POLL_INTERVAL_S"
_RUN_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$")
# A launch is a one-session run of its own, not part of a chain. Its rendered script names this fixed chain
# id (never the run id) so that the same checkout and config always render the same bytes.
LAUNCH_CHAIN_ID = "launch"
LAUNCH_SESSION = 0
MAX_TIMEOUT_S = 12 * 3600  # Kaggle's longest GPU session


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable by time, unique enough for one user: ``YYYYmmdd-HHMMSS-xxxx``."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass
class RunRecord:
    run_id: str
    backend: str
    ref: str  # owner/slug
    version: int
    state: str  # a KernelState value
    epochs: int
    created: str
    updated: str
    accelerator: str | None = None
    timeout_s: int | None = None
    url: str | None = None
    failure_message: str | None = None
    output_files: list[str] = field(default_factory=list)  # relative to the run's output folder
    config: dict[str, Any] = field(default_factory=dict)  # the configuration it was launched with

    @property
    def kernel_state(self) -> KernelState:
        return KernelState(self.state)

    @property
    def is_terminal(self) -> bool:
        return self.kernel_state.is_terminal

    @property
    def folder(self) -> Path:
        return runs_dir() / self.run_id

    @property
    def output_dir(self) -> Path:
        return self.folder / OUTPUT_FOLDER

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------- storage


def save_record(record: RunRecord) -> None:
    atomic_write_json(record.folder / RECORD_FILE, record.to_json())


def create_run(record: RunRecord, kernel_folder: Path) -> RunRecord:
    """Make ``runs/<id>/`` with the pushed kernel folder and the record, appearing all at once."""
    runs_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{record.run_id}.", dir=runs_dir()))
    try:
        shutil.copytree(kernel_folder, staging / KERNEL_FOLDER)
        atomic_write_json(staging / RECORD_FILE, record.to_json())
        os.rename(staging, record.folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _load(path: Path) -> RunRecord | None:
    try:
        return RunRecord.from_json(read_json(path))
    except (OSError, ValueError, TypeError):
        return None  # a folder that is not a run (a chain, a stray file) or a damaged record


def list_records() -> list[RunRecord]:
    """Every run, newest first. Chains share ``runs/`` but have no record.json, so they are skipped."""
    if not runs_dir().is_dir():
        return []
    found = (_load(path) for path in runs_dir().glob(f"*/{RECORD_FILE}"))
    return sorted((r for r in found if r is not None), key=lambda r: (r.created, r.run_id), reverse=True)


def find_record(query: str | None = None) -> RunRecord:
    """A run by exact id or unique id prefix; the newest run when ``query`` is None."""
    records = list_records()
    if not records:
        raise UsageError("no runs yet", hint="start one with: kr launch --epochs 1")
    if query is None:
        return records[0]
    exact = [r for r in records if r.run_id == query]
    matches = exact or [r for r in records if r.run_id.startswith(query)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no run matches {query!r}", hint="kr status lists the runs")
    shown = ", ".join(r.run_id for r in matches[:5])
    raise UsageError(f"{query!r} matches {len(matches)} runs ({shown})", hint="give more of the run id")


def state_folder(target: str | None) -> tuple[Path, str]:
    """The folder under ``$KR_HOME/runs`` holding the named (or newest) chain or run: exact id, unique prefix,
    or the one with the newest activity when ``target`` is None."""
    root = runs_dir()
    candidates = _state_entries(root)
    if target is None:
        if not candidates:
            raise UsageError(
                "no runs or chains yet", hint="pass a folder or a training.log, or start one: kr chain"
            )
        newest = max(candidates, key=lambda folder: _activity_time(folder))
        return newest, newest.name
    exact = [folder for folder in candidates if folder.name == target]
    matches = exact or [folder for folder in candidates if folder.name.startswith(target)]
    if len(matches) == 1:
        return matches[0], matches[0].name
    if not matches:
        raise UsageError(
            f"{target!r} is neither a file, a folder, nor a run or chain under {root}",
            hint="`kr status` lists runs and chains",
        )
    shown = ", ".join(sorted(folder.name for folder in matches)[:5])
    raise UsageError(f"{target!r} matches {len(matches)} runs/chains ({shown})", hint="give more of the id")


def _state_entries(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [d for d in root.iterdir() if (d / "chain.json").is_file() or (d / "record.json").is_file()]


def _activity_time(folder: Path) -> float:
    marker = folder / "chain.json" if (folder / "chain.json").is_file() else folder / "record.json"
    return marker.stat().st_mtime


# ----------------------------------------------------------------------------------------- launching


def render_launch(config: KrConfig, out_dir: Path, *, epochs: int | None, owner: str | None = None) -> Path:
    """Render the kernel folder of a one-session run (what ``kr launch`` pushes, ``kr render`` shows)."""
    from kaggle_runner.render import SessionSpec, render_kernel

    spec = SessionSpec(chain_id=LAUNCH_CHAIN_ID, session=LAUNCH_SESSION, epochs=epochs)
    return render_kernel(config, Path(out_dir), session=spec, owner=owner).folder


def check_timeout(timeout_s: int | None) -> None:
    if timeout_s is not None and not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise UsageError(
            f"--timeout {timeout_s} is not allowed: seconds, more than 0 and at most {MAX_TIMEOUT_S}",
            hint="Kaggle stops a GPU session after 12 hours anyway",
        )


def launch(config: KrConfig, backend: Backend, *, epochs: int, timeout_s: int | None = None) -> RunRecord:
    """Render, push, and record one run. Nothing is recorded unless the backend accepted the push."""
    check_timeout(timeout_s)
    owner = backend.username()
    with tempfile.TemporaryDirectory(prefix="kr-kernel-") as tmp:
        folder = render_launch(config, Path(tmp) / KERNEL_FOLDER, epochs=epochs, owner=owner)
        # The accelerator travels in kernel-metadata.json (machine_shape), rendered from the config.
        result = backend.push(PushRequest(folder=folder, timeout_s=timeout_s))
        now = _now_iso()
        record = RunRecord(
            run_id=new_run_id(),
            backend=backend.name,
            ref=result.ref,
            version=result.version,
            state=KernelState.QUEUED.value,
            epochs=epochs,
            created=now,
            updated=now,
            accelerator=config.accelerator,
            timeout_s=timeout_s,
            url=result.url,
            config=config.to_mapping(),
        )
        return create_run(record, folder)


# ------------------------------------------------------------------------------------- backend calls


def refresh(record: RunRecord, backend: Backend) -> RunRecord:
    """Ask the backend for the run's state; rewrite the record when it changed."""
    if record.is_terminal:
        return record
    status = backend.status(record.ref, record.version)
    if status.state.value == record.state and status.failure_message == record.failure_message:
        return record
    updated = replace(
        record, state=status.state.value, failure_message=status.failure_message, updated=_now_iso()
    )
    save_record(updated)
    return updated


def poll_interval_s(backend_name: str) -> float:
    override = os.environ.get(POLL_ENV_VAR)
    if override:
        try:
            return max(0.01, float(override))
        except ValueError:
            raise UsageError(f"{POLL_ENV_VAR}={override!r} is not a number of seconds") from None
    return POLL_INTERVAL_S.get(backend_name, DEFAULT_POLL_INTERVAL_S)


def wait(
    record: RunRecord,
    backend: Backend,
    *,
    timeout_s: float | None = None,
    on_change: Callable[[RunRecord], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunRecord:
    """Poll until the run reaches a terminal state, or ``timeout_s`` passes (then ``ApiError``)."""
    interval = poll_interval_s(record.backend)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_state = None
    while True:
        record = refresh(record, backend)
        if record.state != last_state and on_change is not None:
            on_change(record)
        last_state = record.state
        if record.is_terminal:
            return record
        if deadline is not None and time.monotonic() + interval > deadline:
            raise ApiError(
                f"run {record.run_id} is still {record.state} after {timeout_s:g}s",
                hint=f"check again later with: kr status {record.run_id}",
            )
        sleep(interval)


def download(record: RunRecord, backend: Backend, *, all_files: bool = False) -> RunRecord:
    """Fetch the run's outputs (``OUTPUT_PATTERN``, or all with ``all_files``) into ``runs/<id>/output``; the
    previous download stays until this one is whole."""
    staging = Path(tempfile.mkdtemp(prefix=".output-", dir=record.folder))
    try:
        files = backend.download(
            record.ref, record.version, staging, pattern=None if all_files else OUTPUT_PATTERN
        )
        _swap_in(staging, record.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    names = sorted(Path(path).relative_to(staging).as_posix() for path in files)
    updated = replace(record, output_files=names, updated=_now_iso())
    save_record(updated)
    return updated


def _swap_in(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def follow_logs(record: RunRecord, backend: Backend) -> Iterator[str]:
    """Live lines while the run is going; the whole log once when it has ended."""
    record = refresh(record, backend)
    if record.is_terminal:
        yield from backend.logs(record.ref, record.version).splitlines()
    else:
        yield from backend.follow_logs(record.ref, record.version)


def describe_failure(record: RunRecord) -> KrError:
    message = f"run {record.run_id} ({record.ref} v{record.version}) ended {record.state}"
    if record.failure_message:
        message += f": {record.failure_message}"
    return KrError(message, hint=f"read its log with: kr logs {record.run_id}")


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID_RE.match(text))
