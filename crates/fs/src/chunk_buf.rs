//! Buffers for the read path's prefetched chunks. A chunk (8 MiB) is past malloc's mmap
//! threshold, so each one was mapped, faulted in page by page, zeroed and unmapped again:
//! about a fifth of the mount's CPU on a sequential read. Chunk buffers are mapped here
//! instead, and a few are kept for the next chunks while a few files are being read (at
//! most four readers, at least half the memory budget free). With many readers nothing
//! is kept: a reused buffer is resident whole from the start, a new one only as it fills,
//! and the mount's peak RSS rose (bench/memory.sh, 64 readers: 547-563 vs 459-493 MiB).
//! Nothing is kept once no file is open for reading, so an idle mount holds none.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memmap2::MmapMut;
use parking_lot::Mutex;

use crate::budget::{MemoryBudget, Reservation};

/// Size of a pooled buffer: one prefetch chunk.
pub(crate) const POOLED: usize = 8 * 1024 * 1024;
/// Buffers kept for reuse at most per mount (32 MiB), each only while the mount's memory
/// budget can spare it as it would read-ahead.
const KEEP: usize = 4;

/// A mount's kept chunk buffers, shared by its readers.
#[derive(Clone, Default)]
pub(crate) struct ChunkPool(Arc<PoolState>);

#[derive(Default)]
struct PoolState {
    /// Kept buffers, each with its share of the budget.
    idle: Mutex<Vec<(MmapMut, Option<Reservation>)>>,
    /// Readers registered: while one exists, returned buffers are kept.
    readers: AtomicUsize,
    budget: Option<MemoryBudget>,
}

impl ChunkPool {
    /// A pool whose kept buffers count against `budget`.
    pub(crate) fn with_budget(budget: MemoryBudget) -> Self {
        ChunkPool(Arc::new(PoolState { budget: Some(budget), ..Default::default() }))
    }

    /// Registers a reader for as long as the returned guard lives.
    pub(crate) fn user(&self) -> PoolUser {
        self.0.readers.fetch_add(1, Ordering::SeqCst);
        PoolUser(self.clone())
    }

    /// Buffers kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.0.idle.lock().len()
    }

    /// Whether buffers are reused now: with at most [`KEEP`] readers and at least half the
    /// budget free.
    fn roomy(&self) -> bool {
        self.0.readers.load(Ordering::SeqCst) <= KEEP
            && self.0.budget.as_ref().is_none_or(|b| b.available() >= b.total() / 2)
    }

    /// A buffer for `want` bytes: a kept or newly mapped one for chunk-sized ranges, the
    /// heap for small ones (the first chunk, random reads).
    pub(crate) fn buffer(&self, want: usize) -> ChunkBuf {
        if want > POOLED / 2 && want <= POOLED {
            let reused = if self.roomy() {
                // A kept buffer's reservation goes: the chunk it now holds has its own.
                self.0.idle.lock().pop().map(|(map, _)| map)
            } else {
                // Many readers share the budget: kept buffers are given back (a reused
                // buffer is resident whole from the start, a new one only as it fills).
                self.give_back_kept();
                None
            };
            if let Some(map) = reused.or_else(|| MmapMut::map_anon(POOLED).ok()) {
                return ChunkBuf::Mapped(Mapped { map: Some(map), len: 0, pool: self.clone() });
            }
        }
        ChunkBuf::heap(want)
    }

    /// Unmaps the kept buffers (outside the lock) and returns their share of the budget.
    fn give_back_kept(&self) {
        let kept = std::mem::take(&mut *self.0.idle.lock());
        drop(kept);
    }
}

/// Held by each reader of a [`ChunkPool`].
pub(crate) struct PoolUser(ChunkPool);

impl Drop for PoolUser {
    fn drop(&mut self) {
        if (self.0).0.readers.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last reader is gone: nothing stays kept.
            self.0.give_back_kept();
        }
    }
}

/// The bytes of one GET as they arrive.
pub(crate) enum ChunkBuf {
    Heap(BytesMut),
    Mapped(Mapped),
}

/// A mapped buffer and how much of it is filled; back to the pool when dropped.
pub(crate) struct Mapped {
    map: Option<MmapMut>,
    len: usize,
    pool: ChunkPool,
}

impl ChunkBuf {
    /// A heap buffer for `want` bytes (a reader without a pool).
    pub(crate) fn heap(want: usize) -> Self {
        ChunkBuf::Heap(BytesMut::with_capacity(want))
    }

    /// Bytes filled so far.
    pub(crate) fn len(&self) -> usize {
        match self {
            ChunkBuf::Heap(b) => b.len(),
            ChunkBuf::Mapped(m) => m.len,
        }
    }

    /// Appends `data`; the caller never goes past the capacity it asked for.
    pub(crate) fn extend_from_slice(&mut self, data: &[u8]) {
        match self {
            ChunkBuf::Heap(b) => b.extend_from_slice(data),
            ChunkBuf::Mapped(m) => {
                let map = m.map.as_mut().expect("present until dropped");
                map[m.len..m.len + data.len()].copy_from_slice(data);
                m.len += data.len();
            }
        }
    }

    /// The filled bytes, shared without a copy.
    pub(crate) fn freeze(self) -> Bytes {
        match self {
            ChunkBuf::Heap(b) => b.freeze(),
            ChunkBuf::Mapped(m) => Bytes::from_owner(m),
        }
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map.as_ref().expect("present until dropped")[..self.len]
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let Some(map) = self.map.take() else { return };
        if !self.pool.roomy() {
            return;
        }
        let state = &self.pool.0;
        let mut idle = state.idle.lock();
        // Checked under the lock the last reader's release takes: nothing is kept after it.
        if state.readers.load(Ordering::SeqCst) == 0 || idle.len() >= KEEP {
            return;
        }
        match &state.budget {
            None => idle.push((map, None)),
            Some(b) => {
                if let Some(r) = b.try_reserve_optional(POOLED as u64) {
                    idle.push((map, Some(r)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_while_a_reader_exists_and_released_after() {
        let pool = ChunkPool::default();
        let user = pool.user();
        let mut b = pool.buffer(POOLED);
        assert!(matches!(b, ChunkBuf::Mapped(_)));
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&[7u8; 5]);
        assert_eq!(b.len(), 8);
        let bytes = b.freeze();
        assert_eq!(&bytes[..], b"abc\x07\x07\x07\x07\x07");
        let slice = bytes.slice(1..4);
        drop(bytes);
        assert_eq!(pool.kept(), 0, "in use while a slice of it lives");
        assert_eq!(&slice[..], b"bc\x07");
        drop(slice);
        assert_eq!(pool.kept(), 1);
        // Small ranges stay on the heap.
        assert!(matches!(pool.buffer(256 * 1024), ChunkBuf::Heap(_)));
        // The kept buffer serves the next chunk; its old bytes are overwritten, never shown.
        let mut again = pool.buffer(POOLED - 1);
        assert_eq!(pool.kept(), 0);
        again.extend_from_slice(b"z");
        assert_eq!(&again.freeze()[..], b"z");
        assert_eq!(pool.kept(), 1);
        // At most KEEP are kept, however many were in use.
        let many: Vec<Bytes> = (0..KEEP + 2).map(|_| pool.buffer(POOLED).freeze()).collect();
        drop(many);
        assert_eq!(pool.kept(), KEEP);
        drop(user);
        assert_eq!(pool.kept(), 0, "released with the last reader");
        drop(pool.buffer(POOLED).freeze());
        assert_eq!(pool.kept(), 0, "not kept without a reader");
    }

    #[test]
    fn nothing_is_kept_with_many_readers() {
        let pool = ChunkPool::default();
        let users: Vec<PoolUser> = (0..KEEP).map(|_| pool.user()).collect();
        drop(pool.buffer(POOLED).freeze());
        assert_eq!(pool.kept(), 1);
        let one_more = pool.user();
        let b = pool.buffer(POOLED);
        assert_eq!(pool.kept(), 0, "given back at the next chunk");
        drop(b.freeze());
        assert_eq!(pool.kept(), 0);
        drop(one_more);
        drop(pool.buffer(POOLED).freeze());
        assert_eq!(pool.kept(), 1, "kept again with few readers");
        drop(users);
    }

    #[test]
    fn kept_buffers_count_against_the_budget_and_go_when_it_is_half_used() {
        let budget = MemoryBudget::new(64 * POOLED as u64);
        let pool = ChunkPool::with_budget(budget.clone());
        let _user = pool.user();
        let total = budget.available();
        drop(pool.buffer(POOLED).freeze());
        drop(pool.buffer(POOLED).freeze());
        assert_eq!(pool.kept(), 1);
        assert_eq!(budget.available(), total - POOLED as u64);
        let b = pool.buffer(POOLED);
        assert_eq!(pool.kept(), 0);
        assert_eq!(budget.available(), total, "the taker's chunk carries its own reservation");
        drop(b.freeze());
        assert_eq!(pool.kept(), 1);
        // Many readers: more than half the budget in use. The kept buffer is given back at
        // the next chunk, which gets a new buffer, and nothing is kept after it.
        let held = budget.try_reserve(total / 2 + 1024).unwrap();
        let c = pool.buffer(POOLED);
        assert!(matches!(c, ChunkBuf::Mapped(_)));
        assert_eq!(pool.kept(), 0);
        assert_eq!(budget.available(), total - total / 2 - 1024, "the kept buffer's share is back");
        drop(c.freeze());
        assert_eq!(pool.kept(), 0);
        drop(held);
        drop(pool.buffer(POOLED).freeze());
        assert_eq!(pool.kept(), 1, "kept again once the budget has room");
    }
}
