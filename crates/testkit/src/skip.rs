//! What a test does when this machine cannot run it (not root, no /dev/fuse, no moto): it
//! fails, so a green run means the test ran. A developer who knows may opt out with
//! `S3VOL_ALLOW_SKIP=1`; the test then says SKIPPED (visible with `--nocapture` and in
//! the failure-free summary it still counts as passed, so never set it in CI).

/// Returns when skipping is allowed (after saying so); panics with `reason` otherwise.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("S3VOL_ALLOW_SKIP").as_deref() == Ok("1") && std::env::var("CI").is_err() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    panic!(
        "{reason}. Run as root with /dev/fuse under scripts/with-moto.sh (what `make test` does), or set S3VOL_ALLOW_SKIP=1 to skip knowingly (never in CI)"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    #[should_panic(expected = "S3VOL_ALLOW_SKIP=1")]
    fn a_test_that_cannot_run_fails_unless_told_otherwise() {
        // The only test in this crate that touches the variable.
        std::env::remove_var("S3VOL_ALLOW_SKIP");
        super::skip_or_fail("needs something this machine lacks");
    }
}
