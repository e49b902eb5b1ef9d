//! Stopping a server without failing a request (graceful handover). Once draining, a
//! request the kernel hands over is left unanswered, neither served nor failed: the
//! kernel keeps it, and the successor receives it again (FUSE_NOTIFY_RESEND). Requests
//! already running finish; [`DrainControl::wait_idle`] says when none is left.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    running: AtomicUsize,
}

/// Shared between a server's control loop and its FUSE adapter. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DrainControl {
    inner: Arc<Inner>,
}

/// Counts one running request until dropped.
pub(crate) struct Running(DrainControl);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.inner.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DrainControl {
    /// A request arrives: `Some` while it may run (hold it until the request is
    /// answered), `None` once draining (leave the request unanswered).
    pub(crate) fn admit(&self) -> Option<Running> {
        // Counted before the flag is read: a drain that saw no request running cannot
        // miss one that was admitted.
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.clone());
        if self.inner.draining.load(Ordering::SeqCst) {
            return None;
        }
        Some(running)
    }

    /// Stops admitting requests.
    pub fn begin(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`DrainControl::begin`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Waits until no admitted request is running; false if `timeout` passed first.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.inner.running.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_waits_for_running_requests_and_admits_no_new_ones() {
        let d = DrainControl::default();
        let r = d.admit().expect("admitted before the drain");
        d.begin();
        assert!(d.admit().is_none(), "no request after the drain began");
        assert!(!d.wait_idle(Duration::from_millis(20)), "one request still runs");
        drop(r);
        assert!(d.wait_idle(Duration::from_millis(20)));
    }
}
