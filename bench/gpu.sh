#!/usr/bin/env bash
# Learner MFU and rollout throughput of a ~1.4B-parameter random-init video transformer (diffusers
# WanTransformer3DModel, Wan2.1-1.3B layout) in bf16 on one GPU; budget: 8 minutes on one H200.
#   bash bench/gpu.sh [--out bench/gpu.json]   # GPU: needs a CUDA torch + diffusers (pip install -e .)
#   bash bench/gpu.sh --dry-run                # CPU, tiny model: checks the script path in seconds
# Extra arguments go to bench/gpu_bench.py (--iters, --sample-steps, --rollout-iters, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if [ "${1:-}" = "--dry-run" ]; then
  shift
  exec timeout 120 "$PY" bench/gpu_bench.py --size tiny --device cpu --iters 2 --sample-steps 2 --rollout-iters 1 "$@"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" bench/gpu_bench.py --size 1b --device cuda "$@"
