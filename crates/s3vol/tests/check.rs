//! `s3vol check` as a user runs it, against the in-process S3 server with each fault it
//! can inject: the exit code says whether a mount would work, and the failing step's
//! line names the store's code and the fix. Needs no root and no FUSE.

use std::process::{Command, Output};

use s3s::S3ErrorCode;
use s3vol_testkit::{TestS3, ACCESS_KEY, SECRET_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_s3vol");

struct Env {
    srv: TestS3,
    _rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let srv = rt.block_on(TestS3::start()).unwrap();
    srv.backend.create_bucket("bkt");
    Env { srv, _rt: rt }
}

fn check(endpoint: &str, args: &[&str], keys: Option<(&str, &str)>) -> (bool, String) {
    let mut c = Command::new(BIN);
    c.arg("check").args(args).arg("--endpoint").arg(endpoint).env("RUST_LOG", "off");
    c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env_remove("AWS_PROFILE");
    if let Some((ak, sk)) = keys {
        c.env("AWS_ACCESS_KEY_ID", ak).env("AWS_SECRET_ACCESS_KEY", sk);
    } else {
        // Nothing for the default chain to find: no profile files, no instance metadata.
        let home = tempfile::tempdir().unwrap();
        c.env("HOME", home.path()).env("AWS_EC2_METADATA_DISABLED", "true");
        c.env("AWS_CONFIG_FILE", home.path().join("none")).env("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"));
        let out = c.output().unwrap();
        return outcome(out);
    }
    outcome(c.output().unwrap())
}

fn outcome(out: Output) -> (bool, String) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

const KEYS: Option<(&str, &str)> = Some((ACCESS_KEY, SECRET_KEY));

/// The line of step `name` and the fix line after it.
fn step<'a>(text: &'a str, name: &str) -> String {
    let lines: Vec<&'a str> = text.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} step in:\n{text}"));
    let mut out = lines[i].to_string();
    if let Some(next) = lines.get(i + 1).filter(|l| l.trim_start().starts_with("fix:")) {
        out.push('\n');
        out.push_str(next);
    }
    out
}

#[test]
fn a_working_store_passes_every_step_and_leaves_nothing_behind() {
    let e = env();
    e.srv.backend.put("bkt", "data/kept", b"x", &[]);
    let (ok, out) = check(&e.srv.endpoint(), &["s3://bkt/data"], KEYS);
    assert!(ok, "{out}");
    for name in ["dns", "connect", "clock", "credentials", "bucket", "list", "write", "multipart", "copy"] {
        assert!(step(&out, name).trim_start().starts_with("ok"), "{name}:\n{out}");
    }
    assert!(step(&out, "tls").contains("skip"), "{out}");
    assert!(step(&out, "credentials").contains("AWS_ACCESS_KEY_ID"), "{out}");
    assert!(!out.contains(SECRET_KEY) && !out.contains(ACCESS_KEY), "a key in the output:\n{out}");
    assert!(out.contains("would work"), "{out}");
    assert_eq!(e.srv.backend.keys("bkt"), vec!["data/kept".to_string()], "probe objects removed");
}

/// (what, how to break the store, the step that fails, the code it names, words of the fix)
type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str, &'a str, &'a str);

#[test]
fn each_fault_fails_its_step_with_the_stores_code_and_a_fix() {
    let e = env();
    let ep = e.srv.endpoint();
    let cases: Vec<Case> = vec![
        // HeadBucket's 403 has no body, so no code: the listing names the cause.
        ("wrong access key", Box::new(|| {}), "list", "InvalidAccessKeyId", "access key"),
        (
            "listing refused",
            Box::new(|| e.srv.control.fail_next("ListObjectsV2", S3ErrorCode::AccessDenied, 10)),
            "list",
            "AccessDenied",
            "s3:ListBucket on arn:aws:s3:::bkt",
        ),
        (
            "writes refused",
            Box::new(|| e.srv.control.fail_next("PutObject", S3ErrorCode::AccessDenied, 10)),
            "write",
            "AccessDenied",
            "s3:PutObject",
        ),
        (
            "multipart refused",
            Box::new(|| e.srv.control.fail_next("CreateMultipartUpload", S3ErrorCode::NotImplemented, 10)),
            "multipart",
            "NotImplemented",
            "does not implement",
        ),
        (
            "copy refused",
            Box::new(|| e.srv.control.fail_next("CopyObject", S3ErrorCode::AccessDenied, 10)),
            "copy",
            "AccessDenied",
            "rename, chmod and chown",
        ),
        (
            "clock skewed",
            Box::new(|| e.srv.control.fail_next("ListObjectsV2", S3ErrorCode::RequestTimeTooSkewed, 10)),
            "list",
            "RequestTimeTooSkewed",
            "clock",
        ),
    ];
    for (what, arm, name, code, fix) in cases {
        e.srv.control.clear_faults();
        arm();
        let keys = if what == "wrong access key" { Some(("AKIDNOTKNOWN", "nope")) } else { KEYS };
        let (ok, out) = check(&ep, &["s3://bkt/p"], keys);
        assert!(!ok, "{what}: the check passed:\n{out}");
        let line = step(&out, name);
        assert!(line.trim_start().starts_with("FAIL"), "{what}: {line}\n{out}");
        assert!(line.contains(code), "{what}: {code} not in {line}");
        assert!(line.contains(fix), "{what}: {fix:?} not in {line}");
        assert!(out.contains("would not work"), "{what}:\n{out}");
    }
    e.srv.control.clear_faults();
    // Writes refused, but a read-only volume only needs reads.
    e.srv.control.fail_next("PutObject", S3ErrorCode::AccessDenied, 10);
    let (ok, out) = check(&ep, &["s3://bkt/p", "--read-only"], KEYS);
    assert!(ok, "{out}");
    assert!(step(&out, "write").contains("skip"), "{out}");
}

#[test]
fn a_missing_bucket_missing_keys_and_unreachable_endpoints_are_named() {
    let e = env();
    let (ok, out) = check(&e.srv.endpoint(), &["s3://nosuch"], KEYS);
    assert!(!ok);
    let line = step(&out, "bucket");
    assert!(line.contains("NoSuchBucket") && line.contains("\"nosuch\" does not exist"), "{line}");
    assert!(step(&out, "list").contains("skip"), "{out}");

    let (ok, out) = check(&e.srv.endpoint(), &["s3://bkt"], None);
    assert!(!ok);
    assert!(step(&out, "bucket").contains("no credentials found"), "{out}");

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (ok, out) = check(&format!("http://127.0.0.1:{port}"), &["s3://bkt"], KEYS);
    assert!(!ok);
    let line = step(&out, "connect");
    assert!(line.contains("FAIL") && line.contains(&format!("port {port}")), "{line}");

    // https:// to a plain-HTTP store: the handshake fails and says so.
    let https = e.srv.endpoint().replace("http://", "https://");
    let (ok, out) = check(&https, &["s3://bkt"], KEYS);
    assert!(!ok);
    let line = step(&out, "tls");
    assert!(line.contains("FAIL") && line.contains("TLS handshake") && line.contains("http://"), "{line}");

    // A name that does not resolve; with virtual-host addressing the fix says why.
    let (ok, out) = check("http://no-such-host.invalid:9000", &["s3://bkt", "--addressing-style", "virtual"], KEYS);
    assert!(!ok);
    let line = step(&out, "dns");
    assert!(line.contains("bkt.no-such-host.invalid") && line.contains("--addressing-style path"), "{line}");
}

#[test]
fn a_csi_volume_is_checked_from_its_id_attributes_and_secret() {
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.json");
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    std::fs::write(
        &secret,
        format!(
            r#"{{"apiVersion":"v1","kind":"Secret","data":{{"accessKeyID":"{}","secretAccessKey":"{}"}}}}"#,
            b64(ACCESS_KEY),
            b64(SECRET_KEY)
        ),
    )
    .unwrap();
    let mut c = Command::new(BIN);
    c.args(["check", "--volume-id", "bkt/pvc-1", "--secret-file"])
        .arg(&secret)
        .arg("--attribute")
        .arg(format!("endpoint={}", e.srv.endpoint()))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let (ok, out) = outcome(c.output().unwrap());
    assert!(ok, "{out}");
    assert!(step(&out, "credentials").contains("secret.json"), "{out}");
    assert!(step(&out, "list").contains("s3://bkt/pvc-1/"), "{out}");

    // A bad attribute is an error naming it, before any request.
    let (ok, out) = outcome(
        Command::new(BIN)
            .args(["check", "--volume-id", "bkt/pvc-1", "--attribute", "readOnly=maybe"])
            .output()
            .unwrap(),
    );
    assert!(!ok);
    assert!(out.contains("readOnly"), "{out}");
}
