"""The rendered kernel script, executed for real with ``python script.py`` in a Kaggle-like layout.

The input root is a temp folder named by ``KR_KAGGLE_INPUT``; the working directory is the script's cwd. The
checks that stop before the trainer starts embed a trainer that leaves a mark if it ever runs; the sessions
that train use the real trainer (tiny model, synthetic data) and are marked slow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from kaggle_runner import resources
from kaggle_runner.config import KrConfig, TrainerArgs
from kaggle_runner.render import SessionSpec, render_kernel
from kr_contract.marker import Marker, write_marker
from kr_contract.runjson import RUN_FIELDS

OWNER = "someone"
SLUG = "kr-latex-ocr-checkpoints"
SOURCE = f"{OWNER}/{SLUG}"
STALE = 3
LAYOUTS = ("old", "new")
# Offline: a kernel script with internet on may pip-install what is missing, and tests never reach PyPI.
OFFLINE = KrConfig(internet=False)


@pytest.fixture
def unreachable_trainer(tmp_path: Path) -> Path:
    """A trainer package that only leaves TRAINER_STARTED (holding its KR_DEADLINE) in the working dir."""
    package = tmp_path / "unreachable" / "trainer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import os\nopen('TRAINER_STARTED', 'w').write(os.environ['KR_DEADLINE'])\nraise SystemExit(1)\n"
    )
    return package


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("input", "working", "kernel", "no-kr")}
    for path in paths.values():
        path.mkdir()
    # A Kaggle image has no kaggle_runner: shadow this checkout's, so that only what the script embeds imports.
    (paths["no-kr"] / "kaggle_runner").mkdir()
    (paths["no-kr"] / "kaggle_runner" / "__init__.py").write_text(
        "raise ImportError('kaggle_runner is not installed')\n"
    )
    return paths


def dataset_dir(input_root: Path, mount: str) -> Path:
    """Where Kaggle mounts the checkpoint dataset: /kaggle/input/<slug> (old) or datasets/<owner>/<slug> (new)."""
    folder = input_root / SLUG if mount == "old" else input_root / "datasets" / OWNER / SLUG
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def checkpoint_tarball(
    path: Path, files: dict[str, bytes], *, manifest_files: dict[str, str] | None = None
) -> Path:
    """A checkpoints.tar.gz laid out like the trainer's: checkpoints/<file> plus MANIFEST.json of sha256s."""
    manifest = {
        "files": manifest_files or {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "epoch": 1,
        "step": 10,
        "format_version": 1,
    }
    entries = {**files, "MANIFEST.json": json.dumps(manifest).encode()}
    with tarfile.open(path, "w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(f"checkpoints/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def publish(folder: Path, tarball: Path, *, chain: str, session: int, log: Path | None = None) -> Marker:
    """What the chain publishes as a dataset version: the tarball, the log and kr-marker.json."""
    shutil.copyfile(tarball, folder / "checkpoints.tar.gz")
    if log is not None:
        shutil.copyfile(log, folder / "training.log")
    return write_marker(folder, chain, session, folder / "checkpoints.tar.gz")


def render(layout: dict[str, Path], config: KrConfig, spec: SessionSpec, trainer_dir: Path | None) -> Path:
    out = layout["kernel"] / f"session-{spec.session}"
    return render_kernel(config, out, session=spec, owner=OWNER, trainer_dir=trainer_dir).script_path


def run_script(
    script: Path, layout: dict[str, Path], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        KR_KAGGLE_INPUT=str(layout["input"]),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(layout["no-kr"]),
    )
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=layout["working"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_json(layout: dict[str, Path]) -> dict:
    return json.loads((layout["working"] / "run.json").read_text())


def scratch_left() -> list[str]:
    return [p.name for p in Path(os.environ["TMPDIR"]).iterdir() if p.name.startswith("kr-kernel-")]


def resume_spec(expect: Marker | None, session: int = 1, **overrides: object) -> SessionSpec:
    values: dict[str, object] = {
        "chain_id": "chain-a",
        "session": session,
        "expect": expect,
        "dataset_sources": (SOURCE,),
        "budget_s": 600,
        "epochs": 1,
    }
    values.update(overrides)
    return SessionSpec(**values)  # type: ignore[arg-type]


def assert_stopped_before_trainer(
    result: subprocess.CompletedProcess[str], layout: dict[str, Path], code: int, tag: str
) -> dict:
    assert result.returncode == code, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"{tag}: ")]
    assert len(lines) == 1, result.stdout
    assert not (layout["working"] / "TRAINER_STARTED").exists()
    assert sorted(p.name for p in layout["working"].iterdir()) == ["run.json"]
    assert scratch_left() == []
    run = run_json(layout)
    assert run["exit_code"] == code and run["chain"] == "chain-a" and run["result"] is None
    return run


# ------------------------------------------------------------------------------------- before the trainer


def test_missing_marker_is_stale_input(layout: dict[str, Path], unreachable_trainer: Path) -> None:
    expect = Marker("chain-a", 0, "cd" * 32)
    script = render(layout, OFFLINE, resume_spec(expect), unreachable_trainer)
    result = run_script(script, layout)
    run = assert_stopped_before_trainer(result, layout, STALE, "KR_STALE_INPUT")
    assert run["stop_reason"] == "stale_input" and "no kr-marker.json" in run["message"]
    assert run["resumed_from"] == {"chain": "chain-a", "session": 0, "sha256": "cd" * 32}


@pytest.mark.parametrize("mount", LAYOUTS)
def test_marker_of_an_older_session_is_stale_input(
    layout: dict[str, Path], unreachable_trainer: Path, mount: str, tmp_path: Path
) -> None:
    tarball = checkpoint_tarball(tmp_path / "c.tar.gz", {"last.pth.tar": b"weights"})
    older = publish(dataset_dir(layout["input"], mount), tarball, chain="chain-a", session=0)
    expect = Marker("chain-a", 1, older.sha256)  # the chain published session 1; Kaggle mounted session 0
    result = run_script(render(layout, OFFLINE, resume_spec(expect, session=2), unreachable_trainer), layout)
    run = assert_stopped_before_trainer(result, layout, STALE, "KR_STALE_INPUT")
    assert "session=0" in run["message"]


def test_tarball_that_does_not_match_the_marker_is_stale_input(
    layout: dict[str, Path], unreachable_trainer: Path, tmp_path: Path
) -> None:
    folder = dataset_dir(layout["input"], "new")
    marker = publish(
        folder, checkpoint_tarball(tmp_path / "a.tar.gz", {"last.pth.tar": b"a"}), chain="chain-a", session=0
    )
    # A half-processed version: the marker is new, the tarball is still the old one.
    checkpoint_tarball(folder / "checkpoints.tar.gz", {"last.pth.tar": b"b"})
    result = run_script(render(layout, OFFLINE, resume_spec(marker), unreachable_trainer), layout)
    run = assert_stopped_before_trainer(result, layout, STALE, "KR_STALE_INPUT")
    assert "sha256" in run["message"]


def test_corrupt_tarball_is_bad_input(
    layout: dict[str, Path], unreachable_trainer: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(64))
    marker = publish(dataset_dir(layout["input"], "old"), garbage, chain="chain-a", session=0)
    result = run_script(render(layout, OFFLINE, resume_spec(marker), unreachable_trainer), layout)
    run = assert_stopped_before_trainer(result, layout, 1, "KR_BAD_INPUT")
    assert run["stop_reason"] == "bad_input" and "not a valid archive" in run["message"]


def test_checkpoint_that_does_not_match_its_manifest_is_bad_input(
    layout: dict[str, Path], unreachable_trainer: Path, tmp_path: Path
) -> None:
    tarball = checkpoint_tarball(
        tmp_path / "c.tar.gz", {"last.pth.tar": b"flipped bits"}, manifest_files={"last.pth.tar": "00" * 32}
    )
    marker = publish(dataset_dir(layout["input"], "old"), tarball, chain="chain-a", session=0)
    result = run_script(render(layout, OFFLINE, resume_spec(marker), unreachable_trainer), layout)
    run = assert_stopped_before_trainer(result, layout, 1, "KR_BAD_INPUT")
    assert "MANIFEST" in run["message"]


def test_tarball_with_a_path_outside_is_refused(
    layout: dict[str, Path], unreachable_trainer: Path, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as archive:
        info = tarfile.TarInfo("../../escaped")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    marker = publish(dataset_dir(layout["input"], "old"), evil, chain="chain-a", session=0)
    result = run_script(render(layout, OFFLINE, resume_spec(marker), unreachable_trainer), layout)
    assert_stopped_before_trainer(result, layout, 1, "KR_BAD_INPUT")
    assert not list(tmp_path.rglob("escaped"))


def test_tampered_trainer_archive_is_refused(layout: dict[str, Path], unreachable_trainer: Path) -> None:
    script = render(layout, OFFLINE, resume_spec(None, session=0), unreachable_trainer)
    text = script.read_text()
    digest = re.search(r"ARCHIVE_SHA256 = '([0-9a-f]{64})'", text)
    assert digest is not None
    script.write_text(text.replace(digest.group(1), "0" * 64))
    run = assert_stopped_before_trainer(run_script(script, layout), layout, 1, "KR_BAD_SCRIPT")
    assert run["stop_reason"] == "bad_script"
    assert tuple(sorted(run)) == tuple(sorted(RUN_FIELDS))  # the bootstrap writes the contract's run.json


@pytest.mark.parametrize("mount", LAYOUTS)
def test_resume_finds_the_tarball_under_either_layout_and_continues_the_log(
    layout: dict[str, Path], unreachable_trainer: Path, tmp_path: Path, mount: str
) -> None:
    files = {"last.pth.tar": b"last weights", "BEST_checkpoint_local_synthetic.pth.tar": b"best weights"}
    previous_log = tmp_path / "training.log"
    previous_log.write_text("2026-11-26 23:10:00 INFO train epoch=1 step=2 loss=6.4883\n")
    tarball = checkpoint_tarball(tmp_path / "c.tar.gz", files)
    marker = publish(
        dataset_dir(layout["input"], mount), tarball, chain="chain-a", session=0, log=previous_log
    )
    # Another mounted dataset with an unrelated marker must not confuse the search.
    decoy = layout["input"] / "datasets" / OWNER / "other-data"
    decoy.mkdir(parents=True)
    publish(decoy, tarball, chain="x", session=7)
    started = time.time()
    result = run_script(render(layout, OFFLINE, resume_spec(marker), unreachable_trainer), layout)
    ended = time.time()
    # The resume reached the trainer (which only marks that it started) with the checkpoints and log in place.
    assert (layout["working"] / "TRAINER_STARTED").exists(), result.stdout + result.stderr
    restored = layout["working"] / "checkpoints"
    assert {name: (restored / name).read_bytes() for name in files} == files
    assert (layout["working"] / "training.log").read_text() == previous_log.read_text()
    args = run_json(layout)["args"]
    assert args[args.index("--checkpoint") + 1] == "checkpoints/last.pth.tar"
    assert args[args.index("--max_epochs") + 1] == "1" and args[args.index("--out_dir") + 1] == "."
    # KR_DEADLINE: the script's start + budget (600 s) - margin (5 %: 30 s).
    deadline = float((layout["working"] / "TRAINER_STARTED").read_text())
    assert started + 570 - 1 <= deadline <= ended + 570
    assert scratch_left() == []


@pytest.mark.parametrize("unpacked_into", ["folder of the tarball's name", "dataset root"])
def test_dataset_unpacked_by_kaggle_is_verified_and_resumed(
    layout: dict[str, Path], unreachable_trainer: Path, tmp_path: Path, unpacked_into: str
) -> None:
    files = {"last.pth.tar": b"last weights", "BEST_checkpoint_local_synthetic.pth.tar": b"best weights"}
    tarball = checkpoint_tarball(tmp_path / "c.tar.gz", files)
    folder = dataset_dir(layout["input"], "new")
    marker = publish(folder, tarball, chain="chain-a", session=0)
    (folder / "checkpoints.tar.gz").unlink()
    target = folder / "checkpoints.tar.gz" if unpacked_into != "dataset root" else folder
    target.mkdir(exist_ok=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(target, filter="data")
    result = run_script(render(layout, OFFLINE, resume_spec(marker), unreachable_trainer), layout)
    # The resume reached the trainer (which only marks that it started) with the checkpoints in place.
    assert (layout["working"] / "TRAINER_STARTED").exists(), result.stdout + result.stderr
    restored = layout["working"] / "checkpoints"
    assert {name: (restored / name).read_bytes() for name in files} == files
    assert "--checkpoint" in run_json(layout)["args"]


def test_dataset_unpacked_by_kaggle_with_a_bad_file_is_bad_input(
    layout: dict[str, Path], unreachable_trainer: Path, tmp_path: Path
) -> None:
    tarball = checkpoint_tarball(tmp_path / "c.tar.gz", {"last.pth.tar": b"weights"})
    folder = dataset_dir(layout["input"], "old")
    marker = publish(folder, tarball, chain="chain-a", session=0)
    (folder / "checkpoints.tar.gz").unlink()
    with tarfile.open(tarball) as archive:
        archive.extractall(folder, filter="data")
    (folder / "checkpoints" / "last.pth.tar").write_bytes(b"truncated")
    result = run_script(render(layout, OFFLINE, resume_spec(marker), unreachable_trainer), layout)
    assert_stopped_before_trainer(result, layout, 1, "KR_BAD_INPUT")


# ------------------------------------------------------------------------------------- with the real trainer


def real_trainer_dir() -> Path:
    path = resources.trainer_source_dir()
    if not (path / "__main__.py").is_file():
        pytest.skip("the trainer package has no __main__.py in this checkout yet")
    return path


TINY = KrConfig(
    internet=False,
    trainer=TrainerArgs(
        model_size="tiny",
        batch_size=8,
        synthetic_train=16,
        synthetic_val=8,
        synthetic_test=8,
        extra_args=("--num_workers", "0", "--device", "cpu"),
    ),
)


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def fresh_working_dir(layout: dict[str, Path], keep_as: Path) -> Path:
    """Keep a finished session's outputs (what kr downloads) and give the next session an empty working dir."""
    shutil.copytree(layout["working"], keep_as)
    shutil.rmtree(layout["working"])
    layout["working"].mkdir()
    return keep_as


def assert_session_ok(result: subprocess.CompletedProcess[str], layout: dict[str, Path]) -> dict:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = run_json(layout)
    assert run["exit_code"] == 0 and run["result"]["epochs_done"] == 1 and run["gpus"] == 0
    assert {"checkpoints.tar.gz", "training.log", "run.json"} <= {p.name for p in layout["working"].iterdir()}
    assert scratch_left() == []
    return run


@pytest.mark.slow
def test_a_session_trains_and_the_next_resumes_from_its_published_outputs(
    layout: dict[str, Path], tmp_path: Path
) -> None:
    trainer_dir = real_trainer_dir()
    first = assert_session_ok(
        run_script(render(layout, TINY, resume_spec(None, session=0), trainer_dir), layout), layout
    )
    assert "--checkpoint" not in first["args"] and first["args"][:3] == ["-m", "trainer", "--data_name"]
    previous = fresh_working_dir(layout, tmp_path / "session-0")

    # The chain publishes session 0's outputs as a dataset version; Kaggle mounts it (current layout).
    folder = dataset_dir(layout["input"], "new")
    marker = publish(
        folder, previous / "checkpoints.tar.gz", chain="chain-a", session=0, log=previous / "training.log"
    )
    run = assert_session_ok(
        run_script(render(layout, TINY, resume_spec(marker, session=1), trainer_dir), layout), layout
    )
    assert run["args"][run["args"].index("--checkpoint") + 1] == "checkpoints/last.pth.tar"
    assert run["result"]["epoch"] == first["result"]["epoch"] + 1
    assert run["resumed_from"]["sha256"] == marker.sha256
    old_log, new_log = log_lines(previous / "training.log"), log_lines(layout["working"] / "training.log")
    assert new_log[: len(old_log)] == old_log and len(new_log) > len(old_log)


@pytest.mark.slow
def test_two_gpu_session_stopped_by_sigterm_under_torchrun_ends_clean(layout: dict[str, Path]) -> None:
    """With 2 devices the script starts torchrun (here: 2 CPU processes over gloo). torchrun exits non-zero once
    signalled even though the trainer saved and stopped cleanly; the script must report that stop as success."""
    config = KrConfig(
        internet=False,
        trainer=TrainerArgs(
            model_size="tiny",
            batch_size=4,
            synthetic_train=512,
            synthetic_val=8,
            synthetic_test=8,
            extra_args=("--num_workers", "0", "--device", "cpu", "--threads", "1", "--log_every", "1"),
        ),
    )
    script = render(layout, config, resume_spec(None, session=0), real_trainer_dir())
    env = dict(
        os.environ,
        KR_KAGGLE_INPUT=str(layout["input"]),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(layout["no-kr"]),
        CUDA_VISIBLE_DEVICES="0,1",  # what the script counts; the trainer itself runs on the CPU
        GLOO_SOCKET_IFNAME="lo",
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=layout["working"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = layout["working"] / "training.log"
    deadline = time.monotonic() + 180
    while not (log.is_file() and re.search(r" train epoch=", log.read_text())):
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "the trainer never logged a training step"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    run = run_json(layout)
    assert run["gpus"] == 2 and run["args"][:2] == ["-m", "torch.distributed.run"]
    assert run["exit_code"] == 0 and run["stop_reason"] == "signal", run
    with tarfile.open(layout["working"] / "checkpoints.tar.gz") as archive:
        assert "checkpoints/last.pth.tar" in archive.getnames()


def test_a_diverged_trainer_s_stop_reason_and_message_reach_run_json(layout: dict[str, Path], tmp_path: Path) -> None:
    """kr chain reads run.json to tell a divergence (not retried) from a crash (retried)."""
    package = tmp_path / "diverging" / "trainer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import json\n"
        "json.dump({'stop_reason': 'diverged', 'message': 'diverged at step 7: the training loss became nan'},"
        " open('trainer_result.json', 'w'))\n"
        "raise SystemExit(1)\n"
    )
    script = render(layout, OFFLINE, resume_spec(None, session=0), package)
    result = run_script(script, layout)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    run = run_json(layout)
    assert run["exit_code"] == 1 and run["stop_reason"] == "diverged"
    assert run["message"] == "diverged at step 7: the training loss became nan"
