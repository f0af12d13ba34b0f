#!/bin/bash
# densessl vs PyTorch on the same machine: the same train step, run alternately RUNS times
# each (default 5); prints every run and the ratio of medians (> 1 = densessl faster).
#   bench/compare.sh --arch resnet18 --batch 32 --size 96
#   bench/compare.sh --arch resnet50 --batch 32 --size 96
#   bench/compare.sh --arch resnet18 --batch 32 --size 96 --method moco-v2
# Env: RUNS (5), PYTHON (python3 with torch + torchvision), DENSESSL (target/release/densessl).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
PYTHON=${PYTHON:-python3}
DENSESSL=${DENSESSL:-target/release/densessl}
[ -x "$DENSESSL" ] || cargo build --release -p densessl-cli
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $($PYTHON -c 'import torch; print("torch", torch.__version__, torch.get_num_threads(), "threads")')"
echo "step: $*"
ours=(); theirs=()
field() { $PYTHON -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
for i in $(seq "$RUNS"); do
  o=$("$DENSESSL" bench train-step "$@" --json)
  t=$($PYTHON bench/pytorch_train_step.py "$@" --json)
  ours+=("$(echo "$o" | field median_s_per_step)"); theirs+=("$(echo "$t" | field median_s_per_step)")
  echo "run $i: densessl $(echo "$o" | field median_s_per_step) s/step ($(echo "$o" | field peak_rss_mb) MB)   pytorch $(echo "$t" | field median_s_per_step) s/step ($(echo "$t" | field peak_rss_mb) MB)"
done
$PYTHON - "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
ours = [float(v) for v in sys.argv[1].split()]
theirs = [float(v) for v in sys.argv[2].split()]
mo, mt = statistics.median(ours), statistics.median(theirs)
print(f"median s/step: densessl {mo:.4f}, pytorch {mt:.4f}; speed ratio (pytorch / densessl) = {mt / mo:.2f}x")
PY
