#!/usr/bin/env bash
# Every CUDA check and GPU figure of the project in one call, for whoever has a GPU for a few minutes.
#
# On the GPU machine, from the repository root:   bench/gpu_check.sh
# Takes under 8 minutes (the step limits add up to 470 s). Needs PyTorch with CUDA; the other Python dependencies are installed
# from .whl/ when that folder exists (bench/gpu_wheels.sh fills it on a machine with pip access, for GPU images
# without a package index). The parity fixtures are read from shared/ inside the repository or ../shared.
#
# Steps, each bounded in time, each run even if an earlier one failed:
#   1. the tests marked `cuda` (fp32 parity on the GPU with TF32 off, bf16/fp16, GPU paste and RLE, warm-up,
#      CUDA graph replays equal to eager runs);
#   2. model throughput: lite V-39 and V-99, fp32/bf16/fp16, batch 1, 8, 32 (bench/model_bench.py);
#   3. CUDA graphs off and on: lite V-39 in fp16 at batch 1 and 8, measured round-robin (bench/model_bench.py);
#   4. roofline: achieved GFLOP/s against the GPU's measured conv and matmul peaks (bench/roofline.py);
#   5. the service under load on the GPU in fp16, lite V-39 at several concurrencies (bench/load.py).
# Results: bench/results/*.json, and when $OUT is set a copy there of this run's results and nvidia-smi line,
# with the steps' logs as one file (a device machine gives back at most 8 files).
# Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
python=python3
results=bench/results
mkdir -p "$results"
marker=$(mktemp)
failed=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 seconds=$2
  shift 2
  echo "== $name"
  if ! timeout "$seconds" "$@" 2>&1 | tee "$results/gpu-$name.log"; then
    failed+=("$name")
  fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$results/gpu-$(date -u +%Y%m%dT%H%M%SZ).txt"
$python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

step tests 120 $python -m pytest -m cuda -q -p no:cacheprovider tests
step model 150 $python -m bench.model_bench --device cuda --threads 8 --runs 20 --warmup 3 \
  --config centermask_lite_V_39_eSE_FPN_ms_4x centermask_V_99_eSE_FPN_ms_3x \
  --precision fp32 bf16 fp16 --batch-size 1 8 32 --size 480x640
# Small on purpose (one config, one precision, two batch sizes): the capture itself takes a second or two.
step graphs 45 $python -m bench.model_bench --device cuda --threads 8 --runs 20 --warmup 3 \
  --config centermask_lite_V_39_eSE_FPN_ms_4x --precision fp16 --cuda-graphs off on --batch-size 1 8 --size 480x640
step roofline 45 $python -m bench.roofline --device cuda --threads 8 --runs 10 \
  --config centermask_lite_V_39_eSE_FPN_ms_4x centermask_V_99_eSE_FPN_ms_3x --precision fp32 bf16 fp16
step load 110 $python -m bench.load --spawn --device cuda --precision fp16 \
  --rule-config centermask_lite_V_39_eSE_FPN_ms_4x --batch-size 32 --concurrency 16 64 128 \
  --requests 3000 --duration 20 --in-process-seconds 8

if [ -n "${OUT:-}" ]; then
  find "$results" -newer "$marker" -type f \( -name '*.json' -o -name '*.txt' \) | head -n 7 | xargs -r cp -t "$OUT"
  find "$results" -newer "$marker" -type f -name 'gpu-*.log' | sort | xargs -r tail -n +1 >"$OUT/gpu-steps.log"
fi
rm -f "$marker"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed steps: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
