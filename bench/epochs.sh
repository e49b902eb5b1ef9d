#!/usr/bin/env bash
# The read cache over training epochs (bench/epochs.py) against MinIO at a latency
# profile (bench/world.sh): epoch 1 and 2 with and without the cache, beside local disk.
# Usage: bench/epochs.sh [local|cloud]   (as root: it drops the page cache between epochs)
# Env: see bench/epochs.py (DATASETS, LARGE_N, LARGE_MB, SMALL_N, SMALL_KB, READERS, CACHE_MB)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${1:-cloud}
export BENCH_DIR=${BENCH_DIR:-/tmp/s3vol-bench}
export RESULTS=${RESULTS:-$BENCH_DIR/epochs-$(date +%Y%m%d-%H%M%S)-$PROFILE}
export AK=${AK:-testkey} SK=${SK:-testsecret}
if [ -z "${S3VOL:-}" ]; then
  cargo build --release -p s3vol --manifest-path "$ROOT/Cargo.toml" >&2
  export S3VOL=$ROOT/target/release/s3vol
fi
"$ROOT/bench/world.sh" start
trap '"$ROOT/bench/world.sh" stop' EXIT
ENDPOINT=$("$ROOT/bench/world.sh" endpoint "$PROFILE")
SETUP_ENDPOINT=$("$ROOT/bench/world.sh" endpoint local)
export ENDPOINT SETUP_ENDPOINT
mkdir -p "$RESULTS"
python3 "$ROOT/bench/epochs.py" | tee "$RESULTS/table.txt"
echo "bench: results in $RESULTS" >&2
