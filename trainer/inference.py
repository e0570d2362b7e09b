"""Decoding a prepared split or a few images with a model: shared by validation, evaluate and predict."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.checkpoint import CheckpointError, Resumed, load_candidate
from trainer.data import OcrDataset, PreparedSplit, WidthBucketSampler, collate
from trainer.images import ImageSpec
from trainer.model import ImageToLatex, ModelConfig
from trainer.tokenizer import Vocab


@dataclass
class DecodeResult:
    hypotheses: list[str]  # aligned with the split's samples
    loss: float  # teacher-forced token cross-entropy (no label smoothing)
    complete: bool  # False when should_continue stopped it early


def eval_batches(split: PreparedSplit, batch_size: int) -> Iterator[list[int]]:
    """Width-sorted batches over every sample (little padding); the order needs no RNG."""
    sampler = WidthBucketSampler(split.widths, batch_size, seed=0, shuffle=False)
    yield from sampler.epoch_batches(0)


def decode_split(model: ImageToLatex, split: PreparedSplit, vocab: Vocab, batch_size: int, device: torch.device,
                 should_continue: Callable[[], bool] = lambda: True) -> DecodeResult:
    """Free greedy decoding of every sample plus the teacher-forced loss; ``should_continue`` is asked
    before each batch (deadline, signal)."""
    model.eval()
    dataset = OcrDataset(split)
    hyps: dict[int, str] = {}
    loss_sum, tokens = 0.0, 0
    autocast = torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        for indices in eval_batches(split, batch_size):
            if not should_continue():
                return DecodeResult([], 0.0, complete=False)
            batch = collate([dataset[i] for i in indices]).to(device)
            logits = model(batch.images, batch.tgt_in, batch.widths)
            loss_sum += float(F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(),
                                              ignore_index=Vocab.PAD, reduction="sum"))
            tokens += int((batch.tgt_out != Vocab.PAD).sum())
            decoded = model.greedy_decode(batch.images, Vocab.BOS, Vocab.EOS, widths=batch.widths)
            for index, ids in zip(indices, decoded, strict=True):
                hyps[index] = vocab.decode(ids)
    return DecodeResult([hyps[i] for i in range(len(split))], loss_sum / max(tokens, 1), complete=True)


@dataclass
class LoadedModel:
    model: ImageToLatex
    vocab: Vocab
    spec: ImageSpec
    state: dict[str, Any]
    resumed: Resumed


def load_model(checkpoint: str | Path, scratch: Path, device: torch.device) -> LoadedModel:
    """A model ready for inference from a checkpoint file (a weights-only BEST_ is enough), a checkpoints
    tarball or a checkpoints folder."""
    resumed = load_candidate(Path(checkpoint), scratch)
    state = resumed.state
    try:
        model = ImageToLatex(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
        spec = ImageSpec(**state["image_spec"])
        vocab = Vocab.from_list(state["vocab"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {resumed.path} does not describe a usable model ({exc})") from None
    return LoadedModel(model.to(device).eval(), vocab, spec, state, resumed)
