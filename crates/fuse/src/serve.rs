use std::os::fd::OwnedFd;
use std::sync::Arc;

use fuser::{Session, SessionACL};
use s3vol_fs::Fs;

use crate::adapter::FuseAdapter;
use crate::drain::DrainControl;

/// Serves `fs` on the FUSE device `fd` until the filesystem is unmounted. Blocks the
/// calling thread; operations run on `rt`; `drain` stops it for a graceful handover.
pub fn serve_fd(fs: Arc<Fs>, fd: OwnedFd, rt: tokio::runtime::Handle, drain: DrainControl) -> std::io::Result<()> {
    let acl = if fs.options().allow_other { SessionACL::All } else { SessionACL::Owner };
    let adapter = FuseAdapter::new(fs, rt).drained_by(drain);
    let notifier = adapter.notifier_slot();
    let mut session = Session::from_fd(adapter, fd, acl);
    let _ = notifier.set(session.notifier());
    session.run()
}
