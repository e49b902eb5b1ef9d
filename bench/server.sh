#!/usr/bin/env bash
# A local S3 server for the benchmark: s3s-fs on loopback with fixed test keys, its data
# on disk under $BENCH_DIR/s3-data.
#
# Usage: bench/server.sh start|stop
# Env:   PORT=9000  BENCH_DIR=/tmp/s3vol-bench  AK=testkey  SK=testsecret
#
# s3s-fs 0.14.1 writes a response's head and body in two writes without TCP_NODELAY;
# with the client's delayed ACK every GET would wait ~40 ms. `start` sets `quickack` on
# the loopback routes (for every client alike) and `stop` clears it again.
set -euo pipefail
PORT=${PORT:-9000}
BENCH_DIR=${BENCH_DIR:-/tmp/s3vol-bench}
AK=${AK:-testkey}
SK=${SK:-testsecret}
PIDFILE=$BENCH_DIR/s3-server.pid

quickack() {
  ip route change local 127.0.0.0/8 dev lo proto kernel scope host src 127.0.0.1 table local quickack "$1" 2>/dev/null || true
  ip route change local 127.0.0.1 dev lo proto kernel scope host src 127.0.0.1 table local quickack "$1" 2>/dev/null || true
}

case "${1:-}" in
  start)
    command -v s3s-fs >/dev/null || {
      echo "server.sh: s3s-fs not found; install it: cargo install s3s-fs --version 0.14.1 --features binary --locked" >&2
      exit 1
    }
    mkdir -p "$BENCH_DIR/s3-data"
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "server.sh: already running (pid $(cat "$PIDFILE"))" >&2
      exit 0
    fi
    quickack 1
    RUST_LOG=error s3s-fs --host 127.0.0.1 --port "$PORT" --access-key "$AK" --secret-key "$SK" \
      "$BENCH_DIR/s3-data" > "$BENCH_DIR/s3-server.log" 2>&1 &
    echo $! > "$PIDFILE"
    for _ in $(seq 100); do
      if python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then
        echo "server.sh: s3s-fs on http://127.0.0.1:$PORT (pid $(cat "$PIDFILE"))" >&2
        exit 0
      fi
      sleep 0.1
    done
    echo "server.sh: s3s-fs did not start:" >&2
    cat "$BENCH_DIR/s3-server.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$PIDFILE" ]; then
      kill "$(cat "$PIDFILE")" 2>/dev/null || true
      rm -f "$PIDFILE"
    fi
    quickack 0
    ;;
  *)
    echo "usage: bench/server.sh start|stop" >&2
    exit 2
    ;;
esac
