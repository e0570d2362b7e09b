"""kr's own seconds per chain link: the time ``kr chain`` spends itself (rendering, verifying outputs, writing
state, hashing), not waiting on the backend or the kernel.

Runs a real chain on the local backend (tiny model, 32 synthetic formulas, one epoch per session) in a
temporary KR_HOME and reads what the chain measured per session (``SessionRecord.kr_seconds``: each step's
wall time minus the time spent inside backend calls and asleep). Prints JSON, then a one-line summary.

    .venv/bin/python bench/chain_overhead.py [--sessions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIG = """\
kernel_slug = "kr-bench-chain"
dataset_slug = "kr-bench-chain-ckpt"
backend = "local"
accelerator = "None"
internet = false
epochs_per_session = 1
session_budget_s = 900

[trainer]
data_name = "synthetic"
use_huggingface = false
model_size = "tiny"
batch_size = 8
seed = 3
synthetic_train = 32
synthetic_val = 8
synthetic_test = 8
extra_args = ["--num_workers", "0", "--max_target_len", "24"]
"""


def run(sessions: int, root: Path) -> dict[str, Any]:
    os.environ["KR_HOME"] = str(root / "kr-home")
    os.environ.setdefault("KR_CACHE_DIR", str(root / "cache"))
    from kaggle_runner import chain, chain_state
    from kaggle_runner.backends import get_backend
    from kaggle_runner.cli.chain import chain_timing
    from kaggle_runner.config import load_config

    (root / "kr.toml").write_text(CONFIG)
    config = load_config(root / "kr.toml")
    backend = get_backend("local", config)
    owner = backend.username()
    render = chain.config_renderer(config, owner)
    render_s: list[float] = []

    def timed_render(request: chain.SessionRequest, folder: Path) -> None:
        started = time.perf_counter()
        render(request, folder)
        render_s.append(time.perf_counter() - started)

    spec = chain_state.ChainSpec(
        chain_id=chain_state.new_chain_id(),
        backend="local",
        kernel_ref=f"{owner}/{config.kernel_slug}",
        dataset_ref=f"{owner}/{config.dataset_slug}",
        sessions=sessions,
        session_budget_s=float(config.session_budget_s),
        epochs_per_session=1,
    )
    started = time.perf_counter()
    record = chain.ChainRunner(
        chain_state.create_chain(spec), backend, timed_render, timing=chain_timing("local")
    ).run()
    wall = time.perf_counter() - started
    if record.state is not chain_state.ChainState.SUCCEEDED:
        raise SystemExit(f"chain ended in {record.state.value}: {record.message}")
    own = [round(s.kr_seconds, 4) for s in record.sessions]
    return {
        "backend": "local",
        "sessions": sessions,
        "kr_seconds_per_link": own,
        "kr_seconds_per_link_median": round(statistics.median(own), 4),
        "render_seconds_per_link": [round(s, 4) for s in render_s],
        "tarball_bytes": (chain_state.chain_dir(spec.chain_id) / f"session-{sessions}" / "checkpoints.tar.gz")
        .stat()
        .st_size,
        "chain_wall_seconds": round(wall, 2),
        "kr_share_of_wall": round(sum(own) / wall, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kr-bench-chain-") as tmp:
        result = run(args.sessions, Path(tmp))
    print(json.dumps(result, indent=2))
    print(
        f"chain overhead: kr's own {result['kr_seconds_per_link_median']:.3f} s per link (median of "
        f"{args.sessions}; rendering {statistics.median(result['render_seconds_per_link']):.3f} s of it), "
        f"{100 * result['kr_share_of_wall']:.2f} % of a {result['chain_wall_seconds']:.0f} s local chain"
    )


if __name__ == "__main__":
    main()
