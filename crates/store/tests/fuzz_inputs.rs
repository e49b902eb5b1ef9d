//! Property-based fuzzing (issue 13 §3) of store locations (`s3://bucket/prefix`,
//! `file:///dir`), as `s3vol mount` and `s3vol check` take them from the command line.
//! No input may panic; a refusal quotes the location and says what to use.

use proptest::prelude::*;
use s3vol_store::Location;

fn config() -> ProptestConfig {
    let cases = std::env::var("S3VOL_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn locations(url in prop_oneof![".{0,60}", "(s3|file|S3|http)://[a-zA-Z0-9./_-]{0,40}", "s3://[a-z0-9.-]{0,70}(/[^/]{0,10}){0,4}/?"]) {
        match Location::parse(&url) {
            Ok(loc) => prop_assert!(loc.prefix.is_empty() || loc.prefix.ends_with('/'), "{loc:?}"),
            Err(e) => prop_assert!(e.to_string().contains(&format!("{url:?}")), "{e}"),
        }
    }
}
