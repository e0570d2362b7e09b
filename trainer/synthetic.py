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
import io
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np

from trainer import watch
from trainer.images import worker_context

GENERATOR_VERSION = 1
ASSET = Path(__file__).with_name("assets") / "real_formulas.txt"
SPLIT_ORDER = ("test", "validation", "train")  # test first, so its share of real formulas never runs out
REAL_SHARE = 0.1  # share of real formulas among generated ones (while the asset lasts)
MIN_TOKENS, MAX_TOKENS = 3, 25
FONTSETS = ("cm", "stix", "stixsans", "dejavusans", "dejavuserif")
FONT_SIZES = (12.0, 16.0)  # points at 100 dpi: a plain line is ~20-28 px tall, a fraction ~40-55 px
DPI = 100
# Rendering processes pay their matplotlib import (~1 s) only when there is enough work for them.
PARALLEL_MIN_FORMULAS = 400

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


# ----------------------------------------------------------------------------------------- rendering


@cache
def _parser():  # type: ignore[no-untyped-def]
    from matplotlib import mathtext  # Agg raster output, no figure, no GUI backend

    return mathtext.MathTextParser("agg")


_CONTROL_WORD = re.compile(r"\\[A-Za-z]+")


def to_mathtext(formula: str) -> str:
    """The formula's tokens joined the way TeX reads them. mathtext, unlike TeX, does not ignore spaces
    in math mode: ``R ^ { 2 }`` would attach the superscript to a space and draw ``R 2``. Keep a space
    only where TeX needs one: after a control word followed by a letter (``\\sin x``)."""
    out: list[str] = []
    for token in formula.split():
        if out and _CONTROL_WORD.fullmatch(out[-1]) and token[:1].isalpha():
            out.append(" ")
        out.append(token)
    return "".join(out)


class _GlyphWarnings(logging.Handler):
    """Collects mathtext's warnings: a missing glyph is drawn as a dummy box, which would teach the model
    a wrong picture, so such a rendering counts as a failure."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True


def mathtext_raster(formula: str, fontset: str, size: float) -> np.ndarray | None:
    """Ink coverage (uint8, 255 = full ink) of ``formula`` in math mode, or None if mathtext cannot draw
    it faithfully (parse error or a missing glyph)."""
    from matplotlib.font_manager import FontProperties

    logger = logging.getLogger("matplotlib.mathtext")
    warnings = _GlyphWarnings()
    logger.addHandler(warnings)
    propagate, logger.propagate = logger.propagate, False
    try:
        raster = _parser().parse(
            f"${to_mathtext(formula)}$", dpi=DPI, prop=FontProperties(size=size, math_fontfamily=fontset)
        )
    except Exception:  # mathtext raises ValueError subclasses, and others for odd input
        return None
    finally:
        logger.removeHandler(warnings)
        logger.propagate = propagate
    image = np.asarray(raster.image, dtype=np.uint8)
    if warnings.seen or image.size == 0 or not image.any():
        return None
    return image


def render_formula(formula: str, rng: np.random.Generator) -> bytes | None:
    """PNG bytes of ``formula`` drawn by mathtext with a random font set, size, margin and grey levels;
    None if mathtext cannot render it."""
    from PIL import Image

    fontset = FONTSETS[int(rng.integers(len(FONTSETS)))]
    size = float(rng.uniform(*FONT_SIZES))
    raster = mathtext_raster(formula, fontset, size)
    if raster is None:
        return None
    coverage = raster.astype(np.float32) / 255.0
    paper, ink = float(rng.uniform(225, 255)), float(rng.uniform(0, 60))
    top, bottom, left, right = (int(m) for m in rng.integers(2, 14, size=4))
    canvas = np.full((coverage.shape[0] + top + bottom, coverage.shape[1] + left + right), paper, np.float32)
    region = canvas[top : top + coverage.shape[0], left : left + coverage.shape[1]]
    region -= coverage * (paper - ink)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(canvas).astype(np.uint8), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _render_range(formulas: list[str], seed: int, start: int) -> list[bytes | None]:
    """Render formulas[i] with an rng of its own (seed, start + i): results do not depend on how the work
    is split between processes."""
    return [
        render_formula(formula, np.random.default_rng([seed & 0xFFFFFFFF, GENERATOR_VERSION, start + i]))
        for i, formula in enumerate(formulas)
    ]


def render_all(formulas: list[str], seed: int, num_proc: int | None = None) -> list[bytes | None]:
    num_proc = num_proc or os.cpu_count() or 1
    if num_proc <= 1 or len(formulas) < PARALLEL_MIN_FORMULAS:
        return _render_range(formulas, seed, 0)
    size = -(-len(formulas) // (num_proc * 4))
    starts = list(range(0, len(formulas), size))
    context = worker_context()
    rendered: list[bytes | None] = []
    with ProcessPoolExecutor(max_workers=num_proc, mp_context=context) as pool:
        parts = pool.map(
            _render_range, [formulas[s : s + size] for s in starts], [seed] * len(starts), starts
        )
        for part in parts:
            rendered += part
            watch.beat("prepare", rendered=len(rendered), of=len(formulas))
    return rendered


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
