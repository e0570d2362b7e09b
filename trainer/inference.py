"""Decoding a prepared split or a few images with a model: shared by validation, evaluate and predict."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.beam import decode_batch
from trainer.checkpoint import CheckpointError, Resumed, load_candidate
from trainer.data import OcrDataset, PreparedSplit, WidthBucketSampler, collate
from trainer.images import ImageSpec
from trainer.model import ImageToLatex, ModelConfig
from trainer.precision import Precision, choose_precision
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


@dataclass
class DecodePart:
    """One process's share of a split's decoding: hypotheses by sample index, and the teacher-forced loss sum
    and token count by batch number (kept apart so that joining sums them in one fixed order)."""

    hypotheses: dict[int, str]
    losses: dict[int, tuple[float, int]]
    complete: bool


def decode_split(model: ImageToLatex, split: PreparedSplit, vocab: Vocab, batch_size: int, device: torch.device,
                 should_continue: Callable[[], bool] = lambda: True, beam: int = 1) -> DecodeResult:
    """Free decoding (greedy, or beam search for ``beam`` > 1) of every sample plus the teacher-forced loss;
    ``should_continue`` is asked before each batch (deadline, signal)."""
    return join_parts([decode_part(model, split, vocab, batch_size, device, should_continue, beam=beam)], len(split))


def decode_part(model: ImageToLatex, split: PreparedSplit, vocab: Vocab, batch_size: int, device: torch.device,
                should_continue: Callable[[], bool] = lambda: True, rank: int = 0, world_size: int = 1,
                precision: Precision | None = None, beam: int = 1) -> DecodePart:
    """Decodes every ``world_size``-th batch starting at ``rank``. The batches are the same whatever the
    world size (so are their results), and width-sorted, so round-robin gives each rank a similar load.
    ``precision``: the training run's; by default what ``--precision auto`` picks for ``device``. ``beam``: 1 is
    greedy, more is beam search (trainer/beam.py)."""
    model.eval()
    dataset = OcrDataset(split)
    part = DecodePart({}, {}, complete=True)
    precision = precision or choose_precision("auto", device)
    with torch.no_grad(), precision.autocast(device.type):
        for number, indices in enumerate(eval_batches(split, batch_size)):
            if number % world_size != rank:
                continue
            if not should_continue():
                return DecodePart({}, {}, complete=False)
            batch = collate([dataset[i] for i in indices]).to(device)
            logits = model(batch.images, batch.tgt_in, batch.widths)
            loss = float(F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(),
                                         ignore_index=Vocab.PAD, reduction="sum"))
            part.losses[number] = (loss, int((batch.tgt_out != Vocab.PAD).sum()))
            decoded = decode_batch(model, batch.images, Vocab.BOS, Vocab.EOS, beam=beam, widths=batch.widths)
            for index, ids in zip(indices, decoded, strict=True):
                part.hypotheses[index] = vocab.decode(ids)
    return part


def join_parts(parts: Sequence[DecodePart], samples: int) -> DecodeResult:
    """The whole split's result from every process's part; incomplete if any part is."""
    if not all(part.complete for part in parts):
        return DecodeResult([], 0.0, complete=False)
    hypotheses: dict[int, str] = {}
    losses: dict[int, tuple[float, int]] = {}
    for part in parts:
        hypotheses.update(part.hypotheses)
        losses.update(part.losses)
    loss_sum, tokens = 0.0, 0
    for number in sorted(losses):  # batch order, as one process sums them
        loss_sum += losses[number][0]
        tokens += losses[number][1]
    return DecodeResult([hypotheses[i] for i in range(samples)], loss_sum / max(tokens, 1), complete=True)


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
    # The layout the trainer validates with (its default): faster, and the same numbers as its validation.
    model.to(device).to(memory_format=torch.channels_last).eval()
    return LoadedModel(model, vocab, spec, state, resumed)
