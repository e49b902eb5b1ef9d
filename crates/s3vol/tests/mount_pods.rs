//! FUSE servers in mount pods, through a Kubernetes API (the test's, which knows only
//! Pods) whose pods run as local processes of the pod's user: the Pod objects the node
//! plugin creates, a server crash with the kubelet restarting the container, a plugin
//! restart that touches no server, a rollout to a newer image, and cleanup at unstage.
//! Real mounts: needs root and /dev/fuse. The same launcher against real containers is
//! in `node_containers.rs`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use parking_lot::Mutex;
use s3vol_csi::pb;
use s3vol_testkit::{FakeKubeApi, PodRuntime, ACCESS_KEY, SECRET_KEY};
use serde_json::{json, Value};

/// Runs a pod's single container as a local process: `s3vol` with the pod's arguments,
/// hostPath mount paths translated, as the pod's user.
struct LocalRuntime {
    log_dir: PathBuf,
    running: Mutex<HashMap<String, (Child, Value)>>,
}

impl LocalRuntime {
    fn spawn(&self, pod: &Value) -> Result<Child, String> {
        let spec = &pod["spec"];
        let c = &spec["containers"][0];
        let mut mounts = Vec::new();
        let uid = spec["securityContext"]["runAsUser"].as_u64().ok_or("runAsUser missing")? as u32;
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vol =
                spec["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == m["name"]).ok_or("volume")?;
            let host = match (vol["hostPath"]["path"].as_str(), vol.get("emptyDir")) {
                (Some(h), _) => h.to_string(),
                (None, Some(_)) => {
                    let d = self.log_dir.join(format!("{name}-{}", vol["name"].as_str().unwrap_or_default()));
                    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
                    nix::unistd::chown(&d, Some(uid.into()), Some(uid.into())).map_err(|e| e.to_string())?;
                    d.display().to_string()
                }
                _ => return Err(format!("unsupported volume {vol}")),
            };
            mounts.push((m["mountPath"].as_str().unwrap_or_default().to_string(), host));
        }
        let args: Vec<String> =
            c["args"].as_array().into_iter().flatten().map(|a| a.as_str().unwrap_or_default().to_string()).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        // The pod's own mount namespace with its hostPath volumes bound in (which, as in
        // a real pod, reaches a directory whose parents the pod's user cannot enter),
        // then the container's process as the pod's user.
        // The binary is opened before the mounts: an emptyDir on /tmp may hide its path.
        let mut script = format!("set -e; exec 3<'{BIN}'; ");
        for (m, h) in &mounts {
            script.push_str(&format!("mkdir -p '{m}'; mount --bind '{h}' '{m}'; "));
        }
        script.push_str(&format!("exec setpriv --reuid {uid} --regid {uid} --clear-groups /proc/self/fd/3 \"$@\""));
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .args(&args)
            .env_clear()
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())
    }

    fn pid(&self, name: &str) -> u32 {
        self.running.lock().get(name).map(|(c, _)| c.id()).expect("pod runs")
    }

    /// `kill -9` of the pod's container.
    fn kill(&self, name: &str) {
        let mut r = self.running.lock();
        let (c, _) = r.get_mut(name).expect("pod runs");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// What the kubelet does for `restartPolicy: Always`.
    fn restart(&self, name: &str) {
        let mut r = self.running.lock();
        let (_, pod) = r.remove(name).expect("pod known");
        let child = self.spawn(&pod).unwrap();
        r.insert(name.to_string(), (child, pod));
    }
}

impl PodRuntime for LocalRuntime {
    fn start(&self, pod: &Value) -> Result<(), String> {
        let child = self.spawn(pod)?;
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        self.running.lock().insert(name, (child, pod.clone()));
        Ok(())
    }

    fn remove(&self, _namespace: &str, name: &str) {
        if let Some((mut c, _)) = self.running.lock().remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        for (_, (mut c, _)) in self.running.lock().drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn own_pod(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "s3vol-node-x1", "namespace": "s3vol", "labels": {"app.kubernetes.io/name": "s3vol-node"}},
           "spec": {"containers": [{"name": "s3vol", "image": image}, {"name": "node-driver-registrar", "image": "registrar"}]}})
}

/// The API stand-in with pods run by a [`LocalRuntime`], holding the plugin's own Pod
/// (image `s3vol:v1`).
async fn cluster(dir: &Path) -> (Arc<LocalRuntime>, FakeKubeApi) {
    let runtime = Arc::new(LocalRuntime { log_dir: dir.to_path_buf(), running: Mutex::new(HashMap::new()) });
    let api = FakeKubeApi::start(runtime.clone()).await.unwrap();
    api.insert(own_pod("s3vol:v1"));
    (runtime, api)
}

fn mount_pods(api: &FakeKubeApi) -> Vec<Value> {
    api.pods("app.kubernetes.io/name=s3vol-mount")
}

fn process_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn creates(api: &FakeKubeApi) -> usize {
    api.calls().iter().filter(|c| c.method == "POST").count()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_plugin(dir: &Path, endpoint: &str, api: &FakeKubeApi) -> Plugin {
    start_plugin_with(dir, endpoint, api, &[])
}

fn start_plugin_with(dir: &Path, endpoint: &str, api: &FakeKubeApi, more: &[&str]) -> Plugin {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let mut plugin = Plugin::configure(dir, endpoint, "1", true);
    plugin.extra = ["--servers", "pods", "--pod-name", "s3vol-node-x1", "--namespace", "s3vol"]
        .iter()
        .chain(more)
        .map(|s| s.to_string())
        .collect();
    plugin.envs = vec![("KUBECONFIG".into(), kubeconfig.display().to_string())];
    plugin.spawn();
    plugin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_in_mount_pods_survive_crashes_plugin_restarts_and_rollouts() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let (runtime, api) = cluster(dir.path()).await;
    let mut plugin = start_plugin(dir.path(), &srv.endpoint(), &api);
    let (mut node, mut ctl) = plugin.clients().await;

    // A claim whose StorageClass sets the mount pod's resources.
    let req = pb::CreateVolumeRequest {
        name: "pvc-pods".into(),
        volume_capabilities: vec![cap(pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter).unwrap()],
        parameters: [("bucket", "shared"), ("mountPodMemory", "256Mi"), ("mountPodCPU", "100m")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        secrets: secrets(ACCESS_KEY, SECRET_KEY),
        ..Default::default()
    };
    let vol = ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let staging = dir.path().join("staging");
    let target = dir.path().join("pods/p1/vol");
    let sec = secrets(ACCESS_KEY, SECRET_KEY);
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), sec)).await.unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, HashMap::new())).await.unwrap();

    // The Pod object: this node, the plugin's image, unprivileged, the claim's resources.
    let pods = mount_pods(&api);
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let spec = &pod["spec"];
    let c = &spec["containers"][0];
    assert_eq!(pod["metadata"]["labels"]["s3vol.csi.io/node"], "node-1");
    assert_eq!(pod["metadata"]["annotations"]["s3vol.csi.io/volume-id"], vol.volume_id.as_str());
    assert_eq!(spec["nodeName"], "node-1");
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["image"], "s3vol:v1");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["securityContext"]["capabilities"]["add"].is_null());
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(c["resources"]["requests"]["cpu"], "100m");
    let volumes = spec["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "the control directory and /tmp: {volumes:?}");
    assert_eq!(volumes[0]["hostPath"]["type"], "Directory");
    assert!(volumes[1]["emptyDir"].is_object(), "{volumes:?}");
    assert!(!pod.to_string().contains("/dev/fuse"), "no /dev/fuse in a mount pod");
    assert!(!pod.to_string().contains(SECRET_KEY), "no key in the Pod object");
    let server = runtime.pid(&name);
    assert_eq!(process_uid(server), 65532, "the server runs as the pod's user");

    std::fs::write(target.join("hello.txt"), b"from a mount pod").unwrap();
    assert_eq!(std::fs::read(target.join("hello.txt")).unwrap(), b"from a mount pod");

    // The server dies; the kubelet restarts the container; the pod sees a pause.
    let (probe, out) = start_pod(&target, 5.0);
    std::thread::sleep(Duration::from_millis(800));
    runtime.kill(&name);
    std::thread::sleep(Duration::from_millis(300));
    runtime.restart(&name);
    let r = tokio::task::spawn_blocking(move || pod_report(probe, out)).await.unwrap();
    report(&format!(
        "mount pod killed, container restarted: {} probes, {} failed, ENOTCONN {}, slowest probe {} s",
        r["probes"],
        r["failed"].as_array().map_or(0, Vec::len),
        r["enotconn"],
        r["slowest_probe_s"]
    ));
    assert_eq!(r["enotconn"], 0, "{r}");
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["flushed_writer"], "ok", "{r}");

    // The plugin restarts: no server is touched, no pod created or deleted.
    let server = runtime.pid(&name);
    let before = creates(&api);
    let (probe, out) = start_pod(&target, 4.0);
    plugin.restart();
    let r = tokio::task::spawn_blocking(move || pod_report(probe, out)).await.unwrap();
    report(&format!(
        "plugin restarted with servers in mount pods: {} probes, {} failed, ENOTCONN {}, slowest probe {} s",
        r["probes"],
        r["failed"].as_array().map_or(0, Vec::len),
        r["enotconn"],
        r["slowest_probe_s"]
    ));
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(runtime.pid(&name), server, "the server was not touched");
    assert_eq!(creates(&api), before, "no pod created");
    assert_eq!(std::fs::read(target.join("hello.txt")).unwrap(), b"from a mount pod");

    // A rollout: the plugin's pod now runs a newer image; its servers follow, one by one.
    api.insert(own_pod("s3vol:v2"));
    let (probe, out) = start_pod(&target, 6.0);
    plugin.restart();
    let api_ref = &api;
    wait_for("the mount pod to run the new image", Duration::from_secs(30), || {
        mount_pods(api_ref).first().is_some_and(|p| p["spec"]["containers"][0]["image"] == "s3vol:v2")
    });
    let r = tokio::task::spawn_blocking(move || pod_report(probe, out)).await.unwrap();
    report(&format!(
        "rollout of the mount pods to a new image: {} probes, {} failed, ENOTCONN {}, slowest probe {} s",
        r["probes"],
        r["failed"].as_array().map_or(0, Vec::len),
        r["enotconn"],
        r["slowest_probe_s"]
    ));
    assert_eq!(r["failed"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["flushed_writer"], "ok", "{r}");
    assert_eq!(mount_pods(&api).len(), 1);

    // Unstage deletes the pod; nothing of the volume is left running.
    let (mut node2, _) = plugin.clients().await;
    unpublish(&mut node2, &vol.volume_id, &target).await;
    unstage(&mut node2, &vol.volume_id, &staging).await;
    assert!(mount_pods(&api).is_empty(), "mount pod left: {:?}", mount_pods(&api));
    assert!(runtime.running.lock().is_empty());
    assert_eq!(srv.backend.get("shared", "pvc-pods/hello.txt").unwrap(), &b"from a mount pod"[..]);
}

/// Pods of volumes unstaged while the plugin was down are deleted when it starts, found
/// by their labels; pods of other nodes are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plugin_deletes_mount_pods_of_volumes_it_no_longer_has() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let api = FakeKubeApi::start(Arc::new(s3vol_testkit::NoRuntime)).await.unwrap();
    api.insert(own_pod("s3vol:v1"));
    let stale = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "s3vol",
                            "labels": {"app.kubernetes.io/name": "s3vol-mount", "s3vol.csi.io/node": node}},
               "spec": {"containers": [{"name": "fuse-server", "image": "s3vol:v1"}]}})
    };
    api.insert(stale("s3vol-mount-gone", "node-1"));
    api.insert(stale("s3vol-mount-other-node", "node-2"));
    let _plugin = start_plugin(dir.path(), &srv.endpoint(), &api);
    let names = || -> Vec<String> {
        mount_pods(&api).iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while names().contains(&"s3vol-mount-gone".to_string()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(names(), vec!["s3vol-mount-other-node".to_string()]);
}

/// `--mount-pod-image` pins the mount pods' image instead of the plugin pod's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_pod_image_flag_pins_the_image() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let (_runtime, api) = cluster(dir.path()).await;
    let plugin =
        start_plugin_with(dir.path(), &srv.endpoint(), &api, &["--mount-pod-image", "registry.example/s3vol:pinned"]);
    let (mut node, _) = plugin.clients().await;
    let staging = dir.path().join("staging");
    let req = stage_req("shared/pv-pinned", &staging, HashMap::new(), secrets(ACCESS_KEY, SECRET_KEY));
    node.node_stage_volume(req).await.unwrap();
    let pods = mount_pods(&api);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["spec"]["containers"][0]["image"], "registry.example/s3vol:pinned");
    unstage(&mut node, "shared/pv-pinned", &staging).await;
    assert!(mount_pods(&api).is_empty());
}
