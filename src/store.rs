//! The in-memory key-value store that templates read: a sorted map of keys,
//! exactly as the source gave them, plus the source revision it reflects.
//!
//! The store never talks to a backend and never touches the filesystem; sources
//! fill it, template functions read it. Keys are exact: etcd's `/e/k` and
//! `/e/k/` are two entries, and neither shadows, replaces or deletes the other.
//! What users write (resource `keys`, template paths) is normalised before it
//! reaches the store; what a source returns is not. Template lookups see only
//! *plain* keys (see [`is_plain`]): a key with an empty segment, such as
//! `/e/k/` or `/e//k`, has no path a template can write, so `getv`, `gets` and
//! `ls` behave as if it were absent, while it is still stored exactly.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A sorted map from exact keys to values, with the revision of the source
/// snapshot it reflects (0 for sources without revisions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    entries: BTreeMap<String, String>,
    revision: i64,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store of exact `pairs` at `revision`, built in one pass (cheapest
    /// when the pairs come sorted, as etcd's ranges do).
    pub fn from_entries(pairs: Vec<(String, String)>, revision: i64) -> Self {
        Store {
            entries: pairs.into_iter().collect(),
            revision,
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn set_revision(&mut self, revision: i64) {
        self.revision = revision;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inserts a value under exactly `key`; returns true when the stored
    /// value changed. Sources whose keys users write (data files, the
    /// environment) normalise them first.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) -> bool {
        let value = value.into();
        match self.entries.get_mut(key) {
            Some(old) if *old == value => false,
            Some(old) => {
                *old = value;
                true
            }
            None => {
                self.entries.insert(key.to_string(), value);
                true
            }
        }
    }

    /// Removes exactly `key`; returns true when it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// The value of exactly `key`. Template functions pass a normalised path,
    /// so they read plain keys only.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every entry at or under `prefix` (normalised), respecting `/`
    /// boundaries: `/app/db` yields `/app/db`, `/app/db/` and `/app/db/x`,
    /// never `/app/dbx`.
    pub fn under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let prefix = normalize_key(prefix);
        let exact = if prefix == "/" {
            None
        } else {
            self.entries.get_key_value(&prefix)
        };
        let children_start = if prefix == "/" {
            "/".to_string()
        } else {
            format!("{prefix}/")
        };
        // '0' is the byte after '/', so this range is exactly the keys below the prefix.
        let children_end = format!("{}0", &children_start[..children_start.len() - 1]);
        let children = self
            .entries
            .range::<str, _>((
                Bound::Included(children_start.as_str()),
                Bound::Excluded(children_end.as_str()),
            ))
            .map(|(k, v)| (k.as_str(), v.as_str()));
        exact
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .into_iter()
            .chain(children)
    }

    /// Replaces everything at or under each of `prefixes` with `fresh`, so
    /// that keys deleted at the source disappear here too. Returns the keys
    /// whose value changed, appeared or disappeared.
    pub fn replace_under(&mut self, prefixes: &[String], fresh: Store) -> Vec<String> {
        let mut changed = Vec::new();
        for prefix in prefixes {
            let stale: Vec<String> = self
                .under(prefix)
                .filter(|(k, _)| fresh.get(k).is_none())
                .map(|(k, _)| k.to_string())
                .collect();
            for key in stale {
                self.entries.remove(&key);
                changed.push(key);
            }
        }
        for (key, value) in fresh.entries {
            if self.insert(&key, value) {
                changed.push(key);
            }
        }
        self.revision = self.revision.max(fresh.revision);
        changed.sort();
        changed.dedup();
        changed
    }

    /// Plain entries whose key matches `pattern` (normalised; Go's
    /// `path.Match`, see [`crate::pattern`]: `*` and `?` never cross `/`).
    /// Sorted by key.
    pub fn glob<'a>(&'a self, pattern: &str) -> Vec<(&'a str, &'a str)> {
        let pattern = normalize_key(pattern);
        // Scan only the part of the map that shares the literal prefix.
        let literal = crate::pattern::literal_prefix(&pattern);
        // Every key scanned starts with `literal`, so only what follows its
        // last `/` is left to match (one segment for `/peers/*`).
        let base = literal.rfind('/').map_or(0, |i| i + 1);
        let mut matcher = crate::pattern::Matcher::new(&pattern[base..]);
        self.entries
            .range::<str, _>((Bound::Included(literal), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(literal))
            .filter(|(k, _)| is_plain(k) && matcher.matches(&k[base..]))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Sorted names of the direct children of `path` (normalised), each with
    /// whether it has children of its own (a directory). Only plain keys
    /// count: an empty name is not a child.
    pub fn children(&self, path: &str) -> Vec<(String, bool)> {
        let path = normalize_key(path);
        let base_len = if path == "/" { 1 } else { path.len() + 1 };
        let mut out: Vec<(String, bool)> = Vec::new();
        for (key, _) in self.under(&path) {
            if key.len() <= base_len || !is_plain(key) {
                continue;
            }
            let rest = &key[base_len..];
            let (name, is_dir) = match rest.find('/') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            match out.last_mut() {
                Some((last, dir)) if last == name => *dir |= is_dir,
                _ => out.push((name.to_string(), is_dir)),
            }
        }
        // Keys such as /a/b and /a/b/c interleave with /a/b-x, so sort and merge.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 |= later.1;
                true
            } else {
                false
            }
        });
        out
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Store {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut store = Store::new();
        for (k, v) in iter {
            store.insert(k.as_ref(), v);
        }
        store
    }
}

/// Whether `key` is plain: `/` itself, or a leading `/` followed by
/// non-empty segments (no `//`, no trailing `/`). Every normalised path is
/// plain, and only plain keys are visible to templates.
pub fn is_plain(key: &str) -> bool {
    key == "/" || (key.starts_with('/') && !key.ends_with('/') && !key.contains("//"))
}

/// Normalises a path that a user wrote: one leading `/`, no empty segments,
/// no trailing `/`. Never applied to keys a source returns.
/// `a//b/` becomes `/a/b`; the empty key and `/` both become `/`.
pub fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 1);
    for segment in key.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Joins key paths, normalising the result: `join_keys(&["/a/", "b"])` is `/a/b`.
pub fn join_keys(parts: &[&str]) -> String {
    normalize_key(&parts.join("/"))
}

/// Whether normalised `key` equals `prefix` or lies below it on a `/` boundary.
pub fn is_under(key: &str, prefix: &str) -> bool {
    is_under_bytes(key.as_bytes(), prefix)
}

/// [`is_under`] for a key not decoded yet (etcd's bytes), so that siblings
/// are dropped before they are decoded or reported.
pub fn is_under_bytes(key: &[u8], prefix: &str) -> bool {
    if prefix == "/" {
        return key.starts_with(b"/");
    }
    key.strip_prefix(prefix.as_bytes())
        .is_some_and(|rest| rest.first().is_none_or(|&b| b == b'/'))
}

/// The directory a glob pattern searches: the path up to the `/` before its
/// first metacharacter (`/peers/*/asn` → `/peers`); for a pattern without
/// one, its parent.
pub fn glob_base(pattern: &str) -> &str {
    let literal = crate::pattern::literal_prefix(pattern);
    match literal.rfind('/') {
        Some(i) => &literal[..i.max(1)],
        None => "/",
    }
}

/// `key` relative to normalised `prefix`: `/fabric/peers/a` under `/fabric`
/// is `/peers/a`, and `/fabric` itself is `/`. The key is not normalised (it
/// may be a store key); one not under the prefix is returned as it is.
pub fn relative_key(prefix: &str, key: &str) -> String {
    relative_key_str(prefix, key).to_string()
}

/// [`relative_key`] without a copy: a slice of `key` (or `/`).
pub fn relative_key_str<'k>(prefix: &str, key: &'k str) -> &'k str {
    if prefix == "/" || !is_under(key, prefix) {
        return key;
    }
    match &key[prefix.len()..] {
        "" => "/",
        rest => rest,
    }
}

/// Matches a key against a normalised pattern, as Go's `path.Match` (see
/// [`crate::pattern`]). A key that is not plain never matches.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    is_plain(key) && crate::pattern::matches(pattern, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(pairs: &[(&str, &str)]) -> Store {
        pairs.iter().copied().collect()
    }

    #[test]
    fn keys_are_normalised_to_one_leading_slash_and_no_empty_segments() {
        assert_eq!(normalize_key("a//b/"), "/a/b");
        assert_eq!(normalize_key("/a/b"), "/a/b");
        assert_eq!(normalize_key(""), "/");
        assert_eq!(normalize_key("///"), "/");
        assert_eq!(
            join_keys(&["/fabric/", "/bgp", "peers/"]),
            "/fabric/bgp/peers"
        );
    }

    #[test]
    fn prefix_matching_respects_slash_boundaries() {
        assert!(is_under("/app/db", "/app/db"));
        assert!(is_under("/app/db/x", "/app/db"));
        assert!(!is_under("/app/dbx", "/app/db"));
        assert!(is_under("/anything", "/"));
        let s = store(&[
            ("/app/db", "1"),
            ("/app/db/x", "2"),
            ("/app/dbx", "3"),
            ("/app/db-y", "4"),
        ]);
        let keys: Vec<_> = s.under("/app/db").map(|(k, _)| k).collect();
        assert_eq!(keys, ["/app/db", "/app/db/x"]);
        assert_eq!(s.under("/").count(), 4);
    }

    #[test]
    fn keys_are_made_relative_to_a_prefix_on_segment_boundaries() {
        assert_eq!(relative_key("/fabric", "/fabric/peers/a"), "/peers/a");
        assert_eq!(relative_key("/fabric", "/fabric"), "/");
        assert_eq!(relative_key("/fabric", "/fabricx/a"), "/fabricx/a");
        assert_eq!(relative_key("/", "/a/b"), "/a/b");
        assert_eq!(glob_base("/peers/*/asn"), "/peers");
        assert_eq!(glob_base("/p*"), "/");
        assert_eq!(glob_base("/peers/a"), "/peers");
    }

    #[test]
    fn star_matches_within_one_segment_only() {
        assert!(glob_match("/peers/*", "/peers/a"));
        assert!(!glob_match("/peers/*", "/peers/a/b"));
        assert!(glob_match("/peers/*/asn", "/peers/a/asn"));
        assert!(glob_match("/p*s/x*", "/peers/xyz"));
        assert!(!glob_match("/p*s/x*", "/peers/yz"));
        assert!(glob_match("/a", "/a"));
        // Raw patterns follow the regex in which `*` is `[^/]*`: the root key
        // is two empty segments, a plain key's first segment is empty.
        assert!(glob_match("*/", "/"));
        assert!(glob_match("/*", "/"));
        assert!(!glob_match("/a", "/"));
        assert!(glob_match("*/*", "/a"));
        assert!(!glob_match("a/*", "/a"));
        let s = store(&[
            ("/peers/b", "2"),
            ("/peers/a", "1"),
            ("/peers/a/deep", "x"),
            ("/peersx", "y"),
        ]);
        assert_eq!(
            s.glob("/peers/*"),
            vec![("/peers/a", "1"), ("/peers/b", "2")]
        );
    }

    #[test]
    fn children_lists_direct_names_sorted_with_directory_flag() {
        let s = store(&[("/a/b/c", "1"), ("/a/b-x", "2"), ("/a/d", "3"), ("/e", "4")]);
        assert_eq!(
            s.children("/a"),
            vec![
                ("b".to_string(), true),
                ("b-x".to_string(), false),
                ("d".to_string(), false)
            ]
        );
        assert_eq!(
            s.children("/"),
            vec![("a".to_string(), true), ("e".to_string(), false)]
        );
        assert!(s.children("/missing").is_empty());
    }

    #[test]
    fn replace_under_drops_keys_deleted_at_the_source() {
        let mut s = store(&[("/a/1", "x"), ("/a/2", "y"), ("/b/1", "z")]);
        let fresh = store(&[("/a/1", "x"), ("/a/3", "w")]);
        let changed = s.replace_under(&["/a".to_string()], fresh);
        assert_eq!(changed, ["/a/2", "/a/3"]);
        assert_eq!(s.get("/a/2"), None);
        assert_eq!(s.get("/b/1"), Some("z"));
    }

    #[test]
    fn insert_reports_whether_the_value_changed() {
        let mut s = Store::new();
        assert!(s.insert("/a", "1"));
        assert!(!s.insert("/a", "1"));
        assert!(s.insert("/a", "2"));
        assert!(s.remove("/a"));
        assert!(!s.remove("/a"));
    }

    #[test]
    fn keys_are_stored_exactly_so_a_trailing_slash_is_another_key() {
        let mut s = store(&[("/e/k", "plain"), ("/e/k/", "slash"), ("/e//k", "double")]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("/e/k"), Some("plain"));
        assert_eq!(s.get("/e/k/"), Some("slash"));
        // Deleting one spelling never touches the other.
        assert!(s.remove("/e/k/"));
        assert_eq!(s.get("/e/k"), Some("plain"));
        assert!(s.insert("/e/k/", "back"));
        assert!(s.remove("/e/k"));
        assert_eq!(s.get("/e/k/"), Some("back"));
    }

    #[test]
    fn templates_see_only_plain_keys() {
        assert!(is_plain("/"));
        assert!(is_plain("/e/k"));
        assert!(!is_plain("/e/k/"));
        assert!(!is_plain("/e//k"));
        assert!(!is_plain("e/k"));
        let s = store(&[
            ("/e/k", "plain"),
            ("/e/k/", "slash"),
            ("/e/j/", "marker only"),
            ("/e//x", "double"),
            ("/e/d/leaf", "1"),
        ]);
        // A pattern's `*` never matches the empty segment of `/e/k/`.
        assert_eq!(s.glob("/e/*"), vec![("/e/k", "plain")]);
        assert_eq!(s.glob("/e/k/*"), vec![]);
        assert_eq!(s.glob("/e/*/*"), vec![("/e/d/leaf", "1")]);
        // `k` is a leaf: its only entry below is nameless; `j` is not listed.
        assert_eq!(
            s.children("/e"),
            vec![("d".to_string(), true), ("k".to_string(), false)]
        );
        // `under` and `replace_under` see every exact key.
        assert_eq!(s.under("/e/k").count(), 2);
    }

    #[test]
    fn replace_under_keeps_both_spellings_apart() {
        let mut s = store(&[("/e/k", "1"), ("/e/k/", "2")]);
        let changed = s.replace_under(&["/e".to_string()], store(&[("/e/k", "1")]));
        assert_eq!(changed, ["/e/k/"]);
        assert_eq!(s.get("/e/k"), Some("1"));
        assert_eq!(s.get("/e/k/"), None);
    }

    #[test]
    fn relative_keys_keep_the_exact_key() {
        assert_eq!(relative_key("/e", "/e/k/"), "/k/");
        assert_eq!(relative_key("/e", "/e"), "/");
        assert_eq!(relative_key("/", "/e//k"), "/e//k");
    }
}
