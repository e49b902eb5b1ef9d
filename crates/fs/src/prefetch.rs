//! [`AttrPrefetch`]: the attributes of listed files, fetched in the background while a
//! directory is read, so the `stat` that follows every name of an `ls -l` (or a `find`,
//! a `du`) finds them instead of waiting for one HEAD after another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use s3vol_store::{ObjectMeta, ObjectStore};
use tokio::sync::{watch, Semaphore};

/// HEADs in flight per mount for prefetching (s3fs-like; lookups of their own are not
/// counted against it).
pub const PREFETCH_CONCURRENCY: usize = 32;

/// Results kept at most, per mount: a directory larger than this is prefetched a window
/// at a time (as the kernel reads it), never all at once.
const MAX_SLOTS: usize = 4096;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const TAKEN: u8 = 2;

/// One name's fetch: queued, running, or done with the object's metadata (`None`: the
/// HEAD failed or found nothing; the lookup then asks the full question itself).
struct Slot {
    /// The directory handle whose listing queued it (closing it cancels what is queued).
    dir_fh: u64,
    state: AtomicU8,
    done: watch::Receiver<Option<Option<(ObjectMeta, Instant)>>>,
}

/// Background HEADs of a listing's files, bounded per mount.
pub struct AttrPrefetch {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    /// How long a fetched answer may serve a lookup (the mount's `stat_cache_ttl`).
    ttl: Duration,
    limit: Arc<Semaphore>,
    slots: Mutex<HashMap<(u64, String), Arc<Slot>>>,
}

impl AttrPrefetch {
    /// Prefetching for a mount whose attributes are cached for `ttl` (zero: never).
    pub fn new(store: Arc<dyn ObjectStore>, bucket: String, ttl: Duration) -> Self {
        AttrPrefetch {
            store,
            bucket,
            ttl,
            limit: Arc::new(Semaphore::new(PREFETCH_CONCURRENCY)),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Queues a HEAD of `key` for the name `name` in directory `dir`, listed through the
    /// handle `dir_fh`. Nothing happens without a runtime, with caching off, when the
    /// name is already queued, or when the mount holds too many results already.
    pub fn queue(&self, dir: u64, dir_fh: u64, name: &str, key: String) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (tx, rx) = watch::channel(None);
        let slot = Arc::new(Slot { dir_fh, state: AtomicU8::new(QUEUED), done: rx });
        {
            let mut slots = self.slots.lock();
            if slots.contains_key(&(dir, name.to_string())) {
                return;
            }
            if slots.len() >= MAX_SLOTS {
                let ttl = self.ttl;
                slots.retain(|_, s| {
                    s.done.borrow().as_ref().is_none_or(|r| r.as_ref().is_some_and(|(_, at)| at.elapsed() < ttl))
                });
                if slots.len() >= MAX_SLOTS {
                    return;
                }
            }
            slots.insert((dir, name.to_string()), slot.clone());
        }
        let (store, bucket, limit) = (self.store.clone(), self.bucket.clone(), self.limit.clone());
        rt.spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else { return };
            if slot.state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return; // taken by a lookup or cancelled before its turn
            }
            let meta = store.head_object(&bucket, &key).await.ok().map(|m| (m, Instant::now()));
            let _ = tx.send(Some(meta));
        });
    }

    /// What a prefetch found for `name` in `dir` and when, waiting for a HEAD in flight. `None`
    /// when nothing was fetched (not queued, not its turn yet, failed, gone, or older than
    /// the TTL): the caller asks the store itself. A result serves one lookup only.
    pub async fn take(&self, dir: u64, name: &str) -> Option<(ObjectMeta, Instant)> {
        let slot = self.slots.lock().remove(&(dir, name.to_string()))?;
        // Not started: the caller's own request is as fast and does not queue behind others.
        if slot.state.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return None;
        }
        let mut rx = slot.done.clone();
        let done = rx.wait_for(Option::is_some).await.ok()?.clone().flatten()?;
        (done.1.elapsed() < self.ttl).then_some(done)
    }

    /// This mount changed `name` in `dir` (created, removed, renamed): a fetch from
    /// before is no longer the truth.
    pub fn forget(&self, dir: u64, name: &str) {
        if let Some(slot) = self.slots.lock().remove(&(dir, name.to_string())) {
            let _ = slot.state.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The directory handle was closed: what its listing queued and has not started is
    /// not fetched (results already fetched stay for the lookups that follow).
    pub fn cancel(&self, dir_fh: u64) {
        self.slots.lock().retain(|_, s| {
            let queued = s.dir_fh == dir_fh
                && s.state.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok();
            !queued
        });
    }
}
