#!/usr/bin/env bash
# Restarts one component of the cluster up.sh started (e.g. `restart.sh kubelet`): SIGTERM,
# then the same command line again, appending to its log.
set -euo pipefail
D=${S3VOL_CLUSTER_DIR:-/var/lib/s3vol-cluster}
TOOLS=${S3VOL_TOOLS:-/var/cache/s3vol-tools}
export PATH="$TOOLS/bin:$PATH"
name=$1
pid=$(awk -v n="$name" '$1 == n {print $2}' "$D/pids")
[ -n "$pid" ] || { echo "restart.sh: $name is not one of the cluster's processes" >&2; exit 1; }
kill "$pid" 2>/dev/null || true
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
kill -9 "$pid" 2>/dev/null || true
# exec: the recorded pid is the component itself, not a shell around it.
eval "exec $(cat "$D/cmd/$name")" >> "$D/logs/$name.log" 2>&1 &
sed -i "s/^$name .*/$name $!/" "$D/pids"
echo "restart.sh: $name restarted (pid $!)" >&2
