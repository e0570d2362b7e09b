"""Evaluation metrics on token sequences, all from free decoding.

- corpus BLEU-4 (Papineni et al.: clipped n-gram precisions over the whole corpus, geometric mean, brevity
  penalty; no smoothing, so a corpus with no matching 4-gram scores 0);
- exact match: share of hypotheses equal to their reference;
- edit_distance: token Levenshtein / reference length, averaged over samples (lower is better; pix2tex's sense);
- edit_score: 1 - Levenshtein / longer length, averaged over samples (higher is better; the user's lineage).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import editdistance

Tokens = Sequence[str]


def _ngrams(tokens: Tokens, n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu4(hypotheses: Sequence[Tokens], references: Sequence[Tokens]) -> float:
    matches = [0] * 4
    totals = [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        hyp_len += len(hyp)
        ref_len += len(ref)
        for n in range(1, 5):
            hyp_counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def exact_match(hypotheses: Sequence[Tokens], references: Sequence[Tokens]) -> float:
    if not references:
        return 0.0
    return sum(list(h) == list(r) for h, r in zip(hypotheses, references, strict=True)) / len(references)


def edit_distance(hypotheses: Sequence[Tokens], references: Sequence[Tokens]) -> float:
    """Mean of Levenshtein(hyp, ref) / len(ref); an empty reference divides by 1."""
    if not references:
        return 0.0
    ratios = [
        editdistance.eval(list(h), list(r)) / max(len(r), 1)
        for h, r in zip(hypotheses, references, strict=True)
    ]
    return sum(ratios) / len(ratios)


def edit_score(hypotheses: Sequence[Tokens], references: Sequence[Tokens]) -> float:
    """Mean of 1 - Levenshtein(hyp, ref) / max(len(hyp), len(ref)); two empty sequences score 1."""
    if not references:
        return 0.0
    scores = [
        1.0 - editdistance.eval(list(h), list(r)) / max(len(h), len(r), 1)
        for h, r in zip(hypotheses, references, strict=True)
    ]
    return sum(scores) / len(scores)


def score_texts(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """All four metrics for whitespace-tokenized formula strings."""
    hyp_tokens = [h.split() for h in hypotheses]
    ref_tokens = [r.split() for r in references]
    return {
        "bleu4": corpus_bleu4(hyp_tokens, ref_tokens),
        "exact_match": exact_match(hyp_tokens, ref_tokens),
        "edit_distance": edit_distance(hyp_tokens, ref_tokens),
        "edit_score": edit_score(hyp_tokens, ref_tokens),
    }
