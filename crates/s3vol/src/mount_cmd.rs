//! `s3vol mount`: check the store, mount(2) the FUSE device, serve until unmounted.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use anyhow::{bail, Context};
use s3vol_fs::{Fs, FsConfig, MountOptions};
use s3vol_store::{
    CountingStore, CredentialSource, ErrorKind, ListRequest, Location, ObjectStore, StaticCredentials, StoreKind,
};

use crate::cli::MountArgs;
use s3vol_server::{open_store, StoreTarget};

/// Environment variable naming the pipe a background child reports readiness on.
const READY_FD_ENV: &str = "S3VOL_READY_FD";

/// Runs `s3vol mount`.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let opts = MountOptions::parse(&args.options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let loc = Location::parse(&args.source).map_err(|e| anyhow::anyhow!("{e}"))?;
    check_mountpoint(&args.mountpoint)?;
    if !args.foreground {
        return spawn_background(&args);
    }
    let ready = ready_pipe();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("s3vol-fs").build()?;
    let result = rt.block_on(prepare(&args, &loc, &opts));
    let store = match result {
        Ok(s) => s,
        Err(e) => {
            report(ready, &format!("{e:#}"));
            return Err(e);
        }
    };
    if let Some(addr) = args.metrics_addr {
        let _guard = rt.enter();
        if let Err(e) = crate::metrics::serve(addr) {
            report(ready, &format!("{e:#}"));
            return Err(e);
        }
    }
    let fs_store = store.describe();
    let counting = Arc::new(CountingStore::new(store, args.source.clone()));
    let counts = counting.counts();
    let store: Arc<dyn ObjectStore> = counting;
    let fsname = match &loc.kind {
        StoreKind::File(p) => format!("s3vol:{}", p.display()),
        StoreKind::S3 => format!("s3vol:{}/{}", loc.bucket, loc.prefix),
    };
    let (allow_other, read_only) = (opts.allow_other, opts.read_only);
    let read_cache = match opts.read_cache(&args.source).map(s3vol_fs::ReadCache::open).transpose() {
        Ok(c) => c,
        Err(e) => {
            report(ready, &e.to_string());
            bail!("{e}");
        }
    };
    let fs = Fs::new(
        store,
        FsConfig {
            bucket: loc.bucket.clone(),
            prefix: loc.prefix.clone(),
            options: opts,
            capacity: args.capacity,
            hard_quota: args.hard_quota,
        },
    );
    let fs = Arc::new(match read_cache {
        Some(c) => fs.with_read_cache(c),
        None => fs,
    });
    if args.hard_quota {
        // A hard quota needs the bytes already stored; without them nothing is enforced.
        match rt.block_on(fs.measure_usage()) {
            Ok(used) => tracing::info!(used, capacity = ?args.capacity, "hard quota: usage measured"),
            Err(e) => {
                let msg = format!("measuring the usage of {} for --hard-quota failed (errno {})", args.source, e.0);
                report(ready, &msg);
                bail!("{msg}");
            }
        }
    }
    let fd = match s3vol_fuse::mount_fuse(&args.mountpoint, &fsname, allow_other, read_only) {
        Ok(fd) => fd,
        Err(e) => {
            report(ready, &e.to_string());
            bail!("{e}");
        }
    };
    tracing::info!(source = %args.source, mountpoint = %args.mountpoint.display(), store = %fs_store, "mounted");
    report(ready, "");
    let mp = args.mountpoint.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!(mountpoint = %mp.display(), "signal received: unmounting");
        if let Err(e) = s3vol_fuse::unmount(&mp) {
            tracing::error!(error = %e, "unmount failed");
        }
    });
    let served = s3vol_fuse::serve_fd(fs, fd, rt.handle().clone(), Default::default());
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    served.context("FUSE session failed")?;
    let peak_rss_kib =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|u| u.max_rss()).unwrap_or(0);
    tracing::info!(requests = ?counts.snapshot(), total = counts.total(), peak_rss_kib, "unmounted; store requests made by this mount");
    Ok(())
}

/// Builds the store and checks, before mounting, that the bucket and prefix can be
/// reached with these credentials, so failures are one clear line, not a dead mount.
async fn prepare(args: &MountArgs, loc: &Location, opts: &MountOptions) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let file_url;
    let endpoint = match &loc.kind {
        StoreKind::File(dir) => {
            file_url = format!("file://{}", dir.display());
            Some(file_url.as_str())
        }
        StoreKind::S3 => args.endpoint.as_deref(),
    };
    // Keys in the environment are what the default chain would find first; using them
    // directly skips building the chain (most of the mount time).
    let credentials = match keys_from_env() {
        Some(keys) => CredentialSource::fixed(keys),
        None => CredentialSource::DefaultChain,
    };
    let target = StoreTarget { endpoint, region: &args.region, addressing: &args.addressing_style, credentials };
    let store = open_store(target, opts).await?;
    // A whole-bucket mount is checked with the cheap HeadBucket; only when that fails (or
    // for a prefix) a one-key LIST runs, whose error body carries the store's code. An
    // endpoint HeadBucket could not reach is reported at once: the LIST would only wait
    // through its own retries again (both together took up to 30 s).
    if loc.prefix.is_empty() {
        match store.head_bucket(&loc.bucket).await {
            Ok(()) => return Ok(store),
            Err(e) if e.kind == ErrorKind::Unavailable => {
                bail!("endpoint {} is unreachable: {e}", store.describe())
            }
            Err(_) => {}
        }
    }
    let probe = ListRequest { prefix: loc.prefix.clone(), max_keys: Some(1), ..Default::default() };
    if let Err(e) = store.list(&loc.bucket, &probe).await {
        let what = match e.kind {
            ErrorKind::NoSuchBucket => format!("bucket {:?} does not exist on {}", loc.bucket, store.describe()),
            ErrorKind::AccessDenied => format!("access denied to bucket {:?} on {}: {e}", loc.bucket, store.describe()),
            ErrorKind::Unavailable => format!("endpoint {} is unreachable: {e}", store.describe()),
            _ => format!("cannot list {}: {e}", args.source),
        };
        bail!("{what}");
    }
    Ok(store)
}

/// Keys in `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), as
/// `s3vol mount` and `s3vol check` take them before the default chain.
pub(crate) fn keys_from_env() -> Option<StaticCredentials> {
    match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
        (Ok(ak), Ok(sk)) if !ak.is_empty() && !sk.is_empty() => Some(StaticCredentials {
            access_key_id: ak,
            secret_access_key: sk,
            session_token: std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty()),
        }),
        _ => None,
    }
}

/// Checks the mount point before anything else: it exists, is a directory, and does not
/// already hold an s3vol mount (mount(2) would silently stack a second one).
fn check_mountpoint(mp: &std::path::Path) -> anyhow::Result<()> {
    let shown = mp.display();
    let meta = match std::fs::metadata(mp) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {shown} does not exist (create it: mkdir -p {shown})")
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            bail!("mount point {shown} is a dead FUSE mount (transport endpoint is not connected); clear it with umount -l {shown}")
        }
        Err(e) => bail!("mount point {shown}: {e}"),
    };
    if !meta.is_dir() {
        bail!("mount point {shown} is not a directory");
    }
    let full = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
    if let Some(m) = s3vol_mount::mounted_at(&full) {
        if m.fstype == "fuse.s3vol" {
            bail!("{shown} is already an s3vol mount of {}; unmount it first (umount {shown})", m.source);
        }
    }
    Ok(())
}

/// Starts `s3vol mount --foreground` detached and waits until it says the mount is ready
/// (exit 0) or why it failed (its message, exit 1).
fn spawn_background(args: &MountArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let (read_end, write_end) = nix::unistd::pipe().context("pipe")?;
    let exe = std::env::current_exe().context("locating the s3vol binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount").arg(&args.source).arg(&args.mountpoint).arg("--foreground");
    if let Some(e) = &args.endpoint {
        cmd.arg("--endpoint").arg(e);
    }
    cmd.arg("--region").arg(&args.region).arg("--addressing-style").arg(&args.addressing_style);
    for o in &args.options {
        cmd.arg("-o").arg(o);
    }
    if let Some(c) = args.capacity {
        cmd.arg("--capacity").arg(c.to_string());
    }
    if args.hard_quota {
        cmd.arg("--hard-quota");
    }
    if let Some(m) = args.metrics_addr {
        cmd.arg("--metrics-addr").arg(m.to_string());
    }
    let log: std::process::Stdio = match &args.log_file {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("--log-file {}", p.display()))?
            .into(),
        None => std::process::Stdio::null(),
    };
    cmd.env(READY_FD_ENV, write_end.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().context("starting the background mount process")?;
    drop(write_end);
    let mut msg = String::new();
    std::fs::File::from(read_end).read_to_string(&mut msg).ok();
    match msg.strip_prefix("ready") {
        Some(_) => Ok(()),
        None => {
            let _ = child.wait();
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg).trim().to_string();
            if msg.is_empty() {
                bail!("the mount process exited before the mount was ready (see --log-file)");
            }
            bail!("{msg}")
        }
    }
}

/// The readiness pipe inherited from a background parent, if any.
fn ready_pipe() -> Option<OwnedFd> {
    let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    // Called before any other thread exists, so changing the environment is safe.
    std::env::remove_var(READY_FD_ENV);
    // SAFETY: the parent passed this descriptor number for us alone and nothing else in
    // this process owns it; it is wrapped exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Tells a waiting parent the outcome: empty = ready, else the error line.
fn report(pipe: Option<OwnedFd>, error: &str) {
    if let Some(fd) = pipe {
        let mut f = std::fs::File::from(fd);
        let _ = if error.is_empty() {
            f.write_all(b"ready\n")
        } else {
            f.write_all(format!("error: {error}\n").as_bytes())
        };
    }
}
