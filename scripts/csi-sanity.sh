#!/usr/bin/env bash
# The official CSI conformance suite (kubernetes-csi csi-sanity) against `s3vol csi --mode
# all` on moto, full suite (identity, controller, node with real stage/publish mounts).
# Run under scripts/with-moto.sh (it exports S3VOL_MOTO_ENDPOINT). Needs root and
# /dev/fuse; prints the suite's summary line and fails on any failed spec.
# Env: CSI_SANITY (default ../shared/tools/bin/csi-sanity), S3VOL_ALLOW_SKIP=1 to let a
# non-root run pass with a message.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SANITY=${CSI_SANITY:-$ROOT/../shared/tools/bin/csi-sanity}
if [ "$(id -u)" != 0 ] || [ ! -e /dev/fuse ]; then
  echo "csi-sanity: needs root and /dev/fuse (node specs mount volumes)" >&2
  [ "${S3VOL_ALLOW_SKIP:-}" = 1 ] && { echo "csi-sanity: SKIPPED (S3VOL_ALLOW_SKIP=1)"; exit 0; }
  exit 1
fi
[ -x "$SANITY" ] || { echo "csi-sanity: $SANITY not found (set CSI_SANITY)" >&2; exit 1; }
: "${S3VOL_MOTO_ENDPOINT:?run under scripts/with-moto.sh}"

work=$(mktemp -d /tmp/s3vol-sanity.XXXXXX)
plugin=""
cleanup() {
  [ -n "$plugin" ] && kill "$plugin" 2>/dev/null && wait "$plugin" 2>/dev/null
  grep -o "$work[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  pkill -9 -f "fuse-server --control $work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

python3 - "$S3VOL_MOTO_ENDPOINT" <<'PY'
import sys, boto3
c = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1")
c.create_bucket(Bucket="sanity")
PY
# The endpoint comes as a StorageClass parameter (no driver default), as in a cluster.
printf 'bucket: sanity\nendpoint: %s\n' "$S3VOL_MOTO_ENDPOINT" > "$work/params.yaml"
: > "$work/secrets.yaml"
for k in CreateVolumeSecret DeleteVolumeSecret ControllerValidateVolumeCapabilitiesSecret CreateSnapshotSecret DeleteSnapshotSecret \
         ControllerExpandVolumeSecret NodeStageVolumeSecret NodePublishVolumeSecret; do
  printf '%s:\n  accessKeyID: testing\n  secretAccessKey: testing\n' "$k" >> "$work/secrets.yaml"
done
# ListSnapshots searches every bucket of the endpoint its secret names (no volume to
# take it from), as the VolumeSnapshotClass's list secret does in a cluster.
printf 'ListSnapshotsSecret:\n  accessKeyID: testing\n  secretAccessKey: testing\n  endpoint: %s\n' "$S3VOL_MOTO_ENDPOINT" >> "$work/secrets.yaml"
mkdir -p "$work/secrets"
mount -t tmpfs -o size=1m,mode=0700 tmpfs "$work/secrets"

# `make test` passes the binary `cargo test` built (S3VOL_BIN): building it again with
# only s3vol's features would compile every dependency a second time.
BIN=${S3VOL_BIN:-}
if [ -z "$BIN" ]; then cargo build -q -p s3vol --manifest-path "$ROOT/Cargo.toml"; BIN="$ROOT/target/debug/s3vol"; fi
"$BIN" csi --mode all --node-id sanity-node \
  --endpoint "unix://$work/csi.sock" --state-dir "$work/state" --secrets-dir "$work/secrets" \
  2> "$work/plugin.log" &
plugin=$!
for _ in $(seq 1 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done
[ -S "$work/csi.sock" ] || { cat "$work/plugin.log" >&2; exit 1; }

set +e
"$SANITY" --csi.endpoint="unix://$work/csi.sock" --csi.stagingdir="$work/staging" \
  --csi.mountdir="$work/mount" --csi.testvolumeparameters="$work/params.yaml" \
  --csi.secrets="$work/secrets.yaml" --ginkgo.fail-fast=false --ginkgo.no-color > "$work/sanity.log" 2>&1
status=$?
set -e
grep -E '^\s*\[FAIL\]' "$work/sanity.log" | sort -u || true
summary=$(grep -E '^(SUCCESS|FAIL)!' "$work/sanity.log" | tail -1)
echo "csi-sanity: ${summary:-no summary (see below)}"
if [ "$status" != 0 ]; then
  tail -50 "$work/sanity.log"
  exit 1
fi
