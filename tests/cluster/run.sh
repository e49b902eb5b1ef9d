#!/usr/bin/env bash
# End-to-end scenarios on a real one-node cluster (scripts/cluster/up.sh): a real kubelet,
# API server, scheduler and controller-manager, containerd and runc, s3vol installed from
# deploy/ by `kubectl apply -k tests/cluster`, and moto as the store on the pod network
# (http://10.88.0.1:18555). Each scenario asserts on data (objects in the bucket, bytes
# pods read, errors pods get), not only on phases. Prints one line per scenario and
# "N passed, N failed"; exits non-zero on any failure. Tears the cluster down at the end
# (S3VOL_CLUSTER_KEEP=1 keeps it for a look). Needs root, /dev/fuse and a Docker engine.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TOOLS=${S3VOL_TOOLS:-/var/cache/s3vol-tools}
export PATH="$TOOLS/bin:$PATH"
STORE=http://10.88.0.1:18555
WORK=$(mktemp -d /tmp/s3vol-cluster-e2e.XXXXXX)
moto=

teardown() {
  [ -n "$moto" ] && kill "$moto" 2>/dev/null
  if [ "${S3VOL_CLUSTER_KEEP:-}" = 1 ]; then
    echo "cluster e2e: kept running (KUBECONFIG=$KUBECONFIG); scripts/cluster/down.sh ends it"
  else
    scripts/cluster/down.sh
  fi
  rm -rf "$WORK"
}

# `run.sh --upstream [FOCUS]`: the upstream external storage suite (e2e.test) instead of
# the scenarios, on the same install; by hand (make cluster-e2e-upstream), not in CI.
upstream=
if [ "${1:-}" = --upstream ]; then
  upstream=${2:-External.Storage}
  scripts/cluster/build-tools.sh e2e
  export S3VOL_E2E_IMAGES=1
fi
if [ -n "${S3VOL_SKIP_CONTAINERS:-}" ]; then
  echo "cluster e2e: SKIPPED: $S3VOL_SKIP_CONTAINERS"
  exit 0
fi
KUBECONFIG=$(scripts/cluster/up.sh) || { echo "cluster e2e: the cluster did not start"; scripts/cluster/down.sh; exit 1; }
export KUBECONFIG
trap teardown EXIT
python3 -m moto.server -H 10.88.0.1 -p 18555 > "$WORK/moto.log" 2>&1 &
moto=$!

# s3 OP ARGS...: the store as a tool sees it (boto3). put KEY BODY | get KEY | ls PREFIX | mb BUCKET
s3() {
  STORE=$STORE python3 - "$@" <<'PY'
import os, sys, boto3
c = boto3.client("s3", endpoint_url=os.environ["STORE"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1")
op, args = sys.argv[1], sys.argv[2:]
if op == "mb":
    c.create_bucket(Bucket=args[0])
elif op == "put":
    c.put_object(Bucket="e2e", Key=args[0], Body=args[1].encode())
elif op == "get":
    sys.stdout.write(c.get_object(Bucket="e2e", Key=args[0])["Body"].read().decode())
elif op == "ls":
    for o in c.list_objects_v2(Bucket="e2e", Prefix=args[0]).get("Contents", []):
        print(o["Key"])
PY
}
for _ in $(seq 1 50); do s3 mb e2e 2>/dev/null && break; sleep 0.2; done

kubectl apply -k tests/cluster > "$WORK/apply.log"
kubectl -n s3vol rollout status ds/s3vol-node --timeout=120s > /dev/null
kubectl -n s3vol rollout status deploy/s3vol-controller --timeout=120s > /dev/null
kubectl apply -f - > /dev/null <<EOF
apiVersion: v1
kind: Secret
metadata: {name: e2e-keys, namespace: default}
stringData: {accessKeyID: testing, secretAccessKey: testing}
EOF

if [ -n "$upstream" ]; then
  mkdir -p "$ROOT/target/tmp/upstream-e2e"
  # Disruptive tests restart nodes over SSH and Slow ones take hours: not run here.
  "$TOOLS/bin/e2e.test" -kubeconfig "$KUBECONFIG" -provider skeleton -repo-root "$ROOT" \
    -storage.testdriver="$ROOT/tests/cluster/upstream/testdriver.yaml" \
    -ginkgo.focus="$upstream" -ginkgo.skip='\[Disruptive\]|\[Slow\]|\[Serial\]' \
    -ginkgo.no-color -ginkgo.timeout="${S3VOL_E2E_TIMEOUT:-2h}" -report-dir="$ROOT/target/tmp/upstream-e2e" \
    > "$ROOT/target/tmp/upstream-e2e/e2e.log" 2>&1
  rc=$?
  grep -E "^(Ran|FAIL!|SUCCESS!|PASS|FAIL)|^\s*\[FAIL\]" "$ROOT/target/tmp/upstream-e2e/e2e.log" | sort | uniq -c | tail -40
  exit $rc
fi

# --- helpers ---------------------------------------------------------------------------
fail() { echo "    $*" >&2; return 1; }
# pv NAME HANDLE ATTRIBUTES-JSON [SECRET]: a static PV (Retain) and a claim of the same name.
pv() {
  kubectl apply -f - > /dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  csi:
    driver: s3vol.csi.io
    volumeHandle: "$2"
    volumeAttributes: $3
    nodeStageSecretRef: {name: ${4:-e2e-keys}, namespace: default}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $1, namespace: default}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: $1
  resources: {requests: {storage: 1Gi}}
EOF
}
# pod_with NAME VOLUME-SOURCE SCRIPT [VOLUME-MOUNT-EXTRA]: a non-root pod (uid/fsGroup
# 1000) running SCRIPT once, with the volume at /data.
pod_with() {
  kubectl apply -f - > /dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
  terminationGracePeriodSeconds: 5
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
  containers:
  - name: c
    image: s3vol.local/base:bookworm
    command: ["sh", "-c", $(printf '%s' "$3" | jq -Rs .)]
    volumeMounts: [{name: data, mountPath: /data ${4:-}}]
  volumes:
  - {name: data, $2}
EOF
}
# pod NAME CLAIM SCRIPT [VOLUME-MOUNT-EXTRA]: the claim at /data.
pod() { pod_with "$1" "persistentVolumeClaim: {claimName: $2}" "$3" "${4:-}"; }
ready() { kubectl wait --for=condition=Ready "pod/$1" --timeout="${2:-120}s" > /dev/null || { kubectl describe pod "$1" | tail -15 >&2; return 1; }; }
# done_ok NAME: waits for the pod to finish and for it to have succeeded.
done_ok() {
  kubectl wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$1" --timeout="${2:-120}s" > /dev/null \
    || { kubectl logs "$1" >&2; kubectl describe pod "$1" | tail -10 >&2; return 1; }
}
gone() { kubectl delete "$@" --wait=true --timeout=90s > /dev/null; }

# --- scenarios -------------------------------------------------------------------------
static_pv_non_root_writes_and_a_second_pod_reads() {
  s3 put static/readme.txt "from the bucket"
  pv static static-e2e '{bucket: e2e, prefix: static, endpoint: "'$STORE'"}'
  pod writer static 'cat /data/readme.txt > /tmp/r && test "$(cat /tmp/r)" = "from the bucket" && echo "written by a pod" > /data/out.txt && id -u > /data/uid'
  done_ok writer
  [ "$(s3 get static/out.txt)" = "written by a pod" ] || fail "out.txt in the bucket: $(s3 get static/out.txt)"
  pod reader static 'test "$(cat /data/out.txt)" = "written by a pod" && ls -ln /data/out.txt | awk "{print \$3, \$4}" | grep -qx "1000 1000"'
  done_ok reader
  gone pod writer reader
  gone pvc static
  gone pv static
  [ "$(s3 get static/out.txt)" = "written by a pod" ] || fail "a Retain PV's data was removed"
}

read_only_volume_refuses_writes() {
  pv ro ro-e2e '{bucket: e2e, prefix: ro, endpoint: "'$STORE'"}'
  s3 put ro/kept.txt "kept"
  pod ro-pod ro 'test "$(cat /data/kept.txt)" = kept && ! touch /data/new 2> /tmp/err && grep -q "Read-only file system" /tmp/err' ', readOnly: true'
  done_ok ro-pod
  [ -z "$(s3 ls ro/new)" ] || fail "a read-only pod wrote ro/new"
  gone pod ro-pod; gone pvc ro; gone pv ro
}

sub_path_is_a_directory_of_the_volume() {
  pv sub sub-e2e '{bucket: e2e, prefix: subvol, endpoint: "'$STORE'"}'
  pod sub-pod sub 'echo in-sub > /data/file' ', subPath: team-a'
  done_ok sub-pod
  [ "$(s3 get subvol/team-a/file)" = "in-sub" ] || fail "subPath write not under subvol/team-a/"
  gone pod sub-pod; gone pvc sub; gone pv sub
}

# inline_pod NAME ATTRIBUTES SECRET-REF SCRIPT: a `csi:` inline volume at /data, written
# as a pod author writes one.
inline_pod() { pod_with "$1" "csi: {driver: s3vol.csi.io, volumeAttributes: $2 $3}" "$4"; }

inline_volume_lives_with_its_pod() {
  inline_pod inline '{bucket: e2e, prefix: inline, endpoint: "'$STORE'", mountOptions: "uid=1000,gid=1000"}' \
    ', nodePublishSecretRef: {name: e2e-keys}' 'echo inline > /data/i.txt && sleep 3600'
  ready inline
  for _ in $(seq 1 50); do [ "$(s3 get inline/i.txt 2>/dev/null)" = inline ] && break; sleep 0.2; done
  [ "$(s3 get inline/i.txt)" = inline ] || fail "inline write not in the bucket"
  gone pod inline
  ! grep -q "kubernetes.io~csi/data" /proc/mounts || fail "the inline volume is still mounted after its pod"
}

# A pod author's inline volume that names the node's own files, or no keys, is refused:
# the pod never starts, its events say why, and deleting it does not hang.
hostile_inline_volumes_are_refused() {
  # endpoint|secret|what the event must say|mount options
  for case in "file:///var/lib/kubelet|e2e-keys|file:///var/lib/kubelet\" is not allowed|" "$STORE|none|own keys|" \
      "$STORE|e2e-keys|cannot keep a read cache on the node|read_cache_size=100000,free_space_ratio=0" \
      "$STORE|e2e-keys|the node plugin keeps each volume|read_cache_dir=/var/lib/kubelet" \
      "$STORE|e2e-keys|cannot choose a directory on the node|cache_dir=/var/lib/kubelet"; do
    IFS='|' read -r endpoint secret want opts <<< "$case"
    local ref=""
    [ "$secret" != none ] && ref=", nodePublishSecretRef: {name: $secret}"
    inline_pod hostile "{bucket: kubelet, endpoint: \"$endpoint\", mountOptions: \"$opts\"}" "$ref" 'sleep 3600'
    local seen=
    for _ in $(seq 1 60); do
      if kubectl get events --field-selector involvedObject.name=hostile -o jsonpath='{.items[*].message}' | grep -q "$want"; then seen=1; break; fi
      sleep 1
    done
    [ -n "$seen" ] || { kubectl describe pod hostile | tail -5 >&2; fail "no FailedMount event saying '$want'"; }
    [ "$(kubectl get pod hostile -o jsonpath='{.status.phase}')" = Pending ] || fail "the hostile pod started"
    [ ! -e /var/lib/kubelet/kubelet ] || fail "a directory was made for the hostile store"
    gone pod hostile
  done
}

# PVs written for the Alibaba OSS driver and for k8s-csi-s3, with only `driver:` changed.
other_drivers_pvs_work_with_only_the_driver_changed() {
  kubectl apply -f - > /dev/null <<EOF
apiVersion: v1
kind: Secret
metadata: {name: oss-keys, namespace: default}
stringData: {akId: testing, akSecret: testing}
---
apiVersion: v1
kind: Secret
metadata: {name: csi-s3-keys, namespace: default}
stringData: {accessKeyID: testing, secretAccessKey: testing, endpoint: "$STORE"}
EOF
  pv oss-pv oss-pv '{bucket: e2e, url: "'$STORE'", path: /oss-data, otherOpts: "-o max_stat_cache_size=1000 -o allow_other"}' oss-keys
  pv csi-s3-pv e2e/csi-s3-data '{mounter: geesefs, options: "--memory-limit 1000 --dir-mode 0777 --file-mode 0666"}' csi-s3-keys
  pod oss-pod oss-pv 'echo oss > /data/o.txt'
  pod csi-s3-pod csi-s3-pv 'echo csi-s3 > /data/c.txt'
  done_ok oss-pod; done_ok csi-s3-pod
  [ "$(s3 get oss-data/o.txt)" = oss ] || fail "the OSS driver's PV did not write under its path"
  [ "$(s3 get csi-s3-data/c.txt)" = csi-s3 ] || fail "the k8s-csi-s3 PV did not write under its prefix"
  gone pod oss-pod csi-s3-pod; gone pvc oss-pv csi-s3-pv; gone pv oss-pv csi-s3-pv
}

# A pod writing and reading all along while the node plugin's DaemonSet is rolled out:
# every operation succeeds (the mount pods, which serve the volume, are not touched).
node_plugin_rollout_while_a_pod_does_io() {
  pv roll roll-e2e '{bucket: e2e, prefix: roll, endpoint: "'$STORE'"}'
  pod roller roll 'i=0; bad=0; while [ ! -e /data/stop ] && [ $i -lt 3000 ]; do i=$((i+1)); echo $i > /data/n$((i % 20)) || bad=$((bad+1)); [ "$(cat /data/n$((i % 20)))" = $i ] || bad=$((bad+1)); sleep 0.05; done; echo "ops=$i failed=$bad" > /data/result; echo "ops=$i failed=$bad"'
  ready roller
  sleep 2
  local before after
  before=$(kubectl -n s3vol get pods -l app.kubernetes.io/name=s3vol-node -o name)
  kubectl -n s3vol rollout restart ds/s3vol-node > /dev/null
  kubectl -n s3vol rollout status ds/s3vol-node --timeout=180s > /dev/null || fail "rollout did not finish"
  after=$(kubectl -n s3vol get pods -l app.kubernetes.io/name=s3vol-node -o name)
  [ -n "$after" ] && [ "$before" != "$after" ] || fail "the node plugin pod was not replaced ($before -> $after)"
  sleep 3
  s3 put roll/stop ""
  done_ok roller 180
  local result
  result=$(kubectl logs roller)
  echo "    rollout: $result" >&2
  echo "$result" | grep -q " failed=0$" || fail "operations failed during the rollout: $result"
  echo "node plugin rollout while a pod wrote and read: $result" >> "$ROOT/target/tmp/cluster-scenarios.txt"
  gone pod roller; gone pvc roll; gone pv roll
}

# kubelet restarts (an upgrade, a crash): running pods keep their volume and a new pod
# of the same volume mounts it (kubelet reconstructs its volumes from the node).
kubelet_restart_keeps_volumes() {
  pv kr kr-e2e '{bucket: e2e, prefix: kr, endpoint: "'$STORE'"}'
  pod kr-1 kr 'while [ ! -e /data/stop ]; do date > /data/alive || exit 1; sleep 0.2; done'
  ready kr-1
  scripts/cluster/restart.sh kubelet
  sleep 5
  kubectl wait --for=condition=Ready node --all --timeout=120s > /dev/null || fail "node not Ready after the restart"
  # kr-1 rewrites `alive` (O_TRUNC) all along, so its size may be 0 at any moment: the
  # new pod checks the file is there, not that it has bytes.
  pod kr-2 kr 'test -e /data/alive && echo second > /data/second'
  done_ok kr-2
  [ "$(s3 get kr/second)" = second ] || fail "a pod after the kubelet restart did not write"
  [ "$(kubectl get pod kr-1 -o jsonpath='{.status.containerStatuses[0].restartCount}')" = 0 ] || fail "kr-1 restarted"
  s3 put kr/stop ""
  kubectl wait --for=jsonpath='{.status.phase}'=Succeeded pod/kr-1 --timeout=60s > /dev/null || fail "kr-1 lost its volume: $(kubectl logs kr-1)"
  gone pod kr-1 kr-2; gone pvc kr; gone pv kr
}

# A pod whose volume's mount pod was force-deleted (its FUSE server gone) still ends: it
# must never hang in Terminating.
pod_with_a_dead_mount_server_terminates() {
  pv dead dead-e2e '{bucket: e2e, prefix: dead, endpoint: "'$STORE'"}'
  pod dead-pod dead 'sleep 3600'
  ready dead-pod
  local mp
  mp=$(kubectl -n s3vol get pods -l app.kubernetes.io/name=s3vol-mount -o name | head -1)
  [ -n "$mp" ] || mp=$(kubectl -n s3vol get pods -o name | grep s3vol-mount | head -1)
  [ -n "$mp" ] || fail "no mount pod found"
  kubectl -n s3vol delete "$mp" --grace-period=0 --force > /dev/null 2>&1
  local t0=$SECONDS
  gone pod dead-pod || fail "the pod did not terminate within 90 s"
  echo "    pod with a dead mount server terminated in $((SECONDS - t0)) s" >&2
  gone pvc dead; gone pv dead
}

# deploy/examples/minio as a user fills it in: the store's address and keys.
example() {
  sed -e "s|http://minio.minio.svc.cluster.local:9000|$STORE|" -e "s|bucket: k8s-volumes|bucket: e2e|" \
    -e "s|REPLACE_WITH_ACCESS_KEY_ID|testing|; s|REPLACE_WITH_SECRET_ACCESS_KEY|testing|" "deploy/examples/minio/$1"
}

# A claim of deploy/examples' prefix class (reclaimPolicy Delete, onDelete delete): bound
# through CreateVolume, mounted by kubelet in two pods at once, and its data gone from the
# bucket once the claim is deleted.
dynamic_prefix_claim_from_the_example_class() {
  example secret.yaml | kubectl apply -f - > /dev/null
  example storageclass-prefix.yaml | kubectl apply -f - > /dev/null
  example pvc-dynamic.yaml | kubectl apply -f - > /dev/null
  kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/s3vol-minio-dynamic --timeout=120s > /dev/null \
    || { kubectl describe pvc s3vol-minio-dynamic | tail -8 >&2; fail "the claim was not bound"; }
  local pv
  pv=$(kubectl get pvc s3vol-minio-dynamic -o jsonpath='{.spec.volumeName}')
  pod dyn-writer s3vol-minio-dynamic 'echo dynamic > /data/d.txt && sleep 2'
  pod dyn-reader s3vol-minio-dynamic 'for i in $(seq 1 50); do [ "$(cat /data/d.txt 2>/dev/null)" = dynamic ] && exit 0; sleep 0.2; done; exit 1'
  done_ok dyn-writer; done_ok dyn-reader
  [ "$(s3 get "volumes/$pv/d.txt")" = dynamic ] || fail "the claim's file is not at volumes/$pv/d.txt"
  gone pod dyn-writer dyn-reader
  gone pvc s3vol-minio-dynamic
  for _ in $(seq 1 60); do kubectl get pv "$pv" > /dev/null 2>&1 || break; sleep 1; done
  ! kubectl get pv "$pv" > /dev/null 2>&1 || fail "the PV was not deleted"
  [ -z "$(s3 ls "volumes/$pv/")" ] || fail "objects left under volumes/$pv/: $(s3 ls "volumes/$pv/")"
  gone storageclass s3vol-minio-prefix
}

# A claim of deploy/examples' dataset class (read cache on): what one pod read, the next
# pod reads from the node's cache (the node plugin's metrics count the hits), the cache is
# root's only, and it is gone once the node unmounts the volume. This machine's disk is
# more than 80 % full, so the class's free_space_ratio=0.2 would cache nothing here: the
# scenario lowers it to 0.05, and nothing else.
dataset_class_reads_the_next_epoch_from_the_node_cache() {
  example secret.yaml | kubectl apply -f - > /dev/null
  example storageclass-dataset.yaml | sed 's/free_space_ratio=0.2/free_space_ratio=0.05/' | kubectl apply -f - > /dev/null
  example pvc-dynamic.yaml | sed 's/s3vol-minio-prefix/s3vol-minio-dataset/; s/s3vol-minio-dynamic/dataset/' | kubectl apply -f - > /dev/null
  kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/dataset --timeout=120s > /dev/null || fail "the claim was not bound"
  local pv hits0 hits1 blocks
  pv=$(kubectl get pvc dataset -o jsonpath='{.spec.volumeName}')
  # The writer stays (as a Deployment's replica would), so the volume stays staged on the
  # node while the epoch pods come and go: the cache lives as long as the node has the
  # volume staged.
  pod ds-writer dataset 'head -c 6291456 /dev/urandom > /data/train.bin && md5sum < /data/train.bin > /data/train.md5 && sleep 3600'
  ready ds-writer
  for _ in $(seq 1 100); do [ -n "$(s3 ls "datasets/$pv/train.md5")" ] && break; sleep 0.2; done
  [ -n "$(s3 ls "datasets/$pv/train.md5")" ] || fail "the writer's files did not reach the bucket"
  # An epoch: read everything, check it, after the 1 s in which an open trusts its last check.
  local epoch='sleep 1.5; test "$(md5sum < /data/train.bin)" = "$(cat /data/train.md5)"'
  pod ds-epoch1 dataset "$epoch"
  done_ok ds-epoch1
  for _ in $(seq 1 50); do
    blocks=$(find /var/lib/s3vol -path '*/read-cache/blocks/*' -type f | wc -l)
    [ "$blocks" -ge 6 ] && break; sleep 0.2
  done
  [ "$blocks" -ge 6 ] || fail "the node cache holds $blocks blocks after reading 6 MiB"
  [ -z "$(find /var/lib/s3vol -path '*/read-cache*' \( -type f ! -perm 0600 -o -type d ! -perm 0700 \) -print)" ] \
    || fail "read cache files readable beyond their owner: $(find /var/lib/s3vol -path '*/read-cache*' -ls | head -3)"
  local node_ip
  node_ip=$(kubectl -n s3vol get pod -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}' | awk '/^s3vol-node/ {print $2}')
  # The node plugin's metrics, with every server's (the read cache's counters among them).
  hit() { curl -sf "http://$node_ip:9810/metrics" | awk '/^s3vol_read_cache_bytes_total\{/ && /result="hit"/ {s += $NF} END {print s + 0}'; }
  hits0=$(hit)
  # The kernel keeps what epoch 1 read in its page cache (the pods share the node's
  # mount): drop it, so epoch 2's reads reach the server and its cache, as under memory
  # pressure or after the pages aged out.
  sync; echo 3 > /proc/sys/vm/drop_caches
  pod ds-epoch2 dataset "$epoch"
  done_ok ds-epoch2
  hits1=$(hit)
  [ "$((hits1 - hits0))" -ge 6291456 ] || fail "the second epoch read $((hits1 - hits0)) bytes from the cache, want 6291456"
  gone pod ds-writer ds-epoch1 ds-epoch2
  for _ in $(seq 1 50); do [ -z "$(find /var/lib/s3vol -type d -name read-cache)" ] && break; sleep 0.2; done
  [ -z "$(find /var/lib/s3vol -type d -name read-cache)" ] || fail "the read cache outlived the volume's unstage"
  gone pvc dataset
  kubectl delete pv "$pv" --wait=false > /dev/null
  gone storageclass s3vol-minio-dataset
}

scenarios=(
  dynamic_prefix_claim_from_the_example_class
  dataset_class_reads_the_next_epoch_from_the_node_cache
  static_pv_non_root_writes_and_a_second_pod_reads
  read_only_volume_refuses_writes
  sub_path_is_a_directory_of_the_volume
  inline_volume_lives_with_its_pod
  hostile_inline_volumes_are_refused
  other_drivers_pvs_work_with_only_the_driver_changed
  node_plugin_rollout_while_a_pod_does_io
  kubelet_restart_keeps_volumes
  pod_with_a_dead_mount_server_terminates
)
[ $# -gt 0 ] && scenarios=("$@")
mkdir -p "$ROOT/target/tmp"
: > "$ROOT/target/tmp/cluster-scenarios.txt"
passed=0 failed=0
for s in "${scenarios[@]}"; do
  t0=$SECONDS
  # Not in an `if`: there `set -e` would be ignored inside the scenario.
  ( set -e; "$s" )
  rc=$?
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1)); echo "ok     $s ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); echo "FAILED $s ($((SECONDS - t0)) s)"
    kubectl get pods -A -o wide >&2
    kubectl -n s3vol logs ds/s3vol-node -c s3vol --tail=20 >&2
    # Leave nothing for the next scenario.
    kubectl delete pod --all -n default --grace-period=0 --force > /dev/null 2>&1
    kubectl delete pvc --all -n default --wait=false > /dev/null 2>&1
    kubectl delete pv --all --wait=false > /dev/null 2>&1
  fi
done
echo "cluster e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
