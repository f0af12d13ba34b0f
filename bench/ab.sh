#!/bin/bash
# A/B of densessl builds (and PyTorch) on one train step, alternating, ROUNDS times each:
# prints every run and each variant's median s/step. Variants are NAME=BINARY[,ENV=VALUE...]
# separated by spaces; the binary `torch` runs bench/pytorch_train_step.py.
#   VARIANTS="base=/tmp/densessl-base new=target/release/densessl torch=torch" bench/ab.sh 5 --arch resnet18 --batch 32 --size 96
#   VARIANTS="new=target/release/densessl off=target/release/densessl,DENSESSL_RUNTIME=default" bench/ab.sh 5 --arch resnet18 --batch 32 --size 96
# Env: PYTHON (python3 with torch + torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1; shift
PYTHON=${PYTHON:-python3}
declare -A times
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['median_s_per_step'],4), round(d['peak_rss_mb']))"; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; step: $*"
for i in $(seq "$rounds"); do
  for variant in ${VARIANTS:?set VARIANTS, e.g. VARIANTS=\"new=target/release/densessl torch=torch\"}; do
    name=${variant%%=*}; spec=${variant#*=}
    IFS=, read -r -a parts <<< "$spec"
    if [ "${parts[0]}" = torch ]; then
      out=$("$PYTHON" bench/pytorch_train_step.py "$@" --json)
    else
      out=$(env "${parts[@]:1}" "${parts[0]}" bench train-step "$@" --json)
    fi
    result=$(echo "$out" | field)
    times[$name]="${times[$name]:-} ${result%% *}"
    echo "round $i: $name ${result%% *} s/step (${result##* } MB)"
  done
done
for variant in $VARIANTS; do
  name=${variant%%=*}
  python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[2:]]; print(f'{sys.argv[1]}: median {statistics.median(v):.4f} s/step over {len(v)} runs')" "$name" ${times[$name]}
done
