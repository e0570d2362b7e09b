"""Distinct batch shapes and padding per epoch, before and after shape buckets (trainer/buckets.py).

    python bench/batch_shapes.py [--source FILE] [--synthetic 4000] [--batch_size 32] [--epochs 3] [--json PATH]

Two width/length distributions: the real formulas of linxy/LaTeX_OCR's ``full`` validation split (8,475
normalized formulas, ``--source``; token counts are the real ones, images are drawn by mathtext the way the
synthetic set draws them, since the dataset's own images are not here: a proxy for the real widths), and the
synthetic set (``trainer/synthetic.py``). Each goes through the trainer's own preprocessing (ImageSpec
defaults: height 64, widths to 1024 in steps of 16) and its training sampler (WidthBucketSampler, batches
grouped by width), then is collated as the trainer collates: each batch padded to its widest image and
longest target (before), or to the width bucket and the rounded length, with the sampler's pools sorted by
(width bucket, target length) as the trainer now sorts them (after; ``buckets_width_sorted``: buckets with
pools sorted by width alone). Printed per epoch: distinct
(width, length) shapes, distinct widths and lengths, share of pixels that are padding, share of target
positions that are PAD; also over all ``--epochs`` (what a session meets), and the same for other bucket
ratios and length steps (how the defaults were chosen). Rendered widths are cached (``--cache``).

``--flops_model base`` also counts the FLOPs of a training step (forward + backward, bench/flops.py) per
sample of that model over the session's batches, before and after (padding is computed too, so buckets
cost FLOPs), and from them the T4 estimate: samples/s = 65 TFLOP/s x utilisation / FLOPs per sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.buckets import (  # noqa: E402
    LENGTH_STEP,
    WIDTH_RATIO,
    ShapeBuckets,
    epoch_shapes,
    order_keys,
    width_buckets,
)
from trainer.data import WidthBucketSampler  # noqa: E402
from trainer.images import ImageSpec, preprocess  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "linxy-full-val.formulas.txt"
MAX_TARGET_LEN = 200  # the trainer's default
RATIOS = (1.1, 1.15, 1.2, 1.3)
LENGTH_STEPS = (8, 16, 32)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="one normalized formula per line")
    p.add_argument("--synthetic", type=int, default=4000, help="synthetic formulas (0: skip)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num_proc", type=int, default=2, help="rendering processes")
    p.add_argument("--cache", type=Path, default=Path("/tmp/kr-batch-shapes"), help="rendered widths cache folder")
    p.add_argument("--flops_model", default=None, choices=("tiny", "small", "base"),
                   help="count FLOPs per training sample of this model over the real formulas' batches")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def rendered_sizes(name: str, formulas: list[str], a: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(image widths after preprocessing, token counts capped at max_target_len) of the formulas mathtext can
    draw, cached by name and count."""
    from trainer.rendering import render_all

    path = a.cache / f"{name}-{len(formulas)}.npz"
    if path.is_file():
        cached = np.load(path)
        return cached["widths"], cached["lengths"]
    spec = ImageSpec()
    widths, lengths = [], []
    for formula, png in zip(formulas, render_all(formulas, seed=0, num_proc=a.num_proc), strict=True):
        if png is None:
            continue
        widths.append(preprocess(png, spec)[0].shape[1])
        lengths.append(min(len(formula.split()), MAX_TARGET_LEN))
    a.cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, widths=np.array(widths, np.int64), lengths=np.array(lengths, np.int64))
    return np.array(widths, np.int64), np.array(lengths, np.int64)


AFTER = ShapeBuckets.for_training(1024, 16, MAX_TARGET_LEN)
# (name, buckets, sort pools by (bucket, length)): the trainer before, buckets alone, the trainer now.
VARIANTS = (("before", None, False), ("buckets_width_sorted", AFTER, False), ("after", AFTER, True))


def session_batches(widths: np.ndarray, lengths: np.ndarray, buckets: ShapeBuckets | None, by_length: bool,
                    a: argparse.Namespace) -> list[list[list[int]]]:
    """Each epoch's batches as the trainer's sampler cuts them."""
    keys = order_keys(buckets, widths, [[0] * int(n) for n in lengths]) if by_length else None
    sampler = WidthBucketSampler(widths, a.batch_size, seed=0, order_keys=keys)
    return [sampler.epoch_batches(e) for e in range(a.epochs)]


def measure(widths: np.ndarray, lengths: np.ndarray, a: argparse.Namespace) -> dict[str, Any]:
    def figures(buckets: ShapeBuckets | None, by_length: bool) -> dict[str, Any]:
        epochs = session_batches(widths, lengths, buckets, by_length, a)
        per_epoch = [epoch_shapes(b, widths, lengths, buckets).as_dict() for b in epochs]
        session = [batch for batches in epochs for batch in batches]
        return {"epoch0": per_epoch[0], "distinct_shapes_per_epoch": [e["distinct_shapes"] for e in per_epoch],
                "session": epoch_shapes(session, widths, lengths, buckets).as_dict()}

    sweep = {}
    for ratio in RATIOS:
        for step in LENGTH_STEPS:
            buckets = ShapeBuckets(width_buckets(1024, 16, ratio), step, MAX_TARGET_LEN + 1)
            session = [b for bs in session_batches(widths, lengths, buckets, True, a) for b in bs]
            s = epoch_shapes(session, widths, lengths, buckets)
            sweep[f"ratio{ratio}_step{step}"] = {"width_buckets": len(buckets.widths), **s.as_dict()}
    return {"samples": int(widths.size), "width_range": [int(widths.min()), int(widths.max())],
            "median_width": float(np.median(widths)), "length_range": [int(lengths.min()), int(lengths.max())],
            **{name: figures(buckets, by_length) for name, buckets, by_length in VARIANTS}, "sweep": sweep}


def padded_shapes(batches: list[list[int]], widths: np.ndarray, lengths: np.ndarray,
                  buckets: ShapeBuckets | None) -> Counter[tuple[int, int]]:
    """Samples per collated (width, target positions) shape."""
    counts: Counter[tuple[int, int]] = Counter()
    for batch in batches:
        width, length = int(widths[batch].max()), int(lengths[batch].max()) + 1
        if buckets is not None:
            width, length = buckets.pad_width(width), buckets.pad_length(length)
        counts[(width, length)] += len(batch)
    return counts


def flops_per_sample(flops: Any, counts: Counter[tuple[int, int]]) -> float:
    """Mean training FLOPs per sample over ``counts`` (samples per padded shape)."""
    return sum(flops.per_sample(w, n) * samples for (w, n), samples in counts.items()) / sum(counts.values())


def measure_flops(widths: np.ndarray, lengths: np.ndarray, vocab_size: int, a: argparse.Namespace) -> dict[str, Any]:
    from bench.flops import FlopModel, t4_estimate
    from trainer.model import model_config_for

    flop_model = FlopModel.fit(model_config_for(a.flops_model, vocab_size, MAX_TARGET_LEN + 2), ImageSpec().height)
    out: dict[str, Any] = {"model_size": a.flops_model, "vocab_size": vocab_size, "fit_error": flop_model.fit_error,
                           "coefficients_w_l_wl_ll_1": flop_model.coefficients}
    for name, buckets, by_length in VARIANTS:
        session = [b for bs in session_batches(widths, lengths, buckets, by_length, a) for b in bs]
        flops = flops_per_sample(flop_model, padded_shapes(session, widths, lengths, buckets))
        out[name] = {"flops_per_sample": flops, **t4_estimate(flops)}
    return out


def summary(name: str, r: dict[str, Any]) -> str:
    b, f = r["before"], r["after"]
    return (f"{name} ({r['samples']} samples): distinct shapes per epoch {b['epoch0']['distinct_shapes']} -> "
            f"{f['epoch0']['distinct_shapes']} (session of {len(b['distinct_shapes_per_epoch'])} epochs "
            f"{b['session']['distinct_shapes']} -> {f['session']['distinct_shapes']}), pixel padding "
            f"{100 * b['epoch0']['pixel_padding']:.1f}% -> {100 * f['epoch0']['pixel_padding']:.1f}%, token padding "
            f"{100 * b['epoch0']['token_padding']:.1f}% -> {100 * f['epoch0']['token_padding']:.1f}%")


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    results: dict[str, Any] = {"batch_size": a.batch_size, "epochs": a.epochs, "width_ratio": WIDTH_RATIO,
                               "length_step": LENGTH_STEP,
                               "width_buckets": list(ShapeBuckets.for_training(1024, 16, MAX_TARGET_LEN).widths)}
    began = time.time()
    if a.source.is_file():
        formulas = [line.strip() for line in a.source.read_text(encoding="utf-8").splitlines() if line.strip()]
        sizes = rendered_sizes("real", formulas, a)
        results["real"] = measure(*sizes, a)
        if a.flops_model:
            from trainer.tokenizer import Vocab

            results["real"]["flops"] = measure_flops(*sizes, len(Vocab.build(formulas)), a)
    else:
        print(f"note: {a.source} not found: real formulas skipped (pass --source)", file=sys.stderr)
    if a.synthetic:
        from trainer.synthetic import generate_formulas

        results["synthetic"] = measure(*rendered_sizes("synthetic", generate_formulas(a.synthetic, seed=0), a), a)
    results["seconds"] = time.time() - began
    text = json.dumps(results, indent=2)
    if a.json:
        Path(a.json).write_text(text)
    print(text)
    for name in ("real", "synthetic"):
        if name in results:
            print(summary(name, results[name]))
    if "flops" in results.get("real", {}):
        f = results["real"]["flops"]
        print(f"{f['model_size']} on the real formulas: " + ", ".join(
            f"{when} {f[when]['flops_per_sample'] / 1e9:.1f} GFLOP/sample (T4 fp16 estimate "
            + " / ".join(f"{v:.0f}" for k, v in f[when].items() if k.endswith("pct"))
            + f" samples/s at 5 / 10 / 25 / 40 % of peak; 100 samples/s needs "
            f"{100 * f[when]['t4_utilisation_for_100_samples_per_s']:.1f} %)" for when in ("before", "after")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
