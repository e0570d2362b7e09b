"""Augmentation (--augment): the target text never changes, the images stay in the model's geometry and are
a pure function of (seed, epoch, index), and nothing is augmented in validation, evaluation or prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.augment as augment
from trainer.data import OcrDataset, WidthBucketSampler, prepare_split
from trainer.images import ImageSpec
from trainer.inference import decode_split
from trainer.model import ImageToLatex, model_config_for
from trainer.rendering import render_formula
from trainer.tokenizer import Vocab

FORMULAS = [r"\frac { a } { b } + c", r"x ^ { 2 } = y _ { i }", r"\sqrt { n + 1 }", r"\sum _ { i = 0 } ^ { n } a _ { i }"]
SPEC = ImageSpec(height=64, max_width=1024)


@pytest.fixture(scope="module")
def split():  # type: ignore[no-untyped-def]
    pngs = [render_formula(f, np.random.default_rng(i)) for i, f in enumerate(FORMULAS)]
    vocab = Vocab.build(FORMULAS)
    return prepare_split(FORMULAS, pngs, vocab, SPEC, 40), vocab


def test_augmentation_never_changes_the_target_and_keeps_the_geometry(split) -> None:  # type: ignore[no-untyped-def]
    prepared, _ = split
    base = OcrDataset(prepared)
    dataset = augment.AugmentedDataset(base, SPEC, seed=7)
    changed = 0
    for epoch in range(6):
        for index in range(len(base)):
            image, ids = dataset[(epoch, index)]
            original, original_ids = base[index]
            assert ids == original_ids and ids == prepared.targets[index]
            assert image.dtype == torch.uint8 and image.shape[:2] == (1, SPEC.height)
            assert image.shape[2] % SPEC.width_multiple == 0 and image.shape[2] <= SPEC.max_width
            assert int(image.max()) > 0  # the formula is still there
            changed += int(image.shape != original.shape or not torch.equal(image, original))
    assert changed > 12  # most draws change the picture


def test_augmented_images_are_a_pure_function_of_seed_epoch_and_index(split) -> None:  # type: ignore[no-untyped-def]
    prepared, _ = split
    one = augment.AugmentedDataset(OcrDataset(prepared), SPEC, seed=7)
    two = augment.AugmentedDataset(OcrDataset(prepared), SPEC, seed=7)
    assert torch.equal(one[(3, 1)][0], two[(3, 1)][0])
    assert any(not torch.equal(one[(e, 1)][0], one[(3, 1)][0]) for e in (0, 1, 2, 4))


def test_the_tagged_sampler_carries_the_epoch_being_iterated(split) -> None:  # type: ignore[no-untyped-def]
    prepared, _ = split
    sampler = WidthBucketSampler(prepared.widths, 2, seed=0)
    tagged = augment.EpochTaggedSampler(sampler)
    sampler.set_epoch(5)
    batches = list(tagged)
    assert len(batches) == len(tagged) and all(epoch == 5 for batch in batches for epoch, _ in batch)
    assert [[i for _, i in batch] for batch in batches] == list(sampler)


def test_nothing_is_augmented_in_evaluation_or_prediction(split, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = augment.augment_canvas
    monkeypatch.setattr(augment, "augment_canvas", lambda *a, **k: calls.append(1) or real(*a, **k))
    prepared, vocab = split
    model = ImageToLatex(model_config_for("tiny", vocab_size=len(vocab), max_len=20)).eval()
    decode_split(model, prepared, vocab, 2, torch.device("cpu"))
    decode_split(model, prepared, vocab, 2, torch.device("cpu"), beam=2)
    assert calls == []
    augment.AugmentedDataset(OcrDataset(prepared), SPEC, seed=0)[(0, 0)]
    assert calls == [1]  # the counter does see augmentation when it happens
