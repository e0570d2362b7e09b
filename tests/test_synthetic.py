"""The offline synthetic set: learnable formulas, faithful mathtext renders, disjoint splits in the dataset's
schema, cached by (generator version, sizes, seed), usable through the normal data path."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainer import synthetic
from trainer.data import DataConfig, load_texts_and_images
from trainer.rendering import render_formula, to_mathtext
from trainer.synthetic import build_synthetic, generate_formulas

SIZES = {"train": 40, "validation": 8, "test": 8}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic(tmp_path_factory.mktemp("synthetic-cache"), SIZES, seed=5)


def test_formulas_are_distinct_short_and_drawn_from_a_small_vocabulary() -> None:
    formulas = generate_formulas(1500, seed=0)
    assert len(set(formulas)) == 1500
    lengths = [len(f.split()) for f in formulas]
    assert min(lengths) >= synthetic.MIN_TOKENS and max(lengths) <= synthetic.MAX_TOKENS
    assert 8 <= float(np.mean(lengths)) <= 18
    vocabulary = Counter(t for f in formulas for t in f.split())
    assert 100 <= len(vocabulary) <= 260
    real = set(synthetic.real_formulas())
    assert 0.04 < sum(f in real for f in formulas) / len(formulas) < 0.2  # a share of real formulas


def test_generation_is_deterministic_extendable_and_honours_exclude() -> None:
    first = generate_formulas(200, seed=1)
    assert generate_formulas(50, seed=1) == first[:50]
    assert generate_formulas(200, seed=2) != first
    avoided = generate_formulas(100, seed=1, exclude=set(first[:100]))
    assert not set(avoided) & set(first[:100])


def test_mathtext_input_keeps_only_the_spaces_tex_needs() -> None:
    assert to_mathtext(r"R ^ { \alpha } - \sin x") == r"R^{\alpha}-\sin x"
    assert to_mathtext(r"\frac { 1 } { 2 } \alpha 2") == r"\frac{1}{2}\alpha2"


def ink_rows(png: bytes) -> np.ndarray:
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return np.flatnonzero((gray < 128).any(axis=1))


def test_render_draws_scripts_where_tex_puts_them() -> None:
    rng = np.random.default_rng(0)
    plain = render_formula("x y", np.random.default_rng(0))
    raised = render_formula("x ^ { y }", np.random.default_rng(0))
    assert plain is not None and raised is not None
    assert ink_rows(raised).size > ink_rows(plain).size  # the superscript sits above the line
    assert render_formula(r"\frac { a", rng) is None  # mathtext cannot parse it
    assert render_formula(r"\notacommand x", rng) is None


def test_splits_are_disjoint_in_the_dataset_schema(small_set: Path) -> None:
    texts = {}
    for split, size in SIZES.items():
        table = pq.read_table(small_set / f"{split}.parquet")
        assert table.schema.field("image").type.names == ["bytes", "path"]
        assert (
            json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["image"]["_type"] == "Image"
        )
        assert table.num_rows == size
        texts[split] = set(table.column("text").to_pylist())
        assert len(texts[split]) == size
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


def test_cache_is_reused_and_keyed_by_sizes_and_seed(small_set: Path) -> None:
    cache_dir = small_set.parent.parent
    stamp = (small_set / "train.parquet").stat().st_mtime_ns
    assert build_synthetic(cache_dir, SIZES, seed=5) == small_set
    assert (small_set / "train.parquet").stat().st_mtime_ns == stamp
    assert synthetic.cache_key(SIZES, 6) != synthetic.cache_key(SIZES, 5)
    assert synthetic.cache_key({**SIZES, "train": 41}, 5) != synthetic.cache_key(SIZES, 5)
    assert not [p for p in small_set.parent.iterdir() if p.name.startswith(".build-")]


def test_same_seed_rebuilds_the_same_set(small_set: Path, tmp_path: Path) -> None:
    sizes = {"train": 6, "validation": 2, "test": 2}
    first = build_synthetic(tmp_path / "a", sizes, seed=5)
    second = build_synthetic(tmp_path / "b", sizes, seed=5)
    for split in sizes:
        assert pq.read_table(first / f"{split}.parquet").equals(pq.read_table(second / f"{split}.parquet"))


def test_loads_through_the_data_layer(small_set: Path) -> None:
    cfg = DataConfig(
        data_name="synthetic", cache_dir=str(small_set.parent.parent), seed=5,
        synthetic_train=SIZES["train"], synthetic_val=SIZES["validation"], synthetic_test=SIZES["test"],
    )  # fmt: skip
    texts, images = load_texts_and_images(cfg, "validation")
    assert len(texts) == SIZES["validation"] and images[0]["bytes"].startswith(b"\x89PNG")


def _build_in_child(cache_dir: str, queue: object) -> None:
    folder = build_synthetic(Path(cache_dir), {"train": 5, "validation": 1, "test": 1}, seed=9)
    queue.put((str(folder), (folder / "meta.json").read_text()))  # type: ignore[attr-defined]


def test_concurrent_builders_share_one_finished_set(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_build_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert results[0] == results[1]  # the second waited and found the first's set (same build time recorded)
    assert not [p for p in (tmp_path / "synthetic").iterdir() if p.name.startswith(".build-")]
