//! The CSI node service over its real gRPC socket, with real mounts: the `s3vol csi`
//! binary as a process (so it can be killed with SIGKILL), FUSE servers as processes,
//! and the in-process S3 server. Needs root and /dev/fuse (a failure in CI).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use s3vol_csi::pb::{self, volume_capability};
use s3vol_testkit::{ACCESS_KEY, SECRET_KEY};
use tonic::Code;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_publish_twice_write_read_unpublish_unstage() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let info = node.node_get_info(pb::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-1");
    let caps = node.node_get_capabilities(pb::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    use pb::node_service_capability::rpc::Type;
    let mut got: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(pb::node_service_capability::Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    got.sort_unstable();
    let mut want: Vec<i32> = [
        Type::StageUnstageVolume,
        Type::GetVolumeStats,
        Type::VolumeCondition,
        Type::VolumeMountGroup,
        Type::SingleNodeMultiWriter,
        Type::ExpandVolume,
    ]
    .iter()
    .map(|t| *t as i32)
    .collect();
    want.sort_unstable();
    assert_eq!(got, want, "the node advertises exactly what it implements");

    let vol = create_volume(&mut ctl, "pvc-node").await;
    let staging = dir.path().join("staging");
    let (t1, t2) = (dir.path().join("pods/a/vol"), dir.path().join("pods/b/vol"));
    let sec = secrets(ACCESS_KEY, SECRET_KEY);
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), sec.clone())).await.unwrap();
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), sec.clone())).await.unwrap();
    let mut other = vol.volume_context.clone();
    other.insert("mountOptions".into(), "uid=5".into());
    let e = node.node_stage_volume(stage_req(&vol.volume_id, &staging, other, sec.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &t1, false, HashMap::new())).await.unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &t2, true, HashMap::new())).await.unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &t1, false, HashMap::new())).await.unwrap();
    std::fs::write(t1.join("hello.txt"), b"from pod a").unwrap();
    assert_eq!(std::fs::read(t2.join("hello.txt")).unwrap(), b"from pod a");
    let err = std::fs::write(t2.join("nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(srv.backend.get("shared", "pvc-node/hello.txt").unwrap(), &b"from pod a"[..]);
    assert!(!std::fs::read_dir(&t1).unwrap().any(|e| e.unwrap().file_name() == ".s3vol-volume.json"), "marker hidden");

    let stats = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: t1.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total, 1 << 30, "capacity of the volume");
    assert!(!stats.volume_condition.unwrap().abnormal);

    let pid = server_pid(dir.path(), &vol.volume_id);
    for t in [&t1, &t2] {
        for _ in 0..2 {
            unpublish(&mut node, &vol.volume_id, t).await;
        }
    }
    for _ in 0..2 {
        unstage(&mut node, &vol.volume_id, &staging).await;
    }
    assert!(mounted_under(dir.path()).is_empty(), "{:?}", mounted_under(dir.path()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "FUSE server exited after unstage");
}

/// A PV that k8s-csi-s3 provisioned in a shared bucket, exactly as it stands in the
/// cluster: handle `bucket/pvc-...`, the StorageClass parameters copied into the
/// attributes (its chart's default geesefs options included), its secret with the
/// endpoint in it. After changing only `driver:`, the pod must see its own prefix and
/// nothing of the other volumes in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_k8s_csi_s3_pv_in_a_shared_bucket_sees_only_its_prefix() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    srv.backend.put("shared", "pvc-other/secret-of-another-volume.txt", b"not yours", &[]);
    srv.backend.put("shared", "top-level.txt", b"not yours either", &[]);
    srv.backend.put("shared", "pvc-0a1b2c3d/mine.txt", b"mine", &[]);
    let plugin = Plugin::start(dir.path(), "http://127.0.0.1:1", "1");
    let (mut node, _) = plugin.clients().await;
    let handle = "shared/pvc-0a1b2c3d";
    let ctx: HashMap<String, String> = [
        ("bucket", "shared"),
        ("mounter", "geesefs"),
        ("options", "--memory-limit 1000 --dir-mode 0777 --file-mode 0666"),
        ("storage.kubernetes.io/csiProvisionerIdentity", "1700000000000-8081-ru.yandex.s3.csi"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut sec = secrets(ACCESS_KEY, SECRET_KEY);
    sec.insert("endpoint".into(), srv.endpoint());
    let staging = dir.path().join("staging");
    let target = dir.path().join("pod/vol");
    node.node_stage_volume(stage_req(handle, &staging, ctx, sec)).await.expect("the chart's default options mount");
    node.node_publish_volume(publish_req(handle, &staging, &target, false, HashMap::new())).await.unwrap();
    let mut seen: Vec<String> =
        std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    seen.sort();
    assert_eq!(seen, vec!["mine.txt"], "the pod sees more than its own prefix");
    std::fs::write(target.join("new.txt"), b"written by the pod").unwrap();
    assert_eq!(srv.backend.get("shared", "pvc-0a1b2c3d/new.txt").unwrap(), &b"written by the pod"[..]);
    assert!(srv.backend.get("shared", "new.txt").is_none());
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(target.join("sub")).unwrap();
    let mode = std::fs::metadata(target.join("mine.txt")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !0o022, "--file-mode 0666 mapped (under the default umask)");
    unpublish(&mut node, handle, &target).await;
    unstage(&mut node, handle, &staging).await;
}

/// Two static PVs of one bucket prefix, as an admin writes them: the same volume handle,
/// each with its own `subPath`. One FUSE mount and one server on the node; each pod sees
/// only its directory (created on first publish), and its files land under it in the
/// bucket. A symlink that someone with write access to the bucket put where a sub-path
/// goes, pointing at the node's `/`, is refused by name instead of becoming a pod's volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvs_with_sub_paths_share_one_mount_and_never_follow_a_symlink_out() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    srv.backend.put("shared", "team/a/mine.txt", b"mine", &[]);
    srv.backend.put("shared", "team/top.txt", b"not for pods of a sub-path", &[]);
    let plugin = Plugin::start(dir.path(), "http://127.0.0.1:1", "1");
    let (mut node, _) = plugin.clients().await;
    let handle = "shared/team";
    let mut sec = secrets(ACCESS_KEY, SECRET_KEY);
    sec.insert("endpoint".into(), srv.endpoint());
    let ctx = |sub: &str| -> HashMap<String, String> { [("subPath".to_string(), sub.to_string())].into() };
    let staging = dir.path().join("staging");
    let (ta, tb) = (dir.path().join("pods/a/vol"), dir.path().join("pods/b/vol"));
    node.node_stage_volume(stage_req(handle, &staging, ctx("a"), sec.clone())).await.unwrap();
    node.node_stage_volume(stage_req(handle, &staging, ctx("b/deeper"), sec.clone())).await.unwrap();
    let pid = server_pid(dir.path(), handle);
    let publish = |t: &Path, sub: &str| {
        let mut r = publish_req(handle, &staging, t, false, HashMap::new());
        r.volume_context = ctx(sub);
        r
    };
    node.node_publish_volume(publish(&ta, "a")).await.unwrap();
    node.node_publish_volume(publish(&tb, "b/deeper")).await.unwrap();
    assert_eq!(server_pid(dir.path(), handle), pid, "one server for both PVs");
    let names = |t: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(t).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&ta), vec!["mine.txt"]);
    assert!(names(&tb).is_empty(), "{:?}", names(&tb));
    std::fs::write(tb.join("new.txt"), b"from pod b").unwrap();
    assert_eq!(srv.backend.get("shared", "team/b/deeper/new.txt").unwrap(), &b"from pod b"[..]);

    // A symlink in the bucket where a sub-path goes.
    std::os::unix::fs::symlink("/", staging.join("escape")).unwrap();
    assert!(std::fs::symlink_metadata(staging.join("escape")).unwrap().file_type().is_symlink());
    let tc = dir.path().join("pods/c/vol");
    for sub in ["escape", "escape/etc"] {
        let e = node.node_publish_volume(publish(&tc, sub)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{sub}: {e:?}");
        assert!(e.message().contains("\"escape\" is a symbolic link"), "{sub}: {}", e.message());
        assert!(!mounted_under(dir.path()).contains(&tc.display().to_string()), "{sub}: bound anyway");
    }
    for t in [&ta, &tb] {
        unpublish(&mut node, handle, t).await;
    }
    unstage(&mut node, handle, &staging).await;
    assert!(mounted_under(dir.path()).is_empty(), "{:?}", mounted_under(dir.path()));
}

/// A dynamic volume created, staged and published to one pod, as kubelet does it.
/// `kill -9` of the FUSE server under a pod in its own mount namespace: the node plugin
/// holds the connection, a new server takes it over from the journal, and the pod sees
/// only a pause. Its read fd, cwd and new files keep working, the flushed writer goes on,
/// the writer whose data died with the server gets EIO, and nothing gets ENOTCONN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_replaced_on_the_same_connection_under_a_private_namespace_pod() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let (vol, staging, target) = stage_and_publish(&mut node, &mut ctl, dir.path(), "pvc-crash").await;
    let mounts_before = mounted_under(dir.path());

    let (pod, out) = start_pod(&target, 6.0);
    std::thread::sleep(Duration::from_millis(1000));
    let old = server_pid(dir.path(), &vol.volume_id);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let report = tokio::task::spawn_blocking(move || pod_report(pod, out)).await.unwrap();
    let replaced = server_pid(dir.path(), &vol.volume_id);
    self::report(&format!(
        "server kill -9 under a private-namespace pod: {} probes, {} failed, slowest probe {} s (the recovery pause), ENOTCONN {}, flushed writer {}, unflushed writer {}",
        report["probes"],
        report["failed"].as_array().map_or(0, Vec::len),
        report["slowest_probe_s"],
        report["enotconn"],
        report["flushed_writer"],
        report["unflushed_write"],
    ));
    assert_ne!(replaced, old, "the server was not replaced");
    assert_eq!(report["enotconn"], 0, "{report}");
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert!(report["slowest_probe_s"].as_f64().unwrap() <= 2.5, "recovery too slow: {report}");
    assert_eq!(report["flushed_writer"], "ok", "{report}");
    assert_eq!(report["unflushed_write"], "EIO", "{report}");
    assert_eq!(report["unflushed_close"], "EIO", "{report}");
    assert_eq!(srv.backend.get("shared", "pvc-crash/flushed.log").unwrap(), &b"before\nafter\n"[..]);
    assert!(srv.backend.get("shared", "pvc-crash/unflushed.log").is_none_or(|b| b.is_empty()));
    assert_eq!(mounted_under(dir.path()), mounts_before, "no remount, no re-bind");
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
    assert!(log.contains("took over the live connection"), "{log}");
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
}

/// A plugin restarted on a node whose secrets dir is not a tmpfs (so it kept no keys):
/// it takes the connection and the credentials back from the live server, and a later
/// server crash is still repaired on the same connection, with working credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plugin_takes_connection_and_credentials_back_from_the_server() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let mut plugin = Plugin::start_with(dir.path(), &srv.endpoint(), "1", false);
    let (mut node, mut ctl) = plugin.clients().await;
    let (vol, staging, target) = stage_and_publish(&mut node, &mut ctl, dir.path(), "pvc-takeback").await;
    assert!(std::fs::read_dir(dir.path().join("secrets")).unwrap().next().is_none(), "no keys kept on disk");
    plugin.restart();
    let (mut node, _) = plugin.clients().await;
    let (pod, out) = start_pod(&target, 4.0);
    let old = server_pid(dir.path(), &vol.volume_id);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let report = tokio::task::spawn_blocking(move || pod_report(pod, out)).await.unwrap();
    self::report(&format!("server kill -9 after a plugin restart without tmpfs secrets: {report}"));
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["flushed_writer"], "ok", "{report}");
    // The new server signs with the keys it got back: its writes reach the store.
    assert!(srv.backend.get("shared", "pvc-takeback/flushed.log").is_some_and(|b| b.ends_with(b"after\n")));
    let stats = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
    assert!(log.contains("took the volume's connection back"), "{log}");
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
}

/// Plugin killed, then its server killed while the plugin is down: nobody holds the
/// connection, so it is gone. The restarted plugin mounts again, re-binds the targets,
/// and says which path it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_and_server_both_killed_falls_back_to_a_remount_and_says_so() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let mut plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let (vol, staging, target) = stage_and_publish(&mut node, &mut ctl, dir.path(), "pvc-both").await;
    std::fs::write(target.join("before.txt"), b"x").unwrap();
    plugin.kill9();
    let pid = server_pid(dir.path(), &vol.volume_id);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (ok, out) = sh(&format!("ls {}", target.display()));
    assert!(!ok && out.contains("not connected"), "with both holders gone the connection is gone: {out}");
    let t = Instant::now();
    plugin.spawn();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read(target.join("before.txt")).is_err() {
        assert!(
            Instant::now() < deadline,
            "not recovered: {}",
            std::fs::read_to_string(dir.path().join("plugin.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    report(&format!(
        "plugin and server both killed: the host's view recovered {:?} after the plugin started (remount path)",
        t.elapsed()
    ));
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
    assert!(log.contains("holds no descriptor of this volume's connection"), "{log}");
    assert!(log.contains("mounted again (new connection)"), "{log}");
    let (mut node, _) = plugin.clients().await;
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
    assert!(mounted_under(dir.path()).is_empty(), "{:?}", mounted_under(dir.path()));
}

/// A DaemonSet rollout to a new image: the plugin restarts from another binary and hands
/// the volume to a server of that binary (graceful handover) while a 256 MiB `dd` streams
/// into the volume and a pod reads, lists and writes. Zero failed operations, every byte
/// in the store, one mount throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_hands_the_volume_over_with_zero_failed_operations() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let mut plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let (vol, staging, target) = stage_and_publish(&mut node, &mut ctl, dir.path(), "pvc-upgrade").await;
    let mounts_before = mounted_under(dir.path());
    let local = dir.path().join("big.local");
    assert!(sh(&format!("head -c 268435456 /dev/urandom > {}", local.display())).0);

    let (pod, out) = start_pod(&target, 8.0);
    let mut dd = Command::new("unshare")
        .args(["-m", "--propagation", "private", "dd", "bs=1M", "status=none"])
        .arg(format!("if={}", local.display()))
        .arg(format!("of={}", target.join("big.bin").display()))
        .spawn()
        .unwrap();
    // Mounts are sampled all along: the handover must never unmount or mount anything.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, root, expected) = (stop.clone(), dir.path().to_path_buf(), mounts_before.clone());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                assert_eq!(mounted_under(&root), expected, "mounts changed during the handover");
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let old = server_pid(dir.path(), &vol.volume_id);
    // The new image: the same program under another file.
    let new_bin = dir.path().join("s3vol-new");
    std::fs::copy(BIN, &new_bin).unwrap();
    plugin.kill9();
    plugin.bin = new_bin;
    let t = Instant::now();
    plugin.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server_pid(dir.path(), &vol.volume_id) == old {
        assert!(
            Instant::now() < deadline,
            "no handover: {}",
            std::fs::read_to_string(dir.path().join("plugin.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let handover = t.elapsed();
    let dd_status = tokio::task::spawn_blocking(move || dd.wait().unwrap()).await.unwrap();
    let report = tokio::task::spawn_blocking(move || pod_report(pod, out)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().expect("mounts changed during the handover");
    let server_log = std::fs::read_to_string(
        dir.path().join("state/volumes").read_dir().unwrap().next().unwrap().unwrap().path().join("server.log"),
    )
    .unwrap();
    let drained = server_log.lines().find(|l| l.contains("drained for a handover")).unwrap_or("").to_string();
    self::report(&format!(
        "rolling upgrade during a 256 MiB dd: handover done {handover:?} after the new plugin started; dd {dd_status}; pod {report}; {samples} mount-table samples, all unchanged; old server: {}",
        drained.split("INFO").last().unwrap_or("").trim()
    ));
    assert!(dd_status.success(), "dd failed across the handover");
    assert!(
        drained.contains("streams=") && !drained.contains("streams=0"),
        "the dd stream was not handed over mid-way: {drained:?}"
    );
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["flushed_writer"], "ok", "{report}");
    assert_eq!(report["unflushed_write"], "ok", "a graceful handover loses nothing: {report}");
    assert_eq!(report["unflushed_close"], "ok", "{report}");
    let stored = srv.backend.get("shared", "pvc-upgrade/big.bin").expect("dd's object");
    assert!(stored == std::fs::read(&local).unwrap(), "object differs from what dd wrote");
    assert_eq!(srv.backend.pending_uploads(), 0);
    assert_eq!(mounted_under(dir.path()), mounts_before);
    let (mut node, _) = plugin.clients().await;
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
}

/// `--upgrade-servers never`: a plugin from a new binary leaves the old server serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_servers_never_leaves_running_servers_alone() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let mut plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let (vol, staging, target) = stage_and_publish(&mut node, &mut ctl, dir.path(), "pvc-never").await;
    let old = server_pid(dir.path(), &vol.volume_id);
    let new_bin = dir.path().join("s3vol-new");
    std::fs::copy(BIN, &new_bin).unwrap();
    plugin.kill9();
    plugin.bin = new_bin;
    plugin.extra = vec!["--upgrade-servers".into(), "never".into()];
    plugin.spawn();
    let (mut node, _) = plugin.clients().await;
    // Longer than a rolling handover takes (about 3 s in the rollout test).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(server_pid(dir.path(), &vol.volume_id), old, "the server was replaced despite --upgrade-servers never");
    std::fs::write(target.join("still.txt"), b"served by the old server").unwrap();
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_survive_a_killed_plugin_and_heal_a_killed_server() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let mut plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let vol = create_volume(&mut ctl, "pvc-survive").await;
    let staging = dir.path().join("staging");
    let target = dir.path().join("pod/vol");
    node.node_stage_volume(stage_req(
        &vol.volume_id,
        &staging,
        vol.volume_context.clone(),
        secrets(ACCESS_KEY, SECRET_KEY),
    ))
    .await
    .unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, HashMap::new())).await.unwrap();

    // A writer is active while the plugin is killed with SIGKILL.
    let writer = Command::new("python3")
        .arg("-c")
        .arg("import sys,time\nf=open(sys.argv[1],'w')\nfor i in range(20):\n    f.write(f'line {i}\\n'); f.flush(); time.sleep(0.05)\nf.close()")
        .arg(target.join("log.txt"))
        .spawn()
        .unwrap();
    // Kill only once the writer has started, and check it had not finished: the kill
    // must land in the middle of the writes.
    let log = target.join("log.txt");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the writer never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    plugin.kill9();
    // 20 lines "line N\n" are 150 bytes; the size is the writer's own while it writes.
    let written_at_kill = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(written_at_kill < 150, "the writer finished before the plugin was killed");
    let status = tokio::task::spawn_blocking(move || {
        let mut w = writer;
        w.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "writer unaffected by the plugin's death");
    assert_eq!(std::fs::read_to_string(target.join("log.txt")).unwrap().lines().count(), 20);
    assert_eq!(
        srv.backend.get("shared", "pvc-survive/log.txt").unwrap().len(),
        std::fs::metadata(target.join("log.txt")).unwrap().len() as usize
    );

    // The restarted plugin re-adopts the running server.
    plugin.spawn();
    let (mut node, _) = plugin.clients().await;
    let stats = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);

    // Kill the FUSE server: the condition turns abnormal, then the mount is repaired.
    let pid = server_pid(dir.path(), &vol.volume_id);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let stats = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cond = stats.volume_condition.unwrap();
    assert!(cond.abnormal, "{cond:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(target.join("log.txt")) {
            assert_eq!(s.lines().count(), 20);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mount not repaired within 10 s: {}",
            std::fs::read_to_string(dir.path().join("plugin.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The plugin records the successor once it serves: reads can succeed a moment before.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_pid(dir.path(), &vol.volume_id) == pid {
        assert!(Instant::now() < deadline, "the successor was never recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(target.join("after.txt"), b"repaired").unwrap();
    assert_eq!(srv.backend.get("shared", "pvc-survive/after.txt").unwrap(), &b"repaired"[..]);

    // A restarted plugin unpublishes and unstages cleanly.
    plugin.restart();
    let (mut node, _) = plugin.clients().await;
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
    assert!(mounted_under(dir.path()).is_empty(), "{:?}", mounted_under(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstage_with_dead_server_and_missing_target_twice() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "3600");
    let (mut node, mut ctl) = plugin.clients().await;
    let vol = create_volume(&mut ctl, "pvc-dead").await;
    let staging = dir.path().join("staging");
    let target = dir.path().join("pod/vol");
    node.node_stage_volume(stage_req(
        &vol.volume_id,
        &staging,
        vol.volume_context.clone(),
        secrets(ACCESS_KEY, SECRET_KEY),
    ))
    .await
    .unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, HashMap::new())).await.unwrap();
    let pid = server_pid(dir.path(), &vol.volume_id);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // The pod's process is blocked on the dead server (the plugin holds the connection,
    // waiting for a successor; this plugin's health checks are an hour apart).
    let mut stuck = Command::new("ls")
        .arg(&target)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(stuck.try_wait().unwrap().is_none(), "ls should be waiting on the dead server");
    // Kubelet deletes the pod: unpublish and unstage succeed, twice, without hanging.
    let t = Instant::now();
    for _ in 0..2 {
        unpublish(&mut node, &vol.volume_id, &target).await;
        unstage(&mut node, &vol.volume_id, &staging).await;
    }
    assert!(t.elapsed() < Duration::from_secs(10), "teardown took {:?}", t.elapsed());
    assert!(mounted_under(dir.path()).is_empty(), "{:?}", mounted_under(dir.path()));
    // The stuck process is released with an error once the connection is given up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = stuck.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the process blocked on the dead mount was never released");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
}

/// Secrets go over the control socket and into the tmpfs, nowhere else: a full stage →
/// publish → rotate → plugin restart (keys handed back by the server) → server crash and
/// takeover → unstage, with every log at debug level, leaves no key in any log, any file
/// outside the tmpfs, or the argv and environment of any process. The sockets and the
/// state dir admit root only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_log_argv_environment_or_file() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let (ak1, sk1, ak2, sk2) = ("AKIDFIRST7Q2W", "sEcReT-first-6d1f0c9a", "AKIDROTATED9Z", "sEcReT-rotated-71ab");
    srv.control.add_key(ak1, sk1);
    srv.control.add_key(ak2, sk2);
    let mut plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    plugin.log = "debug";
    plugin.restart();
    let (mut node, mut ctl) = plugin.clients().await;
    let vol = create_volume(&mut ctl, "pvc-secrets").await;
    let staging = dir.path().join("staging");
    let target = dir.path().join("pods/p1/vol");
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), secrets(ak1, sk1)))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, secrets(ak1, sk1))).await.unwrap();
    std::fs::write(target.join("a"), b"1").unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, secrets(ak2, sk2))).await.unwrap();
    srv.control.revoke_key(ak1);
    plugin.restart();
    let (mut node, _) = plugin.clients().await;
    let old = server_pid(dir.path(), &vol.volume_id);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while server_pid(dir.path(), &vol.volume_id) == old {
        assert!(Instant::now() < deadline, "server not replaced");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(target.join("b"), b"2").unwrap();
    assert_eq!(
        srv.backend.get("shared", "pvc-secrets/b").unwrap(),
        &b"2"[..],
        "the successor signs with the rotated keys"
    );

    // Every s3vol process: argv and environment.
    let mut seen = String::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
        if cmd.windows(5).any(|w| w == b"s3vol") {
            seen.push_str(&String::from_utf8_lossy(&cmd));
            seen.push_str(&String::from_utf8_lossy(&std::fs::read(p.join("environ")).unwrap_or_default()));
        }
    }
    // The sockets and the state dir admit root only.
    use std::os::unix::fs::PermissionsExt;
    let sock =
        dir.path().join("state/volumes").read_dir().unwrap().next().unwrap().unwrap().path().join("control.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.path().join("state")).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(dir.path().join("secrets")).unwrap().permissions().mode() & 0o777, 0o700);
    let script = format!(
        "import socket; s=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect({:?})",
        sock.display().to_string()
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", &script])
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody connected to a control socket");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every file under the test dir but the tmpfs: logs (plugin and servers), records.
    // Before unstage, which removes the volume's state (its server log with it).
    let (_, files) = sh(&format!(
        "find {} -path {} -prune -o -type f -print",
        dir.path().display(),
        dir.path().join("secrets").display()
    ));
    let mut scanned = 0;
    for f in files.lines() {
        if let Ok(bytes) = std::fs::read(f) {
            seen.push_str(&String::from_utf8_lossy(&bytes));
            scanned += 1;
        }
    }
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
    plugin.kill9();
    seen.push_str(&std::fs::read_to_string(dir.path().join("plugin.log")).unwrap());
    assert!(scanned >= 3 && seen.contains("DEBUG"), "logs at debug level were scanned ({scanned} files)");
    for secret in [ak1, sk1, ak2, sk2] {
        let at = seen.find(secret).map(|i| seen[i.saturating_sub(300)..(i + 100).min(seen.len())].to_string());
        assert!(at.is_none(), "{secret} leaked into a log, a file or a process: ...{}...", at.unwrap_or_default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_rotation_without_remount() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    srv.control.add_key("keyA", "secretA");
    srv.control.add_key("keyB", "secretB");
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let vol = create_volume(&mut ctl, "pvc-rotate").await;
    let staging = dir.path().join("staging");
    let target = dir.path().join("pod/vol");
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), secrets("keyA", "secretA")))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, secrets("keyA", "secretA")))
        .await
        .unwrap();
    std::fs::write(target.join("a.txt"), b"with A").unwrap();
    let pid = server_pid(dir.path(), &vol.volume_id);
    // requiresRepublish: the same publish, with new keys; then the old key is revoked.
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, secrets("keyB", "secretB")))
        .await
        .unwrap();
    srv.control.revoke_key("keyA");
    std::fs::write(target.join("b.txt"), b"with B").unwrap();
    assert_eq!(srv.backend.get("shared", "pvc-rotate/b.txt").unwrap(), &b"with B"[..]);
    assert_eq!(server_pid(dir.path(), &vol.volume_id), pid, "no remount, same server");
    // Credentials are never written to the state dir.
    let (_, grep) = sh(&format!("grep -r secretB {} || true", dir.path().join("state").display()));
    assert!(grep.trim().is_empty(), "{grep}");
    let (_, ps) = sh("ps -eo args");
    assert!(!ps.contains("secretA") && !ps.contains("secretB"));
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_errors_are_clear_and_quick() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, _) = plugin.clients().await;
    let staging = dir.path().join("staging");
    let ctx = |b: &str| -> HashMap<String, String> { [("bucket".to_string(), b.to_string())].into() };
    let e = node
        .node_stage_volume(stage_req("static-1", &staging, ctx("missing-bucket"), secrets(ACCESS_KEY, SECRET_KEY)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("missing-bucket"));
    let e = node
        .node_stage_volume(stage_req("static-1", &staging, ctx("shared"), secrets("bad", "key")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("InvalidAccessKeyId"));
    let mut bad = ctx("shared");
    // Tuning options of ossfs are ignored; one that would read keys from a file is refused.
    bad.insert("otherOpts".into(), "-o use_cache=/tmp -o passwd_file=/etc/passwd-ossfs".into());
    let e = node
        .node_stage_volume(stage_req("static-1", &staging, bad, secrets(ACCESS_KEY, SECRET_KEY)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("passwd_file"), "{e:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut unreachable = ctx("shared");
    unreachable.insert("endpoint".into(), format!("http://127.0.0.1:{port}"));
    let t = Instant::now();
    let e = node
        .node_stage_volume(stage_req("static-1", &staging, unreachable, secrets(ACCESS_KEY, SECRET_KEY)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(mounted_under(dir.path()).is_empty());
    let e = node
        .node_publish_volume(publish_req("static-1", &staging, &dir.path().join("t"), false, HashMap::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

/// The Alibaba OSS driver's static PV as its docs show it: the handle is the PV name, the
/// keys come only as `nodePublishSecretRef` (that driver mounts at publish). Kubelet stages
/// it with no secret at all; s3vol waits for the first publish and mounts with its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oss_pv_with_only_a_publish_secret_mounts_at_publish() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    srv.backend.create_bucket("oss-data");
    srv.backend.put("oss-data", "app/config.json", b"{}", &[]);
    srv.backend.put("oss-data", "other-app/secret.txt", b"not this pod's", &[]);
    let plugin = Plugin::start(dir.path(), "http://127.0.0.1:1", "1");
    let (mut node, _) = plugin.clients().await;
    let ctx: HashMap<String, String> = [
        ("bucket", "oss-data"),
        ("url", srv.endpoint().as_str()),
        ("path", "/app"),
        ("otherOpts", "-o max_stat_cache_size=0 -o allow_other -o use_cache=/dev/shm"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let publish_secret: HashMap<String, String> =
        [("akId", ACCESS_KEY), ("akSecret", SECRET_KEY)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let staging = dir.path().join("globalmount");
    node.node_stage_volume(stage_req("pv-oss", &staging, ctx.clone(), HashMap::new()))
        .await
        .expect("stage without a secret (nodeStageSecretRef absent)");
    node.node_stage_volume(stage_req("pv-oss", &staging, ctx.clone(), HashMap::new())).await.expect("idempotent");
    let (t1, t2) = (dir.path().join("pods/a/vol"), dir.path().join("pods/b/vol"));
    let mut req = publish_req("pv-oss", &staging, &t1, false, publish_secret.clone());
    req.volume_context = ctx.clone();
    node.node_publish_volume(req.clone()).await.expect("publish with the publish secret");
    node.node_publish_volume(req).await.expect("publish is idempotent");
    let mut req = publish_req("pv-oss", &staging, &t2, false, publish_secret.clone());
    req.volume_context = ctx;
    node.node_publish_volume(req).await.unwrap();
    assert_eq!(std::fs::read(t1.join("config.json")).unwrap(), b"{}");
    std::fs::write(t2.join("written.txt"), b"by pod b").unwrap();
    assert_eq!(srv.backend.get("oss-data", "app/written.txt").unwrap(), &b"by pod b"[..]);
    assert!(!t1.join("secret.txt").exists() && !t1.join("other-app").exists(), "only the PV's path is visible");
    for t in [&t1, &t2] {
        unpublish(&mut node, "pv-oss", t).await;
    }
    unstage(&mut node, "pv-oss", &staging).await;
    assert!(mounted_under(dir.path()).is_empty(), "{:?}", mounted_under(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pvs_of_other_drivers_mount_with_only_the_driver_changed() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    srv.backend.create_bucket("oss-bucket");
    srv.backend.put("oss-bucket", "existing.txt", b"from ossfs", &[]);
    srv.backend.create_bucket("csi-s3-bucket");
    srv.backend.put("csi-s3-bucket", "some/prefix/data.txt", b"from geesefs", &[]);
    let plugin = Plugin::start(dir.path(), "http://127.0.0.1:1", "1");
    let (mut node, _) = plugin.clients().await;
    // Alibaba OSS driver PV: bucket/url/path/otherOpts, secret akId/akSecret.
    let oss_ctx: HashMap<String, String> = [
        ("bucket", "oss-bucket"),
        ("url", srv.endpoint().as_str()),
        ("path", "/"),
        ("otherOpts", "-o max_stat_cache_size=0 -o allow_other"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let oss_secret: HashMap<String, String> =
        [("akId", ACCESS_KEY), ("akSecret", SECRET_KEY)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let st1 = dir.path().join("st-oss");
    node.node_stage_volume(stage_req("oss-pv", &st1, oss_ctx, oss_secret)).await.unwrap();
    assert_eq!(std::fs::read(st1.join("existing.txt")).unwrap(), b"from ossfs");
    // k8s-csi-s3 PV: volumeHandle bucket/prefix, mounter/options attributes, endpoint in the secret.
    let csi_ctx: HashMap<String, String> = [("mounter", "geesefs"), ("options", "-o allow_other")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut csi_secret = secrets(ACCESS_KEY, SECRET_KEY);
    csi_secret.insert("endpoint".into(), srv.endpoint());
    csi_secret.insert("region".into(), "".into());
    let st2 = dir.path().join("st-csi-s3");
    node.node_stage_volume(stage_req("csi-s3-bucket/some/prefix", &st2, csi_ctx, csi_secret)).await.unwrap();
    assert_eq!(std::fs::read(st2.join("data.txt")).unwrap(), b"from geesefs");
    for (id, st) in [("oss-pv", &st1), ("csi-s3-bucket/some/prefix", &st2)] {
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: st.display().to_string(),
        })
        .await
        .unwrap();
    }
    assert!(mounted_under(dir.path()).is_empty());
}

/// The argument checks csi-sanity makes of the node service, with the codes it expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanity_style_argument_checks() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let staging = dir.path().join("staging").display().to_string();
    let target = dir.path().join("target").display().to_string();
    let c = cap(volume_capability::access_mode::Mode::SingleNodeWriter);
    let codes = vec![
        node.node_publish_volume(pb::NodePublishVolumeRequest::default()).await.unwrap_err().code(),
        node.node_publish_volume(pb::NodePublishVolumeRequest { volume_id: "v".into(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        node.node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: "v".into(),
            target_path: target.clone(),
            staging_target_path: staging.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest::default()).await.unwrap_err().code(),
        node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest { volume_id: "v".into(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        node.node_stage_volume(pb::NodeStageVolumeRequest {
            staging_target_path: staging.clone(),
            volume_capability: c.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        node.node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: "v".into(),
            volume_capability: c.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        node.node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: "v".into(),
            staging_target_path: staging.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            staging_target_path: staging.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest { volume_id: "v".into(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        node.node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_path: "some/path".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        node.node_get_volume_stats(pb::NodeGetVolumeStatsRequest { volume_id: "v".into(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
    ];
    assert!(codes.iter().all(|c| *c == Code::InvalidArgument), "{codes:?}");
    let missing = pb::NodeGetVolumeStatsRequest {
        volume_id: "v1|shared|nope/||".into(),
        volume_path: "some/path".into(),
        ..Default::default()
    };
    assert_eq!(node.node_get_volume_stats(missing).await.unwrap_err().code(), Code::NotFound);
    // A staged and published volume asked about a path where it is not: NOT_FOUND.
    let vol = create_volume(&mut ctl, "pvc-sanity").await;
    let st = dir.path().join("staging");
    node.node_stage_volume(stage_req(&vol.volume_id, &st, vol.volume_context.clone(), secrets(ACCESS_KEY, SECRET_KEY)))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &st, Path::new(&target), false, HashMap::new()))
        .await
        .unwrap();
    let wrong = pb::NodeGetVolumeStatsRequest {
        volume_id: vol.volume_id.clone(),
        volume_path: "some/path".into(),
        ..Default::default()
    };
    assert_eq!(node.node_get_volume_stats(wrong).await.unwrap_err().code(), Code::NotFound);
    node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.clone(),
    })
    .await
    .unwrap();
    assert!(!Path::new(&target).exists(), "unpublish removes the target path");
    unstage(&mut node, &vol.volume_id, &st).await;
}

/// `quota: hard` volumes refuse writes past their capacity with ENOSPC.
/// Expansion as the sidecars and kubelet do it: ControllerExpandVolume, then (because it
/// answers node_expansion_required) NodeExpandVolume on the published path. `df` in the
/// pod shows the new size and the hard quota follows it, without a remount; a server that
/// replaces a crashed one, and a stage on a fresh node, keep the new size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expansion_reaches_the_mount_without_a_remount() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let req = pb::CreateVolumeRequest {
        name: "pvc-grow".into(),
        capacity_range: Some(pb::CapacityRange { required_bytes: 1 << 20, limit_bytes: 0 }),
        volume_capabilities: vec![cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter).unwrap()],
        parameters: [("bucket".to_string(), "shared".to_string()), ("quota".to_string(), "hard".to_string())].into(),
        secrets: secrets(ACCESS_KEY, SECRET_KEY),
        ..Default::default()
    };
    let vol = ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let staging = dir.path().join("staging");
    let target = dir.path().join("pods/p1/vol");
    let sec = secrets(ACCESS_KEY, SECRET_KEY);
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), sec.clone())).await.unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, HashMap::new())).await.unwrap();
    let df = |p: &Path| {
        let s = nix::sys::statvfs::statvfs(p).unwrap();
        s.blocks() * s.fragment_size()
    };
    assert_eq!(df(&target), 1 << 20);
    let err = std::fs::write(target.join("big"), vec![1u8; 3 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");

    let grown = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 8 << 20, limit_bytes: 0 }),
            secrets: secrets(ACCESS_KEY, SECRET_KEY),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(grown.node_expansion_required, "kubelet calls NodeExpandVolume only when asked to");
    let resp = node
        .node_expand_volume(pb::NodeExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 8 << 20, limit_bytes: 0 }),
            staging_target_path: staging.display().to_string(),
            volume_capability: cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.capacity_bytes, 8 << 20);
    assert_eq!(df(&target), 8 << 20, "df in the pod shows the new size");
    std::fs::write(target.join("big"), vec![1u8; 3 << 20]).expect("the hard quota follows the new size");

    // A successor server (after a crash) starts with the new size.
    let old = server_pid(dir.path(), &vol.volume_id);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while server_pid(dir.path(), &vol.volume_id) == old || !sh(&format!("stat -f {}", target.display())).0 {
        assert!(Instant::now() < deadline, "server not replaced");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(df(&target), 8 << 20, "the replacement server forgot the expansion");
    // A stage on another node (fresh state) reads the expanded size from the volume's marker.
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
    node.node_stage_volume(stage_req(&vol.volume_id, &staging, vol.volume_context.clone(), sec)).await.unwrap();
    assert_eq!(df(&staging), 8 << 20, "a new stage uses the size the PV was expanded to");
    unstage(&mut node, &vol.volume_id, &staging).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_quota_volume_fails_writes_past_capacity() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let req = pb::CreateVolumeRequest {
        name: "pvc-quota".into(),
        capacity_range: Some(pb::CapacityRange { required_bytes: 20_000, limit_bytes: 0 }),
        volume_capabilities: vec![cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter).unwrap()],
        parameters: [("bucket".to_string(), "shared".to_string()), ("quota".to_string(), "hard".to_string())].into(),
        secrets: secrets(ACCESS_KEY, SECRET_KEY),
        ..Default::default()
    };
    let vol = ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(vol.volume_context.get("quota").map(String::as_str), Some("hard"));
    let staging = dir.path().join("staging");
    let target = dir.path().join("pod/vol");
    node.node_stage_volume(stage_req(
        &vol.volume_id,
        &staging,
        vol.volume_context.clone(),
        secrets(ACCESS_KEY, SECRET_KEY),
    ))
    .await
    .unwrap();
    node.node_publish_volume(publish_req(&vol.volume_id, &staging, &target, false, HashMap::new())).await.unwrap();
    std::fs::write(target.join("a"), vec![1u8; 12_000]).unwrap();
    let err = std::fs::write(target.join("b"), vec![2u8; 12_000]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    std::fs::remove_file(target.join("a")).unwrap();
    std::fs::write(target.join("b"), vec![2u8; 12_000]).unwrap();
    let stats = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.usage[0].used >= 12_000, "{stats:?}");
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
}

/// The plugin's own flags as a user sets them: `--driver-name` is what GetPluginInfo
/// reports, `--default-region` signs volumes that name no region, `--metrics-addr`
/// serves the per-call CSI metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_name_default_region_and_csi_metrics() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut plugin = Plugin::configure(dir.path(), &srv.endpoint(), "5", true);
    plugin.extra = vec![
        "--driver-name".into(),
        "other.csi.example.com".into(),
        "--default-region".into(),
        "eu-west-3".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    plugin.spawn();
    let (mut node, _) = plugin.clients().await;
    let ch = unix_channel(&plugin.sock).await.unwrap();
    let mut identity = s3vol_csi::pb::identity_client::IdentityClient::new(ch);
    let info = identity.get_plugin_info(pb::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "other.csi.example.com");

    let staging = dir.path().join("staging");
    let req = stage_req("shared/pv-region", &staging, HashMap::new(), secrets(ACCESS_KEY, SECRET_KEY));
    node.node_stage_volume(req).await.unwrap();
    let state = dir.path().join("state/volumes");
    let rec = std::fs::read_dir(&state).unwrap().next().unwrap().unwrap().path().join("record.json");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(rec).unwrap()).unwrap();
    assert_eq!(rec["config"]["region"], "eu-west-3", "{rec}");
    // The volume's FUSE server lists the prefix; its store metrics appear on the plugin's
    // endpoint, labelled with the volume, in one family with the plugin's own.
    std::fs::read_dir(&staging).unwrap().for_each(drop);
    let scrape = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let with_server = scrape();
    let line = with_server
        .lines()
        .find(|l| l.starts_with("s3vol_store_requests_total{") && l.contains("volume=\"shared/pv-region\""))
        .unwrap_or_else(|| panic!("no server metrics:\n{with_server}"));
    assert!(line.contains("op=\"ListObjectsV2\""), "{line}");
    assert_eq!(with_server.matches("# TYPE s3vol_store_requests_total ").count(), 1, "{with_server}");
    // The plugin's own check at stage is counted too.
    assert!(with_server.contains("volume=\"csi-driver\""), "{with_server}");
    // A killed server is replaced on the same connection: the plugin counts it, and the
    // volume is not abnormal once repaired.
    let pid = server_pid(dir.path(), "shared/pv-region");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let replaced = "s3vol_node_server_replacements_total{volume=\"shared/pv-region\",kind=\"takeover\"} 1";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape();
        if text.contains(replaced) {
            assert!(text.contains("s3vol_node_volume_abnormal{volume=\"shared/pv-region\"} 0"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no replacement counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unstage(&mut node, "shared/pv-region", &staging).await;

    let text = scrape();
    assert!(text.contains("s3vol_csi_calls_total{method=\"NodeStageVolume\",code=\"0\"} 1"), "{text}");
    assert!(text.contains("s3vol_csi_call_seconds_count{method=\"GetPluginInfo\"} 1"), "{text}");
}

/// Pod identity as kubelet drives it: a PV with `authenticationSource: pod` and no
/// secret; each publish carries the pod's service-account token (tokenRequests) and the
/// pod info (podInfoOnMount). The plugin exchanges the token with STS for temporary keys;
/// a republish with a fresh token refreshes them in the running server (the first keys can
/// then be revoked); a pod of another service account cannot share the mount; a token STS
/// refuses is PERMISSION_DENIED; no token is ever written to a file or a log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_keys_come_from_the_service_account_token_and_refresh_on_republish() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let sts = s3vol_testkit::FakeSts::start(srv.control.clone()).await.unwrap();
    sts.allow_token("token-one-of-team-a");
    sts.allow_token("token-two-of-team-a");
    let plugin = Plugin::start_allowing(dir.path(), &srv.endpoint(), "5", &sts.url);
    let (mut node, _) = plugin.clients().await;
    let attrs: HashMap<String, String> = [
        ("authenticationSource", "pod"),
        ("roleArn", "arn:aws:iam::123456789012:role/app"),
        ("stsEndpoint", sts.url.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let vid = "shared/pv-identity";
    let staging = dir.path().join("staging");
    node.node_stage_volume(stage_req(vid, &staging, attrs.clone(), HashMap::new())).await.unwrap();
    let publish = |target: &Path, sa: &str, token: &str| {
        let mut req = publish_req(vid, &staging, target, false, HashMap::new());
        req.volume_context = attrs.clone();
        for (k, v) in [
            ("csi.storage.k8s.io/pod.name", "app-0"),
            ("csi.storage.k8s.io/pod.namespace", "team-a"),
            ("csi.storage.k8s.io/pod.uid", "uid-1"),
            ("csi.storage.k8s.io/serviceAccount.name", sa),
            ("csi.storage.k8s.io/ephemeral", "false"),
        ] {
            req.volume_context.insert(k.into(), v.into());
        }
        req.volume_context.insert(
            "csi.storage.k8s.io/serviceAccount.tokens".into(),
            format!(r#"{{"sts.amazonaws.com":{{"token":"{token}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#),
        );
        req
    };
    let target = dir.path().join("pods/a/vol");
    node.node_publish_volume(publish(&target, "app", "token-one-of-team-a")).await.unwrap();
    std::fs::write(target.join("by-pod.txt"), b"written with the pod's keys").unwrap();
    assert_eq!(srv.backend.get("shared", "pv-identity/by-pod.txt").unwrap(), &b"written with the pod's keys"[..]);
    let first = sts.exchanges();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].role_arn, "arn:aws:iam::123456789012:role/app");
    assert!(first[0].session_name.contains("team-a.app"), "{first:?}");

    // kubelet republishes before the token expires: the new keys reach the running server.
    node.node_publish_volume(publish(&target, "app", "token-two-of-team-a")).await.unwrap();
    srv.control.revoke_key(&first[0].access_key);
    std::fs::write(target.join("after-refresh.txt"), b"new keys").unwrap();
    assert_eq!(srv.backend.get("shared", "pv-identity/after-refresh.txt").unwrap(), &b"new keys"[..]);
    assert_eq!(sts.exchanges().len(), 2);

    // Another service account on this node does not get this mount (nor its keys).
    let other = dir.path().join("pods/b/vol");
    let e = node.node_publish_volume(publish(&other, "intruder", "token-two-of-team-a")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("team-a/app") && e.message().contains("team-a/intruder"), "{}", e.message());
    assert!(!s3vol_mount::is_mount_point(&other));

    // A token STS refuses.
    let e = node.node_publish_volume(publish(&target, "app", "forged-token-value")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("InvalidIdentityToken") || e.message().contains("not valid"), "{}", e.message());
    assert!(!e.message().contains("forged-token-value"));

    unpublish(&mut node, vid, &target).await;
    unstage(&mut node, vid, &staging).await;
    // No token in any file the plugin wrote (state, secrets tmpfs, logs).
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("token-one-of-team-a") && !text.contains("token-two-of-team-a"),
                    "token in {}",
                    p.display()
                );
            }
        }
    }
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
    assert!(log.contains("service-account token exchanged"), "{log}");
    assert!(!log.contains("sts-secret"), "a key in the log");
}

/// Pod identity against moto, an STS and S3 we did not write: the pod's token goes to
/// moto's AssumeRoleWithWebIdentity (the AWS wire format, parsed by the AWS SDK), the
/// temporary keys it returns mount the volume, and what the pod writes is in moto's S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_through_moto_sts() {
    if !can_mount() {
        return;
    }
    let Ok(moto) = std::env::var("S3VOL_MOTO_ENDPOINT") else {
        s3vol_testkit::skip_or_fail("the moto STS case needs S3VOL_MOTO_ENDPOINT (moto_server)");
        return;
    };
    let boto = |script: &str| {
        let out = Command::new("python3")
            .args(["-c", &format!("import boto3,sys\ns3 = boto3.client('s3', endpoint_url='{moto}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='y')\n{script}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    boto("s3.create_bucket(Bucket='podid')");
    let dir = tempfile::tempdir().unwrap();
    let plugin = Plugin::start_allowing(dir.path(), &moto, "5", &moto);
    let (mut node, _) = plugin.clients().await;
    let attrs: HashMap<String, String> = [
        ("authenticationSource", "pod"),
        ("roleArn", "arn:aws:iam::123456789012:role/app"),
        ("stsEndpoint", moto.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let vid = "podid/pv-moto";
    let staging = dir.path().join("staging");
    node.node_stage_volume(stage_req(vid, &staging, attrs.clone(), HashMap::new())).await.unwrap();
    let mut req = publish_req(vid, &staging, &dir.path().join("pods/a/vol"), false, HashMap::new());
    req.volume_context = attrs.clone();
    for (k, v) in [
        ("csi.storage.k8s.io/pod.name", "app-0"),
        ("csi.storage.k8s.io/pod.namespace", "team-a"),
        ("csi.storage.k8s.io/pod.uid", "uid-1"),
        ("csi.storage.k8s.io/serviceAccount.name", "app"),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            r#"{"sts.amazonaws.com":{"token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbS1hOmFwcCJ9.c2ln","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#,
        ),
    ] {
        req.volume_context.insert(k.into(), v.into());
    }
    let target = std::path::PathBuf::from(&req.target_path);
    node.node_publish_volume(req).await.unwrap();
    std::fs::write(target.join("from-pod.txt"), b"keys from moto sts").unwrap();
    assert_eq!(
        boto("sys.stdout.write(s3.get_object(Bucket='podid', Key='pv-moto/from-pod.txt')['Body'].read().decode())"),
        "keys from moto sts"
    );
    unpublish(&mut node, vid, &target).await;
    unstage(&mut node, vid, &staging).await;
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
    assert!(log.contains("service-account token exchanged"), "{log}");
    assert!(!log.contains("eyJhbGciOiJSUzI1NiJ9"), "the token in the log");
}

/// A CSI ephemeral (inline) volume as kubelet drives it: NodePublish with no stage and
/// no staging path, a kubelet-made volume id, the bucket and prefix in the pod's
/// volumeAttributes, keys from the nodePublishSecretRef, `csi.storage.k8s.io/ephemeral:
/// "true"`; NodeUnpublish alone ends it, leaving no mount, server or record behind. An
/// inline volume without a bucket attribute is refused (the volume id is not a bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_ephemeral_volumes_are_mounted_for_the_pod_and_gone_with_it() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    srv.backend.put("shared", "inline/readme", b"from the bucket", &[]);
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "5");
    let (mut node, _) = plugin.clients().await;
    let vid = "csi-6c0b2d6f2e1d4a7b9c3e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
    // kubelet's layout: pods/<uid>/volumes/kubernetes.io~csi/<volume name>/mount
    let target = dir.path().join("pods/uid-1/volumes/kubernetes.io~csi/data/mount");
    let ctx: HashMap<String, String> = [
        ("bucket", "shared"),
        ("prefix", "inline"),
        ("mountOptions", "uid=1000"),
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/pod.name", "app-0"),
        ("csi.storage.k8s.io/pod.namespace", "team-a"),
        ("csi.storage.k8s.io/pod.uid", "uid-1"),
        ("csi.storage.k8s.io/serviceAccount.name", "default"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let secrets: HashMap<String, String> =
        [("accessKeyID".to_string(), ACCESS_KEY.to_string()), ("secretAccessKey".to_string(), SECRET_KEY.to_string())]
            .into();
    let publish = |ctx: HashMap<String, String>| pb::NodePublishVolumeRequest {
        volume_id: vid.into(),
        staging_target_path: String::new(),
        target_path: target.display().to_string(),
        volume_capability: cap(volume_capability::access_mode::Mode::SingleNodeWriter),
        secrets: secrets.clone(),
        volume_context: ctx,
        ..Default::default()
    };
    node.node_publish_volume(publish(ctx.clone())).await.unwrap();
    assert_eq!(std::fs::read(target.join("readme")).unwrap(), b"from the bucket");
    std::fs::write(target.join("out.txt"), b"written by the pod").unwrap();
    assert_eq!(srv.backend.get("shared", "inline/out.txt").unwrap(), &b"written by the pod"[..]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(target.join("out.txt")).unwrap().uid(), 1000, "mountOptions apply");
    // kubelet retries a publish it is unsure of: the same answer, nothing stacked.
    node.node_publish_volume(publish(ctx.clone())).await.unwrap();
    let mounts = mounted_under(dir.path());
    assert_eq!(mounts.len(), 2, "the inline staging mount and the target: {mounts:?}");
    let pid = server_pid(dir.path(), vid);

    unpublish(&mut node, vid, &target).await;
    assert_eq!(mounted_under(dir.path()), Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the inline volume's server still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!target.parent().unwrap().join("s3vol-inline").exists(), "staging dir removed");
    assert_eq!(std::fs::read_dir(dir.path().join("state/volumes")).unwrap().count(), 0, "no record left");
    assert_eq!(srv.backend.get("shared", "inline/out.txt").unwrap(), &b"written by the pod"[..], "data kept");

    let mut no_bucket = ctx.clone();
    no_bucket.remove("bucket");
    let e = node.node_publish_volume(publish(no_bucket)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("bucket"), "{}", e.message());
    assert_eq!(mounted_under(dir.path()), Vec::<String>::new());
}

/// Alibaba Cloud RRSA as ACK sets it up: `roleArn` and `oidcProviderArn` (RAM ARNs), a
/// token kubelet made for audience `sts.aliyuncs.com`; the plugin calls STS
/// `AssumeRoleWithOIDC` (RPC style, JSON) and the temporary keys mount the volume. A
/// token for the AWS audience only is refused with the audience named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alibaba_rrsa_exchanges_the_token_with_assume_role_with_oidc() {
    if !can_mount() {
        return;
    }
    let (srv, dir) = env().await;
    let sts = s3vol_testkit::FakeSts::start(srv.control.clone()).await.unwrap();
    sts.allow_token("rrsa-token-of-app");
    let plugin = Plugin::start_allowing(dir.path(), &srv.endpoint(), "5", &sts.url);
    let (mut node, _) = plugin.clients().await;
    let attrs: HashMap<String, String> = [
        ("authenticationSource", "pod"),
        ("roleArn", "acs:ram::1234567890:role/oss-app"),
        ("oidcProviderArn", "acs:ram::1234567890:oidc-provider/ack-rrsa-c0ffee"),
        ("stsEndpoint", sts.url.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let vid = "shared/pv-rrsa";
    let staging = dir.path().join("staging");
    node.node_stage_volume(stage_req(vid, &staging, attrs.clone(), HashMap::new())).await.unwrap();
    let target = dir.path().join("pods/a/vol");
    let publish = |tokens: &str| {
        let mut req = publish_req(vid, &staging, &target, false, HashMap::new());
        req.volume_context = attrs.clone();
        for (k, v) in [
            ("csi.storage.k8s.io/pod.namespace", "team-a"),
            ("csi.storage.k8s.io/serviceAccount.name", "app"),
            ("csi.storage.k8s.io/serviceAccount.tokens", tokens),
        ] {
            req.volume_context.insert(k.into(), v.into());
        }
        req
    };
    let e =
        node.node_publish_volume(publish(r#"{"sts.amazonaws.com":{"token":"rrsa-token-of-app"}}"#)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("sts.aliyuncs.com"), "{}", e.message());
    node.node_publish_volume(publish(r#"{"sts.aliyuncs.com":{"token":"rrsa-token-of-app"}}"#)).await.unwrap();
    std::fs::write(target.join("ali.txt"), b"keys from RRSA").unwrap();
    assert_eq!(srv.backend.get("shared", "pv-rrsa/ali.txt").unwrap(), &b"keys from RRSA"[..]);
    let ex = sts.exchanges();
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].role_arn, "acs:ram::1234567890:role/oss-app");
    assert_eq!(ex[0].oidc_provider_arn, "acs:ram::1234567890:oidc-provider/ack-rrsa-c0ffee");
    assert!(ex[0].access_key.starts_with("STS."), "{ex:?}");
    // A token STS refuses.
    let e = node.node_publish_volume(publish(r#"{"sts.aliyuncs.com":{"token":"stolen"}}"#)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("AuthenticationFail.OIDCToken.Invalid"), "{}", e.message());
    unpublish(&mut node, vid, &target).await;
    unstage(&mut node, vid, &staging).await;
    let log = std::fs::read_to_string(dir.path().join("plugin.log")).unwrap();
    assert!(!log.contains("rrsa-token-of-app"), "the token in the log");
}

/// fsGroup applies per publish: two pods of different fsGroups on one node each see the
/// volume's files owned by their own group and can write (kubelet passes each pod's
/// fsGroup as `volume_mount_group`, at stage for the first pod only). The second group
/// gets a mount of its own beside the staging path, ended by its last unpublish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_gets_its_own_fsgroup() {
    if !can_mount() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "5");
    let (mut node, _) = plugin.clients().await;
    let vid = "shared/pv-groups";
    let with_group = |g: &str| {
        Some(pb::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(volume_capability::MountVolume {
                volume_mount_group: g.into(),
                ..Default::default()
            })),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
            }),
        })
    };
    let staging = dir.path().join("staging");
    let mut stage = stage_req(vid, &staging, HashMap::new(), secrets(ACCESS_KEY, SECRET_KEY));
    stage.volume_capability = with_group("1000");
    node.node_stage_volume(stage).await.unwrap();
    let publish = |target: &Path, g: &str| {
        let mut r = publish_req(vid, &staging, target, false, HashMap::new());
        r.volume_capability = with_group(g);
        r
    };
    let (a, b) = (dir.path().join("pods/a/vol"), dir.path().join("pods/b/vol"));
    node.node_publish_volume(publish(&a, "1000")).await.unwrap();
    node.node_publish_volume(publish(&b, "2000")).await.unwrap();
    node.node_publish_volume(publish(&b, "2000")).await.unwrap(); // kubelet retries
    std::fs::write(a.join("from-a"), b"a").unwrap();
    // Pod B (uid 3000, group 2000) writes next to it and sees the files as its group's.
    let (ok, out) = sh(&format!(
        "setpriv --reuid 3000 --regid 2000 --clear-groups sh -c 'echo b > {0}/from-b && stat -c %g {0}/from-a {0}/from-b'",
        b.display()
    ));
    assert!(ok, "{out}");
    assert_eq!(out, "2000\n2000\n");
    assert_eq!(std::fs::metadata(a.join("from-a")).unwrap().gid(), 1000, "pod A still sees its group");
    assert_eq!(srv.backend.get("shared", "pv-groups/from-b").unwrap(), &b"b\n"[..]);
    assert_eq!(mounted_under(dir.path()).len(), 4, "two FUSE mounts, two binds: {:?}", mounted_under(dir.path()));

    unpublish(&mut node, vid, &b).await;
    assert_eq!(
        mounted_under(dir.path()).len(),
        2,
        "the fsGroup 2000 mount ended with its pod: {:?}",
        mounted_under(dir.path())
    );
    unpublish(&mut node, vid, &a).await;
    unstage(&mut node, vid, &staging).await;
    assert_eq!(mounted_under(dir.path()), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(dir.path().join("state/volumes")).unwrap().count(), 0, "no record left");
}

/// Crash consistency (issue 13 §2): `kill -9` of the FUSE server at 20 points of a
/// 256 MiB upload over an existing object. Each time the stored object is the previous
/// version or the whole new one, never a mix or a part; the successor aborts the
/// multipart upload the dead writer left, so no parts stay in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_twenty_points_of_an_upload_never_leaves_a_partial_object() {
    if !can_mount() {
        return;
    }
    const POINTS: u64 = 20;
    const MIB: usize = 1 << 20;
    let (srv, dir) = env().await;
    let plugin = Plugin::start(dir.path(), &srv.endpoint(), "1");
    let (mut node, mut ctl) = plugin.clients().await;
    let (vol, staging, target) = stage_and_publish(&mut node, &mut ctl, dir.path(), "pvc-torn").await;
    let old = vec![0xAAu8; MIB];
    let writer = |name: &str| {
        Command::new("python3")
            .arg("-c")
            .arg("import sys\nf=open(sys.argv[1],'wb')\nb=b'\\x5a'*(1<<20)\nfor i in range(256): f.write(b)\nf.close()")
            .arg(target.join(name))
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // One undisturbed write tells how long an upload takes here.
    let t = Instant::now();
    assert!(tokio::task::spawn_blocking({
        let mut w = writer("calm.bin");
        move || w.wait().unwrap().success()
    })
    .await
    .unwrap());
    let took = t.elapsed();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let (mut old_kept, mut new_whole, mut absent) = (0, 0, 0);
    for point in 0..POINTS {
        srv.backend.put("shared", "pvc-torn/big.bin", &old, &[]);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = took.mul_f64(0.05 + 0.9 * (x % 1000) as f64 / 1000.0);
        let mut w = writer("big.bin");
        std::thread::sleep(at);
        let pid = server_pid(dir.path(), &vol.volume_id);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        tokio::task::spawn_blocking(move || w.wait().unwrap()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while server_pid(dir.path(), &vol.volume_id) == pid {
            assert!(Instant::now() < deadline, "point {point}: the server was not replaced");
            std::thread::sleep(Duration::from_millis(50));
        }
        let stored = srv.backend.get("shared", "pvc-torn/big.bin");
        match stored.as_deref() {
            Some(b) if b == &old[..] => old_kept += 1,
            Some(b) if b.len() == 256 * MIB && b.iter().all(|&c| c == 0x5a) => new_whole += 1,
            None => absent += 1,
            Some(b) => panic!("point {point} ({at:?} of {took:?}): a partial object of {} bytes is stored", b.len()),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while srv.backend.pending_uploads() > 0 {
            assert!(Instant::now() < deadline, "point {point}: the dead writer's multipart upload was never aborted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    report(&format!(
        "kill -9 at {POINTS} points of a 256 MiB upload ({took:.1?} undisturbed): previous version kept {old_kept}, new version whole {new_whole}, absent {absent}, partial 0, orphaned uploads 0"
    ));
    unpublish(&mut node, &vol.volume_id, &target).await;
    unstage(&mut node, &vol.volume_id, &staging).await;
}
