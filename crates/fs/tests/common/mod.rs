//! Helpers shared by the filesystem core's integration tests.

use std::time::{Duration, Instant};

/// Polls `cond` every 5 ms until it holds; fails the test after 20 s, naming `what`.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
