#!/usr/bin/env bash
# Training throughput on a CUDA machine, in under 5 minutes: the default model and the batch size of a T4
# session in fp16, bf16 and fp32, each with the shape buckets (the default: few batch shapes, cuDNN
# autotuning on) and without them (each batch its own shape, the old way); then, shapes bounded,
# torch.compile and torch.compile with CUDA graphs (reduce-overhead) while time is left; DDP with 2 processes
# when 2 GPUs are visible. Every run reports steady and cold samples/s, FLOPs per sample, achieved TFLOP/s and
# its share of the card's peak for the precision, distinct shapes met, padding shares and validation time per
# 1,000 samples. Synthetic data is generated on the spot (small, cached in a temp dir). Needs only torch,
# torchvision, numpy, pillow, matplotlib, pyarrow and editdistance.
#
#   bash bench/gpu.sh              # on a CUDA machine (--no-compile skips the compile runs)
#   bash bench/gpu.sh --cpu-smoke  # the same script on CPU with the tiny model, in about a minute (checks it)
#
# JSON goes to $OUT if set, else ./bench/results (gpu_summary.json: every run side by side); each run also
# prints its one-line summary.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
RESULTS="${OUT:-bench/results}"
mkdir -p "$RESULTS"
rm -f "$RESULTS"/throughput_*.json "$RESULTS/gpu_summary.json"  # the summary reads every run's file: this run's only
export KR_CACHE_DIR="${KR_CACHE_DIR:-$(mktemp -d -t kr-gpu-bench-XXXXXX)}"
BUDGET_S=290  # optional runs start only while this much of the 5 minutes is not yet used
STARTED=$SECONDS

SMOKE=0
if [[ " $* " == *" --cpu-smoke "* || "${KR_CPU_SMOKE:-}" == "1" ]]; then
    SMOKE=1
    COMMON=(--device cpu --model_size tiny --batch_size 8 --samples 64 --val_samples 8 --steps 3 --warmup 1 --threads 1)
    GPUS=2  # exercise the DDP path too (gloo)
    export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-lo}"
else
    COMMON=(--device cuda --model_size base --batch_size 32 --samples 1024 --val_samples 64 --steps 30 --warmup 5 --workers 2)
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    if [[ "$GPUS" -lt 1 ]]; then
        echo "error: no CUDA device visible: run on a GPU machine, or pass --cpu-smoke to check the script" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader || true
fi

run() {  # run NAME [extra flags...]
    local name=$1
    shift
    echo "== $name"
    "$PYTHON" bench/train_throughput.py "${COMMON[@]}" "$@" --json "$RESULTS/throughput_$name.json" | tail -n 1
}

optional() {  # optional NAME SECONDS_NEEDED [extra flags...]: only with time left; a failure is reported, not fatal
    local name=$1 needed=$2
    shift 2
    if (( SECONDS - STARTED + needed > BUDGET_S )); then
        echo "== $name: skipped (would pass the 5-minute budget)"
        return 0
    fi
    run "$name" "$@" || echo "== $name: failed (see above)"
}

# Shape buckets on (the default) and off, per precision; the default precision (auto) is one of the three.
run fp16 --precision fp16 --profile 3
run fp16_nobuckets --precision fp16 --no-shape_buckets
run bf16 --precision bf16
if [[ "$SMOKE" == 0 ]]; then  # on a CPU fp16 already ran as fp32: the smoke skips the repeats
    run bf16_nobuckets --precision bf16 --no-shape_buckets
    run fp32 --precision fp32
    run fp32_nobuckets --precision fp32 --no-shape_buckets
fi
if [[ " $* " != *" --no-compile "* && "$SMOKE" == 0 ]]; then
    # Shapes bounded: compile meets a handful of shapes, CUDA graphs one recording per shape.
    optional auto_compile 90 --compile
    optional auto_cudagraphs 90 --compile --compile_mode reduce-overhead
fi
if [[ "$GPUS" -ge 2 ]]; then
    optional ddp2 40 --ddp
else
    echo "== ddp2: skipped (1 GPU visible)"
fi

# One summary: each run's figures side by side, speed-ups over fp16 without buckets (the old default).
"$PYTHON" - "$RESULTS" "$((SECONDS - STARTED))" <<'EOF'
import json, sys
from pathlib import Path

folder = Path(sys.argv[1])
runs = {p.stem.removeprefix("throughput_"): json.loads(p.read_text()) for p in sorted(folder.glob("throughput_*.json"))}
old = runs["fp16_nobuckets"]
summary = {"device": old["device"], "device_name": old.get("device_name"), "model_size": old["model_size"],
           "batch_size": old["batch_size"], "flops_per_sample": runs["fp16"].get("flops_per_sample"),
           "wall_s": int(sys.argv[2]), "runs": {}}
keys = ("precision", "shape_buckets", "cudnn_benchmark", "samples_per_s", "cold_samples_per_s", "achieved_tflops",
        "peak_tflops", "share_of_peak", "distinct_shapes_met", "epoch_distinct_shapes", "padding_share",
        "token_padding_share", "validation_s_per_1000", "extra_ms_new_image_shape", "new_shapes_session_s",
        "warmup_steps_s", "data_wait_share")
for name, r in runs.items():
    if "samples_per_s" not in r:
        continue
    summary["runs"][name] = {k: r.get(k) for k in keys} | {"speedup_over_fp16_nobuckets": r["samples_per_s"] / old["samples_per_s"]}
for name in ("auto_compile", "auto_cudagraphs"):
    compiled, plain = runs.get(name), runs.get(runs.get(name, {}).get("precision", ""))
    if compiled and plain:
        extra_s = compiled["warmup_steps_s"] - plain["warmup_steps_s"]
        saved_per_step = (plain["step_ms"] - compiled["step_ms"]) / 1000
        summary[f"{name}_extra_s"] = extra_s
        summary[f"{name}_break_even_steps"] = extra_s / saved_per_step if saved_per_step > 0 else None
if "ddp2" in runs:
    summary["ddp_scaling"] = runs["ddp2"]["ddp_scaling"]
    summary["ddp_validation_scaling"] = runs["ddp2"]["validation_scaling"]
(folder / "gpu_summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
