"""The token vocabulary: tokens are the whitespace-separated pieces of a formula's ``text``.

The vocabulary is built from the training split only, so validation and test measure what a model does with
tokens it never saw (they map to ``<unk>``). It travels inside the checkpoint as a plain list of str.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class Vocab:
    PAD, BOS, EOS, UNK = 0, 1, 2, 3

    def __init__(self, tokens: list[str]) -> None:
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the special tokens {list(SPECIALS)}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a vocabulary must not list a token twice")
        self.tokens: list[str] = list(tokens)
        self._index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocab:
        """Specials first, then every token by decreasing frequency, ties by token: the same texts give the
        same ids in every run and on every rank."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.split())
        for special in SPECIALS:
            counts.pop(special, None)
        ordered = sorted(counts, key=lambda token: (-counts[token], token))
        return cls([*SPECIALS, *ordered])

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS; unknown tokens become UNK (and so does a literal special
        such as ``<eos>`` inside a text, which must not end or pad a target)."""
        ids = [self._index.get(token, self.UNK) for token in text.split()]
        return [i if i >= len(SPECIALS) else self.UNK for i in ids]

    def count_unknown(self, text: str) -> int:
        return sum(1 for token in text.split() if token not in self._index or token in SPECIALS)

    def decode(self, ids: Sequence[int]) -> str:
        """The formula for ``ids``: stops at the first EOS, drops PAD and BOS, joins with single spaces."""
        out: list[str] = []
        for raw in ids:
            i = int(raw)
            if i == self.EOS:
                break
            if i in (self.PAD, self.BOS):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[self.UNK])
        return " ".join(out)

    def to_list(self) -> list[str]:
        return list(self.tokens)

    @classmethod
    def from_list(cls, tokens: list[str]) -> Vocab:
        return cls([str(token) for token in tokens])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(tuple(self.tokens))

    def __repr__(self) -> str:
        return f"Vocab({len(self.tokens)} tokens)"
