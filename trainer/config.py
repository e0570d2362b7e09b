"""The trainer's command line (docs/architecture.md §2) and the configuration it produces.

Parsing imports nothing heavy: ``python -m trainer --help`` and bad flags answer before torch loads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import NoReturn

from kr_contract.names import DATA_NAMES, MODEL_SIZES  # stdlib only: parsing still needs no torch

PRECISIONS = ("auto", "fp16", "bf16", "fp32")  # trainer/precision.py's, without importing torch here

BEST_METRICS = ("exact_match", "bleu4", "edit_score")
# Learning rates that train each size well with AdamW (smaller models tolerate larger steps).
DEFAULT_LR = {"tiny": 2e-3, "small": 6e-4, "base": 3e-4}


@dataclass
class TrainConfig:
    data_name: str = "synthetic"
    use_huggingface: bool | None = None
    hf_repo: str = "linxy/LaTeX_OCR"
    data_dir: str | None = None
    cache_dir: str | None = None
    synthetic_train: int = 4000
    synthetic_val: int = 300
    synthetic_test: int = 300
    out_dir: str = "."
    checkpoint: str | None = None
    max_epochs: int | None = None
    max_steps: int | None = None
    time_budget: float | None = None
    model_size: str = "base"
    seed: int = 0
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 500
    schedule_steps: int | None = None
    schedule_epochs: int = 50
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    augment: bool = False
    # Model shape on top of --model_size's preset (None: the preset's); a resumed run keeps its checkpoint's.
    d_model: int | None = None
    decoder_layers: int | None = None
    ff_dim: int | None = None
    cnn_channels: tuple[int, ...] | None = None
    dropout: float | None = None
    residual_encoder: bool = False
    max_target_len: int = 200
    image_height: int = 64
    max_width: int = 1024
    num_workers: int = 2
    save_every_minutes: float = 8.0
    log_every: int = 50
    best_metric: str = "exact_match"
    keep_epochs: int = 5
    keep_tarballs: int = 3
    val_max_samples: int = 0
    device: str = "auto"
    threads: int = 0
    precision: str = "auto"  # trainer/precision.py explains what auto picks per device
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode; reduce-overhead adds CUDA graphs
    channels_last: bool = True  # +11 % fp16 on an H200, +12-20 % on CPU (bench/README.md)
    shape_buckets: bool = True  # training batches padded to a few shapes (trainer/buckets.py)
    # The settings given on the command line (not defaulted): on resume these win over the checkpoint's.
    explicit: tuple[str, ...] = ()

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.model_size]

    @property
    def resolved_use_huggingface(self) -> bool:
        """Explicit flag wins; otherwise Hugging Face only for a named dataset without --data_dir."""
        if self.use_huggingface is not None:
            return self.use_huggingface
        return self.data_dir is None and self.data_name != "synthetic"

    def shape_overrides(self) -> dict[str, object]:
        """The model-shape flags as ModelConfig fields (None: the size's preset)."""
        return {"d_model": self.d_model, "decoder_layers": self.decoder_layers, "ff_dim": self.ff_dim,
                "cnn_channels": self.cnn_channels, "dropout": self.dropout,
                "residual": self.residual_encoder or None}

    def to_dict(self) -> dict[str, object]:
        saved = asdict(self)
        del saved["explicit"]  # how this run was started, not a setting of the model
        return saved


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage + error over two lines; kr's contract is one line that says what to do."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see python -m trainer --help)\n")
        raise SystemExit(2)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _multiple_of_16(text: str) -> int:
    """Image sizes: the CNN halves the height four times and the width three, so both must divide by 16."""
    value = int(text)
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 and at least 16, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _channels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,64,128,128, got {text!r}") from None
    if len(values) < 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need at least 4 positive channel counts (the CNN halves the height 4 times), got {text!r}")
    return values


def _dropout(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m trainer",
        description="Train the image-to-LaTeX OCR model; resumable exactly, stops in time before a deadline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data_flags(p)
    _add_run_flags(p)
    _add_optimization_flags(p)
    _add_artifact_flags(p)
    return p


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data_name", choices=DATA_NAMES, default="synthetic",
                   help="dataset configuration (linxy/LaTeX_OCR config, or the offline synthetic set)")
    hf = g.add_mutually_exclusive_group()
    hf.add_argument("--use_huggingface", dest="use_huggingface", action="store_true", default=None,
                    help="load with datasets.load_dataset(hf_repo, data_name) (default for named sets without --data_dir)")
    hf.add_argument("--no_huggingface", dest="use_huggingface", action="store_false",
                    help="never touch Hugging Face (needs --data_dir or --data_name synthetic)")
    g.add_argument("--hf_repo", default="linxy/LaTeX_OCR", help="Hugging Face dataset repository")
    g.add_argument("--data_dir", default=None,
                   help="local parquet files DIR/{train,validation,test}*.parquet with columns image, text")
    g.add_argument("--cache_dir", default=None, help="synthetic-set cache (default $KR_CACHE_DIR or ~/.cache/kaggle-runner)")
    g.add_argument("--synthetic_train", type=positive_int, default=4000, help="synthetic training samples")
    g.add_argument("--synthetic_val", type=positive_int, default=300, help="synthetic validation samples")
    g.add_argument("--synthetic_test", type=positive_int, default=300, help="synthetic test samples")
    g.add_argument("--max_target_len", type=positive_int, default=200,
                   help="longest target in tokens; longer texts are cut and counted in the log")
    g.add_argument("--image_height", type=_multiple_of_16, default=64,
                   help="model input height: taller images are shrunk to it, shorter ones padded (a resumed "
                        "run keeps its checkpoint's)")
    g.add_argument("--max_width", type=_multiple_of_16, default=1024,
                   help="model input width limit: wider images are shrunk to it (a resumed run keeps its checkpoint's)")
    g.add_argument("--val_max_samples", type=_non_negative_int, default=0,
                   help="validate on at most this many samples (0: the whole validation split)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run length and resume")
    g.add_argument("--checkpoint", default=None,
                   help="resume from PATH (a .pth.tar file or a checkpoints tarball) or 'latest' (newest valid "
                        "state in OUT_DIR/checkpoints or OUT_DIR's tarballs; starts fresh if there is none)")
    g.add_argument("--max_epochs", type=positive_int, default=None, help="train N more epochs in this run")
    g.add_argument("--max_steps", type=positive_int, default=None, help="train N more optimizer steps in this run")
    g.add_argument("--time_budget", type=_positive_float, default=None,
                   help="seconds this run may take, everything saved; the env var KR_DEADLINE (absolute Unix "
                        "time) also applies, the earlier wins")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train")
    g.add_argument("--threads", type=_non_negative_int, default=0,
                   help="CPU threads for torch (0: torch's default); 1 is much faster on a busy CPU")
    g.add_argument("--num_workers", type=_non_negative_int, default=2,
                   help="DataLoader worker processes (results do not depend on it)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training precision; auto: fp16 + gradient scaler on cards without bf16 (T4, P100), bf16 "
                        "on Ampere and newer (TF32 allowed there), fp32 on CPU (trainer/precision.py)")
    g.add_argument("--no_amp", dest="precision", action="store_const", const="fp32",
                   help="the old name of --precision fp32")
    g.add_argument("--shape_buckets", dest="shape_buckets", action="store_true", default=True,
                   help="pad training batches to a few fixed widths and target lengths (a multiple of 16), so a "
                        "session meets few shapes and cuDNN autotuning pays: the default")
    g.add_argument("--no_shape_buckets", dest="shape_buckets", action="store_false",
                   help="pad each training batch only to its widest image and longest target instead")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training model (pays off in long sessions; see bench/README.md)")
    g.add_argument("--compile_mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                   help="torch.compile mode with --compile; reduce-overhead replays CUDA graphs (one per batch shape)")
    g.add_argument("--channels_last", dest="channels_last", action="store_true", default=True,
                   help="channels_last (NHWC) memory layout for the CNN: the default, faster on GPU and CPU")
    g.add_argument("--no_channels_last", dest="channels_last", action="store_false",
                   help="contiguous (NCHW) layout for the CNN instead (same results up to rounding)")


def _add_optimization_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and optimization")
    g.add_argument("--model_size", choices=MODEL_SIZES, default="base",
                   help="base: sized for a 16 GB T4; small; tiny: CPU tests (a resumed run keeps its checkpoint's size)")
    g.add_argument("--seed", type=int, default=0, help="seed of initialization, data order and dropout")
    g.add_argument("--batch_size", type=positive_int, default=32, help="samples per optimizer step")
    g.add_argument("--lr", type=_positive_float, default=None,
                   help=f"peak learning rate (default by size: {DEFAULT_LR})")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay (matrices only)")
    g.add_argument("--warmup_steps", type=_non_negative_int, default=500, help="linear warmup steps")
    g.add_argument("--schedule_steps", type=positive_int, default=None,
                   help="cosine horizon in steps, fixed at the first run and kept in the checkpoint "
                        "(default: schedule_epochs x steps per epoch)")
    g.add_argument("--schedule_epochs", type=positive_int, default=50,
                   help="cosine horizon in epochs when --schedule_steps is not given")
    g.add_argument("--grad_clip", type=_positive_float, default=1.0, help="gradient norm clip")
    g.add_argument("--label_smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    g.add_argument("--augment", action="store_true",
                   help="augment training images (affine jitter, stroke thickness, blur, paper tone, noise; the "
                        "text never changes; never in validation or prediction): trainer/augment.py")
    _add_shape_flags(p)


def _add_shape_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model shape (on top of --model_size; a resumed run keeps its checkpoint's)")
    g.add_argument("--d_model", type=positive_int, default=None, help="decoder width (a multiple of the heads)")
    g.add_argument("--decoder_layers", type=positive_int, default=None, help="Transformer decoder layers")
    g.add_argument("--ff_dim", type=positive_int, default=None, help="decoder MLP width")
    g.add_argument("--cnn_channels", type=_channels, default=None, help="CNN stage widths, e.g. 32,64,128,128")
    g.add_argument("--dropout", type=_dropout, default=None, help="dropout in the decoder")
    g.add_argument("--residual_encoder", action="store_true",
                   help="residual blocks in the CNN's stages after the first (deeper encoder)")


def _add_artifact_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("outputs")
    g.add_argument("--out_dir", default=".", help="where checkpoints/, tarballs, training.log, trainer_result.json go")
    g.add_argument("--save_every_minutes", type=_positive_float, default=8.0,
                   help="refresh checkpoints/last.pth.tar and the tarballs this often (bounds lost work)")
    g.add_argument("--log_every", type=positive_int, default=50, help="a train metric line every N steps")
    g.add_argument("--best_metric", choices=BEST_METRICS, default="exact_match",
                   help="validation metric that picks BEST_ (ties broken by edit_score)")
    g.add_argument("--keep_epochs", type=positive_int, default=5, help="epoch checkpoints kept (newest)")
    g.add_argument("--keep_tarballs", type=positive_int, default=3, help="timestamped tarballs kept (newest)")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    return TrainConfig(**vars(namespace), explicit=given_on_command_line(parser, argv))


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[str, ...]:
    """The settings the command line names: the same parse with every default suppressed."""
    for action in parser._actions:  # argparse has no public way to ask which options were given
        action.default = argparse.SUPPRESS
    return tuple(sorted(vars(parser.parse_args(argv))))
