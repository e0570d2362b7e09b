"""The vocabulary: deterministic ids, <unk> for unseen tokens, decoding that stops at EOS, plain-list round trip."""

from __future__ import annotations

import json

import pytest

from trainer.tokenizer import SPECIALS, Vocab


def test_build_orders_specials_then_frequency_then_token() -> None:
    vocab = Vocab.build(["b a", "a c", "a b"])
    assert vocab.tokens == [*SPECIALS, "a", "b", "c"]
    assert (Vocab.PAD, Vocab.BOS, Vocab.EOS, Vocab.UNK) == (0, 1, 2, 3)
    assert Vocab.build(["a c", "a b", "b a"]).tokens == vocab.tokens  # input order does not matter


def test_encode_maps_unseen_and_literal_specials_to_unk() -> None:
    vocab = Vocab.build([r"\frac { a } { b }"])
    ids = vocab.encode(r"\frac { z } { <eos> }")
    assert ids[0] == vocab.tokens.index(r"\frac")
    assert ids[2] == Vocab.UNK and ids[5] == Vocab.UNK
    assert vocab.count_unknown(r"\frac { z } { <eos> }") == 2
    assert vocab.encode("  a\t{   b }  ") == vocab.encode("a { b }")  # any whitespace separates tokens


def test_decode_stops_at_eos_and_drops_pad_and_bos() -> None:
    vocab = Vocab.build(["x ^ { 2 }"])
    ids = [Vocab.BOS, *vocab.encode("x ^ { 2 }"), Vocab.EOS, *vocab.encode("x")]
    assert vocab.decode(ids) == "x ^ { 2 }"
    assert vocab.decode([Vocab.PAD, *vocab.encode("x"), Vocab.PAD]) == "x"
    assert vocab.decode([Vocab.UNK, 999]) == "<unk> <unk>"


def test_round_trip_through_a_plain_list() -> None:
    vocab = Vocab.build([r"\alpha + \beta = \gamma", r"\alpha ^ { 2 }"])
    restored = Vocab.from_list(json.loads(json.dumps(vocab.to_list())))
    assert restored == vocab and len(restored) == len(vocab)
    text = r"\alpha + \beta ^ { 2 }"
    assert restored.decode(restored.encode(text)) == text


@pytest.mark.parametrize("tokens", [["a", "b"], [*SPECIALS, "a", "a"]])
def test_from_list_rejects_a_malformed_vocabulary(tokens: list[str]) -> None:
    with pytest.raises(ValueError):
        Vocab.from_list(tokens)
