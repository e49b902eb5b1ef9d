//! What this mount knows each directory holds, from its listings and its own changes.
//!
//! A listing answers lookups of names in the key range it covered without a request (a
//! negative cache for that range, trusted for `negative_ttl`, so a name another client
//! creates is found within it; the kinds it showed are trusted for `stat_cache_ttl`): a
//! directory listed to its
//! end covers every name; one page listed from a missed name on covers the names up to
//! its last key, which is where the next names of a program creating files usually fall.
//! Such a program pays for one listing page instead of a HEAD and a LIST per new name.
//! Names a listing showed as plain objects let a lookup skip its directory check.
//! Changes made while a listing is in flight are replayed over its result, so a file
//! created during the listing is never reported absent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::attr::FileKind;

/// A listing that has not delivered a page for this long is abandoned (a reader that
/// stopped half way); another listing may then take its place.
const ABANDONED_AFTER: Duration = Duration::from_secs(30);

/// Per-directory knowledge, bounded in total entries.
pub struct DirIndex {
    ttl: Duration,
    absent_ttl: Duration,
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    dirs: HashMap<u64, Known>,
    /// Lookups that found nothing, per directory: (first of the current run, how many).
    misses: HashMap<u64, (Instant, u32)>,
    next_build: u64,
}

/// From this `negative_ttl` on, a listing is trusted long enough to pay for itself after
/// one missed lookup; below it, only a second miss within that time (a burst of new names)
/// starts one.
const LONG_TTL: Duration = Duration::from_secs(10);

struct Known {
    names: HashMap<String, FileKind>,
    /// Key ranges `names` holds every name of, each until its listing expires.
    covers: Vec<Cover>,
    /// Until when `names` (complete or not) is trusted at all.
    seen_until: Instant,
    build: Option<Build>,
    /// No background listing before this: the last one took longer than it stays fresh.
    quiet_until: Option<Instant>,
    /// When a refresh of an ageing range was last handed out (one at a time).
    refresh_at: Option<Instant>,
}

/// A key range (relative to the directory) a listing saw all of.
struct Cover {
    /// Exclusive start (the listing's start-after); `None` = from the first name.
    after: Option<String>,
    /// Inclusive end: the page's last key or common prefix (`p/`); `None` = to the end.
    upto: Option<String>,
    until: Instant,
}

/// Ranges held per directory; the oldest goes first.
const MAX_COVERS: usize = 8;

impl Cover {
    /// Whether the entry `name` itself sorts inside the range.
    fn spans(&self, name: &str) -> bool {
        self.after.as_deref().is_none_or(|a| a < name) && self.upto.as_deref().is_none_or(|u| name <= u)
    }

    /// Whether `name` and every key below `name/` lie in the range.
    fn holds(&self, name: &str, now: Instant) -> bool {
        let dir_form = format!("{name}/");
        self.until > now
            && self.after.as_deref().is_none_or(|a| a < name)
            && self.upto.as_deref().is_none_or(|u| u > dir_form.as_str() && !u.starts_with(&dir_form))
    }
}

/// A listing in flight: what its pages showed, and what changed since it started.
struct Build {
    id: u64,
    after: Option<String>,
    started: Instant,
    touched: Instant,
    names: HashMap<String, FileKind>,
    journal: Vec<(String, Option<FileKind>)>,
}

impl Known {
    fn new(now: Instant) -> Self {
        Known {
            names: HashMap::new(),
            covers: Vec::new(),
            seen_until: now,
            build: None,
            quiet_until: None,
            refresh_at: None,
        }
    }

    fn covered(&self, name: &str, now: Instant) -> bool {
        self.covers.iter().any(|c| c.holds(name, now))
    }

    fn building(&self, now: Instant) -> bool {
        self.build.as_ref().is_some_and(|b| now.duration_since(b.touched) < ABANDONED_AFTER)
    }
}

impl DirIndex {
    /// An index trusting what listings showed for `ttl` (zero: never), what they did not
    /// show for `absent_ttl` (zero: never), and holding at most `cap` names.
    pub fn new(ttl: Duration, absent_ttl: Duration, cap: usize) -> Self {
        let absent_ttl = if ttl.is_zero() { Duration::ZERO } else { absent_ttl };
        DirIndex { ttl, absent_ttl, cap: cap.max(1000), inner: Mutex::new(Inner::default()) }
    }

    /// When the range that answered `name` absent is past half its life, the place to
    /// list it again from (`Some(None)`: the first page), handed out once per range
    /// lifetime: a directory receiving a burst of new names is listed about once per
    /// `negative_ttl` in the background, and its misses keep being answered without a
    /// request while names other clients create still show within `negative_ttl`.
    pub fn refresh_due(&self, dir: u64, name: &str) -> Option<Option<String>> {
        let now = Instant::now();
        let half = self.absent_ttl / 2;
        let mut inner = self.inner.lock();
        let k = inner.dirs.get_mut(&dir)?;
        if k.building(now) || k.refresh_at.is_some_and(|t| now.duration_since(t) < half) {
            return None;
        }
        let after = k.covers.iter().find(|c| c.holds(name, now) && c.until.duration_since(now) < half)?.after.clone();
        k.refresh_at = Some(now);
        Some(after)
    }

    /// Whether `name` is known not to exist: a fresh listing covered its place (plus this
    /// mount's changes since) and did not hold it.
    pub fn is_absent(&self, dir: u64, name: &str) -> bool {
        let now = Instant::now();
        let inner = self.inner.lock();
        inner.dirs.get(&dir).is_some_and(|k| k.covered(name, now) && !k.names.contains_key(name))
    }

    /// What a fresh listing (or this mount's own change) showed `name` to be. Trusted for
    /// at least [`LONG_TTL`] whatever the TTL: it only spares a lookup the LIST that tells
    /// a plain object from a directory (attributes still follow the TTL), and with a short
    /// TTL an `ls -l` of a large directory would otherwise pay a LIST per name.
    pub fn kind(&self, dir: u64, name: &str) -> Option<FileKind> {
        let now = Instant::now();
        let grace = LONG_TTL.saturating_sub(self.ttl);
        let inner = self.inner.lock();
        inner.dirs.get(&dir).filter(|k| k.seen_until + grace > now).and_then(|k| k.names.get(name).copied())
    }

    /// Whether listing `dir` from `name` on would be worth starting now: no fresh listing
    /// covers `name`, none is running, and the last one did not take longer than it stays
    /// fresh (such a directory is not listed again for ten times as long as that listing
    /// took, at least a minute).
    pub fn wants_listing(&self, dir: u64, name: &str) -> bool {
        if self.absent_ttl.is_zero() {
            return false;
        }
        let now = Instant::now();
        let inner = self.inner.lock();
        inner
            .dirs
            .get(&dir)
            .is_none_or(|k| !k.covered(name, now) && !k.building(now) && k.quiet_until.is_none_or(|t| t <= now))
    }

    /// A lookup of `name` in `dir` found nothing. Returns whether to list the directory
    /// now: when [`DirIndex::wants_listing`], at the first miss with a `negative_ttl` of
    /// 10 s or more, else at the second miss within `negative_ttl`.
    pub fn missed(&self, dir: u64, name: &str) -> bool {
        if self.absent_ttl.is_zero() {
            return false;
        }
        let now = Instant::now();
        {
            let mut inner = self.inner.lock();
            if inner.misses.len() > 10_000 {
                inner.misses.clear();
            }
            let ttl = self.absent_ttl;
            let run = inner.misses.entry(dir).or_insert((now, 0));
            if now.duration_since(run.0) > ttl {
                *run = (now, 0);
            }
            run.1 += 1;
            if run.1 < if ttl >= LONG_TTL { 1 } else { 2 } {
                return false;
            }
        }
        self.wants_listing(dir, name)
    }

    /// Whether a fresh listing of the directory's first page is held (a listing for a
    /// missed name then needs only the page from that name).
    pub fn has_first_page(&self, dir: u64) -> bool {
        let now = Instant::now();
        let inner = self.inner.lock();
        inner.dirs.get(&dir).is_some_and(|k| k.covers.iter().any(|c| c.after.is_none() && c.until > now))
    }

    /// Records what this mount just did or learned: `name` now is `kind`, or is gone.
    pub fn record(&self, dir: u64, name: &str, kind: Option<FileKind>) {
        let mut inner = self.inner.lock();
        let Some(k) = inner.dirs.get_mut(&dir) else { return };
        match kind {
            Some(kind) => k.names.insert(name.to_string(), kind),
            None => k.names.remove(name),
        };
        if let Some(b) = k.build.as_mut() {
            b.journal.push((name.to_string(), kind));
        }
    }

    /// A listing of `dir` starts, after name `after` (`None`: from the first name);
    /// returns its id (`None` when listings are not trusted at all). A newer listing
    /// replaces one in flight.
    pub fn begin(&self, dir: u64, after: Option<&str>) -> Option<u64> {
        if self.ttl.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.next_build += 1;
        let id = inner.next_build;
        let k = inner.dirs.entry(dir).or_insert_with(|| Known::new(now));
        let after = after.map(str::to_string);
        k.build = Some(Build { id, after, started: now, touched: now, names: HashMap::new(), journal: Vec::new() });
        Some(id)
    }

    /// One page of listing `id`. Returns whether the listing is still being recorded
    /// (false once replaced, or once the directory is too large to hold).
    pub fn add_page<'a>(&self, dir: u64, id: u64, entries: impl IntoIterator<Item = (&'a str, FileKind)>) -> bool {
        let now = Instant::now();
        let until = now + self.ttl;
        let cap = self.cap;
        let mut inner = self.inner.lock();
        let Some(k) = inner.dirs.get_mut(&dir) else { return false };
        let Some(b) = k.build.as_mut().filter(|b| b.id == id) else { return false };
        b.touched = now;
        for (name, kind) in entries {
            b.names.insert(name.to_string(), kind);
            k.names.insert(name.to_string(), kind);
        }
        k.seen_until = k.seen_until.max(until);
        if b.names.len() > cap || k.names.len() > cap {
            k.build = None;
            k.names.clear();
            k.covers.clear();
            return false;
        }
        true
    }

    /// Listing `id` of `dir` ended, at its end (`upto` = `None`) or after the page whose
    /// last key or common prefix is `upto`: what it showed, with this mount's changes
    /// since it started replayed over it, is everything in the range it covered.
    pub fn finish(&self, dir: u64, id: u64, upto: Option<&str>) {
        let mut inner = self.inner.lock();
        let Some(k) = inner.dirs.get_mut(&dir) else { return };
        let Some(b) = k.build.take_if(|b| b.id == id) else { return };
        let now = Instant::now();
        let cover = Cover { after: b.after, upto: upto.map(str::to_string), until: b.started + self.absent_ttl };
        // The listing is the truth for its range; this mount's changes since are newer.
        k.names.retain(|n, _| !cover.spans(n));
        k.names.extend(b.names);
        for (name, kind) in b.journal {
            match kind {
                Some(kind) => k.names.insert(name, kind),
                None => k.names.remove(&name),
            };
        }
        k.covers.retain(|c| c.until > now);
        k.covers.push(cover);
        if k.covers.len() > MAX_COVERS {
            k.covers.remove(0);
        }
        k.seen_until = k.seen_until.max(b.started + self.ttl);
        if b.started + self.absent_ttl <= now && !self.absent_ttl.is_zero() {
            let took = now - b.started;
            k.quiet_until = Some(now + (took * 10).max(Duration::from_secs(60)));
        }
        // Bound the total: other directories' knowledge goes first, oldest first.
        let cap = self.cap;
        inner.dirs.retain(|d, k| {
            *d == dir || k.seen_until > now || k.building(now) || k.quiet_until.is_some_and(|t| t > now)
        });
        let mut total: usize = inner.dirs.values().map(|k| k.names.len()).sum();
        if total > cap {
            let mut others: Vec<(Instant, u64)> =
                inner.dirs.iter().filter(|(d, _)| **d != dir).map(|(d, k)| (k.seen_until, *d)).collect();
            others.sort();
            for (_, d) in others {
                if total <= cap {
                    break;
                }
                if let Some(k) = inner.dirs.remove(&d) {
                    total -= k.names.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> DirIndex {
        DirIndex::new(Duration::from_secs(60), Duration::from_secs(60), 1000)
    }

    #[test]
    fn a_finished_listing_answers_absent_names() {
        let ix = index();
        assert!(!ix.is_absent(1, "x"), "nothing is known before a listing");
        let id = ix.begin(1, None).unwrap();
        assert!(ix.add_page(1, id, [("a", FileKind::File), ("d", FileKind::Dir)]));
        assert!(!ix.is_absent(1, "x"), "an unfinished listing proves nothing absent");
        assert_eq!(ix.kind(1, "a"), Some(FileKind::File), "pages give hints before the end");
        ix.finish(1, id, None);
        assert!(ix.is_absent(1, "x"));
        assert!(!ix.is_absent(1, "a"));
        assert!(!ix.is_absent(1, "d"));
        assert!(!ix.is_absent(2, "x"), "another directory is not known");
        assert_eq!(ix.kind(1, "d"), Some(FileKind::Dir));
        assert!(!ix.wants_listing(1, "x"));
        assert!(ix.wants_listing(2, "x"));
    }

    #[test]
    fn a_page_listed_from_a_name_covers_its_key_range_only() {
        let ix = index();
        let id = ix.begin(1, Some("m")).unwrap();
        assert!(ix.add_page(1, id, [("n1", FileKind::File), ("p", FileKind::Dir)]));
        // Truncated after the common prefix `p/`.
        ix.finish(1, id, Some("p/"));
        assert!(ix.is_absent(1, "n2"), "inside the range and not listed");
        assert!(ix.is_absent(1, "o"));
        assert!(!ix.is_absent(1, "n1"));
        assert!(!ix.is_absent(1, "p"), "listed as a directory");
        assert!(!ix.is_absent(1, "m"), "the start itself is not covered");
        assert!(!ix.is_absent(1, "a"), "before the range");
        assert!(!ix.is_absent(1, "q"), "after the range");
        assert!(!ix.is_absent(1, "p0"), "after the range");
        assert!(!ix.wants_listing(1, "n2"));
        // A page ending at `n-x` does not show whether keys below `n/` exist.
        let id = ix.begin(2, Some("a")).unwrap();
        ix.finish(2, id, Some("n-x"));
        assert!(ix.is_absent(2, "b"));
        assert!(!ix.is_absent(2, "n"), "keys under n/ sort after n-x");
        assert!(ix.wants_listing(2, "n"));
        let id = ix.begin(1, Some("a")).unwrap();
        ix.finish(1, id, Some("c"));
        // The last page of a listing from a name covers everything after it.
        let id = ix.begin(1, Some("k")).unwrap();
        ix.add_page(1, id, [("n1", FileKind::File), ("p", FileKind::Dir)]);
        ix.finish(1, id, None);
        assert!(ix.is_absent(1, "zzz"));
        assert!(ix.is_absent(1, "b"), "ranges listed earlier still hold while fresh");
        assert!(!ix.is_absent(1, "n1"));
        // A later listing of a range is the truth for that range.
        let id = ix.begin(1, Some("m")).unwrap();
        ix.add_page(1, id, [("n2", FileKind::File)]);
        ix.finish(1, id, Some("n2"));
        assert!(ix.is_absent(1, "n1"), "gone from the newer listing of its range");
        assert!(!ix.is_absent(1, "n2"));
    }

    #[test]
    fn changes_during_a_listing_are_replayed_over_its_result() {
        let ix = index();
        let id = ix.begin(1, None).unwrap();
        assert!(ix.add_page(1, id, [("a", FileKind::File), ("b", FileKind::File)]));
        // Created after its page was listed, and removed after its page was listed.
        ix.record(1, "new", Some(FileKind::File));
        ix.record(1, "b", None);
        assert!(ix.add_page(1, id, [("c", FileKind::File)]));
        ix.finish(1, id, None);
        assert!(!ix.is_absent(1, "new"), "a file created during the listing must not be reported absent");
        assert!(ix.is_absent(1, "b"), "a file removed during the listing is absent");
        assert!(!ix.is_absent(1, "c"));
        ix.record(1, "later", Some(FileKind::File));
        ix.record(1, "a", None);
        assert!(!ix.is_absent(1, "later"));
        assert!(ix.is_absent(1, "a"));
    }

    #[test]
    fn a_replaced_or_oversized_listing_records_nothing() {
        let ix = index();
        let old = ix.begin(1, None).unwrap();
        let new = ix.begin(1, None).unwrap();
        assert!(!ix.add_page(1, old, [("a", FileKind::File)]), "the older listing must stop");
        ix.finish(1, old, None);
        assert!(!ix.is_absent(1, "x"), "a replaced listing must not complete the directory");
        let many: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
        assert!(!ix.add_page(1, new, many.iter().map(|n| (n.as_str(), FileKind::File))), "over the cap");
        ix.finish(1, new, None);
        assert!(!ix.is_absent(1, "x"));
        assert!(ix.wants_listing(1, "x"));
    }

    #[test]
    fn listings_are_not_trusted_with_a_zero_ttl_or_after_it() {
        let off = DirIndex::new(Duration::ZERO, Duration::from_secs(1), 1000);
        assert!(off.begin(1, None).is_none());
        assert!(!off.wants_listing(1, "x"));
        let short = DirIndex::new(Duration::from_millis(30), Duration::from_millis(30), 1000);
        let id = short.begin(1, None).unwrap();
        short.add_page(1, id, [("a", FileKind::File)]);
        short.finish(1, id, None);
        assert!(short.is_absent(1, "x"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!short.is_absent(1, "x"), "an expired listing proves nothing");
        // What a name was still spares a lookup the directory check for LONG_TTL.
        assert_eq!(short.kind(1, "a"), Some(FileKind::File));
        assert!(short.wants_listing(1, "x"));
    }

    #[test]
    fn a_miss_starts_a_listing_the_second_with_a_short_ttl() {
        let long = index();
        assert!(long.missed(1, "x"), "with a long TTL the first miss lists");
        let ix = DirIndex::new(Duration::from_secs(60), Duration::from_secs(5), 1000);
        assert!(!ix.missed(1, "x"), "one miss is not worth a listing");
        assert!(!ix.missed(2, "x"));
        assert!(ix.missed(1, "x"));
        let id = ix.begin(1, None).unwrap();
        assert!(!ix.missed(1, "x"), "not while one runs");
        assert!(!ix.has_first_page(1));
        ix.finish(1, id, Some("m"));
        assert!(ix.has_first_page(1));
        assert!(!ix.missed(1, "c"), "not while one covers the name");
        assert!(ix.missed(1, "x"), "a name after the listed range");
        let short = DirIndex::new(Duration::from_secs(60), Duration::from_millis(20), 1000);
        assert!(!short.missed(1, "x"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!short.missed(1, "x"), "misses further apart than the TTL are no pattern");
    }

    #[test]
    fn a_directory_slower_to_list_than_the_ttl_is_not_listed_again_soon() {
        let ix = DirIndex::new(Duration::from_secs(60), Duration::from_millis(20), 1000);
        let id = ix.begin(1, None).unwrap();
        ix.add_page(1, id, [("a", FileKind::File)]);
        std::thread::sleep(Duration::from_millis(30));
        ix.finish(1, id, None);
        assert!(!ix.is_absent(1, "x"), "born expired");
        assert!(!ix.wants_listing(1, "x"), "a listing that cannot pay off is not repeated at once");
        assert!(ix.wants_listing(2, "x"));
    }

    #[test]
    fn finishing_a_listing_evicts_other_directories_over_the_cap() {
        let ix = index();
        for dir in 1..=3u64 {
            let id = ix.begin(dir, None).unwrap();
            let names: Vec<String> = (0..400).map(|i| format!("f{i}")).collect();
            assert!(ix.add_page(dir, id, names.iter().map(|n| (n.as_str(), FileKind::File))));
            ix.finish(dir, id, None);
        }
        assert!(ix.is_absent(3, "x"), "the newest directory is kept");
        assert!(!ix.is_absent(1, "x"), "the oldest directory was evicted to stay under the cap");
    }
}
