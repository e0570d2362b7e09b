"""Does the model read real formulas it never saw? Trains on real formulas of linxy/LaTeX_OCR's ``full`` set
(the formulas of /work/shared/data/linxy-full-val.formulas.txt, rendered with the synthetic set's mathtext
renderer) for a fixed budget of CPU seconds, then scores a held-out test split with free greedy and beam
decoding.

    python bench/learn_real.py [--cpu_minutes 15] [--max_tokens 40] [--train_max_tokens 40] [--beam 5]
                               [--model_size tiny] [--lr 2e-3] [--label_smoothing 0] [TRAINER FLAGS...]

The split is fixed and disjoint by formula: the unique formulas of 3..max tokens are shuffled with
``--split_seed``; the first ``--test`` that render (and have at most ``--max_tokens`` tokens) are the test
set, the next ``--val`` the validation set, the rest (at most ``--train_max_tokens``) train, each train
formula rendered ``--renders`` times (font set, size, margins and grey levels drawn per rendering).
The budget is process CPU time (bench/cpu_budget.py), one torch thread: other jobs on the machine slow the
run down but do not shorten its training. Unknown flags go to the trainer unchanged.
Prints the JSON report and one summary line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cpu_budget import BudgetRun, run_with_cpu_budget, steps_per_cpu_second  # noqa: E402

DEFAULT_SOURCE = Path("/work/shared/data/linxy-full-val.formulas.txt")
DATA_VERSION = 1
PROBE_STEPS = 200
HORIZON_MARGIN = 1.1


def parse() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu_minutes", type=float, default=15.0, help="training budget in process CPU minutes")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="one tokenized formula per line")
    p.add_argument("--max_tokens", type=int, default=40, help="longest validation/test formula, in tokens")
    p.add_argument("--train_max_tokens", type=int, default=40, help="longest training formula, in tokens")
    p.add_argument("--test", type=int, default=300, help="held-out test formulas")
    p.add_argument("--val", type=int, default=100, help="validation formulas (checked each epoch)")
    p.add_argument("--renders", type=int, default=1, help="renderings of each training formula")
    p.add_argument("--split_seed", type=int, default=0, help="seed of the formula split and the renderings")
    p.add_argument("--beam", type=int, default=5, help="beam width of the second evaluation (0: greedy only)")
    p.add_argument("--model_size", default="tiny")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup_steps", type=int, default=200)
    p.add_argument("--label_smoothing", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--schedule_steps", type=int, default=0,
                   help="cosine horizon (0: 1.1 x the step rate of a short probe x the budget)")
    p.add_argument("--out", default=None, help="output folder (default: a temp folder)")
    p.add_argument("--cache_dir", type=Path, default=Path(tempfile.gettempdir()) / "kr-learn-real",
                   help="where the rendered split is cached")
    return p.parse_known_args()


# ------------------------------------------------------------------------------------------------ data


def candidate_formulas(source: Path, shortest: int, longest: int, seed: int) -> list[str]:
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
    unique = [f for f in dict.fromkeys(lines) if f and shortest <= len(f.split()) <= longest]
    random.Random(seed).shuffle(unique)
    return unique


def build_split(a: argparse.Namespace) -> Path:
    """The rendered train/validation/test parquet files, cached by every setting that shapes them. The test
    and validation formulas depend only on --max_tokens and --split_seed (not on the training settings)."""
    from trainer.rendering import GENERATOR_VERSION
    from trainer.synthetic import write_parquet

    source_hash = hashlib.sha256(a.source.read_bytes()).hexdigest()[:8]
    key = (f"v{DATA_VERSION}-g{GENERATOR_VERSION}-{source_hash}-max{a.max_tokens}-train{a.train_max_tokens}"
           f"-test{a.test}-val{a.val}-r{a.renders}-seed{a.split_seed}")
    folder = a.cache_dir / key
    if (folder / "meta.json").is_file():
        return folder
    formulas = candidate_formulas(a.source, 3, a.max_tokens, a.split_seed)
    splits: dict[str, tuple[list[str], list[bytes]]] = {name: ([], []) for name in ("test", "validation", "train")}
    for formula, png in zip(formulas, render(formulas, a.split_seed, copy=0), strict=True):
        if png is None:
            continue  # mathtext cannot draw it: in no split
        name = ("test" if len(splits["test"][0]) < a.test else
                "validation" if len(splits["validation"][0]) < a.val else
                "train" if len(formula.split()) <= a.train_max_tokens else None)
        if name:
            splits[name][0].append(formula)
            splits[name][1].append(png)
    if a.train_max_tokens > a.max_tokens:  # longer formulas for training only
        longer = candidate_formulas(a.source, a.max_tokens + 1, a.train_max_tokens, a.split_seed)
        for formula, png in zip(longer, render(longer, a.split_seed, copy=0, first_index=len(formulas)), strict=True):
            if png is not None:
                splits["train"][0].append(formula)
                splits["train"][1].append(png)
    train_texts = list(splits["train"][0])
    for copy in range(1, a.renders):
        for formula, png in zip(train_texts, render(train_texts, a.split_seed, copy), strict=True):
            if png is not None:
                splits["train"][0].append(formula)
                splits["train"][1].append(png)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=_mkdir(a.cache_dir)))
    for name, (texts, pngs) in splits.items():
        write_parquet(scratch / f"{name}.parquet", texts, pngs)
    sizes = {name: len(texts) for name, (texts, _) in splits.items()}
    (scratch / "meta.json").write_text(json.dumps({"sizes": sizes, "formulas_train": len(train_texts)}) + "\n")
    try:
        scratch.rename(folder)
    except OSError:  # another run built the same split meanwhile: use that one
        if not (folder / "meta.json").is_file():
            raise
    return folder


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def render(formulas: list[str], seed: int, copy: int, first_index: int = 0) -> list[bytes | None]:
    """Each formula with its own rng (from seed, copy and its index): the same split on every machine. The first
    rendering (it decides the split) in this process; the extra training copies spread over the CPUs."""
    from trainer.rendering import render_all, render_formula

    if copy == 0:
        return [render_formula(f, np.random.default_rng([seed, DATA_VERSION, 0, first_index + i]))
                for i, f in enumerate(formulas)]
    return render_all(formulas, seed * 1000 + copy)


# --------------------------------------------------------------------------------------------- training


def trainer_args(a: argparse.Namespace, data: Path, out: Path, schedule_steps: int, extra: list[str]) -> list[str]:
    longest = max(a.max_tokens, a.train_max_tokens)
    return ["--data_name", "full", "--data_dir", str(data), "--no_huggingface", "--model_size", a.model_size,
            "--batch_size", str(a.batch_size), "--lr", str(a.lr), "--threads", str(a.threads), "--num_workers", "0",
            "--warmup_steps", str(a.warmup_steps), "--schedule_steps", str(schedule_steps), "--out_dir", str(out),
            "--label_smoothing", str(a.label_smoothing), "--log_every", "20", "--max_target_len", str(longest),
            "--save_every_minutes", "1000", *extra]  # fmt: skip


def train(a: argparse.Namespace, data: Path, out: Path, schedule: int, extra: list[str], budget_s: float,
          max_steps: int | None = None) -> BudgetRun:
    cmd = [sys.executable, "-m", "trainer", *trainer_args(a, data, out, schedule, extra)]
    cmd += ["--max_steps", str(max_steps)] if max_steps else []
    out.mkdir(parents=True, exist_ok=True)
    run = run_with_cpu_budget(cmd, budget_s, log=out / "training.log", cwd=REPO, output=out / "trainer.out")
    if run.returncode != 0:  # at the budget's SIGTERM the trainer saves and exits 0: anything else failed
        tail = (out / "trainer.out").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"the trainer failed (exit {run.returncode}, {out / 'trainer.out'}):\n" + "\n".join(tail))
    return run


def evaluate(checkpoint: Path, data: Path, beam: int, threads: int) -> dict[str, object]:
    cmd = [sys.executable, "-m", "trainer.evaluate", "--checkpoint", str(checkpoint), "--data_dir", str(data),
           "--no_huggingface", "--split", "test", "--batch_size", "32", "--device", "cpu",
           "--threads", str(threads), "--beam", str(beam)]
    began = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"evaluation failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    scores = json.loads(done.stdout)
    scores.pop("data_report", None)
    scores["wall_s"] = round(time.time() - began, 1)
    return scores


def brief(scores: dict[str, object]) -> str:
    return (f"exact_match={scores['exact_match']:.3f} bleu4={scores['bleu4']:.3f} "
            f"edit_score={scores['edit_score']:.3f} edit_distance={scores['edit_distance']:.3f}")


def main() -> int:
    a, extra = parse()
    if not a.source.is_file():
        sys.exit(f"error: {a.source} not found: pass --source with the dataset's formulas (one per line)")
    data = build_split(a)
    sizes = json.loads((data / "meta.json").read_text())
    folder = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="kr-learn-real-"))
    if folder.is_dir() and any(folder.iterdir()):
        # An old probe's log would be read as this probe's step rate, an old run's checkpoints as this run's.
        sys.exit(f"error: {folder} is not empty: pass a new --out (or remove that folder)")
    folder.mkdir(parents=True, exist_ok=True)
    budget = a.cpu_minutes * 60
    schedule = a.schedule_steps
    if not schedule:
        # A probe's first steps meet each batch shape for the first time and run slower than the rest: its
        # rate underestimated the run's by 8-14 %, so runs ended at their horizon with CPU time left. A
        # longer probe and a horizon 10 % past the estimate let the budget end the run, the cosine near its end.
        probe = train(a, data, folder / "probe", 100000, extra, budget_s=600, max_steps=PROBE_STEPS)
        schedule = max(500, int(HORIZON_MARGIN * steps_per_cpu_second(probe) * budget))
    out = folder / "run"
    run = train(a, data, out, schedule, extra, budget)
    result = json.loads((out / "trainer_result.json").read_text())
    last = out / "checkpoints" / "last.pth.tar"
    greedy = evaluate(last, data, 1, a.threads)
    beam = evaluate(last, data, a.beam, a.threads) if a.beam > 1 else None
    report = {"test_greedy": greedy, "test_beam": beam, "beam": a.beam, "cpu_s": round(run.cpu_s, 1),
              "wall_s": round(run.wall_s, 1), "steps": result["step"], "epochs": result["epoch"],
              "schedule_steps": schedule, "best_val": result["best"], "data": sizes, "trainer_flags": extra,
              "curve": {"steps": run.steps[:: max(1, len(run.steps) // 40)], "val": run.validations},
              "out": str(out)}
    print(json.dumps(report, indent=2, sort_keys=True))
    beam_text = f" | beam {a.beam}: {brief(beam)}" if beam else ""
    recipe = " ".join([f"--renders {a.renders} --train_max_tokens {a.train_max_tokens}", f"--lr {a.lr:g}",
                       f"--warmup_steps {a.warmup_steps}", f"--batch_size {a.batch_size}",
                       f"--label_smoothing {a.label_smoothing:g}", *extra])
    print(f"learn_real: {a.cpu_minutes:g} CPU min {a.model_size} {recipe}: {result['step']} steps, "
          f"{sizes['sizes']['test']} unseen real formulas <= {a.max_tokens} tokens: greedy {brief(greedy)}{beam_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
