"""``python -m kaggle_runner.reading_worker CHECKPOINT --samples N``: the model reads N test images.

Run in a subprocess by ``kaggle_runner.reading`` (kr itself never imports torch): it loads the checkpoint with
the trainer's inference code, decodes the first N images of the test split the checkpoint was trained for
(the same data source, synthetic sizes and seed), and prints one JSON object:
``{"epoch", "step", "samples": [{"reference", "prediction"}]}``. A problem is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

TEST_SPLIT = "test"
DECODE_BATCH = 16


def read_test_images(checkpoint: Path, samples: int) -> dict[str, Any]:
    import torch

    from trainer.data import DataConfig, load_texts_and_images, prepare_split
    from trainer.inference import decode_split, load_model

    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="kr-reading-") as scratch:
        loaded = load_model(checkpoint, Path(scratch), device)
    saved = loaded.state.get("data_config", {})
    # The data source and the synthetic set's identity come from the checkpoint; paths of the kernel's machine
    # (its cache, a data_dir) do not apply here.
    known = {f.name for f in fields(DataConfig)} - {"cache_dir", "data_dir"}
    cfg = DataConfig(**{key: value for key, value in saved.items() if key in known})
    texts, images = load_texts_and_images(cfg, TEST_SPLIT)
    max_len = int(loaded.state["model_config"]["max_len"]) - 2
    prepared = prepare_split(texts[:samples], images[:samples], loaded.vocab, loaded.spec, max_len)
    decoded = decode_split(loaded.model, prepared, loaded.vocab, DECODE_BATCH, device)
    progress = loaded.state.get("progress", {})
    pairs = [{"reference": ref, "prediction": hyp} for ref, hyp in zip(prepared.texts, decoded.hypotheses, strict=True)]
    return {"epoch": progress.get("epoch"), "step": progress.get("global_step"), "data": cfg.data_name,
            "samples": pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaggle_runner.reading_worker")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--samples", type=int, default=6)
    args = parser.parse_args(argv)
    try:
        result = read_test_images(args.checkpoint, max(1, args.samples))
    except Exception as exc:  # noqa: BLE001 - any failure is one line for the caller, who goes on without it
        sys.stderr.write(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n")
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
