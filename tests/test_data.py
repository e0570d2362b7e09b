"""Data loading (Hugging Face code path on a local repository, local parquet folders), one-time preparation
with counted changes, collation, and the width-bucketing batch sampler (pure order, DDP shares, resume)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from trainer.data import (
    Batch,
    DataConfig,
    DataError,
    OcrDataset,
    WidthBucketSampler,
    collate,
    load_texts_and_images,
    padding_share,
    prepare_split,
)
from trainer.images import ImageSpec
from trainer.loader import batches, build_loader
from trainer.synthetic import write_parquet
from trainer.tokenizer import Vocab

SPEC = ImageSpec(height=32, max_width=256, width_multiple=16)


def formula_png(width: int = 40, height: int = 12) -> bytes:
    image = np.full((height + 8, width + 8), 255, dtype=np.uint8)
    image[4:-4, 4:-4] = 0
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_split(folder: Path, name: str, texts: list[str]) -> None:
    write_parquet(folder / name, texts, [formula_png(10 + 7 * i) for i in range(len(texts))])


def hf_repository(root: Path) -> Path:
    """A local folder laid out like linxy/LaTeX_OCR on the Hub: README configs + parquet per split."""
    write_split(root / "small", "train-00000-of-00001.parquet", ["a + b", "c ^ { 2 }", "x"])
    write_split(root / "small", "validation-00000-of-00001.parquet", ["a"])
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files:\n  - split: train\n    path: small/train-*\n"
        "  - split: validation\n    path: small/validation-*\n---\n"
    )
    return root


def test_huggingface_code_path_reads_a_hub_layout(tmp_path: Path) -> None:
    cfg = DataConfig(data_name="small", hf_repo=str(hf_repository(tmp_path / "repo")))
    texts, images = load_texts_and_images(cfg, "train")
    assert texts == ["a + b", "c ^ { 2 }", "x"]
    assert images[0]["bytes"] == formula_png(10)  # left undecoded: decoded once, later, by load_image
    with pytest.raises(DataError, match="no 'test' split"):
        load_texts_and_images(cfg, "test")


def test_data_dir_reads_every_file_of_a_split_and_image_layouts(tmp_path: Path) -> None:
    write_split(tmp_path, "train-00000.parquet", ["a", "b"])
    write_split(tmp_path, "train-00001.parquet", ["c"])
    image_path = tmp_path / "img.png"
    image_path.write_bytes(formula_png())
    table = pa.table({"image": [formula_png(), "img.png"], "text": ["v", "w"]})  # plain bytes/paths
    pq.write_table(
        pa.table({"image": pa.array([formula_png()], pa.binary()), "text": ["v"]}), tmp_path / "val.parquet"
    )
    pq.write_table(pa.table({"image": [str(image_path)], "text": ["w"]}), tmp_path / "test.parquet")
    del table
    cfg = DataConfig(data_dir=str(tmp_path))
    assert load_texts_and_images(cfg, "train")[0] == ["a", "b", "c"]
    texts, images = load_texts_and_images(cfg, "validation")  # "val" names the validation split too
    split = prepare_split(texts, images, Vocab.build(texts), SPEC, 10)
    test_texts, test_images = load_texts_and_images(cfg, "test")
    test_split = prepare_split(test_texts, test_images, Vocab.build(texts), SPEC, 10)
    assert np.array_equal(split.images[0], test_split.images[0])  # bytes and path give the same image


@pytest.mark.parametrize(
    ("setup", "split", "message"),
    [
        ("missing_dir", "train", "does not exist"),
        ("no_files", "test", "no test files"),
        ("bad_columns", "train", r"lacks \['image'\]"),
        ("empty", "train", "split is empty"),
        ("not_parquet", "train", "not a readable parquet file"),
    ],
)
def test_bad_local_data_gives_one_line_errors(tmp_path: Path, setup: str, split: str, message: str) -> None:
    folder = tmp_path / "data"
    if setup != "missing_dir":
        folder.mkdir()
    if setup == "bad_columns":
        pq.write_table(pa.table({"picture": [b"x"], "text": ["a"]}), folder / "train.parquet")
    if setup == "empty":
        write_split(folder, "train.parquet", [])
    if setup == "not_parquet":
        (folder / "train.parquet").write_text("this is not parquet")
    with pytest.raises(DataError, match=message) as error:
        load_texts_and_images(DataConfig(data_dir=str(folder)), split)
    assert "\n" not in str(error.value)


def test_unknown_data_name_and_split_are_rejected() -> None:
    with pytest.raises(DataError, match="unknown data_name 'tiny'"):
        load_texts_and_images(DataConfig(data_name="tiny"), "train")
    with pytest.raises(DataError, match="unknown split"):
        load_texts_and_images(DataConfig(data_name="synthetic"), "dev")


def test_prepare_split_counts_every_change_and_drops_only_undecodable_images() -> None:
    vocab = Vocab.build(["a b c"])
    texts = ["a b", "a z", "a b c a b c", "a", "b"]
    images = [
        formula_png(),
        formula_png(width=2000),
        formula_png(),
        b"garbage",
        np.full((9, 9), 255, np.uint8),
    ]
    split = prepare_split(texts, images, vocab, SPEC, max_target_len=4)
    assert split.report == {"samples": 4, "shrunk_to_fit": 1, "undecodable": 1, "blank_images": 1,
                            "unknown_tokens": 1, "truncated_targets": 1}  # fmt: skip
    assert split.texts == ["a b", "a z", "a b c a b c", "b"]
    assert split.targets[2] == vocab.encode("a b c a")
    assert split.errors and split.errors[0].startswith("sample 3:")
    assert list(split.widths) == [img.shape[1] for img in split.images]
    assert all(img.shape[0] == SPEC.height for img in split.images)


def test_parallel_preparation_matches_serial() -> None:
    texts = [f"t{i % 7}" for i in range(300)]
    images = [formula_png(width=5 + i % 90) for i in range(300)]
    vocab = Vocab.build(texts)
    serial = prepare_split(texts, images, vocab, SPEC, 8)
    parallel = prepare_split(texts, images, vocab, SPEC, 8, num_proc=2)
    assert parallel.report == serial.report and parallel.targets == serial.targets
    assert all(np.array_equal(a, b) for a, b in zip(parallel.images, serial.images, strict=True))


def test_collate_pads_images_and_builds_shifted_targets() -> None:
    images = [
        torch.full((1, 32, 16), 255, dtype=torch.uint8),
        torch.full((1, 32, 48), 255, dtype=torch.uint8),
    ]
    batch = collate([(images[0], [5, 6, 7]), (images[1], [8])])
    assert batch.images.shape == (2, 1, 32, 48) and batch.images.dtype == torch.float32
    assert batch.images[0, 0, :, :16].eq(1).all() and batch.images[0, 0, :, 16:].eq(0).all()
    assert batch.tgt_in.tolist() == [[Vocab.BOS, 5, 6, 7], [Vocab.BOS, 8, 0, 0]]
    assert batch.tgt_out.tolist() == [[5, 6, 7, Vocab.EOS], [8, Vocab.EOS, 0, 0]]
    assert batch.widths.tolist() == [16, 48] and len(batch) == 2
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tgt_out, batch.tgt_out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_batch_pins_memory() -> None:
    batch = collate([(torch.zeros(1, 32, 16, dtype=torch.uint8), [4])]).pin_memory()
    assert batch.images.is_pinned() and batch.tgt_in.is_pinned()


def random_widths(n: int = 2000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 40, n) * 16


def test_sampler_order_is_a_pure_function_of_seed_and_epoch() -> None:
    widths = random_widths()
    first, again = WidthBucketSampler(widths, 16, seed=3), WidthBucketSampler(widths, 16, seed=3)
    again.epoch_batches(5)  # history must not matter
    assert first.epoch_batches(2) == again.epoch_batches(2)
    assert first.epoch_batches(2) != first.epoch_batches(3)
    assert first.epoch_batches(2) != WidthBucketSampler(widths, 16, seed=4).epoch_batches(2)
    flat = sorted(i for batch in first.epoch_batches(2) for i in batch)
    assert flat == list(range(widths.size)) and len(first) == len(first.epoch_batches(0))


def test_resume_mid_epoch_yields_the_remaining_batches() -> None:
    sampler = WidthBucketSampler(random_widths(), 16, seed=0)
    sampler.set_epoch(4, start_batch=30)
    assert list(sampler) == sampler.epoch_batches(4)[30:]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_get_equal_disjoint_shares_of_one_order(world_size: int) -> None:
    widths = random_widths(n=1001)
    samplers = [
        WidthBucketSampler(widths, 10, seed=7, rank=r, world_size=world_size) for r in range(world_size)
    ]
    shares = [s.epoch_batches(1) for s in samplers]
    assert len({len(share) for share in shares}) == 1
    seen = [i for share in shares for batch in share for i in batch]
    assert len(seen) == len(set(seen)) and len(seen) >= widths.size - 10 * (world_size - 1)
    for step in range(len(shares[0])):  # ranks at one step get batches of similar width: nobody waits long
        step_widths = [int(widths[share[step]].max()) for share in shares]
        assert max(step_widths) - min(step_widths) <= 16 * 8


def test_unshuffled_sampler_covers_everything_on_every_rank_count() -> None:
    widths = random_widths(n=25)
    single = WidthBucketSampler(widths, 4, seed=0, shuffle=False)
    assert sorted(i for b in single for i in b) == list(range(25))
    ranks = [WidthBucketSampler(widths, 4, seed=0, shuffle=False, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    assert {i for s in ranks for b in s for i in b} == set(range(25))


def test_width_bucketing_keeps_padding_low() -> None:
    widths = random_widths(n=4000)
    bucketed = padding_share(WidthBucketSampler(widths, 32, seed=0), widths, epoch=0)
    unbucketed = padding_share(WidthBucketSampler(widths, 1, seed=0), widths, epoch=0)
    assert unbucketed == 0.0 and bucketed < 0.05
    random_batches = np.random.default_rng(0).permutation(widths.size).reshape(-1, 32)
    random_padding = 1 - widths.sum() / sum(widths[b].max() * 32 for b in random_batches)
    assert random_padding > 0.3


def test_dataloader_with_workers_yields_the_sampler_batches() -> None:
    texts = [f"t{i % 5} t{i % 3}" for i in range(64)]
    images = [formula_png(width=5 + 3 * i) for i in range(64)]
    vocab = Vocab.build(texts)
    split = prepare_split(texts, images, vocab, SPEC, 8)
    sampler = WidthBucketSampler(split.widths, 8, seed=0)
    # The trainer's own loader: with any TMPDIR (its sockets move to a short folder when needed) and a timeout.
    loader = build_loader(OcrDataset(split), sampler, workers=2, pin_memory=False, seed=0, timeout_s=120,
                          collate_fn=collate)
    for batch, indices in zip(batches(loader), sampler.epoch_batches(0), strict=True):
        assert batch.widths.tolist() == split.widths[indices].tolist()
        assert [vocab.decode(row) for row in batch.tgt_out.tolist()] == [split.texts[i] for i in indices]
