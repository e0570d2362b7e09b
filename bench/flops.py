"""Arithmetic of a training step, and what a card could do at most: for "achieved TFLOP/s, share of peak".

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over a forward and a backward pass
(matmuls, convolutions, attention: the work tensor cores do; elementwise ops, norms and the optimizer are
not counted, as in the usual model-FLOPs convention). Padding is counted as the card computes it.

Peaks are the vendors' dense tensor-core figures (no sparsity) per precision, TFLOP/s. "tf32" is what fp32
matmuls and convolutions run at on Ampere and newer when TF32 is allowed (the trainer allows it there).
"""

from __future__ import annotations

from typing import Any

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


def t4_estimate(flops_per_sample: float, utilisations: tuple[float, ...] = (0.25, 0.40)) -> dict[str, float]:
    """Samples/s a T4 would train at in fp16 if its tensor cores reached each utilisation of their 65 TFLOP/s
    peak: an estimate, not a measurement."""
    return {f"t4_fp16_samples_per_s_at_{round(100 * u)}pct": T4_FP16_PEAK * 1e12 * u / flops_per_sample
            for u in utilisations}
