"""The chain's test double and harness: a scripted ``Backend`` whose kernels "run" in simulated time.

The double stands exactly at the backend boundary: it answers from a script (what each pushed kernel does,
which calls fail) and logs every call, so a test can count pushes and publishes. Its kernels "run" in
simulated time (``FakeClock``), so every policy branch runs in milliseconds. Used by test_chain_policy.py and
test_chain_machine.py.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kaggle_runner.backends.base import (
    Backend,
    DatasetInfo,
    KernelState,
    KernelStatus,
    PushRefused,
    PushRequest,
    PushResult,
    Quota,
)
from kaggle_runner.chain import ChainRunner, SessionRequest, Timing
from kaggle_runner.chain_observer import LineObserver
from kaggle_runner.chain_state import ChainRecord, ChainSpec, create_chain, load_chain
from kaggle_runner.errors import ApiError
from kr_contract.atomic import atomic_write_json, read_json
from kr_contract.names import EXIT_STALLED, STOP_STALLED, TAG_STALLED
from kr_contract.runjson import write_run_json

DIVERGED_MESSAGE = "diverged at step 40: the training loss became nan; resume from it with a lower --lr"


class FakeClock:
    """Simulated wall time: ``sleep`` advances it at once."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        self.slept += max(0.0, seconds)


class Crash(BaseException):
    """Stands for SIGKILL: nothing in the chain catches it."""


def render_request(request: SessionRequest, folder: Path) -> None:
    """The test renderer: the kernel folder carries the request, as a real render carries it in the script."""
    atomic_write_json(folder / "request.json", request.__dict__)


@dataclass
class KernelPlan:
    """What one pushed version does. ``outcome``: complete | error | time_limit (killed, nothing saved) |
    time_limit_saved (killed after saving) | stale | crash_with_run (run.json with exit code 1) | diverged (the
    trainer's divergence stop: run.json with exit code 1 and its message) | stalled (the kernel's watchdog
    stopped the trainer at ``stall``: run.json with exit code 4, the checkpoint it resumed from) |
    stalled_saved (the same after the trainer saved a newer checkpoint)."""

    outcome: str = "complete"
    polls_running: int = 2  # status calls answered "running" before the end
    epochs: int = 1
    corrupt_downloads: int = 0  # downloads that deliver a broken tarball first
    no_manifest: bool = False  # the tarball has no MANIFEST.json (not packed by kr)
    stall: dict[str, Any] | None = None  # run.json's stall object of a stalled version


@dataclass
class Version:
    number: int
    request: dict[str, Any]
    plan: KernelPlan
    timeout_s: int | None
    polls: int = 0
    epoch: int = 0


@dataclass
class ScriptedBackend(Backend):
    clock: FakeClock
    plans: list[KernelPlan] = field(default_factory=list)  # consumed one per successful push
    push_refusals: list[PushRefused] = field(default_factory=list)  # consumed before pushes go through
    failures: dict[str, int] = field(
        default_factory=dict
    )  # method name -> how many calls raise ApiError next
    fail_after: dict[str, int] = field(
        default_factory=dict
    )  # method -> calls that raise after doing the work
    crash_on_call: int | None = None  # the n-th call (1-based) crashes after doing its work
    quota_value: Quota = field(default_factory=lambda: Quota(None, None))
    dataset_polls_processing: int = 1  # dataset_info calls answering "blobs_received" after each publish
    dataset_stuck: bool = False
    calls: list[str] = field(default_factory=list)
    versions: dict[int, Version] = field(default_factory=dict)
    dataset_versions: list[dict[str, Any]] = field(default_factory=list)
    _processing_left: int = 0
    name: str = "scripted"

    # -- bookkeeping

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            raise ApiError(f"{method}: HTTP 503 Service Unavailable")

    def _leave(self, method: str) -> None:
        """After the work: a crash (SIGKILL stand-in) or an error whose response was lost."""
        if self.crash_on_call is not None and len(self.calls) == self.crash_on_call:
            raise Crash(f"crash after call {len(self.calls)} ({method})")
        if self.fail_after.get(method, 0) > 0:
            self.fail_after[method] -= 1
            raise ApiError(f"{method}: connection reset after the request was sent")

    def count(self, method: str) -> int:
        return self.calls.count(method)

    @property
    def pushes(self) -> int:
        return len(self.versions)

    # -- Backend

    def username(self) -> str:
        return "tester"

    def push(self, request: PushRequest) -> PushResult:
        self._enter("push")
        if self.push_refusals:
            raise self.push_refusals.pop(0)
        number = len(self.versions) + 1
        plan = self.plans.pop(0) if self.plans else KernelPlan()
        self.versions[number] = Version(
            number, read_json(request.folder / "request.json"), plan, request.timeout_s
        )
        self._leave("push")
        return PushResult(ref="tester/kernel", version=number)

    def latest_version(self, ref: str) -> int | None:
        self._enter("latest_version")
        result = max(self.versions) if self.versions else None
        self._leave("latest_version")
        return result

    def status(self, ref: str, version: int) -> KernelStatus:
        self._enter("status")
        run = self.versions[version]
        run.polls += 1
        status = (
            KernelStatus(KernelState.RUNNING)
            if run.polls <= run.plan.polls_running
            else self._final_status(run)
        )
        self._leave("status")
        return status

    def _final_status(self, run: Version) -> KernelStatus:
        outcome = run.plan.outcome
        if outcome == "complete":
            return KernelStatus(KernelState.COMPLETE)
        if outcome in ("time_limit", "time_limit_saved"):
            return KernelStatus(
                KernelState.ERROR,
                "Your notebook was stopped because it exceeded the max allowed execution duration (timeout)",
            )
        return KernelStatus(KernelState.ERROR, "Kernel exited with a non-zero code")

    def logs(self, ref: str, version: int) -> str:
        self._enter("logs")
        outcome = self.versions[version].plan.outcome
        lines = ["INFO train epoch=1 step=1 loss=2.0"]
        if outcome == "stale":
            lines = ["KR_STALE_INPUT: kr-marker.json has session=1, this session expects 2"]
        elif outcome.startswith("stalled"):
            lines += [f"{TAG_STALLED}: no progress for 900 s in train at step 40", "Thread 0x1 (most recent call first):"]
        elif outcome in ("error", "crash_with_run", "diverged"):
            lines += ["Traceback (most recent call last):", "RuntimeError: CUDA out of memory"]
        self._leave("logs")
        return "\n".join(lines) + "\n"

    def download(self, ref: str, version: int, dest: Path, *, pattern: str | None = None) -> list[Path]:
        self._enter("download")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        run = self.versions[version]
        files = self._outputs(run, dest)
        self._leave("download")
        return files

    def _outputs(self, run: Version, dest: Path) -> list[Path]:
        outcome = run.plan.outcome
        if outcome in ("time_limit", "stale", "error"):
            return []
        request = run.request
        if not run.epoch:
            earlier = [v.epoch for v in self.versions.values() if v.request["session"] < request["session"]]
            gained = 0 if outcome == "stalled" else request.get("epochs") or run.plan.epochs
            run.epoch = max(earlier, default=0) + gained
        epoch = run.epoch
        exit_code = {"crash_with_run": 1, "diverged": 1, "stalled": EXIT_STALLED, "stalled_saved": EXIT_STALLED}.get(
            outcome, 0
        )
        run_json: dict[str, Any] = {
            "chain": request["chain_id"],
            "session": request["session"],
            "exit_code": exit_code,
            "stop_reason": "signal" if outcome == "time_limit_saved" else "max_epochs",
            "seconds": 100.0,
            "result": {"epoch": epoch, "step": epoch * 10, "best": {"bleu4": 0.1 * epoch, "epoch": epoch}},
        }
        if outcome == "diverged":
            run_json |= {"stop_reason": "diverged", "message": DIVERGED_MESSAGE}
        if outcome.startswith("stalled"):  # the watchdog killed the trainer: it wrote no result
            run_json |= {"stop_reason": STOP_STALLED, "stall": run.plan.stall, "result": None,
                         "message": "the trainer made no progress for 900 s"}
        write_run_json(dest, run_json)
        (dest / "training.log").write_text(f"INFO session {request['session']}\n")
        corrupt = run.plan.corrupt_downloads > 0
        if corrupt:
            run.plan.corrupt_downloads -= 1
        (dest / "checkpoints.tar.gz").write_bytes(
            make_tarball(f"{request['chain_id']}-{request['session']}", epoch, corrupt=corrupt,
                         manifest=not run.plan.no_manifest)
        )
        return sorted(dest.iterdir())

    def quota(self) -> Quota:
        self._enter("quota")
        self._leave("quota")
        return self.quota_value

    def dataset_info(self, ref: str) -> DatasetInfo | None:
        self._enter("dataset_info")
        info = None
        if self.dataset_stuck or self._processing_left > 0:
            self._processing_left -= 1
            info = DatasetInfo(ref, "blobs_received", len(self.dataset_versions))
        elif self.dataset_versions:
            info = DatasetInfo(ref, "ready", len(self.dataset_versions))
        self._leave("dataset_info")
        return info if self.dataset_versions else None

    def publish_dataset(
        self, folder: Path, ref: str, *, title: str, notes: str, private: bool = True
    ) -> None:
        self._enter("publish_dataset")
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        self.dataset_versions.append({"files": files, "marker": json.loads(files["kr-marker.json"])})
        self._processing_left = self.dataset_polls_processing
        self._leave("publish_dataset")


def make_tarball(payload: str, epoch: int, *, corrupt: bool = False, manifest: bool = True) -> bytes:
    """A checkpoints.tar.gz as the trainer writes it: last.pth.tar, BEST, and a MANIFEST of their sha256
    (``manifest=False``: none, as an older or foreign packer left it)."""
    import hashlib

    members = {
        "checkpoints/last.pth.tar": payload.encode(),
        "checkpoints/BEST_checkpoint_local_synthetic.pth.tar": b"best",
    }
    listing: dict[str, Any] = {
        "files": {name.split("/")[-1]: hashlib.sha256(data).hexdigest() for name, data in members.items()},
        "epoch": epoch,
        "step": epoch * 10,
        "format_version": 1,
    }
    if corrupt:
        listing["files"]["last.pth.tar"] = "0" * 64
    if manifest:
        members["checkpoints/MANIFEST.json"] = json.dumps(listing).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def refusal(reason: str) -> PushRefused:
    messages = {
        "gpu_session_limit": "Maximum batch GPU session count of 2 reached.",
        "quota_exhausted": "You've exceeded the number of hours allowed to use GPU.",
        "invalid_sources": "invalidDatasetSources: tester/missing",
    }
    return PushRefused(messages.get(reason, reason), reason=reason)


def quota_left(seconds: float, refresh: datetime | None = None) -> Quota:
    return Quota(used_s=30 * 3600 - seconds, allowed_s=30 * 3600, refresh_time=refresh)


# ------------------------------------------------------------------------------------------------ harness

HOUR = 3600.0


def make_spec(**overrides: Any) -> ChainSpec:
    values: dict[str, Any] = {
        "chain_id": "chain-test",
        "backend": "scripted",
        "kernel_ref": "tester/kernel",
        "dataset_ref": "tester/checkpoints",
        "sessions": 3,
        "session_budget_s": 4 * HOUR,
        "epochs_per_session": 1,
    }
    values.update(overrides)
    return ChainSpec(**values)


@dataclass
class Harness:
    backend: ScriptedBackend
    clock: FakeClock
    home: Path
    events: list[dict[str, Any]]
    lines: list[str]
    requests: list[dict[str, Any]]

    def runner(self, record: ChainRecord | None = None, **kwargs: Any) -> ChainRunner:
        record = record or load_chain("chain-test", self.home)
        return ChainRunner(
            record,
            self.backend,
            self.render,
            home=self.home,
            timing=Timing(),
            clock=self.clock,
            notify=self.events.append,
            observer=LineObserver(self.lines.append),
            **kwargs,
        )

    def render(self, request: SessionRequest, folder: Path) -> None:
        self.requests.append(dict(request.__dict__))
        render_request(request, folder)

    def run(self, **kwargs: Any) -> ChainRecord:
        return self.runner(**kwargs).run()

    def states(self) -> list[str]:
        return [event["state"] for event in self.events]


def start(tmp_path: Path, backend: ScriptedBackend | None = None, **spec: Any) -> Harness:
    clock = backend.clock if backend else FakeClock()
    home = tmp_path / "kr-home"
    create_chain(make_spec(**spec), home, clock)
    return Harness(backend or ScriptedBackend(clock), clock, home, [], [], [])


