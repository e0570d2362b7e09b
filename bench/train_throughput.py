"""Training-step throughput of the trainer, and what a session spends before its first step.

    python bench/train_throughput.py [--model_size base] [--batch_size 32] [--device auto|cpu|cuda]
        [--precision auto|fp16|bf16|fp32] [--shape_buckets/--no-shape_buckets] [--compile]
        [--channels_last/--no-channels_last] [--workers N] [--steps 20] [--ddp] [--json PATH]

Runs the real trainer code in this process (synthetic formulas, generated once and cached) and prints JSON
and a one-line summary: samples/s and target tokens/s of a training step in the steady state (the timed
batches replayed, so every shape has been met once) and on first meeting (``cold_*``, with the extra time a
step with a new image shape or a new target length costs), the share of step time spent
waiting on data, the padding share of the image pixels, seconds from process start to the first training
step (and its parts: data, model build, restore), checkpoint save and pack time, and an estimate of the
start-up time on the `full` data set (76k train + 8.5k validation images) from the measured per-image
decode+preprocess time. Also: the precision the trainer chose and why, the distinct (width, target length)
shapes of an epoch and of the timed steps, pixel and target (PAD) padding shares, FLOPs per training sample
(counted over the timed batches' shapes: bench/flops.py), the TFLOP/s that achieves and its share of the card's
peak for that precision, and validation seconds per 1,000 samples. ``--ddp`` runs the same measurement in 1 and in 2 processes (torchrun, gloo on CPU,
nccl on CUDA) and reports the scaling factor of global samples/s.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before torch is imported: import time is part of a session's start-up

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FULL_TRAIN, FULL_VAL = 76_000, 8_500  # linxy/LaTeX_OCR `full`
KAGGLE_CPUS = 4  # CPU cores of a Kaggle GPU session


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_size", default="base", choices=("tiny", "small", "base"))
    p.add_argument("--batch_size", type=int, default=32, help="per process (32 = a T4 session's default)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp16", "bf16", "fp32"),
                   help="the trainer's --precision (auto: per device, trainer/precision.py)")
    p.add_argument("--shape_buckets", action=argparse.BooleanOptionalAction, default=True,
                   help="the trainer's shape buckets (--no-shape_buckets: each batch its own shape, the old way)")
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                   help="count FLOPs per training sample (one small forward+backward per distinct timed shape)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported)")
    p.add_argument("--compile_mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format for the CNN (the trainer's default)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cudnn, compile)")
    p.add_argument("--samples", type=int, default=512, help="synthetic training images")
    p.add_argument("--val_samples", type=int, default=128,
                   help="synthetic validation images (one validation pass is timed; ranks share its batches)")
    p.add_argument("--cache_dir", default=None, help="synthetic-set cache (default: $KR_CACHE_DIR or a temp dir)")
    p.add_argument("--cudnn_benchmark", default="auto", choices=("auto", "on", "off"),
                   help="cuDNN autotuning per convolution shape; auto: the trainer's choice (on with shape buckets)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile this many steps and report the kernels that take the most time")
    p.add_argument("--ddp", action="store_true", help="also run 2 processes via torchrun; report the scaling")
    p.add_argument("--json", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def cache_dir(a: argparse.Namespace) -> str:
    return a.cache_dir or os.environ.get("KR_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "kr-bench-cache")


def train_config(a: argparse.Namespace, out_dir: Path) -> Any:
    from trainer.config import TrainConfig

    cfg = TrainConfig(data_name="synthetic", synthetic_train=a.samples, synthetic_val=a.val_samples, synthetic_test=8,
                      cache_dir=cache_dir(a), out_dir=str(out_dir), model_size=a.model_size,
                      batch_size=a.batch_size, num_workers=a.workers, device=a.device, threads=a.threads,
                      log_every=10**9, save_every_minutes=10**6)
    # Options the trainer may not have had when a BEFORE figure was taken: set only when asked for.
    options = (("precision", a.precision), ("shape_buckets", a.shape_buckets), ("compile", a.compile),
               ("channels_last", a.channels_last), ("compile_mode", a.compile_mode))
    for name, value in options:
        if hasattr(cfg, name):
            setattr(cfg, name, value)
        elif name == "precision" and hasattr(cfg, "amp"):  # a trainer from before --precision
            cfg.amp = value != "fp32"
        elif value and name not in ("channels_last", "shape_buckets", "precision", "compile_mode"):
            raise SystemExit(f"error: this trainer has no {name} option")
    return cfg


def measure_prepare(cfg: Any) -> dict[str, float]:
    """Seconds to read the raw split, and per image to decode + preprocess + tokenize it (one process)."""
    from trainer.data import load_texts_and_images, prepare_split
    from trainer.images import ImageSpec
    from trainer.tokenizer import Vocab

    began = time.time()
    texts, images = load_texts_and_images(_data_config(cfg), "train")
    read_s = time.time() - began
    vocab = Vocab.build(texts)
    began = time.time()
    prepare_split(texts, images, vocab, ImageSpec(), cfg.max_target_len)
    return {"read_s": read_s, "prepare_per_image_ms": 1000 * (time.time() - began) / len(texts)}


def _data_config(cfg: Any) -> Any:
    from trainer.data import DataConfig

    return DataConfig(data_name="synthetic", use_huggingface=False, cache_dir=cfg.cache_dir,
                      synthetic_train=cfg.synthetic_train, synthetic_val=cfg.synthetic_val,
                      synthetic_test=cfg.synthetic_test, seed=cfg.seed)


def build_trainer(cfg: Any) -> tuple[Any, dict[str, float]]:
    """A set-up Trainer and the seconds its setup took, by part."""
    from trainer import train
    from trainer.logs import setup_logging

    runtime = _runtime(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    setup_logging(Path(cfg.out_dir), enabled=False)
    trainer = train.Trainer(cfg, runtime, PROCESS_START)
    parts: dict[str, float] = {}
    _time_method(trainer, "_load_train", parts, "data_train_s")
    _time_method(trainer, "_load_validation", parts, "data_val_s")
    _time_method(trainer, "_build_model", parts, "model_build_s")
    began = time.time()
    trainer.setup()
    parts["setup_s"] = time.time() - began
    return trainer, parts


def _runtime(cfg: Any) -> Any:
    try:
        from trainer.distributed import init_runtime
    except ImportError:  # a trainer without DDP support
        from trainer.runtime import detect_runtime

        return detect_runtime(cfg.device)
    return init_runtime(cfg.device)


def _time_method(obj: Any, name: str, parts: dict[str, float], key: str) -> None:
    original = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            parts[key] = time.time() - began

    setattr(obj, name, timed)


def synchronize(trainer: Any) -> None:
    import torch

    if trainer.runtime.is_cuda:
        torch.cuda.synchronize()


def shape_of(batch: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What a cuDNN/cuBLAS plan cache keys on for a training step: the image batch and the target batch."""
    return tuple(batch.images.shape), tuple(batch.tgt_in.shape)


class StepTimer:
    """Runs training steps one at a time (synchronized, so each step's time is its own) and sorts them by
    whether the step's shapes were new to this process. A new image shape means new convolution plans (cuDNN
    builds or looks one up per shape when not autotuning); a new target length only means new decoder shapes."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.seen_images: set[tuple[int, ...]] = set()
        self.seen_shapes: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()

    def run(self, epochs_and_counts: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per step: data wait, busy time, samples, target tokens and novelty, over the first ``count``
        batches of each listed epoch (the sampler is a pure function of the epoch, so a list can be replayed)."""
        steps = []
        loader = self.trainer._loader()
        for epoch, count in epochs_and_counts:
            self.trainer.sampler.set_epoch(epoch, 0)
            iterator = iter(loader)
            for _ in range(count):
                began = time.time()
                batch = next(iterator, None)
                if batch is None:
                    break
                got = time.time()
                steps.append(self._step(batch, began, got))
        return steps

    def _step(self, batch: Any, began: float, got: float) -> dict[str, Any]:
        from trainer.data import Vocab

        shape = shape_of(batch)
        images = shape[0]
        novelty = "new_image_shape" if images not in self.seen_images else (
            "new_target_length" if shape not in self.seen_shapes else "seen")
        self.seen_images.add(images)
        self.seen_shapes.add(shape)
        self.trainer._train_step(batch)
        synchronize(self.trainer)
        return {"wait": got - began, "busy": time.time() - got, "samples": len(batch),
                "tokens": int((batch.tgt_out != Vocab.PAD).sum()), "novelty": novelty, "got": got,
                "width": int(batch.images.shape[-1]), "length": int(batch.tgt_in.shape[1])}


def epoch_plan(trainer: Any, first_epoch: int, steps: int) -> list[tuple[int, int]]:
    """Enough (epoch, batch count) pairs from ``first_epoch`` on to make ``steps`` steps."""
    per_epoch = trainer.steps_per_epoch
    plan, epoch = [], first_epoch
    while steps > 0:
        plan.append((epoch, min(steps, per_epoch)))
        steps -= per_epoch
        epoch += 1
    return plan


def rates(steps: list[dict[str, Any]], world: int) -> dict[str, float]:
    wait = sum(s["wait"] for s in steps)
    total = wait + sum(s["busy"] for s in steps)
    return {"samples_per_s": world * sum(s["samples"] for s in steps) / total,
            "tokens_per_s": world * sum(s["tokens"] for s in steps) / total,
            "step_ms": 1000 * total / len(steps), "data_wait_share": wait / total}


def measure_steps(trainer: Any, warmup: int, steps: int) -> dict[str, Any]:
    """Training-step rate, cold and warm. Warm-up steps come from a far epoch (allocator, cuBLAS handles,
    workers); then the same ``steps`` batches run twice: the first pass meets many batch shapes for the first
    time (as the first epoch of a session does), the replay meets none. The replay is the steady state a
    12-hour session trains at; the difference, per new shape, is what each new shape costs once."""
    timer = StepTimer(trainer)
    world = trainer.runtime.world_size
    warm_up = timer.run(epoch_plan(trainer, 10_000, warmup)) if warmup else []
    plan = epoch_plan(trainer, 0, steps)
    cold = timer.run(plan)
    warm = timer.run(plan)
    first = (warm_up or cold)[0]
    result: dict[str, Any] = rates(warm, world)
    result["distinct_shapes_met"] = len(timer.seen_shapes)  # warm-up, first pass and replay
    result |= {f"cold_{k}": v for k, v in rates(cold, world).items()}
    result |= {"first_step_after_start_s": first["got"] - PROCESS_START,
               "warmup_steps_s": sum(s["wait"] + s["busy"] for s in warm_up)}
    result |= new_shape_costs(cold, warm)
    result["steps"] = warm  # for the FLOPs; popped before printing
    return result


def new_shape_costs(cold: list[dict[str, Any]], warm: list[dict[str, Any]]) -> dict[str, Any]:
    """How many cold steps met a new image shape or only a new target length, and the mean extra
    milliseconds such a step took over its own replay."""
    out: dict[str, Any] = {}
    for novelty in ("new_image_shape", "new_target_length", "seen"):
        pairs = [(c, w) for c, w in zip(cold, warm, strict=True) if c["novelty"] == novelty]
        out[f"steps_{novelty}"] = len(pairs)
        out[f"extra_ms_{novelty}"] = (1000 * sum(c["busy"] - w["busy"] for c, w in pairs) / len(pairs)
                                      if pairs else None)
    return out


def epoch_shape_figures(trainer: Any, epoch: int = 0) -> dict[str, Any]:
    """Distinct (width, target length) shapes of one epoch's collated batches, and their padding shares."""
    from trainer.buckets import epoch_shapes, target_lengths

    shapes = epoch_shapes(trainer.sampler.epoch_batches(epoch), trainer.train_split.widths,
                          target_lengths(trainer.train_split.targets), getattr(trainer, "buckets", None))
    return {"padding_share": shapes.pixel_padding, "token_padding_share": shapes.token_padding,
            "epoch_distinct_shapes": shapes.distinct_shapes, "distinct_batch_widths": shapes.distinct_widths,
            "epoch_distinct_lengths": shapes.distinct_lengths}


def measure_flops(trainer: Any, steps: list[dict[str, Any]], cache: str | None = None) -> dict[str, Any]:
    """FLOPs per training sample over ``steps`` (their padded widths and target positions), from the counted
    and fitted FLOPs of this model (bench/flops.py)."""
    from bench.flops import FlopModel

    flops = FlopModel.fit(trainer.model.cfg, trainer.spec.height, cache)
    total = sum(flops.per_sample(s["width"], s["length"]) * s["samples"] for s in steps)
    return {"flops_per_sample": total / sum(s["samples"] for s in steps), "flops_fit_error": flops.fit_error}


def achieved(result: dict[str, Any], trainer: Any) -> dict[str, Any]:
    """TFLOP/s reached in the steady state and its share of the card's peak for the precision used."""
    import torch

    from bench.flops import peak_tflops

    if not result.get("flops_per_sample"):
        return {}
    name = torch.cuda.get_device_name(trainer.runtime.device) if trainer.runtime.is_cuda else "cpu"
    precision = getattr(trainer, "precision", None)
    precision_name = precision.name if precision is not None else ("fp16" if trainer.runtime.is_cuda else "fp32")
    peak = peak_tflops(name, precision_name, bool(precision is not None and precision.tf32))
    tflops = result["flops_per_sample"] * result["samples_per_s"] / 1e12
    return {"device_name": name, "achieved_tflops": tflops, "peak_tflops": peak,
            "share_of_peak": tflops / peak if peak else None,
            "cold_achieved_tflops": result["flops_per_sample"] * result["cold_samples_per_s"] / 1e12}


def profile_steps(trainer: Any, steps: int, top: int = 8) -> dict[str, list[dict[str, Any]]]:
    """Profiles ``steps`` training steps whose image shapes are certainly new (each batch widened with blank
    columns to a width no batch has), then the same steps again: the ops that take the most CPU and GPU self
    time in each. A per-shape cost shows as CPU time in the cold profile only (e.g. cuDNN building plans);
    a slow kernel choice shows as GPU time in both."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.runtime.is_cuda else [])
    batches = widened_batches(trainer, steps)
    out: dict[str, list[dict[str, Any]]] = {}
    for phase in ("cold", "warm"):
        with profile(activities=activities) as prof:
            for batch in batches:
                trainer._train_step(batch)
                synchronize(trainer)
        averages = prof.key_averages()
        out[f"{phase}_cpu"] = top_ops(averages, "self_cpu_time_total", len(batches), top)
        if trainer.runtime.is_cuda:
            out[f"{phase}_gpu"] = top_ops(averages, "self_device_time_total", len(batches), top)
    return out


def widened_batches(trainer: Any, count: int) -> list[Any]:
    """``count`` batches padded on the right to widths beyond ``max_width`` (multiples of 16, so the CNN's
    downsampling stays exact): shapes no training step has met. Padding columns are blank and masked."""
    import torch.nn.functional as F

    from trainer.data import Batch

    trainer.sampler.set_epoch(0, 0)
    iterator = iter(trainer._loader())
    batches = []
    for index in range(count):
        batch = next(iterator)
        extra = trainer.spec.max_width + 16 * (index + 1) - batch.images.shape[-1]
        batches.append(Batch(F.pad(batch.images, (0, extra)), batch.tgt_in, batch.tgt_out, batch.widths))
    return batches


def top_ops(averages: Any, attribute: str, steps: int, top: int) -> list[dict[str, Any]]:
    def self_us(event: Any) -> float:
        return float(getattr(event, attribute, 0) or 0)

    events = sorted(averages, key=self_us, reverse=True)[:top]
    return [{"name": e.key[:100], "self_ms_per_step": self_us(e) / 1000 / steps, "calls": e.count} for e in events]


def measure_validation(trainer: Any, passes: int = 2) -> float:
    """Seconds of a validation pass (greedy decoding of every validation sample, spread over the ranks): the
    fastest of ``passes``, as the first meets its decoding shapes for the first time."""
    times = []
    for _ in range(passes):
        synchronize(trainer)
        began = time.time()
        trainer._validate()
        synchronize(trainer)
        times.append(time.time() - began)
    return min(times)


def measure_save(trainer: Any) -> dict[str, float]:
    """A full save (serialize, hash, write, manifest, tarball) and the tarball packing alone."""
    from trainer import checkpoint as ckpt

    if not trainer.runtime.is_main_process:
        trainer._save(epoch_file=False, best_file=False)
        return {}
    began = time.time()
    trainer._save(epoch_file=False, best_file=False)
    save_s = time.time() - began
    last = trainer.ckpt_dir / ckpt.LAST_NAME
    began = time.time()
    ckpt.pack(trainer.out_dir, {last: ckpt.sha256_file(last)}, 0, 0, 1)
    pack_s = time.time() - began
    began = time.time()
    state = ckpt.load_checkpoint(last)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    return {"save_s": save_s, "pack_s": pack_s, "restore_s": time.time() - began,
            "checkpoint_mb": last.stat().st_size / 1e6}


def estimate_full_start(result: dict[str, Any]) -> float:
    """Seconds from kernel start to the first step on `full`, from the measured parts: decoding spread over
    the session's CPUs, plus the fixed costs measured here."""
    decode = result["prepare_per_image_ms"] / 1000 * (FULL_TRAIN + FULL_VAL) / KAGGLE_CPUS
    fixed = result["imports_s"] + result["model_build_s"] + result.get("restore_s", 0.0) + result["warmup_steps_s"]
    return decode + fixed


def new_shapes_session_s(result: dict[str, Any], trainer: Any) -> float:
    """Upper bound of what meeting shapes for the first time costs a whole session: every possible padded
    width once and every target length once, at the extra time measured per new shape."""
    buckets = getattr(trainer, "buckets", None)
    if buckets is not None:
        widths, lengths = len(buckets.widths), len(buckets.lengths() or ())
    else:
        widths, lengths = trainer.spec.max_width // trainer.spec.width_multiple, trainer.cfg.max_target_len + 1
    per_width = max(result.get("extra_ms_new_image_shape") or 0.0, 0.0)
    per_length = max(result.get("extra_ms_new_target_length") or 0.0, 0.0)
    return (widths * per_width + lengths * per_length) / 1000


def run_single(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    imports_s = time.time() - PROCESS_START
    out_dir = Path(tempfile.mkdtemp(prefix="kr-throughput-"))
    cfg = train_config(a, out_dir)
    result: dict[str, Any] = {"model_size": a.model_size, "batch_size": a.batch_size, "shape_buckets": a.shape_buckets,
                              "compile": a.compile, "compile_mode": a.compile_mode, "channels_last": a.channels_last, "workers": a.workers,
                              "threads": torch.get_num_threads(), "imports_s": imports_s}
    trainer, parts = build_trainer(cfg)
    if a.cudnn_benchmark != "auto":  # over the trainer's own choice (made in setup)
        torch.backends.cudnn.benchmark = a.cudnn_benchmark == "on"
    result["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark) and trainer.runtime.is_cuda
    precision = getattr(trainer, "precision", None)
    result |= {"precision": precision.name if precision else ("fp16" if a.precision != "fp32" else "fp32"),
               "precision_reason": precision.reason if precision else None,
               "tf32": bool(precision and precision.tf32)}
    result |= parts
    result |= {"device": str(trainer.runtime.device), "world_size": trainer.runtime.world_size,
               "parameters": sum(p.numel() for p in trainer.model.parameters())}
    result |= epoch_shape_figures(trainer)
    result |= measure_steps(trainer, a.warmup, a.steps)
    result["new_shapes_session_s"] = new_shapes_session_s(result, trainer)
    result["validation_s"] = measure_validation(trainer)
    result["validation_s_per_1000"] = 1000 * result["validation_s"] / max(len(trainer.val_split), 1)
    steps = result.pop("steps")
    if a.flops:
        result |= measure_flops(trainer, steps, cache_dir(a))
        result |= achieved(result, trainer)
    if a.profile:
        result["top_kernels"] = profile_steps(trainer, a.profile)
    result |= measure_save(trainer)
    if trainer.runtime.is_main_process:
        result |= measure_prepare(cfg)
        result["full_start_estimate_s"] = estimate_full_start(result)
    return result


def run_ddp(a: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """The same benchmark in 1 and in 2 processes; scaling = global samples/s of 2 over 1."""
    single = run_child(argv, 1)
    double = run_child(argv, 2)
    return {"single": single, "ddp2": double,
            "ddp_scaling": double["samples_per_s"] / single["samples_per_s"],
            "validation_scaling": single["validation_s"] / double["validation_s"]}


def run_child(argv: list[str], processes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kr-ddp-bench-") as folder:
        path = Path(folder) / "result.json"
        args = [a for a in argv if a != "--ddp"] + ["--json", str(path)]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   str(Path(__file__).resolve()), *args]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(path.read_text())


def summary(r: dict[str, Any]) -> str:
    if "ddp_scaling" in r:
        s, d = r["single"], r["ddp2"]
        return (f"ddp {s['device']}: 1 process {s['samples_per_s']:.1f} samples/s, 2 processes "
                f"{d['samples_per_s']:.1f} samples/s, scaling {r['ddp_scaling']:.2f}x; validation "
                f"{s['validation_s']:.1f}s -> {d['validation_s']:.1f}s ({r['validation_scaling']:.2f}x)")
    profile = r.get("top_kernels", {})
    kernels = "".join(f" | cold {k['name'][:40]} {k['self_ms_per_step']:.1f} ms/step"
                      for k in profile.get("cold_cpu", [])[:2])
    new_shape = r.get("extra_ms_new_image_shape")
    cold = (f" (first pass {r['cold_samples_per_s']:.1f}: {r['steps_new_image_shape']} new image shapes"
            + (f", +{new_shape:.0f} ms each" if new_shape is not None else "") + ")")
    flops = (f", {r['flops_per_sample'] / 1e9:.2f} GFLOP/sample, {r['achieved_tflops']:.2f} TFLOP/s"
             + (f" = {100 * r['share_of_peak']:.1f}% of peak" if r.get("share_of_peak") else "")
             if r.get("flops_per_sample") else "")
    buckets = "buckets" if r.get("shape_buckets", True) else "no buckets"
    return (f"{r['model_size']} b{r['batch_size']} {r['device']} {r.get('precision', '?')} {buckets}: "
            f"{r['samples_per_s']:.1f} samples/s{cold} "
            f"{r['tokens_per_s']:.0f} tok/s, step {r['step_ms']:.0f} ms{flops}, shapes met {r['distinct_shapes_met']} "
            f"(epoch {r['epoch_distinct_shapes']}), data wait {100 * r['data_wait_share']:.1f}%, "
            f"padding {100 * r['padding_share']:.1f}% px / {100 * r['token_padding_share']:.1f}% tokens, "
            f"validation {r['validation_s_per_1000']:.1f}s/1000, first step {r['first_step_after_start_s']:.1f}s, "
            f"save {r['save_s']:.2f}s (pack {r['pack_s']:.2f}s), full-set start ~{r['full_start_estimate_s']:.0f}s{kernels}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    result = run_ddp(a, argv) if a.ddp else run_single(a)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from trainer.distributed import shutdown

        shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    text = json.dumps(result, indent=2, sort_keys=True)
    if a.json:
        Path(a.json).write_text(text)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or a.ddp:
        print(text)
        print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
