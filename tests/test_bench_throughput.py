"""The throughput benchmark's accounting: steady and cold rates, and the extra time per new shape."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    return module


def step(busy: float, novelty: str, wait: float = 0.0, samples: int = 32, tokens: int = 320) -> dict:
    return {"wait": wait, "busy": busy, "samples": samples, "tokens": tokens, "novelty": novelty, "got": 0.0}


def test_new_shape_cost_is_each_cold_step_minus_its_own_replay(bench) -> None:
    cold = [step(0.5, "new_image_shape"), step(0.3, "new_target_length"), step(0.1, "seen"),
            step(0.7, "new_image_shape")]
    warm = [step(0.1, "seen"), step(0.1, "seen"), step(0.1, "seen"), step(0.1, "seen")]
    costs = bench.new_shape_costs(cold, warm)
    assert costs["steps_new_image_shape"] == 2 and costs["extra_ms_new_image_shape"] == pytest.approx(500.0)
    assert costs["steps_new_target_length"] == 1 and costs["extra_ms_new_target_length"] == pytest.approx(200.0)
    assert costs["extra_ms_seen"] == pytest.approx(0.0)


def test_a_kind_of_step_that_never_happened_has_no_cost(bench) -> None:
    costs = bench.new_shape_costs([step(0.2, "seen")], [step(0.2, "seen")])
    assert costs["steps_new_image_shape"] == 0 and costs["extra_ms_new_image_shape"] is None


def test_rates_count_data_wait_in_the_step_time(bench) -> None:
    r = bench.rates([step(0.3, "seen", wait=0.1), step(0.3, "seen", wait=0.1)], world=2)
    assert r["samples_per_s"] == pytest.approx(2 * 64 / 0.8)
    assert r["data_wait_share"] == pytest.approx(0.25) and r["step_ms"] == pytest.approx(400.0)


def test_the_epoch_plan_spans_epochs_when_the_steps_outnumber_an_epoch(bench) -> None:
    trainer = SimpleNamespace(steps_per_epoch=16)
    assert bench.epoch_plan(trainer, 0, 40) == [(0, 16), (1, 16), (2, 8)]
    assert bench.epoch_plan(trainer, 5, 3) == [(5, 3)]


def test_session_bound_counts_every_width_and_every_target_length_once(bench) -> None:
    trainer = SimpleNamespace(spec=SimpleNamespace(max_width=1024, width_multiple=16),
                              cfg=SimpleNamespace(max_target_len=199))
    result = {"extra_ms_new_image_shape": 300.0, "extra_ms_new_target_length": -5.0}
    assert bench.new_shapes_session_s(result, trainer) == pytest.approx(64 * 0.3)


def test_session_bound_with_shape_buckets_counts_each_bucket_once(bench) -> None:
    from trainer.buckets import ShapeBuckets

    buckets = ShapeBuckets.for_training(1024, 16, 200)
    trainer = SimpleNamespace(spec=SimpleNamespace(max_width=1024, width_multiple=16),
                              cfg=SimpleNamespace(max_target_len=200), buckets=buckets)
    result = {"extra_ms_new_image_shape": 100.0, "extra_ms_new_target_length": 10.0}
    assert bench.new_shapes_session_s(result, trainer) == pytest.approx((21 * 0.1) + 13 * 0.01)


def test_peaks_are_per_card_and_precision() -> None:
    from bench.flops import peak_tflops

    assert peak_tflops("Tesla T4", "fp16") == 65.0 and peak_tflops("Tesla T4", "fp32") == 8.1
    assert peak_tflops("Tesla T4", "bf16") is None  # no bf16 on a T4
    assert peak_tflops("NVIDIA H200", "bf16") == 989.0
    assert peak_tflops("NVIDIA H200", "fp32", tf32=True) == 495.0 and peak_tflops("NVIDIA H200", "fp32") == 67.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32", tf32=True) == 156.0
    assert peak_tflops("cpu", "fp32") is None and peak_tflops("Some New GPU", "fp16") is None


def test_the_fitted_flops_equal_a_direct_count_at_other_shapes(tmp_path: Path) -> None:
    import torch

    from bench.flops import FlopModel, t4_estimate, training_flops
    from trainer.model import ImageToLatex, model_config_for

    cfg = model_config_for("tiny", 30, 64)
    fitted = FlopModel.fit(cfg, 32, tmp_path)
    assert fitted.fit_error < 1e-9 and FlopModel.fit(cfg, 32, tmp_path) == fitted  # the second from the cache
    assert len(list(tmp_path.glob("flops-*.json"))) == 1
    model = ImageToLatex(cfg)
    tokens = torch.randint(4, 30, (3, 21))
    # The math attention backend: the flop counter has no formula for CPU's fused attention kernel.
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        direct = training_flops(model, torch.rand(3, 1, 32, 208), tokens, tokens, torch.full((3,), 208))
    assert fitted.per_sample(208, 21) == pytest.approx(direct / 3, rel=1e-9)
    assert t4_estimate(1e9, (0.5,)) == {"t4_fp16_samples_per_s_at_50pct": pytest.approx(32_500.0),
                                        "t4_utilisation_for_100_samples_per_s": pytest.approx(100 / 65_000)}


def test_flops_per_sample_weights_each_step_by_its_samples(bench, monkeypatch) -> None:
    from bench import flops

    monkeypatch.setattr(flops.FlopModel, "fit", classmethod(lambda cls, cfg, height, cache=None: cls((1.0, 0.0, 0.0, 0.0, 0.0), 0.0)))
    trainer = SimpleNamespace(model=SimpleNamespace(cfg=None), spec=SimpleNamespace(height=64))
    steps = [step(0.1, "seen", samples=32) | {"width": 100, "length": 16},
             step(0.1, "seen", samples=16) | {"width": 400, "length": 16}]
    assert bench.measure_flops(trainer, steps)["flops_per_sample"] == pytest.approx((32 * 100 + 16 * 400) / 48)
