#!/usr/bin/env bash
# GPU throughput on a GPU machine (< 8 min on an H200): ViT-B-16-quickgelu, random init, bf16 -- CITE step
# images/s at batch 32/64/128 with the cached teacher, evaluation images/s at batch 256 on device tensors and
# through the real input path (synthetic 500x375 JPEGs), peak GPU memory, MFU against 790 TFLOP/s.
# Usage: bench/gpu.sh [extra gpu_bench.py flags]; PYTHON=... picks the interpreter, OUT=... where the JSON goes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT_DIR="${OUT:-runs/gpu}"
mkdir -p "$OUT_DIR"
df -h /dev/shm || true  # DataLoader workers hand batches over through it
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
WORKERS="${WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}"
timeout 470 "$PY" -m bench.gpu_bench --workers "$WORKERS" --json "$OUT_DIR/gpu_bench.json" "$@"
