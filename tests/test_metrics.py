"""Metrics on examples checked by hand."""

from __future__ import annotations

import math

import pytest

from trainer.metrics import corpus_bleu4, edit_distance, edit_score, exact_match, score_texts


def test_bleu_of_identical_corpus_is_one() -> None:
    assert corpus_bleu4([list("abcd")], [list("abcd")]) == pytest.approx(1.0)


def test_bleu_with_one_wrong_final_token() -> None:
    # p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2; equal lengths, so no brevity penalty.
    expected = (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25
    assert corpus_bleu4([list("abcde")], [list("abcdf")]) == pytest.approx(expected)


def test_bleu_brevity_penalty() -> None:
    # Every n-gram of the short hypothesis matches; BP = exp(1 - 5/4).
    assert corpus_bleu4([list("abcd")], [list("abcde")]) == pytest.approx(math.exp(-0.25))


def test_bleu_is_corpus_level_not_a_mean() -> None:
    # The second pair has no 4-gram at all; pooled counts still give a non-zero score.
    hyps = [list("abcd"), list("xy")]
    refs = [list("abcd"), list("xy")]
    assert corpus_bleu4(hyps, refs) == pytest.approx(1.0)


def test_bleu_zero_without_a_matching_four_gram() -> None:
    assert corpus_bleu4([list("abcx")], [list("abcd")]) == 0.0


def test_clipped_counts() -> None:
    # "a a a a" against "a b c d": unigram precision is clipped to 1/4, there is no matching bigram.
    assert corpus_bleu4([list("aaaa")], [list("abcd")]) == 0.0


def test_exact_match_share() -> None:
    assert exact_match([["a"], ["b"], ["c"], []], [["a"], ["x"], ["c"], ["d"]]) == pytest.approx(0.5)


def test_edit_distance_and_score_by_hand() -> None:
    hyp, ref = ["a", "b"], ["a", "c", "d"]  # substitute b->c, insert d: distance 2
    assert edit_distance([hyp], [ref]) == pytest.approx(2 / 3)
    assert edit_score([hyp], [ref]) == pytest.approx(1 - 2 / 3)
    # A hypothesis longer than the reference: the two metrics divide by different lengths.
    long_hyp = ["a", "c", "d", "e", "f", "g"]
    assert edit_distance([long_hyp], [ref]) == pytest.approx(3 / 3)
    assert edit_score([long_hyp], [ref]) == pytest.approx(1 - 3 / 6)


def test_empty_sequences() -> None:
    assert edit_score([[]], [[]]) == pytest.approx(1.0)
    assert edit_distance([["x"]], [[]]) == pytest.approx(1.0)
    assert corpus_bleu4([[]], [["a"]]) == 0.0


def test_score_texts_splits_on_whitespace() -> None:
    scores = score_texts([r"\frac { a } { b }", "x ^ 2"], [r"\frac { a } { b }", "x ^ { 2 }"])
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["edit_distance"] == pytest.approx((0 + 2 / 5) / 2)
    assert 0.0 < scores["bleu4"] < 1.0
    assert set(scores) == {"bleu4", "exact_match", "edit_distance", "edit_score"}
