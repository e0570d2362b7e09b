"""Training-step throughput of the trainer, and what a session spends before its first step.

    python bench/train_throughput.py [--model_size base] [--batch_size 32] [--device auto|cpu|cuda]
        [--amp/--no-amp] [--compile] [--channels_last] [--workers N] [--steps 20] [--ddp] [--json PATH]

Runs the real trainer code in this process (synthetic formulas, generated once and cached) and prints JSON
and a one-line summary: samples/s and target tokens/s of a training step, the share of step time spent
waiting on data, the padding share of the image pixels, seconds from process start to the first training
step (and its parts: data, model build, restore), checkpoint save and pack time, and an estimate of the
start-up time on the `full` data set (76k train + 8.5k validation images) from the measured per-image
decode+preprocess time. ``--ddp`` runs the same measurement in 1 and in 2 processes (torchrun, gloo on CPU,
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
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="fp16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported)")
    p.add_argument("--channels_last", action="store_true", help="channels_last memory format for the CNN")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cudnn, compile)")
    p.add_argument("--samples", type=int, default=512, help="synthetic training images")
    p.add_argument("--cache_dir", default=None, help="synthetic-set cache (default: $KR_CACHE_DIR or a temp dir)")
    p.add_argument("--cudnn_benchmark", action="store_true",
                   help="let cuDNN time its convolution algorithms per input shape (torch.backends.cudnn.benchmark)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile this many steps and report the kernels that take the most time")
    p.add_argument("--ddp", action="store_true", help="also run 2 processes via torchrun; report the scaling")
    p.add_argument("--json", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def cache_dir(a: argparse.Namespace) -> str:
    return a.cache_dir or os.environ.get("KR_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "kr-bench-cache")


def train_config(a: argparse.Namespace, out_dir: Path) -> Any:
    from trainer.config import TrainConfig

    cfg = TrainConfig(data_name="synthetic", synthetic_train=a.samples, synthetic_val=32, synthetic_test=8,
                      cache_dir=cache_dir(a), out_dir=str(out_dir), model_size=a.model_size,
                      batch_size=a.batch_size, num_workers=a.workers, device=a.device, threads=a.threads,
                      log_every=10**9, save_every_minutes=10**6)
    # Options the trainer may not have had when a BEFORE figure was taken: set only when asked for.
    for name, value in (("amp", a.amp), ("compile", a.compile), ("channels_last", a.channels_last)):
        if hasattr(cfg, name):
            setattr(cfg, name, value)
        elif value and name != "amp":
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


def measure_steps(trainer: Any, warmup: int, steps: int) -> dict[str, float]:
    """Step rate over ``steps`` steps after ``warmup``; data wait = time blocked on the loader."""
    from trainer.data import Vocab

    loader = trainer._loader()
    wait = busy = 0.0
    samples = tokens = done = 0
    first_step_at = warmup_s = None
    epoch = 0
    while done < warmup + steps:
        trainer.sampler.set_epoch(epoch, 0)
        iterator = iter(loader)
        while done < warmup + steps:
            began = time.time()
            batch = next(iterator, None)
            if batch is None:
                break
            got = time.time()
            if first_step_at is None:
                first_step_at = got
            trainer._train_step(batch)
            synchronize(trainer)
            ended = time.time()
            done += 1
            if done == warmup:
                warmup_s = ended - first_step_at
            if done > warmup:
                wait += got - began
                busy += ended - got
                samples += len(batch)
                tokens += int((batch.tgt_out != Vocab.PAD).sum())
        epoch += 1
    total = wait + busy
    world = trainer.runtime.world_size
    return {"samples_per_s": world * samples / total, "tokens_per_s": world * tokens / total,
            "step_ms": 1000 * total / steps, "data_wait_share": wait / total,
            "first_step_after_start_s": (first_step_at or 0.0) - PROCESS_START,
            "warmup_steps_s": warmup_s or 0.0}


def profile_steps(trainer: Any, steps: int, top: int = 10) -> list[dict[str, Any]]:
    """The operators and kernels that take the most self time over ``steps`` training steps: on a GPU this is
    what tells a slow kernel choice (e.g. an fp16 convolution algorithm) from launch overhead."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.runtime.is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trainer.sampler.set_epoch(0, 0)
    iterator = iter(trainer._loader())
    with profile(activities=activities) as prof:
        for _ in range(steps):
            batch = next(iterator, None)
            if batch is None:
                break
            trainer._train_step(batch)
            synchronize(trainer)

    def self_us(event: Any) -> float:
        if cuda:
            return float(getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0))
        return float(event.self_cpu_time_total)

    events = sorted(prof.key_averages(), key=self_us, reverse=True)[:top]
    return [{"name": e.key[:100], "self_ms_per_step": self_us(e) / 1000 / steps, "calls": e.count}
            for e in events]


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


def run_single(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    imports_s = time.time() - PROCESS_START
    out_dir = Path(tempfile.mkdtemp(prefix="kr-throughput-"))
    cfg = train_config(a, out_dir)
    result: dict[str, Any] = {"model_size": a.model_size, "batch_size": a.batch_size, "amp": a.amp,
                              "compile": a.compile, "channels_last": a.channels_last, "workers": a.workers,
                              "threads": torch.get_num_threads(), "imports_s": imports_s}
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    result["cudnn_benchmark"] = a.cudnn_benchmark
    trainer, parts = build_trainer(cfg)
    result |= parts
    result |= {"device": str(trainer.runtime.device), "world_size": trainer.runtime.world_size,
               "parameters": sum(p.numel() for p in trainer.model.parameters())}
    from trainer.data import padding_share

    result["padding_share"] = padding_share(trainer.sampler, trainer.train_split.widths, 0)
    result |= measure_steps(trainer, a.warmup, a.steps)
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
            "ddp_scaling": double["samples_per_s"] / single["samples_per_s"]}


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
                f"{d['samples_per_s']:.1f} samples/s, scaling {r['ddp_scaling']:.2f}x")
    kernels = "".join(f" | {k['name'][:48]} {k['self_ms_per_step']:.1f} ms/step" for k in r.get("top_kernels", [])[:3])
    return (f"{r['model_size']} b{r['batch_size']} {r['device']}: {r['samples_per_s']:.1f} samples/s "
            f"{r['tokens_per_s']:.0f} tok/s, step {r['step_ms']:.0f} ms, data wait {100 * r['data_wait_share']:.1f}%, "
            f"padding {100 * r['padding_share']:.1f}%, first step {r['first_step_after_start_s']:.1f}s, "
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
