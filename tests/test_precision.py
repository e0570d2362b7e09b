"""Precision per device (trainer/precision.py): the choice for each kind of card (the capability query is
mocked, no GPU needed), a gradient scaler for fp16 only, the flags, and checkpoints that resume under any
precision."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from tests.trainer_support import load_state, tiny_args
from trainer import train as train_module
from trainer.config import parse_args
from trainer.logs import close_logging, setup_logging
from trainer.precision import Precision, choose_precision
from trainer.runtime import detect_runtime

CUDA = torch.device("cuda", 0)  # a device object only: nothing here touches a GPU
CPU = torch.device("cpu")


def on_card(requested: str, capability: tuple[int, int], bf16: bool) -> Precision:
    return choose_precision(requested, CUDA, capability=lambda _: capability, has_bf16=lambda _: bf16)


@pytest.mark.parametrize(("card", "capability", "bf16", "requested", "expected"), [
    ("T4", (7, 5), False, "auto", ("fp16", True, False)),
    ("P100", (6, 0), False, "auto", ("fp16", True, False)),
    ("V100", (7, 0), False, "auto", ("fp16", True, False)),
    ("A100", (8, 0), True, "auto", ("bf16", False, True)),
    ("H200", (9, 0), True, "auto", ("bf16", False, True)),
    ("T4", (7, 5), True, "bf16", ("fp16", True, False)),  # emulated bf16 does not count
    ("T4", (7, 5), False, "fp32", ("fp32", False, False)),  # no TF32 before Ampere
    ("H200", (9, 0), True, "fp16", ("fp16", True, True)),
    ("H200", (9, 0), True, "fp32", ("fp32", False, True)),
])
def test_each_card_gets_its_precision(card: str, capability: tuple[int, int], bf16: bool, requested: str,
                                      expected: tuple[str, bool, bool]) -> None:
    chosen = on_card(requested, capability, bf16)
    assert (chosen.name, chosen.uses_scaler, chosen.tf32) == expected, card
    assert chosen.reason and chosen.name in chosen.describe()


@pytest.mark.parametrize(("requested", "expected"), [("auto", "fp32"), ("fp32", "fp32"), ("fp16", "fp32"),
                                                     ("bf16", "bf16")])
def test_a_cpu_trains_in_fp32_unless_bf16_is_asked_for(requested: str, expected: str) -> None:
    chosen = choose_precision(requested, CPU)
    assert chosen.name == expected and not chosen.tf32 and not chosen.uses_scaler


def test_only_fp16_gets_a_gradient_scaler_and_only_half_precisions_autocast() -> None:
    assert [Precision(n, "").uses_scaler for n in ("fp16", "bf16", "fp32")] == [True, False, False]
    assert [Precision(n, "").dtype for n in ("fp16", "bf16", "fp32")] == [torch.float16, torch.bfloat16, None]
    with Precision("bf16", "").autocast("cpu"):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16
    with Precision("fp32", "").autocast("cpu"):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision"):
        choose_precision("fp8", CPU)


def test_precision_flag_and_the_old_no_amp() -> None:
    assert parse_args(["--data_dir", "x"]).precision == "auto"
    assert parse_args(["--data_dir", "x", "--precision", "bf16"]).precision == "bf16"
    assert parse_args(["--data_dir", "x", "--no_amp"]).precision == "fp32"


def test_an_unknown_precision_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--data_dir", "x", "--precision", "half"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def train_in_process(out: Path, cache: Path, precision: str, *extra: str) -> train_module.Trainer:
    # One step of 8 per epoch (batch 4): no validation, whose decoding is slow in CPU bf16.
    cfg = parse_args(tiny_args(out, "--max_steps", "1", "--batch_size", "4", "--precision", precision, *extra,
                               cache_dir=cache))
    setup_logging(out, enabled=False)
    try:
        trainer = train_module.Trainer(cfg, detect_runtime("cpu"), time.time())
        trainer.setup()
        trainer.run()
    finally:
        close_logging()
    return trainer


def test_a_checkpoint_resumes_under_every_other_precision(tmp_path: Path, shared_cache_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 (with its scaler state) -> bf16 -> fp32 -> fp16 again, a step each, one output folder. A CPU
    never picks fp16 by itself, so that choice is forced: CPU autocast and GradScaler run it the same way."""
    out = tmp_path / "out"
    real_choice = train_module.choose_precision

    def forced(requested: str, device: torch.device) -> Precision:
        return Precision("fp16", "forced by the test") if requested == "fp16" else real_choice(requested, device)

    monkeypatch.setattr(train_module, "choose_precision", forced)
    last = out / "checkpoints" / "last.pth.tar"
    scalers, steps = [], []
    for precision in ("fp16", "bf16", "fp32", "fp16"):
        trainer = train_in_process(out, shared_cache_dir, precision, *(["--checkpoint", "latest"] if steps else []))
        assert trainer.precision.name == precision and trainer.scaler.is_enabled() == (precision == "fp16")
        state = load_state(last)
        scalers.append(state["scaler"])
        steps.append(state["progress"]["global_step"])
        assert torch.equal(state["model"]["embed.weight"], trainer.model.embed.weight.detach())
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
        assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
    assert steps == [1, 2, 3, 4]
    assert scalers[0]["scale"] > 0 and scalers[1] == scalers[2] == {} and scalers[3]["scale"] > 0
