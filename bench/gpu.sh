#!/usr/bin/env bash
# Training throughput on a CUDA machine, in under 5 minutes: one GPU with fp16 (the default model and the
# batch size of a T4 session) against fp32, with and without each CUDA speed option (channels_last, on by
# default; cuDNN autotuning; torch.compile with --with-compile), and DDP with 2 processes when 2 GPUs are
# visible. Every rate is given twice: steady (every batch shape met before) and cold (first meeting), with the
# extra time a new image shape costs; fp16 and fp32 also get a profile of steps with new shapes and of their replay.
# Synthetic data is generated on the spot (small, cached in a temp dir). Needs only torch, torchvision,
# numpy, pillow, matplotlib, pyarrow and editdistance.
#
#   bash bench/gpu.sh              # on a CUDA machine (add --with-compile to time torch.compile too)
#   bash bench/gpu.sh --cpu-smoke  # the same steps on CPU with the tiny model, in seconds (checks the script)
#
# JSON goes to $OUT if set, else ./bench/results; each run also prints its one-line summary.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
RESULTS="${OUT:-bench/results}"
mkdir -p "$RESULTS"
rm -f "$RESULTS"/throughput_*.json "$RESULTS/gpu_summary.json"  # the summary reads every run's file: this run's only
export KR_CACHE_DIR="${KR_CACHE_DIR:-$(mktemp -d -t kr-gpu-bench-XXXXXX)}"

SMOKE=0
if [[ "${1:-}" == "--cpu-smoke" || "${KR_CPU_SMOKE:-}" == "1" ]]; then
    SMOKE=1
    COMMON=(--device cpu --model_size tiny --batch_size 8 --samples 64 --val_samples 16 --steps 3 --warmup 1 --threads 1)
    GPUS=2  # exercise the DDP path too (gloo)
    export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-lo}"
else
    COMMON=(--device cuda --model_size base --batch_size 32 --samples 1024 --steps 30 --warmup 5 --workers 2)
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    if [[ "$GPUS" -lt 1 ]]; then
        echo "error: no CUDA device visible: run on a GPU machine, or pass --cpu-smoke to check the script" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi

run() {  # run NAME [extra flags...]
    local name=$1
    shift
    echo "== $name"
    "$PYTHON" bench/train_throughput.py "${COMMON[@]}" "$@" --json "$RESULTS/throughput_$name.json" | tail -n 1
}

run fp16 --profile 5
run fp16_nchw --no-channels_last  # the layout before channels_last became the default
if [[ "$SMOKE" == 0 ]]; then
    # On an H200, fp16 ran 4x slower than fp32 over steps that mostly met new shapes (bench/README.md): the
    # steady/cold split, the profiles and the cuDNN autotuning runs tell a per-shape set-up cost from a bad
    # convolution algorithm choice.
    run fp32 --no-amp --profile 5
    run fp16_cudnn_benchmark --cudnn_benchmark
    run fp32_cudnn_benchmark --no-amp --cudnn_benchmark
    if [[ " $* " == *" --with-compile "* ]]; then
        # Measured once: 0.91x the plain fp16 rate after 129 s of compiling (bench/README.md). Opt-in.
        run fp16_compile --compile
    fi
fi
if [[ "$GPUS" -ge 2 ]]; then
    run ddp2 --ddp
else
    echo "== ddp2: skipped (1 GPU visible)"
fi

# One summary: each option's speed-up over plain fp16, and after how many steps compiling pays for itself.
"$PYTHON" - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path

folder = Path(sys.argv[1])
runs = {p.stem.removeprefix("throughput_"): json.loads(p.read_text()) for p in folder.glob("throughput_*.json")}
base = runs["fp16"]
summary = {"device": base["device"], "model_size": base["model_size"], "batch_size": base["batch_size"],
           "fp16_samples_per_s": base["samples_per_s"], "data_wait_share": base["data_wait_share"],
           "padding_share": base["padding_share"], "full_start_estimate_s": base["full_start_estimate_s"],
           "save_s": base["save_s"], "pack_s": base["pack_s"]}
for name, r in runs.items():
    if "samples_per_s" in r and name != "fp16":
        summary[f"speedup_{name}"] = r["samples_per_s"] / base["samples_per_s"]
    if "cold_samples_per_s" in r:
        summary[f"{name}_steady_cold_samples_per_s"] = [r["samples_per_s"], r["cold_samples_per_s"]]
        summary[f"{name}_extra_ms_new_image_shape"] = r["extra_ms_new_image_shape"]
        summary[f"{name}_new_shapes_session_s"] = r["new_shapes_session_s"]
compiled = runs.get("fp16_compile")
if compiled:
    extra_s = compiled["warmup_steps_s"] - base["warmup_steps_s"]
    saved_per_step = (base["step_ms"] - compiled["step_ms"]) / 1000
    summary["compile_extra_s"] = extra_s
    summary["compile_break_even_steps"] = extra_s / saved_per_step if saved_per_step > 0 else None
if "ddp2" in runs:
    summary["ddp_scaling"] = runs["ddp2"]["ddp_scaling"]
    summary["ddp_validation_scaling"] = runs["ddp2"]["validation_scaling"]
(folder / "gpu_summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
