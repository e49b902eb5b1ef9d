//! Starting the session of one volume: the store client, the state journal, the
//! filesystem, and the thread that serves the FUSE connection (fresh, or resumed from a
//! predecessor's journal).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use s3vol_fs::{Fs, FsConfig, MountOptions};
use s3vol_fuse::{FileJournal, Resend};
use s3vol_handoff::ServeConfig;
use s3vol_store::{CountingStore, CredentialSource, ObjectStore};

use crate::control::State;
use crate::open_store::{open_store, StoreTarget};
use crate::ServerError;

/// Serves `config` on `fuse`, journaling into `journal` (a fresh memfd when none is
/// given). With `resume`, the connection was served before: the predecessor's journal is
/// replayed and the kernel asked to resend what it left unanswered. Returns what became
/// of those requests (`None` for a fresh connection).
pub(crate) fn start(
    rt: &tokio::runtime::Runtime,
    state: &Arc<Mutex<State>>,
    config: ServeConfig,
    fuse: OwnedFd,
    journal: Option<OwnedFd>,
    resume: bool,
) -> Result<Option<String>, ServerError> {
    let options = MountOptions::parse(&config.options).map_err(|e| ServerError::Options(e.to_string()))?;
    let source = config.credentials.clone().map(|c| CredentialSource::fixed(c.into()));
    let target = StoreTarget {
        endpoint: config.endpoint.as_deref(),
        region: &config.region,
        addressing: &config.addressing,
        credentials: source.clone().unwrap_or(CredentialSource::DefaultChain),
    };
    let store = rt.block_on(open_store(target, &options))?;
    let counting = Arc::new(CountingStore::new(store, config.volume_id.clone()));
    let counts = counting.counts();
    let store: Arc<dyn ObjectStore> = counting;
    let journal_fd = match journal {
        Some(j) => j,
        None => FileJournal::create(&config.volume_id).map_err(ServerError::io("creating the state journal"))?,
    };
    let (journal, history) =
        FileJournal::open(s3vol_fuse::dup_fd(&journal_fd).map_err(ServerError::io("duplicating the journal"))?)
            .map_err(ServerError::io("reading the state journal"))?;
    let valid = if resume { s3vol_fs::decode_all(&history).1 } else { 0 };
    journal.keep(valid as u64).map_err(ServerError::io("trimming the state journal"))?;
    let cache = read_cache(&options, &config.volume_id, state);
    let fs = Fs::new(
        store,
        FsConfig {
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            options,
            capacity: config.capacity,
            hard_quota: config.hard_quota,
        },
    )
    .journaled(Arc::new(journal));
    let fs = match cache {
        Some(cfg) => fs.with_read_cache(s3vol_fs::ReadCache::open(cfg)?),
        None => fs,
    };
    if resume {
        let r = fs.restore(&history[..valid]);
        tracing::info!(
            nodes = r.nodes,
            handles = r.handles,
            lost_writers = r.lost_writers,
            torn = r.torn,
            "took over the state of the previous server"
        );
    }
    let fs = Arc::new(fs);
    if resume {
        let aborted = rt.block_on(fs.abort_abandoned_uploads());
        if aborted > 0 {
            tracing::info!(aborted, "aborted the multipart uploads of writers lost with the previous server");
        }
    }
    if config.hard_quota {
        let used = rt.block_on(fs.measure_usage()).map_err(|e| ServerError::Quota(e.0))?;
        tracing::info!(used, capacity = ?config.capacity, "hard quota: usage measured");
    }
    let kept = (s3vol_fuse::dup_fd(&fuse).map_err(ServerError::io("duplicating the connection"))?, journal_fd);
    let drain_control = state.lock().drain.clone();
    let handle = rt.handle().clone();
    let (session, resend) = if resume {
        let (thread, resend) = s3vol_fuse::serve_fd_resumed(fs.clone(), fuse, handle, drain_control.clone())?;
        if resend == Resend::Unsupported {
            // The requests the predecessor read stay unanswered: the plugin must abort
            // the connection and mount again. This server is of no use then.
            tracing::warn!("this kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9+); the node plugin falls back to a remount");
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                std::process::exit(3);
            });
            return Ok(Some("unsupported".into()));
        }
        tracing::info!(volume_id = %config.volume_id, "serving the live connection (requests left unanswered were resent)");
        (thread, Some("resent".to_string()))
    } else {
        let fs2 = fs.clone();
        let thread = std::thread::Builder::new()
            .name("fuse-session".into())
            .spawn(move || s3vol_fuse::serve_fd(fs2, fuse, handle, drain_control))
            .map_err(ServerError::io("starting the session thread"))?;
        tracing::info!(volume_id = %config.volume_id, bucket = %config.bucket, prefix = %config.prefix, "serving");
        (thread, None)
    };
    {
        let mut st = state.lock();
        st.credentials = source;
        st.wire_credentials = config.credentials.clone();
        st.serving = true;
        st.fds = Some(kept);
        st.fs = Some(fs.clone());
    }
    let state = state.clone();
    std::thread::Builder::new().name("fuse-waiter".into()).spawn(move || {
        let res = session.join().unwrap_or_else(|_| Err(std::io::Error::other("session thread panicked")));
        state.lock().fs = None;
        // Let uploads of the last released files finish before exiting.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&fs) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        match res {
            Ok(()) => tracing::info!(requests = ?counts.snapshot(), total = counts.total(), "session ended (unmounted); exiting"),
            Err(e) => tracing::error!(error = %e, "session failed; exiting"),
        }
        std::process::exit(0);
    })
    .map_err(ServerError::io("starting the session waiter"))?;
    Ok(resend)
}

/// The volume's read cache, when its options turn one on: in the volume's directory
/// beside the control socket (the node plugin never lets a volume name the directory).
fn read_cache(options: &MountOptions, volume_id: &str, state: &Mutex<State>) -> Option<s3vol_fs::ReadCacheConfig> {
    let mut cfg = options.read_cache(volume_id)?;
    if options.read_cache_dir.is_none() {
        if let Some(dir) = &state.lock().volume_dir {
            cfg.dir = dir.join("read-cache");
        }
    }
    Some(cfg)
}
