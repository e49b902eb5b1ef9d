use std::path::Path;

/// What a path looks like as a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountHealth {
    /// Mounted and answering.
    Healthy,
    /// Mounted, but the filesystem behind it is gone ("transport endpoint is not connected").
    Broken(String),
    /// Not a mount point (or does not exist).
    NotMounted,
}

/// Whether `path` appears as a mount point in /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    mounted_at(path).is_some()
}

/// The filesystem mounted on top at a path: its type (`fuse.s3vol`) and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedFs {
    /// Filesystem type, with the FUSE subtype (`fuse.s3vol`).
    pub fstype: String,
    /// Source as mount(8) shows it (`s3vol:bucket/prefix/`).
    pub source: String,
}

/// What is mounted at `path` (the last, top-most mount there), if anything.
pub fn mounted_at(path: &Path) -> Option<MountedFs> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    info.lines().rev().filter(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want)).find_map(|l| {
        let (_, after) = l.split_once(" - ")?;
        let mut f = after.split(' ');
        Some(MountedFs { fstype: f.next()?.to_string(), source: unescape(f.next()?) })
    })
}

/// /proc/self/mountinfo escapes spaces and a few other bytes as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Checks a mount point by stat-ing it: a dead FUSE server shows as ENOTCONN.
pub fn mount_health(path: &Path) -> MountHealth {
    match nix::sys::stat::stat(path) {
        Ok(_) if is_mount_point(path) => MountHealth::Healthy,
        Ok(_) => MountHealth::NotMounted,
        Err(nix::Error::ENOTCONN) => {
            MountHealth::Broken("transport endpoint is not connected (FUSE server gone)".into())
        }
        Err(nix::Error::ENOENT) => MountHealth::NotMounted,
        Err(e) if is_mount_point(path) => MountHealth::Broken(e.to_string()),
        Err(_) => MountHealth::NotMounted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_mounted_at_root_has_a_type() {
        let root = mounted_at(Path::new("/")).expect("/ is mounted");
        assert!(!root.fstype.is_empty() && !root.fstype.contains(' '), "{root:?}");
        assert_eq!(mounted_at(&std::env::temp_dir().join("surely-not-a-mount-point-xyz")), None);
    }

    #[test]
    fn root_is_a_mount_point_and_tmpdirs_are_not() {
        assert!(is_mount_point(Path::new("/")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(d.path()));
        assert_eq!(mount_health(d.path()), MountHealth::NotMounted);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
