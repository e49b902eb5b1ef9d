//! Helpers shared by the node tests: the `s3vol csi` plugin as a process, CSI requests
//! as kubelet sends them, and the probe "pod" in its own mount namespace.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use s3vol_csi::pb::controller_client::ControllerClient;
use s3vol_csi::pb::node_client::NodeClient;
use s3vol_csi::pb::{self, volume_capability};
use s3vol_testkit::{TestS3, ACCESS_KEY, SECRET_KEY};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_s3vol");

pub fn can_mount() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        s3vol_testkit::skip_or_fail("node tests need root and /dev/fuse");
    }
    ok
}

pub struct Plugin {
    /// The binary the plugin runs (a copy stands for a new image).
    pub bin: PathBuf,
    /// `RUST_LOG` of the plugin (and so of its servers).
    pub log: &'static str,
    /// Extra arguments of `s3vol csi`.
    pub extra: Vec<String>,
    /// Extra environment of `s3vol csi`.
    pub envs: Vec<(String, String)>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub child: Option<Child>,
    pub endpoint: String,
    pub health: &'static str,
}

impl Plugin {
    pub fn start(dir: &Path, endpoint: &str, health: &'static str) -> Plugin {
        Self::start_with(dir, endpoint, health, true)
    }

    /// `tmpfs_secrets`: whether the secrets dir is a tmpfs (as deployed) or a plain
    /// directory (a misconfigured node: credentials then live only in the processes).
    pub fn start_with(dir: &Path, endpoint: &str, health: &'static str, tmpfs_secrets: bool) -> Plugin {
        let mut p = Self::configure(dir, endpoint, health, tmpfs_secrets);
        p.spawn();
        p
    }

    /// A plugin whose admin allows `endpoint` beyond the default (`--allow-endpoint`: an
    /// `http://` STS endpoint, or an endpoint inline volumes may name).
    pub fn start_allowing(dir: &Path, endpoint: &str, health: &'static str, allowed: &str) -> Plugin {
        let mut p = Self::configure(dir, endpoint, health, true);
        p.extra.extend(["--allow-endpoint".to_string(), allowed.to_string()]);
        p.spawn();
        p
    }

    /// A plugin set up but not started (set `extra`/`envs`, then `spawn`).
    pub fn configure(dir: &Path, endpoint: &str, health: &'static str, tmpfs_secrets: bool) -> Plugin {
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        if tmpfs_secrets && !s3vol_mount::is_mount_point(&secrets) {
            assert!(Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
                .arg(&secrets)
                .status()
                .unwrap()
                .success());
        }
        Plugin {
            bin: PathBuf::from(BIN),
            log: "info",
            extra: Vec::new(),
            envs: Vec::new(),
            dir: dir.to_path_buf(),
            sock: dir.join("csi.sock"),
            child: None,
            endpoint: endpoint.to_string(),
            health,
        }
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let child = Command::new(&self.bin)
            .args(["csi", "--mode", "all", "--node-id", "node-1", "--health-interval", self.health])
            .arg("--endpoint")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--secrets-dir")
            .arg(self.dir.join("secrets"))
            .arg("--default-endpoint")
            .arg(&self.endpoint)
            .args(&self.extra)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", self.log)
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("plugin.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.sock.exists() {
            assert!(
                Instant::now() < deadline,
                "plugin socket did not appear: {}",
                std::fs::read_to_string(self.dir.join("plugin.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn clients(&self) -> (NodeClient<Channel>, ControllerClient<Channel>) {
        let ch = unix_channel(&self.sock).await.unwrap();
        (NodeClient::new(ch.clone()), ControllerClient::new(ch))
    }
}

/// A gRPC channel to a CSI socket, as kubelet opens one.
pub async fn unix_channel(sock: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = sock.to_path_buf();
    tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill9();
        // Leave nothing mounted behind, whatever the test did.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let root = self.dir.to_string_lossy().to_string();
        let mut ours: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)).collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = Command::new("pkill").arg("-9").arg("-f").arg(format!("fuse-server --control {root}")).status();
    }
}

pub fn secrets(ak: &str, sk: &str) -> HashMap<String, String> {
    [("accessKeyID", ak), ("secretAccessKey", sk)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn cap(mode: volume_capability::access_mode::Mode) -> Option<pb::VolumeCapability> {
    Some(pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    })
}

pub fn stage_req(
    volume_id: &str,
    staging: &Path,
    ctx: HashMap<String, String>,
    sec: HashMap<String, String>,
) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter),
        secrets: sec,
        volume_context: ctx,
        ..Default::default()
    }
}

pub fn publish_req(
    volume_id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
    sec: HashMap<String, String>,
) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter),
        readonly,
        secrets: sec,
        ..Default::default()
    }
}

pub fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub fn server_pid(dir: &Path, volume_id: &str) -> u32 {
    let state = dir.join("state/volumes");
    for e in std::fs::read_dir(state).unwrap() {
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.unwrap().path().join("record.json")).unwrap()).unwrap();
        if rec["volume_id"] == volume_id {
            return rec["pid"].as_u64().unwrap() as u32;
        }
    }
    panic!("no record for {volume_id}");
}

pub fn mounted_under(dir: &Path) -> Vec<String> {
    let root = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|m| m.starts_with(&root) && !m.ends_with("/secrets"))
        .collect()
}

pub async fn unpublish(node: &mut NodeClient<Channel>, volume_id: &str, target: &Path) {
    let req = pb::NodeUnpublishVolumeRequest { volume_id: volume_id.into(), target_path: target.display().to_string() };
    node.node_unpublish_volume(req).await.unwrap();
}

pub async fn unstage(node: &mut NodeClient<Channel>, volume_id: &str, staging: &Path) {
    let req = pb::NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
    };
    node.node_unstage_volume(req).await.unwrap();
}

pub async fn env() -> (TestS3, tempfile::TempDir) {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("shared");
    (srv, tempfile::tempdir().unwrap())
}

pub async fn create_volume(ctl: &mut ControllerClient<Channel>, name: &str) -> pb::Volume {
    let req = pb::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter).unwrap()],
        parameters: [("bucket".to_string(), "shared".to_string())].into(),
        secrets: secrets(ACCESS_KEY, SECRET_KEY),
        ..Default::default()
    };
    ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap()
}

pub async fn stage_and_publish(
    node: &mut NodeClient<Channel>,
    ctl: &mut ControllerClient<Channel>,
    dir: &Path,
    name: &str,
) -> (pb::Volume, PathBuf, PathBuf) {
    let vol = create_volume(ctl, name).await;
    let staging = dir.join("staging");
    let target = dir.join("pods/p1/vol");
    let sec = secrets(ACCESS_KEY, SECRET_KEY);
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), sec)).await.unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, HashMap::new())).await.unwrap();
    (vol, staging, target)
}

pub const POD_PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/pod/probe.py");

/// Prints a scenario's numbers and keeps them in `target/tmp/node-scenarios.txt`, which
/// `.ci/run` prints after the suite (a passing test's output is otherwise not shown).
pub fn report(line: &str) {
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-scenarios.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
    }
}

/// Runs the probe script as a pod would: in its own mount namespace with private
/// propagation, created after the publish (so no later mount on the host reaches it).
pub fn start_pod(target: &Path, seconds: f64) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "python3", POD_PROBE])
        .arg(target)
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready", "pod did not start: {line}");
    (child, out)
}

pub fn pod_report(mut child: Child, mut out: std::io::BufReader<std::process::ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(child.wait().unwrap().success(), "pod failed: {line}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("pod report {line:?}: {e}"))
}
