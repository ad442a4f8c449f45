#!/usr/bin/env bash
# Every CUDA check and GPU figure of the project in one call that fits one GPU window; --rehearse runs the
# same steps on the CPU at tiny sizes (CI does). See bench/gpu_check.py for the steps, limits and files.
#
#   here, before a window:  python -m bench.gpu_wheels
#   on the GPU machine:     OUT=<folder> bash bench/gpu_check.sh             (the call carries .whl)
#   on any CPU:             OUT=<folder> bash bench/gpu_check.sh --rehearse
#
# Exit status: 0 every step passed, 1 a step failed, 2 the wheels or the preflight stopped the run.
cd "$(dirname "$0")/.." || exit 2
exec python3 -m bench.gpu_check "$@"
