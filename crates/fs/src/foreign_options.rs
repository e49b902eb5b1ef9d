//! Option strings written for other mount tools (geesefs and rclone flags in k8s-csi-s3's
//! `options`, s3fs/ossfs `-o` items in the Alibaba driver's `otherOpts`, cosfs
//! `additional_args`). Existing PVs carry them, and such a PV must still mount after only
//! its `driver:` changed: options that have a meaning in s3vol become typed options, tuning
//! options of the other tool are ignored (and reported, so the volume can log them once),
//! and only options that would point the mount at other data or other credentials are
//! refused, since silently ignoring those could mount the wrong thing.

use std::time::Duration;

use crate::options::OptionError;

/// What became of a foreign option string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translated {
    /// Typed s3vol option items (`name=value`), ready for `MountOptions::parse`.
    pub items: Vec<String>,
    /// Options with no meaning in s3vol, as written, for one log line per volume.
    pub ignored: Vec<String>,
}

/// What one foreign option means to s3vol.
enum Meaning {
    /// This typed option item.
    Typed(String),
    /// Nothing: a tuning knob of the other tool.
    Ignored,
    /// Refused: the reason, naming what to use instead.
    Refused(&'static str),
}

/// Options that name where the data is or which keys open it: refused (with the hint
/// `options.rs` keeps for them), never ignored.
const REFUSED: &[&str] = &["url", "endpoint", "passwd_file", "bucket"];

/// Flags of geesefs/goofys/rclone that take a value as the next word.
const TAKES_VALUE: &[&str] = &[
    "memory-limit",
    "dir-mode",
    "file-mode",
    "dir-perms",
    "file-perms",
    "uid",
    "gid",
    "umask",
    "max-flushers",
    "max-parallel-parts",
    "max-parallel-copy",
    "read-ahead",
    "read-ahead-large",
    "stat-cache-ttl",
    "type-cache-ttl",
    "http-timeout",
    "part-sizes",
    "cache",
    "cache-dir",
    "dir-cache-time",
    "vfs-cache-mode",
    "vfs-cache-max-size",
    "vfs-read-chunk-size",
    "buffer-size",
    "region",
    "endpoint",
    "profile",
    "sse",
    "storage-class",
    "o",
];

/// Translates one option string of another tool. Fails only for options that would
/// change which data is mounted or with which credentials.
pub fn translate_foreign(s: &str) -> Result<Translated, OptionError> {
    let mut out = Translated::default();
    let mut words = s.split_whitespace().peekable();
    while let Some(w) = words.next() {
        // `-o a=b,c`, `-oa=b`: s3fs-style items.
        let o_items = if w == "-o" {
            Some(words.next().unwrap_or_default().to_string())
        } else {
            w.strip_prefix("-o").filter(|r| !r.is_empty() && !w.starts_with("--")).map(str::to_string)
        };
        if let Some(items) = o_items {
            for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (name, value) = split_item(item);
                apply(&mut out, item, s3fs_item(name, value))?;
            }
            continue;
        }
        if let Some(flag) = w.strip_prefix('-') {
            let flag = flag.trim_start_matches('-');
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let value = match inline {
                Some(v) => Some(v),
                None if TAKES_VALUE.contains(&name) && words.peek().is_some_and(|n| !n.starts_with('-')) => {
                    words.next().map(str::to_string)
                }
                None => None,
            };
            let written = match &value {
                Some(v) => format!("{w} {v}"),
                None => w.to_string(),
            };
            apply(&mut out, &written, long_flag(name, value.as_deref()))?;
            continue;
        }
        // A bare word: an s3fs-style item without `-o` (some PVs list them that way).
        let (name, value) = split_item(w);
        apply(&mut out, w, s3fs_item(name, value))?;
    }
    Ok(out)
}

fn split_item(item: &str) -> (&str, Option<&str>) {
    match item.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (item.trim(), None),
    }
}

fn apply(out: &mut Translated, written: &str, meaning: Meaning) -> Result<(), OptionError> {
    match meaning {
        Meaning::Typed(item) => {
            // A value the typed parser refuses is a tuning value of the other tool's
            // syntax: ignored like any other tuning option, never fatal.
            if crate::options::MountOptions::parse(std::slice::from_ref(&item)).is_ok() {
                out.items.push(item);
            } else {
                out.ignored.push(written.to_string());
            }
        }
        Meaning::Ignored => out.ignored.push(written.to_string()),
        Meaning::Refused(instead) => {
            return Err(OptionError(format!("option {written:?} is not accepted by s3vol: {instead}")))
        }
    }
    Ok(())
}

fn refused(name: &str) -> Option<Meaning> {
    if !REFUSED.contains(&name) {
        return None;
    }
    crate::options::foreign_hint(name).map(Meaning::Refused)
}

fn typed(name: &str, value: Option<&str>) -> Meaning {
    match value {
        Some(v) => Meaning::Typed(format!("{name}={v}")),
        None => Meaning::Typed(name.to_string()),
    }
}

/// An s3fs/ossfs/cosfs `-o` item.
fn s3fs_item(name: &str, value: Option<&str>) -> Meaning {
    if let Some(r) = refused(name) {
        return r;
    }
    match name {
        "allow_other"
        | "ro"
        | "uid"
        | "gid"
        | "umask"
        | "mp_umask"
        | "max_stat_cache_size"
        | "storage_class"
        | "dir_mode"
        | "file_mode"
        | "retries"
        | "readwrite_timeout" => typed(name, value),
        "stat_cache_expire" => match value {
            Some(v) => Meaning::Typed(format!("stat_cache_ttl={v}")),
            None => Meaning::Ignored,
        },
        "multipart_size" => match value {
            Some(v) => Meaning::Typed(format!("part_size={v}")),
            None => Meaning::Ignored,
        },
        "parallel_count" => match value {
            Some(v) => Meaning::Typed(format!("upload_concurrency={v}")),
            None => Meaning::Ignored,
        },
        _ => Meaning::Ignored,
    }
}

/// A long flag of geesefs, goofys or rclone (`--dir-mode 0777`).
fn long_flag(name: &str, value: Option<&str>) -> Meaning {
    if let Some(r) = refused(name) {
        return r;
    }
    match name {
        "dir-mode" | "dir-perms" => typed("dir_mode", value),
        "file-mode" | "file-perms" => typed("file_mode", value),
        "uid" | "gid" | "umask" => typed(name, value),
        "allow-other" | "allow_other" => typed("allow_other", None),
        "read-only" | "ro" => typed("ro", None),
        // geesefs: MiB of buffers, the same meaning as ours.
        "memory-limit" => match value {
            Some(v) => Meaning::Typed(format!("memory_limit={v}")),
            None => Meaning::Ignored,
        },
        "stat-cache-ttl" | "dir-cache-time" => match value.and_then(parse_duration) {
            Some(d) => Meaning::Typed(format!("stat_cache_ttl={}", d.as_secs_f64())),
            None => Meaning::Ignored,
        },
        _ => Meaning::Ignored,
    }
}

/// Go-style durations as geesefs and rclone write them: `30s`, `1m`, `1m30s`, `500ms`, `2h`.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" | "" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    // try_from: a duration too large for the clock is not one (never a panic).
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MountOptions;

    #[test]
    fn k8s_csi_s3_chart_default_maps_modes_and_memory_limit() {
        let t = translate_foreign("--memory-limit 1000 --dir-mode 0777 --file-mode 0666").unwrap();
        assert_eq!(t.items, vec!["memory_limit=1000", "dir_mode=0777", "file_mode=0666"]);
        assert!(t.ignored.is_empty(), "{:?}", t.ignored);
        let o = MountOptions::parse(&t.items).unwrap();
        assert_eq!((o.dir_mode, o.file_mode, o.memory_limit), (0o777, 0o666, 1000 << 20));
        // A duration beyond the clock's range panicked.
        assert!(translate_foreign("--stat-cache-ttl 99999999999999999999999999s").unwrap().items.is_empty());
    }

    #[test]
    fn s3fs_and_rclone_options_map_or_are_ignored() {
        let t = translate_foreign(
            "-o allow_other -o umask=0002,mp_umask=0002 -o use_cache=/tmp -o stat_cache_expire=30 \
             --vfs-cache-mode writes --allow-other --uid=1000 --dir-cache-time 1m30s -o enable_noobj_cache \
             -o retries=7,readwrite_timeout=60,connect_timeout=10",
        )
        .unwrap();
        assert_eq!(
            t.items,
            vec![
                "allow_other",
                "umask=0002",
                "mp_umask=0002",
                "stat_cache_ttl=30",
                "allow_other",
                "uid=1000",
                "stat_cache_ttl=90",
                "retries=7",
                "readwrite_timeout=60"
            ]
        );
        assert_eq!(
            t.ignored,
            vec!["use_cache=/tmp", "--vfs-cache-mode writes", "enable_noobj_cache", "connect_timeout=10"]
        );
        MountOptions::parse(&t.items).unwrap();
    }

    #[test]
    fn a_bad_foreign_value_is_ignored_not_fatal() {
        let t = translate_foreign("-o multipart_size=1 -o uid=alice").unwrap();
        assert!(t.items.is_empty(), "{t:?}");
        assert_eq!(t.ignored, vec!["multipart_size=1", "uid=alice"]);
    }

    #[test]
    fn location_and_credential_options_are_refused_by_name() {
        for s in ["-o url=http://other:9000", "--endpoint http://x", "-o passwd_file=/etc/passwd-s3fs"] {
            let e = translate_foreign(s).unwrap_err();
            assert!(e.0.contains(s.split_whitespace().last().unwrap().split('=').next().unwrap()), "{s}: {e}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2x"), None);
    }
}
