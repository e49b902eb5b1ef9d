#!/usr/bin/env bash
# CI's seconds-long run of the epochs bench, so its scripts keep working: MinIO and
# toxiproxy built and started by bench/world.sh, two tiny datasets read through the debug
# binary with and without the read cache, every byte compared (bench/epochs.py's verify
# pass). No speed is judged here; the numbers come from full runs by hand.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export S3VOL=${S3VOL:-$ROOT/target/debug/s3vol}
[ -x "$S3VOL" ] || cargo build -p s3vol --manifest-path "$ROOT/Cargo.toml" >&2
export BENCH_DIR=$ROOT/target/tmp/epochs-smoke RESULTS=$ROOT/target/tmp/epochs-smoke/results
rm -rf "$BENCH_DIR"
LARGE_N=2 LARGE_MB=3 SMALL_N=20 SMALL_KB=100 READERS=1 CACHE_MB=64 "$ROOT/bench/epochs.sh" local
rows=$(tail -n +2 "$RESULTS/epochs.tsv" | wc -l)
[ "$rows" = 2 ] || { echo "epochs smoke: $rows result rows, want 2" >&2; exit 1; }
echo "epochs smoke: ok"
