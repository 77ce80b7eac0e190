//! Property tests of the store's key algebra and the file source's
//! flattening, each against a simple reference definition:
//!
//! - flattening: any nested document written as YAML, JSON or TOML loads with
//!   every leaf at its path, as its string value, and nothing else;
//! - key normalisation: one leading `/`, no empty segment, no trailing `/`,
//!   idempotent, the same segments;
//! - prefixes: `is_under` is "the prefix's segments start the key's", and
//!   `Store::under` / `replace_under` / `children` agree with it;
//! - exact keys: the store keeps every key it is given as it is, so `/a`
//!   and `/a/` are two keys and removing one leaves the other;
//! - globs: `glob_match` is the regex in which `*` is `[^/]*`, on plain keys
//!   only (a key with an empty segment, such as `/a/`, never matches), and
//!   `Store::glob` returns exactly the matching keys.

use std::collections::{BTreeMap, BTreeSet};

use confera::source::file;
use confera::store::{glob_match, is_plain, is_under, join_keys, normalize_key, Store};
use proptest::prelude::*;
use serde_json::Value;

// --- flattening --------------------------------------------------------------

/// A map key that is one path segment: non-empty and without `/`.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_-]{0,6}",
        // Keys YAML would read as numbers, booleans or null unless quoted.
        Just("0".to_string()),
        Just("10".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("~".to_string()),
        "[^/\\p{Cc}]{1,6}",
    ]
}

/// A scalar value, including strings a careless writer or reader would turn
/// into something else.
fn scalar(nulls: bool) -> BoxedStrategy<Value> {
    let mut options = vec![
        any::<i64>().prop_map(Value::from).boxed(),
        any::<bool>().prop_map(Value::from).boxed(),
        ".{0,12}".prop_map(Value::from).boxed(),
        prop_oneof![
            Just("0x10"),
            Just("1e3"),
            Just("007"),
            Just("yes"),
            Just("null"),
            Just("~"),
            Just(""),
            Just(" padded "),
            Just("multi\nline\n"),
            Just("a: b"),
            Just("- item"),
            Just("#hash"),
            Just("\"quoted\""),
            Just("tab\there"),
        ]
        .prop_map(Value::from)
        .boxed(),
    ];
    if nulls {
        options.push(Just(Value::Null).boxed());
    }
    proptest::strategy::Union::new(options).boxed()
}

/// A document: a map at the top, nested maps and lists below, scalars at
/// the leaves.
fn document(nulls: bool) -> impl Strategy<Value = Value> {
    let tree = scalar(nulls).prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(segment(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(segment(), tree, 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// The reference flattening: `/a/b` for maps, `/a/0` for lists; strings as
/// they are, numbers and booleans in their usual text, null as "".
fn leaves(value: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                leaves(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, &format!("{path}/{i}"), out);
            }
        }
        Value::String(s) => {
            out.insert(path.to_string(), s.clone());
        }
        Value::Null => {
            out.insert(path.to_string(), String::new());
        }
        other => {
            out.insert(path.to_string(), other.to_string());
        }
    }
}

fn load_as(name: &str, text: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let store = file::load(&[path]).unwrap_or_else(|e| panic!("{e}\n--- {name}\n{text}"));
    store
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expected(doc: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    leaves(doc, "", &mut out);
    out
}

/// TOML has no null; its writer wants a table at the top.
fn to_toml(doc: &Value) -> String {
    let value: toml::Value = serde_json::from_value(doc.clone()).expect("JSON to TOML value");
    toml::to_string(&value).expect("TOML text")
}

proptest! {
    #[test]
    fn yaml_documents_flatten_to_every_leaf_at_its_path(doc in document(true)) {
        let text = serde_yaml_ng::to_string(&doc).unwrap();
        prop_assert_eq!(load_as("d.yaml", &text), expected(&doc), "YAML:\n{}", text);
    }

    #[test]
    fn json_documents_flatten_to_every_leaf_at_its_path(doc in document(true)) {
        let text = serde_json::to_string_pretty(&doc).unwrap();
        prop_assert_eq!(load_as("d.json", &text), expected(&doc), "JSON:\n{}", text);
    }

    #[test]
    fn toml_documents_flatten_to_every_leaf_at_its_path(doc in document(false)) {
        let text = to_toml(&doc);
        prop_assert_eq!(load_as("d.toml", &text), expected(&doc), "TOML:\n{}", text);
    }
}

// --- key normalisation -------------------------------------------------------

/// Raw keys as users and data files write them: slashes doubled, leading or
/// trailing, or missing.
fn raw_key() -> impl Strategy<Value = String> {
    "[/ab.\\- ]{0,12}"
}

proptest! {
    #[test]
    fn normalised_keys_have_one_leading_slash_and_no_empty_or_trailing_segment(raw in raw_key()) {
        let key = normalize_key(&raw);
        prop_assert!(key.starts_with('/'), "{:?} -> {:?}", raw, key);
        prop_assert!(!key.contains("//"), "{:?} -> {:?}", raw, key);
        prop_assert!(key == "/" || !key.ends_with('/'), "{:?} -> {:?}", raw, key);
        prop_assert_eq!(normalize_key(&key), key.clone(), "idempotent");
        let raw_segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
        prop_assert_eq!(segments(&key), raw_segments, "the same segments, in order");
    }

    #[test]
    fn joined_keys_are_the_normalised_concatenation(parts in prop::collection::vec(raw_key(), 0..4)) {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let joined = join_keys(&refs);
        prop_assert_eq!(&joined, &normalize_key(&parts.join("/")));
        let normalised: Vec<String> = refs.iter().map(|p| normalize_key(p)).collect();
        let all: Vec<&str> = normalised.iter().flat_map(|p| segments(p)).collect();
        prop_assert_eq!(segments(&joined), all);
    }
}

fn segments(normalised: &str) -> Vec<&str> {
    normalised.split('/').filter(|s| !s.is_empty()).collect()
}

// --- prefixes ----------------------------------------------------------------

/// Keys over an alphabet that holds the bytes on either side of `/`
/// (`-` `.` before it, `0` after it), so that `/a/b`, `/a/b-x`, `/a/b.x`,
/// `/a/b0` and `/a/b/x` all occur: the cases a byte-wise prefix gets wrong.
fn tight_key() -> impl Strategy<Value = String> {
    prop::collection::vec("[ab0.\\-]{1,2}", 0..4).prop_map(|segs| normalize_key(&segs.join("/")))
}

/// The reference: the prefix's segments start the key's.
fn under_by_segments(key: &str, prefix: &str) -> bool {
    segments(key).starts_with(&segments(prefix))
}

fn store_of(keys: &BTreeSet<String>) -> Store {
    keys.iter().map(|k| (k.as_str(), format!("v{k}"))).collect()
}

proptest! {
    #[test]
    fn is_under_agrees_with_segment_prefixes(key in tight_key(), prefix in tight_key()) {
        prop_assert_eq!(is_under(&key, &prefix), under_by_segments(&key, &prefix),
            "key {:?} prefix {:?}", key, prefix);
        prop_assert!(is_under(&key, &key));
        prop_assert!(is_under(&key, "/"));
    }

    #[test]
    fn store_under_returns_exactly_the_keys_is_under_accepts(
        keys in prop::collection::btree_set(tight_key(), 0..24),
        prefix in tight_key(),
    ) {
        let store = store_of(&keys);
        let got: Vec<&str> = store.under(&prefix).map(|(k, _)| k).collect();
        let want: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|k| is_under(k, &prefix))
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        prop_assert_eq!(&sorted, &want, "prefix {:?}", prefix);
        prop_assert_eq!(sorted.len(), got.len(), "no key twice");
        for (k, v) in store.under(&prefix) {
            prop_assert_eq!(v, format!("v{k}"));
        }

        // A resync with nothing left under the prefix removes exactly those keys.
        let mut pruned = store.clone();
        let removed = pruned.replace_under(std::slice::from_ref(&prefix), Store::new());
        prop_assert_eq!(&removed, &want);
        for (k, _) in pruned.iter() {
            prop_assert!(!is_under(k, &prefix), "{:?} survived replace_under({:?})", k, prefix);
        }
        prop_assert_eq!(pruned.len() + want.len(), store.len());
    }

    #[test]
    fn children_are_the_next_segments_below_a_path(
        keys in prop::collection::btree_set(tight_key(), 0..24),
        path in tight_key(),
    ) {
        let store = store_of(&keys);
        let depth = segments(&path).len();
        let mut want: BTreeMap<String, bool> = BTreeMap::new();
        for key in keys.iter().filter(|k| is_under(k, &path)) {
            let segs = segments(key);
            if segs.len() > depth {
                *want.entry(segs[depth].to_string()).or_default() |= segs.len() > depth + 1;
            }
        }
        let want: Vec<(String, bool)> = want.into_iter().collect();
        prop_assert_eq!(store.children(&path), want, "path {:?}", path);
    }
}

// --- exact keys --------------------------------------------------------------

/// Keys as a source may return them, spellings that normalise alike
/// included (`/a`, `/a/`, `//a`).
fn source_key() -> impl Strategy<Value = String> {
    "/[ab/]{0,6}"
}

proptest! {
    #[test]
    fn the_store_keeps_every_key_exactly_as_given(
        keys in prop::collection::btree_set(source_key(), 0..16),
        victim in source_key(),
    ) {
        let store = store_of(&keys);
        prop_assert_eq!(store.len(), keys.len(), "no spelling shadows another");
        for k in &keys {
            let want = format!("v{k}");
            prop_assert_eq!(store.get(k), Some(want.as_str()));
        }
        // Removing one spelling leaves every other one in place.
        let mut pruned = store.clone();
        prop_assert_eq!(pruned.remove(&victim), keys.contains(&victim));
        for k in keys.iter().filter(|k| **k != victim) {
            prop_assert!(pruned.get(k).is_some(), "{:?} went with {:?}", k, victim);
        }
    }
}

// --- globs -------------------------------------------------------------------

/// The reference: `*` is `[^/]*`, everything else is literal.
fn glob_regex(pattern: &str) -> regex::Regex {
    let mut re = String::from("^");
    for c in pattern.chars() {
        if c == '*' {
            re.push_str("[^/]*");
        } else {
            re.push_str(&regex::escape(&c.to_string()));
        }
    }
    re.push('$');
    regex::Regex::new(&re).unwrap()
}

fn glob_pattern() -> impl Strategy<Value = String> {
    prop::collection::vec("[ab0.*]{1,3}", 0..4).prop_map(|segs| normalize_key(&segs.join("/")))
}

proptest! {
    #[test]
    fn glob_match_agrees_with_the_regex_reference(pattern in glob_pattern(), key in tight_key()) {
        prop_assert_eq!(glob_match(&pattern, &key), glob_regex(&pattern).is_match(&key),
            "pattern {:?} key {:?}", pattern, key);
    }

    #[test]
    fn glob_match_handles_raw_patterns_like_the_regex_on_plain_keys(pattern in "[a*/]{0,10}", key in "[a/]{0,10}") {
        prop_assert_eq!(glob_match(&pattern, &key), is_plain(&key) && glob_regex(&pattern).is_match(&key),
            "pattern {:?} key {:?}", pattern, key);
    }

    #[test]
    fn store_glob_returns_exactly_the_matching_keys_in_order(
        keys in prop::collection::btree_set(tight_key(), 0..24),
        pattern in glob_pattern(),
    ) {
        let store = store_of(&keys);
        let got: Vec<&str> = store.glob(&pattern).into_iter().map(|(k, _)| k).collect();
        let re = glob_regex(&pattern);
        let want: Vec<&str> = keys.iter().map(String::as_str).filter(|k| re.is_match(k)).collect();
        prop_assert_eq!(got, want, "pattern {:?}", pattern);
    }
}

#[test]
fn a_star_never_crosses_a_slash() {
    assert!(glob_match("/a/*", "/a/b"));
    assert!(!glob_match("/a/*", "/a/b/c"));
    assert!(glob_match("/a/*/c", "/a/b/c"));
    assert!(
        !glob_regex("/a/*").is_match("/a/b/c"),
        "the reference agrees"
    );
}

// --- durations ---------------------------------------------------------------

proptest! {
    /// `check_timeout`, `reload_timeout` and `wait` in resource files (and
    /// `--wait`) go through `parse_duration`: any text is a duration or an
    /// error naming it, never a panic, however large the number.
    #[test]
    fn any_duration_text_parses_or_is_refused_without_panicking(
        number in "[0-9]{1,25}(\\.[0-9]{0,3})?",
        unit in prop::sample::select(vec!["", "ms", "s", "m", "h", "d"]),
    ) {
        let text = format!("{number}{unit}");
        match confera::duration::parse_duration(&text) {
            Ok(d) => {
                let seconds: f64 = number.parse().unwrap();
                let scale = match unit { "ms" => 0.001, "m" => 60.0, "h" => 3600.0, _ => 1.0 };
                let want = seconds * scale;
                prop_assert!((d.as_secs_f64() - want).abs() <= want * 1e-9 + 1e-9, "{} -> {:?}", text, d);
            }
            Err(message) => prop_assert!(message.contains(&text), "{}: {}", text, message),
        }
        let _ = text.parse::<confera::duration::Wait>();
        let _ = format!("{text}:{text}").parse::<confera::duration::Wait>();
    }
}

#[test]
fn a_duration_too_large_for_std_is_an_error_not_a_panic() {
    for text in [
        "18446744073709551616s",
        "99999999999999999999",
        "5124095576030432h",
    ] {
        let result = std::panic::catch_unwind(|| confera::duration::parse_duration(text));
        let result = result.unwrap_or_else(|_| panic!("parse_duration({text:?}) panicked"));
        assert!(result.is_err(), "{text}: {result:?}");
    }
}
