#!/usr/bin/env bash
# Builds the pinned Go tools (versions.env) into a cache: $S3VOL_TOOLS/bin (default
# /var/cache/s3vol-tools). A tool already built at its pinned version is reused, so a
# second run takes seconds. Only the Go module proxy is used; nothing is committed.
# Usage: build-tools.sh [TOOL...]   (default: every tool the one-node cluster needs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"
TOOLS=${S3VOL_TOOLS:-/var/cache/s3vol-tools}
BIN=$TOOLS/bin
mkdir -p "$BIN" "$TOOLS/src"
export GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=${CGO_ENABLED:-1}

# stamp NAME VERSION: whether NAME is already built at VERSION.
built() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$BIN/.$1.version"; }

# A module of ours that requires k8s.io/kubernetes at its pinned version and points every
# staging module it replaces with its own tree at the published release of that tree.
kubernetes_module() {
  local dir=$TOOLS/src/kubernetes-$KUBERNETES_VERSION
  if [ ! -f "$dir/go.sum" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    local gomod
    gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",/\1/p')
    {
      echo "module s3vol.local/kubernetes-tools"
      echo
      sed -n 's/^go \(.*\)/go \1/p' "$gomod"
      echo
      echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
      echo
      sed -n 's|^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*|replace \1 => \1 '"$KUBERNETES_STAGING_VERSION"'|p' "$gomod"
    } > "$dir/go.mod"
    printf 'package tools\n\nimport _ "k8s.io/kubernetes/cmd/kubelet/app"\n' > "$dir/tools.go"
    (cd "$dir" && go mod tidy >/dev/null)
  fi
  echo "$dir"
}

build_kubernetes() {
  local want=() c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    built "$c" "$KUBERNETES_VERSION" || want+=("$c")
  done
  [ ${#want[@]} -eq 0 ] && return 0
  local dir; dir=$(kubernetes_module)
  for c in "${want[@]}"; do
    echo "build-tools: building $c $KUBERNETES_VERSION" >&2
    (cd "$dir" && go get "k8s.io/kubernetes/cmd/$c@$KUBERNETES_VERSION" >/dev/null 2>&1 || true
     cd "$dir" && go build -o "$BIN/$c" "k8s.io/kubernetes/cmd/$c")
    stamp "$c" "$KUBERNETES_VERSION"
  done
}

# The upstream end-to-end suite (e2e.test, with its External.Storage tests) and agnhost,
# the image most of its pods run, from the same pinned release: a module of ours that
# imports what e2e_test.go and agnhost import, so `go mod tidy` pins all of it. By hand
# only (`build-tools.sh e2e`): CI runs the scenarios of tests/cluster/run.sh instead.
build_e2e() {
  built e2e.test "$KUBERNETES_VERSION" && built agnhost "$KUBERNETES_VERSION" && return 0
  local dir=$TOOLS/src/kubernetes-e2e-$KUBERNETES_VERSION k8s
  k8s=$(kubernetes_module)
  if [ ! -f "$dir/go.sum" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    sed 's|^module .*|module s3vol.local/kubernetes-e2e|' "$k8s/go.mod" > "$dir/go.mod"
    local src
    src=$(cd "$k8s" && go list -m -f '{{.Dir}}' "k8s.io/kubernetes")
    {
      echo "package tools"; echo; echo "import ("
      for f in "$src/test/e2e/e2e_test.go" "$src/test/images/agnhost/agnhost.go"; do
        sed -n '/^import (/,/^)/p' "$f" | grep -oE '"[^"]+/[^"]+"' | grep -E 'k8s.io|github.com|go.yaml.in' | sed 's/^/\t_ /'
      done | sort -u
      echo ")"
    } > "$dir/tools.go"
    (cd "$dir" && go mod tidy >/dev/null)
  fi
  echo "build-tools: building e2e.test and agnhost $KUBERNETES_VERSION" >&2
  (cd "$dir" && go test -c -o "$BIN/e2e.test" k8s.io/kubernetes/test/e2e && go build -o "$BIN/agnhost" k8s.io/kubernetes/test/images/agnhost)
  stamp e2e.test "$KUBERNETES_VERSION"; stamp agnhost "$KUBERNETES_VERSION"
}

# A plain `go install` for modules without replace directives.
install_module() { # NAME PACKAGE VERSION
  built "$1" "$3" && return 0
  echo "build-tools: building $1 $3" >&2
  GOBIN=$TOOLS/gobin go install "$2@$3"
  mv "$TOOLS/gobin/$(basename "$2")" "$BIN/$1"
  stamp "$1" "$3"
}

build_kine() { install_module kine github.com/k3s-io/kine "$KINE_VERSION"; }
build_containerd() {
  install_module containerd github.com/containerd/containerd/v2/cmd/containerd "$CONTAINERD_VERSION"
  install_module containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$CONTAINERD_VERSION"
  install_module ctr github.com/containerd/containerd/v2/cmd/ctr "$CONTAINERD_VERSION"
}

# The benchmark's world (bench/world.sh): MinIO as the store, toxiproxy for cloud latency.
build_minio() { install_module minio github.com/minio/minio "$MINIO_VERSION"; }
build_toxiproxy() {
  install_module toxiproxy-server github.com/Shopify/toxiproxy/v2/cmd/server "$TOXIPROXY_VERSION"
  install_module toxiproxy-cli github.com/Shopify/toxiproxy/v2/cmd/cli "$TOXIPROXY_VERSION"
}

# Our own Go programs for the cluster (tools/): the pause image's process, and stand-ins
# for the kubernetes-csi sidecars the module proxy does not serve (registrar,
# livenessprobe, provisioner).
CLUSTER_TOOLS=(pause registrar livenessprobe provisioner)
build_cluster_tools() {
  local sum t missing=0
  sum=$(cat "$HERE"/tools/go.mod "$HERE"/tools/go.sum "$HERE"/tools/*/main.go | sha256sum | cut -c1-16)
  for t in "${CLUSTER_TOOLS[@]}"; do built "$t" "$sum" || missing=1; done
  [ "$missing" = 0 ] && return 0
  echo "build-tools: building ${CLUSTER_TOOLS[*]} ($sum)" >&2
  for t in "${CLUSTER_TOOLS[@]}"; do
    (cd "$HERE/tools" && CGO_ENABLED=0 go build -o "$BIN/$t" "./$t")
    stamp "$t" "$sum"
  done
}

tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=(kubernetes kine containerd cluster_tools)
for t in "${tools[@]}"; do "build_$t"; done
echo "build-tools: ${tools[*]} ready in $BIN" >&2
