"""Shape buckets (trainer/buckets.py): every training batch is collated to a width of the fixed set and a
target length on the step, the padding they add stays small, and PAD positions change no loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.buckets import ShapeBuckets, epoch_shapes, order_keys, target_lengths, width_buckets
from trainer.config import parse_args
from trainer.data import WidthBucketSampler, collate, padding_share
from trainer.model import ImageToLatex, model_config_for
from trainer.packed import PackedTargets
from trainer.tokenizer import Vocab

TRAINER_BUCKETS = ShapeBuckets.for_training(max_width=1024, width_multiple=16, max_target_len=200)


def formula_like_widths(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Image widths like those of printed formulas: log-normal around 250 px (short expressions to whole
    lines), on the CNN's multiple of 16, capped at the 1024 px limit."""
    raw = np.random.default_rng(seed).lognormal(mean=np.log(250), sigma=0.6, size=n)
    return np.clip(np.ceil(raw / 16) * 16, 16, 1024).astype(np.int64)


def items(widths: np.ndarray, lengths: np.ndarray) -> list[tuple[torch.Tensor, list[int]]]:
    return [(torch.full((1, 16, int(w)), 255, dtype=torch.uint8), [4 + i % 5 for i in range(int(n))])
            for w, n in zip(widths, lengths, strict=True)]


def test_the_width_set_is_small_geometric_and_covers_every_width() -> None:
    buckets = width_buckets(1024, 16)
    assert buckets[0] == 16 and buckets[-1] == 1024 and len(buckets) <= 24
    assert all(b % 16 == 0 for b in buckets) and list(buckets) == sorted(set(buckets))
    for smaller, larger in zip(buckets, buckets[1:], strict=False):
        assert larger <= max(smaller + 16, np.ceil(smaller * 1.15 / 16) * 16)  # never more than one ratio step
    assert all(TRAINER_BUCKETS.pad_width(w) >= w for w in range(16, 1025, 16))
    with pytest.raises(ValueError):
        width_buckets(1024, 16, ratio=1.0)


def test_every_collated_training_batch_has_a_bucket_width_and_a_stepped_length() -> None:
    rng = np.random.default_rng(3)
    widths = formula_like_widths(600)
    lengths = rng.integers(1, 201, widths.size)
    sampler = WidthBucketSampler(widths, 32, seed=0)
    all_items = items(widths, lengths)
    allowed_lengths = TRAINER_BUCKETS.lengths()
    assert allowed_lengths is not None and len(allowed_lengths) == 13  # 16, 32, ..., 192, then 201
    for batch_indices in sampler.epoch_batches(0):
        batch = collate([all_items[i] for i in batch_indices], TRAINER_BUCKETS)
        assert batch.images.shape[-1] in TRAINER_BUCKETS.widths
        assert batch.images.shape[-1] >= widths[batch_indices].max()
        assert batch.tgt_in.shape[1] in allowed_lengths and batch.tgt_in.shape[1] > lengths[batch_indices].max()
        assert batch.widths.tolist() == widths[batch_indices].tolist()  # the mask still sees the real widths


def test_bucket_padding_stays_under_15_percent_on_formula_widths() -> None:
    widths = formula_like_widths()
    sampler = WidthBucketSampler(widths, 32, seed=0)
    before = padding_share(sampler, widths, 0)
    after = padding_share(sampler, widths, 0, TRAINER_BUCKETS)
    assert before < after < 0.15
    stats = epoch_shapes(sampler.epoch_batches(0), widths, np.full(widths.size, 30), TRAINER_BUCKETS)
    unbucketed = epoch_shapes(sampler.epoch_batches(0), widths, np.full(widths.size, 30), None)
    assert stats.pixel_padding == pytest.approx(after)
    assert stats.distinct_widths <= len(TRAINER_BUCKETS.widths) < unbucketed.distinct_widths


def test_lengths_are_never_padded_past_the_longest_target() -> None:
    assert [TRAINER_BUCKETS.pad_length(n) for n in (1, 16, 17, 192, 193, 201)] == [16, 16, 32, 192, 201, 201]
    assert ShapeBuckets((16, 32), 16).pad_length(300) == 304  # without a limit: the next step
    assert ShapeBuckets((16, 32), 16).pad_width(48) == 48  # wider than every bucket: its own width


def test_target_lengths_read_packed_and_plain_targets_alike() -> None:
    targets = [[1, 2, 3], [4], [5, 6]]
    assert target_lengths(targets).tolist() == target_lengths(PackedTargets.pack(targets)).tolist() == [3, 1, 2]


def test_target_padding_changes_neither_the_loss_nor_the_logits() -> None:
    torch.manual_seed(0)
    model = ImageToLatex(model_config_for("tiny", 20, 64)).train()  # tiny has no dropout: train mode is exact
    batch_items = items(np.array([48, 64, 32]), np.array([5, 11, 3]))
    plain = collate(batch_items)
    padded = collate(batch_items, ShapeBuckets((64,), 16, 63))
    assert torch.equal(plain.images, padded.images) and padded.tgt_in.shape[1] == 16 > plain.tgt_in.shape[1]

    def loss_and_logits(batch):  # the trainer's loss
        logits = model(batch.images, batch.tgt_in, batch.widths)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=Vocab.PAD,
                               label_smoothing=0.1)
        return loss, logits

    plain_loss, plain_logits = loss_and_logits(plain)
    padded_loss, padded_logits = loss_and_logits(padded)
    length = plain.tgt_in.shape[1]
    assert torch.allclose(padded_logits[:, :length], plain_logits, atol=1e-5)
    assert padded_loss.item() == pytest.approx(plain_loss.item(), abs=1e-6)


def test_no_shape_buckets_restores_the_batch_own_shape() -> None:
    assert parse_args(["--data_dir", "x"]).shape_buckets is True
    assert parse_args(["--data_dir", "x", "--no_shape_buckets"]).shape_buckets is False
    batch_items = items(np.array([48, 128]), np.array([5, 11]))
    batch = collate(batch_items)  # what the trainer collates with --no_shape_buckets (buckets None)
    assert batch.images.shape[-1] == 128 and batch.tgt_in.shape[1] == 12
    assert collate(batch_items, TRAINER_BUCKETS).images.shape[-1] == TRAINER_BUCKETS.pad_width(128) == 144


def test_sorting_pools_by_bucket_then_length_cuts_pad_positions_at_no_pixel_cost() -> None:
    rng = np.random.default_rng(5)
    widths = formula_like_widths(3000)
    lengths = np.clip((widths / 5 * rng.lognormal(0, 0.5, widths.size)).astype(np.int64), 1, 200)
    targets = [[4] * int(n) for n in lengths]
    keys = order_keys(TRAINER_BUCKETS, widths, targets)
    assert order_keys(None, widths, targets) is None  # --no_shape_buckets: the sampler sorts by width, as before
    by_width = epoch_shapes(WidthBucketSampler(widths, 32, seed=0).epoch_batches(0), widths, lengths, TRAINER_BUCKETS)
    sampler = WidthBucketSampler(widths, 32, seed=0, order_keys=keys)
    by_length = epoch_shapes(sampler.epoch_batches(0), widths, lengths, TRAINER_BUCKETS)
    assert by_length.token_padding < 0.8 * by_width.token_padding
    assert by_length.pixel_padding < 0.15 and by_length.distinct_widths <= len(TRAINER_BUCKETS.widths)
    flat = sorted(i for batch in sampler.epoch_batches(2) for i in batch)
    assert flat == list(range(widths.size))  # still every sample once, in a pure order
    assert sampler.epoch_batches(2) == WidthBucketSampler(widths, 32, seed=0, order_keys=keys).epoch_batches(2)
    with pytest.raises(ValueError, match="order keys"):
        WidthBucketSampler(widths, 32, seed=0, order_keys=keys[:-1])


@pytest.mark.parametrize("flag", [[], ["--no_shape_buckets"]])
def test_the_trainer_loader_pads_to_buckets_unless_told_not_to(flag: list[str], tmp_path, shared_cache_dir) -> None:
    import time

    from tests.trainer_support import tiny_args
    from trainer.logs import close_logging, setup_logging
    from trainer.runtime import detect_runtime
    from trainer.train import Trainer

    cfg = parse_args(tiny_args(tmp_path, *flag, cache_dir=shared_cache_dir))
    setup_logging(tmp_path, enabled=False)
    try:
        trainer = Trainer(cfg, detect_runtime("cpu"), time.time())
        trainer.setup()
    finally:
        close_logging()
    split = trainer.train_split
    old_order = WidthBucketSampler(split.widths, cfg.batch_size, cfg.seed).epoch_batches(0)
    trainer.sampler.set_epoch(0)
    for batch, indices in zip(trainer._loader(), trainer.sampler.epoch_batches(0), strict=True):
        widest, longest = int(split.widths[indices].max()), int(target_lengths(split.targets)[indices].max()) + 1
        if flag:  # the old behaviour: each batch its own shape, in the old order
            assert (batch.images.shape[-1], batch.tgt_in.shape[1]) == (widest, longest)
        else:
            assert batch.images.shape[-1] == trainer.buckets.pad_width(widest) in trainer.buckets.widths
            assert batch.tgt_in.shape[1] == trainer.buckets.pad_length(longest)
    assert (trainer.sampler.epoch_batches(0) == old_order) == bool(flag)
