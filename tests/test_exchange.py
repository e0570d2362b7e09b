"""Prepare once under torchrun: rank 0 publishes each split as files the other ranks map read-only; a waiting
rank stops when rank 0 reports an error or is gone, instead of waiting forever."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kr_contract.processes import pid_alive
from tests.test_data import SPEC, formula_png
from trainer.data import DataError, prepare_split
from trainer.exchange import ExchangeError, SplitExchange
from trainer.packed import PackedImages, PackedTargets
from trainer.tokenizer import Vocab


def small_split():  # type: ignore[no-untyped-def]
    texts = [f"t{i % 5} t{i % 3}" for i in range(12)]
    vocab = Vocab.build(texts)
    return prepare_split(texts, [formula_png(width=5 + 9 * i) for i in range(12)], vocab, SPEC, 8), vocab


def test_packed_arrays_are_sequences_of_the_images_and_targets() -> None:
    images = [np.full((4, w), w, dtype=np.uint8) for w in (3, 5, 2)]
    packed = PackedImages.pack(list(images), 4)
    assert len(packed) == 3 and packed == images and packed[-1].shape == (4, 2)
    assert [im.shape[1] for im in packed[1:]] == [5, 2] and packed.widths.tolist() == [3, 5, 2]
    targets = PackedTargets.pack([[1, 2], [], [3]])
    assert targets == [[1, 2], [], [3]] and targets[0] == [1, 2]
    with pytest.raises(IndexError):
        packed[3]


def test_a_published_split_is_received_mapped_read_only(tmp_path: Path) -> None:
    split, vocab = small_split()
    source, other = SplitExchange(tmp_path / "job", 0), SplitExchange(tmp_path / "job", 1)
    source.announce()
    mapped = source.publish("train", split, vocab.to_list())
    received, sent_vocab = other.receive("train")
    assert sent_vocab == vocab.to_list()
    for got in (mapped, received):
        assert isinstance(got.images, PackedImages) and isinstance(got.images.flat, np.memmap)
        assert not got.images[0].flags.writeable
        assert got.images == split.images and got.targets == split.targets and got.texts == split.texts
        assert got.widths.tolist() == split.widths.tolist() and got.report == split.report
    source.remove()
    assert not (tmp_path / "job").exists() and received.images[3].sum() == split.images[3].sum()  # still mapped


def test_a_waiting_rank_gets_rank_0s_input_error(tmp_path: Path) -> None:
    source, other = SplitExchange(tmp_path / "job", 0), SplitExchange(tmp_path / "job", 1)
    source.announce()
    timer = threading.Timer(0.5, source.publish_error, ("validation", DataError("no readable image in it")))
    timer.start()
    with pytest.raises(DataError, match="rank 0 could not prepare the validation split: no readable image in it"):
        other.receive("validation")
    timer.join()


def test_a_waiting_rank_stops_when_rank_0_is_gone(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    assert not pid_alive(pid)
    (folder / "rank0.pid").write_text(str(pid))
    began = time.monotonic()
    with pytest.raises(ExchangeError, match=rf"rank 0 \(pid {pid}\) ended before it shared the train split"):
        SplitExchange(folder, 1).receive("train")
    assert time.monotonic() - began < 5
