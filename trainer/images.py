"""One image preprocessing for training, validation and inference.

Any input (Hugging Face image dict, PNG bytes, path, PIL image, array) goes through the same steps:
grayscale -> ink map (ink = high, background = 0) -> crop to the ink's bounding box -> shrink if it exceeds
the limits (never stretched, aspect ratio kept) -> paste into a canvas of the fixed height, vertically
centred, left-aligned, width rounded up to ``width_multiple``.

Ink is high and background is 0 so that every kind of padding (the canvas, batch padding, a convolution's
zero padding) means the same thing to the model: blank paper.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.context
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

# A pixel whose ink is below this share of the image's darkest ink is background when cropping: it drops
# faint JPEG noise and anti-aliasing halos without eating thin strokes.
INK_THRESHOLD = 0.25


@dataclass(frozen=True)
class ImageSpec:
    """Geometry of the model's input; travels in the checkpoint as ``dataclasses.asdict``.

    A fixed height (not a maximum) keeps every batch the same height, so batching by width alone removes
    nearly all padding. Images keep their natural scale (formula datasets are rendered at one font size,
    so glyph size stays consistent) and are only shrunk when taller than ``height`` or wider than
    ``max_width``. 64 px holds a one-line formula with fractions, sub- and superscripts at the scale of
    printed im2latex-style renders; 1024 px holds the long ones of the ``full`` set.
    """

    height: int = 64
    max_width: int = 1024
    width_multiple: int = 16  # pad width up to a multiple of the CNN's total downsampling

    def __post_init__(self) -> None:
        if self.height < 8 or self.width_multiple < 1 or self.max_width < self.width_multiple:
            raise ValueError(f"invalid image spec {self}: need height >= 8 and max_width >= width_multiple")
        if self.max_width % self.width_multiple:
            raise ValueError(
                f"max_width {self.max_width} must be a multiple of width_multiple {self.width_multiple}"
            )


def load_image(obj: Any) -> Image.Image:
    """Decode ``obj`` into a PIL image: a Hugging Face image dict ``{"bytes", "path"}``, encoded bytes, a
    path, a PIL image or an array. Raises ``ValueError`` with a readable message when it cannot."""
    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, dict):
        if obj.get("bytes"):
            return _open_bytes(obj["bytes"])
        if obj.get("path"):
            return _open_path(obj["path"])
        raise ValueError("image record has neither bytes nor path")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(obj))
    if isinstance(obj, (str, Path)):
        return _open_path(obj)
    if isinstance(obj, np.ndarray):
        return _from_array(obj)
    raise ValueError(f"cannot read an image from a {type(obj).__name__}")


def _open_bytes(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise ValueError(f"corrupt image data ({len(data)} bytes): not a recognised image format") from None
    except Exception as exc:  # PIL raises several types for corrupt data
        raise ValueError(f"corrupt image data ({len(data)} bytes): {exc}") from None
    return image


def _open_path(path: str | Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return image


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first (C, H, W)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array.astype(np.float32)) * scale, 0, 255).astype(np.uint8)
    if array.ndim not in (2, 3):
        raise ValueError(f"cannot read an image from an array of shape {array.shape}")
    return Image.fromarray(array)


def ink_map(image: Image.Image) -> np.ndarray:
    """uint8 (H, W), ink high, background 0. Transparent pixels count as paper; light-on-dark images
    (screenshots of dark themes) are recognised by their border and inverted."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    ink = 255 - gray
    if _border_median(ink) > 127:
        ink = gray.copy()
    return ink


def _border_median(array: np.ndarray) -> float:
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return float(np.median(border))


def crop_to_content(ink: np.ndarray) -> np.ndarray:
    """The ink's bounding box, with the background level removed and contrast stretched to 0..255.
    A blank image becomes a 1x1 background pixel."""
    # The paper's level: a low percentile, because paper covers far more than 10 % of any formula image.
    floor = int(np.percentile(ink, 10)) if ink.size else 0
    signal = np.clip(ink.astype(np.int16) - floor, 0, 255).astype(np.uint8)
    peak = int(signal.max()) if signal.size else 0
    if peak == 0:
        return np.zeros((1, 1), dtype=np.uint8)
    mask = signal > max(1, int(peak * INK_THRESHOLD))
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = signal[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    if peak < 255:
        box = (box.astype(np.float32) * (255.0 / peak)).astype(np.uint8)
    return box


def fit_scale(height: int, width: int, spec: ImageSpec) -> float:
    """The largest scale <= 1 that fits (height, width) into (spec.height, spec.max_width)."""
    return min(1.0, spec.height / height, spec.max_width / width)


def preprocess(image: Any, spec: ImageSpec) -> tuple[np.ndarray, bool]:
    """uint8 (spec.height, W) with ink high and background 0, W a multiple of spec.width_multiple and at
    most spec.max_width; the bool says whether the content was shrunk to fit the limits."""
    return place_on_canvas(crop_to_content(ink_map(load_image(image))), spec)


def place_on_canvas(content: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, bool]:
    """Cropped uint8 content (ink high) on the model's canvas: shrunk only if it does not fit, centred
    vertically, left-aligned, the width rounded up to spec.width_multiple; the bool says whether it shrank."""
    h, w = content.shape
    scale = fit_scale(h, w, spec)
    shrunk = scale < 1.0
    if shrunk:
        new_w = min(spec.max_width, max(1, round(w * scale)))
        new_h = min(spec.height, max(1, round(h * scale)))
        # BOX averages every source pixel: thin strokes fade instead of vanishing.
        content = np.asarray(Image.fromarray(content).resize((new_w, new_h), Image.Resampling.BOX))
        h, w = content.shape
    canvas_w = min(spec.max_width, -(-w // spec.width_multiple) * spec.width_multiple)
    canvas = np.zeros((spec.height, canvas_w), dtype=np.uint8)
    top = (spec.height - h) // 2
    canvas[top : top + h, :w] = content
    return canvas, shrunk


def to_float(canvas: np.ndarray) -> np.ndarray:
    """The model's float view of a preprocessed image: ink 1.0, background 0.0."""
    return canvas.astype(np.float32) / 255.0


def worker_context() -> multiprocessing.context.BaseContext:
    """Process start method for the data workers: fork where it exists (no re-import of ``__main__``,
    which a script run from stdin or without a main guard cannot survive; the workers only use numpy, PIL
    and matplotlib, never torch or CUDA, so forking next to them is safe), spawn elsewhere."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def preprocess_batch(images: list[Any], spec: ImageSpec) -> list[tuple[np.ndarray, bool] | str]:
    """``preprocess`` over a list, for worker processes: an image that cannot be decoded gives its error
    message instead of aborting the whole split."""
    out: list[tuple[np.ndarray, bool] | str] = []
    for image in images:
        try:
            out.append(preprocess(image, spec))
        except ValueError as exc:
            out.append(str(exc))
    return out
