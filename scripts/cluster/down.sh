#!/usr/bin/env bash
# Stops the cluster up.sh started and removes everything it made: processes, containers
# and their shims, mounts under /var/lib/kubelet and the cluster dir, the cni0 bridge and
# pod network namespaces, kube-proxy's iptables rules, and the state. Safe to run twice.
set -uo pipefail
D=${S3VOL_CLUSTER_DIR:-/var/lib/s3vol-cluster}
TOOLS=${S3VOL_TOOLS:-/var/cache/s3vol-tools}
BIN=$TOOLS/bin
stop() { # NAME: SIGTERM, then SIGKILL after 10 s
  local pid
  pid=$(awk -v n="$1" '$1 == n {print $2}' "$D/pids" 2>/dev/null)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null
}
stop kubelet
if [ -S "$D/containerd.sock" ]; then
  ctr_() { "$BIN/ctr" --address "$D/containerd.sock" -n k8s.io "$@"; }
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1; done
  sleep 1
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1; done
fi
# Whatever still runs in the pods' cgroups (containers whose shim is gone) is killed, and
# the cgroups are removed: containerd put every container under /k8s.io (cgroupfs).
for _ in 1 2 3; do
  procs=$(cat /sys/fs/cgroup/pids/k8s.io/*/cgroup.procs 2>/dev/null)
  [ -n "$procs" ] || break
  kill -9 $procs 2>/dev/null; sleep 0.5
done
for c in /sys/fs/cgroup/*/k8s.io; do
  [ -d "$c" ] && find "$c" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
done
for n in kube-proxy kube-scheduler kube-controller-manager kube-apiserver kine containerd; do stop "$n"; done
pkill -9 -f "containerd-shim-runc-v2 -namespace k8s.io -address $D/containerd.sock" 2>/dev/null
# Anything else still running from the cluster's files (a component restarted by hand).
pkill -9 -f -- "$D/" 2>/dev/null
[ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1
# Mounts may be stacked (kubelet bind-mounts its own root dir): pass until none is left.
for _ in 1 2 3 4 5; do
  left=$(awk '{print $2}' /proc/mounts | grep -E "^(/var/lib/kubelet|$D|/var/lib/s3vol)(/|$)" | sort -r)
  [ -n "$left" ] || break
  for m in $left; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$ns"; done
ip link delete cni0 2>/dev/null
# /var/lib/s3vol: the node plugin's state dir (a hostPath of deploy/), the cluster's alone here.
rm -rf "$D" /var/lib/kubelet /var/lib/s3vol
echo "cluster: down" >&2
