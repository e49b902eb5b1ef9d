//! The node's volume lifecycle over fakes ([`FakeMounter`], [`FakeLauncher`]) and a
//! local-directory store: no root, no FUSE, no processes, so it runs for every developer.
//! What these show with fakes, `crates/s3vol/tests/node.rs` shows with real mounts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use s3vol_csi::connect::DefaultStoreFactory;
use s3vol_csi::node::fake_launcher::FakeLauncher;
use s3vol_csi::node::mounter::{FakeMount, FakeMounter};
use s3vol_csi::node::{NodeConfig, NodeService, UpgradeServers};
use s3vol_csi::pb::node_server::Node;
use s3vol_csi::pb::{self, volume_capability};
use s3vol_csi::policy::StorePolicy;
use s3vol_csi::volume::Endpoint;
use tonic::{Code, Request};

struct Env {
    dir: tempfile::TempDir,
    /// A tmpfs for the node's copy of volume keys (as deployed), or none.
    secrets: Option<tempfile::TempDir>,
    mounter: Arc<FakeMounter>,
    launcher: Arc<FakeLauncher>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store/shared")).unwrap();
        Env {
            dir,
            secrets: None,
            mounter: Arc::new(FakeMounter::default()),
            launcher: Arc::new(FakeLauncher::default()),
        }
    }

    /// With the secrets dir on a tmpfs (/dev/shm), as the DaemonSet mounts it.
    fn with_secrets_tmpfs() -> Env {
        Env { secrets: Some(tempfile::tempdir_in("/dev/shm").unwrap()), ..Env::new() }
    }

    /// A node plugin over the fakes (a new one over the same state dir = a restart).
    fn node(&self) -> NodeService {
        self.node_with(&[])
    }

    /// The admin's policy of every test: `file://` stores below `store/` only, and inline
    /// volumes may also name the `allowed` endpoints.
    fn node_with(&self, allowed: &[&str]) -> NodeService {
        let allowed: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        let policy = StorePolicy::new(Some(&self.dir.path().join("store")), &allowed).unwrap();
        let cfg = NodeConfig {
            node_id: "node-1".into(),
            state_dir: self.dir.path().join("state"),
            secrets_dir: self.secrets.as_ref().map(|d| d.path().to_path_buf()),
            health_interval: Duration::from_secs(3600),
            defaults: Endpoint {
                url: Some(format!("file://{}", self.dir.path().join("store").display())),
                ..Default::default()
            },
            upgrade_servers: UpgradeServers::Rolling,
            policy: policy.clone(),
        };
        let factory = Arc::new(DefaultStoreFactory::new(policy));
        NodeService::with_mounter(&cfg, self.launcher.clone(), factory, self.mounter.clone()).unwrap()
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn volume_dir(&self, volume_id: &str) -> PathBuf {
        let rec = std::fs::read_dir(self.path("state/volumes"))
            .unwrap()
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("record.json"))
                    .is_ok_and(|t| t.contains(&format!("\"{volume_id}\"")))
            })
            .unwrap_or_else(|| panic!("no record of {volume_id}"));
        rec.path()
    }

    fn mounts(&self) -> Vec<PathBuf> {
        self.mounter.mounts().into_iter().map(|(p, _)| p).collect()
    }
}

fn cap(mode: volume_capability::access_mode::Mode) -> Option<pb::VolumeCapability> {
    Some(pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    })
}

fn keys() -> HashMap<String, String> {
    [("accessKeyID".to_string(), "AK1".to_string()), ("secretAccessKey".to_string(), "SK1".to_string())].into()
}

fn stage(volume_id: &str, staging: &Path) -> Request<pb::NodeStageVolumeRequest> {
    Request::new(pb::NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter),
        secrets: keys(),
        ..Default::default()
    })
}

fn publish(volume_id: &str, staging: &Path, target: &Path, readonly: bool) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter),
        readonly,
        ..Default::default()
    }
}

fn unpublish(volume_id: &str, target: &Path) -> Request<pb::NodeUnpublishVolumeRequest> {
    Request::new(pb::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
    })
}

fn unstage(volume_id: &str, staging: &Path) -> Request<pb::NodeUnstageVolumeRequest> {
    Request::new(pb::NodeUnstageVolumeRequest {
        volume_id: volume_id.into(),
        staging_target_path: staging.display().to_string(),
    })
}

const VOL: &str = "shared/pv-a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_publish_unpublish_unstage_as_kubelet_calls_them() {
    let env = Env::new();
    let node = env.node();
    let (staging, t1, t2) = (env.path("staging"), env.path("pods/a/vol"), env.path("pods/b/vol"));
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap(); // kubelet retries: same answer
    let server = env.launcher.server_in(&env.volume_dir(VOL)).expect("a server");
    assert!(server.serving && !server.resumed, "{server:?}");
    assert_eq!(server.access_key.as_deref(), Some("AK1"), "the stage secret's keys reach the server");
    assert_eq!(env.launcher.launches(), 1);

    node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap();
    node.node_publish_volume(Request::new(publish(VOL, &staging, &t2, true))).await.unwrap();
    node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap();
    let e = node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, true))).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let table = env.mounter.mounts();
    assert_eq!(table.len(), 3, "{table:?}");
    assert!(matches!(&table[0].1, FakeMount::Bind { source, read_only: false } if *source == staging), "{table:?}");
    assert!(matches!(&table[1].1, FakeMount::Bind { read_only: true, .. }), "{table:?}");
    assert!(matches!(&table[2].1, FakeMount::Fuse { read_only: false, aborted: false, .. }), "{table:?}");

    node.node_unpublish_volume(unpublish(VOL, &t1)).await.unwrap();
    node.node_unpublish_volume(unpublish(VOL, &t1)).await.unwrap(); // twice: still fine
    node.node_unpublish_volume(unpublish(VOL, &t2)).await.unwrap();
    assert_eq!(env.mounts(), vec![staging.clone()]);
    let dir = env.volume_dir(VOL);
    node.node_unstage_volume(unstage(VOL, &staging)).await.unwrap();
    node.node_unstage_volume(unstage(VOL, &staging)).await.unwrap();
    assert!(env.mounts().is_empty());
    assert!(env.launcher.server_in(&dir).is_none(), "the server is stopped");
    assert_eq!(std::fs::read_dir(env.path("state/volumes")).unwrap().count(), 0, "no record left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_the_wrong_state_get_the_csi_codes() {
    let env = Env::new();
    let node = env.node();
    let (staging, t1, t2) = (env.path("staging"), env.path("pods/a/vol"), env.path("pods/b/vol"));
    let e = node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "publish before stage: {e:?}");
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
    let e = node.node_stage_volume(stage(VOL, &env.path("elsewhere"))).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "staged twice at different paths: {e:?}");
    let single = |t: &Path| {
        let mut r = publish(VOL, &staging, t, false);
        r.volume_capability = cap(volume_capability::access_mode::Mode::SingleNodeSingleWriter);
        Request::new(r)
    };
    node.node_publish_volume(single(&t1)).await.unwrap();
    let e = node.node_publish_volume(single(&t2)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "ReadWriteOncePod at a second target: {e:?}");
    let mut missing = stage("nosuch/pv", &env.path("staging2")).into_inner();
    missing.volume_context.insert("bucket".into(), "nosuch".into());
    let e = node.node_stage_volume(Request::new(missing)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("nosuch"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_replaced_on_the_same_connection_with_no_remount() {
    let env = Env::new();
    let node = env.node();
    let (staging, t1) = (env.path("staging"), env.path("pods/a/vol"));
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
    node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap();
    let before = env.mounter.mounts();
    env.launcher.crash_all();
    node.check_and_repair(VOL).await;
    let server = env.launcher.server_in(&env.volume_dir(VOL)).expect("a new server");
    assert!(server.serving && server.resumed, "took over the live connection: {server:?}");
    assert_eq!(server.access_key.as_deref(), Some("AK1"), "with the volume's keys");
    assert_eq!(env.mounter.mounts(), before, "nothing unmounted, aborted or re-bound");
    assert_eq!(env.launcher.launches(), 2);
    // A healthy volume is left alone.
    node.check_and_repair(VOL).await;
    assert_eq!(env.launcher.launches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plugin_takes_the_connection_back_or_remounts_when_nobody_holds_it() {
    let env = Env::with_secrets_tmpfs();
    let (staging, t1) = (env.path("staging"), env.path("pods/a/vol"));
    {
        let node = env.node();
        node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
        node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap();
    } // the plugin dies; its server lives on
    let node = env.node();
    node.recover().await;
    assert_eq!(env.launcher.launches(), 1, "the live server is kept");
    env.launcher.crash_all();
    node.check_and_repair(VOL).await;
    let server = env.launcher.server_in(&env.volume_dir(VOL)).expect("a new server");
    assert!(server.resumed, "the plugin took the connection back and handed it on: {server:?}");
    assert_eq!(server.access_key.as_deref(), Some("AK1"), "keys taken back from the old server");

    // Plugin and server both gone: nobody holds the connection; the volume is mounted
    // again and the target re-bound.
    drop(node);
    env.launcher.crash_all();
    let node = env.node();
    node.recover().await;
    let server = env.launcher.server_in(&env.volume_dir(VOL));
    assert!(server.as_ref().is_some_and(|s| s.serving && !s.resumed), "a fresh mount: {server:?}");
    assert_eq!(server.unwrap().access_key.as_deref(), Some("AK1"), "keys from the secrets tmpfs");
    let table = env.mounter.mounts();
    assert!(table.iter().any(|(p, m)| *p == t1 && matches!(m, FakeMount::Bind { .. })), "{table:?}");
}

/// Without keys anywhere (no secrets tmpfs, server dead with the plugin) a volume staged
/// with keys is reported abnormal, never "repaired" into a mount that cannot work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_keys_lost_a_volume_is_abnormal_not_repaired() {
    let env = Env::new();
    let (staging, t1) = (env.path("staging"), env.path("pods/a/vol"));
    {
        let node = env.node();
        node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
        node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap();
    }
    env.launcher.crash_all();
    let node = env.node();
    node.recover().await;
    assert_eq!(env.launcher.launches(), 1, "no server started without keys");
    let stats = node
        .node_get_volume_stats(Request::new(pb::NodeGetVolumeStatsRequest {
            volume_id: VOL.into(),
            volume_path: t1.display().to_string(),
            ..Default::default()
        }))
        .await;
    let condition = stats.unwrap().into_inner().volume_condition.expect("a condition");
    assert!(condition.abnormal && condition.message.contains("credentials lost"), "{condition:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_of_a_new_binary_hands_every_volume_to_a_new_server() {
    let env = Env::new();
    let node = env.node();
    let (staging, t1) = (env.path("staging"), env.path("pods/a/vol"));
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
    node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap();
    let before = env.mounter.mounts();
    env.launcher.set_outdated(true);
    node.spawn_rolling_upgrade().await.unwrap();
    let server = env.launcher.server_in(&env.volume_dir(VOL)).expect("a new server");
    assert!(server.resumed, "{server:?}");
    assert_eq!(env.launcher.launches(), 2);
    assert_eq!(env.mounter.mounts(), before, "no remount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_volume_lives_and_ends_with_its_publish() {
    let env = Env::new();
    let node = env.node();
    let target = env.path("pods/uid-1/volumes/kubernetes.io~csi/data/mount");
    let mut r = publish("csi-0123abcd", Path::new(""), &target, false);
    r.staging_target_path = String::new();
    r.secrets = keys();
    r.volume_context = [
        ("bucket".to_string(), "shared".to_string()),
        ("prefix".to_string(), "inline".to_string()),
        ("csi.storage.k8s.io/ephemeral".to_string(), "true".to_string()),
    ]
    .into();
    node.node_publish_volume(Request::new(r.clone())).await.unwrap();
    let staging = target.parent().unwrap().join("s3vol-inline");
    assert_eq!(env.mounts(), vec![target.clone(), staging.clone()]);
    node.node_unpublish_volume(unpublish("csi-0123abcd", &target)).await.unwrap();
    assert!(env.mounts().is_empty());
    assert_eq!(std::fs::read_dir(env.path("state/volumes")).unwrap().count(), 0);
}

/// After a node restart nothing is mounted, but the state dir still holds the volume's
/// record; when kubelet stages the volume again with other attributes (an admin changed
/// the PV's endpoint meanwhile), the stale record gives way instead of refusing the stage
/// with ALREADY_EXISTS forever (seen on the real cluster: a leftover record of an earlier
/// install blocked every pod of the volume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_record_of_an_unmounted_volume_gives_way_to_a_new_stage() {
    let env = Env::new();
    let staging = env.path("staging");
    let node = env.node();
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
    let mut other = stage(VOL, &staging).into_inner();
    other.volume_context.insert("mountOptions".into(), "uid=1000".into());
    let e = node.node_stage_volume(Request::new(other.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "a mounted volume keeps its options: {e:?}");
    env.mounter.reboot();
    let node = env.node();
    node.node_stage_volume(Request::new(other)).await.unwrap();
    assert_eq!(env.mounts(), vec![staging.clone()]);
    let record = std::fs::read_to_string(env.volume_dir(VOL).join("record.json")).unwrap();
    assert!(record.contains("uid=1000"), "the new stage's options are recorded: {record}");
}

/// An inline volume as a pod author writes it: attributes and a publish secret of the
/// author's choice.
fn inline(env: &Env, attrs: &[(&str, &str)], secrets: HashMap<String, String>) -> pb::NodePublishVolumeRequest {
    let mut r =
        publish("csi-feedc0de", Path::new(""), &env.path("pods/uid-2/volumes/kubernetes.io~csi/x/mount"), false);
    r.staging_target_path = String::new();
    r.secrets = secrets;
    r.volume_context = attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    r.volume_context.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    r
}

/// A pod author reaches nothing beyond what their own keys reach: no `file://` store
/// outside the admin's directory (the node's own files), no endpoint the admin did not
/// allow, never the driver's or node's identity. Each refusal is INVALID_ARGUMENT naming
/// the value, and leaves nothing behind: no mount, no record, no directory made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_authors_inline_volume_reaches_only_what_the_admin_allows() {
    let env = Env::new();
    let node = env.node_with(&["http://minio.allowed:9000"]);
    let outside = env.path("node-files/kubelet");
    let outside_url = format!("file://{}", outside.display());
    let escape_url = format!("file://{}/../node-files", env.path("store").display());
    let refusals: Vec<(pb::NodePublishVolumeRequest, &str)> = vec![
        (inline(&env, &[("bucket", "kubelet"), ("endpoint", &outside_url)], keys()), outside_url.as_str()),
        (inline(&env, &[("bucket", "escape"), ("endpoint", &escape_url)], keys()), escape_url.as_str()),
        (
            inline(&env, &[("bucket", "metadata"), ("endpoint", "http://169.254.169.254")], keys()),
            "http://169.254.169.254",
        ),
        // The secret's endpoint is the pod author's choice too.
        (
            inline(&env, &[("bucket", "other")], {
                let mut k = keys();
                k.insert("endpoint".into(), "http://10.0.0.1:9000".into());
                k
            }),
            "http://10.0.0.1:9000",
        ),
        // No keys: the driver's default chain (IRSA, the instance role) is never lent.
        (inline(&env, &[("bucket", "shared")], HashMap::new()), "own keys"),
        (
            inline(
                &env,
                &[
                    ("bucket", "shared"),
                    ("authenticationSource", "pod"),
                    ("roleArn", "arn:aws:iam::1:role/r"),
                    ("stsEndpoint", "http://sts.evil"),
                ],
                HashMap::new(),
            ),
            "http://sts.evil",
        ),
    ];
    for (r, named) in refusals {
        let e = node.node_publish_volume(Request::new(r.clone())).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{:?}: {e:?}", r.volume_context);
        assert!(e.message().contains(named), "the error names {named:?}: {}", e.message());
        assert!(env.mounts().is_empty(), "nothing mounted for {:?}", r.volume_context);
    }
    assert!(!outside.exists(), "the plugin made a directory a pod author named");
    assert!(!env.path("node-files").exists());
    let records = std::fs::read_dir(env.path("state/volumes")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(records, 0, "a refused volume leaves no record");
    // Inside the admin's directory, with its own keys, it mounts.
    let r = inline(&env, &[("bucket", "shared"), ("prefix", "ok")], keys());
    node.node_publish_volume(Request::new(r)).await.unwrap();
}

/// A server that dies between the health check's ping and its stat of the mount leaves
/// that stat waiting for a successor (the kernel resends it to one). The check must not
/// wait for it — it is what starts the successor — and the health loop must go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dying_during_a_health_check_is_still_replaced() {
    let env = Env::new();
    let node = env.node();
    let (staging, t1) = (env.path("staging"), env.path("pods/a/vol"));
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
    node.node_publish_volume(Request::new(publish(VOL, &staging, &t1, false))).await.unwrap();
    env.mounter.hold_health();
    let check = tokio::spawn({
        let node = node.clone();
        async move { node.check_and_repair(VOL).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // the ping answered; the stat waits
    env.launcher.crash_all();
    let done = tokio::time::timeout(Duration::from_secs(30), check).await;
    env.mounter.release_health();
    done.expect("the health check waited for its own stat").unwrap();
    let server = env.launcher.server_in(&env.volume_dir(VOL)).expect("a new server");
    assert!(server.resumed, "{server:?}");
}

/// Load (issue 13 §4): 200 volumes staged on one node plugin, each taken through rounds
/// of stage → publish → unpublish → unstage with every call sent twice at once (kubelet
/// retrying a call that timed out) and health checks running meanwhile. Each call gets
/// success or ABORTED (the per-volume claim), nothing else; no mount is ever made over
/// another; at the end no mount, server, record or socket is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_volumes_churn_with_concurrent_calls_and_leak_nothing() {
    const VOLUMES: usize = 200;
    const ROUNDS: usize = 3;
    let env = Arc::new(Env::new());
    let node = Arc::new(env.node());
    /// Sends `call` twice at once until one of them succeeds; counts ABORTED answers.
    async fn twice<F, Fut>(call: F) -> Result<u32, tonic::Status>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), tonic::Status>>,
    {
        let mut aborted = 0;
        loop {
            let (a, b) = tokio::join!(call(), call());
            let mut ok = false;
            for r in [a, b] {
                match r {
                    Ok(()) => ok = true,
                    Err(e) if e.code() == Code::Aborted => aborted += 1,
                    Err(e) => return Err(e),
                }
            }
            if ok {
                return Ok(aborted);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for v in 0..VOLUMES {
        let (env, node) = (env.clone(), node.clone());
        tasks.spawn(async move {
            let id = format!("shared/pv-{v:03}");
            let staging = env.path(&format!("staging/{v}"));
            let target = env.path(&format!("pods/{v}/vol"));
            let mut aborted = 0;
            for _ in 0..ROUNDS {
                aborted += twice(|| async { node.node_stage_volume(stage(&id, &staging)).await.map(|_| ()) }).await?;
                aborted += twice(|| async {
                    node.node_publish_volume(Request::new(publish(&id, &staging, &target, false))).await.map(|_| ())
                })
                .await?;
                node.check_and_repair(&id).await;
                aborted +=
                    twice(|| async { node.node_unpublish_volume(unpublish(&id, &target)).await.map(|_| ()) }).await?;
                aborted +=
                    twice(|| async { node.node_unstage_volume(unstage(&id, &staging)).await.map(|_| ()) }).await?;
            }
            Ok::<u32, tonic::Status>(aborted)
        });
    }
    let mut aborted = 0;
    while let Some(r) = tasks.join_next().await {
        aborted += r.unwrap().unwrap_or_else(|e| panic!("a call failed with {:?}: {}", e.code(), e.message()));
    }
    assert_eq!(env.mounter.stacked_mounts(), 0, "a mount was made over another (a double mount)");
    assert!(env.mounts().is_empty(), "mounts left: {:?}", env.mounts());
    assert_eq!(env.launcher.live_servers(), 0, "servers left running");
    assert_eq!(std::fs::read_dir(env.path("state/volumes")).unwrap().count(), 0, "records left");
    assert_eq!(env.launcher.launches() as usize, VOLUMES * ROUNDS, "one server per stage, none twice");
    eprintln!("200-volume churn: {} calls, {aborted} ABORTED answers, 0 leaks", VOLUMES * ROUNDS * 8);
}

fn with_sub_path(mut r: pb::NodePublishVolumeRequest, sub: &str) -> Request<pb::NodePublishVolumeRequest> {
    r.volume_context.insert("subPath".into(), sub.into());
    Request::new(r)
}

/// Two PVs with the same volume handle and different `subPath`s (kubelet stages them at
/// the same path): one mount, one server, each pod bound to its own directory, created
/// when missing. A sub-path through a symlink or a file, or with `..`, is the PV's
/// INVALID_ARGUMENT naming it; the same target asked again with another sub-path is
/// ALREADY_EXISTS; a remount re-binds each target to its own sub-path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvs_of_one_volume_share_a_mount_and_each_binds_its_sub_path() {
    let env = Env::with_secrets_tmpfs();
    let (staging, ta, tb) = (env.path("staging"), env.path("pods/a/vol"), env.path("pods/b/vol"));
    let node = env.node();
    let mut stage_b = stage(VOL, &staging).into_inner();
    stage_b.volume_context.insert("subPath".into(), "team-b".into());
    node.node_stage_volume(stage(VOL, &staging)).await.unwrap();
    node.node_stage_volume(Request::new(stage_b)).await.expect("a second PV's stage is the same stage");
    assert_eq!(env.launcher.launches(), 1);

    node.node_publish_volume(with_sub_path(publish(VOL, &staging, &ta, false), "team-a/data/")).await.unwrap();
    node.node_publish_volume(with_sub_path(publish(VOL, &staging, &tb, true), "team-b")).await.unwrap_err();
    std::fs::create_dir(staging.join("team-b")).unwrap();
    node.node_publish_volume(with_sub_path(publish(VOL, &staging, &tb, true), "team-b")).await.unwrap();
    assert!(staging.join("team-a/data").is_dir(), "a writable publish creates its sub-path");
    let bound = |t: &Path| {
        env.mounter.mounts().into_iter().find(|(p, _)| p == t).map(|(_, m)| m).unwrap_or_else(|| panic!("{t:?}"))
    };
    assert_eq!(bound(&ta), FakeMount::Bind { source: staging.join("team-a/data"), read_only: false });
    assert_eq!(bound(&tb), FakeMount::Bind { source: staging.join("team-b"), read_only: true });

    // Idempotent with the same sub-path; another one on the same target is refused.
    node.node_publish_volume(with_sub_path(publish(VOL, &staging, &ta, false), "team-a/data")).await.unwrap();
    let e = node.node_publish_volume(with_sub_path(publish(VOL, &staging, &ta, false), "team-b")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    std::os::unix::fs::symlink("/etc", staging.join("escape")).unwrap();
    std::fs::write(staging.join("file"), b"x").unwrap();
    for (sub, says) in [
        ("escape", "\"escape\" is a symbolic link"),
        ("escape/ssl", "\"escape\" is a symbolic link"),
        ("file/x", "\"file\" is not a directory"),
        ("../other", "may not contain . or .."),
        ("/etc", "must be relative"),
    ] {
        let t = env.path("pods/c/vol");
        let e = node.node_publish_volume(with_sub_path(publish(VOL, &staging, &t, false), sub)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{sub}: {e:?}");
        assert!(e.message().contains(says) && e.message().contains("subPath"), "{sub}: {}", e.message());
        assert!(!env.mounts().contains(&t), "{sub}: nothing bound");
    }

    // Plugin and server gone: the volume is mounted again and each target re-bound to
    // its own sub-path.
    drop(node);
    env.launcher.crash_all();
    let node = env.node();
    node.recover().await;
    assert_eq!(bound(&ta), FakeMount::Bind { source: staging.join("team-a/data"), read_only: false });
    assert_eq!(bound(&tb), FakeMount::Bind { source: staging.join("team-b"), read_only: true });
}
