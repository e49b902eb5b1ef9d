//! Property-based fuzzing (issue 13 §3) of what reaches the driver from outside: volume
//! ids, volume attributes (ours and other drivers'), secrets, StorageClass parameters,
//! capacities and control-socket messages. No input may panic; every refusal is a clear
//! message that names the field it is about. `cargo test` runs a short pass;
//! `make fuzz` sets `S3VOL_FUZZ_CASES=1000000`.

use std::collections::HashMap;

use proptest::prelude::*;
use s3vol_csi::volume::{parse_capacity, ProvisionParams, SecretValues, VolumeId, VolumeSpec, KNOWN_ATTRIBUTES};
use s3vol_handoff::ControlRequest;
use s3vol_store::AddressingStyle;

fn config() -> ProptestConfig {
    let cases = std::env::var("S3VOL_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Values that sit near the edges of what the parsers take.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("true".to_string()),
        Just("bkt".to_string()),
        Just("bkt/pre/fix/".to_string()),
        Just("https://s3.example.com:9000".to_string()),
        Just("oss-cn-hangzhou.aliyuncs.com".to_string()),
        Just("10Gi".to_string()),
        Just("-o allow_other,uid=1000 --foo".to_string()),
        Just("arn:aws:iam::123456789012:role/r".to_string()),
        Just("retain".to_string()),
        "[a-z0-9./:=, -]{0,40}",
        ".{0,40}",
    ]
}

/// Attribute maps: mostly known names (the parsers' real input), some unknown ones.
fn attributes() -> impl Strategy<Value = HashMap<String, String>> {
    let known = proptest::sample::select(KNOWN_ATTRIBUTES.to_vec()).prop_map(str::to_string);
    let key = prop_oneof![8 => known, 1 => "[a-zA-Z./_-]{1,20}"];
    proptest::collection::hash_map(key, value(), 0..8)
}

/// Whether a refusal names what in the input it is about: one of the input's keys, one
/// of its values (the offending value itself), the volume id it was given, or, when the
/// input lacks it, a field that is required (a refusal for what is missing can only name
/// the missing field). A message naming some other field, or only a word like "bucket"
/// that the input never mentions, does not count.
fn names_the_input(msg: &str, keys: &HashMap<String, String>, id: Option<&str>) -> bool {
    // Quoted as errors quote values (`{:?}`, with escapes), or raw when long enough not to
    // match by chance.
    let names = |v: &str| !v.is_empty() && (msg.contains(&format!("{v:?}")) || (v.len() >= 2 && msg.contains(v)));
    let named_key = keys.keys().any(|k| names(k));
    let named_value = keys.values().any(|v| names(v.trim()));
    // The id, or the bucket or prefix part of a `bucket/prefix` handle it was given.
    let named_id = id.is_some_and(|i| {
        let (bucket, prefix) = i.split_once('/').unwrap_or((i, ""));
        [i, bucket, prefix, &format!("{prefix}/")].iter().any(|p| names(p))
    });
    let missing = ["bucket", "accessKeyID", "secretAccessKey", "roleArn"]
        .iter()
        .any(|f| !keys.contains_key(*f) && msg.contains(f));
    named_key || named_value || named_id || missing
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn volume_ids(id in prop_oneof![".{0,80}", "v1\\|[a-z0-9.-]{0,20}\\|[a-z/]{0,20}\\|[a-z0-9-]{0,12}\\|.{0,30}"]) {
        if let Some(v) = VolumeId::parse(&id) {
            // An id has one text: what parses encodes back to exactly the input.
            prop_assert_eq!(v.encode().unwrap(), id);
        }
    }

    /// Any volume made of valid parts round-trips through its id, or is refused for length.
    #[test]
    fn volume_ids_from_parts(bucket in "[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", prefix in "([a-z0-9-]{1,8}/){0,3}",
                             region in "([a-z]{2}-[a-z]{4,8}-[0-9])?", endpoint in "(https://|http://)?([a-z0-9-]{1,12}\\.){0,3}[a-z]{2,6}(:[0-9]{2,5})?",
                             virtual_hosted in any::<bool>()) {
        let endpoint = (!endpoint.is_empty()).then(|| if endpoint.contains("://") { endpoint.clone() } else { format!("https://{endpoint}") });
        let v = VolumeId {
            bucket, prefix, region: (!region.is_empty()).then_some(region), endpoint,
            addressing: if virtual_hosted { AddressingStyle::Virtual } else { AddressingStyle::Path },
        };
        if let Ok(text) = v.encode() {
            prop_assert_eq!(VolumeId::parse(&text), Some(v));
        }
    }

    #[test]
    fn stage_attributes_and_secrets(id in prop_oneof![".{0,40}", "[a-z0-9.-]{3,20}(/[a-z]{1,8})?"],
                                    ctx in attributes(), secret in attributes()) {
        let secrets = SecretValues::from_map(&secret);
        if let Err(e) = &secrets {
            prop_assert!(names_the_input(&e.to_string(), &secret, None), "{e}");
        }
        if let Err(e) = VolumeSpec::resolve(&id, &ctx, &secrets.unwrap_or_default()) {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty() && names_the_input(&msg, &ctx, Some(&id)), "{msg}");
        }
    }

    #[test]
    fn storage_class_parameters(params in attributes()) {
        if let Err(e) = ProvisionParams::parse(&params) {
            prop_assert!(names_the_input(&e.to_string(), &params, None), "{e}");
        }
    }

    #[test]
    fn capacities(s in prop_oneof!["[0-9]{0,25}(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?", ".{0,20}"]) {
        if let Some(n) = parse_capacity(&s) {
            prop_assert!(n >= 0);
        }
    }

    /// A `subPath` the parser accepts is relative and made of plain names only: nothing
    /// it lets through can climb out of the volume or start at `/`.
    #[test]
    fn sub_paths(v in prop_oneof!["[a-z./]{0,30}", "(\\.\\.|[a-z]{1,3}|\\.|)(/(\\.\\.|[a-z]{1,3}|\\.|)){0,5}/?", ".{0,40}"]) {
        let ctx: HashMap<String, String> = [("subPath".to_string(), v.clone())].into();
        match s3vol_csi::volume::sub_path(&ctx) {
            Ok(Some(p)) => {
                prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))), "{v:?} -> {p:?}");
                prop_assert!(p.components().count() > 0);
            }
            Ok(None) => prop_assert!(v.trim_end_matches('/').is_empty(), "{v:?} ignored"),
            Err(e) => prop_assert!(e.to_string().contains("subPath"), "{e}"),
        }
    }

    #[test]
    fn control_socket_messages(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "\\{\"op\":\"(serve|ping|metrics|rotate|resize|handover|stop)\"(,\"[a-z_]{1,12}\":(1|\"x\"|null|\\[\\]|\\{\\}))*\\}".prop_map(String::into_bytes),
    ]) {
        // Decoding is all a server does with a message before acting on it.
        let _ = serde_json::from_slice::<ControlRequest>(&bytes);
    }
}
