"""``python -m trainer.predict --checkpoint PATH IMAGE...``: one LaTeX line per image, in order.

``predict_images`` is the same thing as a function (``kr predict`` calls it in-process). Images go through
exactly the preprocessing used in training and validation (trainer.images.preprocess).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from trainer.beam import decode_batch
from trainer.checkpoint import CheckpointError
from trainer.config import OneLineErrorParser, positive_int
from trainer.data import collate
from trainer.images import preprocess
from trainer.inference import LoadedModel, load_model
from trainer.tokenizer import Vocab


class PredictError(Exception):
    """An input image that cannot be read; one line that names it."""


def predict_images(checkpoint_path: str | Path, image_paths: Sequence[str | Path], *, batch_size: int = 16,
                   device: str | torch.device | None = None, beam: int = 1) -> list[str]:
    """LaTeX for each image, in the order given: greedy decoding, or beam search of width ``beam`` > 1."""
    if beam < 1:
        raise PredictError(f"the beam width must be at least 1 (1 is greedy decoding), got {beam}")
    target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="kr-predict-") as scratch:
        loaded = load_model(checkpoint_path, Path(scratch), target)
    return decode_images(loaded, image_paths, batch_size, target, beam=beam)


def decode_images(loaded: LoadedModel, image_paths: Sequence[str | Path], batch_size: int,
                  device: torch.device, beam: int = 1) -> list[str]:
    canvases = [_preprocess_one(path, loaded) for path in image_paths]
    # Similar widths together: little padding, and the padded columns are masked anyway.
    order = sorted(range(len(canvases)), key=lambda i: canvases[i].shape[1])
    texts: dict[int, str] = {}
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([(torch.from_numpy(canvases[i]).unsqueeze(0), []) for i in chunk]).to(device)
            ids = decode_batch(loaded.model, batch.images, Vocab.BOS, Vocab.EOS, beam=beam, widths=batch.widths)
            texts.update({i: loaded.vocab.decode(row) for i, row in zip(chunk, ids, strict=True)})
    return [texts[i] for i in range(len(canvases))]


def _preprocess_one(path: str | Path, loaded: LoadedModel):  # type: ignore[no-untyped-def]
    if not Path(path).is_file():
        raise PredictError(f"image {path} does not exist")
    try:
        canvas, _shrunk = preprocess(Path(path), loaded.spec)
    except ValueError as exc:
        raise PredictError(f"image {path} cannot be read ({exc})") from None
    return canvas


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m trainer.predict",
                           description="Print one LaTeX line per image, read by a trained checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a .pth.tar checkpoint (BEST_ or last), a checkpoints tarball or its folder")
    p.add_argument("--batch_size", type=int, default=16, help="images decoded together")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the model")
    p.add_argument("--beam", type=positive_int, default=1, help="beam width (1: greedy decoding)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = None if args.device == "auto" else args.device
    try:
        lines = predict_images(args.checkpoint, args.images, batch_size=max(1, args.batch_size), device=device,
                               beam=args.beam)
    except (CheckpointError, PredictError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
