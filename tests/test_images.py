"""Image preprocessing: one path for every input kind, ink high, cropped, never stretched, shrunk only to fit."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.images import ImageSpec, load_image, preprocess

SPEC = ImageSpec(height=32, max_width=128, width_multiple=16)


def page(
    glyph_h: int = 10, glyph_w: int = 20, margin: int = 7, paper: int = 250, ink: int = 20
) -> np.ndarray:
    """A grey page with a dark rectangle and a dark dot: a stand-in for a formula."""
    image = np.full((glyph_h + 2 * margin, glyph_w + 2 * margin + 6), paper, dtype=np.uint8)
    image[margin : margin + glyph_h, margin : margin + glyph_w] = ink
    image[margin, margin + glyph_w + 4] = ink
    return image


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_output_geometry_ink_high_and_cropped() -> None:
    canvas, shrunk = preprocess(page(), SPEC)
    assert not shrunk
    assert canvas.dtype == np.uint8 and canvas.shape == (32, 32)  # content 10 x 25 -> width rounded up to 32
    assert canvas[0, 0] == 0 and canvas.max() == 255  # background 0, ink stretched to 255
    rows = np.flatnonzero(canvas.any(axis=1))
    cols = np.flatnonzero(canvas.any(axis=0))
    assert (rows[0], rows[-1] - rows[0] + 1) == (11, 10)  # vertically centred, natural height kept
    assert (cols[0], cols[-1] + 1) == (0, 25)  # left-aligned, the dot is inside the crop


def test_margins_paper_tone_and_polarity_do_not_change_the_result() -> None:
    reference, _ = preprocess(page(), SPEC)
    assert np.array_equal(preprocess(page(margin=2, paper=200, ink=0), SPEC)[0], reference)
    dark_mode = 255 - page()
    assert np.array_equal(preprocess(dark_mode, SPEC)[0], reference)


def test_transparent_background_counts_as_paper() -> None:
    rgba = np.zeros((*page().shape, 4), dtype=np.uint8)
    rgba[..., 3] = 255 - page()  # black ink drawn only through alpha, transparent elsewhere
    assert np.array_equal(preprocess(png_bytes(rgba, "RGBA"), SPEC)[0], preprocess(page(), SPEC)[0])


@pytest.mark.parametrize(("glyph_h", "glyph_w"), [(80, 20), (10, 400)])
def test_oversized_content_is_shrunk_keeping_its_aspect_ratio(glyph_h: int, glyph_w: int) -> None:
    canvas, shrunk = preprocess(page(glyph_h=glyph_h, glyph_w=glyph_w), SPEC)
    assert shrunk
    assert canvas.shape[0] == SPEC.height and canvas.shape[1] <= SPEC.max_width
    rows = np.flatnonzero(canvas.any(axis=1))
    cols = np.flatnonzero(canvas.any(axis=0))
    content_ratio = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
    assert content_ratio == pytest.approx((glyph_w + 6) / glyph_h, rel=0.15)


def test_small_content_is_never_enlarged() -> None:
    canvas, shrunk = preprocess(page(glyph_h=3, glyph_w=4), SPEC)
    assert not shrunk and int(canvas.any(axis=1).sum()) == 3


def test_every_input_kind_decodes_the_same(tmp_path: Path) -> None:
    array = page()
    data = png_bytes(array)
    path = tmp_path / "f.png"
    path.write_bytes(data)
    expected = preprocess(array, SPEC)[0]
    inputs = [data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}, str(path), path,
              Image.open(path), array.astype(np.float32) / 255.0, np.stack([array] * 3, axis=-1)]  # fmt: skip
    for source in inputs:
        assert np.array_equal(preprocess(source, SPEC)[0], expected), type(source)


def test_blank_image_gives_an_empty_canvas() -> None:
    canvas, shrunk = preprocess(np.full((20, 50), 255, dtype=np.uint8), SPEC)
    assert canvas.shape == (32, 16) and not canvas.any() and not shrunk


@pytest.mark.parametrize("bad", [b"not an image", {"bytes": None, "path": None}, "/no/such/file.png", 3.5])
def test_undecodable_input_raises_a_one_line_value_error(bad: object) -> None:
    with pytest.raises(ValueError) as error:
        load_image(bad)
    assert "\n" not in str(error.value) and "0x" not in str(error.value)


def test_spec_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError):
        ImageSpec(height=32, max_width=100, width_multiple=16)
    assert ImageSpec() == ImageSpec(**{"height": 64, "max_width": 1024, "width_multiple": 16})
