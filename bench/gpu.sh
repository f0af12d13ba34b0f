#!/bin/bash
# The GPU check, one short script for a machine with an NVIDIA GPU, a Vulkan loader and
# (optionally) PyTorch with CUDA: times the same train steps as bench/compare.sh on the GPU
# (densessl on Vulkan, PyTorch on CUDA, alternating) and runs a short MoCo v2 pre-training on
# the GPU. Results go to $OUT (default bench-gpu-out/) and stdout.
#
# A cold release build with --features vulkan takes ~48 min on 2 cores, more than a lent
# device's whole budget, so build and pack the binary beforehand on any x86-64 Linux machine:
#   bash bench/gpu.sh --prepare     # -> target/gpu/densessl-vulkan.xz (stripped, ~21 MB)
# then carry target/gpu to the GPU machine and run
#   bash bench/gpu.sh               # RUNS=1 for the shortest check; STEP_TIMEOUT=seconds
# Binary used: $DENSESSL if set, else the packed one, else a fresh build.
set -uo pipefail
cd "$(dirname "$0")/.."
PACKED=target/gpu/densessl-vulkan.xz
build() { cargo build --release -p densessl-cli --features densessl-cli/vulkan "$@"; }
if [ "${1:-}" = "--prepare" ]; then
  set -e
  build
  mkdir -p target/gpu
  strip -o target/gpu/densessl-vulkan target/release/densessl
  xz -T0 -6 -c target/gpu/densessl-vulkan > "$PACKED.partial" && mv "$PACKED.partial" "$PACKED"
  rm target/gpu/densessl-vulkan
  ls -l "$PACKED"; git rev-parse --short HEAD > target/gpu/commit
  exit 0
fi
OUT=${OUT:-bench-gpu-out}
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-3}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
mkdir -p "$OUT"
if [ -n "${DENSESSL:-}" ]; then
  BIN=$DENSESSL
elif [ -f "$PACKED" ]; then
  BIN=$(mktemp -d)/densessl
  if command -v xz >/dev/null; then xz -d -c "$PACKED" > "$BIN"; else
    $PYTHON -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$PACKED" "$BIN"
  fi
  chmod +x "$BIN"
  echo "binary: $PACKED (built at $(cat target/gpu/commit 2>/dev/null || echo '?'))"
  # Built against glibc 2.35+ symbols (Debian 12 here); an older system cannot load it.
  "$BIN" --version >/dev/null 2>&1 || { echo "the packed binary does not start here: $("$BIN" --version 2>&1 | head -2)"; exit 1; }
else
  build 2>&1 | tail -2
  BIN=target/release/densessl
fi
# wgpu's Vulkan loader setup wants a runtime dir; containers often lack one.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
{
  echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  vulkaninfo --summary 2>/dev/null | grep -E "deviceName|apiVersion|driverName" | head -6 || echo "vulkaninfo not installed"
  echo "cpus $(nproc)"; $PYTHON -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1
  "$BIN" --version 2>&1
} | tee "$OUT/machine.txt"
# Most important first, so a budget that runs out still leaves an answer.
STEPS=("--arch resnet18 --batch 32 --size 96" "--arch resnet18 --batch 32 --size 96 --method moco-v2" "--arch resnet50 --batch 32 --size 96")
for step in "${STEPS[@]}"; do
  echo "== $step" | tee -a "$OUT/bench.txt"
  for run in $(seq "$RUNS"); do
    line=$(timeout "$STEP_TIMEOUT" "$BIN" bench train-step $step --device vulkan --json 2>"$OUT/stderr.txt" | tail -1)
    rc=$?
    echo "densessl vulkan: ${line:-no result (exit $rc; 139 = crashed): $(tail -c 400 "$OUT/stderr.txt" | tr '\n' ' ')}" | tee -a "$OUT/bench.txt"
    echo "pytorch cuda:    $(timeout "$STEP_TIMEOUT" $PYTHON bench/pytorch_train_step.py $step --device cuda 2>&1 | tail -1)" | tee -a "$OUT/bench.txt"
    # A device that does not come up will not come up on the next try either.
    [ -z "$line" ] && [ "$run" = 1 ] && [ "$step" = "${STEPS[0]}" ] && { echo "vulkan failed; stopping"; exit 1; }
  done
done
echo "== pre-training (procedural scenes, 50 steps) on vulkan" | tee -a "$OUT/bench.txt"
DENSESSL_QUIET=1 timeout 300 "$BIN" pretrain --config configs/pretrain/moco-v2-procedural.toml \
  --set train.steps=50 --device vulkan --out "$OUT/pretrain" 2>&1 | tail -3 | tee -a "$OUT/bench.txt"
