"""Data pipeline figures: synthetic generation, one-time preprocessing, padding with and without width
bucketing, and samples/s through the DataLoader. Prints one JSON object and a one-line summary.

    python bench/data_pipeline.py [--train 2000] [--batch_size 32] [--workers 0 2] [--cache_dir DIR]

Without --cache_dir the synthetic set is generated afresh in a temporary folder, so generation is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.data import (  # noqa: E402
    DataConfig,
    OcrDataset,
    WidthBucketSampler,
    collate,
    load_texts_and_images,
    padding_share,
    prepare_split,
)
from trainer.images import ImageSpec  # noqa: E402
from trainer.synthetic import build_synthetic  # noqa: E402
from trainer.tokenizer import Vocab  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=2000, help="synthetic training samples")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument(
        "--num_proc", type=int, default=os.cpu_count() or 1, help="processes for generation/preprocessing"
    )
    parser.add_argument("--height", type=int, default=ImageSpec.height)
    parser.add_argument(
        "--cache_dir", type=Path, default=None, help="reuse a synthetic cache (skips timing generation)"
    )
    return parser.parse_args()


def time_generation(cache_dir: Path, sizes: dict[str, int], num_proc: int) -> float:
    started = time.perf_counter()
    build_synthetic(cache_dir, sizes, seed=0, num_proc=num_proc)
    return (time.perf_counter() - started) / sum(sizes.values())


def random_batch_padding(widths: np.ndarray, batch_size: int) -> float:
    """Padding share of shuffled batches that ignore width: what bucketing saves."""
    order = np.random.default_rng(0).permutation(widths.size)
    padded = total = 0
    for start in range(0, order.size, batch_size):
        batch = widths[order[start : start + batch_size]]
        total += int(batch.max()) * batch.size
        padded += int(batch.max()) * batch.size - int(batch.sum())
    return padded / total


def loader_throughput(dataset: OcrDataset, sampler: WidthBucketSampler, workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
    )  # fmt: skip
    started = time.perf_counter()
    samples = sum(len(batch) for batch in loader)
    return samples / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()
    sizes = {"train": args.train, "validation": 0, "test": 0}
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = args.cache_dir or Path(scratch)
        generation = time_generation(cache_dir, sizes, args.num_proc)
        cfg = DataConfig(data_name="synthetic", cache_dir=str(cache_dir), synthetic_train=args.train,
                         synthetic_val=0, synthetic_test=0)  # fmt: skip
        texts, images = load_texts_and_images(cfg, "train")
    vocab = Vocab.build(texts)
    spec = ImageSpec(height=args.height)
    started = time.perf_counter()
    split = prepare_split(texts, images, vocab, spec, max_target_len=64, num_proc=args.num_proc)
    preprocess = (time.perf_counter() - started) / len(texts)
    sampler = WidthBucketSampler(split.widths, args.batch_size, seed=0)
    figures = {
        "samples": len(split),
        "vocabulary": len(vocab),
        "num_proc": args.num_proc,
        "synthetic_generation_s_per_sample": None if args.cache_dir else round(generation, 5),
        "preprocess_s_per_sample": round(preprocess, 6),
        "median_width": int(np.median(split.widths)),
        "padding_share_bucketed": round(padding_share(sampler, split.widths, epoch=0), 4),
        "padding_share_unbucketed": round(random_batch_padding(split.widths, args.batch_size), 4),
        "dataloader_samples_per_s": {
            str(w): round(loader_throughput(OcrDataset(split), sampler, w), 1) for w in args.workers
        },
        "prepare_report": split.report,
    }
    print(json.dumps(figures, indent=2))
    best_loader = max(figures["dataloader_samples_per_s"].values())
    print(
        f"summary: generation {figures['synthetic_generation_s_per_sample']} s/sample, preprocess "
        f"{preprocess * 1e3:.2f} ms/sample, padding {figures['padding_share_bucketed']:.1%} bucketed vs "
        f"{figures['padding_share_unbucketed']:.1%} unbucketed, loader up to {best_loader} samples/s"
    )


if __name__ == "__main__":
    main()
