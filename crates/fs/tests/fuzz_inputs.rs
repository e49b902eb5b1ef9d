//! Property-based fuzzing (issue 13 §3) of the filesystem's outside inputs: mount option
//! strings (ours, fstab's), other tools' option strings as existing PVs carry them
//! (geesefs, rclone, s3fs/ossfs, cosfs), and the state journal a predecessor left,
//! torn or garbled. No input may panic; a refused option is named in its error.
//! `cargo test` runs a short pass; `make fuzz` sets `S3VOL_FUZZ_CASES=1000000`.

use proptest::prelude::*;
use s3vol_fs::{decode_all, encode, translate_foreign, HandleKind, JournalRecord, MountOptions};

fn config() -> ProptestConfig {
    let cases = std::env::var("S3VOL_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

const NAMES: &[&str] = &[
    "uid",
    "gid",
    "umask",
    "file_mode",
    "dir_mode",
    "allow_other",
    "ro",
    "stat_cache_ttl",
    "max_stat_cache_size",
    "list_type",
    "cache_dir",
    "cache_size",
    "read_ahead",
    "part_size",
    "upload_concurrency",
    "storage_class",
    "sse",
    "mime",
    "list_attrs",
    "retries",
    "request_timeout",
    "readwrite_timeout",
    "debug",
    "mp_umask",
    "rw",
    "noatime",
    "url",
    "passwd_file",
    "use_path_request_style",
    "multipart_size",
    "--memory-limit",
    "--dir-mode",
    "bogus",
];

/// One `name[=value]` item, names from every family the parser meets.
fn item() -> impl Strategy<Value = (String, Option<String>)> {
    let name =
        prop_oneof![4 => proptest::sample::select(NAMES.to_vec()).prop_map(str::to_string), 1 => "[a-z_-]{1,12}"];
    let value = prop_oneof![
        Just("0".to_string()),
        Just("0755".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("NaN".to_string()),
        Just("18446744073709551616".to_string()),
        "[0-9]{1,12}",
        ".{0,16}",
    ];
    (name, proptest::option::of(value))
}

fn record() -> impl Strategy<Value = JournalRecord> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), ".{0,30}").prop_map(|(ino, parent, name)| JournalRecord::Node {
            ino,
            parent,
            kind: s3vol_fs::FileKind::File,
            name
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(fh, ino)| JournalRecord::Open { fh, ino, kind: HandleKind::Write }),
        (any::<u64>(), any::<bool>()).prop_map(|(fh, dirty)| JournalRecord::Dirty { fh, dirty }),
        any::<u64>().prop_map(|fh| JournalRecord::Close { fh }),
        (any::<u64>(), ".{0,30}", "[a-zA-Z0-9]{0,30}").prop_map(|(fh, key, upload_id)| JournalRecord::Upload {
            fh,
            key,
            upload_id
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mount_option_strings(items in proptest::collection::vec(item(), 0..6), joined in any::<bool>()) {
        let strs: Vec<String> =
            items.iter().map(|(n, v)| v.as_ref().map_or(n.clone(), |v| format!("{n}={v}"))).collect();
        let input = if joined { vec![strs.join(",")] } else { strs.clone() };
        if let Err(e) = MountOptions::parse(&input) {
            // The message names one of the options as the parser splits them (a value
            // with a comma in it holds another option).
            let names: Vec<&str> = input
                .iter()
                .flat_map(|s| s.split(','))
                .map(|i| i.split('=').next().unwrap_or("").trim())
                .filter(|n| !n.is_empty())
                .collect();
            prop_assert!(
                names.iter().any(|n| {
                    let bare = n.trim_start_matches('-');
                    // Quoted as Rust does ({:?}), so control characters show.
                    [n.to_string(), bare.to_string(), format!("{n:?}"), format!("{bare:?}")].iter().any(|f| e.0.contains(f.as_str()))
                }),
                "{} for {input:?}",
                e.0
            );
        }
    }

    #[test]
    fn foreign_option_strings(words in proptest::collection::vec(prop_oneof![
        Just("-o".to_string()),
        "--(memory-limit|dir-mode|file-mode|stat-cache-ttl|dir-cache-time|uid|vfs-cache-mode|endpoint|allow-other)(=[0-9a-z.]{0,25})?",
        "-o[a-z_]{1,16}(=[0-9a-z./]{0,25})?",
        "[0-9]{1,30}(ms|s|m|h)?",
        "[a-z_]{1,12}=[^ ]{0,12}",
        "[^ ]{1,12}",
    ], 0..8)) {
        let s = words.join(" ");
        if let Err(e) = translate_foreign(&s) {
            // Only options that point at other data or keys are refused, quoted.
            prop_assert!(["url", "endpoint", "passwd_file", "bucket"].iter().any(|n| e.0.contains(n)), "{e} for {s:?}");
        } else {
            // Whatever it translates, the typed parser takes.
            prop_assert!(MountOptions::parse(&translate_foreign(&s).unwrap().items).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn journals_of_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (_, used) = decode_all(&bytes);
        prop_assert!(used <= bytes.len());
    }

    #[test]
    fn torn_journals_keep_every_whole_record(records in proptest::collection::vec(record(), 0..8), cut in any::<prop::sample::Index>()) {
        let encoded: Vec<Vec<u8>> = records.iter().map(encode).collect();
        let all: Vec<u8> = encoded.concat();
        let at = cut.index(all.len() + 1);
        let (got, used) = decode_all(&all[..at]);
        // Exactly the records wholly before the tear, and the length they fill.
        let mut whole = 0;
        let mut len = 0;
        while whole < encoded.len() && len + encoded[whole].len() <= at {
            len += encoded[whole].len();
            whole += 1;
        }
        prop_assert_eq!(&got[..], &records[..whole]);
        prop_assert_eq!(used, len);
    }
}
