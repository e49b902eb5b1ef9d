//! Typed mount options. Names follow s3fs/ossfs where one exists, so option strings of
//! existing PVs keep working; anything unknown is refused with its name (and, for
//! options of other tools, what to use instead), never passed on.

use std::path::PathBuf;
use std::time::Duration;

/// A mount option could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

/// Every knob of a mount, with defaults a user would expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Owner reported for every file and directory; `None` = the stored uid (else 0).
    pub uid: Option<u32>,
    /// Group reported for every file and directory; `None` = the stored gid (else 0).
    pub gid: Option<u32>,
    /// Bits cleared from `file_mode`/`dir_mode`; when given explicitly (`umask=`), from
    /// every mode, stored ones included (a mount-wide lock-down, as s3fs/ossfs mean it).
    pub umask: u32,
    /// Whether `umask` was given explicitly (and so masks stored modes too).
    pub umask_all: bool,
    /// Mode of files without mode metadata.
    pub file_mode: u32,
    /// Mode of directories without mode metadata.
    pub dir_mode: u32,
    /// Let users other than the mounter use the mount (needed for pods).
    pub allow_other: bool,
    /// Refuse every write with EROFS.
    pub read_only: bool,
    /// How long attributes and directory contents are trusted; zero = always ask the store.
    pub stat_cache_ttl: Duration,
    /// How long "no such name" is trusted (negative entries and names missing from a
    /// listing), so a name another client creates is found this soon; zero = always ask.
    pub negative_ttl: Duration,
    /// How long an `open` trusts what the store last said of a file without asking again
    /// (JuiceFS's `open-cache`). The default, 1 s, is close-to-open: what another client
    /// closed is what the next open sees. Longer suits data nobody rewrites (datasets read
    /// epoch after epoch from the read cache): an open then costs no request.
    pub open_cache: Duration,
    /// Bound on cached metadata entries.
    pub max_stat_cache_size: usize,
    /// ListObjects version (1 or 2).
    pub list_type: u8,
    /// Where appends and random writes stage whole objects; `None` = a temp dir.
    pub cache_dir: Option<PathBuf>,
    /// Bound on the staging cache, bytes.
    pub cache_size: u64,
    /// Bound on the node-local read cache, bytes; 0 = no read cache.
    pub read_cache_size: u64,
    /// Where the read cache keeps its blocks; `None` = a directory per volume chosen by
    /// [`MountOptions::read_cache`] (in CSI mode the node plugin always chooses it).
    pub read_cache_dir: Option<PathBuf>,
    /// Share of the read cache's filesystem left free, in thousandths (`free_space_ratio`).
    pub free_space_permille: u32,
    /// Largest prefetch window for sequential reads, bytes.
    pub read_ahead: u64,
    /// Multipart part size, bytes (≥ 5 MiB).
    pub part_size: u64,
    /// Parts uploaded in parallel per file.
    pub upload_concurrency: usize,
    /// Storage class for new objects.
    pub storage_class: Option<String>,
    /// Server-side encryption for new objects (`AES256`, `aws:kms`).
    pub sse: Option<String>,
    /// Set Content-Type from the file extension.
    pub mime: bool,
    /// Take attributes of listed entries from the listing (one LIST per 1000 entries, no
    /// request per entry) instead of each object's own metadata. Faster `ls -l`; until the
    /// listing's attributes expire, mode/owner/mtime shown for listed files are the mount's
    /// defaults (access is still checked against the object's own mode at open).
    pub list_attrs: bool,
    /// Memory the mount process should stay under; part buffers and read-ahead share
    /// it less a fixed 128 MiB for everything else. Under pressure read-ahead shrinks
    /// first, then writers wait for buffers.
    pub memory_limit: u64,
    /// Times a failed request (throttled, 5xx, reset, timed out) is tried again, with
    /// jittered exponential backoff (1 s doubling to at most 20 s) between attempts.
    pub retries: u32,
    /// An attempt with no answer (headers) after this long is abandoned and retried.
    pub request_timeout: Duration,
    /// A download that receives no bytes for this long is abandoned and resumed from the
    /// first missing byte (a stalled connection never hangs a read).
    pub readwrite_timeout: Duration,
    /// Verbose logging of filesystem operations.
    pub debug: bool,
}

const MIB: u64 = 1024 * 1024;

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            uid: None,
            gid: None,
            umask: 0o022,
            umask_all: false,
            file_mode: 0o644,
            dir_mode: 0o755,
            allow_other: false,
            read_only: false,
            stat_cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(1),
            open_cache: crate::inode::OPEN_REVALIDATE,
            max_stat_cache_size: 100_000,
            list_type: 2,
            cache_dir: None,
            cache_size: 1024 * MIB,
            read_cache_size: 0,
            read_cache_dir: None,
            free_space_permille: 100,
            read_ahead: 64 * MIB,
            part_size: 8 * MIB,
            upload_concurrency: 8,
            storage_class: None,
            sse: None,
            mime: true,
            list_attrs: false,
            memory_limit: 512 * MIB,
            retries: 4,
            request_timeout: Duration::from_secs(120),
            readwrite_timeout: Duration::from_secs(30),
            debug: false,
        }
    }
}

/// Options of other tools that we recognise, with what to do instead.
const FOREIGN: &[(&str, &str)] = &[
    ("url", "set the endpoint with the volume attribute `endpoint` (or `url`), not a mount option"),
    ("endpoint", "set the endpoint with the volume attribute `endpoint`, not a mount option"),
    ("passwd_file", "put keys in the node-stage Secret (accessKeyID/secretAccessKey)"),
    ("bucket", "the bucket comes from the volume handle or the `bucket` attribute"),
    ("use_path_request_style", "use the attribute addressingStyle=path (the default)"),
    ("sigv2", "s3vol signs with SigV4 only"),
    ("iam_role", "leave the Secret out to use the default AWS credential chain (IRSA, instance role)"),
    ("use_cache", "use cache_dir"),
    ("multipart_size", "use part_size (MiB)"),
    ("parallel_count", "use upload_concurrency"),
    ("stat_cache_expire", "use stat_cache_ttl (seconds)"),
    ("memory-limit", "use memory_limit (MiB)"),
    ("dir-mode", "use dir_mode"),
    ("file-mode", "use file_mode"),
];

/// What to do instead of option `name` of another tool, when s3vol knows it.
pub(crate) fn foreign_hint(name: &str) -> Option<&'static str> {
    FOREIGN.iter().find(|(f, _)| *f == name).map(|(_, instead)| *instead)
}

/// Options accepted for compatibility that change nothing in s3vol.
const IGNORED: &[&str] = &["rw", "nonempty", "default_permissions", "noatime", "relatime", "_netdev", "auto_unmount"];

fn octal(name: &str, v: &str) -> Result<u32, OptionError> {
    u32::from_str_radix(v.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| OptionError(format!("option {name}={v:?}: expected an octal mode such as 0755")))
}

/// A positive number of seconds (fractions allowed).
fn seconds(name: &str, v: &str) -> Result<Duration, OptionError> {
    // try_from: a value too large for a Duration (1e300) is refused, not a panic.
    v.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| OptionError(format!("option {name}={v:?}: expected a positive number of seconds")))
}

/// A cache lifetime in seconds, where `0` turns the cache off.
fn ttl(name: &str, v: &str) -> Result<Duration, OptionError> {
    if number::<f64>(name, v)? == 0.0 {
        Ok(Duration::ZERO)
    } else {
        seconds(name, v)
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, OptionError> {
    v.parse().map_err(|_| OptionError(format!("option {name}={v:?}: expected a number")))
}

fn flag(name: &str, v: Option<&str>) -> Result<bool, OptionError> {
    match v {
        None | Some("true") | Some("on") | Some("1") => Ok(true),
        Some("false") | Some("off") | Some("0") => Ok(false),
        Some(o) => Err(OptionError(format!("option {name}={o:?}: expected on or off"))),
    }
}

impl MountOptions {
    /// Parses options given as separate items, each `name` or `name=value`; an item may
    /// itself be a comma-separated list (`-o uid=1,gid=2`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, OptionError> {
        let mut o = MountOptions::default();
        for item in items
            .iter()
            .flat_map(|s| s.as_ref().split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>())
        {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let need = || value.ok_or_else(|| OptionError(format!("option {name} needs a value ({name}=...)")));
            match name {
                "uid" => o.uid = Some(number(name, need()?)?),
                "gid" => o.gid = Some(number(name, need()?)?),
                "umask" => {
                    o.umask = octal(name, need()?)?;
                    o.umask_all = true;
                }
                "file_mode" => o.file_mode = octal(name, need()?)?,
                "dir_mode" => o.dir_mode = octal(name, need()?)?,
                "mp_umask" => {
                    o.umask = octal(name, need()?)?;
                    o.umask_all = true;
                }
                "allow_other" => o.allow_other = flag(name, value)?,
                "ro" => o.read_only = flag(name, value)?,
                "stat_cache_ttl" => o.stat_cache_ttl = ttl(name, need()?)?,
                "negative_ttl" => o.negative_ttl = ttl(name, need()?)?,
                "open_cache" => o.open_cache = ttl(name, need()?)?,
                "max_stat_cache_size" => o.max_stat_cache_size = number(name, need()?)?,
                "list_type" => {
                    o.list_type = match need()? {
                        "1" => 1,
                        "2" => 2,
                        v => return Err(OptionError(format!("option list_type={v:?}: expected 1 or 2"))),
                    }
                }
                "cache_dir" => o.cache_dir = Some(PathBuf::from(need()?)),
                "cache_size" => o.cache_size = number::<u64>(name, need()?)? * MIB,
                "read_cache_size" => o.read_cache_size = number::<u64>(name, need()?)? * MIB,
                "read_cache_dir" => {
                    let dir = PathBuf::from(need()?);
                    if !dir.is_absolute() {
                        return Err(OptionError(format!(
                            "option read_cache_dir={:?}: expected an absolute path",
                            dir.display()
                        )));
                    }
                    o.read_cache_dir = Some(dir);
                }
                "free_space_ratio" => {
                    let v = need()?;
                    let r = number::<f64>(name, v)?;
                    if !(0.0..1.0).contains(&r) {
                        return Err(OptionError(format!(
                            "option free_space_ratio={v:?}: expected a fraction from 0 to 0.99"
                        )));
                    }
                    o.free_space_permille = (r * 1000.0).round() as u32;
                }
                "read_ahead" => o.read_ahead = number::<u64>(name, need()?)?.max(1) * MIB,
                "part_size" => {
                    let mib: u64 = number(name, need()?)?;
                    if !(5..=5120).contains(&mib) {
                        return Err(OptionError(format!("option part_size={mib}: S3 parts are 5 to 5120 MiB")));
                    }
                    o.part_size = mib * MIB;
                }
                "upload_concurrency" => {
                    o.upload_concurrency = number(name, need()?)?;
                    if o.upload_concurrency == 0 || o.upload_concurrency > 64 {
                        return Err(OptionError(format!(
                            "option upload_concurrency={}: expected 1 to 64",
                            o.upload_concurrency
                        )));
                    }
                }
                "storage_class" => o.storage_class = Some(need()?.to_string()),
                "sse" => o.sse = Some(need()?.to_string()),
                "mime" => o.mime = flag(name, value)?,
                "debug" => o.debug = flag(name, value)?,
                "list_attrs" => o.list_attrs = flag(name, value)?,
                "memory_limit" => o.memory_limit = number::<u64>(name, need()?)?.clamp(144, 1 << 20) * MIB,
                "retries" => o.retries = number::<u32>(name, need()?)?.min(100),
                "request_timeout" => o.request_timeout = seconds(name, need()?)?,
                "readwrite_timeout" => o.readwrite_timeout = seconds(name, need()?)?,
                n if IGNORED.contains(&n) => {}
                n => {
                    let bare = n.trim_start_matches('-');
                    return Err(OptionError(match foreign_hint(bare) {
                        Some(instead) => format!("mount option {n:?} is not supported by s3vol: {instead}"),
                        None => format!(
                            "unknown mount option {n:?} (supported: uid, gid, umask, file_mode, dir_mode, allow_other, ro, stat_cache_ttl, negative_ttl, open_cache, max_stat_cache_size, list_type, cache_dir, cache_size, read_cache_size, read_cache_dir, free_space_ratio, read_ahead, part_size, upload_concurrency, storage_class, sse, mime, list_attrs, memory_limit, retries, request_timeout, readwrite_timeout, debug)"
                        ),
                    }));
                }
            }
        }
        Ok(o)
    }

    /// The read cache of volume `volume` (a name for metrics and for the default
    /// directory), when `read_cache_size` turns one on.
    pub fn read_cache(&self, volume: &str) -> Option<crate::ReadCacheConfig> {
        (self.read_cache_size > 0).then(|| crate::ReadCacheConfig {
            dir: self.read_cache_dir.clone().unwrap_or_else(|| default_read_cache_dir(volume)),
            max_bytes: self.read_cache_size,
            min_free_permille: self.free_space_permille,
            block_size: crate::read_cache::DEFAULT_BLOCK_SIZE,
            volume: volume.to_string(),
        })
    }

    /// Applies the options that shape the store client (listing version, retries,
    /// timeouts): the one place every S3 client of a mount is configured from.
    pub fn tune_store(&self, cfg: &mut s3vol_store::S3Config) {
        cfg.list_v1 = self.list_type == 1;
        cfg.max_attempts = self.retries + 1;
        cfg.attempt_timeout = self.request_timeout;
        cfg.body_timeout = self.readwrite_timeout;
    }

    /// Mode of a file: the mode stored on it (set by chmod or another tool), else
    /// `file_mode`, less the umask. The default umask shapes defaults only, so a mode the
    /// user set reads back as set; an explicit `umask=` masks every mode.
    pub fn file_perm(&self, stored: Option<u32>) -> u32 {
        self.perm(stored, self.file_mode)
    }

    /// Mode of a directory, as [`MountOptions::file_perm`] with `dir_mode`.
    pub fn dir_perm(&self, stored: Option<u32>) -> u32 {
        self.perm(stored, self.dir_mode)
    }

    fn perm(&self, stored: Option<u32>, default: u32) -> u32 {
        match stored {
            Some(m) if !self.umask_all => m & 0o7777,
            Some(m) => m & 0o7777 & !self.umask,
            None => default & 0o7777 & !self.umask,
        }
    }
}

/// The read cache directory of `volume` when none is given: under /var/cache/s3vol for
/// root, else under the user's cache directory; one directory per volume, by a hash of its
/// name (which may hold characters a file name cannot).
pub fn default_read_cache_dir(volume: &str) -> PathBuf {
    use sha2::Digest;
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/cache/s3vol")
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("s3vol")
    };
    let hash = hex::encode(&sha2::Sha256::digest(volume.as_bytes())[..12]);
    base.join("read-cache").join(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_option_forms() {
        let o = MountOptions::parse(&["uid=1000,gid=2000", "umask=0002", "allow_other", "part_size=16"]).unwrap();
        assert_eq!(
            (o.uid, o.gid, o.umask, o.allow_other, o.part_size),
            (Some(1000), Some(2000), 0o002, true, 16 * MIB)
        );
        let o = MountOptions::parse(&["max_stat_cache_size=0", "allow_other", "ro"]).unwrap();
        assert!(o.read_only && o.allow_other && o.max_stat_cache_size == 0);
    }

    #[test]
    fn retries_and_timeouts_reach_the_store_client() {
        let o = MountOptions::parse(&["retries=7,request_timeout=45,readwrite_timeout=2.5"]).unwrap();
        let mut cfg = s3vol_store::S3Config::new(None, "us-east-1", s3vol_store::CredentialSource::DefaultChain);
        o.tune_store(&mut cfg);
        assert_eq!(cfg.max_attempts, 8, "retries count after the first attempt");
        assert_eq!(cfg.attempt_timeout, Duration::from_secs(45));
        assert_eq!(cfg.body_timeout, Duration::from_millis(2500));
        let mut d = s3vol_store::S3Config::new(None, "us-east-1", s3vol_store::CredentialSource::DefaultChain);
        MountOptions::default().tune_store(&mut d);
        assert_eq!((d.max_attempts, d.body_timeout), (5, Duration::from_secs(30)));
        let e = MountOptions::parse(&["readwrite_timeout=0"]).unwrap_err().0;
        assert!(e.contains("readwrite_timeout=\"0\"") && e.contains("positive"), "{e}");
        assert!(MountOptions::parse(&["retries=-1"]).unwrap_err().0.contains("retries"));
        // Found by fuzzing: values too large for a duration panicked.
        for o in ["stat_cache_ttl=1e400", "request_timeout=1e300", "readwrite_timeout=NaN"] {
            let e = MountOptions::parse(&[o]).unwrap_err().0;
            assert!(e.contains(o.split('=').next().unwrap()), "{e}");
        }
        assert_eq!(MountOptions::parse(&["stat_cache_ttl=0"]).unwrap().stat_cache_ttl, Duration::ZERO);
        assert_eq!(MountOptions::parse(&["negative_ttl=0"]).unwrap().negative_ttl, Duration::ZERO);
        assert_eq!(MountOptions::default().negative_ttl, Duration::from_secs(1));
        assert!(MountOptions::parse(&["negative_ttl=-1"]).unwrap_err().0.contains("negative_ttl"));
    }

    #[test]
    fn fstab_and_fuse_options_are_accepted_and_change_nothing() {
        let o =
            MountOptions::parse(&["rw,nonempty,default_permissions,noatime,relatime,_netdev,auto_unmount"]).unwrap();
        assert_eq!(o, MountOptions::default());
    }

    #[test]
    fn tuning_options_take_their_units() {
        let o = MountOptions::parse(&["read_cache_size=2048", "read_cache_dir=/var/cache/x", "free_space_ratio=0.25"])
            .unwrap();
        let rc = o.read_cache("vol-1").expect("read_cache_size turns the read cache on");
        assert_eq!(MountOptions::default().open_cache, Duration::from_secs(1), "close-to-open by default");
        assert_eq!(MountOptions::parse(&["open_cache=3600"]).unwrap().open_cache, Duration::from_secs(3600));
        assert!(MountOptions::parse(&["open_cache=-1"]).unwrap_err().0.contains("open_cache"));
        assert_eq!((rc.max_bytes, rc.dir.to_str(), rc.min_free_permille), (2048 * MIB, Some("/var/cache/x"), 250));
        assert!(MountOptions::default().read_cache("v").is_none(), "off by default");
        let rc = MountOptions::parse(&["read_cache_size=1"]).unwrap().read_cache("a/b").unwrap();
        assert!(rc.dir.ends_with(default_read_cache_dir("a/b").file_name().unwrap()));
        assert_ne!(default_read_cache_dir("a/b"), default_read_cache_dir("a/c"), "one directory per volume");
        for bad in ["free_space_ratio=1.5", "read_cache_dir=relative/dir", "read_cache_size=lots"] {
            let e = MountOptions::parse(&[bad]).unwrap_err().0;
            assert!(e.contains(bad.split('=').next().unwrap()), "{e}");
        }
        let o = MountOptions::parse(&["read_ahead=8", "storage_class=STANDARD_IA", "cache_size=100"]).unwrap();
        assert_eq!(o.read_ahead, 8 * MIB);
        assert_eq!(o.storage_class.as_deref(), Some("STANDARD_IA"));
        assert!(MountOptions::parse(&["read_ahead=lots"]).unwrap_err().0.contains("read_ahead"));
        assert!(MountOptions::parse(&["storage_class"]).is_err(), "storage_class needs a value");
    }

    #[test]
    fn refuses_unknown_and_foreign_options_by_name() {
        let e = MountOptions::parse(&["uid=1", "bogus=3"]).unwrap_err();
        assert!(e.0.contains("\"bogus\""), "{e}");
        let e = MountOptions::parse(&["passwd_file=/etc/x"]).unwrap_err();
        assert!(e.0.contains("passwd_file") && e.0.contains("Secret"), "{e}");
        let e = MountOptions::parse(&["--memory-limit"]).unwrap_err();
        assert!(e.0.contains("--memory-limit"), "{e}");
        let e = MountOptions::parse(&["umask=999"]).unwrap_err();
        assert!(e.0.contains("999"));
        assert!(MountOptions::parse(&["part_size=1"]).is_err());
    }

    #[test]
    fn permissions_apply_umask() {
        let o = MountOptions::parse(&["umask=027", "file_mode=0666"]).unwrap();
        assert_eq!(o.file_perm(None), 0o640);
        assert_eq!(o.dir_perm(None), 0o750);
        // An explicit umask locks the whole mount down, stored modes included.
        assert_eq!(o.dir_perm(Some(0o777)), 0o750);
        // The default umask shapes defaults only: a mode someone set (chmod 0222, 0777)
        // reads back as set (pjdfstest chmod/00).
        let d = MountOptions::default();
        assert_eq!((d.file_perm(None), d.dir_perm(None)), (0o644, 0o755));
        assert_eq!(d.file_perm(Some(0o222)), 0o222);
        assert_eq!(d.dir_perm(Some(0o777)), 0o777);
    }
}
