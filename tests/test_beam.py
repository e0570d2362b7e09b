"""Beam search: width 1 is greedy decoding token for token; a beam wide enough to keep every hypothesis finds
the exhaustive search's best reading; prediction and evaluation take the width."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from trainer.beam import beam_decode, decode_batch
from trainer.model import ImageToLatex, model_config_for

BOS, EOS = 1, 2


def tiny_model(vocab_size: int, max_len: int, seed: int) -> ImageToLatex:
    """A random tiny model with a sharper, untied output head: a random tied head mostly repeats its input
    token for ever; this one ends its readings at different steps (see the guard test below)."""
    torch.manual_seed(seed)
    model = ImageToLatex(model_config_for("tiny", vocab_size=vocab_size, max_len=max_len)).eval()
    with torch.no_grad():
        model.head = nn.Linear(model.cfg.d_model, vocab_size, bias=False)
        model.head.weight.mul_(8.0)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_of_one_is_greedy_token_for_token(seed: int) -> None:
    model = tiny_model(vocab_size=30, max_len=16, seed=seed)
    images = torch.rand(6, 1, 64, 128)
    widths = torch.tensor([128, 128, 96, 64, 48, 16])
    greedy = model.greedy_decode(images, BOS, EOS, widths=widths)
    assert beam_decode(model, images, BOS, EOS, beam=1, widths=widths) == greedy
    assert decode_batch(model, images, BOS, EOS, beam=1, widths=widths) == greedy


def test_the_tests_meet_readings_of_different_lengths() -> None:
    """Guards the test above: with these models some readings end early and some run to the limit."""
    lengths = set()
    for seed in (0, 1, 2):
        model = tiny_model(vocab_size=30, max_len=16, seed=seed)
        lengths |= {len(row) for row in model.greedy_decode(torch.rand(6, 1, 64, 128), BOS, EOS)}
    assert len(lengths) >= 3, lengths


def _log_probs(model: ImageToLatex, image: torch.Tensor, sequences: list[list[int]]) -> list[float]:
    """Teacher-forced log-probability of each sequence (all of one length), in one forward pass."""
    tokens = torch.tensor(sequences)
    tgt_in = torch.cat([torch.full((len(sequences), 1), BOS), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(image.expand(len(sequences), -1, -1, -1), tgt_in).float(), dim=-1)
    return log_probs.gather(2, tokens[..., None])[..., 0].sum(dim=1).tolist()


def test_a_beam_that_keeps_everything_finds_the_exhaustive_best() -> None:
    vocab, steps = 6, 3
    model = tiny_model(vocab_size=vocab, max_len=steps + 1, seed=4)
    images = torch.rand(2, 1, 64, 64)
    found = beam_decode(model, images, BOS, EOS, beam=vocab**steps, length_alpha=0.0)
    for row, image in zip(found, images, strict=True):
        scored: list[tuple[float, list[int]]] = []
        for n in range(1, steps + 1):  # every reading: ended by EOS, or cut at the length limit
            candidates = [list(seq) for seq in itertools.product(range(vocab), repeat=n)
                          if EOS not in seq[:-1] and (seq[-1] == EOS or n == steps)]
            scored += zip(_log_probs(model, image[None], candidates), candidates, strict=True)
        best = max(scored)[1]
        assert row == [t for t in best if t != EOS]


def test_wider_beams_return_one_reading_per_image_within_the_limit() -> None:
    model = tiny_model(vocab_size=30, max_len=10, seed=0)
    rows = beam_decode(model, torch.rand(3, 1, 64, 96), BOS, EOS, beam=4, widths=torch.tensor([96, 80, 32]))
    assert len(rows) == 3 and all(len(row) <= 9 and EOS not in row for row in rows)
    with pytest.raises(ValueError, match="beam must be >= 1"):
        beam_decode(model, torch.rand(1, 1, 64, 32), BOS, EOS, beam=0)
