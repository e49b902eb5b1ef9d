//! The state journal (see `s3vol_fs::StateJournal`) in a file the node plugin keeps open
//! beside the FUSE descriptor: a memfd, so it lives in memory, outlives the server, and
//! needs no shared directory between the plugin and an unprivileged mount pod.
//!
//! Layout: a 16-byte header (`S3VJ`, a version, the offset where the live records start),
//! then records. Compaction appends a snapshot of the live state, moves the header's
//! offset to it, and punches a hole over the old records (their memory is freed; the file
//! only grows sparsely). A crash before the header moves leaves the old records followed
//! by (part of) the snapshot: replaying both gives the same state.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use s3vol_fs::{JournalRecord, StateJournal, COMPACT_MIN_BYTES};

const MAGIC: &[u8; 4] = b"S3VJ";
const VERSION: u32 = 1;
const HEADER: u64 = 16;

/// A journal appended to a file (a memfd).
pub struct FileJournal {
    file: Mutex<File>,
    /// Bytes appended since the last compaction, and the threshold for the next.
    since: AtomicU64,
    threshold: AtomicU64,
}

fn header(start: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..].copy_from_slice(&start.to_le_bytes());
    h
}

impl FileJournal {
    /// A new, empty journal in a memfd.
    pub fn create(volume: &str) -> std::io::Result<OwnedFd> {
        s3vol_mount::memfd(&format!("journal-{volume}"))
    }

    /// Opens a journal handed over with a connection: returns it with the live records a
    /// predecessor wrote (empty for a new journal). Call [`FileJournal::keep`] with the
    /// length of their valid prefix before appending.
    pub fn open(fd: OwnedFd) -> std::io::Result<(FileJournal, Vec<u8>)> {
        let mut file = File::from(fd);
        let mut h = [0u8; 16];
        let start = match file.read_exact_at(&mut h, 0) {
            Ok(()) if &h[..4] == MAGIC => u64::from_le_bytes(h[8..].try_into().expect("8 bytes")).max(HEADER),
            Ok(()) => return Err(std::io::Error::other("the state journal has no s3vol header")),
            Err(_) => {
                file.set_len(0)?;
                file.write_all_at(&header(HEADER), 0)?;
                HEADER
            }
        };
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let j = FileJournal {
            file: Mutex::new(file),
            since: AtomicU64::new(bytes.len() as u64),
            threshold: AtomicU64::new(COMPACT_MIN_BYTES),
        };
        Ok((j, bytes))
    }

    /// Cuts the live records to their first `len` bytes (the valid prefix: what follows
    /// was torn by a writer that died) and appends after them.
    pub fn keep(&self, len: u64) -> std::io::Result<()> {
        let mut f = self.file.lock();
        let mut h = [0u8; 16];
        f.read_exact_at(&mut h, 0)?;
        let start = u64::from_le_bytes(h[8..].try_into().expect("8 bytes"));
        f.set_len(start + len)?;
        f.seek(SeekFrom::Start(start + len))?;
        Ok(())
    }

    fn compact_locked(f: &mut File, snapshot: &[u8]) -> std::io::Result<()> {
        let start = f.seek(SeekFrom::End(0))?;
        f.write_all(snapshot)?;
        f.write_all_at(&header(start), 0)?;
        // SAFETY: fallocate on a descriptor we own, over a range inside the file; it only
        // frees the pages of records the header no longer points at.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                HEADER as libc::off_t,
                (start - HEADER) as libc::off_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "state journal: old records not freed");
        }
        Ok(())
    }
}

impl StateJournal for FileJournal {
    fn append(&self, rec: &JournalRecord) {
        let bytes = s3vol_fs::encode(rec);
        self.since.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.file.lock().write_all(&bytes) {
            // A successor will not know this id or handle: it answers ESTALE/EIO for it.
            tracing::error!(error = %e, "state journal append failed");
        }
    }

    fn wants_compaction(&self) -> bool {
        self.since.load(Ordering::Relaxed) > self.threshold.load(Ordering::Relaxed)
    }

    fn compact(&self, snapshot: &[JournalRecord]) {
        let bytes: Vec<u8> = snapshot.iter().flat_map(s3vol_fs::encode).collect();
        let mut f = self.file.lock();
        match Self::compact_locked(&mut f, &bytes) {
            Ok(()) => {
                self.threshold.store((2 * bytes.len() as u64).max(COMPACT_MIN_BYTES), Ordering::Relaxed);
                self.since.store(0, Ordering::Relaxed);
                tracing::debug!(records = snapshot.len(), bytes = bytes.len(), "state journal compacted");
            }
            Err(e) => tracing::error!(error = %e, "state journal compaction failed; the old records stay"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3vol_fs::{decode_all, FileKind, HandleKind};

    fn node(ino: u64) -> JournalRecord {
        JournalRecord::Node { ino, parent: 1, kind: FileKind::File, name: format!("f{ino}") }
    }

    #[test]
    fn compaction_keeps_the_live_state_and_frees_the_history() {
        let fd = FileJournal::create("t").unwrap();
        let keep = s3vol_mount::dup_fd(&fd).unwrap();
        let (j, old) = FileJournal::open(fd).unwrap();
        assert!(old.is_empty());
        for i in 2..20_000 {
            j.append(&node(i));
        }
        let blocks = |f: &OwnedFd| {
            use std::os::unix::fs::MetadataExt;
            File::from(s3vol_mount::dup_fd(f).unwrap()).metadata().unwrap().blocks() * 512
        };
        let before = blocks(&keep);
        assert!(j.wants_compaction() || before > 400_000, "{before}");
        let snapshot = vec![node(7), JournalRecord::Open { fh: 3, ino: 7, kind: HandleKind::Read }];
        j.compact(&snapshot);
        let after = blocks(&keep);
        assert!(after < before / 4, "memory of the old records not freed: {before} -> {after} bytes");
        j.append(&node(20_001));
        drop(j);
        let (_, live) = FileJournal::open(keep).unwrap();
        let (records, valid) = decode_all(&live);
        assert_eq!(valid, live.len());
        assert_eq!(records, vec![node(7), snapshot[1].clone(), node(20_001)]);
    }

    #[test]
    fn a_journal_without_the_header_is_refused() {
        let fd = FileJournal::create("t").unwrap();
        let mut f = File::from(s3vol_mount::dup_fd(&fd).unwrap());
        f.write_all(b"not a journal at all").unwrap();
        assert!(FileJournal::open(fd).is_err());
    }
}
