"""``kr chain`` through the CLI against the emulated Kaggle: a chain owns its configuration (reruns from another
folder or after editing kr.toml render from its snapshot), what a rerun may change, a permanent error on push,
and one state home for every command (``KR_HOME='~/kr'``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kaggle_runner import chain_state, runs, sandbox
from kaggle_runner.backends.local import LocalBackend
from kaggle_runner.config import config_from_mapping
from kaggle_runner.home import kr_home
from tests.cli_support import kr
from tests.emulator_plugin import TestEmulator
from tests.script_support import script_settings

SLUG = "kr-snapshot"
KERNEL = f"testuser/{SLUG}"
CONFIG = """\
kernel_slug = "kr-snapshot"
backend = "kaggle"
accelerator = "None"
internet = false
epochs_per_session = 1
session_budget_s = 900

[trainer]
data_name = "synthetic"
use_huggingface = false
model_size = "tiny"
seed = {seed}
"""


@pytest.fixture(autouse=True)
def fast_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KR_CHAIN_TIME_SCALE", "0.001")


def project(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kr.toml").write_text(CONFIG.format(seed=seed))
    return folder


def rendered_seed(chain_id: str, attempt: int) -> str:
    script = (chain_state.chain_dir(chain_id) / "session-1" / f"kernel-{attempt}" / "script.py").read_text()
    args = script_settings(script)["trainer_args"]
    return args[args.index("--seed") + 1]


def test_a_rerun_keeps_the_chains_snapshot_from_any_folder_and_after_kr_toml_changed(
    kaggle_emulator: TestEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = project(tmp_path / "project", seed=3)
    monkeypatch.chdir(home)
    kaggle_emulator.faults.kernel_errors(KERNEL, "Kernel failed: injected")
    first = kr("chain", "--sessions", "2", "--max-retries", "0")
    assert first.exit_code == 1 and "failed_kernel" in first.stderr, first
    (record,) = chain_state.list_chains()
    chain_id = record.spec.chain_id
    assert record.spec.config is not None and record.spec.config["trainer"]["seed"] == 3
    assert rendered_seed(chain_id, 1) == "3"

    # From another folder (no kr.toml there), after the project's kr.toml changed: the snapshot renders.
    (home / "kr.toml").write_text(CONFIG.format(seed=7))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    kaggle_emulator.faults.kernel_errors(KERNEL, "Kernel failed: injected")
    again = kr("chain", "--chain", chain_id)
    assert again.exit_code == 1, again
    assert rendered_seed(chain_id, 2) == "3"
    reread = chain_state.load_chain(chain_id)
    assert reread.spec.max_retries == 0, "an omitted --max-retries reset the stored value"
    assert [a.outcome for a in reread.sessions[0].attempts] == ["kernel_error", "kernel_error"]

    # In the project folder with the edited kr.toml: the same chain, its own settings, and a clear warning.
    monkeypatch.chdir(home)
    kaggle_emulator.faults.kernel_errors(KERNEL, "Kernel failed: injected")
    edited = kr("chain")
    assert edited.exit_code == 1, edited
    assert f"kr.toml differs from the settings chain {chain_id} started with" in edited.stderr
    assert "trainer.seed" in edited.stderr and "--update-config" in edited.stderr and "--new" in edited.stderr
    assert rendered_seed(chain_id, 3) == "3"
    assert len(chain_state.list_chains()) == 1

    # --update-config adopts it for the rest of the chain; --max-retries given on a rerun is stored.
    kaggle_emulator.faults.kernel_errors(KERNEL, "Kernel failed: injected")
    updated = kr("chain", "--update-config", "--max-retries", "1", "--wait-for-quota")
    assert "changed: trainer.seed" in updated.stderr, updated
    assert rendered_seed(chain_id, 4) == "7"
    stored = chain_state.load_chain(chain_id).spec
    assert (stored.max_retries, stored.wait_for_quota, stored.config["trainer"]["seed"]) == (1, True, 7)


def test_update_config_refuses_to_change_what_names_the_chain(
    kaggle_emulator: TestEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = project(tmp_path / "project", seed=3)
    monkeypatch.chdir(home)
    kaggle_emulator.faults.kernel_errors(KERNEL, "Kernel failed: injected")
    assert kr("chain", "--sessions", "1", "--max-retries", "0").exit_code == 1
    (record,) = chain_state.list_chains()
    (home / "kr.toml").write_text(CONFIG.format(seed=3).replace('kernel_slug = "kr-snapshot"', 'kernel_slug = "kr-other"'))
    result = kr("chain", "--chain", record.spec.chain_id, "--update-config")
    assert result.exit_code == 2 and "cannot change" in result.stderr and "kernel_slug" in result.stderr, result


def test_a_new_chain_needs_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project(tmp_path / "p", seed=1))
    result = kr("chain", "--backend", "local")
    assert result.exit_code == 2 and "--sessions is needed" in result.stderr, result


def test_a_401_on_push_stops_at_once(kaggle_emulator: TestEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project(tmp_path / "project", seed=3))
    kaggle_emulator.faults.add("SaveKernel", status=401, times=-1)
    result = kr("chain", "--sessions", "1")
    assert result.exit_code == 1, result
    assert "401" in result.stderr and "kr chain --chain" in result.stderr
    assert kaggle_emulator.call_count("SaveKernel") == 1, "a 401 was retried"
    (record,) = chain_state.list_chains()
    assert record.state is chain_state.ChainState.PUSHING and "401" in (record.halted or "")


# ------------------------------------------------------------------------------------------ one state home


def test_kr_home_with_a_tilde_is_one_home_for_every_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KR_HOME", "~/kr")
    monkeypatch.chdir(tmp_path)
    expanded = Path(os.environ["HOME"]) / "kr"
    assert kr_home() == expanded and runs.runs_dir() == expanded / "runs"
    assert LocalBackend().root == expanded / "local"

    # A local run whose kernel has ended, as kr launch leaves it, and a finished chain with a session log.
    backend = LocalBackend()
    root = backend.kernel_dir("local/kr-home-test", 1)
    sandbox.prepare(root, "print('hello')\n", {})
    sandbox.log_path(root).write_text("hello from the kernel\n")
    sandbox.status_path(root).write_text(json.dumps({"state": "complete", "exit_code": 0}))
    record = runs.RunRecord(run_id="20270101-000000-abcd", backend="local", ref="local/kr-home-test", version=1,
                            state="complete", epochs=1, created="2027-01-01T00:00:00+00:00",
                            updated="2027-01-01T00:00:00+00:00")
    (tmp_path / "pushed").mkdir()
    runs.create_run(record, tmp_path / "pushed")
    snapshot = config_from_mapping({"kernel_slug": "kr-home-test"}).to_mapping()
    spec = chain_state.ChainSpec(chain_id="chain-home-test", backend="local", kernel_ref="local/kr-home-test",
                                 dataset_ref="local/kr-home-test-ckpt", sessions=1, session_budget_s=900.0,
                                 config=snapshot)
    chain = chain_state.create_chain(spec)
    chain.state, chain.session = chain_state.ChainState.SUCCEEDED, 1
    chain.sessions.append(chain_state.SessionRecord(index=1, epoch=1, step=10, dataset_version=1))
    chain_state.save_chain(chain)
    session = chain_state.chain_dir("chain-home-test") / "session-1"
    session.mkdir(parents=True)
    (session / "training.log").write_text(
        "2027-01-01 00:00:00 INFO train epoch=1 step=10 loss=2.0000 lr=1.000e-04 samples_per_s=5.0\n"
    )

    listed = kr("status", "--json")
    assert listed.exit_code == 0, listed
    status = json.loads(listed.stdout)
    assert [r["run_id"] for r in status["runs"]] == [record.run_id]
    assert [c["chain"] for c in status["chains"]] == ["chain-home-test"]
    logs = kr("logs", record.run_id)
    assert logs.exit_code == 0 and "hello from the kernel" in logs.stdout, logs
    plotted = kr("plot", "chain-home-test", "--json", "--out", str(tmp_path / "curves.png"))
    assert plotted.exit_code == 0 and json.loads(plotted.stdout)["last_step"] == 10, plotted
    chained = kr("chain", "--chain", "chain-home-test")
    assert chained.exit_code == 0 and chained.stdout.strip() == "chain-home-test", chained
    assert not (tmp_path / "~").exists(), "a state folder named '~' appeared in the current directory"
