//! Helpers shared by the filesystem core's integration tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use s3vol_fs::{Fs, FsConfig, MountOptions};
use s3vol_store::ObjectStore;

/// The bucket the tests' volumes live in.
pub const B: &str = "bkt";

/// A filesystem over `store` for the volume `vol/` of bucket [`B`].
pub fn fs_over(store: Arc<dyn ObjectStore>, options: MountOptions) -> Fs {
    Fs::new(store, FsConfig { bucket: B.into(), prefix: "vol/".into(), options, capacity: None, hard_quota: false })
}

/// Polls `cond` every 5 ms until it holds; fails the test after 20 s, naming `what`.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
