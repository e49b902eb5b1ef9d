//! The inode table: stable numbers for (parent, name), cached attributes with expiry,
//! and a bounded negative cache for names known not to exist.

use std::collections::HashMap;
use std::time::Instant;

use crate::attr::{Attr, FileKind, StoredMeta};

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
    /// Kernel lookup count.
    pub lookups: u64,
}

/// All inodes of a mount.
pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    by_name: HashMap<(u64, String), u64>,
    negative: HashMap<(u64, String), Instant>,
    next: u64,
    max_negative: usize,
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new(root: Inode, max_negative: usize) -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(ROOT_INO, root);
        InodeTable { by_ino, by_name: HashMap::new(), negative: HashMap::new(), next: ROOT_INO + 1, max_negative }
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

    /// Records an inode (new or refreshed) and clears any negative entry for its name.
    pub fn upsert(&mut self, inode: Inode) {
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

    /// Counts a kernel lookup.
    pub fn add_lookup(&mut self, ino: u64) {
        if let Some(i) = self.by_ino.get_mut(&ino) {
            i.lookups += 1;
        }
    }

    /// The kernel forgot `n` lookups; unreferenced inodes whose name is gone are dropped.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == crate::inode::ROOT_INO {
            return;
        }
        let drop_it = match self.by_ino.get_mut(&ino) {
            Some(i) => {
                i.lookups = i.lookups.saturating_sub(n);
                i.lookups == 0 && self.by_name.get(&(i.parent, i.name.clone())) != Some(&ino)
            }
            None => false,
        };
        if drop_it {
            self.by_ino.remove(&ino);
        }
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
