#!/bin/bash
# The GPU check, one short script for a machine with an NVIDIA GPU, a Vulkan loader and
# PyTorch with CUDA: builds densessl with --features vulkan, times the same train steps as
# bench/compare.sh on the GPU (densessl on Vulkan, PyTorch on CUDA), and runs a short MoCo v2
# pre-training on the GPU. Results go to $OUT (default bench-gpu-out/) and stdout.
#   bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-gpu-out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  vulkaninfo --summary 2>/dev/null | grep -E "deviceName|apiVersion" | head -4 || echo "vulkaninfo not installed"
  nproc; $PYTHON -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || true
} | tee "$OUT/machine.txt"
cargo build --release -p densessl-cli --features densessl-cli/vulkan 2>&1 | tail -2
for step in "--arch resnet18 --batch 32 --size 96" "--arch resnet50 --batch 32 --size 96" "--arch resnet18 --batch 32 --size 96 --method moco-v2"; do
  echo "== $step" | tee -a "$OUT/bench.txt"
  for run in 1 2 3; do
    echo "densessl vulkan: $(timeout 300 target/release/densessl bench train-step $step --device vulkan --json 2>&1 | tail -1)" | tee -a "$OUT/bench.txt"
    echo "pytorch cuda:    $(timeout 300 $PYTHON bench/pytorch_train_step.py $step --device cuda 2>&1 | tail -1)" | tee -a "$OUT/bench.txt"
  done
done
echo "== pre-training (procedural scenes, 50 steps) on vulkan" | tee -a "$OUT/bench.txt"
DENSESSL_QUIET=1 timeout 300 target/release/densessl pretrain --config configs/pretrain/moco-v2-procedural.toml \
  --set train.steps=50 --device vulkan --out "$OUT/pretrain" 2>&1 | tail -3 | tee -a "$OUT/bench.txt"
