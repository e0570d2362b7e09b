"""Decoded validation examples in training.log: what the model reads, next to the truth, every validation."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainer.augment as augment
import trainer.train as train_module
from tests.trainer_support import tiny_args
from trainer.__main__ import main as train
from trainer.examples import example_indices, example_lines


def test_examples_are_spread_over_the_split_and_say_whether_they_match() -> None:
    assert example_indices(10) == [0, 4, 9] or example_indices(10) == [0, 5, 9]
    assert example_indices(2) == [0, 1] and example_indices(1) == [0] and example_indices(0) == []
    lines = example_lines(["a + b", "x", "c d"], ["a  + b", "y", "c d"], count=3)
    assert len(lines) == 9
    assert lines[0].endswith(": equal") and "truth: a  + b" in lines[1] and "read:  a + b" in lines[2]
    assert lines[3].endswith(": differs") and lines[6].endswith(": equal")
    assert example_lines([""], ["x"], count=1)[2].endswith("(nothing)")


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path):  # type: ignore[no-untyped-def]
    """Two epochs of a tiny run with --augment, counting augmented images while validating and while not."""
    out = tmp_path_factory.mktemp("augmented-run")
    counts = {"training": 0, "validating": 0}
    phase = {"now": "training"}
    real_augment, real_decode = augment.augment_canvas, train_module.decode_part

    def counting_augment(*args, **kwargs):  # type: ignore[no-untyped-def]
        counts[phase["now"]] += 1
        return real_augment(*args, **kwargs)

    def validating_decode(*args, **kwargs):  # type: ignore[no-untyped-def]
        phase["now"] = "validating"
        try:
            return real_decode(*args, **kwargs)
        finally:
            phase["now"] = "training"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(augment, "augment_canvas", counting_augment)
        patch.setattr(train_module, "decode_part", validating_decode)
        assert train(tiny_args(out, "--augment", "--max_epochs", "2", cache_dir=shared_cache_dir)) == 0
    return out, counts


def test_augmentation_runs_in_training_and_never_in_validation(augmented_run) -> None:  # type: ignore[no-untyped-def]
    _, counts = augmented_run
    assert counts["training"] >= 2 * 32 - 8 and counts["validating"] == 0, counts


def test_each_validation_logs_three_decoded_examples(augmented_run, shared_cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    out, _ = augmented_run
    log = (out / "training.log").read_text(encoding="utf-8").splitlines()
    heads = [line for line in log if " INFO example " in line and "(validation sample" in line]
    truths = [line.split(" truth: ", 1)[1] for line in log if " truth: " in line]
    assert len(heads) == 2 * 3 and len(truths) == 2 * 3  # two validations, three examples each
    validation = next(shared_cache_dir.glob("synthetic/*train32*/validation.parquet"))
    texts = pq.read_table(validation).column("text").to_pylist()
    assert set(truths) <= set(texts)
    assert sum(" read:  " in line for line in log) == 6
