//! Opening a sub-directory of a mount as the source of a bind mount (a volume published
//! from a sub-path), without ever following a symbolic link or leaving the mount. The
//! directories come from a bucket, which whoever can write to it controls: a symlink
//! named like the sub-path and pointing at `/` must not become a pod's volume.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

/// Why a sub-directory cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SubdirError {
    /// The sub-path is not a plain relative path (absolute, `.`/`..`, empty).
    #[error("{0:?} is not a relative path of plain names")]
    NotRelative(String),
    /// A component is a symbolic link.
    #[error("{0:?} is a symbolic link; a sub-path must be made of real directories")]
    Symlink(String),
    /// A component is a file.
    #[error("{0:?} is not a directory")]
    NotADirectory(String),
    /// A component is missing and was not to be created.
    #[error("{0:?} does not exist")]
    Missing(String),
    /// A component is another mount.
    #[error("{0:?} is another mount; a sub-path must stay inside the volume")]
    OtherMount(String),
    /// Anything else (the mount broken, permissions).
    #[error("{what} {path:?}: {source}")]
    Io {
        /// The call that failed.
        what: &'static str,
        /// The component it failed on.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Opens `sub` (relative) inside the directory `root` one component at a time, refusing
/// symlinks and other mounts; with `create`, missing directories are made (mode 0755).
/// Returns an `O_PATH` descriptor of the directory: bind-mount `/proc/self/fd/N`.
pub fn open_subdir(root: &Path, sub: &Path, create: bool) -> Result<OwnedFd, SubdirError> {
    let names: Vec<_> = sub
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(SubdirError::NotRelative(sub.display().to_string())),
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(SubdirError::NotRelative(sub.display().to_string()));
    }
    let io = |what, path: &Path, e: Errno| SubdirError::Io { what, path: path.display().to_string(), source: e.into() };
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV)
    };
    let mut dir = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| io("open", root, e))?;
    let mut walked = std::path::PathBuf::new();
    for name in names {
        walked.push(name);
        let shown = || walked.display().to_string();
        let next = match openat2(dir.as_fd(), name, how()) {
            Err(Errno::ENOENT) if create => match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => openat2(dir.as_fd(), name, how()),
                Err(e) => return Err(io("mkdir", &walked, e)),
            },
            other => other,
        };
        dir = match next {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(SubdirError::Symlink(shown())),
            Err(Errno::ENOTDIR) => return Err(SubdirError::NotADirectory(shown())),
            Err(Errno::ENOENT) => return Err(SubdirError::Missing(shown())),
            Err(Errno::EXDEV) => return Err(SubdirError::OtherMount(shown())),
            Err(e) => return Err(io("open", &walked, e)),
        };
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(root: &Path, sub: &str, create: bool) -> String {
        open_subdir(root, Path::new(sub), create).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn opens_real_directories_and_refuses_links_files_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("vol");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/etc")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/tob")).unwrap();
        std::fs::create_dir(t.path().join("outside")).unwrap();

        let fd = open_subdir(&root, Path::new("a/b"), false).unwrap();
        let via = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))).unwrap();
        assert_eq!(via, root.join("a/b"));

        assert!(err(&root, "a/etc", false).contains("symbolic link"), "{}", err(&root, "a/etc", false));
        assert!(err(&root, "a/tob", true).contains("\"a/tob\" is a symbolic link"));
        assert!(err(&root, "a/file", true).contains("not a directory"));
        assert!(err(&root, "a/file/x", true).contains("not a directory"));
        assert!(err(&root, "a/missing", false).contains("\"a/missing\" does not exist"));
        for bad in ["../outside", "/etc", "a/../../outside", "", "./a"] {
            assert!(err(&root, bad, true).contains("relative path"), "{bad}: {}", err(&root, bad, true));
        }
        // Created on demand, and only beneath the root.
        open_subdir(&root, Path::new("a/new/deeper"), true).unwrap();
        assert!(root.join("a/new/deeper").is_dir());
        assert!(!t.path().join("outside/x").exists());
    }
}
