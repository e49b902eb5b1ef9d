//! Buffers for prefetched chunks, reused instead of allocated per chunk.
//!
//! A prefetch chunk (8 MiB) is past the allocator's mmap threshold (set so freed buffers
//! go back to the kernel and RSS follows the memory budget): each new chunk was a fresh
//! mapping, faulted in page by page while the GET body was copied in and unmapped again,
//! about a fifth of the read path's CPU. A few buffers are kept for the next chunks; their
//! pages stay in place. What is kept is bounded (`max_idle` buffers), so an idle mount
//! holds at most that much more than it uses.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// Chunk buffers waiting to be reused; cheap to clone (one shared pool per mount).
#[derive(Clone)]
pub struct ChunkPool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Capacity of every pooled buffer.
    size: usize,
    max_idle: usize,
}

impl ChunkPool {
    /// A pool of buffers of `size` bytes, keeping at most `max_idle` unused ones.
    pub fn new(size: usize, max_idle: usize) -> Self {
        ChunkPool { idle: Arc::new(Mutex::new(Vec::new())), size, max_idle }
    }

    /// An empty buffer for up to `len` bytes: a pooled one when `len` is at most the pool's
    /// size and more than an eighth of it (smaller ones are cheap to allocate), else its own.
    pub fn buffer(&self, len: usize) -> ChunkBuf {
        let pooled = len <= self.size && len > self.size / 8;
        let data = if pooled {
            let mut v = self.idle.lock().pop().unwrap_or_else(|| Vec::with_capacity(self.size));
            v.clear();
            v
        } else {
            Vec::with_capacity(len)
        };
        ChunkBuf { data, pool: pooled.then(|| self.clone()) }
    }

    /// Buffers kept for reuse now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    fn give_back(&self, data: Vec<u8>) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle && data.capacity() == self.size {
            idle.push(data);
        }
    }
}

/// A chunk being filled; frozen into [`Bytes`] that return the buffer when dropped.
pub struct ChunkBuf {
    data: Vec<u8>,
    pool: Option<ChunkPool>,
}

impl ChunkBuf {
    /// Appends bytes.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    /// Bytes held.
    pub fn filled(&self) -> usize {
        self.data.len()
    }

    /// The chunk's bytes, read-only; the buffer goes back to the pool with the last view.
    pub fn freeze(self) -> Bytes {
        if self.pool.is_none() {
            let mut me = self;
            return Bytes::from(std::mem::take(&mut me.data));
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_chunk_gives_its_buffer_to_the_next_one() {
        let pool = ChunkPool::new(1 << 20, 2);
        let mut b = pool.buffer(1 << 20);
        b.extend_from_slice(&[7u8; 1000]);
        let first = b.freeze();
        let view = first.slice(10..20);
        let addr = first.as_ptr();
        drop(first);
        assert_eq!(pool.idle(), 0, "a view still holds the buffer");
        assert_eq!(&view[..], &[7u8; 10]);
        drop(view);
        assert_eq!(pool.idle(), 1);
        let mut again = pool.buffer(1 << 19);
        again.extend_from_slice(&[1, 2, 3]);
        let again = again.freeze();
        assert_eq!(again.as_ptr(), addr, "the same pages, reused");
        assert_eq!(&again[..], &[1, 2, 3]);
    }

    #[test]
    fn small_buffers_are_not_pooled_and_the_pool_is_bounded() {
        let pool = ChunkPool::new(1 << 20, 2);
        drop(pool.buffer(1000).freeze());
        assert_eq!(pool.idle(), 0);
        let bufs: Vec<_> = (0..5).map(|_| pool.buffer(1 << 20).freeze()).collect();
        drop(bufs);
        assert_eq!(pool.idle(), 2, "at most max_idle kept");
    }
}
