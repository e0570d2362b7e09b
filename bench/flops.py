"""Arithmetic of a training step, and what a card could do at most: for "achieved TFLOP/s, share of peak".

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over a forward and a backward pass
(matmuls, convolutions, attention: the work tensor cores do; elementwise ops, norms and the optimizer are
not counted, as in the usual model-FLOPs convention). Padding is counted as the card computes it.

Peaks are the vendors' dense tensor-core figures (no sparsity) per precision, TFLOP/s. "tf32" is what fp32
matmuls and convolutions run at on Ampere and newer when TF32 is allowed (the trainer allows it there).

Counting is slow (seconds per shape, even on the meta device), and a session has hundreds of batch shapes,
so ``FlopModel`` counts a few shapes on the meta device (no memory, no arithmetic) and fits the exact form a
training step's FLOPs per sample take in the image width W and the target positions L: the CNN and the
memory's key/value projections grow with W, the decoder's projections and MLP with L, cross-attention with
W x L, self-attention with L x L. Two more counted shapes check the fit. (On the meta device attention is
counted as its matmuls; the counter has no formula for a CPU's fused attention kernel, so counting on a CPU
would leave attention out.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# (width, target positions); "max" is the longest the model takes (its max_len - 1).
FIT_SHAPES = ((64, 16), (64, "max"), (512, 16), (512, "max"), (1024, 16), (1024, "max"), (256, 40), (128, 32))
CHECK_SHAPES = ((336, 24), (976, 48))

# (name fragment as torch.cuda.get_device_name reports it, {precision: dense peak TFLOP/s}); first match wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
    ("P100", {"fp16": 18.7, "fp32": 9.3}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
)
T4_FP16_PEAK = 65.0


def peak_tflops(device_name: str, precision: str, tf32: bool = False) -> float | None:
    """The card's dense peak for the precision its matmuls and convolutions run in; None for an unknown
    card or a precision it lacks (a CPU has no entry)."""
    key = "tf32" if precision == "fp32" and tf32 else precision
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in device_name:
            return peaks.get(key)
    return None


def training_flops(model: Any, images: Any, tgt_in: Any, tgt_out: Any, widths: Any) -> int:
    """FLOPs of one forward + backward of ``model`` on this batch (the trainer's loss), in fp32, so the count
    does not depend on autocast. Gradients are left zeroed; BatchNorm running statistics move as in a step."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.tokenizer import Vocab

    model.train()
    with FlopCounterMode(display=False) as counter:
        logits = model(images, tgt_in, widths)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=Vocab.PAD)
        loss.backward()
    model.zero_grad(set_to_none=True)
    del logits, loss
    if images.is_cuda:
        torch.cuda.synchronize()
    return int(counter.get_total_flops())


def t4_estimate(flops_per_sample: float, utilisations: tuple[float, ...] = (0.05, 0.10, 0.25, 0.40),
                target: float = 100.0) -> dict[str, float]:
    """Samples/s a T4 would train at in fp16 if its tensor cores reached each utilisation of their 65 TFLOP/s
    peak (an estimate, not a measurement), and the utilisation ``target`` samples/s needs."""
    out = {f"t4_fp16_samples_per_s_at_{round(100 * u)}pct": T4_FP16_PEAK * 1e12 * u / flops_per_sample
           for u in utilisations}
    out[f"t4_utilisation_for_{target:.0f}_samples_per_s"] = target * flops_per_sample / (T4_FP16_PEAK * 1e12)
    return out


def _terms(width: float, length: float) -> list[float]:
    return [width, length, width * length, length * length, 1.0]


@dataclass(frozen=True)
class FlopModel:
    """Training FLOPs per sample as a function of the padded image width and target positions."""

    coefficients: tuple[float, ...]
    fit_error: float  # largest relative error on CHECK_SHAPES

    def per_sample(self, width: int, length: int) -> float:
        return float(np.dot(self.coefficients, _terms(width, length)))

    @classmethod
    def fit(cls, model_config: Any, height: int, cache_dir: str | Path | None = None) -> FlopModel:
        """Counted and fitted, or read from ``cache_dir`` where an earlier run left the same model's fit
        (counting takes seconds per shape; gpu.sh runs the same model many times)."""
        key = hashlib.sha256(json.dumps([model_config.to_dict(), height, FIT_SHAPES, CHECK_SHAPES]).encode()).hexdigest()
        path = Path(cache_dir) / f"flops-{key[:16]}.json" if cache_dir else None
        if path is not None and path.is_file():
            saved = json.loads(path.read_text())
            return cls(tuple(saved["coefficients"]), saved["fit_error"])
        fitted = cls._count_and_fit(model_config, height)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"coefficients": fitted.coefficients, "fit_error": fitted.fit_error}))
        return fitted

    @classmethod
    def _count_and_fit(cls, model_config: Any, height: int) -> FlopModel:
        import torch

        from trainer.model import ImageToLatex

        with torch.device("meta"):
            model = ImageToLatex(model_config)

        def counted(width: int, length: int) -> float:
            meta = torch.device("meta")
            images = torch.zeros(2, 1, height, width, device=meta)
            tokens = torch.zeros(2, length, dtype=torch.long, device=meta)
            return training_flops(model, images, tokens, tokens, torch.full((2,), width, device=meta)) / 2

        longest = model_config.max_len - 1
        shapes = [(w, longest if n == "max" else min(int(n), longest)) for w, n in FIT_SHAPES]
        rows = np.array([_terms(w, n) for w, n in shapes])
        values = np.array([counted(w, n) for w, n in shapes])
        coefficients = np.linalg.lstsq(rows, values, rcond=None)[0]
        fitted = cls(tuple(float(c) for c in coefficients), 0.0)
        checks = [(w, min(n, longest)) for w, n in CHECK_SHAPES]
        error = max(abs(fitted.per_sample(w, n) / counted(w, n) - 1) for w, n in checks)
        return cls(fitted.coefficients, float(error))
