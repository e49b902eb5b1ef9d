use std::path::Path;

use nix::mount::MsFlags;

/// Bind-mounts `source` on `target`, read-only when asked (a bind mount only becomes
/// read-only through a second, remounting call).
pub fn bind_mount(source: &Path, target: &Path, read_only: bool) -> nix::Result<()> {
    nix::mount::mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    if read_only {
        let flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            return Err(e);
        }
    }
    Ok(())
}
