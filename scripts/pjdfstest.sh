#!/usr/bin/env bash
# POSIX conformance (pjdfstest, ../shared/tools/pjdfstest) in an `s3vol mount -o allow_other`
# over moto, the Linux base of 8417 tests (run.sh's set). Fails below the score reached
# (PJD_MIN, percent), and on any failing test not in tests/posix/pjdfstest-baseline.txt. Run under scripts/with-moto.sh; needs root, /dev/fuse and prove (perl).
# Env: PJDFSTEST (default ../shared/tools/pjdfstest), PJD_MIN, S3VOL_ALLOW_SKIP=1 as elsewhere.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PJD=${PJDFSTEST:-$ROOT/../shared/tools/pjdfstest}
MIN=${PJD_MIN:-97.0}
if [ "$(id -u)" != 0 ] || [ ! -e /dev/fuse ]; then
  echo "pjdfstest: needs root and /dev/fuse" >&2
  [ "${S3VOL_ALLOW_SKIP:-}" = 1 ] && [ -z "${CI:-}" ] && { echo "pjdfstest: SKIPPED (S3VOL_ALLOW_SKIP=1)"; exit 0; }
  exit 1
fi
[ -x "$PJD/run.sh" ] || { echo "pjdfstest: $PJD/run.sh not found (set PJDFSTEST)" >&2; exit 1; }
: "${S3VOL_MOTO_ENDPOINT:?run under scripts/with-moto.sh}"

work=$(mktemp -d /tmp/s3vol-pjd.XXXXXX)
cleanup() {
  umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
python3 - "$S3VOL_MOTO_ENDPOINT" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="testing",
             aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="pjdfstest")
PY
# `make test` passes the binary `cargo test` built (S3VOL_BIN): building it again with
# only s3vol's features would compile every dependency a second time.
BIN=${S3VOL_BIN:-}
if [ -z "$BIN" ]; then cargo build -q -p s3vol --manifest-path "$ROOT/Cargo.toml"; BIN="$ROOT/target/debug/s3vol"; fi
mkdir -p "$work/mnt"
AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$BIN" mount s3://pjdfstest \
  "$work/mnt" --endpoint "$S3VOL_MOTO_ENDPOINT" -o allow_other --log-file "$work/mount.log"
mkdir "$work/mnt/run"
line=$(PJD_LOG="$work/pjdfstest.log" "$PJD/run.sh" "$work/mnt/run" | tail -1)
echo "$line (floor ${MIN}%)"
score=$(echo "$line" | sed -n 's/.*= \([0-9.]*\)%.*/\1/p')
if [ -z "$score" ] || ! python3 -c "import sys; sys.exit(0 if float('$score') >= float('$MIN') else 1)"; then
  echo "pjdfstest: score ${score:-none} is below ${MIN}%; failures by test file:" >&2
  awk '/\.t \.\./{f=$2} /^not ok/{n[f]++} END{for (k in n) print n[k], k}' "$work/pjdfstest.log" | sort -rn | head -20 >&2
  exit 1
fi
# Per test: every failure must be a known one (tests/posix/pjdfstest-baseline.txt, one
# `dir/NN.t:N` a line, each explained in SEMANTICS or by design); any other fails the run.
# PJD_WRITE_BASELINE=1 rewrites the baseline from this run (review the diff).
awk '/\.t \.\./{f=$2; sub(/.*\/tests\//, "", f)} /^not ok/{print f ":" $3}' "$work/pjdfstest.log" | sort -u > "$work/failed.txt"
baseline=$ROOT/tests/posix/pjdfstest-baseline.txt
if [ "${PJD_WRITE_BASELINE:-}" = 1 ]; then cp "$work/failed.txt" "$baseline"; echo "pjdfstest: baseline written ($(wc -l < "$baseline") failures)"; fi
new_failures=$(comm -23 "$work/failed.txt" <(sort -u "$baseline"))
fixed=$(comm -13 "$work/failed.txt" <(sort -u "$baseline") | wc -l)
[ "$fixed" -gt 0 ] && echo "pjdfstest: $fixed failures of the baseline now pass (PJD_WRITE_BASELINE=1 to record)"
if [ -n "$new_failures" ]; then
  echo "pjdfstest: failures not in $baseline (regressions):" >&2
  echo "$new_failures" | head -40 >&2
  exit 1
fi
echo "pjdfstest: no failure outside the baseline ($(wc -l < "$work/failed.txt") known)"
