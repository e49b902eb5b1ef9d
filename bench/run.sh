#!/usr/bin/env bash
# s3vol against a direct S3 client and the FUSE clients users compare it with, on the
# same local S3 server, in one run, printing one table with ratios. Everything it runs is
# in bench/: server.sh (s3s-fs on loopback), s3.py (the direct boto3 client and the test
# objects), workload.py (the FUSE workload, the same for every client).
#
# Usage: bench/run.sh            (as root; needs s3s-fs and python3 + boto3; s3fs/rclone optional)
# Env:   SIZE_MB=1024  RUNS=1 (3 for the published numbers)  LS_N=10000  SMALL_N=1000
#        CLIENTS="s3vol s3vol-tuned s3fs rclone"  SKIP="" (phases to leave out: stat ls read write small)
#        s3vol runs at its defaults (no -o: what users run, the headline); s3vol-tuned
#        with S3VOL_TUNED_OPTS=part_size=16,upload_concurrency=8,list_attrs
#        S3VOL_BASE_BIN=/path/to/older/s3vol: also runs that binary at its defaults as
#        client "s3vol-base" and prints s3vol / s3vol-base ratios: a regression check in one run
#        BENCH_DIR=/tmp/s3vol-bench (server data, mount point, results)
# Runs are interleaved: run 1 of every client, then run 2 (starting with the next client), ...
# Per s3vol client it also prints the store requests of each phase (from the unmount log
# line), so a change in request counts shows even when timings are noisy.
# Install once: apt-get install s3fs rclone fuse3 python3-boto3 (or pip install boto3);
#   cargo install s3s-fs --version 0.14.1 --features binary --locked
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
export BENCH_DIR=${BENCH_DIR:-/tmp/s3vol-bench}
export RUNS=${RUNS:-1} SIZE_MB=${SIZE_MB:-1024} SKIP=${SKIP:-}
export RESULTS=${RESULTS:-$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S)}
export ENDPOINT=http://127.0.0.1:${PORT:-9000} AK=testkey SK=testsecret BUCKET=bench
export SRC=/dev/shm/s3vol-bench-src-${SIZE_MB}m
CLIENTS=${CLIENTS:-"s3vol s3vol-tuned s3fs rclone"}
if [ -n "${S3VOL_BASE_BIN:-}" ]; then
  [ -x "$S3VOL_BASE_BIN" ] || { echo "bench: S3VOL_BASE_BIN=$S3VOL_BASE_BIN is not an executable" >&2; exit 2; }
  case " $CLIENTS " in *" s3vol-base "*) ;; *) CLIENTS="s3vol-base $CLIENTS" ;; esac
fi
S3VOL_TUNED_OPTS=${S3VOL_TUNED_OPTS:-part_size=16,upload_concurrency=8,list_attrs}
python3 -c 'import boto3' 2>/dev/null || { echo "bench: boto3 missing (pip install boto3)" >&2; exit 1; }
mkdir -p "$RESULTS"

cargo build --release -p s3vol --manifest-path "$ROOT/Cargo.toml" >&2
S3VOL=$ROOT/target/release/s3vol
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != $((SIZE_MB * 1048576)) ]; then
  head -c $((SIZE_MB * 1048576)) /dev/urandom > "$SRC"
fi

"$BENCH/server.sh" stop >/dev/null 2>&1 || true
"$BENCH/server.sh" start
trap '"$BENCH/server.sh" stop >/dev/null 2>&1 || true' EXIT
python3 "$BENCH/s3.py" setup "$SRC" "${LS_N:-10000}" >/dev/null

echo "== direct client (boto3)" >&2
python3 "$BENCH/s3.py" direct "$SRC" | tee "$RESULTS/direct.txt" >&2

keys='env AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK'
declare -A CMD
order=()
for c in $CLIENTS; do
  case $c in
    s3vol) cmd="$keys $S3VOL mount s3://\$BUCKET \$MNT --endpoint \$ENDPOINT --foreground 2>>$RESULTS/s3vol-mount.log" ;;
    s3vol-tuned) cmd="$keys $S3VOL mount s3://\$BUCKET \$MNT --endpoint \$ENDPOINT --foreground -o $S3VOL_TUNED_OPTS 2>>$RESULTS/s3vol-tuned-mount.log" ;;
    s3vol-base) cmd="$keys $S3VOL_BASE_BIN mount s3://\$BUCKET \$MNT --endpoint \$ENDPOINT --foreground 2>>$RESULTS/s3vol-base-mount.log" ;;
    s3fs)
      command -v s3fs >/dev/null || { echo "bench: s3fs not installed, skipped" >&2; continue; }
      cmd='s3fs $BUCKET $MNT -f -o url=$ENDPOINT,use_path_request_style,passwd_file=$PASSWD_FILE,parallel_count=8,multipart_size=16,endpoint=us-east-1' ;;
    rclone)
      command -v rclone >/dev/null || { echo "bench: rclone not installed, skipped" >&2; continue; }
      cmd='rclone mount :s3:$BUCKET $MNT --config /dev/null --s3-provider Other --s3-endpoint $ENDPOINT --s3-region us-east-1 --s3-access-key-id $AK --s3-secret-access-key $SK --s3-chunk-size 16M --s3-upload-concurrency 8 --vfs-cache-mode off' ;;
    *) echo "bench: unknown client $c" >&2; exit 2 ;;
  esac
  CMD[$c]=$cmd
  order+=("$c")
done
# Run by run, every client once, the first of a run moving along: a machine that drifts
# (page cache, the server's data, thermal) then weighs on every client alike, and no
# client always follows the same one.
n=${#order[@]}
for ((run = 1; run <= RUNS; run++)); do
  for ((i = 0; i < n; i++)); do
    c=${order[$(((i + run - 1) % n))]}
    echo "== $c (run $run/$RUNS)" >&2
    RUN_ONLY=$run python3 "$BENCH/workload.py" "$c" "${CMD[$c]}"
  done
done

python3 - "$RESULTS" <<'PY'
import csv, json, os, re, statistics, sys
res = sys.argv[1]
rows = {r[0]: r for r in csv.reader(open(os.path.join(res, "summary.tsv")), delimiter="\t") if r}
head = rows.pop("client")
direct = open(os.path.join(res, "direct.txt")).read()
def mibps(label):
    m = re.search(re.escape(label) + r".*?([\d.]+) MiB/s", direct)
    return float(m.group(1)) if m else None
d_put, d_get = mibps("PUT multipart"), mibps("GET ranged")
def mount_log(c):
    p = os.path.join(res, f"{c}-mount.log")
    return open(p).read() if os.path.exists(p) else ""
print("\n| metric | " + " | ".join(rows) + " |")
print("|---|" + "---|" * len(rows))
for i, name in enumerate(head[1:], 1):
    print(f"| {name} | " + " | ".join(rows[c][i] for c in rows) + " |")
def val(c, metric):
    try:
        return float(rows[c][head.index(metric)])
    except (KeyError, ValueError, IndexError):
        return None
def r(label, a, b, target):
    if a is None or b in (None, 0):
        print(f"  {label:52s} n/a")
    else:
        print(f"  {label:52s} {a / b:6.2f}x   target {target}")
print(f"\n  direct boto3: PUT multipart {d_put} MiB/s, GET ranged {d_get} MiB/s")
for s, what in (("s3vol", "at its defaults (issue 15 targets)"), ("s3vol-tuned", "tuned profile")):
    if s not in rows:
        continue
    print(f"\nratios for {s}, {what}; same run, same server:")
    r("read: s3vol / direct ranged GET", val(s, "read_MiBps"), d_get, ">= 0.9")
    r("write until in S3: s3vol / direct multipart PUT", val(s, "write_MiBps"), d_put, ">= 0.9")
    r("small files until in S3: s3vol / s3fs", val(s, "small_files_per_s"), val("s3fs", "small_files_per_s"), ">= 15")
    r("small files until in S3: s3vol / rclone", val(s, "small_files_per_s"), val("rclone", "small_files_per_s"), ">= 1.5")
    r("ls -l 10k cold: s3vol time / s3fs time", val(s, "ls_cold_s"), val("s3fs", "ls_cold_s"), "<= 0.7")
    r("stat cold: s3vol time / s3fs time", val(s, "stat_cold_ms"), val("s3fs", "stat_cold_ms"), "<= 2")
    print(f"  {'ls -l 10k warm (s)':52s} {val(s, 'ls_warm_s')}   target <= 0.1")
    print(f"  {'mount time (s)':52s} {val(s, 'mount_s')}   target <= 0.2")
    rss = [int(x) for x in re.findall(r"peak_rss_kib=(\d+)", mount_log(s))]
    if rss:
        print(f"  {'peak RSS over the run (MiB)':52s} {max(rss) / 1024:.0f}   target <= 256")

# Store requests per mount session, in the order the workload mounts (per run: stat,
# ls cold + warm, read, write + small files; skipped phases have no session).
skip = os.environ.get("SKIP", "").split()
phases = []
if "stat" not in skip:
    phases.append("stat")
if "ls" not in skip:
    phases.append("ls -l cold+warm")
if "read" not in skip:
    phases.append("read")
if not ("write" in skip and "small" in skip):
    phases.append("write+small")
for c in rows:
    if not c.startswith("s3vol"):
        continue
    sessions = [json.loads(m) for m in re.findall(r"requests=(\{[^}]*\})", mount_log(c))]
    if not sessions or not phases:
        continue
    print(f"\nstore requests per phase, {c} (median over runs; per op):")
    for i, ph in enumerate(phases):
        runs = sessions[i::len(phases)]
        ops = sorted({op for s in runs for op in s})
        med = {op: statistics.median(s.get(op, 0) for s in runs) for op in ops}
        total = statistics.median(sum(s.values()) for s in runs)
        spread = f" (runs: {', '.join(str(sum(s.values())) for s in runs)})" if len(runs) > 1 else ""
        print(f"  {ph:18s} total {total:g}{spread}: " + ", ".join(f"{op} {v:g}" for op, v in med.items()))
if "s3vol-base" in rows:
    print("\nregression check, same run (s3vol / s3vol-base; time metrics inverted, so > 1 is better):")
    for metric in head[1:]:
        a, b = val("s3vol", metric), val("s3vol-base", metric)
        if a is None or b in (None, 0) or a == 0:
            continue
        is_time = metric.endswith(("_s", "_ms")) and not metric.endswith("_per_s")
        better = b / a if is_time else a / b
        print(f"  {metric:48s} {better:6.2f}x")
PY
