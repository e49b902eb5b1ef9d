#!/usr/bin/env bash
# Makes sure a Docker engine answers, starting one the way this kind of machine allows
# (no bridge, no iptables: every container runs with --network host). Prints "started PID"
# when it started one (stop it with `kill PID`), "running" when one was already up, and
# exits 1 with the reason when no engine can start here.
set -euo pipefail
DOCKER=${DOCKER:-docker}
if $DOCKER info >/dev/null 2>&1; then echo running; exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd not installed (apt-get install docker.io)" >&2; exit 1; }
log=${DOCKERD_LOG:-/tmp/s3vol-dockerd.log}
nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
  if $DOCKER info >/dev/null 2>&1; then echo "started $pid"; exit 0; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
echo "dockerd.sh: the Docker engine did not start; last lines of $log:" >&2
tail -20 "$log" >&2
kill "$pid" 2>/dev/null || true
exit 1
