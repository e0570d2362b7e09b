"""What the kernel's watchdog sees of the trainer: heartbeat phases in order (the first before torch is
imported), a download that beats only while it grows, stack dumps on SIGUSR1 in the rank's file, and the
trainer's own timeouts sized below the watchdog's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kr_contract.heartbeat import pid_file_name, read_heartbeat, stacks_file_name
from tests.test_data import hf_repository
from tests.trainer_support import REPO, result, tiny_args, trainer_env
from trainer import watch
from trainer.data import DataConfig, load_texts_and_images

# Runs `python -m trainer` and keeps every heartbeat.json it writes (the file only holds the latest), with
# whether torch had been imported by then.
HISTORY_PROBE = """
import atexit, json, runpy, sys
from kr_contract import heartbeat

history = []
write = heartbeat.Heartbeat.beat
def keep(self, phase, **kwargs):
    write(self, phase, **kwargs)
    record = heartbeat.read_heartbeat(self.folder) if self.folder else None
    if record and (not history or history[-1]["time"] != record["time"]):
        history.append(record | {"torch_imported": "torch" in sys.modules})
heartbeat.Heartbeat.beat = keep
history_file = sys.argv[1]
atexit.register(lambda: open(history_file, "w").write(json.dumps(history)))
sys.argv = ["trainer", *sys.argv[2:]]
runpy.run_module("trainer", run_name="__main__")
"""


def test_a_tiny_run_beats_every_phase_in_order_the_first_before_torch(tmp_path: Path, shared_cache_dir: Path) -> None:
    watchdog, history_file = tmp_path / "watchdog", tmp_path / "history.json"
    env = trainer_env() | {"KR_WATCHDOG_DIR": str(watchdog)}
    args = tiny_args(tmp_path / "out", "--max_steps", "6", cache_dir=shared_cache_dir)
    done = subprocess.run([sys.executable, "-c", HISTORY_PROBE, str(history_file), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads(history_file.read_text())
    phases = [record["phase"] for record in history]
    first_seen = list(dict.fromkeys(phases))
    assert first_seen == ["start", "prepare", "train", "validate", "save", "stop"], phases
    assert history[0]["torch_imported"] is False
    trains = [r for r in history if r["phase"] == "train"]
    assert trains[0]["step"] == 1 and trains[0]["epoch"] == 1
    assert history[-1]["detail"] == {"reason": "max_steps"} and history[-1]["step"] == 6
    assert read_heartbeat(watchdog) == {k: v for k, v in history[-1].items() if k != "torch_imported"}


def test_a_stack_dump_on_sigusr1_lands_in_the_ranks_file(tmp_path: Path, shared_cache_dir: Path) -> None:
    watchdog, out = tmp_path / "watchdog", tmp_path / "out"
    env = trainer_env() | {"KR_WATCHDOG_DIR": str(watchdog)}
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *tiny_args(out, "--max_steps", "100000",
                                                                         cache_dir=shared_cache_dir)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (read_heartbeat(watchdog) or {}).get("phase") not in ("train", "validate", "save"):
            assert proc.poll() is None and time.monotonic() < deadline, "the trainer never started training"
            time.sleep(0.1)
        pid = int((watchdog / pid_file_name(0)).read_text())
        assert pid == proc.pid
        proc.send_signal(signal.SIGUSR1)
        stacks = watchdog / stacks_file_name(0)
        while "trainer" + "/" not in stacks.read_text():
            assert time.monotonic() < deadline, "no stack dump"
            time.sleep(0.1)
        assert proc.poll() is None  # the dump does not stop the trainer
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert result(out)["stop_reason"] == "signal"
    dump = stacks.read_text()
    assert "(most recent call first)" in dump and 'File "' in dump


class Recorder:
    def __init__(self) -> None:
        self.beats: list[tuple[str, dict[str, Any]]] = []

    def beat(self, phase: str, **kwargs: Any) -> None:
        self.beats.append((phase, kwargs))


def test_a_download_beats_only_while_its_cache_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(watch, "_heartbeat", recorder)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "old").write_bytes(b"x" * 10)
    with watch.GrowthWatcher([cache, tmp_path / "missing"], interval_s=0.05):
        time.sleep(0.4)  # nothing grows: no beat but the first
        assert [kw["bytes"] for _, kw in recorder.beats] == [10]
        (cache / "part.incomplete").write_bytes(b"y" * 90)
        time.sleep(0.4)
    assert [kw["bytes"] for _, kw in recorder.beats] == [10, 100]
    assert {phase for phase, _ in recorder.beats} == {"download"}


def test_the_hugging_face_load_reports_a_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(watch, "_heartbeat", recorder)
    cfg = DataConfig(data_name="small", hf_repo=str(hf_repository(tmp_path / "repo")))
    texts, _ = load_texts_and_images(cfg, "train")
    assert texts == ["a + b", "c ^ { 2 }", "x"]
    assert recorder.beats and recorder.beats[0][0] == "download"
    assert recorder.beats[0][1]["split"] == "train" and recorder.beats[0][1]["config"] == "small"


def test_the_trainers_timeouts_are_sized_below_the_watchdogs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KR_STALL_TIMEOUT_S", raising=False)
    assert watch.stall_timeout_s() == 900 and watch.collective_timeout_s() == 600 and watch.loader_timeout_s() == 120
    monkeypatch.setenv("KR_STALL_TIMEOUT_S", "240")
    assert watch.collective_timeout_s() == 160 and watch.loader_timeout_s() == 80
    monkeypatch.setenv("KR_STALL_TIMEOUT_S", "nonsense")
    assert watch.stall_timeout_s() == 900
