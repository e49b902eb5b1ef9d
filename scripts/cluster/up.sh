#!/usr/bin/env bash
# Starts a one-node Kubernetes cluster on this machine from the pinned components
# (versions.env, built by build-tools.sh): kine (SQLite) in place of etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy (iptables), containerd with runc,
# and kubelet, with a bridge CNI network for pods (cni0, 10.88.0.0/16; the API server and
# the host's services are at 10.88.0.1). Waits until the node is Ready and prints the
# kubeconfig path. Stop it with down.sh, which leaves nothing behind.
# Env: S3VOL_CLUSTER_DIR (default /var/lib/s3vol-cluster), S3VOL_TOOLS (tool cache).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
D=${S3VOL_CLUSTER_DIR:-/var/lib/s3vol-cluster}
TOOLS=${S3VOL_TOOLS:-/var/cache/s3vol-tools}
BIN=$TOOLS/bin
NODE=$(hostname)
GATEWAY=10.88.0.1
export PATH="$BIN:$PATH"

need=()
for c in runc jq capsh openssl iptables conntrack; do command -v "$c" >/dev/null || need+=("$c"); done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | sed 's/^capsh$/libcap2-bin/' | sort -u | tr '\n' ' ')
  echo "cluster: installing $pkgs" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
fi
"$HERE/build-tools.sh"

if [ -f "$D/pids" ]; then
  echo "cluster: $D/pids exists: a cluster is running or was not torn down (run down.sh)" >&2
  exit 1
fi
mkdir -p "$D"/{pki,logs,cni,containerd} /var/lib/kubelet
chmod 700 "$D"
: > "$D/pids"
# NAME COMMAND...: runs in the background, logging to logs/NAME.log; the command is kept
# in cmd/NAME so restart.sh can start it again (kubelet restarts in the scenarios).
start() {
  local name=$1; shift
  mkdir -p "$D/cmd"
  printf '%q ' "$@" > "$D/cmd/$name"
  "$@" >> "$D/logs/$name.log" 2>&1 &
  echo "$name $!" >> "$D/pids"
}
wait_for() { # WHAT SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "cluster: $what did not come up within ${secs}s; last lines of its log:" >&2
  tail -30 "$D/logs/$what.log" >&2 || true
  exit 1
}

# --- certificates (one CA; every client of the API server is a member of system:masters
# but kubelet, which the Node authorizer and NodeRestriction see as system:node:$NODE) ---
P=$D/pki
cert() { # NAME SUBJECT [SANS]
  openssl req -new -newkey rsa:2048 -nodes -keyout "$P/$1.key" -subj "$2" -out "$P/$1.csr" 2>/dev/null
  local ext=$P/$1.ext
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' > "$ext"
  [ -n "${3:-}" ] && echo "subjectAltName=$3" >> "$ext"
  openssl x509 -req -in "$P/$1.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial -days 30 -extfile "$ext" -out "$P/$1.crt" 2>/dev/null
}
openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$P/ca.key" -subj "/CN=s3vol-test-ca" -days 30 -out "$P/ca.crt" 2>/dev/null
cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:$GATEWAY,IP:10.96.0.1,DNS:localhost,DNS:$NODE,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=admin"
cert kubelet "/O=system:nodes/CN=system:node:$NODE" "IP:127.0.0.1,DNS:$NODE"
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
kubeconfig() { # FILE CERT
  cat > "$1" <<EOK
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$P/ca.crt"}}]
users: [{name: u, user: {client-certificate: "$P/$2.crt", client-key: "$P/$2.key"}}]
contexts: [{name: local, context: {cluster: local, user: u}}]
current-context: local
EOK
}
kubeconfig "$D/kubeconfig" admin
kubeconfig "$D/kubelet.kubeconfig" kubelet
export KUBECONFIG=$D/kubeconfig

# --- pod network: the bridge exists before the API server advertises its address on it ---
if ! ip link show cni0 >/dev/null 2>&1; then
  ip link add cni0 type bridge
  ip addr add "$GATEWAY/16" dev cni0
fi
ip link set cni0 up
cat > "$D/cni/10-s3vol.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "s3vol-test", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "$GATEWAY"}]],
            "dataDir": "$D/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF

# --- container runtime ---
install -m 0755 "$HERE/runc-sandbox" "$D/runc-sandbox"
cat > "$D/containerd.toml" <<EOF
version = 3
root = "$D/containerd/root"
state = "$D/containerd/state"
[grpc]
  address = "$D/containerd.sock"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "s3vol.local/pause:1"
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  BinaryName = "$D/runc-sandbox"
  SystemdCgroup = false
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "$D/cni"
EOF
start containerd containerd --config "$D/containerd.toml"
wait_for containerd 30 ctr --address "$D/containerd.sock" version
"$HERE/images.sh" "$D/containerd.sock"

# --- control plane ---
start kine kine --endpoint "sqlite://$D/kine.db?_journal=WAL&cache=shared" --listen-address 127.0.0.1:2379
wait_for kine 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2379'
start kube-apiserver kube-apiserver \
  --etcd-servers=http://127.0.0.1:2379 --storage-media-type=application/json \
  --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$GATEWAY" \
  --service-cluster-ip-range=10.96.0.0/24 --allow-privileged=true \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
  --kubelet-client-certificate="$P/admin.crt" --kubelet-client-key="$P/admin.key" \
  --kubelet-preferred-address-types=Hostname \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --endpoint-reconciler-type=lease
wait_for kube-apiserver 90 kubectl get --raw /readyz
start kube-controller-manager kube-controller-manager --kubeconfig="$D/kubeconfig" \
  --authentication-kubeconfig="$D/kubeconfig" --authorization-kubeconfig="$D/kubeconfig" \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1
start kube-scheduler kube-scheduler --kubeconfig="$D/kubeconfig" \
  --authentication-kubeconfig="$D/kubeconfig" --authorization-kubeconfig="$D/kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1
start kube-proxy kube-proxy --kubeconfig="$D/kubeconfig" --hostname-override="$NODE" \
  --proxy-mode=iptables --cluster-cidr=10.88.0.0/16 --conntrack-max-per-core=0 \
  --bind-address=127.0.0.1 --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256

# --- kubelet: switches for a constrained host (cgroup v1, no QoS cgroups, swap allowed) ---
cat > "$D/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$P/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$P/kubelet.crt"
tlsPrivateKeyFile: "$P/kubelet.key"
address: 127.0.0.1
containerRuntimeEndpoint: "unix://$D/containerd.sock"
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
protectKernelDefaults: false
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
EOF
start kubelet kubelet --config="$D/kubelet.yaml" --kubeconfig="$D/kubelet.kubeconfig" \
  --root-dir=/var/lib/kubelet --hostname-override="$NODE" --node-ip="$GATEWAY" --v=2
wait_for kubelet 120 bash -c "kubectl get node '$NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
echo "cluster: node $NODE Ready; KUBECONFIG=$D/kubeconfig" >&2
echo "$D/kubeconfig"
