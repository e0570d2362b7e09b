"""Render a kernel folder (``script.py`` + ``kernel-metadata.json``) from the configuration and a session spec.

The script is self-contained (it embeds the trainer of this checkout as a deterministic tar.gz) and rendering
is reproducible: the same checkout, configuration and session spec give byte-identical files
(docs/architecture.md §3). Nothing secret is an input of rendering, so nothing secret can come out of it.
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from kaggle_runner import __version__, resources
from kaggle_runner.backends.kaggle_credentials import resolve_username
from kaggle_runner.config import CPU_ACCELERATOR, DATASET_SLUG_LEN, GPU_SESSION_LIMIT_S, KrConfig
from kaggle_runner.errors import KrError, UsageError
from kr_contract.atomic import atomic_write_text
from kr_contract.marker import Marker

SCRIPT_FILE = "script.py"
KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"
KERNEL_TEMPLATE = "kernel.py.j2"
# Modules the trainer imports that a Kaggle image may lack (module -> pip requirement). torch and
# torchvision are left out on purpose: the image's builds match its CUDA, a pip upgrade would not.
KERNEL_REQUIREMENTS = {
    "datasets": "datasets>=2.18",
    "editdistance": "editdistance>=0.8",
    "matplotlib": "matplotlib>=3.8",
    "numpy": "numpy>=1.26",
    "PIL": "pillow>=10",
    "pyarrow": "pyarrow>=15",
}
# Files of the trainer package that are build leftovers, not source.
_SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_CHAIN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]*(/[0-9]+)?$")
_B64_LINE = 100
_KR = "kaggle_runner"


@dataclass(frozen=True)
class SessionSpec:
    """What differs between the sessions of a chain. ``budget_s`` / ``epochs`` default to the config's."""

    chain_id: str
    session: int
    expect: Marker | None = None  # the previous session's checkpoint (chain, k-1, sha256); None: fresh start
    dataset_sources: tuple[str, ...] = ()  # "owner/slug" datasets to mount
    budget_s: float | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class RenderedKernel:
    folder: Path
    script_path: Path
    metadata: dict[str, Any]  # kernel-metadata.json as written
    trainer_sha256: str  # sha256 of the embedded trainer archive


def deadline_margin_s(budget_s: float) -> float:
    """Seconds kept between the trainer's deadline and the end of the budget: 5 %, at most 5 minutes."""
    return round(min(300.0, 0.05 * budget_s), 3)


# The packages a kernel runs, embedded in its script: a Kaggle image has none of them.
KERNEL_PACKAGES = ("trainer", "kr_contract", "kr_kernel")


def trainer_archive(source_dir: Path | None = None) -> bytes:
    """The kernel's code as a reproducible tar.gz: the trainer package (``source_dir``, default this
    checkout's), ``kr_contract`` and ``kr_kernel``; sorted members, mtime 0, owner 0, gzip mtime 0."""
    source_dir = Path(source_dir) if source_dir is not None else resources.package_source_dir("trainer")
    if not (source_dir / "__main__.py").is_file():
        raise KrError(f"{source_dir} is not a runnable trainer package (no __main__.py)", "reinstall kr")
    folders = {"trainer": source_dir} | {name: resources.package_source_dir(name) for name in KERNEL_PACKAGES[1:]}
    members = {
        f"{package}/{path.relative_to(folder).as_posix()}": path
        for package, folder in folders.items()
        for path in _package_files(folder)
    }
    _refuse_kaggle_runner_imports(members)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(members):
            archive.addfile(*_tar_entry(members[name], name))
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=compressed, mode="wb", compresslevel=9, mtime=0) as handle:
        handle.write(raw.getvalue())
    return compressed.getvalue()


def _package_files(source_dir: Path) -> list[Path]:
    files = []
    for path in source_dir.rglob("*"):
        parts = path.relative_to(source_dir).parts
        if any(part in _SKIPPED_DIRS for part in parts) or path.suffix in _SKIPPED_SUFFIXES:
            continue
        if path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(source_dir).as_posix())


def _refuse_kaggle_runner_imports(members: dict[str, Path]) -> None:
    """The kernel has no kaggle_runner: embedded code that imports it would fail there, hours into a chain."""
    for name, path in sorted(members.items()):
        if path.suffix == ".py" and _imports_kaggle_runner(path):
            raise KrError(f"{name} imports kaggle_runner, which a kernel does not have",
                          "the trainer and the kernel may import kr_contract and the standard library only")


def _imports_kaggle_runner(path: Path) -> bool:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == _KR for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == _KR:
            return True
    return False


def _tar_entry(path: Path, name: str) -> tuple[tarfile.TarInfo, io.BytesIO]:
    data = path.read_bytes()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def _environment(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["py"] = repr  # Python literals of str/int/float/bool/None/list/dict: deterministic
    return env


def _check_spec(config: KrConfig, spec: SessionSpec) -> tuple[float, int]:
    if not _CHAIN_ID_RE.match(spec.chain_id):
        raise UsageError(f"chain id {spec.chain_id!r} is not allowed: letters, digits, '.', '_' or '-'")
    if spec.session < 0:
        raise UsageError(f"session {spec.session} is not allowed: 0 or more")
    for source in spec.dataset_sources:
        if not _SOURCE_RE.match(source):
            raise UsageError(f"dataset source {source!r} is not allowed: owner/slug or owner/slug/version")
    budget = float(spec.budget_s if spec.budget_s is not None else config.session_budget_s)
    if not 0 < budget <= GPU_SESSION_LIMIT_S:
        raise UsageError(
            f"session budget {budget!r} s is not allowed: more than 0, at most {GPU_SESSION_LIMIT_S}"
        )
    epochs = spec.epochs if spec.epochs is not None else config.epochs_per_session
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"epochs {epochs!r} is not allowed: a whole number of 1 or more")
    return budget, epochs


def kernel_owner(config: KrConfig) -> str:
    """The account in the kernel's id: ``local`` for the local backend unless a username is configured."""
    if config.username:
        return config.username
    return "local" if config.backend == "local" else resolve_username(config)


def kernel_settings(config: KrConfig, spec: SessionSpec, archive_sha256: str) -> dict[str, Any]:
    """What the kernel's ``kr_kernel.main`` gets (kr_kernel.settings.KernelSettings), as plain data."""
    budget, epochs = _check_spec(config, spec)
    return {
        "kr_version": __version__,
        "chain": spec.chain_id,
        "session": spec.session,
        "expect": spec.expect.expectation() if spec.expect is not None else None,
        "dataset_sources": list(spec.dataset_sources),
        "budget_s": budget,
        "deadline_margin_s": deadline_margin_s(budget),
        "epochs": epochs,
        "trainer_args": config.trainer.to_argv(),
        "trainer_sha256": archive_sha256,
        "internet": config.internet,
        "requirements": dict(KERNEL_REQUIREMENTS),
        "stall_timeout_s": float(config.stall_timeout_s),
    }


def render_script(config: KrConfig, spec: SessionSpec, *, trainer_dir: Path | None = None) -> tuple[str, str]:
    """The kernel script's text and the sha256 of the archive it embeds."""
    _check_spec(config, spec)
    archive = trainer_archive(trainer_dir)
    digest = hashlib.sha256(archive).hexdigest()
    context = {
        "kr_version": __version__,
        "chain_id": spec.chain_id,
        "session": spec.session,
        "settings": _literal(kernel_settings(config, spec, digest)),
        "archive_sha256": digest,
        "archive_b64": "\n".join(textwrap.wrap(base64.b64encode(archive).decode("ascii"), _B64_LINE)),
    }
    template = _environment(resources.templates_dir()).get_template(KERNEL_TEMPLATE)
    return template.render(context), digest


def _literal(settings: dict[str, Any]) -> str:
    """A Python dict literal, one key per line in sorted order: deterministic and readable in the script."""
    return "{\n" + "".join(f"    {key!r}: {settings[key]!r},\n" for key in sorted(settings)) + "}"


def kernel_metadata(config: KrConfig, spec: SessionSpec, owner: str) -> dict[str, Any]:
    """kernel-metadata.json for this session, rendered from its template."""
    shape = config.effective_accelerator
    context = {
        "ref": f"{owner}/{config.kernel_slug}",
        "title": config.kernel_title,
        "code_file": SCRIPT_FILE,
        "private": config.private,
        "enable_gpu": config.uses_gpu,
        "enable_tpu": config.uses_tpu,
        "internet": config.internet,
        "dataset_sources": list(spec.dataset_sources),
        "machine_shape": None if shape == CPU_ACCELERATOR else shape,
    }
    template = _environment(resources.kernel_metadata_dir()).get_template(KERNEL_METADATA_FILE + ".j2")
    return json.loads(template.render(context))


def render_kernel(
    config: KrConfig,
    out_dir: Path,
    *,
    session: SessionSpec,
    owner: str | None = None,
    trainer_dir: Path | None = None,
) -> RenderedKernel:
    """Write ``out_dir/script.py`` and ``out_dir/kernel-metadata.json`` for one session of a chain.

    ``owner`` defaults to ``kernel_owner(config)``; ``trainer_dir`` to the trainer package of this checkout.
    """
    owner = owner or kernel_owner(config)
    script, digest = render_script(config, session, trainer_dir=trainer_dir)
    metadata = kernel_metadata(config, session, owner)
    folder = Path(out_dir)
    script_path = folder / SCRIPT_FILE
    atomic_write_text(script_path, script)
    atomic_write_text(folder / KERNEL_METADATA_FILE, json.dumps(metadata, indent=2) + "\n")
    return RenderedKernel(folder=folder, script_path=script_path, metadata=metadata, trainer_sha256=digest)


def render_dataset_metadata(folder: Path, ref: str, title: str) -> Path:
    """Write ``folder/dataset-metadata.json`` for the checkpoint dataset ``ref`` (owner/slug)."""
    owner, _, slug = ref.partition("/")
    low, high = DATASET_SLUG_LEN
    if not owner or not _SOURCE_RE.match(ref) or ref.count("/") != 1 or not low <= len(slug) <= high:
        raise UsageError(f"dataset {ref!r} is not allowed: owner/slug with a slug of {low}-{high} characters")
    if not low <= len(title) <= high:
        raise UsageError(f"dataset title {title!r} is not allowed: {low}-{high} characters")
    context = {
        "ref": ref,
        "title": title,
        "subtitle": "Checkpoints and training log of a kr chain",
        "license": "unknown",
    }
    template = _environment(resources.kernel_metadata_dir()).get_template(DATASET_METADATA_FILE + ".j2")
    path = Path(folder) / DATASET_METADATA_FILE
    atomic_write_text(path, json.dumps(json.loads(template.render(context)), indent=2) + "\n")
    return path
