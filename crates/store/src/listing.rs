//! ListObjectsV2 paging and delimiter grouping over an ordered key set, shared by the
//! in-memory and local-directory backends so both page exactly like S3.

use crate::types::{ListPage, ListRequest, ListedObject};

/// Default and maximum page size, as in S3.
const MAX_KEYS: usize = 1000;

/// Builds one page from `entries`, which must be sorted by key.
pub(crate) fn page<'a>(entries: impl IntoIterator<Item = &'a ListedObject>, req: &ListRequest) -> ListPage {
    let limit = req.max_keys.map(|m| (m as usize).min(MAX_KEYS)).unwrap_or(MAX_KEYS);
    let after = match (&req.continuation, &req.start_after) {
        (Some(c), _) => Some(c.as_str()),
        (None, Some(s)) => Some(s.as_str()),
        _ => None,
    };
    let mut out = ListPage::default();
    let mut last_emitted: Option<String> = None;
    let mut emitted = 0usize;
    for obj in entries {
        let key = obj.key.as_str();
        if !key.starts_with(req.prefix.as_str()) {
            continue;
        }
        if let Some(a) = after {
            if key <= a {
                continue;
            }
        }
        let group =
            req.delimiter.as_deref().filter(|d| !d.is_empty()).and_then(|d| {
                key[req.prefix.len()..].find(d).map(|i| key[..req.prefix.len() + i + d.len()].to_string())
            });
        // Keys inside a common prefix already emitted (on this page or, through the
        // continuation token, on an earlier one) are folded into it.
        if let Some(g) = &group {
            if last_emitted.as_deref() == Some(g.as_str()) || after.is_some_and(|a| a == g) {
                continue;
            }
        }
        if emitted == limit {
            out.next_continuation = last_emitted.clone();
            return out;
        }
        match group {
            Some(g) => {
                out.common_prefixes.push(g.clone());
                last_emitted = Some(g);
            }
            None => {
                out.objects.push(obj.clone());
                last_emitted = Some(obj.key.clone());
            }
        }
        emitted += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn objs(keys: &[&str]) -> Vec<ListedObject> {
        let mut v: Vec<_> = keys
            .iter()
            .map(|k| ListedObject {
                key: k.to_string(),
                size: 1,
                last_modified: SystemTime::UNIX_EPOCH,
                etag: String::new(),
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    #[test]
    fn groups_by_delimiter_and_pages_across_prefixes() {
        let all = objs(&["a/1", "a/2", "b", "c/", "c/x", "d"]);
        let mut req = ListRequest::directory("");
        req.max_keys = Some(2);
        let p1 = page(&all, &req);
        assert_eq!(p1.common_prefixes, vec!["a/"]);
        assert_eq!(p1.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), vec!["b"]);
        req.continuation = p1.next_continuation.clone();
        let p2 = page(&all, &req);
        assert_eq!(p2.common_prefixes, vec!["c/"]);
        assert_eq!(p2.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), vec!["d"]);
        assert_eq!(p2.next_continuation, None);
    }

    #[test]
    fn continuation_inside_a_common_prefix_skips_its_keys() {
        let all = objs(&["a/1", "a/2", "a/3", "b"]);
        let mut req = ListRequest::directory("");
        req.max_keys = Some(1);
        let p1 = page(&all, &req);
        assert_eq!(p1.common_prefixes, vec!["a/"]);
        req.continuation = p1.next_continuation;
        let p2 = page(&all, &req);
        assert!(p2.common_prefixes.is_empty());
        assert_eq!(p2.objects[0].key, "b");
    }

    #[test]
    fn prefix_and_start_after() {
        let all = objs(&["p/a", "p/b", "p/c", "q"]);
        let req = ListRequest { prefix: "p/".into(), start_after: Some("p/a".into()), ..Default::default() };
        let p = page(&all, &req);
        assert_eq!(p.objects.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), vec!["p/b", "p/c"]);
    }
}
