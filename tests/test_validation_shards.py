"""Validation spread over processes: each decodes every world_size-th batch, and the joined parts equal one
process decoding everything (same batches, same numbers, the loss summed in the same order)."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.data import DataConfig, load_texts_and_images, prepare_split
from trainer.images import ImageSpec
from trainer.inference import DecodePart, decode_part, decode_split, join_parts
from trainer.model import ImageToLatex, model_config_for
from trainer.tokenizer import Vocab


def small_split(cache_dir: Path):  # type: ignore[no-untyped-def]
    cfg = DataConfig(data_name="synthetic", use_huggingface=False, cache_dir=str(cache_dir), synthetic_train=24,
                     synthetic_val=20, synthetic_test=4, seed=11)
    texts, images = load_texts_and_images(cfg, "validation")
    vocab = Vocab.build(load_texts_and_images(cfg, "train")[0] + texts)
    return prepare_split(texts, images, vocab, ImageSpec(), 30), vocab


def test_two_shards_joined_equal_one_process(shared_cache_dir: Path) -> None:
    split, vocab = small_split(shared_cache_dir)
    torch.manual_seed(0)
    model = ImageToLatex(model_config_for("tiny", vocab_size=len(vocab), max_len=32))
    whole = decode_split(model, split, vocab, 6, torch.device("cpu"))
    parts = [decode_part(model, split, vocab, 6, torch.device("cpu"), rank=r, world_size=2) for r in range(2)]
    assert parts[0].hypotheses.keys().isdisjoint(parts[1].hypotheses.keys())
    assert sorted(parts[0].losses) == [0, 2] and sorted(parts[1].losses) == [1, 3]  # 20 samples, batches of 6
    joined = join_parts(parts, len(split))
    assert joined.complete and joined.hypotheses == whole.hypotheses and joined.loss == whole.loss


def test_one_interrupted_part_makes_the_whole_interrupted() -> None:
    done = DecodePart({0: "x"}, {0: (1.0, 2)}, complete=True)
    stopped = DecodePart({}, {}, complete=False)
    assert not join_parts([done, stopped], 1).complete


def test_the_loss_is_summed_in_batch_order_whatever_the_part_order() -> None:
    a = DecodePart({0: "a"}, {0: (0.1, 1), 2: (0.2, 1)}, complete=True)
    b = DecodePart({1: "b"}, {1: (0.7, 1)}, complete=True)
    assert join_parts([a, b], 2).loss == join_parts([b, a], 2).loss == ((0.1 + 0.7) + 0.2) / 3
    assert join_parts([b, a], 2).hypotheses == ["a", "b"]
