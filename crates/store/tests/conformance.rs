//! The same behaviour checks against every backend: memory, local directory, the S3
//! client against the in-process test server, and (when `S3VOL_MOTO_ENDPOINT` is set,
//! as CI does) the S3 client against moto, a second independent S3 implementation.

use std::sync::Arc;

use bytes::Bytes;
use s3vol_store::{
    collect_body, CredentialSource, ErrorKind, FileStore, ListRequest, MemoryStore, ObjectStore, PutOptions, S3Config,
    S3Store, StaticCredentials,
};
use s3vol_testkit::TestS3;

fn creds(ak: &str, sk: &str) -> CredentialSource {
    CredentialSource::fixed(StaticCredentials {
        access_key_id: ak.into(),
        secret_access_key: sk.into(),
        session_token: None,
    })
}

async fn s3_store(endpoint: &str, ak: &str, sk: &str) -> S3Store {
    S3Store::new(S3Config::new(Some(endpoint.into()), "us-east-1", creds(ak, sk))).await.unwrap()
}

async fn get_all(s: &dyn ObjectStore, b: &str, k: &str, r: Option<std::ops::Range<u64>>) -> Bytes {
    collect_body(s.get_object(b, k, r).await.unwrap().body).await.unwrap()
}

async fn keys(s: &dyn ObjectStore, b: &str, req: ListRequest) -> (Vec<String>, Vec<String>) {
    let mut req = req;
    let (mut objs, mut cps) = (Vec::new(), Vec::new());
    loop {
        let page = s.list(b, &req).await.unwrap();
        objs.extend(page.objects.into_iter().map(|o| o.key));
        cps.extend(page.common_prefixes);
        match page.next_continuation {
            Some(t) => req.continuation = Some(t),
            None => return (objs, cps),
        }
    }
}

/// Behaviour every backend must share. `flat_only`: the local-directory backend cannot
/// hold `a` beside `a/b`, so that case is skipped for it alone.
async fn check(s: &dyn ObjectStore, bucket: &str, flat_only: bool) {
    // Buckets.
    s.create_bucket(bucket).await.unwrap();
    s.head_bucket(bucket).await.unwrap();
    let e = s.head_bucket("s3vol-missing-bucket").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoSuchBucket, "{e}");
    // Re-creating one's own bucket: Conflict, or success as AWS us-east-1 (and moto) answer.
    if let Err(e) = s.create_bucket(bucket).await {
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    }

    // Objects with metadata, heads, ranges.
    let mut opts = PutOptions::default();
    opts.metadata.insert("mode".into(), "33188".into());
    opts.content_type = Some("text/plain".into());
    s.put_object(bucket, "dir/a.txt", Bytes::from_static(b"hello world"), &opts).await.unwrap();
    let m = s.head_object(bucket, "dir/a.txt").await.unwrap();
    assert_eq!(m.size, 11);
    assert_eq!(m.metadata.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(get_all(s, bucket, "dir/a.txt", None).await, &b"hello world"[..]);
    assert_eq!(get_all(s, bucket, "dir/a.txt", Some(6..11)).await, &b"world"[..]);
    assert_eq!(get_all(s, bucket, "dir/a.txt", Some(6..100)).await, &b"world"[..]);
    let g = s.get_object(bucket, "dir/a.txt", Some(2..4)).await.unwrap();
    assert_eq!(g.meta.size, 11, "a ranged GET reports the whole object size");
    assert_eq!(s.head_object(bucket, "nope").await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(s.get_object(bucket, "nope", None).await.err().unwrap().kind, ErrorKind::NotFound);
    assert!(!s.head_object("s3vol-missing-bucket", "x").await.unwrap_err().kind.is_retryable());

    // Markers and listings, paged with a delimiter.
    s.put_object(bucket, "empty/", Bytes::new(), &PutOptions::default()).await.unwrap();
    for i in 0..5 {
        s.put_object(bucket, &format!("dir/f{i}"), Bytes::from(vec![b'x'; i]), &PutOptions::default()).await.unwrap();
    }
    s.put_object(bucket, "dir/sub/deep", Bytes::from_static(b"d"), &PutOptions::default()).await.unwrap();
    let mut req = ListRequest::directory("dir/");
    req.max_keys = Some(2);
    let (objs, cps) = keys(s, bucket, req).await;
    assert_eq!(objs, vec!["dir/a.txt", "dir/f0", "dir/f1", "dir/f2", "dir/f3", "dir/f4"]);
    assert_eq!(cps, vec!["dir/sub/"]);
    let (objs, cps) = keys(s, bucket, ListRequest::directory("")).await;
    assert!(objs.is_empty(), "{objs:?}");
    assert_eq!(cps, vec!["dir/", "empty/"]);
    let (objs, _) = keys(s, bucket, ListRequest::recursive("")).await;
    assert_eq!(objs.len(), 8, "{objs:?}");
    assert!(objs.contains(&"empty/".to_string()));
    let m = s.head_object(bucket, "empty/").await.unwrap();
    assert_eq!(m.size, 0);
    // A marker is listed under its own prefix, alone or beside children.
    s.put_object(bucket, "mk/", Bytes::new(), &PutOptions::default()).await.unwrap();
    s.put_object(bucket, "mk/child", Bytes::from_static(b"c"), &PutOptions::default()).await.unwrap();
    let (objs, _) = keys(s, bucket, ListRequest::recursive("mk/")).await;
    assert_eq!(objs, vec!["mk/", "mk/child"]);
    let (objs, _) = keys(s, bucket, ListRequest::recursive("empty/")).await;
    assert_eq!(objs, vec!["empty/"]);
    s.delete_objects(bucket, &["mk/child".into(), "mk/".into()]).await.unwrap();

    if !flat_only {
        // A key that is both an object and a prefix, as other tools write them.
        s.put_object(bucket, "both", Bytes::from_static(b"file"), &PutOptions::default()).await.unwrap();
        s.put_object(bucket, "both/child", Bytes::from_static(b"c"), &PutOptions::default()).await.unwrap();
        let (objs, cps) = keys(s, bucket, ListRequest::directory("both")).await;
        assert_eq!((objs, cps), (vec!["both".to_string()], vec!["both/".to_string()]));
        s.delete_objects(bucket, &["both".into(), "both/child".into()]).await.unwrap();
    }

    // Multipart: one 5 MiB part and a short last part.
    let big = Bytes::from(vec![7u8; 5 * 1024 * 1024]);
    let id = s.create_multipart(bucket, "mp/obj", &opts).await.unwrap();
    let p1 = s.upload_part(bucket, "mp/obj", &id, 1, big.clone()).await.unwrap();
    let p2 = s.upload_part(bucket, "mp/obj", &id, 2, Bytes::from_static(b"tail")).await.unwrap();
    s.complete_multipart(bucket, "mp/obj", &id, vec![p1, p2]).await.unwrap();
    let m = s.head_object(bucket, "mp/obj").await.unwrap();
    assert_eq!(m.size, big.len() as u64 + 4);
    assert_eq!(m.metadata.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(get_all(s, bucket, "mp/obj", Some(big.len() as u64..big.len() as u64 + 4)).await, &b"tail"[..]);
    let id = s.create_multipart(bucket, "mp/aborted", &opts).await.unwrap();
    s.upload_part(bucket, "mp/aborted", &id, 1, Bytes::from_static(b"x")).await.unwrap();
    s.abort_multipart(bucket, "mp/aborted", &id).await.unwrap();
    assert_eq!(s.head_object(bucket, "mp/aborted").await.unwrap_err().kind, ErrorKind::NotFound);

    // Copy, keeping or replacing metadata.
    s.copy_object(bucket, "dir/a.txt", "copy/kept", None).await.unwrap();
    assert_eq!(
        s.head_object(bucket, "copy/kept").await.unwrap().metadata.get("mode").map(String::as_str),
        Some("33188")
    );
    let mut newer = PutOptions::default();
    newer.metadata.insert("mode".into(), "33261".into());
    s.copy_object(bucket, "dir/a.txt", "copy/replaced", Some(&newer)).await.unwrap();
    assert_eq!(
        s.head_object(bucket, "copy/replaced").await.unwrap().metadata.get("mode").map(String::as_str),
        Some("33261")
    );
    assert_eq!(get_all(s, bucket, "copy/replaced", None).await, &b"hello world"[..]);
    // A rename's copy: the source's metadata stays, only the placement is given.
    let placement = PutOptions { storage_class: Some("STANDARD".into()), keep_metadata: true, ..Default::default() };
    s.copy_object(bucket, "dir/a.txt", "copy/placed", Some(&placement)).await.unwrap();
    assert_eq!(
        s.head_object(bucket, "copy/placed").await.unwrap().metadata.get("mode").map(String::as_str),
        Some("33188")
    );

    // Deletes: a bucket with objects cannot go; delete-many empties it.
    assert_eq!(s.delete_bucket(bucket).await.unwrap_err().kind, ErrorKind::Conflict);
    s.delete_object(bucket, "never-existed").await.unwrap();
    let (all, _) = keys(s, bucket, ListRequest::recursive("")).await;
    let failed = s.delete_objects(bucket, &all).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let (left, cps) = keys(s, bucket, ListRequest::recursive("")).await;
    assert!(left.is_empty() && cps.is_empty(), "{left:?} {cps:?}");
    s.delete_bucket(bucket).await.unwrap();
    assert_eq!(s.head_bucket(bucket).await.unwrap_err().kind, ErrorKind::NoSuchBucket);
}

#[tokio::test]
async fn memory_store_behaves_like_s3() {
    check(&MemoryStore::new(), "b1", false).await;
}

#[tokio::test]
async fn file_store_behaves_like_s3() {
    let dir = tempfile::tempdir().unwrap();
    check(&FileStore::new(dir.path()), "b1", true).await;
}

#[tokio::test]
async fn s3_store_against_test_server() {
    let srv = TestS3::start().await.unwrap();
    let s = s3_store(&srv.endpoint(), s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY).await;
    check(&s, "conformance", false).await;
    assert!(srv.control.count("DeleteObjects") >= 1);
}

/// Runs against moto when CI started it; a missing endpoint in CI is a failure, not a skip.
#[tokio::test]
async fn s3_store_against_moto() {
    let Ok(endpoint) = std::env::var("S3VOL_MOTO_ENDPOINT") else {
        s3vol_testkit::skip_or_fail("the moto scenarios need S3VOL_MOTO_ENDPOINT (moto_server)");
        return;
    };
    let s = s3_store(&endpoint, "testing", "testing").await;
    let bucket = format!("conformance-{}", std::process::id());
    check(&s, &bucket, false).await;
}

/// Over plain HTTP upload bodies are signed; with signing off (the default over HTTPS)
/// they go as UNSIGNED-PAYLOAD, which the store accepts, and content arrives intact.
#[tokio::test]
async fn upload_bodies_are_signed_only_where_nothing_else_protects_them() {
    assert!(s3vol_store::signs_payload(Some("http://minio:9000"), None));
    assert!(!s3vol_store::signs_payload(Some("HTTPS://s3.example.com"), None));
    assert!(!s3vol_store::signs_payload(None, None), "the AWS default endpoint is HTTPS");
    assert!(s3vol_store::signs_payload(Some("https://x"), Some(true)));
    let srv = TestS3::start().await.unwrap();
    let signed = s3_store(&srv.endpoint(), s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY).await;
    signed.create_bucket("signing").await.unwrap();
    signed.put_object("signing", "a", Bytes::from_static(b"signed"), &PutOptions::default()).await.unwrap();
    assert_eq!(srv.control.count("UnsignedPayload"), 0);
    let mut cfg =
        S3Config::new(Some(srv.endpoint()), "us-east-1", creds(s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY));
    cfg.sign_payload = Some(false);
    let unsigned = S3Store::new(cfg).await.unwrap();
    unsigned.put_object("signing", "b", Bytes::from_static(b"unsigned"), &PutOptions::default()).await.unwrap();
    let id = unsigned.create_multipart("signing", "c", &PutOptions::default()).await.unwrap();
    let part = unsigned.upload_part("signing", "c", &id, 1, Bytes::from(vec![7u8; 1000])).await.unwrap();
    unsigned.complete_multipart("signing", "c", &id, vec![part]).await.unwrap();
    assert_eq!(srv.control.count("UnsignedPayload"), 2, "PutObject and UploadPart unsigned");
    assert_eq!(&get_all(&unsigned, "signing", "b", None).await[..], b"unsigned");
    assert_eq!(get_all(&unsigned, "signing", "c", None).await.len(), 1000);
}

#[tokio::test]
async fn s3_store_with_list_objects_v1() {
    let srv = TestS3::start().await.unwrap();
    let mut cfg =
        S3Config::new(Some(srv.endpoint()), "us-east-1", creds(s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY));
    cfg.list_v1 = true;
    let s = S3Store::new(cfg).await.unwrap();
    check(&s, "conformance-v1", false).await;
    assert!(srv.control.count("ListObjects") > 0);
    assert_eq!(srv.control.count("ListObjectsV2"), 0);
}

#[tokio::test]
async fn s3_errors_are_typed() {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("bkt");
    let bad = s3_store(&srv.endpoint(), "wrong", "key").await;
    let e = bad.head_object("bkt", "k").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AccessDenied, "{e}");
    let e = bad.list("bkt", &ListRequest::recursive("")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AccessDenied, "{e}");
    assert_eq!(e.code.as_deref(), Some("InvalidAccessKeyId"), "{e}");

    let good = s3_store(&srv.endpoint(), s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY).await;
    srv.control.fail_next("PutObject", s3s_code("SlowDown"), 1);
    good.put_object("bkt", "retried", Bytes::from_static(b"x"), &PutOptions::default()).await.unwrap();
    assert_eq!(srv.control.count("PutObject"), 2, "one SlowDown, then a successful retry");
    srv.control.fail_next("GetObject", s3s_code("InternalError"), 10);
    let e = good.get_object("bkt", "retried", None).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Other, "{e}");
    srv.control.clear_faults();
    let e = good.list("nobucket", &ListRequest::recursive("")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoSuchBucket, "{e}");
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_quickly() {
    // A port nobody listens on: connection refused, retried, then Unavailable.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let s = s3_store(&format!("http://127.0.0.1:{port}"), "a", "b").await;
    let t = std::time::Instant::now();
    let e = s.head_bucket("bkt").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "took {:?}", t.elapsed());
}

#[tokio::test]
async fn rotated_credentials_apply_to_the_next_request() {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("bkt");
    srv.control.add_key("keyB", "secretB");
    let source = creds(s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY);
    let s = Arc::new(S3Store::new(S3Config::new(Some(srv.endpoint()), "us-east-1", source.clone())).await.unwrap());
    s.head_bucket("bkt").await.unwrap();
    srv.control.revoke_key(s3vol_testkit::ACCESS_KEY);
    assert_eq!(s.head_bucket("bkt").await.unwrap_err().kind, ErrorKind::AccessDenied);
    assert!(source.rotate(StaticCredentials {
        access_key_id: "keyB".into(),
        secret_access_key: "secretB".into(),
        session_token: None
    }));
    s.head_bucket("bkt").await.unwrap();
}

fn s3s_code(code: &str) -> s3s::S3ErrorCode {
    code.parse().unwrap()
}

#[tokio::test]
async fn copies_above_the_single_copy_limit_go_in_parts() {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("bkt");
    srv.control.set_max_copy_size(6 << 20);
    let mut cfg =
        S3Config::new(Some(srv.endpoint()), "us-east-1", creds(s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY));
    cfg.copy_part_size = 5 << 20;
    let s = S3Store::new(cfg).await.unwrap();
    let data: Vec<u8> = (0..(13 << 20) + 7).map(|i| (i % 253) as u8).collect();
    let mut opts = PutOptions::default();
    opts.metadata.insert("mode".into(), "33188".into());
    s.put_object("bkt", "big", Bytes::from(data.clone()), &opts).await.unwrap();
    s.copy_object("bkt", "big", "big-copy", None).await.unwrap();
    assert_eq!(srv.control.count("UploadPartCopy"), 3);
    assert_eq!(get_all(&s, "bkt", "big-copy", None).await, data);
    assert_eq!(s.head_object("bkt", "big-copy").await.unwrap().metadata.get("mode").map(String::as_str), Some("33188"));
    // A small object still takes one CopyObject.
    s.put_object("bkt", "small", Bytes::from_static(b"s"), &PutOptions::default()).await.unwrap();
    s.copy_object("bkt", "small", "small-copy", None).await.unwrap();
    assert_eq!(srv.control.count("UploadPartCopy"), 3);
    assert_eq!(srv.backend.pending_uploads(), 0);
}

/// Objects written through OSS's own API carry `x-oss-meta-*` headers; they read as
/// ordinary user metadata.
#[tokio::test]
async fn oss_metadata_headers_are_read() {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("bkt");
    srv.backend.put("bkt", "by-ossfs", b"x", &[("mode", "33261"), ("uid", "7")]);
    srv.control.set_oss_metadata_headers(true);
    let s = s3_store(&srv.endpoint(), s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY).await;
    let m = s.head_object("bkt", "by-ossfs").await.unwrap();
    assert_eq!(m.metadata.get("mode").map(String::as_str), Some("33261"), "{:?}", m.metadata);
    assert_eq!(m.metadata.get("uid").map(String::as_str), Some("7"));
    let g = s.get_object("bkt", "by-ossfs", None).await.unwrap();
    assert_eq!(g.meta.metadata.get("mode").map(String::as_str), Some("33261"));
}

#[tokio::test]
async fn a_stalled_body_ends_with_a_retryable_error_after_the_body_timeout() {
    let srv = TestS3::start().await.unwrap();
    srv.backend.create_bucket("bkt");
    srv.backend.put("bkt", "big", &vec![5u8; 1 << 20], &[]);
    let mut cfg =
        S3Config::new(Some(srv.endpoint()), "us-east-1", creds(s3vol_testkit::ACCESS_KEY, s3vol_testkit::SECRET_KEY));
    cfg.body_timeout = std::time::Duration::from_millis(300);
    let s = S3Store::new(cfg).await.unwrap();
    let mut storm = s3vol_testkit::Storm::calm(1);
    storm.stall_rate = 1.0;
    srv.control.set_storm(storm, None);
    let t = std::time::Instant::now();
    let mut body = s.get_object("bkt", "big", None).await.unwrap().body;
    let mut got = 0;
    let err = loop {
        match futures::StreamExt::next(&mut body).await {
            Some(Ok(b)) => got += b.len(),
            Some(Err(e)) => break e,
            None => panic!("a stalled body ended cleanly after {got} bytes"),
        }
    };
    assert!(got < 1 << 20, "the whole body arrived");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.kind.is_retryable());
    assert!(err.to_string().contains("readwrite_timeout"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "took {:?}", t.elapsed());
    assert_eq!(srv.control.storm_faults(), 1);
}
