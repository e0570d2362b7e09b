"""The kernel's progress watchdog (kr_kernel.watchdog): stall detection, stack dumps, stopping the trainer.

In-process tests drive ``Watchdog`` against real subprocesses that beat (or stop beating) through
``kr_contract.heartbeat``; one test runs a rendered kernel whose trainer saves a checkpoint and then hangs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from kaggle_runner.config import KrConfig
from kaggle_runner.render import SessionSpec, render_kernel
from kr_contract.names import EXIT_STALLED, STOP_STALLED
from kr_kernel.watchdog import Stall, Watchdog, locate

REPO = Path(__file__).resolve().parent.parent

# A process that beats like a trainer: pid and stack dump registered, a heartbeat per "step", then it hangs in
# wait_for_batch (as a trainer waiting on a dead DataLoader worker would) unless told to finish.
BEATING = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from kr_contract.heartbeat import Heartbeat, install_stack_dump

    folder, steps, then = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    install_stack_dump(folder, 0)
    beat = Heartbeat(folder, min_interval_s=0)

    def wait_for_batch():
        threading.Event().wait()

    for step in range(1, steps + 1):
        beat.beat("train", step=step, epoch=0)
        time.sleep(0.1)
    if then == "hang":
        wait_for_batch()
    """
)


def start(folder: Path, steps: int, then: str) -> subprocess.Popen[str]:
    script = folder / "src" / "trainer" / "beating.py"  # a trainer's own file, as the watchdog recognises it
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(BEATING)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(script), str(folder), str(steps), then], env=env, text=True)


def test_a_trainer_that_stops_beating_is_stopped_with_its_stack(tmp_path: Path) -> None:
    lines: list[str] = []
    process = start(tmp_path, steps=5, then="hang")
    began = time.monotonic()
    stall = Watchdog(tmp_path, timeout_s=2.0, log=lines.append, out=lines.append).wait(process)
    assert isinstance(stall, Stall)
    assert time.monotonic() - began < 2.0 + 30  # the timeout, the stack dump and the kill's grace
    assert process.returncode is not None and process.returncode < 0  # killed, not exited
    assert (stall.phase, stall.step, stall.epoch) == ("train", 5, 0) and stall.silent_s >= 2.0
    assert stall.where.startswith("trainer/beating.py:") and "in wait_for_batch, waiting in" in stall.where
    assert "threading.py" in stall.where
    stalled = [line for line in lines if line.startswith("KR_STALLED: ")]
    assert stalled == [f"KR_STALLED: {stall.message()}"]
    assert "in phase train at step 5" in stalled[0]
    assert any('in wait_for_batch' in line for line in lines)  # the whole dump is in the log


def test_a_trainer_that_keeps_beating_is_left_alone(tmp_path: Path) -> None:
    process = start(tmp_path, steps=40, then="exit")  # 4 s of beats, longer than the timeout
    assert Watchdog(tmp_path, timeout_s=1.5, log=lambda _: None, out=lambda _: None).wait(process) is None
    assert process.returncode == 0


def test_a_trainer_that_never_beats_is_stopped_as_stuck_before_its_first_heartbeat(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    lines: list[str] = []
    stall = Watchdog(tmp_path, timeout_s=1.0, log=lines.append, out=lines.append).wait(process)
    assert stall is not None and stall.phase is None and stall.step is None
    assert "before the trainer's first heartbeat" in stall.message() and "unknown place" in stall.where
    assert process.returncode is not None


def test_locate_names_the_main_thread_s_own_frame_and_the_wait_below_it() -> None:
    dump = textwrap.dedent(
        """\
        Thread 0x00007f0000000002 (most recent call first):
          File "/usr/lib/python3.11/threading.py", line 320 in wait
          File "/src/trainer/data.py", line 10 in prefetch

        Current thread 0x00007f0000000001 (most recent call first):
          File "/usr/lib/python3.11/multiprocessing/connection.py", line 931 in wait
          File "/site/torch/utils/data/dataloader.py", line 1133 in _try_get_data
          File "/tmp/kr-kernel-x/src/trainer/train.py", line 312 in _run_epoch
          File "/tmp/kr-kernel-x/src/trainer/__main__.py", line 20 in main
        """
    )
    where = locate(dump, 0x00007F0000000001)
    assert where == "trainer/train.py:312 in _run_epoch, waiting in /usr/lib/python3.11/multiprocessing/connection.py:931 in wait"
    assert locate(dump, None).startswith("trainer/data.py:10 in prefetch")  # no id: the first thread listed
    assert "unknown place" in locate("", 1)


def fake_trainer(root: Path, *, hang_after: int) -> Path:
    """A trainer package that beats, saves a real checkpoints.tar.gz at step 3, then hangs at a known place."""
    package = root / "trainer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(
        f"""
        import threading, time
        from pathlib import Path
        from kr_contract.atomic import sha256_file
        from kr_contract.heartbeat import Heartbeat, install_stack_dump, watchdog_dir
        from kr_contract.tarball import pack_tarball

        install_stack_dump(watchdog_dir(), 0)
        beat = Heartbeat.from_env(0)
        beat.min_interval_s = 0
        Path("checkpoints").mkdir()
        last = Path("checkpoints/last.pth.tar")

        def next_batch():
            threading.Event().wait()

        for step in range(1, {hang_after} + 1):
            beat.beat("train", step=step, epoch=1)
            if step == 3:
                last.write_bytes(b"state at step 3")
                pack_tarball("checkpoints.tar.gz", {{last: sha256_file(last)}}, epoch=1, step=3, format_version=1)
            time.sleep(0.2)
        next_batch()
        """
    ))
    return package


def test_a_kernel_whose_trainer_hangs_ends_stalled_with_its_last_checkpoint(tmp_path: Path) -> None:
    config = KrConfig(internet=False, stall_timeout_s=3)
    working = tmp_path / "working"
    working.mkdir()
    script = render_kernel(config, tmp_path / "kernel", session=SessionSpec(chain_id="chain-a", session=1),
                           owner="someone", trainer_dir=fake_trainer(tmp_path / "fake", hang_after=6)).script_path
    no_kr = tmp_path / "no-kr" / "kaggle_runner"
    no_kr.mkdir(parents=True)
    (no_kr / "__init__.py").write_text("raise ImportError('kaggle_runner is not installed')\n")
    env = dict(os.environ, KR_KAGGLE_INPUT=str(tmp_path / "input"), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(no_kr.parent))
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], cwd=working, env=env, capture_output=True, text=True,
                            timeout=120)
    elapsed = time.monotonic() - began
    assert result.returncode == EXIT_STALLED, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 3 + 60, elapsed  # within the timeout plus a minute
    run = json.loads((working / "run.json").read_text())
    assert run["exit_code"] == EXIT_STALLED and run["stop_reason"] == STOP_STALLED
    assert run["stall"]["phase"] == "train" and run["stall"]["step"] == 6
    assert run["stall"]["where"].startswith("trainer/__main__.py:") and "in next_batch" in run["stall"]["where"]
    assert "no progress for" in run["message"]
    stalled = [line for line in result.stdout.splitlines() if line.startswith("KR_STALLED: ")]
    assert len(stalled) == 1 and "at step 6" in stalled[0]
    assert "in next_batch" in result.stdout  # the stack dump is in the log
    with tarfile.open(working / "checkpoints.tar.gz") as archive:  # the checkpoint before the stall is intact
        member = archive.extractfile("checkpoints/last.pth.tar")
        assert member is not None and member.read() == b"state at step 3"


@pytest.mark.parametrize("timeout", [1.0, 900.0, 43200.0])
def test_poll_and_grace_scale_with_the_timeout(timeout: float) -> None:
    watchdog = Watchdog(Path("."), timeout, log=lambda _: None)
    assert 0.2 <= watchdog.poll_s <= min(10.0, timeout)
    assert 2.0 <= watchdog.grace_s <= 60.0


LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys
    # Like torchrun: the worker runs in a session of its own, the launcher waits for it.
    worker = subprocess.Popen([sys.executable, *sys.argv[1:]], start_new_session=True)
    sys.exit(worker.wait())
    """
)


def test_a_worker_in_its_own_session_is_killed_with_its_launcher(tmp_path: Path) -> None:
    script = tmp_path / "src" / "trainer" / "beating.py"
    script.parent.mkdir(parents=True)
    script.write_text(BEATING)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(script), str(tmp_path), "3", "hang"], env=env)
    stall = Watchdog(tmp_path, timeout_s=2.0, log=lambda _: None, out=lambda _: None).wait(launcher)
    assert stall is not None and stall.step == 3
    worker = int((tmp_path / "pid-rank0").read_text())
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived the watchdog's kill"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ")[-1].startswith("Z"))  # a zombie is dead


# The real trainer, with one fault injected from outside its code: the 6th optimizer step never returns (a
# hang in the middle of training, after epoch 1's checkpoint at step 4).
STALLING_MAIN = textwrap.dedent(
    """
    import sys, threading
    import torch

    calls = [0]
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:
            threading.Event().wait()
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step
    from trainer import real_main
    sys.exit(real_main.main())
    """
)


@pytest.mark.slow
def test_the_real_trainer_stuck_in_a_step_is_stopped_and_its_epoch_checkpoint_kept(tmp_path: Path) -> None:
    import shutil

    from kaggle_runner import resources
    from kaggle_runner.config import TrainerArgs

    package = tmp_path / "stalling" / "trainer"
    shutil.copytree(resources.package_source_dir("trainer"), package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (package / "__main__.py").rename(package / "real_main.py")
    (package / "__main__.py").write_text(STALLING_MAIN)
    config = KrConfig(internet=False, stall_timeout_s=20, trainer=TrainerArgs(
        model_size="tiny", batch_size=8, synthetic_train=32, synthetic_val=8, synthetic_test=8,
        extra_args=("--num_workers", "2", "--device", "cpu", "--threads", "1", "--max_target_len", "24")))
    working = tmp_path / "working"
    working.mkdir()
    script = render_kernel(config, tmp_path / "kernel", session=SessionSpec(chain_id="chain-a", session=1, epochs=3),
                           owner="someone", trainer_dir=package).script_path
    env = dict(os.environ, KR_KAGGLE_INPUT=str(tmp_path / "input"), PYTHONUNBUFFERED="1")
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], cwd=working, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == EXIT_STALLED, result.stdout[-4000:] + result.stderr[-3000:]
    run = json.loads((working / "run.json").read_text())
    assert run["stop_reason"] == STOP_STALLED and run["stall"]["phase"] == "train", run
    assert run["stall"]["where"].startswith("trainer/") and "in step" in run["stall"]["where"]
    assert "in step" in result.stdout  # the stacks are in the log
    assert 20 <= run["stall"]["silent_s"] < 20 + 60  # stopped within the timeout plus a minute of the stall
    assert time.monotonic() - began < run["seconds"] + 30
    with tarfile.open(working / "checkpoints.tar.gz") as archive:
        manifest = json.load(archive.extractfile("checkpoints/MANIFEST.json"))  # type: ignore[arg-type]
    assert manifest["step"] == 4  # epoch 1's checkpoint, from before the stall, intact
