//! Serving a kernel connection that another process initialised. The kernel sends
//! FUSE_INIT once per connection, and fuser's session answers nothing else until it has
//! seen one. A successor therefore starts its session on one end of a socket pair, hands
//! it a synthetic INIT through the other end (its reply goes nowhere), and then puts the
//! real /dev/fuse descriptor in place of the socket under the same descriptor number with
//! dup2(2): from then on the session reads and answers the kernel directly, at no cost
//! per request. Requests the predecessor had read but not answered are then resent by the
//! kernel (FUSE_NOTIFY_RESEND, Linux 6.9+), so each is answered exactly once.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use fuser::{Session, SessionACL};
use s3vol_fs::Fs;

use crate::adapter::FuseAdapter;
use crate::drain::DrainControl;

/// FUSE opcodes and sizes used to start a session (from the kernel's fuse.h).
const FUSE_FORGET: u32 = 2;
const FUSE_INIT: u32 = 26;
const IN_HEADER_LEN: usize = 40;
/// `FUSE_NOTIFY_RESEND` (fuse.h, protocol 7.40, Linux 6.9).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// The protocol version we claim in the synthetic INIT (what fuser was built for).
const SYNTHETIC_MINOR: u32 = 31;

/// How a resumed session treats requests the predecessor left unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// The kernel resent them; this session answers them.
    Resent,
    /// This kernel cannot resend (before Linux 6.9): they stay unanswered until the
    /// connection is aborted, so the caller must abort it and mount again.
    Unsupported,
}

/// Errors starting a resumed session.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(&'static str, std::io::Error),
}

fn in_header(len: usize, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    h
}

/// The INIT the kernel sent the predecessor, as far as the session needs it.
fn synthetic_init() -> Vec<u8> {
    let mut m = in_header(IN_HEADER_LEN + 16, FUSE_INIT, 1, 0);
    m.extend_from_slice(&7u32.to_le_bytes());
    m.extend_from_slice(&SYNTHETIC_MINOR.to_le_bytes());
    m.extend_from_slice(&(1u32 << 20).to_le_bytes()); // max_readahead
    m.extend_from_slice(&u32::MAX.to_le_bytes()); // every capability: the reply is discarded
    m
}

/// A FORGET of nothing: needs no reply, changes nothing, wakes a read.
fn harmless_forget() -> Vec<u8> {
    let mut m = in_header(IN_HEADER_LEN + 8, FUSE_FORGET, 2, s3vol_fs::ROOT_INO);
    m.extend_from_slice(&0u64.to_le_bytes());
    m
}

/// Asks the kernel to resend the requests the dead predecessor had read but not answered.
pub fn notify_resend(fuse: &OwnedFd) -> Resend {
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16u32.to_le_bytes());
    msg.extend_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    msg.extend_from_slice(&0u64.to_le_bytes());
    // SAFETY: writes 16 bytes from a live buffer to a descriptor we own.
    let n = unsafe { libc::write(fuse.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n == msg.len() as isize {
        Resend::Resent
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "the kernel refused FUSE_NOTIFY_RESEND (needs Linux 6.9+)");
        Resend::Unsupported
    }
}

/// Starts a session for `fs` on `fuse`, a connection whose INIT another process answered.
/// Returns the session thread (it ends when the filesystem is unmounted) and whether the
/// kernel resent the requests left unanswered.
pub fn serve_fd_resumed(
    fs: Arc<Fs>,
    fuse: OwnedFd,
    rt: tokio::runtime::Handle,
    drain: DrainControl,
) -> Result<(std::thread::JoinHandle<std::io::Result<()>>, Resend), ResumeError> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
    let sys = |what| move |e: nix::Error| ResumeError::Sys(what, std::io::Error::from(e));
    let (session_end, feeder) =
        socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(sys("socketpair"))?;
    let tv = nix::sys::time::TimeVal::new(10, 0);
    socket::setsockopt(&feeder, socket::sockopt::ReceiveTimeout, &tv).map_err(sys("socket timeout"))?;
    // One packet per read and write, as on /dev/fuse.
    let mut feeder = std::fs::File::from(feeder);
    let slot = session_end.as_raw_fd();
    let acl = if fs.options().allow_other { SessionACL::All } else { SessionACL::Owner };
    let adapter = FuseAdapter::new(fs, rt).resumed().drained_by(drain);
    let notifier = adapter.notifier_slot();
    let mut session = Session::from_fd(adapter, session_end, acl);
    // It writes to the session's descriptor number, which is the kernel's after the dup2.
    let _ = notifier.set(session.notifier());
    feeder.write_all(&synthetic_init()).map_err(|e| ResumeError::Sys("synthetic INIT", e))?;
    let thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || session.run())
        .map_err(|e| ResumeError::Sys("session thread", e))?;
    // The session answered INIT into the socket: it is initialised.
    let mut reply = [0u8; 256];
    feeder.read(&mut reply).map_err(|e| ResumeError::Sys("INIT reply", e))?;
    // SAFETY: `slot` is the session's descriptor number, still open (the session owns it
    // until it ends); dup2 atomically makes it refer to the kernel connection instead.
    if unsafe { libc::dup2(fuse.as_raw_fd(), slot) } < 0 {
        return Err(ResumeError::Sys("dup2", std::io::Error::last_os_error()));
    }
    // A read already waiting on the socket still waits there: wake it with a request that
    // needs no answer; its next read is the kernel's.
    let _ = feeder.write_all(&harmless_forget());
    drop(feeder);
    let resend = notify_resend(&fuse);
    Ok((thread, resend))
}
