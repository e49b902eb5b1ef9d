//! What a successor server needs to serve a kernel connection its predecessor left: the
//! kernel refers to files by the node ids and handle numbers the old process gave out.
//! Every node id is journaled before the kernel learns it, every handle when it opens,
//! closes, or starts or stops holding content that is not in the store. The journal is
//! append-only, binary, and tolerant of a torn last record (the writer died mid-append).

use bytes::Bytes;
use s3vol_store::CompletedPart;

use crate::attr::{FileKind, SpecialKind};
use crate::write::StreamState;

/// What a handle was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleKind {
    /// A file opened read-only.
    Read,
    /// A file opened for writing.
    Write,
    /// A directory.
    Dir,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalRecord {
    /// Node id `ino` is `name` in directory `parent` (a later record for the same `ino`
    /// replaces it: a rename).
    Node {
        /// Node id.
        ino: u64,
        /// Parent directory's node id.
        parent: u64,
        /// File, directory or symlink.
        kind: FileKind,
        /// Name in the parent.
        name: String,
    },
    /// Handle `fh` was opened on `ino`.
    Open {
        /// Handle number.
        fh: u64,
        /// Node id.
        ino: u64,
        /// What for.
        kind: HandleKind,
    },
    /// Writer `fh` holds content not yet in the store (`true`), or everything it wrote is
    /// stored (`false`).
    Dirty {
        /// Handle number.
        fh: u64,
        /// Whether unstored content exists.
        dirty: bool,
    },
    /// Handle `fh` was released.
    Close {
        /// Handle number.
        fh: u64,
    },
    /// Writer `fh` started multipart upload `upload_id` of `key`: a successor that finds
    /// the handle lost (its content died with the server) aborts the upload, so no
    /// orphaned parts stay in the store (and on the bill).
    Upload {
        /// Handle number.
        fh: u64,
        /// The object key being uploaded.
        key: String,
        /// The store's upload id.
        upload_id: String,
    },
    /// Writer `fh`'s streaming upload, handed over mid-way (graceful handover): the
    /// successor continues it.
    Stream {
        /// Handle number.
        fh: u64,
        /// The upload's state, buffered bytes included.
        state: StreamState,
    },
}

/// Where a server appends its journal (a memfd the node plugin keeps beside the FUSE fd).
/// Appends must be done before the reply that hands the id out returns to the kernel.
pub trait StateJournal: Send + Sync {
    /// Appends one record.
    fn append(&self, rec: &JournalRecord);

    /// Whether enough was appended since the last compaction that the live state (node
    /// ids the server still knows, open handles) should replace the history. Cheap: it
    /// is asked on hot paths.
    fn wants_compaction(&self) -> bool {
        false
    }

    /// Replaces everything recorded so far by `snapshot`, the complete live state. A
    /// crash at any point must leave either the old records or the snapshot readable.
    fn compact(&self, _snapshot: &[JournalRecord]) {}
}

/// Compaction is due once the records appended since the last one exceed both this and
/// twice the last snapshot: memory stays within a small multiple of the live state.
pub const COMPACT_MIN_BYTES: u64 = 4 << 20;

const TAG_NODE: u8 = 1;
const TAG_OPEN: u8 = 2;
const TAG_DIRTY: u8 = 3;
const TAG_CLOSE: u8 = 4;
const TAG_STREAM: u8 = 5;
const TAG_UPLOAD: u8 = 6;

fn kind_byte(k: FileKind) -> u8 {
    match k {
        FileKind::File => 0,
        FileKind::Dir => 1,
        FileKind::Symlink => 2,
        FileKind::Special(SpecialKind::Fifo) => 3,
        FileKind::Special(SpecialKind::Socket) => 4,
        FileKind::Special(SpecialKind::CharDevice) => 5,
        FileKind::Special(SpecialKind::BlockDevice) => 6,
    }
}

fn kind_of(b: u8) -> Option<FileKind> {
    Some(match b {
        0 => FileKind::File,
        1 => FileKind::Dir,
        2 => FileKind::Symlink,
        3 => FileKind::Special(SpecialKind::Fifo),
        4 => FileKind::Special(SpecialKind::Socket),
        5 => FileKind::Special(SpecialKind::CharDevice),
        6 => FileKind::Special(SpecialKind::BlockDevice),
        _ => return None,
    })
}

fn handle_byte(k: HandleKind) -> u8 {
    match k {
        HandleKind::Read => 0,
        HandleKind::Write => 1,
        HandleKind::Dir => 2,
    }
}

fn handle_of(b: u8) -> Option<HandleKind> {
    Some(match b {
        0 => HandleKind::Read,
        1 => HandleKind::Write,
        2 => HandleKind::Dir,
        _ => return None,
    })
}

/// The bytes of one record: a tag, the payload length (u32 LE), the payload.
pub fn encode(rec: &JournalRecord) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    let tag = match rec {
        JournalRecord::Node { ino, parent, kind, name } => {
            p.extend_from_slice(&ino.to_le_bytes());
            p.extend_from_slice(&parent.to_le_bytes());
            p.push(kind_byte(*kind));
            p.extend_from_slice(name.as_bytes());
            TAG_NODE
        }
        JournalRecord::Open { fh, ino, kind } => {
            p.extend_from_slice(&fh.to_le_bytes());
            p.extend_from_slice(&ino.to_le_bytes());
            p.push(handle_byte(*kind));
            TAG_OPEN
        }
        JournalRecord::Dirty { fh, dirty } => {
            p.extend_from_slice(&fh.to_le_bytes());
            p.push(u8::from(*dirty));
            TAG_DIRTY
        }
        JournalRecord::Close { fh } => {
            p.extend_from_slice(&fh.to_le_bytes());
            TAG_CLOSE
        }
        JournalRecord::Upload { fh, key, upload_id } => {
            p.extend_from_slice(&fh.to_le_bytes());
            put_str(&mut p, key);
            put_str(&mut p, upload_id);
            TAG_UPLOAD
        }
        JournalRecord::Stream { fh, state } => {
            p.extend_from_slice(&fh.to_le_bytes());
            p.extend_from_slice(&state.size.to_le_bytes());
            p.extend_from_slice(&state.next_part.to_le_bytes());
            put_str(&mut p, state.upload_id.as_deref().unwrap_or(""));
            p.extend_from_slice(&(state.parts.len() as u32).to_le_bytes());
            for part in &state.parts {
                p.extend_from_slice(&part.part_number.to_le_bytes());
                put_str(&mut p, &part.etag);
            }
            p.extend_from_slice(&state.buffer);
            TAG_STREAM
        }
    };
    let mut out = Vec::with_capacity(5 + p.len());
    out.push(tag);
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

/// Reads the fields of a payload in order.
struct Cursor<'a> {
    p: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.p.get(self.at..self.at + n)?;
        self.at += n;
        Some(b)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn rest(&mut self) -> &'a [u8] {
        let r = &self.p[self.at.min(self.p.len())..];
        self.at = self.p.len();
        r
    }
}

fn decode_stream(p: &[u8]) -> Option<JournalRecord> {
    let mut c = Cursor { p, at: 0 };
    let fh = c.u64()?;
    let size = c.u64()?;
    let next_part = c.i32()?;
    let upload_id = Some(c.str()?).filter(|u| !u.is_empty());
    let n = c.u32()? as usize;
    let mut parts = Vec::with_capacity(n.min(10_000));
    for _ in 0..n {
        parts.push(CompletedPart { part_number: c.i32()?, etag: c.str()? });
    }
    let buffer = Bytes::copy_from_slice(c.rest());
    Some(JournalRecord::Stream { fh, state: StreamState { upload_id, next_part, parts, buffer, size } })
}

fn u64_at(p: &[u8], at: usize) -> Option<u64> {
    p.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn decode_one(tag: u8, p: &[u8]) -> Option<JournalRecord> {
    Some(match tag {
        TAG_NODE => JournalRecord::Node {
            ino: u64_at(p, 0)?,
            parent: u64_at(p, 8)?,
            kind: kind_of(*p.get(16)?)?,
            name: String::from_utf8(p.get(17..)?.to_vec()).ok()?,
        },
        TAG_OPEN => JournalRecord::Open { fh: u64_at(p, 0)?, ino: u64_at(p, 8)?, kind: handle_of(*p.get(16)?)? },
        TAG_DIRTY => JournalRecord::Dirty { fh: u64_at(p, 0)?, dirty: *p.get(8)? != 0 },
        TAG_CLOSE => JournalRecord::Close { fh: u64_at(p, 0)? },
        TAG_STREAM => return decode_stream(p),
        TAG_UPLOAD => {
            let mut c = Cursor { p, at: 0 };
            JournalRecord::Upload { fh: c.u64()?, key: c.str()?, upload_id: c.str()? }
        }
        _ => return None,
    })
}

/// Every whole record in `bytes`, and the length of the prefix they fill. What follows
/// (a record torn by a writer that died mid-append, or garbage) is ignored; a successor
/// cuts the journal back to that length before appending.
pub fn decode_all(bytes: &[u8]) -> (Vec<JournalRecord>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = bytes.get(at + 1..at + 5).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        else {
            break;
        };
        let Some(payload) = bytes.get(at + 5..at + 5 + len) else { break };
        match decode_one(bytes[at], payload) {
            Some(r) => out.push(r),
            None => break,
        }
        at += 5 + len;
    }
    (out, at)
}

/// A journal in memory, for tests and for servers that need no successor.
#[derive(Debug)]
pub struct MemoryJournal {
    bytes: parking_lot::Mutex<Vec<u8>>,
    /// Bytes appended since the last compaction, and the threshold for the next.
    since: std::sync::atomic::AtomicU64,
    threshold: std::sync::atomic::AtomicU64,
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::with_threshold(COMPACT_MIN_BYTES)
    }
}

impl MemoryJournal {
    /// A journal that wants compaction after `bytes` appended (tests use small ones).
    pub fn with_threshold(bytes: u64) -> Self {
        MemoryJournal {
            bytes: parking_lot::Mutex::new(Vec::new()),
            since: std::sync::atomic::AtomicU64::new(0),
            threshold: std::sync::atomic::AtomicU64::new(bytes),
        }
    }

    /// Everything recorded, encoded.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }
}

impl StateJournal for MemoryJournal {
    fn append(&self, rec: &JournalRecord) {
        let b = encode(rec);
        self.since.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.bytes.lock().extend_from_slice(&b);
    }

    fn wants_compaction(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.since.load(Relaxed) > self.threshold.load(Relaxed)
    }

    fn compact(&self, snapshot: &[JournalRecord]) {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes: Vec<u8> = snapshot.iter().flat_map(encode).collect();
        let min = self.threshold.load(Relaxed).min(COMPACT_MIN_BYTES);
        self.threshold.store((2 * bytes.len() as u64).max(min), Relaxed);
        self.since.store(0, Relaxed);
        *self.bytes.lock() = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<JournalRecord> {
        vec![
            JournalRecord::Node { ino: 2, parent: 1, kind: FileKind::Dir, name: "a dir\nwith newline".into() },
            JournalRecord::Node { ino: 3, parent: 2, kind: FileKind::File, name: "é.txt".into() },
            JournalRecord::Open { fh: 7, ino: 3, kind: HandleKind::Write },
            JournalRecord::Dirty { fh: 7, dirty: true },
            JournalRecord::Dirty { fh: 7, dirty: false },
            JournalRecord::Close { fh: 7 },
            JournalRecord::Open { fh: 8, ino: 2, kind: HandleKind::Dir },
            JournalRecord::Upload { fh: 7, key: "v/é.txt".into(), upload_id: "2~Xyz+/=".into() },
            JournalRecord::Stream {
                fh: 9,
                state: StreamState {
                    upload_id: Some("upload-1".into()),
                    next_part: 3,
                    parts: vec![
                        CompletedPart { part_number: 1, etag: "\"e1\"".into() },
                        CompletedPart { part_number: 2, etag: "e2".into() },
                    ],
                    buffer: Bytes::from_static(b"tail bytes"),
                    size: 10 << 20,
                },
            },
            JournalRecord::Stream {
                fh: 10,
                state: StreamState { upload_id: None, next_part: 1, parts: vec![], buffer: Bytes::new(), size: 0 },
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let j = MemoryJournal::default();
        for r in sample() {
            j.append(&r);
        }
        let bytes = j.bytes();
        assert_eq!(decode_all(&bytes), (sample(), bytes.len()));
    }

    #[test]
    fn a_torn_tail_keeps_every_whole_record() {
        let bytes: Vec<u8> = sample().iter().flat_map(encode).collect();
        for cut in 1..bytes.len() {
            let (recs, valid) = decode_all(&bytes[..cut]);
            let whole: usize = sample().iter().take(recs.len()).map(|r| encode(r).len()).sum();
            assert_eq!(recs, sample()[..recs.len()].to_vec(), "cut at {cut}");
            assert_eq!(valid, whole, "cut at {cut}");
            assert!(recs.len() == sample().len() || whole < cut || cut == whole, "cut at {cut}");
        }
        let (recs, valid) = decode_all(&[9, 0, 0, 0, 0]);
        assert!(recs.is_empty() && valid == 0, "an unknown tag stops decoding");
    }
}
