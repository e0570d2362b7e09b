"""An offline synthetic data set in the linxy/LaTeX_OCR schema: formulas rendered with matplotlib's mathtext.

Formulas come from a small grammar (about 130 tokens, 3-25 tokens long, written in the dataset's normalized
token style: ``x ^ { 2 }``, ``\\frac { a } { b }``, digits one token each) mixed with a share of real
formulas from the dataset's ``full`` validation split (``assets/real_formulas.txt``, see the README there).
The grammar only writes forms that render unambiguously: no pairs of tokens that draw the same glyph
(``\\epsilon``/``\\in``, ``l``/``I``/``1``, ``O``/``0``, ``\\Sigma``/``\\sum`` ...), subscripts before
superscripts, no redundant braces. So exact match is reachable, and a model that learns it reads formulas
it never saw: the train, validation and test formulas are disjoint.

Images vary in mathtext font set, size, margins and paper/ink grey levels, and are otherwise clean.
The set is cached as parquet files under ``<cache_dir>/synthetic/<key>/`` where the key covers the
generator version, the real-formula asset, the sizes and the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from trainer.rendering import GENERATOR_VERSION, render_all

ASSET = Path(__file__).with_name("assets") / "real_formulas.txt"
SPLIT_ORDER = ("test", "validation", "train")  # test first, so its share of real formulas never runs out
REAL_SHARE = 0.1  # share of real formulas among generated ones (while the asset lasts)
MIN_TOKENS, MAX_TOKENS = 3, 25

LOWER = tuple("abcdefghijkmnpqrstuvwxyz")  # no l (reads as 1 or I), no o (reads as 0)
UPPER = tuple("ABDEFGHLMNPQRT")  # capitals whose shape differs from their lower case
GREEK = (
    r"\alpha", r"\beta", r"\gamma", r"\delta", r"\varepsilon", r"\zeta", r"\eta", r"\theta", r"\lambda",
    r"\mu", r"\pi", r"\rho", r"\sigma", r"\tau", r"\phi", r"\psi", r"\omega", r"\xi",
    r"\Gamma", r"\Delta", r"\Theta", r"\Lambda", r"\Phi", r"\Psi", r"\Omega",
)  # fmt: skip
RELATIONS = ("=", "=", "=", r"\neq", "<", ">", r"\leq", r"\geq", r"\approx", r"\equiv", r"\sim", r"\to")
BINARY_OPS = ("+", "+", "-", "-", r"\pm", r"\times", r"\cdot")
FUNCTIONS = (r"\sin", r"\cos", r"\tan", r"\log", r"\ln", r"\exp")
ACCENTS = (r"\hat", r"\bar", r"\tilde", r"\vec", r"\dot")
SYMBOLS = (r"\infty", r"\partial", r"\nabla")
INDEX_LETTERS = ("i", "j", "k", "n", "m")


# ------------------------------------------------------------------------------------------ formulas


class _Grammar:
    """Random formulas as token lists. ``depth`` bounds nesting, so lengths stay short-to-medium."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng  # Python's generator: ~20x cheaper per draw than numpy's, and just as reproducible

    def pick(self, options: tuple[str, ...]) -> str:
        return options[self.rng.randrange(len(options))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def digit(self, low: int = 0) -> str:
        return str(self.rng.randrange(low, 10))

    def formula(self) -> list[str]:
        if self.chance(0.6):
            return [*self.expression(2), self.pick(RELATIONS), *self.expression(2)]
        return self.expression(3)

    def expression(self, depth: int) -> list[str]:
        tokens = self.term(depth)
        for _ in range(self.rng.randrange(3)):
            tokens += [self.pick(BINARY_OPS), *self.term(depth)]
        if self.chance(0.1):
            tokens = ["-", *tokens]
        return tokens

    def term(self, depth: int) -> list[str]:
        tokens = self.factor(depth)
        if self.chance(0.3):
            tokens += self.factor(depth)
        return tokens

    def factor(self, depth: int) -> list[str]:
        if depth <= 0:
            return self.scripted_atom(0)
        makers: list[tuple[float, Callable[[int], list[str]]]] = [
            (0.45, self.scripted_atom),
            (0.12, self.fraction),
            (0.08, self.root),
            (0.12, self.parenthesised),
            (0.11, self.function),
            (0.06, self.big_operator),
            (0.06, self.accented),
        ]
        (maker,) = self.rng.choices([m for _, m in makers], weights=[w for w, _ in makers])
        return maker(depth)

    def atom(self) -> list[str]:
        roll = self.rng.random()
        if roll < 0.45:
            return [self.pick(LOWER)]
        if roll < 0.6:
            return [self.pick(UPPER)]
        if roll < 0.78:
            return [self.pick(GREEK)]
        if roll < 0.97:
            return self.number()
        return [self.pick(SYMBOLS)]

    def number(self) -> list[str]:
        extra = self.rng.choices((0, 1, 2), weights=(0.6, 0.3, 0.1))[0]
        return [self.digit(1)] + [self.digit() for _ in range(extra)]

    def scripted_atom(self, depth: int) -> list[str]:
        tokens = self.atom()
        if tokens[-1].isdigit() and len(tokens) > 1:
            return tokens  # no scripts on multi-digit numbers: "1 2 ^ { 2 }" is odd LaTeX
        roll = self.rng.random()
        if roll < 0.2:
            tokens += ["_", "{", *self.small(), "}"]
        elif roll < 0.4:
            tokens += ["^", "{", *self.small(), "}"]
        elif roll < 0.47:
            tokens += ["_", "{", *self.small(), "}", "^", "{", *self.small(), "}"]
        elif roll < 0.52:
            tokens += ["^", "{", r"\prime", "}"]
        return tokens

    def small(self) -> list[str]:
        """A script: an atom, a digit, or a short sum like ``n + 1``."""
        roll = self.rng.random()
        if roll < 0.35:
            return [self.pick(INDEX_LETTERS)]
        if roll < 0.7:
            return [self.digit()]
        if roll < 0.85:
            return [self.pick(INDEX_LETTERS), self.pick(("+", "-")), self.digit(1)]
        return self.atom()

    def fraction(self, depth: int) -> list[str]:
        return [r"\frac", "{", *self.expression(depth - 1), "}", "{", *self.expression(depth - 1), "}"]

    def root(self, depth: int) -> list[str]:
        return [r"\sqrt", "{", *self.expression(depth - 1), "}"]

    def parenthesised(self, depth: int) -> list[str]:
        left, right = ("(", ")") if self.chance(0.7) else ("[", "]") if self.chance(0.6) else ("|", "|")
        tokens = [left, *self.expression(depth - 1), right]
        if self.chance(0.3):
            tokens += ["^", "{", *self.small(), "}"]
        return tokens

    def function(self, depth: int) -> list[str]:
        name = self.pick(FUNCTIONS)
        if self.chance(0.5):
            return [name, *self.atom()]
        return [name, "(", *self.expression(depth - 1), ")"]

    def big_operator(self, depth: int) -> list[str]:
        operator = self.pick((r"\sum", r"\prod", r"\int", r"\lim"))
        if operator == r"\lim":
            var = self.pick(LOWER)
            return [r"\lim", "_", "{", var, r"\to", self.pick(("0", r"\infty")), "}", *self.factor(depth - 1)]
        if operator == r"\int":
            var = self.pick(("x", "t", "s"))
            limits = ["_", "{", "0", "}", "^", "{", *self.small(), "}"] if self.chance(0.6) else []
            return [r"\int", *limits, *self.factor(depth - 1), "d", var]
        index = self.pick(INDEX_LETTERS)
        return [operator, "_", "{", index, "=", self.pick(("0", "1")), "}", "^", "{", self.pick(("n", "N", r"\infty")),
                "}", *self.factor(depth - 1)]  # fmt: skip

    def accented(self, depth: int) -> list[str]:
        return [self.pick(ACCENTS), "{", self.pick(LOWER + GREEK[:18]), "}"]


def grammar_formula(rng: random.Random) -> str:
    """One grammar formula of MIN_TOKENS..MAX_TOKENS tokens."""
    grammar = _Grammar(rng)
    while True:
        tokens = grammar.formula()
        if MIN_TOKENS <= len(tokens) <= MAX_TOKENS:
            return " ".join(tokens)


@cache
def real_formulas() -> tuple[str, ...]:
    """The shipped real formulas (one per line); empty if the asset is missing."""
    if not ASSET.is_file():
        return ()
    return tuple(line.strip() for line in ASSET.read_text(encoding="utf-8").splitlines() if line.strip())


def _candidates(seed: int) -> Iterator[str]:
    """An endless, deterministic stream of formulas: grammar ones, and real ones at REAL_SHARE while the
    (shuffled) asset lasts."""
    rng = random.Random(f"{GENERATOR_VERSION}:{seed}")  # str seeds hash the same in every process (SHA-512)
    real = list(real_formulas())
    rng.shuffle(real)
    next_real = 0
    while True:
        if next_real < len(real) and rng.random() < REAL_SHARE:
            yield real[next_real]
            next_real += 1
        else:
            yield grammar_formula(rng)


def generate_formulas(n: int, seed: int, *, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` distinct formulas, none in ``exclude``; the same (n, seed, exclude) give the same list, and a
    larger n extends a smaller one's list."""
    out: list[str] = []
    seen = set(exclude)
    for formula in _candidates(seed):
        if len(out) >= n:
            break
        if formula not in seen:
            seen.add(formula)
            out.append(formula)
    return out


# ---------------------------------------------------------------------------------------- the data set


def cache_key(sizes: dict[str, int], seed: int) -> str:
    asset = hashlib.sha256(ASSET.read_bytes()).hexdigest()[:8] if ASSET.is_file() else "none"
    counts = "-".join(f"{split}{int(sizes.get(split, 0))}" for split in SPLIT_ORDER)
    return f"v{GENERATOR_VERSION}-{asset}-seed{seed}-{counts}"


def build_synthetic(cache_dir: Path, sizes: dict[str, int], seed: int, num_proc: int | None = None) -> Path:
    """The folder holding ``{train,validation,test}.parquet`` for (sizes, seed), building it on first use.

    The folder appears atomically (built aside, then renamed), so an interrupted build leaves nothing
    half-written, and two processes building at once both end with the same complete folder."""
    target = Path(cache_dir) / "synthetic" / cache_key(sizes, seed)
    if (target / "meta.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent / f".{target.name}.lock"):
        if not (target / "meta.json").is_file():  # another process may have built it while we waited
            _build_into(target, sizes, seed, num_proc)
    return target


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One builder at a time (DDP ranks start together): the others wait, then find the finished set.
    Without fcntl (Windows) concurrent builds stay correct, only wasteful."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_into(target: Path, sizes: dict[str, int], seed: int, num_proc: int | None) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        _write_splits(scratch, sizes, seed, num_proc)
        try:
            os.replace(scratch, target)
        except OSError:
            if not (target / "meta.json").is_file():  # not a finished concurrent build: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_splits(folder: Path, sizes: dict[str, int], seed: int, num_proc: int | None) -> None:
    started = time.perf_counter()
    rendered = _render_splits(sizes, seed, num_proc)
    for split in SPLIT_ORDER:
        texts, pngs = rendered.get(split, ([], []))
        write_parquet(folder / f"{split}.parquet", texts, pngs)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": {split: len(rendered.get(split, ([], []))[0]) for split in SPLIT_ORDER},
        "seconds": round(time.perf_counter() - started, 3),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _render_splits(
    sizes: dict[str, int], seed: int, num_proc: int | None
) -> dict[str, tuple[list[str], list[bytes]]]:
    """Formulas for every split from one stream (so splits are disjoint), rendered; a formula mathtext
    cannot render is replaced by the next one of the stream."""
    wanted = {split: max(0, int(sizes.get(split, 0))) for split in SPLIT_ORDER}
    total = sum(wanted.values())
    kept: list[tuple[str, bytes]] = []
    exclude: set[str] = set()
    request = total + total // 20 + 8  # a few spares for formulas that fail to render
    while len(kept) < total:
        formulas = generate_formulas(request, seed)[len(exclude) :]
        pngs = render_all(formulas, seed + len(exclude), num_proc)
        kept += [(f, png) for f, png in zip(formulas, pngs, strict=True) if png is not None]
        exclude.update(formulas)
        request = len(exclude) + 2 * (total - len(kept)) + 8
    out: dict[str, tuple[list[str], list[bytes]]] = {}
    start = 0
    for split in SPLIT_ORDER:
        chunk = kept[start : start + wanted[split]]
        out[split] = ([f for f, _ in chunk], [png for _, png in chunk])
        start += wanted[split]
    return out


# The Hugging Face feature metadata that makes `datasets` read these files exactly like the real set's.
_HF_FEATURES = {
    "info": {"features": {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"}}}
}


def write_parquet(path: Path, texts: list[str], pngs: list[bytes]) -> None:
    """A parquet file in the linxy/LaTeX_OCR schema: ``image`` struct{bytes, path}, ``text`` string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": png, "path": None} for png in pngs], type=image_type)
    table = pa.table({"image": images, "text": pa.array(texts, type=pa.string())})
    table = table.replace_schema_metadata({"huggingface": json.dumps(_HF_FEATURES)})
    pq.write_table(table, path)
