#!/usr/bin/env bash
# The memory budget (issue 12): STREAMS files of SIZE_MB written at once, then read back at
# once, on one s3vol mount over the local S3 server (bench/server.sh), first at the
# defaults (memory_limit=512 MiB) and then with the budget lifted (memory_limit=1048576,
# i.e. unbounded), in one run. Prints, per phase, the mount process's peak RSS (VmHWM,
# reset between phases) and the throughput, with the budgeted/unbudgeted ratios and the
# bar: peak RSS under the budget + 64 MiB, throughput within 10%.
#
# Usage: bench/memory.sh            (as root; needs s3s-fs, see bench/run.sh)
# Env:   STREAMS=64  SIZE_MB=256  BENCH_DIR=/tmp/s3vol-bench  PORT=9000
#        S3VOL_BIN=/path/to/s3vol (default: build this tree's release binary)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
export BENCH_DIR=${BENCH_DIR:-/tmp/s3vol-bench}
STREAMS=${STREAMS:-64}
SIZE_MB=${SIZE_MB:-256}
export ENDPOINT=http://127.0.0.1:${PORT:-9000} AK=testkey SK=testsecret BUCKET=bench
python3 -c 'import boto3' 2>/dev/null || { echo "bench: boto3 missing (pip install boto3)" >&2; exit 1; }

if [ -n "${S3VOL_BIN:-}" ]; then
  S3VOL=$S3VOL_BIN
else
  cargo build --release -p s3vol --manifest-path "$ROOT/Cargo.toml" >&2
  S3VOL=$ROOT/target/release/s3vol
fi
"$BENCH/server.sh" stop >/dev/null 2>&1 || true
"$BENCH/server.sh" start
MNT=$BENCH_DIR/mnt-memory
mkdir -p "$MNT"
pid=
cleanup() {
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  "$BENCH/server.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
python3 - <<'PY'
import os, boto3
c = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], aws_access_key_id=os.environ["AK"],
                 aws_secret_access_key=os.environ["SK"], region_name="us-east-1")
try:
    c.create_bucket(Bucket=os.environ["BUCKET"])
except (c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
    pass
PY

peak_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
reset_peak() { echo 5 > "/proc/$1/clear_refs"; }

# run LIMIT_MIB -> prints "write_s write_peak read_s read_peak"
run() {
  AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK "$S3VOL" mount "s3://$BUCKET/memory/" "$MNT" \
    --endpoint "$ENDPOINT" --foreground -o "memory_limit=$1" 2>>"$BENCH_DIR/memory-mount.log" &
  pid=$!
  for _ in $(seq 1 100); do mountpoint -q "$MNT" && break; sleep 0.1; done
  mountpoint -q "$MNT" || { echo "bench: the mount did not appear" >&2; exit 1; }
  reset_peak "$pid"
  local t0 t1 t2 w_peak r_peak
  t0=$(date +%s.%N)
  for i in $(seq 1 "$STREAMS"); do
    dd if=/dev/zero of="$MNT/f$i" bs=1M count="$SIZE_MB" status=none &
  done
  wait $(jobs -p | grep -v "^$pid\$") 2>/dev/null || true
  t1=$(date +%s.%N)
  local w_s
  w_s=$(awk "BEGIN{print $t1 - $t0}")
  w_peak=$(peak_mib "$pid")
  sync
  echo 3 > /proc/sys/vm/drop_caches
  reset_peak "$pid"
  t1=$(date +%s.%N)
  for i in $(seq 1 "$STREAMS"); do
    cat "$MNT/f$i" > /dev/null &
  done
  wait $(jobs -p | grep -v "^$pid\$") 2>/dev/null || true
  t2=$(date +%s.%N)
  r_peak=$(peak_mib "$pid")
  local n
  n=$(find "$MNT" -name 'f*' -size "${SIZE_MB}M" | wc -l)
  [ "$n" = "$STREAMS" ] || { echo "bench: $n of $STREAMS files have $SIZE_MB MiB" >&2; exit 1; }
  rm -f "$MNT"/f*
  umount "$MNT"
  wait "$pid" || true
  pid=
  echo "$w_s $w_peak $(awk "BEGIN{print $t2 - $t1}") $r_peak"
}

echo "== $STREAMS streams of $SIZE_MB MiB, memory_limit=512 (the default)" >&2
read -r bw bwp br brp < <(run 512)
echo "== the same with memory_limit=1048576 (unbounded)" >&2
read -r uw uwp ur urp < <(run 1048576)
python3 - "$STREAMS" "$SIZE_MB" "$bw" "$bwp" "$br" "$brp" "$uw" "$uwp" "$ur" "$urp" <<'PY'
import sys
n, size = int(sys.argv[1]), int(sys.argv[2])
bw, bwp, br, brp, uw, uwp, ur, urp = map(float, sys.argv[3:])
total = n * size
print(f"{n} streams x {size} MiB = {total} MiB each way")
print(f"{'phase':<8} {'budget 512 MiB':>22} {'unbounded':>22} {'ratio':>8}")
print(f"{'write':<8} {total/bw:>10.0f} MiB/s {bwp:>6.0f} MiB {total/uw:>10.0f} MiB/s {uwp:>6.0f} MiB {uw/bw:>8.2f}")
print(f"{'read':<8} {total/br:>10.0f} MiB/s {brp:>6.0f} MiB {total/ur:>10.0f} MiB/s {urp:>6.0f} MiB {ur/br:>8.2f}")
ok_rss = max(bwp, brp) <= 512 + 64
ok_speed = uw / bw >= 0.9 and ur / br >= 0.9
print(f"peak RSS under budget + 64 MiB: {'yes' if ok_rss else 'NO'} ({max(bwp, brp):.0f} MiB); "
      f"throughput within 10% of unbounded: {'yes' if ok_speed else 'NO'}")
PY
