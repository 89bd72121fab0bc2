#!/usr/bin/env bash
# The embedded vector store against hnswlib on the same data, in one run (docs/benchmarks.md,
# "Knowledge base"). Needs a release build of flowbot-vector-bench and hnswlib in .venv:
#   cargo build --release -p flowbot-bench --bin flowbot-vector-bench
#   . scripts/torch-env && pip install -r scripts/bench-requirements.txt
# Usage: benches/vectors.sh [N] [EF…]   (N defaults to 100000; EFs to "64 128 256")
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
shift || true
efs=("${@:-64 128 256}")
read -r -a efs <<<"${efs[*]}"
bin="${CARGO_TARGET_DIR:-target}/release/flowbot-vector-bench"
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT
first=1
for ef in "${efs[@]}"; do
    if [ "$first" = 1 ]; then
        "$bin" --n "$n" --ef "$ef" --export "$data"
        first=0
    else
        "$bin" --n "$n" --ef "$ef" | grep -v '^data:'
    fi
done
python3 benches/vectors_hnswlib.py "$data" "$(IFS=,; echo "${efs[*]}")"
