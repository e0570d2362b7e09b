"""Does the model learn to read formulas it never saw? Trains the tiny model on the synthetic set on this CPU
for a fixed time, then scores the synthetic *test* split (formulas not in training) with free greedy decoding.

    python bench/learn_synthetic.py [--minutes 10] [--train 4000] [--out DIR]

Prints the evaluation JSON and one summary line. Target: exact_match >= 0.5 after 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kr_contract.metric_lines import parse_metric_line  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--train", type=int, default=8000, help="synthetic training formulas")
    p.add_argument("--val", type=int, default=200, help="synthetic validation formulas (checked each epoch)")
    p.add_argument("--test", type=int, default=300, help="synthetic test formulas (scored at the end)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy CPU)")
    p.add_argument("--schedule_steps", type=int, default=0,
                   help="cosine horizon (0: estimated from the step rate of a 20-second probe)")
    p.add_argument("--out", default=None, help="output folder (default: a temp folder)")
    p.add_argument("--cache_dir", default=None, help="synthetic-set cache (default: $KR_CACHE_DIR)")
    return p.parse_args()


def trainer_args(a: argparse.Namespace, out: Path, budget_s: float, schedule_steps: int) -> list[str]:
    args = ["--data_name", "synthetic", "--model_size", "tiny", "--synthetic_train", str(a.train),
            "--synthetic_val", str(a.val), "--synthetic_test", str(a.test), "--batch_size", str(a.batch_size),
            "--lr", str(a.lr), "--threads", str(a.threads), "--num_workers", "0", "--warmup_steps", "200",
            "--schedule_steps", str(schedule_steps), "--time_budget", str(budget_s), "--out_dir", str(out),
            "--label_smoothing", "0", "--log_every", "20", "--max_target_len", "120", "--val_max_samples", str(a.val)]
    return args + (["--cache_dir", a.cache_dir] if a.cache_dir else [])


def probe_steps_per_second(a: argparse.Namespace, folder: Path) -> float:
    """A short run to measure the step rate (data generation is cached for the real run)."""
    out = folder / "probe"
    subprocess.run([sys.executable, "-m", "trainer", *trainer_args(a, out, 1800, 100000), "--max_steps", "60"],
                   cwd=REPO, check=True, capture_output=True)
    steps = _train_lines(out / "training.log")
    (t0, s0), (t1, s1) = steps[0], steps[-1]
    return (s1 - s0) / max(t1 - t0, 1.0)


def _train_lines(log: Path) -> list[tuple[float, int]]:
    """(time, step) of each train line, read with the metric-line parser kr itself uses."""
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        record = parse_metric_line(line)
        if record and record.kind == "train" and record.timestamp and "step" in record.fields:
            found.append((record.timestamp.timestamp(), int(record.fields["step"])))
    return found


def main() -> int:
    a = parse()
    folder = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="kr-learn-"))
    folder.mkdir(parents=True, exist_ok=True)
    budget = a.minutes * 60
    # A horizon a little past the expected step count: the budget, not the schedule, ends the run.
    schedule = a.schedule_steps or max(500, int(1.3 * probe_steps_per_second(a, folder) * budget))
    out = folder / "run"
    began = time.time()
    train = subprocess.run([sys.executable, "-m", "trainer", *trainer_args(a, out, budget, schedule)], cwd=REPO)
    if train.returncode != 0:
        print(f"training failed with exit code {train.returncode}", file=sys.stderr)
        return 1
    trained_s = time.time() - began
    eval_cmd = [sys.executable, "-m", "trainer.evaluate", "--checkpoint", str(out / "checkpoints" / "last.pth.tar"),
                "--data_name", "synthetic", "--split", "test", "--batch_size", "32"]
    eval_cmd += ["--cache_dir", a.cache_dir] if a.cache_dir else []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    scores = json.loads(subprocess.run(eval_cmd, cwd=REPO, check=True, capture_output=True, text=True, env=env).stdout)
    result = json.loads((out / "trainer_result.json").read_text())
    report = {"test": scores, "train_seconds": round(trained_s, 1), "steps": result["step"],
              "epochs": result["epoch"], "schedule_steps": schedule, "best_val": result["best"], "out": str(out)}
    print(json.dumps(report, indent=2, sort_keys=True))
    print(f"learn_synthetic: {a.minutes:g} min tiny model, {result['step']} steps: test exact_match="
          f"{scores['exact_match']:.3f} bleu4={scores['bleu4']:.3f} edit_score={scores['edit_score']:.3f} "
          f"edit_distance={scores['edit_distance']:.3f} on {scores['samples']} unseen formulas (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
