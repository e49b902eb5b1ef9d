//! Which blocks the cache holds, how many bytes they take and in what order they were
//! last used: the bound is kept here, before any byte reaches the disk.

use std::collections::{BTreeMap, HashMap};

use super::block_file::BlockName;

/// The blocks of one volume's cache, least recently used first.
#[derive(Default)]
pub(crate) struct Index {
    entries: HashMap<BlockName, Entry>,
    by_use: BTreeMap<u64, BlockName>,
    next_tick: u64,
    /// Bytes of every entry (on disk, or reserved for a write under way).
    total: u64,
}

#[derive(Clone, Copy)]
struct Entry {
    bytes: u64,
    tick: u64,
    /// Its file is complete (else a write is under way).
    written: bool,
}

impl Index {
    /// Bytes held or reserved.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Number of blocks held or reserved.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `name` is held; marks it as just used.
    pub(crate) fn touch(&mut self, name: &BlockName) -> bool {
        let tick = self.tick();
        let Some(e) = self.entries.get_mut(name) else { return false };
        self.by_use.remove(&e.tick);
        e.tick = tick;
        self.by_use.insert(tick, *name);
        true
    }

    /// Whether `name` is held or being written, without changing its place.
    pub(crate) fn contains(&self, name: &BlockName) -> bool {
        self.entries.contains_key(name)
    }

    /// Whether `name`'s file is complete and may be read.
    pub(crate) fn is_written(&self, name: &BlockName) -> bool {
        self.entries.get(name).is_some_and(|e| e.written)
    }

    /// `name`'s file is complete; false when it was evicted meanwhile.
    pub(crate) fn mark_written(&mut self, name: &BlockName) -> bool {
        self.entries.get_mut(name).map(|e| e.written = true).is_some()
    }

    /// Takes `bytes` for `name` within `limit`, evicting the least recently used blocks
    /// as needed; returns them (their files are the caller's to delete before writing).
    /// `None` when `bytes` alone exceeds the limit.
    pub(crate) fn reserve(&mut self, name: BlockName, bytes: u64, limit: u64) -> Option<Vec<BlockName>> {
        if bytes > limit {
            return None;
        }
        self.remove(&name);
        let mut evicted = Vec::new();
        while self.total + bytes > limit {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.total -= e.bytes;
            }
            evicted.push(oldest);
        }
        let tick = self.tick();
        self.entries.insert(name, Entry { bytes, tick, written: false });
        self.by_use.insert(tick, name);
        self.total += bytes;
        Some(evicted)
    }

    /// Evicts least recently used blocks until at least `bytes` are freed.
    pub(crate) fn evict(&mut self, bytes: u64) -> Vec<BlockName> {
        let mut freed = 0;
        let mut evicted = Vec::new();
        while freed < bytes {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some(e) = self.entries.remove(&oldest) {
                self.total -= e.bytes;
                freed += e.bytes;
            }
            evicted.push(oldest);
        }
        evicted
    }

    /// Forgets `name` (its file is gone or must not be used).
    pub(crate) fn remove(&mut self, name: &BlockName) {
        if let Some(e) = self.entries.remove(name) {
            self.by_use.remove(&e.tick);
            self.total -= e.bytes;
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> BlockName {
        [i; 32]
    }

    #[test]
    fn the_least_recently_used_block_goes_first_and_the_bound_holds() {
        let mut ix = Index::default();
        for i in 0..4 {
            assert!(ix.reserve(n(i), 10, 40).unwrap().is_empty());
        }
        assert!(ix.touch(&n(0)));
        // Block 1 is now the oldest.
        assert_eq!(ix.reserve(n(9), 15, 40).unwrap(), vec![n(1), n(2)]);
        assert_eq!(ix.total(), 35);
        assert!(ix.contains(&n(0)) && !ix.contains(&n(1)));
        assert!(ix.reserve(n(10), 41, 40).is_none(), "a block larger than the cache");
        assert_eq!(ix.evict(1), vec![n(3)]);
        ix.remove(&n(9));
        assert_eq!((ix.total(), ix.len()), (10, 1));
    }
}
