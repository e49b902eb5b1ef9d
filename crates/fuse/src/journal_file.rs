//! The state journal (see `s3vol_fs::StateJournal`) in a file the node plugin keeps open
//! beside the FUSE descriptor: a memfd, so it lives in memory, outlives the server, and
//! needs no shared directory between the plugin and an unprivileged mount pod.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;

use parking_lot::Mutex;
use s3vol_fs::{JournalRecord, StateJournal};

/// A journal appended to a file (a memfd).
pub struct FileJournal {
    file: Mutex<File>,
}

impl FileJournal {
    /// A new, empty journal in a memfd.
    pub fn create(volume: &str) -> std::io::Result<OwnedFd> {
        s3vol_mount::memfd(&format!("journal-{volume}"))
    }

    /// Opens a journal handed over with a connection: returns it with everything a
    /// predecessor wrote, its torn tail (if any) cut off by `keep` once decoded.
    pub fn open(fd: OwnedFd) -> std::io::Result<(FileJournal, Vec<u8>)> {
        let mut file = File::from(fd);
        file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok((FileJournal { file: Mutex::new(file) }, bytes))
    }

    /// Cuts the journal to its first `len` bytes (the valid prefix) and appends after it.
    pub fn keep(&self, len: u64) -> std::io::Result<()> {
        let mut f = self.file.lock();
        f.set_len(len)?;
        f.seek(SeekFrom::Start(len))?;
        Ok(())
    }
}

impl StateJournal for FileJournal {
    fn append(&self, rec: &JournalRecord) {
        let bytes = s3vol_fs::encode(rec);
        if let Err(e) = self.file.lock().write_all(&bytes) {
            // A successor will not know this id or handle: it answers ESTALE/EIO for it.
            tracing::error!(error = %e, "state journal append failed");
        }
    }
}
