"""Training-time image augmentation (``--augment``): geometric and photometric changes that a formula image
can undergo without changing what it says; the target text is never touched.

Each training image is drawn afresh every epoch, from an rng that is a pure function of (seed, epoch,
sample index): a resumed run sees the same augmented images as one that never stopped. Validation,
``trainer.evaluate`` and prediction read the split through ``OcrDataset`` directly and never augment.

What it does, each with its own probability (the mix the handwritten and scanned sets call for):
- a small affine jitter: scale, rotation of a degree or two, a slant (x-shear);
- thicker strokes (a 3x3 dilation, blended);
- blur (Gaussian, radius under a pixel);
- a paper tone (the background not quite blank) and pixel noise.
The result is re-fitted into the model's input geometry exactly like ``trainer.images.preprocess`` does
(cropped to the ink, shrunk only if it no longer fits, centred vertically, width rounded up).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from trainer.data import OcrDataset, WidthBucketSampler
from trainer.images import ImageSpec, place_on_canvas

SCALE = (0.9, 1.05)
ROTATE_DEGREES = 1.5
SHEAR = 0.15
P_AFFINE, P_THICKER, P_BLUR, P_PAPER, P_NOISE = 0.7, 0.25, 0.25, 0.25, 0.25
INK_FLOOR = 8  # pixels below this count as blank when cropping after the transform


def augment_canvas(canvas: np.ndarray, rng: np.random.Generator, spec: ImageSpec) -> np.ndarray:
    """A changed copy of a preprocessed uint8 canvas (ink high, background 0), in the same geometry."""
    content = _crop(canvas)
    if content is None:
        return canvas.copy()
    image = Image.fromarray(content)
    if rng.random() < P_AFFINE:
        image = _affine(image, rng)
    if rng.random() < P_THICKER:
        thick = np.asarray(image.filter(ImageFilter.MaxFilter(3)), dtype=np.float32)
        weight = float(rng.uniform(0.3, 0.8))
        image = Image.fromarray(np.maximum(np.asarray(image, np.float32), weight * thick).astype(np.uint8))
    if rng.random() < P_BLUR:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.9))))
    fitted = _fit(np.asarray(image), spec)
    return _photometric(fitted, rng)


def _crop(canvas: np.ndarray) -> np.ndarray | None:
    mask = canvas > INK_FLOOR
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return canvas[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _affine(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Scale, rotate and slant about the centre, on a margin wide enough that nothing is cut off."""
    w, h = image.size
    margin = int(0.2 * max(h, 8)) + 4
    padded = Image.new("L", (w + 2 * margin, h + 2 * margin), 0)
    padded.paste(image, (margin, margin))
    scale = float(rng.uniform(*SCALE))
    angle = math.radians(float(rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES)))
    shear = float(rng.uniform(-SHEAR, SHEAR))
    # The inverse map (output -> input) that PIL's AFFINE transform wants: (S * R * H)^-1 about the centre.
    cos, sin = math.cos(angle), math.sin(angle)
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inverse = np.linalg.inv(forward)
    cx, cy = padded.size[0] / 2, padded.size[1] / 2
    offset = np.array([cx, cy]) - inverse @ np.array([cx, cy])
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return padded.transform(padded.size, Image.Transform.AFFINE, coefficients,
                            resample=Image.Resampling.BILINEAR, fillcolor=0)


def _fit(content: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Into the model's geometry as preprocess places an image (an all-blank result: one empty column)."""
    cropped = _crop(content)
    if cropped is None:
        return np.zeros((spec.height, spec.width_multiple), dtype=np.uint8)
    return place_on_canvas(cropped, spec)[0]


def _photometric(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A paper tone and noise over the image (not over the batch padding that collate adds later)."""
    out = canvas.astype(np.float32)
    if rng.random() < P_PAPER:
        out = np.maximum(out, float(rng.uniform(5, 35)))
    if rng.random() < P_NOISE:
        out += rng.normal(0.0, float(rng.uniform(2, 12)), size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class AugmentedDataset(torch.utils.data.Dataset):
    """Items of an ``OcrDataset`` keyed by (epoch, index): the image augmented, the target ids unchanged."""

    def __init__(self, base: OcrDataset, spec: ImageSpec, seed: int) -> None:
        self.base = base
        self.spec = spec
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, list[int]]:
        epoch, index = key
        image, ids = self.base[index]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, index])
        changed = augment_canvas(image[0].numpy(), rng, self.spec)
        return torch.from_numpy(changed).unsqueeze(0), ids


class EpochTaggedSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """The width sampler's batches with each index tagged by the epoch being iterated (the augmentation's rng
    needs it, and DataLoader workers only see what the sampler yields)."""

    def __init__(self, sampler: WidthBucketSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, index) for index in batch]

    def __len__(self) -> int:
        return len(self.sampler)


def training_items(dataset: OcrDataset, sampler: WidthBucketSampler, spec: ImageSpec, seed: int,
                   enabled: bool) -> tuple[torch.utils.data.Dataset[Any], torch.utils.data.Sampler[Any]]:
    """The training loader's dataset and batch sampler: augmented when ``enabled``, else unchanged."""
    if not enabled:
        return dataset, sampler
    return AugmentedDataset(dataset, spec, seed), EpochTaggedSampler(sampler)
