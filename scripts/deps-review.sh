#!/usr/bin/env bash
# What we ship besides our own code (issue 13 §5), checked offline: every dependency's
# license is one of the permissive ones below (no copyleft in a binary users run), and
# the crates present in more than one version are listed for review. `cargo deny` would
# add the advisory database, which is fetched from GitHub (not reachable here).
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n "s/^host: //p")
mkdir -p target
cargo metadata --format-version 1 --locked --filter-platform "$host" > target/deps-metadata.json
python3 - target/deps-metadata.json <<'PY'
import json, re, sys
meta = json.load(open(sys.argv[1]))
ours = {p["id"] for p in meta["packages"] if p["source"] is None}
allowed = {"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib", "Unicode-3.0", "Unicode-DFS-2016",
           "CC0-1.0", "MPL-2.0", "BSL-1.0", "0BSD", "OpenSSL", "Unlicense", "Apache-2.0 WITH LLVM-exception", "CDLA-Permissive-2.0"}
bad, unknown = [], []
for p in meta["packages"]:
    if p["id"] in ours:
        continue
    lic = p.get("license")
    if not lic:
        unknown.append(f'{p["name"]} {p["version"]}')
        continue
    # "A OR B": one acceptable choice is enough; "A AND B": all are needed.
    ok = any(all(t.strip("() ") in allowed for t in re.split(r"\s+AND\s+", alt))
             for alt in re.split(r"\s+OR\s+|/", lic.replace("(", "").replace(")", "")))
    if not ok:
        bad.append(f'{p["name"]} {p["version"]}: {lic}')
versions = {}
for p in meta["packages"]:
    versions.setdefault(p["name"], set()).add(p["version"])
dups = sorted(f"{n} ({', '.join(sorted(v))})" for n, v in versions.items() if len(v) > 1)
print(f"deps review: {len(meta['packages']) - len(ours)} crates, licenses all permissive: {'yes' if not bad and not unknown else 'NO'}")
print(f"deps review: {len(dups)} crates in more than one version: " + "; ".join(dups))
for b in bad:
    print(f"deps review: license not allowed: {b}", file=sys.stderr)
for u in unknown:
    print(f"deps review: no license field: {u}", file=sys.stderr)
sys.exit(1 if bad or unknown else 0)
PY

# The layering the crates promise (docs/ARCHITECTURE.md): the CSI driver never links
# fuser, and the data plane (filesystem, FUSE adapter, server, handoff protocol) never
# depends on the CSI driver.
layering_ok=yes
if cargo tree -p s3vol-csi -e normal --prefix none --locked | grep -q '^fuser '; then
    echo "deps review: s3vol-csi depends on fuser" >&2; layering_ok=no
fi
for crate in s3vol-fs s3vol-fuse s3vol-server s3vol-handoff s3vol-store; do
    if cargo tree -p "$crate" -e normal --prefix none --locked | grep -q '^s3vol-csi '; then
        echo "deps review: $crate depends on s3vol-csi" >&2; layering_ok=no
    fi
done
echo "deps review: layering (csi without fuser, data plane without csi): $layering_ok"
[ "$layering_ok" = yes ]
