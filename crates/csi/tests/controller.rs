//! The Identity and Controller services driven the way the external-provisioner and
//! external-resizer drive them: a tonic client over a real unix socket, the production
//! S3 client, and the in-process S3 server behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use s3vol_csi::connect::DefaultStoreFactory;
use s3vol_csi::controller::ControllerService;
use s3vol_csi::identity::IdentityService;
use s3vol_csi::pb::controller_client::ControllerClient;
use s3vol_csi::pb::identity_client::IdentityClient;
use s3vol_csi::pb::{self, volume_capability};
use s3vol_csi::provision::Provisioner;
use s3vol_csi::server;
use s3vol_csi::volume::Endpoint;
use s3vol_testkit::{TestS3, ACCESS_KEY, SECRET_KEY};
use tonic::transport::Channel;
use tonic::Code;

struct Harness {
    srv: TestS3,
    ctl: ControllerClient<Channel>,
    id: IdentityClient<Channel>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn connect(path: std::path::PathBuf) -> Channel {
    tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap()
}

async fn start_with_endpoint(endpoint: Option<String>) -> Harness {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("shared");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    // A stale socket from a previous run must not stop the server.
    std::fs::write(&sock, b"stale").unwrap();
    let listener = server::bind_unix(&sock).unwrap();
    let defaults = Endpoint {
        url: Some(endpoint.unwrap_or_else(|| srv.endpoint())),
        region: None,
        addressing: Default::default(),
    };
    let controller =
        ControllerService::new(Arc::new(Provisioner::new(Arc::new(DefaultStoreFactory::default()), defaults)));
    let identity = IdentityService::new("s3vol.csi.io", true, Arc::new(|| Ok(())));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, identity, Some(controller), None, async move {
        let _ = rx.await;
    }));
    let ch = connect(sock).await;
    Harness { srv, ctl: ControllerClient::new(ch.clone()), id: IdentityClient::new(ch), _dir: dir, stop: Some(tx) }
}

async fn start() -> Harness {
    start_with_endpoint(None).await
}

fn secrets() -> HashMap<String, String> {
    [("accessKeyID", ACCESS_KEY), ("secretAccessKey", SECRET_KEY)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn mount_cap(mode: volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

fn create_req(name: &str, p: HashMap<String, String>, required: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: (required > 0).then_some(pb::CapacityRange { required_bytes: required, limit_bytes: 0 }),
        volume_capabilities: vec![mount_cap(volume_capability::access_mode::Mode::MultiNodeMultiWriter)],
        parameters: p,
        secrets: secrets(),
        ..Default::default()
    }
}

fn delete_req(id: &str) -> pb::DeleteVolumeRequest {
    pb::DeleteVolumeRequest { volume_id: id.into(), secrets: secrets() }
}

const GI: i64 = 1 << 30;

#[tokio::test]
async fn identity_reports_name_capabilities_and_readiness() {
    let mut h = start().await;
    let info = h.id.get_plugin_info(pb::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "s3vol.csi.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = h.id.get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    let has_controller = caps.capabilities.iter().any(|c| {
        matches!(&c.r#type, Some(pb::plugin_capability::Type::Service(s)) if s.r#type == pb::plugin_capability::service::Type::ControllerService as i32)
    });
    assert!(has_controller, "{caps:?}");
    let probe = h.id.probe(pb::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let c = h.ctl.controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}).await.unwrap().into_inner();
    use pb::controller_service_capability::rpc::Type;
    let mut got: Vec<i32> = c
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(pb::controller_service_capability::Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    got.sort_unstable();
    let mut want = vec![
        Type::CreateDeleteVolume as i32,
        Type::CreateDeleteSnapshot as i32,
        Type::ListSnapshots as i32,
        Type::CloneVolume as i32,
        Type::ExpandVolume as i32,
        Type::SingleNodeMultiWriter as i32,
    ];
    want.sort_unstable();
    assert_eq!(got, want, "the controller advertises exactly what it implements");
}

#[tokio::test]
async fn prefix_volume_full_cycle() {
    let mut h = start().await;
    let p = params(&[("bucket", "shared"), ("prefix", "vols")]);
    let v = h.ctl.create_volume(create_req("pvc-1", p.clone(), 2 * GI)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(v.capacity_bytes, 2 * GI);
    assert_eq!(v.volume_context.get("bucket").map(String::as_str), Some("shared"));
    assert_eq!(v.volume_context.get("prefix").map(String::as_str), Some("vols/pvc-1/"));
    assert!(v.volume_id.len() <= 128);
    assert!(h.srv.backend.get("shared", "vols/pvc-1/.s3vol-volume.json").is_some(), "ownership marker written");

    // The same call ten times: the same volume, no error.
    for _ in 0..10 {
        let again =
            h.ctl.create_volume(create_req("pvc-1", p.clone(), 2 * GI)).await.unwrap().into_inner().volume.unwrap();
        assert_eq!(again.volume_id, v.volume_id);
    }
    // Same name, other parameters or an incompatible capacity: ALREADY_EXISTS.
    let conflicting = params(&[("bucket", "shared"), ("prefix", "vols"), ("onDelete", "retain")]);
    let e = h.ctl.create_volume(create_req("pvc-1", conflicting, 2 * GI)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = h.ctl.create_volume(create_req("pvc-1", p.clone(), 5 * GI)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // Validate: confirmed for every access mode of a mount volume; block is not.
    use volume_capability::access_mode::Mode;
    let modes = [
        Mode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
        Mode::MultiNodeMultiWriter,
        Mode::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter,
    ];
    let req = pb::ValidateVolumeCapabilitiesRequest {
        volume_id: v.volume_id.clone(),
        volume_capabilities: modes.iter().map(|m| mount_cap(*m)).collect(),
        secrets: secrets(),
        ..Default::default()
    };
    let r = h.ctl.validate_volume_capabilities(req).await.unwrap().into_inner();
    assert!(r.confirmed.is_some(), "{r:?}");
    let block = pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    };
    let req = pb::ValidateVolumeCapabilitiesRequest {
        volume_id: v.volume_id.clone(),
        volume_capabilities: vec![block],
        secrets: secrets(),
        ..Default::default()
    };
    let r = h.ctl.validate_volume_capabilities(req).await.unwrap().into_inner();
    assert!(r.confirmed.is_none() && r.message.contains("block"), "{r:?}");

    // Expand: recorded, never shrinks; the node step pushes the size to running mounts.
    let req = pb::ControllerExpandVolumeRequest {
        volume_id: v.volume_id.clone(),
        capacity_range: Some(pb::CapacityRange { required_bytes: 3 * GI, limit_bytes: 0 }),
        secrets: secrets(),
        ..Default::default()
    };
    let r = h.ctl.controller_expand_volume(req.clone()).await.unwrap().into_inner();
    assert_eq!((r.capacity_bytes, r.node_expansion_required), (3 * GI, true));
    let marker =
        String::from_utf8(h.srv.backend.get("shared", "vols/pvc-1/.s3vol-volume.json").unwrap().to_vec()).unwrap();
    assert!(marker.contains(&(3 * GI).to_string()), "{marker}");
    let again = h.ctl.create_volume(create_req("pvc-1", p.clone(), 3 * GI)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(again.capacity_bytes, 3 * GI);

    // Data written into the volume and next to it; delete removes only the volume's.
    h.srv.backend.put("shared", "vols/pvc-1/a.txt", b"a", &[]);
    h.srv.backend.put("shared", "vols/pvc-1/dir/b.txt", b"b", &[]);
    h.srv.backend.put("shared", "vols/pvc-10/keep.txt", b"k", &[]);
    h.srv.backend.put("shared", "vols/other.txt", b"o", &[]);
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    assert_eq!(h.srv.backend.keys("shared"), vec!["vols/other.txt", "vols/pvc-10/keep.txt"]);
    // Idempotent, and the volume is gone for the other RPCs.
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    let req = pb::ValidateVolumeCapabilitiesRequest {
        volume_id: v.volume_id.clone(),
        volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
        secrets: secrets(),
        ..Default::default()
    };
    assert_eq!(h.ctl.validate_volume_capabilities(req).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(h.ctl.controller_expand_volume(req_expand(&v.volume_id)).await.unwrap_err().code(), Code::NotFound);
}

fn req_expand(id: &str) -> pb::ControllerExpandVolumeRequest {
    pb::ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(pb::CapacityRange { required_bytes: GI, limit_bytes: 0 }),
        secrets: secrets(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bucket_per_volume_cycle() {
    let mut h = start().await;
    let v = h.ctl.create_volume(create_req("pvc-B_42", HashMap::new(), 0)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(v.volume_context.get("bucket").map(String::as_str), Some("pvc-b-42"));
    assert!(h.srv.backend.has_bucket("pvc-b-42"));
    assert_eq!(v.capacity_bytes, GI, "default capacity when none is asked");
    let again =
        h.ctl.create_volume(create_req("pvc-B_42", HashMap::new(), 0)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    h.srv.backend.put("pvc-b-42", "data/file", b"x", &[]);
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    assert!(!h.srv.backend.has_bucket("pvc-b-42"), "bucket created for the volume is removed");
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
}

#[tokio::test]
async fn delete_never_touches_data_without_our_marker() {
    let mut h = start().await;
    for i in 0..5 {
        h.srv.backend.put("shared", &format!("static/data/f{i}"), b"precious", &[]);
    }
    // A hand-made id pointing at a prefix we never created, and a static-PV style id.
    for id in ["v1|shared|static/data/||", "shared/static/data", "v1|shared|||"] {
        h.ctl.delete_volume(delete_req(id)).await.unwrap();
    }
    assert_eq!(h.srv.backend.keys("shared").len(), 5, "no object deleted");
    // CreateVolume refuses to adopt a prefix that already holds foreign data.
    let e = h
        .ctl
        .create_volume(create_req("data", params(&[("bucket", "shared"), ("prefix", "static")]), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(h.srv.backend.get("shared", "static/data/.s3vol-volume.json").is_none());
    // And a bucket that exists with foreign data is not adopted either.
    h.srv.backend.put("pvc-foreign", "someone/else", b"x", &[]);
    let e = h.ctl.create_volume(create_req("pvc-foreign", HashMap::new(), 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(h.srv.backend.keys("pvc-foreign"), vec!["someone/else"]);
}

#[tokio::test]
async fn retain_and_archive_policies() {
    let mut h = start().await;
    let retain = params(&[("bucket", "shared"), ("onDelete", "retain")]);
    let v = h.ctl.create_volume(create_req("pvc-r", retain, 0)).await.unwrap().into_inner().volume.unwrap();
    h.srv.backend.put("shared", "pvc-r/f", b"x", &[]);
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    assert!(h.srv.backend.get("shared", "pvc-r/f").is_some(), "retain keeps data");

    let archive = params(&[("bucket", "shared"), ("prefix", "base"), ("onDelete", "archive")]);
    let v = h.ctl.create_volume(create_req("pvc-a", archive, 0)).await.unwrap().into_inner().volume.unwrap();
    h.srv.backend.put("shared", "base/pvc-a/x/y.txt", b"payload", &[]);
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    let keys = h.srv.backend.keys("shared");
    assert!(!keys.iter().any(|k| k.starts_with("base/pvc-a/")), "{keys:?}");
    let archived: Vec<_> = keys.iter().filter(|k| k.starts_with("base/_archived/pvc-a/")).collect();
    assert_eq!(archived.len(), 1, "{keys:?}");
    assert!(archived[0].ends_with("/x/y.txt"));
    assert_eq!(h.srv.backend.get("shared", archived[0]).unwrap(), &b"payload"[..]);
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let mut h = start().await;
    let mut r = create_req("", HashMap::new(), 0);
    assert_eq!(h.ctl.create_volume(r.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    r.name = "pvc-x".into();
    r.volume_capabilities.clear();
    let e = h.ctl.create_volume(r.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("volume_capabilities"), "{e:?}");
    r.volume_capabilities = vec![pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: 1 }),
    }];
    assert_eq!(h.ctl.create_volume(r).await.unwrap_err().code(), Code::InvalidArgument);
    for (k, v, needle) in [
        ("colour", "blue", "colour"),
        ("onDelete", "shred", "shred"),
        ("bucket", "Not_A_Bucket", "Not_A_Bucket"),
        ("addressingStyle", "sideways", "sideways"),
        ("mountOptions", "uid=1,frobnicate", "frobnicate"),
        ("endpoint", "ftp://x", "ftp://x"),
    ] {
        let e = h.ctl.create_volume(create_req("pvc-x", params(&[(k, v)]), 0)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{k}={v}: {e:?}");
        assert!(e.message().contains(needle), "{k}={v}: {e:?}");
    }
    let mut r = create_req("pvc-x", HashMap::new(), 0);
    r.capacity_range = Some(pb::CapacityRange { required_bytes: 10, limit_bytes: 5 });
    assert_eq!(h.ctl.create_volume(r).await.unwrap_err().code(), Code::InvalidArgument);
    let mut r = create_req("pvc-x", HashMap::new(), 0);
    r.secrets = params(&[("accessKeyID", "only-half")]);
    let e = h.ctl.create_volume(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(!e.message().contains("only-half"), "secret values are never echoed: {e:?}");
    assert_eq!(h.ctl.delete_volume(delete_req("")).await.unwrap_err().code(), Code::InvalidArgument);
    let e = h.ctl.create_volume(create_req("pvc-x", params(&[("bucket", "missing-bucket")]), 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("missing-bucket"));
    let no_range = pb::ControllerExpandVolumeRequest { volume_id: "v1|shared|x/||".into(), ..Default::default() };
    assert_eq!(h.ctl.controller_expand_volume(no_range).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn wrong_credentials_are_permission_denied_with_the_store_code() {
    let mut h = start().await;
    let mut r = create_req("pvc-x", params(&[("bucket", "shared")]), 0);
    r.secrets = params(&[("accessKeyID", "nobody"), ("secretAccessKey", "wrong")]);
    let e = h.ctl.create_volume(r).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("InvalidAccessKeyId"), "{e:?}");
    assert!(!e.message().contains("wrong"), "{e:?}");
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_without_hanging() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut h = start_with_endpoint(Some(format!("http://127.0.0.1:{port}"))).await;
    let t = Instant::now();
    let e = h.ctl.create_volume(create_req("pvc-x", params(&[("bucket", "shared")]), 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
}

#[tokio::test]
async fn store_outage_is_unavailable() {
    let mut h = start().await;
    h.srv.control.fail_next("HeadBucket", "ServiceUnavailable".parse().unwrap(), 10);
    h.srv.control.fail_next("GetObject", "ServiceUnavailable".parse().unwrap(), 10);
    let e = h.ctl.create_volume(create_req("pvc-x", params(&[("bucket", "shared")]), 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates() {
    let h = start().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut ctl = h.ctl.clone();
        tasks.push(tokio::spawn(async move {
            ctl.create_volume(create_req(&format!("pvc-{i}"), params(&[("bucket", "shared")]), 0))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap().volume.unwrap().volume_id);
    }
    assert_eq!(ids.len(), 50);
    let markers = h.srv.backend.keys("shared").into_iter().filter(|k| k.ends_with(".s3vol-volume.json")).count();
    assert_eq!(markers, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_call_on_the_same_volume_is_aborted() {
    let h = start().await;
    h.srv.control.set_latency(Duration::from_millis(300));
    let mut first = h.ctl.clone();
    let t =
        tokio::spawn(
            async move { first.create_volume(create_req("pvc-slow", params(&[("bucket", "shared")]), 0)).await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = h.ctl.clone();
    let e = second.create_volume(create_req("pvc-slow", params(&[("bucket", "shared")]), 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    t.await.unwrap().unwrap();
}

#[tokio::test]
async fn delete_of_a_prefix_with_ten_thousand_objects() {
    let mut h = start().await;
    let v = h
        .ctl
        .create_volume(create_req("pvc-big", params(&[("bucket", "shared")]), 0))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    for i in 0..10_000 {
        h.srv.backend.put("shared", &format!("pvc-big/d{}/f{i}", i % 17), b"", &[]);
    }
    h.srv.backend.put("shared", "neighbour/keep", b"k", &[]);
    h.srv.control.reset_counts();
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    assert_eq!(h.srv.backend.keys("shared"), vec!["neighbour/keep"]);
    let deletes = h.srv.control.count("DeleteObjects");
    assert!((10..=11).contains(&deletes), "batched deletes of 1000 keys: {deletes}");
}

#[tokio::test]
async fn longest_names_still_fit_in_a_volume_id() {
    let mut h = start().await;
    let name = "n".repeat(128);
    for p in [params(&[("bucket", "shared"), ("prefix", "some/base")]), HashMap::new()] {
        let v = h.ctl.create_volume(create_req(&name, p.clone(), 0)).await.unwrap().into_inner().volume.unwrap();
        assert!(v.volume_id.len() <= 128, "{}", v.volume_id);
        let again = h.ctl.create_volume(create_req(&name, p, 0)).await.unwrap().into_inner().volume.unwrap();
        assert_eq!(again.volume_id, v.volume_id);
        h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    }
}

/// csi-sanity's "maximum-length name" with the endpoint given as a StorageClass parameter
/// (no driver default reaches that store): the id must keep the endpoint and region, or
/// DeleteVolume goes to the wrong store and the volume can never be deleted.
#[tokio::test]
async fn longest_names_keep_the_endpoint_so_delete_works() {
    let mut h = start_with_endpoint(Some("http://127.0.0.1:1".into())).await;
    let name = "m".repeat(128);
    let endpoint = h.srv.endpoint();
    let p = params(&[("bucket", "shared"), ("prefix", "base"), ("endpoint", &endpoint), ("region", "eu-west-1")]);
    let v = h.ctl.create_volume(create_req(&name, p, 0)).await.unwrap().into_inner().volume.unwrap();
    assert!(v.volume_id.len() <= 128, "{}", v.volume_id);
    let id = s3vol_csi::volume::VolumeId::parse(&v.volume_id).unwrap();
    assert_eq!((id.endpoint.as_deref(), id.region.as_deref()), (Some(endpoint.as_str()), Some("eu-west-1")));
    assert!(!h.srv.backend.keys("shared").is_empty(), "marker written");
    h.ctl.delete_volume(delete_req(&v.volume_id)).await.unwrap();
    assert!(h.srv.backend.keys("shared").is_empty(), "{:?}", h.srv.backend.keys("shared"));
    // When not even a short hashed name fits, CreateVolume says why instead of making an
    // id that loses something.
    let long_base = "b".repeat(100);
    let p = params(&[("bucket", "shared"), ("prefix", &long_base), ("endpoint", &endpoint)]);
    let e = h.ctl.create_volume(create_req("pvc-x", p, 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("shorter prefix"), "{e:?}");
}

fn snapshot_req(name: &str, source: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        secrets: secrets(),
        parameters: HashMap::new(),
    }
}

fn from_source(
    name: &str,
    p: HashMap<String, String>,
    src: pb::volume_content_source::Type,
) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        volume_content_source: Some(pb::VolumeContentSource { r#type: Some(src) }),
        ..create_req(name, p, 0)
    }
}

/// Snapshots (issue 14 §3), as the external-snapshotter drives them: a snapshot is a
/// copy taken at CreateSnapshot (later writes to the volume do not reach it), a volume
/// made from it or cloned from a volume holds the content, names are idempotent, a
/// second source under the same name is ALREADY_EXISTS, missing sources NOT_FOUND,
/// DeleteSnapshot removes only the copy, and an interrupted fill is finished by the retry.
#[tokio::test]
async fn snapshots_and_clones_copy_the_volume_server_side() {
    use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let mut h = start().await;
    let caps = h.ctl.controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}).await.unwrap().into_inner();
    use pb::controller_service_capability::{rpc::Type as Rpc, Type as CapType};
    let advertised: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(CapType::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    for want in [Rpc::CreateDeleteSnapshot, Rpc::ListSnapshots, Rpc::CloneVolume] {
        assert!(advertised.contains(&(want as i32)), "{want:?} not advertised: {advertised:?}");
    }
    let p = params(&[("bucket", "shared"), ("prefix", "vols")]);
    let v = h.ctl.create_volume(create_req("pvc-src", p.clone(), 0)).await.unwrap().into_inner().volume.unwrap();
    h.srv.backend.put("shared", "vols/pvc-src/a.txt", b"first", &[]);
    h.srv.backend.put("shared", "vols/pvc-src/dir/b.bin", &[7u8; 3000], &[]);

    let snap =
        h.ctl.create_snapshot(snapshot_req("snap-1", &v.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert!(snap.ready_to_use && snap.size_bytes == 3005, "{snap:?}");
    assert_eq!(snap.source_volume_id, v.volume_id);
    assert!(snap.creation_time.is_some_and(|t| t.seconds > 0));
    assert!(snap.snapshot_id.len() <= 128);
    let again =
        h.ctl.create_snapshot(snapshot_req("snap-1", &v.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id, "idempotent");
    // Writes after the snapshot do not reach it.
    h.srv.backend.put("shared", "vols/pvc-src/a.txt", b"second", &[]);

    let other = h.ctl.create_volume(create_req("pvc-other", p.clone(), 0)).await.unwrap().into_inner().volume.unwrap();
    let e = h.ctl.create_snapshot(snapshot_req("snap-1", &other.volume_id)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = h.ctl.create_snapshot(snapshot_req("snap-x", "v1|shared|vols/nosuch/||")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = h.ctl.create_snapshot(snapshot_req("", &v.volume_id)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A volume from the snapshot holds the snapshot's content.
    let restore = Type::Snapshot(SnapshotSource { snapshot_id: snap.snapshot_id.clone() });
    let r = h.ctl.create_volume(from_source("pvc-restored", p.clone(), restore.clone())).await.unwrap().into_inner();
    let rv = r.volume.unwrap();
    assert!(rv.content_source.is_some());
    let rp = rv.volume_context["prefix"].clone();
    assert_eq!(h.srv.backend.get("shared", &format!("{rp}a.txt")).unwrap(), &b"first"[..]);
    assert_eq!(h.srv.backend.get("shared", &format!("{rp}dir/b.bin")).unwrap().len(), 3000);
    assert!(h.srv.backend.get("shared", &format!("{rp}.s3vol-snapshot.json")).is_none(), "no snapshot marker copied");
    let again = h.ctl.create_volume(from_source("pvc-restored", p.clone(), restore)).await.unwrap().into_inner();
    assert_eq!(again.volume.unwrap().volume_id, rv.volume_id);

    // A clone of the volume holds its current content.
    let clone = Type::Volume(VolumeSource { volume_id: v.volume_id.clone() });
    let c = h.ctl.create_volume(from_source("pvc-clone", p.clone(), clone)).await.unwrap().into_inner().volume.unwrap();
    let cp = c.volume_context["prefix"].clone();
    assert_eq!(h.srv.backend.get("shared", &format!("{cp}a.txt")).unwrap(), &b"second"[..]);

    // Missing sources: NOT_FOUND, and nothing created.
    let gone = Type::Snapshot(SnapshotSource { snapshot_id: "v1|shared|vols/.s3vol-snapshots/none/||".into() });
    let e = h.ctl.create_volume(from_source("pvc-none", p.clone(), gone)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let gone = Type::Volume(VolumeSource { volume_id: "v1|shared|vols/none/||".into() });
    let e = h.ctl.create_volume(from_source("pvc-none", p.clone(), gone)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(h.srv.backend.keys("shared").iter().all(|k| !k.contains("pvc-none")));

    // An interrupted fill (marker says unpopulated) is finished by the retry.
    let marker_key = format!("{cp}.s3vol-volume.json");
    let m = String::from_utf8(h.srv.backend.get("shared", &marker_key).unwrap().to_vec()).unwrap();
    assert!(m.contains("\"populated\": true"), "{m}");
    h.srv.backend.put("shared", &marker_key, m.replace("\"populated\": true", "\"populated\": false").as_bytes(), &[]);
    h.srv.backend.delete("shared", &format!("{cp}a.txt"));
    let clone = Type::Volume(VolumeSource { volume_id: v.volume_id.clone() });
    h.ctl.create_volume(from_source("pvc-clone", p.clone(), clone)).await.unwrap();
    assert!(h.srv.backend.get("shared", &format!("{cp}a.txt")).is_some(), "the retry finished the copy");

    // DeleteSnapshot removes the copy only; twice is fine; the source volume is intact.
    for _ in 0..2 {
        h.ctl
            .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), secrets: secrets() })
            .await
            .unwrap();
    }
    assert!(h.srv.backend.keys("shared").iter().all(|k| !k.contains(".s3vol-snapshots/snap-1/")));
    assert!(h.srv.backend.get("shared", "vols/pvc-src/a.txt").is_some());
    h.ctl
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: v.volume_id.clone(), secrets: secrets() })
        .await
        .unwrap();
    assert!(h.srv.backend.get("shared", "vols/pvc-src/a.txt").is_some(), "a volume id is not a snapshot to delete");
}

fn list_req(snapshot_id: &str, source: &str, max: i32, token: &str) -> pb::ListSnapshotsRequest {
    pb::ListSnapshotsRequest {
        max_entries: max,
        starting_token: token.into(),
        source_volume_id: source.into(),
        snapshot_id: snapshot_id.into(),
        secrets: secrets(),
    }
}

/// ListSnapshots without a database: snapshots in two buckets (one of them volumes of
/// another StorageClass prefix) are all found by an unfiltered list, by id, and by
/// source volume, in pages; a deleted snapshot disappears from every list (also when only
/// its copy was removed by hand); foreign ids and unknown volumes list nothing; a bad
/// token is ABORTED.
#[tokio::test]
async fn list_snapshots_finds_every_snapshot_in_every_bucket() {
    let mut h = start().await;
    h.srv.backend.create_bucket("other");
    h.srv.backend.put("other", "unrelated.txt", b"x", &[]);
    let mut snaps = Vec::new();
    let mut vols = Vec::new();
    for (i, (bucket, prefix)) in [("shared", "vols"), ("shared", "team/x"), ("other", "p")].iter().enumerate() {
        let p = params(&[("bucket", bucket), ("prefix", prefix)]);
        let v = h.ctl.create_volume(create_req(&format!("pvc-l{i}"), p, 0)).await.unwrap().into_inner().volume.unwrap();
        for n in 0..2 {
            let s = h
                .ctl
                .create_snapshot(snapshot_req(&format!("snap-l{i}-{n}"), &v.volume_id))
                .await
                .unwrap()
                .into_inner()
                .snapshot
                .unwrap();
            snaps.push(s);
        }
        vols.push(v);
    }
    let ids = |r: pb::ListSnapshotsResponse| -> Vec<String> {
        r.entries.into_iter().map(|e| e.snapshot.unwrap().snapshot_id).collect::<Vec<_>>()
    };
    let mut want: Vec<String> = snaps.iter().map(|s| s.snapshot_id.clone()).collect();
    want.sort();
    let all = h.ctl.list_snapshots(list_req("", "", 0, "")).await.unwrap().into_inner();
    assert!(all.next_token.is_empty());
    let first = all.entries[0].snapshot.clone().unwrap();
    assert!(first.ready_to_use && first.creation_time.is_some() && !first.source_volume_id.is_empty(), "{first:?}");
    assert_eq!(ids(all), want, "every snapshot of every bucket, in id order");

    // Pages of 4: the second page holds the rest.
    let p1 = h.ctl.list_snapshots(list_req("", "", 4, "")).await.unwrap().into_inner();
    assert_eq!(p1.next_token, "4");
    let p2 = h.ctl.list_snapshots(list_req("", "", 0, &p1.next_token)).await.unwrap().into_inner();
    assert!(p2.next_token.is_empty());
    assert_eq!([ids(p1), ids(p2)].concat(), want);
    let e = h.ctl.list_snapshots(list_req("", "", 0, "not-a-token")).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");

    // By id, by source.
    let one = h.ctl.list_snapshots(list_req(&snaps[3].snapshot_id, "", 0, "")).await.unwrap().into_inner();
    assert_eq!(ids(one), vec![snaps[3].snapshot_id.clone()]);
    let by_src = h.ctl.list_snapshots(list_req("", &vols[2].volume_id, 0, "")).await.unwrap().into_inner();
    let mut of_v2 = vec![snaps[4].snapshot_id.clone(), snaps[5].snapshot_id.clone()];
    of_v2.sort();
    assert_eq!(ids(by_src), of_v2);
    for (id, src) in [("none-exist-id", ""), ("", "not-a-volume-id"), ("", "v1|shared|vols/pvc-nosuch/||")] {
        let r = h.ctl.list_snapshots(list_req(id, src, 0, "")).await.unwrap().into_inner();
        assert!(r.entries.is_empty(), "{id:?} {src:?}: {r:?}");
    }

    // Deleted: gone from every list. A copy removed by hand (its marker gone) is not listed.
    h.ctl
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snaps[0].snapshot_id.clone(), secrets: secrets() })
        .await
        .unwrap();
    let marker = h
        .srv
        .backend
        .keys("other")
        .into_iter()
        .find(|k| k.ends_with(".s3vol-snapshot.json") && k.contains("snap-l2-1"))
        .expect("snapshot marker");
    h.srv.backend.delete("other", &marker);
    let left = ids(h.ctl.list_snapshots(list_req("", "", 0, "")).await.unwrap().into_inner());
    let expect: Vec<String> =
        want.iter().filter(|id| **id != snaps[0].snapshot_id && **id != snaps[5].snapshot_id).cloned().collect();
    assert_eq!(left, expect);
    let r = h.ctl.list_snapshots(list_req(&snaps[0].snapshot_id, "", 0, "")).await.unwrap().into_inner();
    assert!(r.entries.is_empty());
}
