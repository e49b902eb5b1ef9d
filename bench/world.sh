#!/usr/bin/env bash
# The benchmark's world from real parts: MinIO as the store and toxiproxy in front of it,
# both built from their pinned Go modules (scripts/cluster/versions.env) into the tool
# cache by scripts/cluster/build-tools.sh. Two endpoints, one per latency profile:
#   local  http://127.0.0.1:9000   MinIO through the proxy, no toxics
#   cloud  http://127.0.0.1:9001   20 ms added each way on every connection and each
#                                  connection's download capped at ~100 MB/s, like one
#                                  connection to a cloud store
# Usage: bench/world.sh start|stop|endpoint PROFILE
# Env:   BENCH_DIR=/tmp/s3vol-bench  AK=testkey  SK=testsecret
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/s3vol-bench}
AK=${AK:-testkey}
SK=${SK:-testsecret}
TOOLS=${S3VOL_TOOLS:-/var/cache/s3vol-tools}/bin
MINIO_ADDR=127.0.0.1:9100
TOXI_API=127.0.0.1:8474

endpoint() {
  case "$1" in
    local) echo http://127.0.0.1:9000 ;;
    cloud) echo http://127.0.0.1:9001 ;;
    *) echo "world.sh: unknown profile $1 (local or cloud)" >&2; exit 2 ;;
  esac
}

wait_port() { # HOST:PORT WHAT LOG
  for _ in $(seq 200); do
    if python3 -c "import socket,sys; h,p=sys.argv[1].split(':'); socket.create_connection((h,int(p)),0.2)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "world.sh: $2 did not start on $1:" >&2
  tail -20 "$3" >&2
  exit 1
}

toxic() { "$TOOLS/toxiproxy-cli" --host "http://$TOXI_API" "$@" >/dev/null; }

start() {
  "$ROOT/scripts/cluster/build-tools.sh" minio toxiproxy
  mkdir -p "$BENCH_DIR/minio"
  stop >/dev/null 2>&1 || true
  MINIO_ROOT_USER=$AK MINIO_ROOT_PASSWORD=$SK MINIO_BROWSER=off \
    "$TOOLS/minio" server --quiet --address "$MINIO_ADDR" "$BENCH_DIR/minio" > "$BENCH_DIR/minio.log" 2>&1 &
  echo $! > "$BENCH_DIR/minio.pid"
  "$TOOLS/toxiproxy-server" -host 127.0.0.1 -port 8474 > "$BENCH_DIR/toxiproxy.log" 2>&1 &
  echo $! > "$BENCH_DIR/toxiproxy.pid"
  wait_port "$MINIO_ADDR" MinIO "$BENCH_DIR/minio.log"
  wait_port "$TOXI_API" toxiproxy "$BENCH_DIR/toxiproxy.log"
  toxic create -l 127.0.0.1:9000 -u "$MINIO_ADDR" local
  toxic create -l 127.0.0.1:9001 -u "$MINIO_ADDR" cloud
  toxic toxic add -n up-latency -t latency -a latency=20 --upstream cloud
  toxic toxic add -n down-latency -t latency -a latency=20 --downstream cloud
  toxic toxic add -n down-bandwidth -t bandwidth -a rate=100000 --downstream cloud
  # MinIO answers once its drive is formatted; wait for a signed request to work.
  for _ in $(seq 100); do
    if AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK python3 - "$(endpoint local)" <<'PY' 2>/dev/null; then break; fi
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1").list_buckets()
PY
    sleep 0.2
  done
  echo "world.sh: MinIO on $MINIO_ADDR; local $(endpoint local), cloud $(endpoint cloud) (toxiproxy)" >&2
}

stop() {
  for p in toxiproxy minio; do
    if [ -f "$BENCH_DIR/$p.pid" ]; then
      kill "$(cat "$BENCH_DIR/$p.pid")" 2>/dev/null || true
      rm -f "$BENCH_DIR/$p.pid"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  endpoint) endpoint "${2:?profile}" ;;
  *) echo "usage: bench/world.sh start|stop|endpoint PROFILE" >&2; exit 2 ;;
esac
