//! Many clients, one bucket (issue 29): two `s3vol mount`s of one bucket at their default
//! options and a third client writing through the AWS SDK, as a ReadWriteMany volume on
//! two nodes beside an upload job. A name another client creates is found by name within
//! `negative_ttl` (1 s), appears in `ls` within `stat_cache_ttl` (+1 s), and deletes and
//! overwrites are seen at the next open; with `negative_ttl=0`, new names are found at
//! once. Needs root and /dev/fuse.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use s3vol_store::{CredentialSource, ObjectStore, PutOptions, S3Config, S3Store, StaticCredentials};
use s3vol_testkit::{TestS3, ACCESS_KEY, SECRET_KEY};

mod standalone;
use standalone::{mount, mount_with};

/// How long after `since` `path` first opened (polling every 20 ms), or `None` within `limit`.
fn opens_within(path: &Path, limit: Duration) -> Option<Duration> {
    let since = Instant::now();
    while since.elapsed() < limit {
        if std::fs::File::open(path).is_ok() {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether `name` is in the listing of `dir` within `limit`, polling.
fn listed_within(dir: &Path, name: &str, limit: Duration) -> Option<Duration> {
    let since = Instant::now();
    while since.elapsed() < limit {
        let names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        if names.iter().any(|n| n == name) {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn missing(path: &Path) -> bool {
    std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

#[test]
fn names_other_clients_make_are_found_within_a_second() {
    if !standalone::can_mount("the cross-client consistency test's mounts") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let srv = rt.block_on(TestS3::start()).unwrap();
    srv.backend.create_bucket("bkt");
    let sdk = rt.block_on(async {
        let creds = CredentialSource::fixed(StaticCredentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        });
        S3Store::new(S3Config::new(Some(srv.endpoint()), "us-east-1", creds)).await.unwrap()
    });
    let put = |key: &str, body: &'static [u8]| {
        rt.block_on(sdk.put_object("bkt", key, Bytes::from_static(body), &PutOptions::default())).unwrap();
    };
    // Two nodes at the defaults, and one with a short stat_cache_ttl for the listing bound.
    let a = mount(&srv);
    let b = mount(&srv);
    let c = mount_with(&srv, &["stat_cache_ttl=2"]);
    std::fs::create_dir(a.mnt.join("jobs")).unwrap();
    std::fs::write(a.mnt.join("jobs/batch-0001.done"), b"1").unwrap();
    let second = Duration::from_secs(1);
    // B (and C) list the directory and look for the next names: both answers are cached.
    for m in [&b, &c] {
        assert!(opens_within(&m.mnt.join("jobs/batch-0001.done"), second).is_some());
        assert_eq!(std::fs::read_dir(m.mnt.join("jobs")).unwrap().count(), 1);
    }
    assert!(missing(&b.mnt.join("jobs/batch-0002.done")));
    assert!(missing(&b.mnt.join("jobs/from-tool.csv")));

    // Another mount creates a file B has just been told is not there.
    std::fs::write(a.mnt.join("jobs/batch-0002.done"), b"2").unwrap();
    let took = opens_within(&b.mnt.join("jobs/batch-0002.done"), Duration::from_secs(5));
    assert!(
        took.is_some_and(|t| t <= second + Duration::from_millis(300)),
        "other mount's create seen by name after {took:?}"
    );
    assert_eq!(std::fs::read(b.mnt.join("jobs/batch-0002.done")).unwrap(), b"2");

    // A tool PUTs a key through the SDK.
    put("jobs/from-tool.csv", b"a,b\n");
    let took = opens_within(&b.mnt.join("jobs/from-tool.csv"), Duration::from_secs(5));
    assert!(took.is_some_and(|t| t <= second + Duration::from_millis(300)), "tool's PUT seen by name after {took:?}");

    // In listings within stat_cache_ttl + 1 s (C lists with a 2 s TTL).
    put("jobs/listed.csv", b"x");
    let took = listed_within(&c.mnt.join("jobs"), "listed.csv", Duration::from_secs(6));
    assert!(took.is_some_and(|t| t <= Duration::from_secs(3)), "new key in C's ls after {took:?}");

    // Overwrite and delete by other clients: seen at the next open once no check of
    // this mount younger than OPEN_REVALIDATE (1 s) vouches for the old object.
    std::thread::sleep(Duration::from_millis(1100));
    put("jobs/from-tool.csv", b"new,content\n");
    assert_eq!(std::fs::read(b.mnt.join("jobs/from-tool.csv")).unwrap(), b"new,content\n");
    std::fs::remove_file(a.mnt.join("jobs/batch-0001.done")).unwrap();
    let gone = std::fs::File::open(b.mnt.join("jobs/batch-0001.done"));
    assert_eq!(gone.err().map(|e| e.kind()), Some(std::io::ErrorKind::NotFound), "delete seen at open");

    // negative_ttl=0: a miss is never believed, the new name is there at the first try.
    let d = mount_with(&srv, &["negative_ttl=0"]);
    assert_eq!(std::fs::read_dir(d.mnt.join("jobs")).unwrap().count(), 3);
    assert!(missing(&d.mnt.join("jobs/now.csv")));
    put("jobs/now.csv", b"now");
    assert_eq!(std::fs::read(d.mnt.join("jobs/now.csv")).unwrap(), b"now", "seen at once with negative_ttl=0");
}
