"""Formulas drawn with matplotlib's mathtext: the renderer of the synthetic set and of bench/learn_real.py.

Each image gets a random mathtext font set, size, margins and paper/ink grey levels from an rng of its own,
seeded by (seed, GENERATOR_VERSION, index), so a set renders the same whatever the number of processes.
"""

from __future__ import annotations

import io
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor
from functools import cache

import numpy as np

from trainer import watch
from trainer.images import worker_context

GENERATOR_VERSION = 1  # part of the synthetic set's cache key: bump it when a rendering or the grammar changes
FONTSETS = ("cm", "stix", "stixsans", "dejavusans", "dejavuserif")
FONT_SIZES = (12.0, 16.0)  # points at 100 dpi: a plain line is ~20-28 px tall, a fraction ~40-55 px
DPI = 100
# Rendering processes pay their matplotlib import (~1 s) only when there is enough work for them.
PARALLEL_MIN_FORMULAS = 400


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
