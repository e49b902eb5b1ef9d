//! Directory checks still running for names a lookup already answered as files.
//!
//! A cold lookup asks the store two things at once: a HEAD of `name` and a one-key LIST of
//! `name/`. When the HEAD finds an object, the lookup answers with the file at once
//! instead of waiting for the LIST (on many stores a LIST costs several HEADs). The LIST
//! finishes in the background: a name that is also a prefix (`a` and `a/x`, which S3
//! allows) is then marked here, and its next lookup answers with the directory, which
//! shadows the file as it does in listings. Until the check is done the kernel is told
//! not to cache the name, so it asks again and sees the correction.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Where a name's background directory check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirCheck {
    /// The LIST has not answered yet: the file answer is provisional.
    Pending,
    /// The LIST found keys under `name/`: the name is a directory.
    IsDir,
}

/// The checks in flight and the corrections not yet picked up, per (directory, name).
#[derive(Default, Clone)]
pub struct DirChecks {
    inner: Arc<Mutex<HashMap<(u64, String), DirCheck>>>,
}

impl DirChecks {
    /// Where the check of `name` in `dir` stands; `None`: nothing pending or to correct.
    pub fn state(&self, dir: u64, name: &str) -> Option<DirCheck> {
        let inner = self.inner.lock();
        // Every lookup asks: no key to build while nothing is pending (the usual case).
        if inner.is_empty() {
            return None;
        }
        inner.get(&(dir, name.to_string())).copied()
    }

    /// A lookup answered `name` as a file before its directory check finished.
    pub fn start(&self, dir: u64, name: &str) {
        self.inner.lock().insert((dir, name.to_string()), DirCheck::Pending);
    }

    /// The check finished: `is_dir` says whether keys were found under `name/`. A check
    /// whose entry was cleared meanwhile (this mount changed the name) records nothing.
    pub fn finish(&self, dir: u64, name: &str, is_dir: bool) {
        let mut inner = self.inner.lock();
        let key = (dir, name.to_string());
        if inner.get(&key) == Some(&DirCheck::Pending) {
            if is_dir {
                inner.insert(key, DirCheck::IsDir);
            } else {
                inner.remove(&key);
            }
        }
    }

    /// Forgets `name`: this mount changed it, or a lookup answered with the full result.
    pub fn clear(&self, dir: u64, name: &str) {
        let mut inner = self.inner.lock();
        if !inner.is_empty() {
            inner.remove(&(dir, name.to_string()));
        }
    }

    /// Names pending or awaiting correction (for tests and metrics).
    pub fn count(&self) -> usize {
        self.inner.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_check_is_dropped_or_marks_the_directory() {
        let c = DirChecks::default();
        c.start(1, "a");
        c.start(1, "b");
        assert_eq!(c.state(1, "a"), Some(DirCheck::Pending));
        c.finish(1, "a", false);
        c.finish(1, "b", true);
        assert_eq!(c.state(1, "a"), None);
        assert_eq!(c.state(1, "b"), Some(DirCheck::IsDir));
        c.clear(1, "b");
        assert_eq!(c.count(), 0);
    }

    #[test]
    fn a_check_cleared_by_a_change_of_this_mount_records_nothing() {
        let c = DirChecks::default();
        c.start(1, "a");
        c.clear(1, "a");
        c.finish(1, "a", true);
        assert_eq!(c.state(1, "a"), None);
    }
}
