#!/usr/bin/env bash
# Container images without a registry, for the node harness (tests/node):
#   s3vol-base:bookworm   a Debian root filesystem from debootstrap (cached: built once)
#   s3vol:test            the real Dockerfile on that base, with the binary built here
#                         (S3VOL_BINARY=context), rebuilt when the binary changes
#   s3vol:test-next       the same binary under a second tag: "a newer image" for rollouts
# Idempotent; prints what it built or found. Needs a running Docker engine (scripts/dockerd.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
base=s3vol-base:bookworm
cache=${S3VOL_IMAGE_CACHE:-/var/cache/s3vol-images}
mkdir -p "$cache"

if $DOCKER image inspect "$base" >/dev/null 2>&1; then
  echo "images: $base present"
else
  tarball="$cache/bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "images.sh: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
    root=$(mktemp -d "$cache/root.XXXXXX")
    echo "images: debootstrap bookworm into $root (about a minute)"
    debootstrap --variant=minbase --include=ca-certificates,python3,util-linux,procps \
      bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  $DOCKER import "$tarball" "$base" >/dev/null
  echo "images: built $base from $tarball"
fi

# The binary to put in the image: S3VOL_BIN (a path under target/, e.g. the debug build the
# tests use), or a release build made now.
bin=${S3VOL_BIN:-target/release/s3vol}
bin=${bin#"$PWD/"}
case "$bin" in target/*) ;; *) echo "images.sh: S3VOL_BIN must be under target/: $bin" >&2; exit 1 ;; esac
if [ -z "${S3VOL_BIN:-}" ]; then cargo build --release -p s3vol; fi
[ -x "$bin" ] || { echo "images.sh: $bin missing" >&2; exit 1; }
sum=$(sha256sum "$bin" | cut -c1-16)
# docker's own BuildKit (skips the unused rust stage); a client without buildx falls back
# to Debian's docker client, whose BuildKit is built in.
builder=$DOCKER
if ! $DOCKER buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then builder=/usr/bin/docker; fi
if [ "$($DOCKER image inspect -f '{{index .Config.Labels "s3vol.binary"}}' s3vol:test 2>/dev/null || true)" = "$sum" ]; then
  echo "images: s3vol:test present (binary $sum)"
else
  # The real Dockerfile; only the base and the binary's source differ from a release build.
  DOCKER_BUILDKIT=1 $builder build --network host -q \
    --build-arg BASE_IMAGE="$base" --build-arg S3VOL_BINARY=context --build-arg S3VOL_BINARY_PATH="$bin" \
    --label s3vol.binary="$sum" -t s3vol:test . >/dev/null
  echo "images: built s3vol:test (binary $sum)"
fi
$DOCKER tag s3vol:test s3vol:test-next
echo "images: tagged s3vol:test-next"
