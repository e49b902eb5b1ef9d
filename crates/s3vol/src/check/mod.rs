//! `s3vol check`: every step a mount needs, in order, one line each: ok, or what failed
//! with the store's code and the fix. Half of what users ask about S3 mounts is "why does
//! it fail"; this answers it without a mount, a pod or a debug log.

mod advice;
mod net;
mod target;

use std::time::{Instant, SystemTime};

use anyhow::bail;
use bytes::Bytes;
use s3vol_store::{ErrorKind, ListRequest, ObjectStore, PutOptions, StoreError};

use crate::cli::CheckArgs;
use advice::{fix_for, Action};
use target::{Target, Where};

/// A clock further than this from the store's is refused by S3 signatures (SigV4).
const MAX_SKEW_S: f64 = 900.0;
/// A clock further than this is worth a warning.
const WARN_SKEW_S: f64 = 60.0;

/// How one step ended.
enum Outcome {
    Ok(String),
    /// Works, but something is worth knowing; does not fail the check.
    Warn(String),
    Fail {
        what: String,
        fix: String,
    },
    Skip(String),
}

/// Prints each step as it ends and remembers whether any failed.
#[derive(Default)]
struct Report {
    steps: usize,
    failed: usize,
}

impl Report {
    fn step(&mut self, name: &str, outcome: Outcome) -> bool {
        self.steps += 1;
        let ok = !matches!(outcome, Outcome::Fail { .. });
        match outcome {
            Outcome::Ok(d) => println!("  ok    {name:<12} {d}"),
            Outcome::Warn(d) => println!("  warn  {name:<12} {d}"),
            Outcome::Skip(d) => println!("  skip  {name:<12} {d}"),
            Outcome::Fail { what, fix } => {
                self.failed += 1;
                println!("  FAIL  {name:<12} {what}");
                println!("        {:<12} fix: {fix}", "");
            }
        }
        ok
    }

    fn store_failure(&mut self, name: &str, e: &StoreError, action: Action, t: &Target) {
        let fix = fix_for(e, action, &t.bucket, &t.prefix);
        self.step(name, Outcome::Fail { what: e.to_string(), fix });
    }
}

/// Runs `s3vol check`.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let target = Target::from_args(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("s3vol check {} on {}", target.label, target.describe());
    let mut report = Report::default();
    rt.block_on(run_steps(&target, &mut report));
    if report.failed > 0 {
        bail!("{} of {} steps failed: a mount of {} would not work", report.failed, report.steps, target.label);
    }
    println!("a mount of {} would work", target.label);
    Ok(())
}

async fn run_steps(t: &Target, report: &mut Report) {
    if let Where::S3 { endpoint, .. } = &t.place {
        if !network_steps(t, endpoint, report).await {
            for name in ["credentials", "bucket", "list", "write", "multipart", "copy"] {
                report.step(name, Outcome::Skip("the endpoint cannot be reached".into()));
            }
            return;
        }
        report.step("credentials", Outcome::Ok(t.credentials_source()));
    }
    let store = match t.connect().await {
        Ok(s) => s,
        Err(e) => {
            report.step("store", Outcome::Fail { what: format!("{e:#}"), fix: "see the message".into() });
            return;
        }
    };
    store_steps(t, store.as_ref(), report).await;
}

/// DNS, TCP, TLS and the clock. Returns whether the endpoint answers HTTP.
async fn network_steps(t: &Target, endpoint: &str, report: &mut Report) -> bool {
    let hp = match net::HostPort::parse(endpoint, t.virtual_host_bucket()) {
        Ok(hp) => hp,
        Err(e) => {
            return report
                .step("endpoint", Outcome::Fail { what: e, fix: "pass --endpoint https://HOST[:PORT]".into() })
        }
    };
    let addrs = match net::resolve(&hp).await {
        Ok(a) => {
            let shown: Vec<String> = a.iter().take(3).map(|s| s.ip().to_string()).collect();
            report.step("dns", Outcome::Ok(format!("{} resolves to {}", hp.host, shown.join(", "))));
            a
        }
        Err(e) => {
            let fix = if hp.host.contains("-internal") {
                "an -internal endpoint resolves only inside its cloud's region network: use the public endpoint from elsewhere".to_string()
            } else if t.virtual_host_bucket().is_some() {
                "virtual-host addressing needs DNS for BUCKET.HOST: use --addressing-style path (addressingStyle: path) or add the DNS record".to_string()
            } else {
                "check the endpoint's host name and this machine's DNS (/etc/resolv.conf)".to_string()
            };
            report.step("dns", Outcome::Fail { what: e, fix });
            return false;
        }
    };
    let started = Instant::now();
    let (tcp, addr) = match net::connect(&addrs).await {
        Ok(c) => c,
        Err(e) => {
            let fix =
                format!("check that a store listens on port {} and that no firewall or proxy is in the way", hp.port);
            report.step("connect", Outcome::Fail { what: format!("cannot connect: {e}"), fix });
            return false;
        }
    };
    report.step("connect", Outcome::Ok(format!("{addr} in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0)));
    let sent = SystemTime::now();
    let hello = if hp.tls {
        match net::handshake(tcp, &hp.host).await {
            Ok((mut tls, version)) => {
                report.step("tls", Outcome::Ok(format!("{version}, certificate valid for {}", hp.host)));
                net::hello(&mut tls, &hp.host).await
            }
            Err(e) => {
                let fix = "the certificate must be valid for the endpoint's host and signed by a CA this machine trusts (SSL_CERT_FILE, ca-certificates); a plain-HTTP store needs an http:// endpoint".into();
                report.step("tls", Outcome::Fail { what: e, fix });
                return false;
            }
        }
    } else {
        report.step("tls", Outcome::Skip("plain HTTP endpoint: nothing is encrypted".into()));
        let mut tcp = tcp;
        net::hello(&mut tcp, &hp.host).await
    };
    let received = SystemTime::now();
    match hello {
        Err(e) => {
            let fix = "the endpoint is not an S3 HTTP server: check the URL's scheme (http/https) and port".into();
            report.step("http", Outcome::Fail { what: e, fix });
            false
        }
        Ok(h) => {
            // Any status shows an HTTP server answers (an unsigned request is usually 403).
            let server = match h.server {
                Some(s) => format!(" (server {s}, HTTP {})", h.status),
                None => format!(" (HTTP {})", h.status),
            };
            match h.date {
                None => report.step("clock", Outcome::Skip(format!("no Date header in the answer{server}"))),
                Some(date) => {
                    let off = net::clock_offset(date, sent, received);
                    let side = if off > 0.0 { "behind" } else { "ahead of" };
                    let said = format!("this machine's clock is {:.0} s {side} the store's{server}", off.abs());
                    if off.abs() >= MAX_SKEW_S {
                        let fix = "signed requests are refused beyond 15 minutes: synchronize the clock (chrony, systemd-timesyncd)".into();
                        report.step("clock", Outcome::Fail { what: said, fix })
                    } else if off.abs() >= WARN_SKEW_S {
                        report.step("clock", Outcome::Warn(format!("{said}; requests fail beyond 15 minutes")))
                    } else {
                        report.step("clock", Outcome::Ok(format!("within {:.1} s of the store's{server}", off.abs())))
                    }
                }
            };
            true
        }
    }
}

/// HeadBucket, LIST, then (unless read-only) PUT/GET/DELETE, a multipart upload and a
/// copy of a probe object under the prefix, removed afterwards.
async fn store_steps(t: &Target, store: &dyn ObjectStore, report: &mut Report) {
    let b = t.bucket.as_str();
    if !t.bucket.is_empty() {
        match store.head_bucket(b).await {
            Ok(()) => {
                report.step("bucket", Outcome::Ok(format!("{b:?} exists and answers HeadBucket")));
            }
            Err(e) if e.kind == ErrorKind::AccessDenied && e.code.as_deref() == Some("AccessDenied") => {
                report.step("bucket", Outcome::Warn(format!("{e} (a policy for a prefix only: the listing decides)")));
            }
            Err(e) => {
                report.store_failure("bucket", &e, Action::Bucket, t);
                if matches!(e.kind, ErrorKind::NoSuchBucket | ErrorKind::Unavailable)
                    || matches!(
                        e.code.as_deref(),
                        Some("NoCredentials" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "RequestTimeTooSkewed")
                    )
                {
                    for name in ["list", "write", "multipart", "copy"] {
                        report.step(name, Outcome::Skip("after the bucket step failed".into()));
                    }
                    return;
                }
            }
        }
    }
    let req = ListRequest { prefix: t.prefix.clone(), max_keys: Some(1), ..Default::default() };
    match store.list(b, &req).await {
        Ok(page) => {
            let n = page.objects.len() + page.common_prefixes.len();
            let what = if n == 0 { "empty".to_string() } else { "not empty".to_string() };
            report.step("list", Outcome::Ok(format!("{} lists ({what})", t.shown_prefix())));
        }
        Err(e) => report.store_failure("list", &e, Action::List, t),
    }
    if t.read_only {
        for name in ["write", "multipart", "copy"] {
            report.step(name, Outcome::Skip("read-only check".into()));
        }
        return;
    }
    let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let probe = format!("{}.s3vol-check-{}-{stamp}", t.prefix, std::process::id());
    let body = Bytes::from(format!("s3vol check {stamp}\n"));
    let opts = PutOptions::default();
    let wrote = match write_probe(store, b, &probe, body.clone(), &opts).await {
        Ok(()) => {
            report.step("write", Outcome::Ok(format!("PUT, GET ({} bytes back intact) of {probe}", body.len())));
            true
        }
        Err((e, what)) => {
            report.step(
                "write",
                Outcome::Fail { what: format!("{what}: {e}"), fix: fix_for(&e, Action::Write, b, &t.prefix) },
            );
            false
        }
    };
    let part = format!("{probe}.multipart");
    match multipart_probe(store, b, &part, body.clone(), &opts).await {
        Ok(()) => report.step("multipart", Outcome::Ok("an upload in parts completed".into())),
        Err(e) => report.step(
            "multipart",
            Outcome::Fail { what: e.to_string(), fix: fix_for(&e, Action::Multipart, b, &t.prefix) },
        ),
    };
    let copy = format!("{probe}.copy");
    if wrote {
        match store.copy_object(b, &probe, &copy, None).await {
            Ok(()) => report.step("copy", Outcome::Ok("CopyObject (rename, chmod, chown) works".into())),
            Err(e) => {
                report.step("copy", Outcome::Fail { what: e.to_string(), fix: fix_for(&e, Action::Copy, b, &t.prefix) })
            }
        };
    } else {
        report.step("copy", Outcome::Skip("no probe object to copy".into()));
    }
    for key in [&probe, &part, &copy] {
        let _ = store.delete_object(b, key).await;
    }
}

async fn write_probe(
    store: &dyn ObjectStore,
    b: &str,
    key: &str,
    body: Bytes,
    opts: &PutOptions,
) -> Result<(), (StoreError, &'static str)> {
    store.put_object(b, key, body.clone(), opts).await.map_err(|e| (e, "PUT"))?;
    let got = store.get_object(b, key, None).await.map_err(|e| (e, "GET"))?;
    let back = s3vol_store::collect_body(got.body).await.map_err(|e| (e, "GET"))?;
    if back != body {
        let e = StoreError::new(
            ErrorKind::Other,
            format!("{} bytes written, {} different bytes read back", body.len(), back.len()),
        );
        return Err((e, "GET"));
    }
    Ok(())
}

async fn multipart_probe(
    store: &dyn ObjectStore,
    b: &str,
    key: &str,
    body: Bytes,
    opts: &PutOptions,
) -> Result<(), StoreError> {
    let id = store.create_multipart(b, key, opts).await?;
    let done = async {
        let part = store.upload_part(b, key, &id, 1, body.clone()).await?;
        store.complete_multipart(b, key, &id, vec![part]).await?;
        let size = store.head_object(b, key).await?.size;
        if size != body.len() as u64 {
            return Err(StoreError::new(
                ErrorKind::Other,
                format!("completed upload has {size} bytes, {} were sent", body.len()),
            ));
        }
        Ok(())
    }
    .await;
    if done.is_err() {
        let _ = store.abort_multipart(b, key, &id).await;
    }
    done
}
