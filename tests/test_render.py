"""Rendering the kernel folder: determinism, no credentials, metadata, the embedded trainer, marker helpers."""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kaggle_runner import resources
from kaggle_runner.config import KrConfig, TrainerArgs, default_config
from kaggle_runner.errors import KrError, UsageError
from kaggle_runner.render import (
    SessionSpec,
    deadline_margin_s,
    render_dataset_metadata,
    render_kernel,
    trainer_archive,
)
from kr_contract.errors import ContractError
from kr_contract.marker import Marker, marker_problem, read_marker, write_marker
from kr_contract.names import MARKER_FILE, OUTPUT_PATTERN
from tests.script_support import script_settings

SECRET = "s3cr3t-kaggle-key-0123456789"
RESUME = Marker(chain="chain-a", session=2, sha256="ab" * 32)


@pytest.fixture
def trainer_pkg(tmp_path: Path) -> Path:
    """A small package to embed (the archive code does not care what the trainer does)."""
    package = tmp_path / "pkg" / "trainer"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""trainer"""\n')
    (package / "__main__.py").write_text("print('trainer')\n")
    (package / "sub" / "mod.py").write_text("VALUE = 1\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0junk")
    (package / "stray.pyc").write_bytes(b"\0junk")
    return package


def spec(**overrides: object) -> SessionSpec:
    values: dict[str, object] = {
        "chain_id": "chain-a",
        "session": 3,
        "expect": RESUME,
        "dataset_sources": ("someone/kr-latex-ocr-checkpoints",),
        "budget_s": 600,
        "epochs": 2,
    }
    values.update(overrides)
    return SessionSpec(**values)  # type: ignore[arg-type]


def render(config: KrConfig, out: Path, trainer_pkg: Path, **overrides: object):  # type: ignore[no-untyped-def]
    return render_kernel(config, out, session=spec(**overrides), owner="someone", trainer_dir=trainer_pkg)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_rendering_twice_is_byte_identical(tmp_path: Path, trainer_pkg: Path) -> None:
    first = render(default_config(), tmp_path / "a", trainer_pkg)
    # A later checkout of the same code: every file touched, a fresh __pycache__.
    for path in trainer_pkg.rglob("*.py"):
        os.utime(path, (1_900_000_000, 1_900_000_000))
    (trainer_pkg / "__pycache__" / "other.pyc").write_bytes(b"new")
    second = render(default_config(), tmp_path / "b", trainer_pkg)
    assert folder_bytes(first.folder) == folder_bytes(second.folder)
    assert sorted(folder_bytes(first.folder)) == ["kernel-metadata.json", "script.py"]
    assert first.trainer_sha256 == second.trainer_sha256


def test_a_different_trainer_or_session_changes_the_script(tmp_path: Path, trainer_pkg: Path) -> None:
    base = render(default_config(), tmp_path / "a", trainer_pkg)
    other_session = render(default_config(), tmp_path / "b", trainer_pkg, session=4)
    (trainer_pkg / "sub" / "mod.py").write_text("VALUE = 2\n")
    other_code = render(default_config(), tmp_path / "c", trainer_pkg)
    assert base.script_path.read_bytes() != other_session.script_path.read_bytes()
    assert other_code.trainer_sha256 != base.trainer_sha256


def test_trainer_archive_is_sorted_normalised_and_clean(trainer_pkg: Path) -> None:
    blob = trainer_archive(trainer_pkg)
    assert blob[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    with tarfile.open(fileobj=gzip.GzipFile(fileobj=io.BytesIO(blob)), mode="r:") as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert [n for n in names if n.startswith("trainer/")] == [
        "trainer/__init__.py", "trainer/__main__.py", "trainer/sub/mod.py"
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_archive_holds_the_kernel_packages_and_nothing_of_kaggle_runner(trainer_pkg: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(trainer_archive(trainer_pkg))) as archive:
        names = archive.getnames()
        kernel_main = archive.extractfile("kr_kernel/__init__.py")
        assert kernel_main is not None
        assert kernel_main.read() == (resources.package_source_dir("kr_kernel") / "__init__.py").read_bytes()
    assert {name.split("/")[0] for name in names} == {"trainer", "kr_contract", "kr_kernel"}
    assert "kr_contract/tarball.py" in names and "kr_kernel/watchdog.py" in names


@pytest.mark.parametrize("line", ["from kaggle_runner.fsutil import sha256_file\n", "import kaggle_runner.nonexistent\n"])
def test_trainer_importing_kaggle_runner_is_refused(trainer_pkg: Path, line: str) -> None:
    (trainer_pkg / "sub" / "save.py").write_text(line)
    with pytest.raises(KrError, match="trainer/sub/save.py imports kaggle_runner"):
        trainer_archive(trainer_pkg)


def test_trainer_without_main_is_refused(tmp_path: Path) -> None:
    (tmp_path / "trainer").mkdir()
    with pytest.raises(KrError, match="no __main__.py"):
        trainer_archive(tmp_path / "trainer")


def test_no_credential_is_ever_rendered(
    tmp_path: Path, trainer_pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = Path(os.environ["KAGGLE_CONFIG_DIR"])
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "someone", "key": SECRET}))
    home_kaggle = Path.home() / ".kaggle"
    home_kaggle.mkdir()
    (home_kaggle / "access_token").write_text(SECRET + "-token")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET + "-env-token")
    config = KrConfig(backend="kaggle", trainer=TrainerArgs(data_name="full", use_huggingface=True))
    # The owner is resolved from the credentials here, the way `kr launch` does it.
    rendered = render_kernel(config, tmp_path / "out", session=spec(), trainer_dir=trainer_pkg)
    render_dataset_metadata(tmp_path / "out", "someone/kr-latex-ocr-checkpoints", "kr latex ocr checkpoints")
    assert rendered.metadata["id"] == "someone/kr-latex-ocr"
    files = list((tmp_path / "out").iterdir())
    assert len(files) == 3
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path.name


def test_kernel_metadata_follows_the_config(tmp_path: Path, trainer_pkg: Path) -> None:
    config = KrConfig(kernel_slug="ocr-run", kernel_title="OCR run", private=False, internet=False)
    metadata = render(config, tmp_path / "gpu", trainer_pkg).metadata
    assert metadata == json.loads((tmp_path / "gpu" / "kernel-metadata.json").read_text())
    assert metadata["id"] == "someone/ocr-run" and metadata["title"] == "OCR run"
    assert metadata["code_file"] == "script.py" and (tmp_path / "gpu" / "script.py").is_file()
    assert (metadata["language"], metadata["kernel_type"]) == ("python", "script")
    assert (metadata["is_private"], metadata["enable_internet"]) == (False, False)
    assert (metadata["enable_gpu"], metadata["enable_tpu"], metadata["machine_shape"]) == (
        True,
        False,
        "NvidiaTeslaT4",
    )
    assert metadata["dataset_sources"] == ["someone/kr-latex-ocr-checkpoints"]


@pytest.mark.parametrize(
    ("accelerator", "gpu", "tpu", "shape"),
    [
        ("NvidiaTeslaP100", True, False, "NvidiaTeslaT4"),
        ("TpuV5E8", False, True, "TpuV5E8"),
        ("None", False, False, None),
    ],
)
def test_accelerator_sets_the_machine(
    tmp_path: Path, trainer_pkg: Path, accelerator: str, gpu: bool, tpu: bool, shape: str | None
) -> None:
    config = KrConfig(accelerator=accelerator, session_budget_s=3600)
    metadata = render(config, tmp_path, trainer_pkg).metadata
    assert (metadata["enable_gpu"], metadata["enable_tpu"], metadata.get("machine_shape")) == (
        gpu,
        tpu,
        shape,
    )


def test_local_backend_owner_needs_no_account(tmp_path: Path, trainer_pkg: Path) -> None:
    rendered = render_kernel(default_config(), tmp_path, session=spec(), trainer_dir=trainer_pkg)
    assert rendered.metadata["id"] == "local/kr-latex-ocr"


def test_kaggle_backend_without_credentials_is_a_usage_error(tmp_path: Path, trainer_pkg: Path) -> None:
    with pytest.raises(UsageError, match="no Kaggle credentials"):
        render_kernel(KrConfig(backend="kaggle"), tmp_path / "out", session=spec(), trainer_dir=trainer_pkg)
    assert not (tmp_path / "out").exists()


def test_script_is_standard_library_python_with_the_session_values(tmp_path: Path, trainer_pkg: Path) -> None:
    config = KrConfig(trainer=TrainerArgs(batch_size=5, extra_args=("--lr", "1e-3")), internet=False)
    rendered = render(config, tmp_path, trainer_pkg)
    text = rendered.script_path.read_text()
    tree = ast.parse(text)
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    # Only the standard library, and kr_kernel from the archive it unpacks.
    assert imported - {"kr_kernel"} <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    value = script_settings(text)
    assert value["chain"] == "chain-a" and value["session"] == 3 and value["epochs"] == 2
    assert value["expect"] == {"chain": "chain-a", "session": 2, "sha256": "ab" * 32}
    assert value["budget_s"] == 600.0 and value["deadline_margin_s"] == deadline_margin_s(600) == 30.0
    assert value["internet"] is False and value["trainer_sha256"] == rendered.trainer_sha256
    assert f"ARCHIVE_SHA256 = {rendered.trainer_sha256!r}" in text
    assert value["trainer_args"][:2] == ["--data_name", "synthetic"]
    args = value["trainer_args"]
    assert args[-2:] == ["--lr", "1e-3"] and args[args.index("--batch_size") + 1] == "5"
    from kr_kernel.settings import KernelSettings

    extra = {"source_dir": "/src", "scratch_dir": "/scratch", "started": 0.0}
    assert KernelSettings.from_mapping({**value, **extra}).stall_timeout_s == 900.0  # the kernel reads them


def test_script_passes_the_linter(tmp_path: Path, trainer_pkg: Path) -> None:
    """Undefined names and similar slips in a template only show when a rare branch runs: lint the output."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    script = render(default_config(), tmp_path, trainer_pkg).script_path
    lint = subprocess.run(
        [ruff, "check", "--no-cache", "--isolated", "--select", "F,E9,B", str(script)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_session_values_default_to_the_config(tmp_path: Path, trainer_pkg: Path) -> None:
    config = KrConfig(epochs_per_session=4, session_budget_s=1234)
    text = render(
        config, tmp_path, trainer_pkg, budget_s=None, epochs=None, expect=None
    ).script_path.read_text()
    value = script_settings(text)
    assert value["epochs"] == 4 and value["budget_s"] == 1234.0 and value["expect"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"chain_id": "bad id"}, "chain id"),
        ({"session": -1}, "session -1"),
        ({"dataset_sources": ("no-owner",)}, "dataset source"),
        ({"budget_s": 0}, "session budget"),
        ({"epochs": 0}, "epochs 0"),
    ],
)
def test_bad_session_spec_writes_nothing(
    tmp_path: Path, trainer_pkg: Path, overrides: dict, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        render(default_config(), tmp_path / "out", trainer_pkg, **overrides)
    assert not (tmp_path / "out").exists()


def test_dataset_metadata(tmp_path: Path) -> None:
    path = render_dataset_metadata(tmp_path, "someone/kr-latex-ocr-checkpoints", "kr latex ocr checkpoints")
    data = json.loads(path.read_text())
    assert data["id"] == "someone/kr-latex-ocr-checkpoints" and data["title"] == "kr latex ocr checkpoints"
    assert len(data["licenses"]) == 1 and 20 <= len(data["subtitle"]) <= 80
    with pytest.raises(UsageError, match="dataset 'someone/short'"):
        render_dataset_metadata(tmp_path, "someone/short", "a valid title")
    with pytest.raises(UsageError, match="dataset title"):
        render_dataset_metadata(tmp_path, "someone/long-enough", "tiny")


def test_templates_come_from_the_resources(trainer_pkg: Path) -> None:
    assert (resources.templates_dir() / "kernel.py.j2").is_file()
    assert {p.name for p in resources.kernel_metadata_dir().iterdir()} >= {
        "kernel-metadata.json.j2",
        "dataset-metadata.json.j2",
    }
    assert OUTPUT_PATTERN == r"^(checkpoints\.tar\.gz|training\.log|run\.json)$"


def make_tarball(path: Path, manifest: dict) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("checkpoints/MANIFEST.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def test_marker_round_trip_records_the_tarball(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "checkpoints.tar.gz", {"files": {}, "epoch": 3, "step": 120})
    marker = write_marker(tmp_path, "chain-a", 2, tarball)
    assert marker == read_marker(tmp_path)
    assert (marker.epoch, marker.step) == (3, 120)
    assert marker.sha256 == hashlib.sha256(tarball.read_bytes()).hexdigest()
    stored = json.loads((tmp_path / MARKER_FILE).read_text())
    assert set(stored) == {"chain", "session", "sha256", "epoch", "step"}


def test_marker_absent_and_malformed(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    (tmp_path / MARKER_FILE).write_text('{"chain": "x"}')
    with pytest.raises(ContractError, match="needs chain"):  # the contract's reader: one line, what is missing
        read_marker(tmp_path)


def test_marker_problem_names_the_mismatch() -> None:
    expected = {"chain": "c", "session": 1, "sha256": "aa"}
    assert marker_problem(dict(expected, epoch=4), expected) is None
    assert "not mounted yet" in (marker_problem(None, expected) or "")
    assert "session=0" in (marker_problem(dict(expected, session=0), expected) or "")
    assert "sha256='bb'" in (marker_problem(dict(expected, sha256="bb"), expected) or "")
