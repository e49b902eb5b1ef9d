//! Staging files under `cache_dir`: the local copy of a file that is written out of
//! order. Every disk call runs on tokio's blocking pool, so a slow or full disk stalls
//! only the file being staged, never the async workers that serve every other file of
//! the mount (nor the FUSE session, which only hands requests to those workers). A staging
//! file is unlinked as soon as it is created: only its descriptor keeps it, so nothing is
//! left in `cache_dir` when it is done with, nor when the server is killed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Errno, FsResult};

/// One staging file, already unlinked: its space goes back when the last descriptor
/// (this one, or an upload's reader) is closed.
pub(crate) struct StagingFile {
    file: Arc<File>,
}

impl StagingFile {
    /// Creates a new, empty staging file in `dir` (created if missing).
    pub(crate) async fn create(dir: &Path) -> FsResult<Self> {
        let path = dir.join(format!("stage-{}-{}", std::process::id(), next_stage_id()));
        let (d, p) = (dir.to_path_buf(), path.clone());
        let file = blocking(move || {
            std::fs::create_dir_all(&d)?;
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&p)?;
            std::fs::remove_file(&p)?;
            Ok(f)
        })
        .await
        .map_err(|e| {
            tracing::warn!(path = %path.display(), "cannot create a staging file in cache_dir");
            staging_errno("create", e)
        })?;
        Ok(Self { file: Arc::new(file) })
    }

    /// Writes `data` at `off`.
    pub(crate) async fn write_at(&self, data: Bytes, off: u64) -> FsResult<()> {
        let file = self.file.clone();
        blocking(move || file.write_all_at(&data, off)).await.map_err(|e| staging_errno("write", e))
    }

    /// Reads exactly `len` bytes at `off`.
    pub(crate) async fn read_at(&self, off: u64, len: u64) -> FsResult<Bytes> {
        read_at(&self.file, off, len).await
    }

    /// Truncates or extends the file.
    pub(crate) async fn set_len(&self, size: u64) -> FsResult<()> {
        let file = self.file.clone();
        blocking(move || file.set_len(size)).await.map_err(|e| staging_errno("truncate", e))
    }

    /// A reader that stays valid while an upload runs, even if the writer moves on.
    pub(crate) fn reader(&self) -> StagingReader {
        StagingReader(self.file.clone())
    }
}

/// Read access to a staging file for its upload.
#[derive(Clone)]
pub(crate) struct StagingReader(Arc<File>);

impl StagingReader {
    /// Reads exactly `len` bytes at `off`.
    pub(crate) async fn read_at(&self, off: u64, len: u64) -> FsResult<Bytes> {
        read_at(&self.0, off, len).await
    }
}

async fn read_at(file: &Arc<File>, off: u64, len: u64) -> FsResult<Bytes> {
    let file = file.clone();
    blocking(move || {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, off)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(|e| staging_errno("read", e))
}

/// Runs one disk call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(move || {
        #[cfg(test)]
        tests::slow_disk();
        f()
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(format!("staging I/O task ended: {e}"))))
}

/// A failure of the local staging file (`cache_dir`), logged with its cause; a full or
/// over-quota disk is ENOSPC to the application, anything else EIO.
fn staging_errno(what: &str, e: io::Error) -> Errno {
    tracing::warn!(error = %e, "staging file (cache_dir): {what} failed");
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}

fn next_stage_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// Milliseconds every disk call takes in these tests (a slow disk).
    static DISK_DELAY_MS: AtomicU64 = AtomicU64::new(0);

    pub(super) fn slow_disk() {
        let ms = DISK_DELAY_MS.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    /// With one async worker and a disk that takes 300 ms per call, another task keeps
    /// running while a staging file is created, written, read and truncated: the disk
    /// calls are not made on the worker. (Made inline, the ticker would stall for the
    /// whole 1.2 s.) Nothing of the file is ever visible in the directory.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_disk_does_not_stall_the_async_worker() {
        let dir = tempfile::tempdir().unwrap();
        DISK_DELAY_MS.store(300, Ordering::Relaxed);
        let ticker = tokio::spawn(async {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            for _ in 0..120 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        });
        tokio::time::sleep(Duration::from_millis(20)).await; // the ticker is running
        let f = StagingFile::create(dir.path()).await.unwrap();
        f.write_at(Bytes::from_static(b"hello world"), 0).await.unwrap();
        assert_eq!(&f.read_at(6, 5).await.unwrap()[..], b"world");
        f.set_len(5).await.unwrap();
        DISK_DELAY_MS.store(0, Ordering::Relaxed);
        assert_eq!(&f.reader().read_at(0, 5).await.unwrap()[..], b"hello");
        let longest = ticker.await.unwrap();
        assert!(longest < Duration::from_millis(200), "the worker stalled for {longest:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the staging file has no name in cache_dir");
    }
}
