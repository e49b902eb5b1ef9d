//! A Kubernetes node in containers: the node plugin runs in a container the way
//! `deploy/kubernetes/base/node.yaml` runs it (root, CAP_SYS_ADMIN, /dev/fuse, the kubelet
//! directory shared `rshared`, the state dir, a tmpfs secrets dir), the test plays the
//! kubelet (CSI calls with kubelet's paths and pod-info attributes), applications are
//! containers with the published target bound in with private propagation (the default),
//! and mount pods are containers started through a Kubernetes API stand-in that turns
//! Pods into `docker run`. Scenarios: plugin container restart and rollout to a newer
//! image, mount pod killed and restarted, a pod deleted while its server is dead, a node
//! reboot, and the in-container process mode for comparison. Each prints its numbers.
//!
//! Needs root, /dev/fuse and a Docker engine (`scripts/dockerd.sh` starts one; `.ci/run`
//! does). Images come from `scripts/images.sh` (no registry needed).

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use s3vol_csi::pb::node_client::NodeClient;
use s3vol_csi::pb::{self, volume_capability};
use s3vol_testkit::{FakeKubeApi, PodRuntime, TestS3, ACCESS_KEY, SECRET_KEY};
use serde_json::{json, Value};
use tonic::transport::Channel;

const BASE_IMAGE: &str = "s3vol-base:bookworm";
const IMAGE: &str = "s3vol:test";
const NEXT_IMAGE: &str = "s3vol:test-next";
const DRIVER: &str = "s3vol.csi.io";
const NAMESPACE: &str = "s3vol";
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().expect("docker client");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn docker_ok(args: &[&str]) -> String {
    let (ok, out) = docker(args);
    assert!(ok, "docker {args:?}: {out}");
    out
}

/// The engine and the images, once per run. `None`: skip (only when `.ci/run` found that
/// no engine can start here and said so in `S3VOL_SKIP_CONTAINERS`).
fn harness_ready() -> Option<()> {
    if !can_mount() {
        return None;
    }
    if let Ok(why) = std::env::var("S3VOL_SKIP_CONTAINERS") {
        eprintln!("SKIPPED: the container node harness: {why}");
        return None;
    }
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let run = |script: &str| {
            let out = Command::new(format!("{REPO}/scripts/{script}"))
                .current_dir(REPO)
                .env("S3VOL_BIN", BIN)
                .output()
                .map_err(|e| format!("{script}: {e}"))?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                eprint!("{text}");
                Ok(())
            } else {
                Err(format!("{script} failed: {text}"))
            }
        };
        run("dockerd.sh")?;
        run("images.sh")
    });
    if let Err(e) = ready {
        panic!("the container node harness cannot run: {e}");
    }
    Some(())
}

/// The node plugin's DaemonSet as deployed (YAML read with Python's yaml, which the
/// manifest checks use too).
fn node_manifest() -> Value {
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(format!("{REPO}/deploy/kubernetes/base/node.yaml"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "reading node.yaml: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until a killed container has stopped (`docker kill` returns before that), as
/// the kubelet only restarts a container once it has exited.
fn wait_stopped(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while docker(&["inspect", "-f", "{{.State.Running}}", name]).1.trim() != "false" {
        assert!(Instant::now() < deadline, "{name} still running 30 s after its kill");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Docker units for a Kubernetes memory quantity (`256Mi` → `256m`).
fn docker_memory(q: &str) -> String {
    let q = q.trim();
    for (suffix, unit) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(n) = q.strip_suffix(suffix) {
            return format!("{n}{unit}");
        }
    }
    q.to_string()
}

/// Runs Pods as containers, refusing what a mount pod must never have.
struct DockerRuntime {
    run_id: String,
}

impl DockerRuntime {
    fn run_args(&self, pod: &Value) -> Result<Vec<String>, String> {
        let spec = &pod["spec"];
        let c = &spec["containers"][0];
        let sc = &c["securityContext"];
        if sc["privileged"] == true || c["securityContext"]["capabilities"]["add"].is_array() {
            return Err("a mount pod must not be privileged or add capabilities".into());
        }
        let name = pod["metadata"]["name"].as_str().ok_or("no name")?;
        let mut a: Vec<String> =
            ["run", "-d", "--network", "host", "--name", name, "--label"].iter().map(|s| s.to_string()).collect();
        a.push(format!("s3vol-harness={}", self.run_id));
        let psc = &spec["securityContext"];
        if let Some(uid) = psc["runAsUser"].as_u64() {
            a.extend(["--user".into(), format!("{uid}:{}", psc["runAsGroup"].as_u64().unwrap_or(uid))]);
        }
        if sc["readOnlyRootFilesystem"] == true {
            a.push("--read-only".into());
        }
        if sc["allowPrivilegeEscalation"] == false {
            a.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
            a.extend(["--cap-drop".into(), cap.as_str().unwrap_or_default().to_string()]);
        }
        if let Some(m) = c["resources"]["limits"]["memory"].as_str() {
            a.extend(["--memory".into(), docker_memory(m)]);
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vol = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == m["name"])
                .ok_or("volumeMount without volume")?;
            let path = m["mountPath"].as_str().unwrap_or_default();
            if let Some(h) = vol["hostPath"]["path"].as_str() {
                if vol["hostPath"]["type"] == "Directory" && !Path::new(h).is_dir() {
                    return Err(format!("hostPath {h} is not a directory"));
                }
                a.extend(["-v".into(), format!("{h}:{path}")]);
            } else if vol.get("emptyDir").is_some() {
                a.extend(["--tmpfs".into(), format!("{path}:mode=1777")]);
            } else {
                return Err(format!("unsupported volume {vol}"));
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            a.extend([
                "-e".into(),
                format!("{}={}", e["name"].as_str().unwrap_or(""), e["value"].as_str().unwrap_or("")),
            ]);
        }
        a.push(c["image"].as_str().ok_or("no image")?.to_string());
        a.extend(c["args"].as_array().into_iter().flatten().map(|s| s.as_str().unwrap_or_default().to_string()));
        Ok(a)
    }
}

impl PodRuntime for DockerRuntime {
    fn start(&self, pod: &Value) -> Result<(), String> {
        let args = self.run_args(pod)?;
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        match docker(&refs) {
            (true, _) => Ok(()),
            (false, out) => Err(out),
        }
    }

    fn remove(&self, _namespace: &str, name: &str) {
        let _ = docker(&["rm", "-f", name]);
    }
}

/// One emulated node: directories, the plugin container, the API stand-in.
struct Node {
    id: String,
    root: PathBuf,
    kubelet: PathBuf,
    state: PathBuf,
    secrets: PathBuf,
    csi: PathBuf,
    api: FakeKubeApi,
    plugin: String,
    servers: &'static str,
}

fn sh_ok(script: &str) {
    let (ok, out) = sh(script);
    assert!(ok, "{script}: {out}");
}

impl Node {
    async fn start(servers: &'static str) -> Node {
        let id = format!("{}-{}", std::process::id() % 10_000, rand_suffix());
        let root = PathBuf::from(format!("/tmp/s3vol-node-{id}"));
        let kubelet = root.join("kubelet");
        let (state, secrets, csi) = (root.join("state"), root.join("secrets"), root.join("csi"));
        for d in [&kubelet, &state, &secrets, &csi] {
            std::fs::create_dir_all(d).unwrap();
        }
        // What a node has: a shared kubelet dir and a tmpfs for the plugin's secrets.
        sh_ok(&format!("mount --bind {0} {0} && mount --make-rshared {0}", kubelet.display()));
        sh_ok(&format!("mount -t tmpfs -o size=1m,mode=0700 tmpfs {}", secrets.display()));
        let runtime = Arc::new(DockerRuntime { run_id: id.clone() });
        let api = FakeKubeApi::start(runtime).await.unwrap();
        std::fs::write(root.join("kubeconfig"), api.kubeconfig()).unwrap();
        let node = Node { plugin: format!("s3vol-node-{id}"), id, root, kubelet, state, secrets, csi, api, servers };
        node.run_plugin(IMAGE);
        node
    }

    fn node_name(&self) -> String {
        format!("node-{}", self.id)
    }

    /// `docker run` of the node plugin from `deploy/kubernetes/base/node.yaml` itself: its
    /// arguments, environment (downward API values filled in), user, memory limit and
    /// hostPath volumes. Deviations, each because this is not a real node: `privileged`
    /// becomes CAP_SYS_ADMIN with /dev/fuse and no seccomp/AppArmor profile (this sandbox
    /// refuses `--privileged`); host paths live under this node's directory, the kubelet
    /// and state dirs at their host path inside too (as on a node, where they are equal);
    /// metrics on an ephemeral port; health checks every second; `S3VOL_SERVERS` as the
    /// scenario says (the in-container-servers overlay sets `processes`). The sidecars
    /// (registrar, liveness probe) do not run. The API holds the plugin's Pod object,
    /// whose image is what mount pods run.
    fn run_plugin(&self, image: &str) {
        self.api.insert(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.plugin, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": "s3vol-node"}},
            "spec": {"nodeName": self.node_name(), "containers": [{"name": "s3vol", "image": image}]}}));
        let _ = std::fs::remove_file(self.csi.join("csi.sock"));
        let ds = node_manifest();
        let spec = &ds["spec"]["template"]["spec"];
        let c = spec["containers"].as_array().unwrap().iter().find(|c| c["name"] == "s3vol").unwrap();
        let mut a: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), self.plugin.clone()];
        a.extend(["--label".into(), format!("s3vol-harness={}", self.id), "--network".into(), "host".into()]);
        let sc = &c["securityContext"];
        if let Some(uid) = sc["runAsUser"].as_u64() {
            a.extend(["--user".into(), format!("{uid}:{uid}")]);
        }
        if sc["privileged"] == true {
            for o in ["--cap-add=SYS_ADMIN", "--security-opt=apparmor=unconfined", "--security-opt=seccomp=unconfined"]
            {
                a.push(o.into());
            }
        }
        if let Some(m) = c["resources"]["limits"]["memory"].as_str() {
            a.extend(["--memory".into(), docker_memory(m)]);
        }
        let host = |v: &str| -> Option<(String, bool)> {
            let (k, st, se, csi) = (&self.kubelet, &self.state, &self.secrets, &self.csi);
            Some(match v {
                "/var/lib/kubelet" => (format!("{0}:{0}", k.display()), true),
                "/var/lib/s3vol" => (format!("{0}:{0}", st.display()), false),
                "/run/s3vol" => (format!("{}:/run/s3vol", se.display()), false),
                "/var/lib/kubelet/plugins/s3vol.csi.io" => (format!("{}:/csi", csi.display()), false),
                _ => return None,
            })
        };
        for m in c["volumeMounts"].as_array().unwrap() {
            let vol = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]).unwrap();
            let path = vol["hostPath"]["path"].as_str().unwrap();
            if path == "/dev/fuse" {
                a.extend(["--device".into(), "/dev/fuse".into()]);
                continue;
            }
            let Some((bind, is_kubelet)) = host(path) else {
                panic!("node.yaml mounts {path}: the harness does not know it")
            };
            let mount_path = m["mountPath"].as_str().unwrap();
            assert!(
                bind.ends_with(&format!(":{mount_path}")) || is_kubelet || path == "/var/lib/s3vol",
                "{path} is mounted at {mount_path}"
            );
            if path == "/var/lib/s3vol" || is_kubelet {
                assert_eq!(mount_path, path, "node.yaml must mount {path} at its host path");
            }
            let prop = match m["mountPropagation"].as_str() {
                Some("Bidirectional") => ":rshared",
                Some("HostToContainer") => ":rslave",
                _ => "",
            };
            a.extend(["-v".into(), format!("{bind}{prop}")]);
        }
        a.extend(["-v".into(), format!("{}:/etc/s3vol/kubeconfig:ro", self.root.join("kubeconfig").display())]);
        a.extend(["-e".into(), "KUBECONFIG=/etc/s3vol/kubeconfig".into()]);
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                _ if name == "S3VOL_SERVERS" => self.servers.to_string(),
                (Some(v), _) => v.to_string(),
                (None, Some("spec.nodeName")) => self.node_name(),
                (None, Some("metadata.name")) => self.plugin.clone(),
                (None, Some("metadata.namespace")) => NAMESPACE.into(),
                other => panic!("env {name}: {other:?} unknown to the harness"),
            };
            a.extend(["-e".into(), format!("{name}={value}")]);
        }
        a.push(image.into());
        for arg in c["args"].as_array().unwrap() {
            let arg = arg.as_str().unwrap();
            a.push(if arg == "--node-id=$(NODE_NAME)" {
                format!("--node-id={}", self.node_name())
            } else if arg == "--state-dir=/var/lib/s3vol" {
                format!("--state-dir={}", self.state.display())
            } else if arg.starts_with("--metrics-addr=") {
                "--metrics-addr=127.0.0.1:0".into()
            } else {
                arg.to_string()
            });
        }
        a.push("--health-interval=1".into());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        docker_ok(&refs);
    }

    /// Waits until the plugin answers NodeGetInfo; returns how long that took.
    async fn wait_ready(&self) -> (NodeClient<Channel>, Duration) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = self.try_client().await {
                if c.node_get_info(pb::NodeGetInfoRequest {}).await.is_ok() {
                    return (c, started.elapsed());
                }
            }
            assert!(Instant::now() < deadline, "plugin not ready; its log:\n{}", self.plugin_log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_client(&self) -> Result<NodeClient<Channel>, tonic::transport::Error> {
        Ok(NodeClient::new(unix_channel(&self.csi.join("csi.sock")).await?))
    }

    fn plugin_log_all(&self) -> String {
        docker(&["logs", &self.plugin]).1
    }

    fn plugin_log(&self) -> String {
        docker(&["logs", "--tail", "60", &self.plugin]).1
    }

    /// kubelet's paths for a volume's staging and a pod's target.
    fn staging(&self, volume_id: &str) -> PathBuf {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(volume_id.as_bytes()));
        self.kubelet.join(format!("plugins/kubernetes.io/csi/{DRIVER}/{h}/globalmount"))
    }

    fn target(&self, pod_uid: &str, pv: &str) -> PathBuf {
        self.kubelet.join(format!("pods/{pod_uid}/volumes/kubernetes.io~csi/{pv}/mount"))
    }

    /// NodeStageVolume as kubelet sends it for a static PV with a nodeStageSecretRef.
    async fn stage(&self, c: &mut NodeClient<Channel>, pv: &Pv) {
        let staging = self.staging(&pv.handle);
        std::fs::create_dir_all(&staging).unwrap();
        let req = pb::NodeStageVolumeRequest {
            volume_id: pv.handle.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_cap(pv.fs_group)),
            secrets: secrets(ACCESS_KEY, SECRET_KEY),
            volume_context: pv.attributes.clone(),
            ..Default::default()
        };
        retry_like_kubelet("NodeStageVolume", || {
            let mut c = c.clone();
            let req = req.clone();
            async move { c.node_stage_volume(req).await.map(|_| ()) }
        })
        .await;
    }

    /// NodePublishVolume with the pod-info attributes (the CSIDriver has podInfoOnMount).
    async fn publish(&self, c: &mut NodeClient<Channel>, pv: &Pv, pod: &str) -> PathBuf {
        self.publish_as(c, pv, pod, false).await
    }

    /// NodePublishVolume with `readonly` (a pod's `readOnly: true` volume mount).
    async fn publish_as(&self, c: &mut NodeClient<Channel>, pv: &Pv, pod: &str, readonly: bool) -> PathBuf {
        let target = self.target(pod, &pv.name);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let mut ctx = pv.attributes.clone();
        for (k, v) in [
            ("csi.storage.k8s.io/pod.name", pod),
            ("csi.storage.k8s.io/pod.namespace", "default"),
            ("csi.storage.k8s.io/pod.uid", pod),
            ("csi.storage.k8s.io/serviceAccount.name", "default"),
            ("csi.storage.k8s.io/ephemeral", "false"),
        ] {
            ctx.insert(k.into(), v.into());
        }
        let req = pb::NodePublishVolumeRequest {
            volume_id: pv.handle.clone(),
            staging_target_path: self.staging(&pv.handle).display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(mount_cap(pv.fs_group)),
            volume_context: ctx,
            readonly,
            ..Default::default()
        };
        retry_like_kubelet("NodePublishVolume", || {
            let mut c = c.clone();
            let req = req.clone();
            async move { c.node_publish_volume(req).await.map(|_| ()) }
        })
        .await;
        target
    }

    async fn unpublish(&self, c: &mut NodeClient<Channel>, pv: &Pv, pod: &str) {
        let req = pb::NodeUnpublishVolumeRequest {
            volume_id: pv.handle.clone(),
            target_path: self.target(pod, &pv.name).display().to_string(),
        };
        retry_like_kubelet("NodeUnpublishVolume", || {
            let mut c = c.clone();
            let req = req.clone();
            async move { c.node_unpublish_volume(req).await.map(|_| ()) }
        })
        .await;
    }

    async fn unstage(&self, c: &mut NodeClient<Channel>, pv: &Pv) {
        let req = pb::NodeUnstageVolumeRequest {
            volume_id: pv.handle.clone(),
            staging_target_path: self.staging(&pv.handle).display().to_string(),
        };
        retry_like_kubelet("NodeUnstageVolume", || {
            let mut c = c.clone();
            let req = req.clone();
            async move { c.node_unstage_volume(req).await.map(|_| ()) }
        })
        .await;
    }

    /// An application container: the target (or a subPath of it) bound in with the
    /// runtime's default private propagation (`host_to_container`: rslave), running the
    /// probe in `dir` (relative to the volume) for `seconds`. Returns once it is ready.
    fn start_app(&self, name: &str, source: &Path, dir: &str, seconds: f64, host_to_container: bool) -> App {
        self.start_app_as(name, source, dir, seconds, host_to_container, None)
    }

    /// As `start_app`, as user `uid` with the pod's fsGroup `gid` as a supplementary
    /// group (what a pod with runAsUser and fsGroup gets).
    fn start_app_as(
        &self,
        name: &str,
        source: &Path,
        dir: &str,
        seconds: f64,
        host_to_container: bool,
        user: Option<(u32, u32)>,
    ) -> App {
        let user_args: Vec<String> = match user {
            Some((uid, gid)) => vec!["--user".into(), format!("{uid}:{uid}"), "--group-add".into(), gid.to_string()],
            None => Vec::new(),
        };
        let container = format!("app-{}-{name}", self.id);
        let label = format!("s3vol-harness={}", self.id);
        let bind = format!("{}:/data{}", source.display(), if host_to_container { ":rslave" } else { "" });
        let probe_dir = format!("{REPO}/tests/pod:/probe:ro");
        let workdir = format!("/data/{dir}");
        let mut child = Command::new("docker")
            .args(["run", "--rm", "--name", &container, "--label", &label, "--network", "host", "-v", &bind])
            .args(&user_args)
            .args(["-v", &probe_dir, BASE_IMAGE, "python3", "/probe/probe.py", &workdir, &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "app container {name} did not start: {line:?}");
        App { child, out }
    }

    /// A one-shot application container running `script` with `source` at /data.
    fn app_exec(&self, source: &Path, script: &str) -> (bool, String) {
        let label = format!("s3vol-harness={}", self.id);
        let bind = format!("{}:/data", source.display());
        docker(&["run", "--rm", "--label", &label, "--network", "host", "-v", &bind, BASE_IMAGE, "sh", "-c", script])
    }

    fn mounts_under(&self, dir: &Path) -> Vec<String> {
        let root = dir.to_string_lossy().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root) && m != &root)
            .collect()
    }

    /// Volume mounts (FUSE) left on the host under the kubelet dir.
    fn fuse_mounts_left(&self) -> usize {
        let root = self.kubelet.to_string_lossy().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(" - fuse") && l.split_whitespace().nth(4).is_some_and(|m| m.starts_with(&root)))
            .count()
    }

    fn containers(&self) -> Vec<String> {
        let out =
            docker_ok(&["ps", "-a", "--filter", &format!("label=s3vol-harness={}", self.id), "--format", "{{.Names}}"]);
        out.lines().map(str::to_string).collect()
    }

    fn mount_pod_names(&self) -> Vec<String> {
        self.api
            .pods("app.kubernetes.io/name=s3vol-mount")
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Every container of this node and every mount under its directory, innermost first.
    fn remove_containers_and_mounts(&self) {
        for c in self.containers() {
            let _ = docker(&["rm", "-f", &c]);
        }
        let mut mounts = self.mounts_under(&self.root);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }

    /// A node reboot: every container and mount gone, the tmpfs emptied; the API keeps
    /// its Pods, so the kubelet starts the mount pods bound to this node again.
    fn reboot(&self) {
        self.remove_containers_and_mounts();
        sh_ok(&format!(
            "umount -l {0} 2>/dev/null; mount --bind {0} {0} && mount --make-rshared {0}",
            self.kubelet.display()
        ));
        sh_ok(&format!("mount -t tmpfs -o size=1m,mode=0700 tmpfs {}", self.secrets.display()));
        let runtime = DockerRuntime { run_id: self.id.clone() };
        for p in self.api.pods("app.kubernetes.io/name=s3vol-mount") {
            runtime.start(&p).unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.remove_containers_and_mounts();
        let _ = Command::new("umount").arg("-l").arg(&self.kubelet).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    (h.finish() % 100_000) as u32
}

/// The capability kubelet sends; `fs_group` is the pod's fsGroup, passed because the
/// driver has VOLUME_MOUNT_GROUP.
fn mount_cap(fs_group: Option<u32>) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
            volume_mount_group: fs_group.map(|g| g.to_string()).unwrap_or_default(),
            ..Default::default()
        })),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

/// kubelet retries a failed node operation with back-off; so does the stand-in, for at
/// most 60 s, and fails the test with the last error after that.
async fn retry_like_kubelet<F, Fut>(what: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut wait = Duration::from_millis(200);
    loop {
        match call().await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {} {}; retrying", e.code(), e.message());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(4));
            }
            Err(e) => panic!("{what} kept failing: {e:?}"),
        }
    }
}

/// A static PV of ours: a prefix of the shared bucket, keys in a nodeStageSecretRef.
struct Pv {
    /// fsGroup of the pods using it.
    fs_group: Option<u32>,
    name: String,
    handle: String,
    attributes: HashMap<String, String>,
}

fn pv(name: &str, endpoint: &str) -> Pv {
    Pv {
        fs_group: None,
        name: name.to_string(),
        handle: format!("shared/{name}"),
        attributes: [("endpoint".to_string(), endpoint.to_string())].into(),
    }
}

struct App {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl App {
    fn report(mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("app report {line:?}: {e}"))
    }
}

fn failed(r: &Value) -> usize {
    r["failed"].as_array().map_or(usize::MAX, Vec::len)
}

async fn s3() -> TestS3 {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("shared");
    srv
}

/// DaemonSet rollout stand-ins with servers in mount pods: `docker restart` of the
/// plugin container, an OOM kill of it by its memory limit and a new start, then the plugin replaced by a container of a newer image (which
/// moves every mount pod to it), while two application containers (one through a
/// subPath) read and write. Zero failed operations, no ENOTCONN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_container_restart_and_rollout_leave_app_containers_working() {
    if harness_ready().is_none() {
        return;
    }
    let srv = s3().await;
    let node = Node::start("pods").await;
    let (mut c, _) = node.wait_ready().await;
    let vol = pv("pv-rollout", &srv.endpoint());
    node.stage(&mut c, &vol).await;
    let t1 = node.publish(&mut c, &vol, "pod-a").await;
    let t2 = node.publish(&mut c, &vol, "pod-b").await;
    std::fs::create_dir_all(t1.join("a")).unwrap();
    std::fs::create_dir_all(t2.join("b")).unwrap();
    assert_eq!(node.mount_pod_names().len(), 1, "one mount pod per volume");

    let app1 = node.start_app("a", &t1, "a", 40.0, false);
    let app2 = node.start_app("b", &t2.join("b"), "", 40.0, false); // a subPath
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t = Instant::now();
    docker_ok(&["restart", &node.plugin]);
    let (_, ready) = node.wait_ready().await;
    let restart_took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // OOM: something in the plugin's container grows past the container's memory limit
    // (2Gi, from node.yaml) and the kernel kills the plugin (made the likeliest victim,
    // as the container's main process is under a group OOM kill); the container dies
    // with every process in it and the kubelet starts it again.
    let t = Instant::now();
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &node.plugin]);
    std::fs::write(format!("/proc/{}/oom_score_adj", pid.trim()), "1000").unwrap();
    let _ = docker(&["exec", &node.plugin, "python3", "-c", "b = bytearray(3 << 30)"]);
    // The engine records the container's exit a moment after the exec ends.
    wait_stopped(&node.plugin);
    let oom = docker_ok(&["inspect", "-f", "{{.State.OOMKilled}} {{.State.Running}}", &node.plugin]);
    assert_eq!(oom.trim(), "true false", "the plugin container was not OOM-killed");
    docker_ok(&["start", &node.plugin]);
    node.wait_ready().await;
    let kill_took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Rollout: the DaemonSet's pod is replaced by one of a newer image.
    let t = Instant::now();
    docker_ok(&["rm", "-f", &node.plugin]);
    node.run_plugin(NEXT_IMAGE);
    let (mut c, _) = node.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The new pod exists before its server has taken the connection: the rollout
        // is done when the plugin logs the handover.
        let pods = node.api.pods("app.kubernetes.io/name=s3vol-mount");
        let moved = pods.len() == 1 && pods[0]["spec"]["containers"][0]["image"] == NEXT_IMAGE;
        if moved && node.plugin_log_all().contains("handed over to a new server") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mount pod not moved to the new image (moved: {moved}) or no handover:\n{}",
            node.plugin_log_all()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rollout_took = t.elapsed();
    let log = node.plugin_log_all();
    // node.yaml says --log-format=json: every line the plugin logs is one JSON object.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    eprintln!("{log}");

    let (r1, r2) = tokio::task::spawn_blocking(move || (app1.report(), app2.report())).await.unwrap();
    report(&format!(
        "containers, plugin container restart, OOM kill and rollout to a new image (servers in mount pods): app A {} probes {} failed ENOTCONN {} slowest {} s; app B (subPath) {} probes {} failed ENOTCONN {} slowest {} s; plugin back in {:.1} s (answering after {:.1} s), back after its OOM kill in {:.1} s, rollout done in {:.1} s",
        r1["probes"], failed(&r1), r1["enotconn"], r1["slowest_probe_s"],
        r2["probes"], failed(&r2), r2["enotconn"], r2["slowest_probe_s"],
        restart_took.as_secs_f64(), ready.as_secs_f64(), kill_took.as_secs_f64(), rollout_took.as_secs_f64()
    ));
    for r in [&r1, &r2] {
        assert_eq!(failed(r), 0, "{r}");
        assert_eq!(r["enotconn"], 0, "{r}");
        assert_eq!(r["flushed_writer"], "ok", "{r}");
    }

    node.unpublish(&mut c, &vol, "pod-a").await;
    node.unpublish(&mut c, &vol, "pod-b").await;
    node.unstage(&mut c, &vol).await;
    let left = (node.fuse_mounts_left(), node.mount_pod_names().len(), node.containers().len());
    report(&format!(
        "containers, after unpublish + unstage: {} FUSE mounts, {} mount pods, {} containers besides the plugin left",
        left.0,
        left.1,
        left.2 - 1
    ));
    assert_eq!(left, (0, 0, 1), "containers: {:?}", node.containers());
}

/// The same plugin restart with servers as processes in the plugin's container (the
/// `in-container-servers` overlay): the restart kills them, and application containers
/// with private propagation lose their volume. This is why mount pods are the default;
/// the numbers say how bad it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_servers_in_the_plugin_container_a_restart_breaks_app_containers() {
    if harness_ready().is_none() {
        return;
    }
    let srv = s3().await;
    let node = Node::start("processes").await;
    let (mut c, _) = node.wait_ready().await;
    let vol = pv("pv-processes", &srv.endpoint());
    node.stage(&mut c, &vol).await;
    let t1 = node.publish(&mut c, &vol, "pod-a").await;
    let app = node.start_app("a", &t1, "", 8.0, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    docker_ok(&["restart", &node.plugin]);
    let (mut c, _) = node.wait_ready().await;
    let r = tokio::task::spawn_blocking(move || app.report()).await.unwrap();
    report(&format!(
        "containers, plugin container restart with servers inside it (processes overlay): {} probes, {} failed, ENOTCONN {}",
        r["probes"],
        failed(&r),
        r["enotconn"]
    ));
    assert!(r["enotconn"].as_u64().unwrap_or(0) > 0, "expected the documented breakage: {r}");
    // A new pod (a new container) sees the volume again: the plugin remounted it.
    let t2 = node.publish(&mut c, &vol, "pod-c").await;
    let app = node.start_app("c", &t2, "", 1.0, false);
    let r = tokio::task::spawn_blocking(move || app.report()).await.unwrap();
    assert_eq!(failed(&r), 0, "a new pod after the remount: {r}");
    node.unpublish(&mut c, &vol, "pod-a").await;
    node.unpublish(&mut c, &vol, "pod-c").await;
    node.unstage(&mut c, &vol).await;
    assert_eq!(node.fuse_mounts_left(), 0);
}

/// A mount pod's container is killed (`docker kill`) and restarted as the kubelet does
/// for `restartPolicy: Always`; the plugin hands the held connection to the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mount_pod_is_restarted_and_app_containers_see_a_pause() {
    if harness_ready().is_none() {
        return;
    }
    let srv = s3().await;
    let node = Node::start("pods").await;
    let (mut c, _) = node.wait_ready().await;
    let vol = pv("pv-podkill", &srv.endpoint());
    node.stage(&mut c, &vol).await;
    let t1 = node.publish(&mut c, &vol, "pod-a").await;
    let pod = node.mount_pod_names().pop().expect("a mount pod");
    let app = node.start_app("a", &t1, "", 8.0, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    docker_ok(&["kill", &pod]);
    wait_stopped(&pod);
    docker_ok(&["start", &pod]);
    let restarted = t.elapsed();
    let r = tokio::task::spawn_blocking(move || app.report()).await.unwrap();
    report(&format!(
        "containers, mount pod killed and restarted (restartPolicy Always): {} probes, {} failed, ENOTCONN {}, slowest probe {} s, container back in {:.1} s, unflushed writer {}",
        r["probes"], failed(&r), r["enotconn"], r["slowest_probe_s"], restarted.as_secs_f64(), r["unflushed_write"]
    ));
    assert_eq!(failed(&r), 0, "{r}");
    assert_eq!(r["enotconn"], 0, "{r}");
    assert_eq!(r["flushed_writer"], "ok", "{r}");
    assert_eq!(r["unflushed_write"], "EIO", "data only the dead server held is an error, not a silent loss: {r}");
    // A pod that mounts the volume readOnly: it reads what the killed server's successor
    // serves, and its writes fail with EROFS.
    let ro = node.publish_as(&mut c, &vol, "pod-ro", true).await;
    let (ok, out) = node.app_exec(&ro, "cat /data/flushed.log && touch /data/nope 2>&1; true");
    assert!(ok && out.contains("before") && out.contains("Read-only file system"), "{out}");
    node.unpublish(&mut c, &vol, "pod-ro").await;
    node.unpublish(&mut c, &vol, "pod-a").await;
    node.unstage(&mut c, &vol).await;
    assert_eq!(node.fuse_mounts_left(), 0);
}

/// The "stuck in Terminating" case: the application pod is deleted while its volume's
/// server is dead (mount pod killed, not restarted). Unpublish and unstage succeed,
/// nothing stays mounted or running, and the next pod on the same volume works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_its_server_is_dead_terminates_and_the_next_pod_works() {
    if harness_ready().is_none() {
        return;
    }
    let srv = s3().await;
    let node = Node::start("pods").await;
    let (mut c, _) = node.wait_ready().await;
    let vol = pv("pv-terminating", &srv.endpoint());
    node.stage(&mut c, &vol).await;
    let t1 = node.publish(&mut c, &vol, "pod-a").await;
    std::fs::write(t1.join("kept.txt"), b"written before the crash").unwrap();
    let pod = node.mount_pod_names().pop().expect("a mount pod");
    docker_ok(&["kill", &pod]);
    let t = Instant::now();
    node.unpublish(&mut c, &vol, "pod-a").await;
    node.unstage(&mut c, &vol).await;
    let took = t.elapsed();
    let left = (node.fuse_mounts_left(), node.mount_pod_names().len(), node.containers().len() - 1);
    report(&format!(
        "containers, pod deleted while its server was dead: unpublish + unstage took {:.1} s; left: {} FUSE mounts, {} mount pods, {} containers",
        took.as_secs_f64(),
        left.0,
        left.1,
        left.2
    ));
    assert!(took < Duration::from_secs(30), "termination took {took:?}");
    assert_eq!(left, (0, 0, 0), "{:?}", node.containers());
    node.stage(&mut c, &vol).await;
    let t2 = node.publish(&mut c, &vol, "pod-b").await;
    assert_eq!(std::fs::read(t2.join("kept.txt")).unwrap(), b"written before the crash");
    node.unpublish(&mut c, &vol, "pod-b").await;
    node.unstage(&mut c, &vol).await;
}

/// A node reboot: every container and mount gone, the secrets tmpfs empty; the kubelet
/// starts the mount pods again and stages the volume again for the pod it reschedules.
/// Nothing stale: one mount per path, one mount pod, the volume reported healthy. The
/// pods run as uid 1000 with fsGroup 2000 (sent as volume_mount_group, as kubelet does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_reboot_nothing_is_stale_and_new_publishes_work() {
    if harness_ready().is_none() {
        return;
    }
    let srv = s3().await;
    let node = Node::start("pods").await;
    let (mut c, _) = node.wait_ready().await;
    let mut vol = pv("pv-reboot", &srv.endpoint());
    vol.fs_group = Some(2000);
    node.stage(&mut c, &vol).await;
    let t1 = node.publish(&mut c, &vol, "pod-a").await;
    std::fs::write(t1.join("before-reboot.txt"), b"still here").unwrap();

    node.reboot();
    assert_eq!(node.fuse_mounts_left(), 0);
    let t = Instant::now();
    node.run_plugin(IMAGE);
    let (mut c, _) = node.wait_ready().await;
    node.stage(&mut c, &vol).await;
    let t2 = node.publish(&mut c, &vol, "pod-b").await;
    let took = t.elapsed();
    assert_eq!(std::fs::read(t2.join("before-reboot.txt")).unwrap(), b"still here");
    // The pod runs as a non-root user with fsGroup 2000: it writes through its group.
    let app = node.start_app_as("b", &t2, "", 1.0, false, Some((1000, 2000)));
    let r = tokio::task::spawn_blocking(move || app.report()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // a health-check round
    let stats = c
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.handle.clone(),
            volume_path: t2.display().to_string(),
            staging_target_path: node.staging(&vol.handle).display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let condition = stats.volume_condition.unwrap_or_default();
    report(&format!(
        "containers, node reboot: back and published again in {:.1} s; app (uid 1000, fsGroup 2000) {} probes {} failed; {} FUSE mounts, {} mount pods; volume abnormal: {} {}",
        took.as_secs_f64(),
        r["probes"],
        failed(&r),
        node.fuse_mounts_left(),
        node.mount_pod_names().len(),
        condition.abnormal,
        condition.message
    ));
    assert_eq!(failed(&r), 0, "{r}");
    assert_eq!(node.fuse_mounts_left(), 2, "the staging mount and pod-b's target, nothing stale");
    assert_eq!(node.mount_pod_names().len(), 1);
    assert!(!condition.abnormal, "{}", condition.message);
    node.unpublish(&mut c, &vol, "pod-b").await;
    // pod-a's target died with the reboot; kubelet still cleans it up.
    node.unpublish(&mut c, &vol, "pod-a").await;
    node.unstage(&mut c, &vol).await;
    assert_eq!(node.fuse_mounts_left(), 0);
    assert!(node.mount_pod_names().is_empty());
}
