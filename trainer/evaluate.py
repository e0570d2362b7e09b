"""``python -m trainer.evaluate --checkpoint PATH (--data_dir DIR | --data_name NAME) --split test``.

Prints JSON: bleu4 (corpus BLEU-4), exact_match, edit_distance (token Levenshtein / reference length, lower is
better), edit_score (1 - distance / longer length, higher is better), samples, loss; all from free greedy
decoding (greedy, or beam search with ``--beam N``) with the checkpoint's vocabulary and image preprocessing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from kr_contract.names import DATA_NAMES
from trainer.checkpoint import CheckpointError
from trainer.config import OneLineErrorParser, positive_int
from trainer.data import SPLITS, DataConfig, DataError, load_texts_and_images, prepare_split
from trainer.inference import LoadedModel, decode_split, load_model
from trainer.metrics import score_texts


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m trainer.evaluate", description=__doc__.split("\n\n")[1],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .pth.tar checkpoint (BEST_ or last), a checkpoints tarball or its folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_dir", help="local parquet files DIR/{train,validation,test}*.parquet")
    source.add_argument("--data_name", choices=DATA_NAMES, help="a linxy/LaTeX_OCR configuration or synthetic")
    hf = p.add_mutually_exclusive_group()
    hf.add_argument("--use_huggingface", dest="use_huggingface", action="store_true", default=None,
                    help="load --data_name from Hugging Face (default unless synthetic)")
    hf.add_argument("--no_huggingface", dest="use_huggingface", action="store_false", help="never use Hugging Face")
    p.add_argument("--hf_repo", default="linxy/LaTeX_OCR", help="Hugging Face dataset repository")
    p.add_argument("--cache_dir", default=None, help="synthetic-set cache (default: $KR_CACHE_DIR)")
    p.add_argument("--split", choices=SPLITS, default="test", help="which split to score")
    p.add_argument("--max_samples", type=int, default=0, help="score only the first N samples (0: all)")
    p.add_argument("--batch_size", type=int, default=32, help="samples decoded together")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run the model")
    p.add_argument("--beam", type=positive_int, default=1, help="beam width (1: greedy decoding)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    return p


def data_config(args: argparse.Namespace, saved: dict[str, Any]) -> DataConfig:
    """The flags, with the checkpoint's synthetic sizes and seed (they identify the synthetic set)."""
    name = args.data_name or saved.get("data_name", "full")
    use_hf = args.use_huggingface if args.use_huggingface is not None else (not args.data_dir and name != "synthetic")
    keep = {k: saved[k] for k in ("synthetic_train", "synthetic_val", "synthetic_test", "seed") if k in saved}
    return DataConfig(data_name=name, use_huggingface=use_hf, hf_repo=args.hf_repo, data_dir=args.data_dir,
                      cache_dir=args.cache_dir, **keep)


def evaluate(loaded: LoadedModel, cfg: DataConfig, split: str, max_samples: int, batch_size: int,
             device: torch.device, beam: int = 1) -> dict[str, Any]:
    texts, images = load_texts_and_images(cfg, split)
    if max_samples > 0:
        texts, images = texts[:max_samples], images[:max_samples]
    max_len = int(loaded.state["model_config"]["max_len"]) - 2
    prepared = prepare_split(texts, images, loaded.vocab, loaded.spec, max_len)
    if len(prepared) == 0:
        raise DataError(f"no readable image in the {split} split: check the data source")
    decoded = decode_split(loaded.model, prepared, loaded.vocab, batch_size, device, beam=beam)
    progress = loaded.state["progress"]
    return {**score_texts(decoded.hypotheses, prepared.texts), "loss": decoded.loss, "samples": len(prepared),
            "split": split, "beam": beam, "checkpoint": str(loaded.resumed.origin), "epoch": progress["epoch"],
            "step": progress["global_step"], "data_report": prepared.report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    try:
        with tempfile.TemporaryDirectory(prefix="kr-evaluate-") as scratch:
            loaded = load_model(args.checkpoint, Path(scratch), device)
        cfg = data_config(args, loaded.state.get("data_config", {}))
        scores = evaluate(loaded, cfg, args.split, args.max_samples, max(1, args.batch_size), device, args.beam)
    except (CheckpointError, DataError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(json.dumps(scores, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
