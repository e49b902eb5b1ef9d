//! File attributes and how they are kept in object user metadata, using the header
//! names s3fs and ossfs use (`mode`, `uid`, `gid`, `mtime`) so buckets written by those
//! tools look the same through s3vol and the other way round.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::options::MountOptions;

/// File type bits as in `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// Directory type bits.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link type bits.
pub const S_IFLNK: u32 = 0o120000;

/// A node that holds no data: the kernel serves it (a FIFO's pipe, a socket's
/// connections, a device's driver); the store keeps only the node, as an empty object
/// with the type in its `mode` header and the device number in `rdev`, as s3fs does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialKind {
    /// Named pipe (mkfifo).
    Fifo,
    /// Unix socket (bind).
    Socket,
    /// Character device (mknod c).
    CharDevice,
    /// Block device (mknod b).
    BlockDevice,
}

impl SpecialKind {
    /// The `st_mode` type bits.
    pub fn type_bits(self) -> u32 {
        match self {
            SpecialKind::Fifo => 0o010000,
            SpecialKind::CharDevice => 0o020000,
            SpecialKind::BlockDevice => 0o060000,
            SpecialKind::Socket => 0o140000,
        }
    }

    /// The kind a mode's type bits name, if a special one.
    pub fn from_mode(mode: u32) -> Option<Self> {
        [SpecialKind::Fifo, SpecialKind::Socket, SpecialKind::CharDevice, SpecialKind::BlockDevice]
            .into_iter()
            .find(|k| mode & S_IFMT == k.type_bits())
    }
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Regular file (an object).
    File,
    /// Directory (a prefix, with or without a marker object).
    Dir,
    /// Symbolic link (an object holding the target, with S_IFLNK in its mode).
    Symlink,
    /// FIFO, socket or device node (an empty object with the type in its mode).
    Special(SpecialKind),
}

/// Attributes as the kernel sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Type.
    pub kind: FileKind,
    /// Permission bits (no type bits).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node (0 otherwise).
    pub rdev: u32,
}

/// Ownership and mode as stored (or to be stored) on an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredMeta {
    /// Full st_mode (type + permission bits), if recorded.
    pub mode: Option<u32>,
    /// Owner, if recorded.
    pub uid: Option<u32>,
    /// Group, if recorded.
    pub gid: Option<u32>,
    /// Modification time, if recorded (seconds since the epoch).
    pub mtime: Option<SystemTime>,
    /// Device number of a device node, if recorded.
    pub rdev: Option<u32>,
}

impl StoredMeta {
    /// Reads the s3fs/ossfs headers (already stripped of `x-amz-meta-`/`x-oss-meta-`).
    pub fn from_metadata(m: &BTreeMap<String, String>) -> Self {
        let num = |k: &str| m.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        StoredMeta {
            mode: num("mode").map(|v| v as u32),
            uid: num("uid").map(|v| v as u32),
            gid: num("gid").map(|v| v as u32),
            mtime: m
                .get("mtime")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| UNIX_EPOCH + Duration::from_secs_f64(s)),
            rdev: num("rdev").map(|v| v as u32),
        }
    }

    /// Writes the same headers.
    pub fn to_metadata(self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(v) = self.mode {
            m.insert("mode".into(), v.to_string());
        }
        if let Some(v) = self.uid {
            m.insert("uid".into(), v.to_string());
        }
        if let Some(v) = self.gid {
            m.insert("gid".into(), v.to_string());
        }
        if let Some(t) = self.mtime {
            let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            m.insert("mtime".into(), secs.to_string());
        }
        if let Some(v) = self.rdev {
            m.insert("rdev".into(), v.to_string());
        }
        m
    }

    /// The kind an object with this metadata has (a directory comes from its key, not here).
    pub fn object_kind(&self) -> FileKind {
        match self.mode {
            Some(m) if m & S_IFMT == S_IFLNK => FileKind::Symlink,
            Some(m) => SpecialKind::from_mode(m).map_or(FileKind::File, FileKind::Special),
            None => FileKind::File,
        }
    }

    /// Attributes for `ino`, with mount-option defaults and overrides applied.
    pub fn attr(&self, ino: u64, kind: FileKind, size: u64, store_mtime: SystemTime, opts: &MountOptions) -> Attr {
        let stored_perm = self.mode.map(|m| m & 0o7777);
        let perm = match kind {
            FileKind::Dir => opts.dir_perm(stored_perm),
            FileKind::File | FileKind::Special(_) => opts.file_perm(stored_perm),
            FileKind::Symlink => 0o777,
        };
        Attr {
            ino,
            size,
            mtime: self.mtime.unwrap_or(store_mtime),
            kind,
            perm,
            uid: opts.uid.or(self.uid).unwrap_or(0),
            gid: opts.gid.or(self.gid).unwrap_or(0),
            rdev: self.rdev.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_s3fs_headers() {
        let m: BTreeMap<String, String> = [("mode", "33261"), ("uid", "1000"), ("gid", "100"), ("mtime", "1700000000")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = StoredMeta::from_metadata(&m);
        assert_eq!(s.mode, Some(0o100755));
        let a = s.attr(5, FileKind::File, 3, UNIX_EPOCH, &MountOptions { umask: 0, ..Default::default() });
        assert_eq!((a.perm, a.uid, a.gid), (0o755, 1000, 100));
        assert_eq!(a.mtime, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(StoredMeta::from_metadata(&s.to_metadata()), s);
        let link = StoredMeta { mode: Some(S_IFLNK | 0o777), ..Default::default() };
        assert_eq!(link.object_kind(), FileKind::Symlink);
        // s3fs's special files: mode 4480 is a FIFO with 0600, rdev kept.
        let m: BTreeMap<String, String> =
            [("mode", "4480"), ("rdev", "259")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let fifo = StoredMeta::from_metadata(&m);
        assert_eq!(fifo.object_kind(), FileKind::Special(SpecialKind::Fifo));
        assert_eq!(fifo.attr(9, fifo.object_kind(), 0, UNIX_EPOCH, &MountOptions::default()).rdev, 259);
        assert_eq!(StoredMeta::from_metadata(&fifo.to_metadata()), fifo);
    }

    #[test]
    fn mount_options_override_owner() {
        let s = StoredMeta { uid: Some(5), gid: Some(6), ..Default::default() };
        let opts = MountOptions { uid: Some(1000), ..Default::default() };
        let a = s.attr(2, FileKind::Dir, 0, UNIX_EPOCH, &opts);
        assert_eq!((a.uid, a.gid, a.perm), (1000, 6, 0o755));
    }
}
