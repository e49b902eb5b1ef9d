#!/usr/bin/env bash
# Puts the test cluster's images into its containerd (namespace k8s.io), with no registry:
#   s3vol.local/pause:1            the pod sandbox (tools/pause)
#   ghcr.io/s3vol/s3vol:0.1.0      this repository's Dockerfile with the binary built here:
#                                  the name deploy/ gives the image, so its files apply as-is
#   s3vol.local/registrar:test     stand-ins for node-driver-registrar, livenessprobe and
#   s3vol.local/livenessprobe:test external-provisioner (tools/; their modules are not
#   s3vol.local/provisioner:test   served here)
#   s3vol.local/base:bookworm      a Debian root (debootstrap) for test pods: sh, python3
# Usage: images.sh CONTAINERD_SOCKET. Needs a Docker engine (scripts/dockerd.sh) to build.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SOCK=$1
TOOLS=${S3VOL_TOOLS:-/var/cache/s3vol-tools}
DOCKER=${DOCKER:-docker}
ctr_() { "$TOOLS/bin/ctr" --address "$SOCK" -n k8s.io "$@"; }

"$ROOT/scripts/dockerd.sh" >/dev/null
# s3vol:test and s3vol-base:bookworm from the node harness's script (same binary rules;
# the debug build the tests use when there is one, as they do).
if [ -z "${S3VOL_BIN:-}" ] && [ -x "$ROOT/target/debug/s3vol" ]; then export S3VOL_BIN=target/debug/s3vol; fi
(cd "$ROOT" && scripts/images.sh) >&2

# IMAGE BINARY: a one-file image whose entrypoint is the static binary.
single() {
  local dir
  dir=$(mktemp -d)
  cp "$TOOLS/bin/$2" "$dir/$2"
  tar -C "$dir" -c . | $DOCKER import -c "ENTRYPOINT [\"/$2\"]" - "$1" >/dev/null
  rm -rf "$dir"
}
single s3vol.local/pause:1 pause
single s3vol.local/registrar:test registrar
single s3vol.local/livenessprobe:test livenessprobe
single s3vol.local/provisioner:test provisioner
$DOCKER tag s3vol:test ghcr.io/s3vol/s3vol:0.1.0
$DOCKER tag s3vol-base:bookworm s3vol.local/base:bookworm

images=(s3vol.local/pause:1 ghcr.io/s3vol/s3vol:0.1.0 s3vol.local/registrar:test
  s3vol.local/livenessprobe:test s3vol.local/provisioner:test s3vol.local/base:bookworm)

# For the upstream suite (S3VOL_E2E_IMAGES=1): the images its pods name, made here from the
# same release's agnhost (build-tools.sh e2e), Debian's static busybox, our pause, and
# our Debian base for nginx (the storage tests run only shell commands in it).
if [ "${S3VOL_E2E_IMAGES:-}" = 1 ]; then
  dpkg -s busybox-static >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null; }
  dir=$(mktemp -d)
  mkdir -p "$dir/bin" "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$dir/bin/$a"; done
  tar -C "$dir" -c . | $DOCKER import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - registry.k8s.io/e2e-test-images/busybox:1.37.0-1 >/dev/null
  rm -rf "$dir"
  dir=$(mktemp -d)
  cp "$TOOLS/bin/agnhost" "$dir/agnhost"
  printf 'FROM s3vol-base:bookworm\nCOPY agnhost /agnhost\nENTRYPOINT ["/agnhost"]\n' > "$dir/Dockerfile"
  $DOCKER build -q --network host -t registry.k8s.io/e2e-test-images/agnhost:2.63.0 "$dir" >/dev/null
  rm -rf "$dir"
  $DOCKER tag s3vol.local/pause:1 registry.k8s.io/pause:3.10.2
  # The storage tests that name nginx run only shell commands in it.
  $DOCKER tag s3vol-base:bookworm registry.k8s.io/e2e-test-images/nginx:1.15-4
  images+=(registry.k8s.io/e2e-test-images/busybox:1.37.0-1 registry.k8s.io/e2e-test-images/agnhost:2.63.0
    registry.k8s.io/pause:3.10.2 registry.k8s.io/e2e-test-images/nginx:1.15-4)
fi

for image in "${images[@]}"; do
  id=$($DOCKER image inspect -f '{{.Id}}' "$image")
  if [ "$(ctr_ images ls -q "name==docker.io/$image" "name==$image" 2>/dev/null | head -1)" != "" ] \
     && [ "$(cat "$TOOLS/.image-$(echo "$image" | tr '/:' '__')" 2>/dev/null)" = "$id" ]; then
    continue
  fi
  $DOCKER save "$image" | ctr_ images import --all-platforms - >/dev/null
  echo "$id" > "$TOOLS/.image-$(echo "$image" | tr '/:' '__')"
  echo "cluster images: imported $image" >&2
done
