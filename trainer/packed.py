"""A prepared split's images and targets as a few flat arrays instead of one object per sample.

Why: a split of the ``full`` set is 76k images; as flat arrays (pixels + offsets) it is one buffer that can
live in a file mapped read-only by every DDP rank and every DataLoader worker (one copy in the page cache, no
copy-on-write of Python objects in forked workers), and it saves and loads as plain ``.npy`` files.

``PackedImages[i]`` is an (H, W) uint8 view; ``PackedTargets[i]`` a list of token ids. Both are sequences, so
code written for lists of arrays and lists of lists keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np


class _Packed(Sequence[Any]):
    """Items ``flat[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self.flat = flat
        self.offsets = offsets

    def __len__(self) -> int:
        return int(self.offsets.size) - 1

    def _slice(self, index: int) -> np.ndarray:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.flat[int(self.offsets[index]) : int(self.offsets[index + 1])]

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self.item(i) for i in range(*index.indices(len(self)))]
        return self.item(index)

    def item(self, index: int) -> Any:
        return self._slice(index)

    def __iter__(self) -> Iterator[Any]:
        return (self.item(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(np.array_equal(a, b) for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def save(self, folder: Path, name: str) -> list[Path]:
        paths = [folder / f"{name}.flat.npy", folder / f"{name}.offsets.npy"]
        np.save(paths[0], self.flat)
        np.save(paths[1], self.offsets)
        return paths

    @staticmethod
    def _load(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
        flat = np.load(folder / f"{name}.flat.npy", mmap_mode="r")
        return flat, np.load(folder / f"{name}.offsets.npy")


def _offsets(sizes: Sequence[int]) -> np.ndarray:
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.asarray(sizes, dtype=np.int64), out=offsets[1:])
    return offsets


class PackedImages(_Packed):
    """Images of one height (the model's input height), any widths."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, height: int) -> None:
        super().__init__(flat, offsets)
        self.height = height

    def item(self, index: int) -> np.ndarray:
        return self._slice(index).reshape(self.height, -1)

    @property
    def widths(self) -> np.ndarray:
        return (np.diff(self.offsets) // max(self.height, 1)).astype(np.int64)

    @classmethod
    def pack(cls, images: list[np.ndarray], height: int) -> PackedImages:
        """Copies the images into one buffer, dropping each from ``images`` once copied (the peak stays near
        one copy of the pixels)."""
        if any(image.shape[0] != height for image in images):
            raise ValueError(f"every image must be {height} pixels high to be packed")
        offsets = _offsets([image.size for image in images])
        flat = np.empty(int(offsets[-1]), dtype=np.uint8)
        for i in range(len(images)):
            flat[offsets[i] : offsets[i + 1]] = images[i].reshape(-1)
            images[i] = None  # type: ignore[call-overload]
        return cls(flat, offsets, height)

    @classmethod
    def load(cls, folder: Path, name: str, height: int) -> PackedImages:
        """Mapped read-only: the pixels stay in the page cache, shared with every process that maps them."""
        return cls(*cls._load(folder, name), height)


class PackedTargets(_Packed):
    """Token id sequences; an item is a list of ints."""

    def item(self, index: int) -> list[int]:
        return self._slice(index).tolist()

    @classmethod
    def pack(cls, targets: Sequence[Sequence[int]]) -> PackedTargets:
        offsets = _offsets([len(ids) for ids in targets])
        flat = np.fromiter((i for ids in targets for i in ids), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    @classmethod
    def load(cls, folder: Path, name: str) -> PackedTargets:
        return cls(*cls._load(folder, name))
