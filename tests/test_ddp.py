"""Data-parallel training on CPU: 2 processes through torchrun with the gloo backend, the tiny model.

The ranks must hold identical parameters after training, a 2-process run stopped and resumed must end with
the weights of an uninterrupted 2-process run, and a checkpoint must resume under another process count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.trainer_support import REPO, load_state, result, tiny_args, trainer_env

pytestmark = pytest.mark.slow

# Trains like `python -m trainer`, then writes a digest of this rank's parameters (only rank 0 saves files,
# so this is how the test sees the other rank's weights).
RANK_DIGEST_SCRIPT = """
import hashlib, sys, time
from pathlib import Path
from trainer import distributed
from trainer.config import parse_args
from trainer.logs import close_logging, setup_logging
from trainer.train import Trainer

cfg = parse_args(sys.argv[1:])
runtime = distributed.init_runtime(cfg.device)
setup_logging(Path(cfg.out_dir), enabled=runtime.is_main_process)
trainer = Trainer(cfg, runtime, time.time())
trainer.setup()
trainer.run()
digest = hashlib.sha256()
for tensor in trainer.model.parameters():  # BatchNorm running stats are rank 0's: DDP broadcasts them
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
Path(cfg.out_dir, f"rank{runtime.rank}.sha256").write_text(digest.hexdigest())
close_logging()
distributed.shutdown()
"""


# Rank 1 crashes in its third training step; rank 0 would wait for it in the next collective.
RANK_CRASH_SCRIPT = """
import os, sys, time
from trainer import train
from trainer.config import parse_args

original = train.Trainer._train_step
def crash_on_rank_1(self, batch):
    if self.runtime.rank == 1 and self.progress.global_step == 2:
        raise RuntimeError("injected crash")
    return original(self, batch)
train.Trainer._train_step = crash_on_rank_1
sys.exit(train.run(parse_args(sys.argv[1:]), time.time()))
"""


def torchrun(target: list[str], args: list[str], processes: int = 2, *, succeed: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = trainer_env() | {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *target, *args, "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if succeed:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_state(out_dir / "checkpoints" / "last.pth.tar")["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"weights differ: {different[:5]}"


def rank_digests(out_dir: Path) -> list[str]:
    return [(out_dir / f"rank{r}.sha256").read_text() for r in range(2)]


@pytest.fixture()
def digest_script(tmp_path: Path) -> list[str]:
    script = tmp_path / "train_and_digest.py"
    script.write_text(RANK_DIGEST_SCRIPT)
    return [str(script)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun's CPU workers need a POSIX system")
def test_two_processes_stay_in_sync_and_resume_exactly(
    tmp_path: Path, shared_cache_dir: Path, digest_script: list[str]
) -> None:
    # 32 samples, batch 8 per rank: 2 steps per epoch; 6 steps = 3 epochs with validation between them.
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torchrun(digest_script, tiny_args(whole, "--max_steps", "6", cache_dir=shared_cache_dir))
    first, second = rank_digests(whole)
    assert first == second, "the two ranks ended with different parameters"
    assert result(whole)["step"] == 6

    # Stopped mid-epoch (step 3 of 6), resumed through the real command line and then the digest script.
    torchrun(["-m", "trainer"], tiny_args(parts, "--max_steps", "3", cache_dir=shared_cache_dir))
    assert result(parts)["batch_in_epoch"] == 1
    assert load_state(parts / "checkpoints" / "last.pth.tar")["world_size"] == 2
    torchrun(digest_script, tiny_args(parts, "--max_steps", "3", "--checkpoint", "latest",
                                      cache_dir=shared_cache_dir))
    assert rank_digests(parts) == [first, first]
    assert result(parts)["step"] == 6
    assert_same_weights(weights(whole), weights(parts))


def test_validation_spread_over_two_processes_scores_like_one(tmp_path: Path, shared_cache_dir: Path) -> None:
    """24 validation samples, batches of 8: rank 0 decodes batches 0 and 2, rank 1 batch 1. The metrics the
    2-process run logs must be those one process gets from the same checkpoint (rank 0's BatchNorm
    statistics included)."""
    out = tmp_path / "out"
    torchrun(["-m", "trainer"], tiny_args(out, "--max_steps", "9", "--synthetic_val", "24",
                                          cache_dir=shared_cache_dir))
    logged = result(out)["last_val"]  # epoch 4, step 8, full precision
    assert logged["samples"] == 24 and logged["step"] == 8
    env = trainer_env() | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", "--checkpoint", str(out / "checkpoints" / "checkpoint_local_synthetic_epoch4.pth.tar"),
         "--data_name", "synthetic", "--cache_dir", str(shared_cache_dir), "--split", "validation",
         "--batch_size", "8", "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(done.stdout)
    for key in ("bleu4", "exact_match", "edit_distance", "edit_score", "loss"):
        assert logged[key] == scores[key], key


def test_a_crash_on_one_rank_ends_the_run_instead_of_hanging_it(tmp_path: Path, shared_cache_dir: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(RANK_CRASH_SCRIPT)
    out = tmp_path / "out"
    done = torchrun([str(script)], tiny_args(out, "--max_steps", "6", cache_dir=shared_cache_dir), succeed=False,
                    timeout=90)
    assert done.returncode != 0
    assert "injected crash" in (out / "training.log").read_text() + done.stderr


def test_checkpoints_move_between_one_and_two_processes(tmp_path: Path, shared_cache_dir: Path) -> None:
    two = tmp_path / "two"
    torchrun(["-m", "trainer"], tiny_args(two, "--max_steps", "3", cache_dir=shared_cache_dir))

    # Written by 2 processes, resumed by 1: same model and optimizer, the position converted (1 of 2 per-rank
    # batches -> 2 of 4 single-process batches).
    one = tmp_path / "one"
    env = trainer_env() | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "trainer", *tiny_args(one, "--max_steps", "2", "--checkpoint",
                                                      str(two / "checkpoints" / "last.pth.tar"),
                                                      cache_dir=shared_cache_dir), "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert result(one)["step"] == 5
    assert load_state(one / "checkpoints" / "last.pth.tar")["world_size"] == 1

    # Written by 1 process, resumed by 2.
    torchrun(["-m", "trainer"], tiny_args(one, "--max_steps", "1", "--checkpoint", "latest",
                                          cache_dir=shared_cache_dir))
    assert result(one)["step"] == 6
    state = load_state(one / "checkpoints" / "last.pth.tar")
    assert state["world_size"] == 2 and len(state["rng_by_rank"]) == 2


# Trains like `python -m trainer`; after set-up each rank records how often it loaded and prepared a split,
# whether its pixels are mapped from rank 0's files, the state of its torch RNG, and the shared folder.
RANK_SETUP_SCRIPT = """
import hashlib, json, sys, time
from pathlib import Path
import numpy as np, torch
from trainer import splits, train
from trainer.config import parse_args

calls = {"train": 0, "validation": 0}
for split in calls:
    def counted(*args, _split=split, _load=getattr(splits, "load_" + split), **kwargs):
        calls[_split] += 1
        return _load(*args, **kwargs)
    setattr(splits, "load_" + split, counted)
original_setup = train.Trainer.setup
def recording_setup(self):
    original_setup(self)
    record = {"prepared": calls, "mapped": isinstance(self.train_split.images.flat, np.memmap),
              "val_mapped": isinstance(self.val_split.images.flat, np.memmap),
              "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
              "loader_seed": self._loader().generator.initial_seed(),
              "shared_folder": str(self.exchange.folder) if self.exchange else None}
    Path(self.cfg.out_dir, f"setup-rank{self.runtime.rank}.json").write_text(json.dumps(record))
train.Trainer.setup = recording_setup
sys.exit(train.run(parse_args(sys.argv[1:]), time.time()))
"""


def test_rank_0_prepares_once_for_both_and_each_rank_draws_its_own_numbers(tmp_path: Path, shared_cache_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "setup.py"
    script.write_text(RANK_SETUP_SCRIPT)
    watchdog = tmp_path / "watchdog"
    monkeypatch.setenv("KR_WATCHDOG_DIR", str(watchdog))
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun([str(script)], tiny_args(two, "--max_steps", "2", cache_dir=shared_cache_dir))
    ranks = [json.loads((two / f"setup-rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["prepared"] == {"train": 1, "validation": 1}
    assert ranks[1]["prepared"] == {"train": 0, "validation": 0}  # it mapped rank 0's files instead
    assert all(r["mapped"] and r["val_mapped"] for r in ranks)
    assert ranks[0]["shared_folder"] == ranks[1]["shared_folder"] and not Path(ranks[0]["shared_folder"]).exists()
    assert ranks[0]["rng"] != ranks[1]["rng"] and ranks[0]["loader_seed"] != ranks[1]["loader_seed"]
    assert {p.name for p in watchdog.iterdir()} >= {"pid-rank0", "pid-rank1", "stacks-rank0.txt", "stacks-rank1.txt"}

    # One process: rank 0's stream is a one-process run's.
    env = trainer_env() | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), *tiny_args(one, "--max_steps", "2", cache_dir=shared_cache_dir),
                           "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    single = json.loads((one / "setup-rank0.json").read_text())
    assert single["rng"] == ranks[0]["rng"] and single["loader_seed"] == ranks[0]["loader_seed"]
    assert single["prepared"] == ranks[0]["prepared"] and not single["mapped"]


# Rank 1 stops answering in its third training step (a stuck kernel, a dead link) until torchrun stops it
# (SIGTERM, once rank 0 failed: a rank that ignored it would cost torchrun's 30 s grace more); rank 0 waits in
# the step's gradient all-reduce.
RANK_HANG_SCRIPT = """
import sys, time
from trainer import train
from trainer.config import parse_args

original = train.Trainer._train_step
def hang_on_rank_1(self, batch):
    if self.runtime.rank == 1 and self.progress.global_step == 2:
        while self.stop_signal is None:
            time.sleep(0.1)
        sys.exit(1)
    return original(self, batch)
train.Trainer._train_step = hang_on_rank_1
sys.exit(train.run(parse_args(sys.argv[1:]), time.time()))
"""


def test_a_rank_that_stops_answering_ends_the_run_at_the_collective_timeout(tmp_path: Path, shared_cache_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The process group's timeout is two thirds of the watchdog's stall timeout (15 s here: 10 s)."""
    monkeypatch.setenv("KR_STALL_TIMEOUT_S", "15")
    script = tmp_path / "hang.py"
    script.write_text(RANK_HANG_SCRIPT)
    out = tmp_path / "out"
    began = time.monotonic()
    done = torchrun([str(script)], tiny_args(out, "--max_steps", "6", cache_dir=shared_cache_dir), succeed=False,
                    timeout=150)
    assert done.returncode != 0
    log = (out / "training.log").read_text()
    assert "crashed at step 2" in log and "Traceback" in log
    assert time.monotonic() - began < 90  # 10 s of timeout, not a hang
