//! The control channel between the node plugin and a FUSE server: a SOCK_SEQPACKET unix
//! socket (one JSON message per packet), with descriptors (the /dev/fuse connection and
//! the state journal) passed as SCM_RIGHTS beside a message. Credentials travel only over this socket, never
//! in argv, the environment or files.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};

/// Largest control message.
const MAX_MSG: usize = 64 * 1024;

/// Keys as they cross the control socket. Debug output never shows them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret key.
    pub secret_access_key: String,
    /// Session token.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for WireCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCredentials(<redacted>)")
    }
}

impl From<s3vol_store::StaticCredentials> for WireCredentials {
    fn from(c: s3vol_store::StaticCredentials) -> Self {
        WireCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
        }
    }
}

impl From<WireCredentials> for s3vol_store::StaticCredentials {
    fn from(c: WireCredentials) -> Self {
        s3vol_store::StaticCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
        }
    }
}

/// Everything a FUSE server needs to serve one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeConfig {
    /// CSI volume id (for logs).
    pub volume_id: String,
    /// Bucket.
    pub bucket: String,
    /// Prefix, empty or ending in `/`.
    pub prefix: String,
    /// Endpoint URL (`file:///dir` for a local directory); `None` = AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// `path` or `virtual`.
    pub addressing: String,
    /// Mount options.
    pub options: Vec<String>,
    /// Capacity for statfs.
    pub capacity: Option<u64>,
    /// Enforce the capacity (ENOSPC past it).
    #[serde(default)]
    pub hard_quota: bool,
    /// Keys; `None` = the default AWS chain.
    pub credentials: Option<WireCredentials>,
}

/// A request to a FUSE server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Serve the FUSE connection sent with this message (descriptors: the connection,
    /// then the state journal).
    Serve {
        /// What to serve.
        config: ServeConfig,
        /// The connection is live and was served before: take over the predecessor's
        /// state from the journal instead of waiting for the kernel's INIT.
        #[serde(default)]
        resume: bool,
    },
    /// Hand back duplicates of the connection and journal descriptors and the volume's
    /// credentials (a restarted node plugin taking its volumes back).
    TakeOver,
    /// Replace the credentials of the running server (rotation without remount).
    Rotate {
        /// New keys.
        credentials: WireCredentials,
    },
    /// Graceful handover: stop taking requests (they stay queued for the successor),
    /// finish those running, hand over streaming uploads and upload other pending
    /// content through the journal, answer, and exit.
    Drain,
    /// The volume was expanded: report (and, with a hard quota, allow) this many bytes.
    SetCapacity {
        /// New capacity in bytes.
        bytes: u64,
    },
    /// The server's metrics (per-volume store requests and bytes), Prometheus text, for
    /// the node plugin's `/metrics`.
    Metrics,
    /// Liveness check.
    Ping,
    /// Exit now.
    Shutdown,
}

/// A FUSE server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// The server's process id.
    pub pid: u32,
    /// Whether a session is being served.
    pub serving: bool,
    /// The volume's keys (answer to `TakeOver` only).
    #[serde(default)]
    pub credentials: Option<WireCredentials>,
    /// What became of requests a predecessor left unanswered (answer to a resuming
    /// `Serve`): `resent`, or `unsupported` when the kernel cannot resend them.
    #[serde(default)]
    pub resend: Option<String>,
    /// Prometheus text exposition (answer to `Metrics` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Control channel failures.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// Socket-level failure.
    #[error("control socket {0}: {1}")]
    Io(String, nix::Error),
    /// Malformed message.
    #[error("control message: {0}")]
    Protocol(String),
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
}

fn set_timeouts(fd: &OwnedFd, t: Duration) -> nix::Result<()> {
    let tv = nix::sys::time::TimeVal::new(t.as_secs() as i64, t.subsec_micros() as i64);
    socket::setsockopt(fd, socket::sockopt::ReceiveTimeout, &tv)?;
    socket::setsockopt(fd, socket::sockopt::SendTimeout, &tv)
}

/// Sends one packet, with `fds` attached.
pub fn send_packet(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> =
        if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&fds)] };
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Most descriptors one packet carries.
const MAX_FDS: usize = 4;

/// Receives one packet and the descriptors sent with it. `Ok(None)` at end of stream.
pub fn recv_packet(sock: BorrowedFd<'_>) -> nix::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw_fds) = c {
                for raw in raw_fds {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we
                    // are its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        (msg.bytes, fds)
    };
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

/// Sends `req` (with `fds`) to the server listening at `path` and waits for its answer.
pub fn call(
    path: &Path,
    req: &ControlRequest,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<ControlResponse, HandoffError> {
    call_with_fds(path, req, fds, timeout).map(|(r, _)| r)
}

/// [`call`], also returning the descriptors sent with the answer.
pub fn call_with_fds(
    path: &Path,
    req: &ControlRequest,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<(ControlResponse, Vec<OwnedFd>), HandoffError> {
    let name = path.display().to_string();
    let io = |e| HandoffError::Io(name.clone(), e);
    // A mount pod owns the directory of its socket: a link it put there must not send the
    // plugin (and the volume's keys) to another server's socket.
    if std::fs::symlink_metadata(path).is_ok_and(|m| !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
        return Err(HandoffError::Protocol(format!("{name} is not a socket (a link or a file); refusing to use it")));
    }
    let sock = seqpacket().map_err(io)?;
    set_timeouts(&sock, timeout).map_err(io)?;
    socket::connect(sock.as_raw_fd(), &UnixAddr::new(path).map_err(io)?).map_err(io)?;
    let bytes = serde_json::to_vec(req).map_err(|e| HandoffError::Protocol(e.to_string()))?;
    send_packet(std::os::fd::AsFd::as_fd(&sock), &bytes, fds).map_err(io)?;
    let (reply, fds) = recv_packet(std::os::fd::AsFd::as_fd(&sock))
        .map_err(io)?
        .ok_or_else(|| HandoffError::Protocol("server closed the connection".into()))?;
    let resp = serde_json::from_slice(&reply).map_err(|e| HandoffError::Protocol(e.to_string()))?;
    Ok((resp, fds))
}

/// The server side: a listening control socket (mode 0600).
pub struct ControlListener {
    sock: OwnedFd,
}

impl ControlListener {
    /// Binds `path`, replacing a stale socket.
    pub fn bind(path: &Path) -> nix::Result<Self> {
        let _ = std::fs::remove_file(path);
        let sock = seqpacket()?;
        socket::bind(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
        socket::listen(&sock, Backlog::new(16)?)?;
        Ok(ControlListener { sock })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> nix::Result<OwnedFd> {
        let raw = socket::accept4(self.sock.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

/// Reads one request (and its descriptors) from an accepted connection.
pub fn read_request(conn: &OwnedFd) -> Result<Option<(ControlRequest, Vec<OwnedFd>)>, HandoffError> {
    let io = |e| HandoffError::Io("connection".into(), e);
    let Some((bytes, fds)) = recv_packet(std::os::fd::AsFd::as_fd(conn)).map_err(io)? else { return Ok(None) };
    let req = serde_json::from_slice(&bytes).map_err(|e| HandoffError::Protocol(e.to_string()))?;
    Ok(Some((req, fds)))
}

/// Answers a request, with `fds` attached.
pub fn write_response(conn: &OwnedFd, resp: &ControlResponse, fds: &[BorrowedFd<'_>]) -> Result<(), HandoffError> {
    let bytes = serde_json::to_vec(resp).map_err(|e| HandoffError::Protocol(e.to_string()))?;
    send_packet(std::os::fd::AsFd::as_fd(conn), &bytes, fds).map_err(|e| HandoffError::Io("connection".into(), e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_link_in_place_of_the_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("other.sock");
        let _listener = ControlListener::bind(&real).unwrap();
        let link = dir.path().join("control.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = call(&link, &ControlRequest::Ping, &[], Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
    }

    use super::*;

    #[test]
    fn request_and_fd_cross_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let l = ControlListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let conn = l.accept().unwrap();
            let (req, fds) = read_request(&conn).unwrap().unwrap();
            let got_fds = fds.len() == 2;
            let ok = matches!(req, ControlRequest::Rotate { ref credentials } if credentials.access_key_id == "AK");
            let resp = ControlResponse { ok: ok && got_fds, pid: 7, ..Default::default() };
            let back = std::os::fd::AsFd::as_fd(&fds[1]);
            write_response(&conn, &resp, &[back]).unwrap();
        });
        let file = std::fs::File::open("/dev/null").unwrap();
        let other = tempfile::tempfile().unwrap();
        let req = ControlRequest::Rotate {
            credentials: WireCredentials {
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                session_token: None,
            },
        };
        let fds = [std::os::fd::AsFd::as_fd(&file), std::os::fd::AsFd::as_fd(&other)];
        let (resp, back) = call_with_fds(&path, &req, &fds, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert!(resp.ok && resp.pid == 7, "{resp:?}");
        assert_eq!(back.len(), 1, "a descriptor comes back with the answer");
        assert!(!format!("{req:?}").contains("SK"));
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600);
    }
}
