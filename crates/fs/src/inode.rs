//! The inode table: stable numbers for (parent, name), cached attributes with expiry,
//! and a bounded negative cache for names known not to exist.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::attr::{Attr, FileKind, StoredMeta};
use crate::journal::{JournalRecord, StateJournal};

/// Inode number of the mount root.
pub const ROOT_INO: u64 = 1;

/// One known file, directory or symlink.
#[derive(Debug, Clone)]
pub struct Inode {
    /// Number.
    pub ino: u64,
    /// Parent directory.
    pub parent: u64,
    /// Name in the parent.
    pub name: String,
    /// Path below the mount prefix, without a trailing slash ("" for the root).
    pub path: String,
    /// Type.
    pub kind: FileKind,
    /// Last known attributes.
    pub attr: Attr,
    /// Ownership/mode as stored on the object or marker.
    pub stored: StoredMeta,
    /// Whether a directory has a `dir/` marker object.
    pub has_marker: bool,
    /// Whether mode/owner come from the object itself (HEAD), not only from a listing.
    pub verified: bool,
    /// When `attr` stops being trusted.
    pub expires: Instant,
    /// When the store last confirmed `attr` (or this mount set it): an `open` older than
    /// [`OPEN_REVALIDATE`] after it asks the store again (close-to-open).
    pub checked: Instant,
    /// Kernel lookup count.
    pub lookups: u64,
    /// The object's ETag as of `checked`, when a HEAD told it and this mount has not
    /// changed the object since (empty otherwise): the version the read cache serves.
    pub etag: String,
}

/// How old attributes may be for an `open` to trust them without asking the store:
/// what another client closed more than this ago is what a new open sees, whatever the
/// `stat_cache_ttl`.
pub const OPEN_REVALIDATE: std::time::Duration = std::time::Duration::from_secs(1);

/// All inodes of a mount.
pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    by_name: HashMap<(u64, String), u64>,
    negative: HashMap<(u64, String), Instant>,
    next: u64,
    max_negative: usize,
    /// Where node ids are recorded for a successor server, when one may take over.
    journal: Option<Arc<dyn StateJournal>>,
    /// Ids a journal compaction left out (the kernel held none of them): journaled again
    /// when a lookup hands one out.
    unjournaled: HashSet<u64>,
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new(root: Inode, max_negative: usize) -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(ROOT_INO, root);
        InodeTable {
            by_ino,
            by_name: HashMap::new(),
            negative: HashMap::new(),
            next: ROOT_INO + 1,
            max_negative,
            journal: None,
            unjournaled: HashSet::new(),
        }
    }

    /// Journals every node id from now on (before the kernel can learn it).
    pub fn set_journal(&mut self, journal: Arc<dyn StateJournal>) {
        self.journal = Some(journal);
    }

    /// Rebuilds the node ids a predecessor gave the kernel, from its journal: each id
    /// gets its last recorded parent and name, with attributes that are already expired
    /// (the first getattr reads the object). Ids whose parent chain is broken are left
    /// out (the kernel gets ESTALE for them). Returns how many were restored.
    pub fn restore(&mut self, nodes: &[(u64, u64, FileKind, String)], template: &Inode) -> usize {
        let mut last: HashMap<u64, (u64, FileKind, &str)> = HashMap::new();
        for (ino, parent, kind, name) in nodes {
            if *ino != ROOT_INO {
                last.insert(*ino, (*parent, *kind, name.as_str()));
            }
        }
        fn path_of(ino: u64, last: &HashMap<u64, (u64, FileKind, &str)>, depth: usize) -> Option<String> {
            if ino == ROOT_INO {
                return Some(String::new());
            }
            let (parent, _, name) = last.get(&ino)?;
            if depth > 4096 {
                return None;
            }
            let p = path_of(*parent, last, depth + 1)?;
            Some(if p.is_empty() { name.to_string() } else { format!("{p}/{name}") })
        }
        let now = Instant::now();
        let mut restored = 0;
        for (&ino, &(parent, kind, name)) in &last {
            let Some(path) = path_of(ino, &last, 0) else { continue };
            let attr = Attr { ino, kind, perm: if kind == FileKind::Dir { 0o755 } else { 0o644 }, ..template.attr };
            self.by_name.insert((parent, name.to_string()), ino);
            self.by_ino.insert(
                ino,
                Inode {
                    ino,
                    parent,
                    name: name.to_string(),
                    path,
                    kind,
                    attr,
                    stored: StoredMeta::default(),
                    has_marker: false,
                    verified: false,
                    expires: now,
                    checked: now,
                    // The kernel holds at least one reference; forgets count down from here.
                    lookups: 1,
                    etag: String::new(),
                },
            );
            self.next = self.next.max(ino + 1);
            restored += 1;
        }
        restored
    }

    /// The inode, if known.
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// The inode, mutably.
    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.by_ino.get_mut(&ino)
    }

    /// The child's number, if known.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.by_name.get(&(parent, name.to_string())).copied()
    }

    /// The number `(parent, name)` has or gets. Numbers stay stable while the inode is
    /// known; a kind change (a file replaced by a directory) gets a new number.
    pub fn assign(&mut self, parent: u64, name: &str, kind: FileKind) -> u64 {
        if let Some(ino) = self.child(parent, name) {
            if self.by_ino.get(&ino).is_some_and(|i| i.kind == kind) {
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        ino
    }

    /// The node ids the kernel may still use, as (id, parent, kind, name): those it holds
    /// lookups on, those open in `open`, and their ancestors (a successor needs the whole
    /// path). Every other id is marked as left out of the journal, to be journaled again
    /// if a lookup hands it out. The live state a journal compaction keeps.
    pub fn live_nodes(&mut self, open: &HashSet<u64>) -> Vec<(u64, u64, FileKind, String)> {
        let mut keep: HashSet<u64> = HashSet::new();
        for i in self.by_ino.values() {
            if i.ino != ROOT_INO && (i.lookups > 0 || open.contains(&i.ino)) {
                let mut cur = i.ino;
                while cur != ROOT_INO && keep.insert(cur) {
                    match self.by_ino.get(&cur) {
                        Some(n) => cur = n.parent,
                        None => break,
                    }
                }
            }
        }
        self.unjournaled = self.by_ino.keys().copied().filter(|ino| *ino != ROOT_INO && !keep.contains(ino)).collect();
        keep.iter().filter_map(|ino| self.by_ino.get(ino)).map(|i| (i.ino, i.parent, i.kind, i.name.clone())).collect()
    }

    fn journal_node(&mut self, ino: u64) {
        if let (Some(j), Some(i)) = (&self.journal, self.by_ino.get(&ino)) {
            j.append(&JournalRecord::Node { ino, parent: i.parent, kind: i.kind, name: i.name.clone() });
        }
        self.unjournaled.remove(&ino);
    }

    /// Records an inode (new or refreshed) and clears any negative entry for its name.
    pub fn upsert(&mut self, inode: Inode) {
        if let Some(j) = &self.journal {
            let known = !self.unjournaled.contains(&inode.ino)
                && self
                    .by_ino
                    .get(&inode.ino)
                    .is_some_and(|i| i.parent == inode.parent && i.kind == inode.kind && i.name == inode.name);
            if !known && inode.ino != ROOT_INO {
                j.append(&JournalRecord::Node {
                    ino: inode.ino,
                    parent: inode.parent,
                    kind: inode.kind,
                    name: inode.name.clone(),
                });
            }
        }
        self.unjournaled.remove(&inode.ino);
        self.negative.remove(&(inode.parent, inode.name.clone()));
        let key = (inode.parent, inode.name.clone());
        if let Some(old) = self.by_name.insert(key, inode.ino) {
            if old != inode.ino {
                self.by_ino.remove(&old);
            }
        }
        let lookups = self.by_ino.get(&inode.ino).map_or(0, |i| i.lookups);
        self.by_ino.insert(inode.ino, Inode { lookups, ..inode });
    }

    /// Forgets a name (unlink, rename source) and records it as absent.
    pub fn remove_name(&mut self, parent: u64, name: &str, negative_until: Option<Instant>) {
        if let Some(ino) = self.by_name.remove(&(parent, name.to_string())) {
            if let Some(i) = self.by_ino.get_mut(&ino) {
                // Keep the inode while the kernel holds it (open files), but mark it stale.
                i.expires = Instant::now();
                if i.lookups == 0 {
                    self.by_ino.remove(&ino);
                }
            }
        }
        if let Some(until) = negative_until {
            if self.negative.len() >= self.max_negative {
                let now = Instant::now();
                self.negative.retain(|_, t| *t > now);
                if self.negative.len() >= self.max_negative {
                    self.negative.clear();
                }
            }
            if self.max_negative > 0 {
                self.negative.insert((parent, name.to_string()), until);
            }
        }
    }

    /// Whether the name is known absent right now.
    pub fn is_negative(&self, parent: u64, name: &str) -> bool {
        self.negative.get(&(parent, name.to_string())).is_some_and(|t| *t > Instant::now())
    }

    /// Drops every negative entry under `parent` (after a create in it).
    pub fn clear_negative(&mut self, parent: u64, name: &str) {
        self.negative.remove(&(parent, name.to_string()));
    }

    /// Inodes held (never none: the root always is).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Counts a kernel lookup.
    pub fn add_lookup(&mut self, ino: u64) {
        if self.unjournaled.contains(&ino) {
            // Handed to the kernel again after a compaction left it out.
            self.journal_node(ino);
        }
        if let Some(i) = self.by_ino.get_mut(&ino) {
            i.lookups += 1;
        }
    }

    /// Takes back a reference this mount counted for its own use (not the kernel's): the
    /// entry stays cached.
    pub fn unref(&mut self, ino: u64, n: u64) {
        if let Some(i) = self.by_ino.get_mut(&ino) {
            i.lookups = i.lookups.saturating_sub(n);
        }
    }

    /// The kernel forgot `n` lookups. At none left, a file's entry is dropped (the kernel
    /// asks again by name if it needs it); a directory's stays while it is named.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == crate::inode::ROOT_INO {
            return;
        }
        let Some(i) = self.by_ino.get_mut(&ino) else { return };
        i.lookups = i.lookups.saturating_sub(n);
        if i.lookups > 0 {
            return;
        }
        let key = (i.parent, i.name.clone());
        let named = self.by_name.get(&key) == Some(&ino);
        // The kernel dropped its last reference: nothing will ask for this id again. A
        // file's entry goes (a mount that listed millions of names keeps only what the
        // kernel holds); a directory's stays, as cached children may still name it.
        if named && i.kind == FileKind::Dir {
            return;
        }
        if named {
            self.by_name.remove(&key);
        }
        self.by_ino.remove(&ino);
    }

    /// Re-roots the paths of every inode below `old` at `new` (after a directory
    /// rename) and forgets negative entries, which may no longer hold.
    pub fn rename_subtree(&mut self, old: &str, new: &str) {
        let old_prefix = format!("{old}/");
        for i in self.by_ino.values_mut() {
            if let Some(rest) = i.path.strip_prefix(&old_prefix) {
                i.path = format!("{new}/{rest}");
            }
        }
        self.negative.clear();
    }
}
