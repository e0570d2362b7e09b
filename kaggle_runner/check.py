"""``kr check``: everything a chain needs, checked before a GPU session is spent on it.

Each check is one ``Check``: ok, a warning (the chain can run, but read this), or a problem (it would fail)
with what to do. Checks that need the account (credentials, slugs, quota) ask the backend through read calls
only; nothing is pushed or published. No check ever reports a credential: only the username is read.

Limits used (each with where it comes from):

- the kernel source: 1 MB. SaveKernel answers HTTP 400 "The kernel source must be less than 1 megabytes in
  size." (seen in JovianHQ/kernel-run#2; the emulator enforces the same);
- a dataset version: assumed 100 GB (Kaggle's private-dataset quota, "over 100 GB" by 2023; Kaggle does not
  publish a per-version limit in its API docs), and ``/kaggle/working``: 20 GB (shared/docs/platform.md);
- quota: the first session's budget must fit what is left this week (``--sessions N`` also says whether all N
  fit; a chain that does not fit waits for the weekly reset with ``--wait-for-quota``).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_runner import model_sizes
from kaggle_runner.chain_policy import MIN_SESSION_BUDGET_S, QUOTA_MARGIN_S
from kaggle_runner.config_rules import (
    ACCELERATORS,
    CPU_ACCELERATOR,
    HF_WITHOUT_INTERNET,
    RETIRED_ACCELERATORS,
)
from kaggle_runner.errors import KrError

if TYPE_CHECKING:
    from kaggle_runner.backends.base import Backend
    from kaggle_runner.config import KrConfig

OK, WARNING, PROBLEM = "ok", "warning", "problem"
KERNEL_SOURCE_LIMIT_BYTES = 1_000_000
DATASET_LIMIT_BYTES = 100 * 10**9
WORKING_DIR_LIMIT_BYTES = 20 * 10**9
# Shapes the client accepts that only admins or some competitions get (shared/docs/platform.md).
RESTRICTED_ACCELERATORS = ("NvidiaTeslaT4Highmem", "NvidiaL4", "NvidiaTeslaA100", "NvidiaH100", "NvidiaRtxPro6000")
HOUR_S = 3600.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARNING or PROBLEM
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "message": self.message, "fix": self.fix}


def ok(name: str, message: str) -> Check:
    return Check(name, OK, message)


def warning(name: str, message: str, fix: str | None = None) -> Check:
    return Check(name, WARNING, message, fix)


def problem(name: str, message: str, fix: str | None = None) -> Check:
    return Check(name, PROBLEM, message, fix)


def passed(checks: list[Check]) -> bool:
    return all(check.status != PROBLEM for check in checks)


# ----------------------------------------------------------------------------------------- configuration


def configuration_checks(path: Path | None, backend: str | None) -> tuple[list[Check], KrConfig | None]:
    """The configuration, validated, and what is wrong with it, each problem on its own line where possible
    (an unknown accelerator does not hide the other checks). None when nothing else can be checked."""
    from kaggle_runner.config import config_from_mapping, find_config, read_mapping

    try:
        found = path or find_config()
        raw = read_mapping(found) if found is not None else {}
    except KrError as exc:
        return [problem("config", exc.message, exc.hint)], None
    where = str(found) if found is not None else "the defaults (no kr.toml here)"
    unknown = raw.get("accelerator", "NvidiaTeslaT4")
    unknown_accelerator = unknown not in ACCELERATORS and unknown not in RETIRED_ACCELERATORS
    if unknown_accelerator:  # reported on its own line; the rest is checked with the default shape
        raw = {key: value for key, value in raw.items() if key != "accelerator"}
    notes: list[str] = []
    try:
        config = config_from_mapping(raw, where=where, warn=notes.append)
        if backend is not None:
            config = config_from_mapping({**config.to_mapping(), "backend": backend}, where="--backend")
    except KrError as exc:
        return [problem("config", exc.message, exc.hint)], None
    checks = [ok("config", f"{where}: backend {config.backend}, kernel {config.kernel_slug}, model "
                 f"{config.trainer.model_size}")]
    # The accelerator and the internet checks say more than these two warnings.
    checks += [warning("config", note) for note in notes
               if not note.startswith("accelerator ") and note != HF_WITHOUT_INTERNET]
    checks.append(accelerator_check(unknown if unknown_accelerator else config.accelerator, config.backend))
    return checks, config


def accelerator_check(accelerator: object, backend: str = "kaggle") -> Check:
    if accelerator not in ACCELERATORS and accelerator not in RETIRED_ACCELERATORS:
        return problem("accelerator", f"accelerator = {accelerator!r} is not a Kaggle machine shape",
                       f"set accelerator in kr.toml to one of {', '.join(ACCELERATORS)}")
    if accelerator in RETIRED_ACCELERATORS:
        return warning("accelerator", f"{accelerator} is retired: Kaggle runs it on {RETIRED_ACCELERATORS[accelerator]}",
                       f"set accelerator = {RETIRED_ACCELERATORS[accelerator]!r}")
    if accelerator in RESTRICTED_ACCELERATORS:
        return warning("accelerator", f"{accelerator} is only granted to admins or some competitions: a push "
                       "may be refused", "NvidiaTeslaT4 is the shape every account gets")
    if backend == "local":
        return ok("accelerator", f"{accelerator} on Kaggle; the local backend runs on this machine's CPU or GPU")
    if accelerator == CPU_ACCELERATOR:
        return ok("accelerator", "None: the kernel runs on CPU (slow, but no GPU quota)")
    return ok("accelerator", f"{accelerator}")


def internet_check(config: KrConfig) -> Check:
    trainer = config.trainer
    if not trainer.use_huggingface:
        return ok("internet", f"data {trainer.data_name} needs no download" + ("" if config.internet else
                  "; internet = false"))
    if config.backend == "local":
        return ok("internet", f"data {trainer.data_name} comes from Hugging Face ({trainer.hf_repo}): this "
                  "machine's network is used")
    if not config.internet:
        return problem("internet", f"trainer.use_huggingface = true ({trainer.hf_repo}) but internet = false: "
                       "the kernel cannot download the data", "set internet = true in kr.toml")
    return ok("internet", f"on: the kernel downloads {trainer.data_name} from {trainer.hf_repo}")


def script_check(config: KrConfig, owner: str) -> Check:
    """Render session 2 (it carries the resume expectation, so it is the larger) and measure it."""
    from kaggle_runner.render import SessionSpec, render_kernel
    from kr_contract.marker import Marker

    spec = SessionSpec(chain_id="kr-check", session=2, expect=Marker("kr-check", 1, "0" * 64),
                       dataset_sources=(f"{owner}/{config.dataset_slug}",))
    with tempfile.TemporaryDirectory(prefix="kr-check-") as scratch:
        size = render_kernel(config, Path(scratch), session=spec, owner=owner).script_path.stat().st_size
    text = f"the kernel script is {size / 1e3:.0f} kB"
    if config.backend == "kaggle" and size >= KERNEL_SOURCE_LIMIT_BYTES:
        return problem("script", f"{text}, Kaggle takes less than {KERNEL_SOURCE_LIMIT_BYTES / 1e6:.0f} MB",
                       "the trainer package grew too large to embed: remove data files from trainer/")
    return ok("script", f"{text}" + (f" (Kaggle's limit: {KERNEL_SOURCE_LIMIT_BYTES / 1e6:.0f} MB)"
                                    if config.backend == "kaggle" else ""))


def checkpoint_check(config: KrConfig) -> Check:
    size = config.trainer.model_size
    tarball = model_sizes.tarball_bytes(size)
    working = model_sizes.working_dir_bytes(size, *_kept_files(config.trainer.extra_args))
    text = f"model {size}: checkpoints.tar.gz about {_size(tarball)}, the working folder up to {_size(working)}"
    if config.backend == "local":
        free = shutil.disk_usage(_existing_parent(config)).free
        if working > free:
            return problem("checkpoint", f"{text}, but only {_size(free)} are free under $KR_HOME",
                           "free some disk space, or lower --keep_epochs / --keep_tarballs in trainer.extra_args")
        return ok("checkpoint", text)
    if tarball > DATASET_LIMIT_BYTES:
        return problem("checkpoint", f"{text}: more than a dataset version holds (about "
                       f"{DATASET_LIMIT_BYTES / 1e9:.0f} GB)", "choose a smaller trainer.model_size")
    if working > WORKING_DIR_LIMIT_BYTES:
        return problem("checkpoint", f"{text}: more than /kaggle/working's {WORKING_DIR_LIMIT_BYTES / 1e9:.0f} GB",
                       'keep fewer files: trainer.extra_args = ["--keep_epochs", "1", "--keep_tarballs", "1"]')
    return ok("checkpoint", text)


def _size(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{max(count / 1e6, 0.1):.1f} MB"


def _kept_files(extra_args: tuple[str, ...]) -> tuple[int, int]:
    values = {"--keep_epochs": model_sizes.KEEP_EPOCHS, "--keep_tarballs": model_sizes.KEEP_TARBALLS}
    for index, arg in enumerate(extra_args):
        name, _, inline = arg.partition("=")
        raw = inline or (extra_args[index + 1] if index + 1 < len(extra_args) else "")
        if name in values and raw.isdigit():
            values[name] = int(raw)
    return values["--keep_epochs"], values["--keep_tarballs"]


def _existing_parent(config: KrConfig) -> Path:
    from kaggle_runner.home import kr_home

    path = kr_home()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ----------------------------------------------------------------------------------------- the account


def quota_check(backend: Backend, config: KrConfig, sessions: int) -> Check:
    if config.effective_accelerator == CPU_ACCELERATOR:
        return ok("quota", "a CPU kernel uses no GPU quota")
    if config.uses_tpu:
        return warning("quota", "the API reports the GPU quota only: a TPU's weekly hours are not checked",
                       "see the TPU hours left on kaggle.com before a long chain")
    quota = backend.quota()
    remaining = quota.remaining_s
    budget = float(config.session_budget_s)
    if remaining is None:
        return ok("quota", "no weekly GPU quota is reported" + (" (set KR_LOCAL_GPU_QUOTA_HOURS to have one)"
                                                               if config.backend == "local" else ""))
    left = f"{remaining / HOUR_S:.1f} h of GPU quota left this week"
    reset = f" (it resets {quota.refresh_time:%Y-%m-%d %H:%M %Z})" if quota.refresh_time else ""
    if remaining - QUOTA_MARGIN_S < min(budget, MIN_SESSION_BUDGET_S):
        return problem("quota", f"{left}{reset}: not enough for a session of {budget / HOUR_S:.1f} h",
                       "wait for the reset, or run kr chain --wait-for-quota (it waits for the reset itself)")
    needed = sessions * (budget + QUOTA_MARGIN_S)
    if remaining < needed:
        fit = int(remaining // (budget + QUOTA_MARGIN_S))
        return warning("quota", f"{left}{reset}: {sessions} sessions of {budget / HOUR_S:.1f} h need "
                       f"{needed / HOUR_S:.1f} h; {max(fit, 1)} fit this week",
                       "run kr chain --wait-for-quota, so that the chain waits for the reset instead of stopping")
    what = f"{sessions} session(s)" if sessions > 1 else "the first session"
    return ok("quota", f"{left}: enough for {what} of {budget / HOUR_S:.1f} h")


def slug_check(name: str, found: Callable[[], Any], ref: str, owner: str, account: str) -> Check:
    """A kernel or dataset ref: free, or already kr's; someone else's is a problem."""
    what = "kernel" if name == "kernel" else "dataset"
    if owner != account:
        return problem(name, f"{ref} belongs to {owner}, not to {account} (the credentials' user): kr cannot "
                       f"push to it", "remove username from kr.toml, or use that user's credentials")
    existing = found()
    if existing is None:
        return ok(name, f"{ref} is free: the first session creates it")
    if existing.made_by_kr is False:
        return warning(name, f"{ref} exists and was not made by kr: the chain would add its versions to it",
                       f"choose another {what}_slug in kr.toml, or delete the {what} on Kaggle")
    return ok(name, f"{ref} exists (made by kr): a chain adds versions to it")


def account_checks(backend: Backend, config: KrConfig, sessions: int) -> list[Check]:
    """Credentials (an authenticated read), the username, the slugs, the quota: Kaggle, or the local stand-in."""
    try:
        account = backend.account()
        quota = quota_check(backend, config, sessions)
    except KrError as exc:
        return [problem("credentials", exc.message, exc.hint)]
    checks = []
    if config.backend == "kaggle":
        checks.append(ok("credentials", f"accepted by Kaggle (user {account})"))
    owner = config.username or account
    if config.username and config.username != account:
        checks.append(problem("username", f"kr.toml names username {config.username}, the credentials are "
                              f"{account}'s", "remove username from kr.toml, or use that user's credentials"))
    else:
        checks.append(ok("username", f"{owner}"))
    kernel_ref, dataset_ref = f"{owner}/{config.kernel_slug}", f"{owner}/{config.dataset_slug}"
    checks.append(_guarded("kernel", lambda: slug_check("kernel", lambda: backend.find_kernel(kernel_ref),
                                                        kernel_ref, owner, account)))
    checks.append(_guarded("dataset", lambda: slug_check("dataset", lambda: backend.find_dataset(dataset_ref),
                                                         dataset_ref, owner, account)))
    checks.append(quota)
    return checks


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except KrError as exc:
        return problem(name, exc.message, exc.hint)


def local_runtime_check() -> Check:
    """The local backend runs the trainer on this machine: it needs torch here."""
    if importlib.util.find_spec("torch") is None:
        return problem("trainer", "torch is not installed: the local backend runs the trainer on this machine",
                       "pip install 'kaggle-runner[train]'")
    return ok("trainer", "torch is installed: sessions run on this machine")


# ----------------------------------------------------------------------------------------- all of them


def run_checks(config: KrConfig, backend: Backend, *, sessions: int = 1) -> list[Check]:
    """Every check for a valid configuration on its backend (configuration errors are the caller's)."""
    checks = [internet_check(config)]
    if config.backend == "local":
        checks.append(local_runtime_check())
    checks += account_checks(backend, config, sessions)
    owner = config.username or _safe_account(backend)
    checks.append(_guarded("script", lambda: script_check(config, owner)))
    checks.append(checkpoint_check(config))
    return checks


def _safe_account(backend: Backend) -> str:
    try:
        return backend.account()
    except KrError:
        return "you"  # the credentials check already says what is wrong; the script renders all the same
