#!/bin/bash
# Where a densessl command's CPU time goes: samples it with `perf record` (DWARF call
# graphs, so rayon workers' frames resolve) and sorts every sample into one category by the
# frames on its stack (bench/profile_breakdown.py): convolution forward, its gradients,
# BatchNorm, pooling, layout copies, the data loader, ... Prints one table.
#   bench/profile.sh bench train-step --arch resnet18 --batch 32 --size 96 --steps 3 --warmup 1
#   bench/profile.sh finetune --config my-finetune.toml --out /tmp/profiled-run
# Env: FREQ (samples/s per thread, default 199), DENSESSL (target/profiling/densessl: the
# release code with line tables, built here with `cargo build --profile profiling`).
# Needs `perf` (linux-tools) and permission to use it (root, or perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
DENSESSL=${DENSESSL:-target/profiling/densessl}
[ -x "$DENSESSL" ] || cargo build --profile profiling -p densessl-cli
command -v perf >/dev/null || { echo "bench/profile.sh: perf not found (apt-get install linux-tools-generic)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
perf record -q -F "${FREQ:-199}" --call-graph dwarf,16384 -o "$work/perf.data" "$DENSESSL" "$@"
perf script -i "$work/perf.data" -F comm,tid,ip,sym 2>/dev/null > "$work/stacks.txt"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "command: densessl $*"
python3 bench/profile_breakdown.py "$work/stacks.txt"
