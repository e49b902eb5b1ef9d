#!/usr/bin/env bash
# Runs a command with moto (a second, independent S3 implementation) listening on a free
# loopback port, exported as S3VOL_MOTO_ENDPOINT, and stops moto afterwards.
set -euo pipefail
if ! command -v moto_server >/dev/null 2>&1; then
  echo "with-moto: moto_server not found; installing moto[server] from PyPI" >&2
  python3 -m pip install --quiet 'moto[server]' >&2
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp -t moto.XXXXXX.log)
moto_server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null || true; wait $moto_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then break; fi
  sleep 0.1
done
python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.5)" || { echo "with-moto: moto did not start:" >&2; cat "$log" >&2; exit 1; }
export S3VOL_MOTO_ENDPOINT="http://127.0.0.1:$port"
"$@"
