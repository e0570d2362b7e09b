"""Training precision, chosen per device: the one place that explains the choice.

``--precision auto`` (the default) picks:

| device | picks | why |
|---|---|---|
| CPU | fp32 | no tensor cores; CPU autocast adds casts and gains little on most CPUs |
| CUDA, compute capability < 8.0: T4 (7.5), V100 (7.0), P100 (6.0) | fp16 autocast + GradScaler | fp16 tensor cores (T4: 65 TFLOP/s against 8 in fp32) but no bf16; fp16's narrow range needs the loss scaled, or small gradients vanish |
| CUDA >= 8.0 with bf16: A100, A10, L4, H100, H200 | bf16 autocast | as fast as fp16 on these cards, with fp32's range: no scaler, no skipped steps |

and on CUDA >= 8.0 TF32 is allowed for the fp32 matmuls and convolutions that remain (outside autocast, or
all of them with ``--precision fp32``): fp32 storage, tensor-core math with a 10-bit mantissa, several
times faster, accurate enough for training.

An explicit ``--precision fp16|bf16|fp32`` is honoured where the device runs it natively; otherwise the run
takes what ``auto`` would and the log says why: fp16 on a CPU (no scaler there, and slow) becomes fp32; bf16
on a card before Ampere (emulated, slower than fp32) becomes fp16. bf16 on a CPU is honoured (CPU autocast
supports it; CPUs with AMX run it fast, others slowly). ``--no_amp`` is the old name of ``--precision fp32``.

A checkpoint does not depend on the precision: weights and optimizer moments are fp32 under autocast; the
GradScaler's state is saved only by fp16 runs, and a run in another precision ignores it (one resuming in fp16
without it starts a fresh scaler). So a run saved in one precision resumes in any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.config import PRECISIONS

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
AMPERE = (8, 0)


@dataclass(frozen=True)
class Precision:
    """What a training step computes in: ``name`` fp16 | bf16 | fp32, whether fp32 math may use TF32, and
    why it was chosen (logged once at the start)."""

    name: str
    reason: str
    tf32: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: no autocast, fp32)."""
        return _DTYPES.get(self.name)

    @property
    def uses_scaler(self) -> bool:
        """Only fp16 needs its loss scaled (bf16 has fp32's exponent range)."""
        return self.name == "fp16"

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[object]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    def describe(self) -> str:
        parts = [self.name + (" autocast + GradScaler" if self.uses_scaler else " autocast" if self.dtype else "")]
        if self.tf32:
            parts.append("TF32 matmuls/convolutions allowed")
        return f"precision {', '.join(parts)}: {self.reason}"


def cuda_capability(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def cuda_has_bf16(device: torch.device) -> bool:
    """Native bf16 (emulation does not count: it is slower than fp32)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def choose_precision(requested: str, device: torch.device, *,
                     capability: Callable[[torch.device], tuple[int, int]] = cuda_capability,
                     has_bf16: Callable[[torch.device], bool] = cuda_has_bf16) -> Precision:
    """The precision of a run on ``device`` for ``--precision requested`` (see the module's table).
    ``capability`` and ``has_bf16`` query the card; tests pass their own."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if requested == "bf16":
            return Precision("bf16", "asked for (--precision bf16); CPU autocast")
        note = "fp16 has no scaler and no speed on a CPU; " if requested == "fp16" else ""
        return Precision("fp32", f"{note}a CPU trains in fp32")
    major_minor = capability(device)
    ampere = tuple(major_minor) >= AMPERE
    bf16 = ampere and has_bf16(device)
    card = f"compute capability {major_minor[0]}.{major_minor[1]}"
    auto = ("bf16", f"{card} has bf16: fp16's speed with fp32's range, no scaler") if bf16 else (
        "fp16", f"{card} has fp16 tensor cores but no bf16: fp16 with a gradient scaler")
    if requested == "auto":
        return Precision(*auto, tf32=ampere)
    if requested == "bf16" and not bf16:
        return Precision("fp16", f"--precision bf16, but {card} has no native bf16 (emulated bf16 is slower "
                                 "than fp32): fp16 with a gradient scaler instead", tf32=ampere)
    return Precision(requested, f"asked for (--precision {requested}) on {card}", tf32=ampere)


def configure_backends(precision: Precision, device: torch.device, bounded_shapes: bool) -> str:
    """Process-wide CUDA settings for this precision: TF32 (matmuls and cuDNN convolutions) as chosen, and
    cuDNN autotuning when the batch shapes are bounded (trainer/buckets.py), since it times every
    algorithm once per new convolution shape and pays off only when shapes repeat. Returns a note for the log."""
    if device.type != "cuda":
        return ""
    torch.backends.cuda.matmul.allow_tf32 = precision.tf32
    torch.backends.cudnn.allow_tf32 = precision.tf32
    torch.backends.cudnn.benchmark = bounded_shapes
    return ("cuDNN autotuning on (shape buckets bound the shapes)" if bounded_shapes else
            "cuDNN autotuning off (unbounded batch shapes: each new one would be timed)")
