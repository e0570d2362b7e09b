"""Regenerate trainer/assets/real_formulas.txt: the real formulas the synthetic data set mixes in.

Source: the validation split of linxy/LaTeX_OCR's ``full`` configuration (Apache-2.0), one normalized
formula per line, e.g. /work/shared/data/linxy-full-val.formulas.txt or the dataset's
``full/formulas/val.formulas.norm.txt``. Kept: formulas of 3-25 tokens without invisible spacing commands
or \\left/\\right delimiters (they draw like the plain ones, so no model could tell them apart), made only of
tokens that appear at least MIN_TOKEN_COUNT times among the kept formulas (rare tokens cannot be learned
from a few thousand samples), and that mathtext renders in every font set the generator uses.

    python bench/make_formula_assets.py [--source FILE] [--out trainer/assets/real_formulas.txt]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.rendering import FONTSETS, mathtext_raster  # noqa: E402
from trainer.synthetic import MAX_TOKENS, MIN_TOKENS  # noqa: E402

DEFAULT_SOURCE = Path("/work/shared/data/linxy-full-val.formulas.txt")
DEFAULT_OUT = ROOT / "trainer" / "assets" / "real_formulas.txt"
SPACING = {r"\quad", r"\qquad", r"\!", r"\:", r"\,", r"\;", "\\", "~", r"\hspace", r"\hfill", r"\space"}
MIN_TOKEN_COUNT = 5


def acceptable_tokens(formula: str) -> bool:
    tokens = formula.split()
    return (
        MIN_TOKENS <= len(tokens) <= MAX_TOKENS
        and not SPACING.intersection(tokens)
        and not any(t.startswith((r"\left", r"\right")) for t in tokens)
    )


def drop_rare(formulas: list[str]) -> list[str]:
    """Drop formulas with a rare token until every remaining token is frequent enough."""
    while True:
        counts = Counter(t for f in formulas for t in f.split())
        kept = [f for f in formulas if all(counts[t] >= MIN_TOKEN_COUNT for t in f.split())]
        if len(kept) == len(formulas):
            return kept
        formulas = kept


def renders_everywhere(formula: str) -> bool:
    """mathtext draws it faithfully (no parse error, no missing glyph) in every font set."""
    return all(mathtext_raster(formula, fontset, 14.0) is not None for fontset in FONTSETS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not args.source.is_file():
        sys.exit(f"error: {args.source} not found: pass --source with the dataset's val.formulas.norm.txt")
    lines = [line.strip() for line in args.source.read_text(encoding="utf-8").splitlines()]
    unique = list(dict.fromkeys(line for line in lines if line and acceptable_tokens(line)))
    renderable = [f for f in unique if renders_everywhere(f)]
    kept = drop_rare(renderable)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(f + "\n" for f in kept), encoding="utf-8")
    vocab = sorted({t for f in kept for t in f.split()})
    summary = {"source_lines": len(lines), "short_unique": len(unique), "renderable": len(renderable),
               "kept": len(kept), "vocabulary": len(vocab), "bytes": args.out.stat().st_size}  # fmt: skip
    print(json.dumps(summary))
    print(f"wrote {len(kept)} formulas ({summary['bytes']} bytes, {len(vocab)} tokens) to {args.out}")


if __name__ == "__main__":
    main()
