"""A DataLoader worker that hangs, dies or cannot send its batch ends the run with one clear error, not a hang;
multiprocessing works with a TMPDIR too deep for a socket path."""

from __future__ import annotations

import multiprocessing.process
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.trainer_support import REPO, load_state, result, tiny_args, trainer_env
from trainer import sockets
from trainer import train as train_module
from trainer.config import parse_args
from trainer.data import OcrDataset
from trainer.loader import LoaderError, batches, build_loader, innermost_frames

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the workers are forked")


def deep_folder(root: Path, length: int) -> Path:
    """A folder whose path is ``length`` characters long (longer when ``root`` already is: CI's TMPDIR is deep)."""
    folder = root / ("d" * max(1, length - len(str(root)) - 1))
    folder.mkdir(parents=True, exist_ok=True)
    assert len(str(folder)) == max(length, len(str(root)) + 2)
    return folder


class Numbers(torch.utils.data.Dataset):
    def __init__(self, block_from: int | None = None) -> None:
        self.block_from = block_from

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker and self.block_from is not None and index >= self.block_from:
            time.sleep(3600)  # a worker stuck in the dataset's own code
        return torch.tensor([index])


def pairs() -> torch.utils.data.BatchSampler:
    return torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(16)), 2, drop_last=False)


def test_a_worker_stuck_in_the_dataset_is_named_with_where_it_is_stuck() -> None:
    loader = build_loader(Numbers(block_from=4), pairs(), workers=2, pin_memory=False, seed=0, timeout_s=2)
    got = []
    began = time.monotonic()
    with pytest.raises(LoaderError) as error:
        for batch in batches(loader):
            got.append(batch.tolist())
    elapsed = time.monotonic() - began
    assert got == [[[0], [1]], [[2], [3]]]  # the batches before the stuck one arrive
    message = str(error.value)
    assert re.search(r"DataLoader worker 0 \(pid \d+\) delivered no batch for 2 s", message), message
    assert "stuck in __getitem__ (test_loader.py:" in message and "\n" not in message
    assert elapsed < 2 + 10  # its timeout, the stack dump, no hang
    del loader


def test_a_worker_that_cannot_send_its_batch_names_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a short folder to switch to, a TMPDIR too deep for a socket makes every batch fail to send: the
    worker's error, which multiprocessing only prints, is in the one-line message."""
    monkeypatch.setattr(sockets, "SHORT_CANDIDATES", ())
    monkeypatch.setattr(tempfile, "tempdir", str(deep_folder(tmp_path, 110)))
    monkeypatch.delitem(multiprocessing.process.current_process()._config, "tempdir", raising=False)
    monkeypatch.setattr(sockets, "_original", None)
    monkeypatch.setattr(sockets, "_short", None)
    loader = build_loader(Numbers(), pairs(), workers=2, pin_memory=False, seed=0, timeout_s=2)
    with pytest.raises(LoaderError, match="failed to send a batch .*AF_UNIX path too long"):
        list(batches(loader))
    del loader


def test_a_dead_worker_is_named() -> None:
    class Dying(Numbers):
        def __getitem__(self, index: int) -> torch.Tensor:
            if torch.utils.data.get_worker_info() is not None and index == 4:
                os._exit(3)
            return super().__getitem__(index)

    loader = build_loader(Dying(), pairs(), workers=2, pin_memory=False, seed=0, timeout_s=30)
    began = time.monotonic()
    with pytest.raises(LoaderError, match=r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly"):
        list(batches(loader))
    assert time.monotonic() - began < 25  # found dead, not timed out
    del loader


def test_the_stack_of_a_worker_names_its_innermost_and_its_own_frames() -> None:
    dump = (
        'Thread 0x00007f (most recent call first):\n  File "/usr/lib/python3.11/threading.py", line 324 in wait\n\n'
        'Current thread 0x00007e (most recent call first):\n'
        '  File "/usr/lib/python3.11/threading.py", line 320 in wait\n'
        '  File "/work/my_data.py", line 17 in __getitem__\n'
        '  File "/v/site-packages/torch/utils/data/_utils/fetch.py", line 52 in fetch\n'
        '  File "/v/site-packages/torch/utils/data/_utils/worker.py", line 349 in _worker_loop\n'
    )
    assert innermost_frames(dump) == ["wait (threading.py:320)", "__getitem__ (my_data.py:17)"]


def test_a_stack_dump_read_before_it_reaches_the_loop_thread_names_nothing_until_the_wait_is_over() -> None:
    """faulthandler writes a worker's socket threads before its loop thread; half a dump is not the answer."""
    partial = ('Thread 0x00007f (most recent call first):\n'
               '  File "/usr/lib/python3.11/socket.py", line 294 in accept\n\n')
    assert innermost_frames(partial) == []
    assert innermost_frames(partial, any_thread=True) == ["accept (socket.py:294)"]


def test_a_worker_hanging_inside_training_ends_the_run_with_one_line_and_the_checkpoint_intact(
        tmp_path: Path, shared_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers; each serves every other batch and hangs on its second: steps 1 and 2 train and save, the
    third batch never comes. The loader's timeout is a third of the watchdog's (9 s here)."""
    monkeypatch.setenv("KR_STALL_TIMEOUT_S", "9")
    real_getitem = OcrDataset.__getitem__
    served = [0]

    def hang_on_second_batch(self: OcrDataset, index: int):  # type: ignore[no-untyped-def]
        if torch.utils.data.get_worker_info() is not None:
            served[0] += 1  # per worker process (each has its own copy)
            if served[0] > 8:
                time.sleep(3600)
        return real_getitem(self, index)

    monkeypatch.setattr(OcrDataset, "__getitem__", hang_on_second_batch)
    out = tmp_path / "out"
    began = time.monotonic()
    code = train_module.run(parse_args(tiny_args(out, "--max_steps", "6", "--num_workers", "2",
                                                 "--save_every_minutes", "0.0001", cache_dir=shared_cache_dir)),
                            time.time())
    assert code == 1
    assert time.monotonic() - began < 60
    errors = [line for line in (out / "training.log").read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "stopped at step 2: DataLoader worker 0 (pid" in errors[0], errors
    assert "delivered no batch for 3 s: it is stuck in" in errors[0]
    assert result(out)["stop_reason"] == "crash" and "DataLoader worker 0" in result(out)["message"]
    assert load_state(out / "checkpoints" / "last.pth.tar")["progress"]["global_step"] == 2


@pytest.mark.slow
def test_training_with_workers_and_a_tmpdir_too_deep_for_sockets(tmp_path: Path, shared_cache_dir: Path) -> None:
    deep = deep_folder(tmp_path, 110)
    out = tmp_path / "out"
    env = trainer_env() | {"TMPDIR": str(deep), "KR_STALL_TIMEOUT_S": "30"}  # a hang would fail in 10 s
    done = subprocess.run([sys.executable, "-m", "trainer", *tiny_args(out, "--max_steps", "6", "--num_workers", "2",
                                                                   cache_dir=shared_cache_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert result(out)["step"] == 6
    notes = [line for line in (out / "training.log").read_text().splitlines() if "too deep for multiprocessing" in line]
    assert len(notes) == 1, notes
    short = re.search(r"using (\S+) for them instead", notes[0])
    assert short is not None and len(short.group(1)) < len(str(deep)) and not Path(short.group(1)).exists()


def test_socket_path_limit() -> None:
    assert sockets.socket_path_fits("/tmp")
    assert not sockets.socket_path_fits("/" + "d" * (sockets.AF_UNIX_PATH_MAX - sockets.LISTENER_SUFFIX))
    assert sockets.socket_path_fits("/" + "d" * (sockets.AF_UNIX_PATH_MAX - sockets.LISTENER_SUFFIX - 1))


def test_the_switch_holds_when_the_temp_folder_is_reset_to_the_deep_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Code that resets tempfile.tempdir (as each test's isolation does) must not bring the deep folder back."""
    monkeypatch.setattr(sockets, "_original", None)
    monkeypatch.setattr(sockets, "_short", None)
    deep = str(deep_folder(tmp_path, 110))
    monkeypatch.setattr(tempfile, "tempdir", deep)
    assert sockets.ensure_short_tempdir() is not None
    short = tempfile.gettempdir()
    assert sockets.socket_path_fits(short)
    tempfile.tempdir = deep
    assert sockets.ensure_short_tempdir() is None  # noted once
    assert tempfile.gettempdir() == short and sockets.original_tempdir() == deep
