//! One record per open inode: which handles are open on it and how many of them write.
//! unlink, rename and setattr look a file's handles up here, so they act on that file's
//! pending content alone (and wait on no other file's handle).

use std::collections::HashMap;

use parking_lot::Mutex;

/// The handles open on one inode.
#[derive(Debug, Default)]
struct OpenFile {
    handles: Vec<u64>,
    writers: usize,
}

/// Every open inode of a mount.
#[derive(Debug, Default)]
pub(crate) struct OpenFiles {
    map: Mutex<HashMap<u64, OpenFile>>,
}

impl OpenFiles {
    /// Records handle `fh` opened on `ino`.
    pub(crate) fn opened(&self, ino: u64, fh: u64, writes: bool) {
        let mut m = self.map.lock();
        let f = m.entry(ino).or_default();
        f.handles.push(fh);
        f.writers += usize::from(writes);
    }

    /// Forgets handle `fh` of `ino`; the record goes with the last handle.
    pub(crate) fn closed(&self, ino: u64, fh: u64, writes: bool) {
        let mut m = self.map.lock();
        if let Some(f) = m.get_mut(&ino) {
            f.handles.retain(|h| *h != fh);
            if writes {
                f.writers = f.writers.saturating_sub(1);
            }
            if f.handles.is_empty() {
                m.remove(&ino);
            }
        }
    }

    /// A handle of `ino` counted as a reader now writes (a restored writer, rebuilt).
    pub(crate) fn promote(&self, ino: u64) {
        if let Some(f) = self.map.lock().get_mut(&ino) {
            f.writers += 1;
        }
    }

    /// The inode handle `fh` is open on, and whether it writes (a slow scan: for the
    /// rare handle that is busy while the journal is compacted).
    pub(crate) fn ino_of(&self, fh: u64) -> Option<(u64, bool)> {
        self.map.lock().iter().find(|(_, f)| f.handles.contains(&fh)).map(|(ino, f)| (*ino, f.writers > 0))
    }

    /// The handles open on `ino`, oldest first.
    pub(crate) fn handles_of(&self, ino: u64) -> Vec<u64> {
        self.map.lock().get(&ino).map(|f| f.handles.clone()).unwrap_or_default()
    }

    /// Whether `ino` is open for writing: its size and attributes are this mount's own.
    pub(crate) fn has_writer(&self, ino: u64) -> bool {
        self.map.lock().get(&ino).is_some_and(|f| f.writers > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_their_handles() {
        let o = OpenFiles::default();
        o.opened(5, 1, true);
        o.opened(5, 2, false);
        o.opened(6, 3, false);
        assert_eq!(o.handles_of(5), vec![1, 2]);
        assert!(o.has_writer(5) && !o.has_writer(6));
        o.closed(5, 1, true);
        assert!(!o.has_writer(5));
        assert_eq!(o.handles_of(5), vec![2]);
        o.closed(5, 2, false);
        assert!(o.handles_of(5).is_empty());
        assert!(o.map.lock().get(&5).is_none(), "the record goes with the last handle");
    }
}
