//! What this mount knows each directory holds, from its listings and its own changes.
//!
//! A directory listed to its end answers lookups of names it does not hold without a
//! request (a negative cache for the whole directory, trusted for `stat_cache_ttl`), so a
//! program creating many files pays for one listing instead of a HEAD and a LIST per
//! new name. Names a listing showed as plain objects let a lookup skip its directory
//! check. Changes made while a listing is in flight are replayed over its result, so a
//! file created during the listing is never reported absent.

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

/// Misses in one directory, within `stat_cache_ttl`, that start a listing of it: a single
/// miss (before writing one file) does not pay for listing a large directory.
const MISSES_BEFORE_LISTING: u32 = 2;

struct Known {
    names: HashMap<String, FileKind>,
    /// Until when `names` is everything the directory holds.
    complete_until: Option<Instant>,
    /// Until when `names` (complete or not) is trusted at all.
    seen_until: Instant,
    build: Option<Build>,
    /// No background listing before this: the last one took longer than it stays fresh.
    quiet_until: Option<Instant>,
}

/// A listing in flight: what its pages showed, and what changed since it started.
struct Build {
    id: u64,
    started: Instant,
    touched: Instant,
    names: HashMap<String, FileKind>,
    journal: Vec<(String, Option<FileKind>)>,
}

impl Known {
    fn new(now: Instant) -> Self {
        Known { names: HashMap::new(), complete_until: None, seen_until: now, build: None, quiet_until: None }
    }

    fn building(&self, now: Instant) -> bool {
        self.build.as_ref().is_some_and(|b| now.duration_since(b.touched) < ABANDONED_AFTER)
    }
}

impl DirIndex {
    /// An index trusting listings for `ttl` (zero: never) and holding at most `cap` names.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        DirIndex { ttl, cap: cap.max(1000), inner: Mutex::new(Inner::default()) }
    }

    /// Whether `name` is known not to exist: the directory's last full listing (plus this
    /// mount's changes since) is fresh and does not hold it.
    pub fn is_absent(&self, dir: u64, name: &str) -> bool {
        let now = Instant::now();
        let inner = self.inner.lock();
        inner.dirs.get(&dir).is_some_and(|k| k.complete_until.is_some_and(|t| t > now) && !k.names.contains_key(name))
    }

    /// What a fresh listing (or this mount's own change) showed `name` to be.
    pub fn kind(&self, dir: u64, name: &str) -> Option<FileKind> {
        let now = Instant::now();
        let inner = self.inner.lock();
        inner.dirs.get(&dir).filter(|k| k.seen_until > now).and_then(|k| k.names.get(name).copied())
    }

    /// Whether a full listing of `dir` would be worth starting now: none is fresh, none
    /// is running, and the last one did not take longer than it stays fresh (a directory
    /// too large to list within `stat_cache_ttl` is not listed again for ten times as long
    /// as that listing took, at least a minute).
    pub fn wants_listing(&self, dir: u64) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let now = Instant::now();
        let inner = self.inner.lock();
        inner.dirs.get(&dir).is_none_or(|k| {
            k.complete_until.is_none_or(|t| t <= now) && !k.building(now) && k.quiet_until.is_none_or(|t| t <= now)
        })
    }

    /// A lookup in `dir` found nothing. Returns whether to list the directory now: on the
    /// second miss within `stat_cache_ttl`, when [`DirIndex::wants_listing`].
    pub fn missed(&self, dir: u64) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let now = Instant::now();
        {
            let mut inner = self.inner.lock();
            if inner.misses.len() > 10_000 {
                inner.misses.clear();
            }
            let ttl = self.ttl;
            let run = inner.misses.entry(dir).or_insert((now, 0));
            if now.duration_since(run.0) > ttl {
                *run = (now, 0);
            }
            run.1 += 1;
            if run.1 < MISSES_BEFORE_LISTING {
                return false;
            }
        }
        self.wants_listing(dir)
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

    /// A listing of `dir` starts at its first page; returns its id (`None` when listings
    /// are not trusted at all). A newer listing replaces one in flight.
    pub fn begin(&self, dir: u64) -> Option<u64> {
        if self.ttl.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.next_build += 1;
        let id = inner.next_build;
        let k = inner.dirs.entry(dir).or_insert_with(|| Known::new(now));
        k.build = Some(Build { id, started: now, touched: now, names: HashMap::new(), journal: Vec::new() });
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
            k.complete_until = None;
            return false;
        }
        true
    }

    /// Listing `id` reached the end of `dir`: what it showed, with this mount's changes
    /// since it started replayed over it, is now the whole directory.
    pub fn finish(&self, dir: u64, id: u64) {
        let mut inner = self.inner.lock();
        let Some(k) = inner.dirs.get_mut(&dir) else { return };
        let Some(b) = k.build.take_if(|b| b.id == id) else { return };
        let mut names = b.names;
        for (name, kind) in b.journal {
            match kind {
                Some(kind) => names.insert(name, kind),
                None => names.remove(&name),
            };
        }
        k.names = names;
        k.complete_until = Some(b.started + self.ttl);
        k.seen_until = b.started + self.ttl;
        let now = Instant::now();
        if b.started + self.ttl <= now {
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
        DirIndex::new(Duration::from_secs(60), 1000)
    }

    #[test]
    fn a_finished_listing_answers_absent_names() {
        let ix = index();
        assert!(!ix.is_absent(1, "x"), "nothing is known before a listing");
        let id = ix.begin(1).unwrap();
        assert!(ix.add_page(1, id, [("a", FileKind::File), ("d", FileKind::Dir)]));
        assert!(!ix.is_absent(1, "x"), "an unfinished listing proves nothing absent");
        assert_eq!(ix.kind(1, "a"), Some(FileKind::File), "pages give hints before the end");
        ix.finish(1, id);
        assert!(ix.is_absent(1, "x"));
        assert!(!ix.is_absent(1, "a"));
        assert!(!ix.is_absent(1, "d"));
        assert!(!ix.is_absent(2, "x"), "another directory is not known");
        assert_eq!(ix.kind(1, "d"), Some(FileKind::Dir));
        assert!(!ix.wants_listing(1));
        assert!(ix.wants_listing(2));
    }

    #[test]
    fn changes_during_a_listing_are_replayed_over_its_result() {
        let ix = index();
        let id = ix.begin(1).unwrap();
        assert!(ix.add_page(1, id, [("a", FileKind::File), ("b", FileKind::File)]));
        // Created after its page was listed, and removed after its page was listed.
        ix.record(1, "new", Some(FileKind::File));
        ix.record(1, "b", None);
        assert!(ix.add_page(1, id, [("c", FileKind::File)]));
        ix.finish(1, id);
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
        let old = ix.begin(1).unwrap();
        let new = ix.begin(1).unwrap();
        assert!(!ix.add_page(1, old, [("a", FileKind::File)]), "the older listing must stop");
        ix.finish(1, old);
        assert!(!ix.is_absent(1, "x"), "a replaced listing must not complete the directory");
        let many: Vec<String> = (0..1001).map(|i| format!("f{i}")).collect();
        assert!(!ix.add_page(1, new, many.iter().map(|n| (n.as_str(), FileKind::File))), "over the cap");
        ix.finish(1, new);
        assert!(!ix.is_absent(1, "x"));
        assert!(ix.wants_listing(1));
    }

    #[test]
    fn listings_are_not_trusted_with_a_zero_ttl_or_after_it() {
        let off = DirIndex::new(Duration::ZERO, 1000);
        assert!(off.begin(1).is_none());
        assert!(!off.wants_listing(1));
        let short = DirIndex::new(Duration::from_millis(30), 1000);
        let id = short.begin(1).unwrap();
        short.add_page(1, id, [("a", FileKind::File)]);
        short.finish(1, id);
        assert!(short.is_absent(1, "x"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!short.is_absent(1, "x"), "an expired listing proves nothing");
        assert_eq!(short.kind(1, "a"), None);
        assert!(short.wants_listing(1));
    }

    #[test]
    fn the_second_miss_in_a_directory_starts_a_listing() {
        let ix = index();
        assert!(!ix.missed(1), "one miss is not worth a listing");
        assert!(!ix.missed(2));
        assert!(ix.missed(1));
        let id = ix.begin(1).unwrap();
        assert!(!ix.missed(1), "not while one runs");
        ix.finish(1, id);
        assert!(!ix.missed(1), "not while one is fresh");
        let short = DirIndex::new(Duration::from_millis(20), 1000);
        assert!(!short.missed(1));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!short.missed(1), "misses further apart than the TTL are no pattern");
    }

    #[test]
    fn a_directory_slower_to_list_than_the_ttl_is_not_listed_again_soon() {
        let ix = DirIndex::new(Duration::from_millis(20), 1000);
        let id = ix.begin(1).unwrap();
        ix.add_page(1, id, [("a", FileKind::File)]);
        std::thread::sleep(Duration::from_millis(30));
        ix.finish(1, id);
        assert!(!ix.is_absent(1, "x"), "born expired");
        assert!(!ix.wants_listing(1), "a listing that cannot pay off is not repeated at once");
        assert!(ix.wants_listing(2));
    }

    #[test]
    fn finishing_a_listing_evicts_other_directories_over_the_cap() {
        let ix = index();
        for dir in 1..=3u64 {
            let id = ix.begin(dir).unwrap();
            let names: Vec<String> = (0..400).map(|i| format!("f{i}")).collect();
            assert!(ix.add_page(dir, id, names.iter().map(|n| (n.as_str(), FileKind::File))));
            ix.finish(dir, id);
        }
        assert!(ix.is_absent(3, "x"), "the newest directory is kept");
        assert!(!ix.is_absent(1, "x"), "the oldest directory was evicted to stay under the cap");
    }
}
