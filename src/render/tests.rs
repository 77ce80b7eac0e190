//! Specifications of the template functions, through a real Tera engine.

use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::resource::Template;
use crate::store::Store;

fn template(src: &str, prefix: &str, keys: &[&str]) -> Template {
    Template {
        src: src.to_string(),
        dest: PathBuf::from("/tmp/unused"),
        prefix: prefix.to_string(),
        keys: keys
            .iter()
            .map(|k| crate::store::join_keys(&[prefix, k]))
            .collect(),
        mode: None,
        uid: None,
        gid: None,
        secrets: Default::default(),
        allow_env: false,
        follow_symlink: false,
    }
}

/// Renders `text` with the given store, prefix and keys.
fn render_with(
    text: &str,
    prefix: &str,
    keys: &[&str],
    pairs: &[(&str, &str)],
) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.tera"), text).unwrap();
    let renderer = Renderer::load(dir.path(), &[]).map_err(|e| e.to_string())?;
    let store: Store = pairs.iter().copied().collect();
    renderer
        .render(&template("t.tera", prefix, keys), &Arc::new(store))
        .map(|r| r.text)
        .map_err(|e| e.to_string())
}

fn render(text: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
    render_with(text, "/", &["/"], pairs)
}

const PEERS: &[(&str, &str)] = &[
    ("/peers/b", "10.0.0.2"),
    ("/peers/a", "10.0.0.1"),
    ("/peers/a/asn", "65001"),
    ("/node/name", "node-a"),
];

#[test]
fn getv_returns_the_value_or_the_default() {
    assert_eq!(
        render(r#"{{ getv(key="/node/name") }}"#, PEERS).unwrap(),
        "node-a"
    );
    assert_eq!(
        render(r#"{{ getv(key="/node/asn", default="64512") }}"#, PEERS).unwrap(),
        "64512"
    );
}

#[test]
fn a_missing_key_without_default_fails_naming_template_line_and_key() {
    let e = render("ok\n{{ getv(key=\"/node/asn\") }}", PEERS).unwrap_err();
    assert!(
        e.contains("t.tera line 2") && e.contains("/node/asn"),
        "{e}"
    );
}

#[test]
fn get_returns_key_and_value() {
    let out = render(
        r#"{% set kv = get(key="/peers/a") %}{{ kv.key }}={{ kv.value }}"#,
        PEERS,
    )
    .unwrap();
    assert_eq!(out, "/peers/a=10.0.0.1");
    assert!(render(r#"{{ get(key="/peers/z") }}"#, PEERS).is_err());
}

#[test]
fn exists_tells_whether_a_key_is_set() {
    let out = render(
        r#"{{ exists(key="/peers/a") }} {{ exists(key="/peers/z") }}"#,
        PEERS,
    )
    .unwrap();
    assert_eq!(out, "true false");
}

#[test]
fn gets_and_getvs_are_sorted_by_key_and_star_stays_in_one_segment() {
    let out = render(
        r#"{% for kv in gets(pattern="/peers/*") %}{{ kv.key }}={{ kv.value }};{% endfor %}"#,
        PEERS,
    )
    .unwrap();
    assert_eq!(out, "/peers/a=10.0.0.1;/peers/b=10.0.0.2;");
    let out = render(r#"{{ getvs(pattern="/peers/*") | join(sep=",") }}"#, PEERS).unwrap();
    assert_eq!(out, "10.0.0.1,10.0.0.2");
    let out = render(r#"{{ getvs(pattern="/*/a/asn") | join(sep=",") }}"#, PEERS).unwrap();
    assert_eq!(out, "65001");
}

#[test]
fn ls_and_lsdir_list_sorted_children_and_work_at_the_root() {
    assert_eq!(
        render(r#"{{ ls(path="/peers") | join(sep=",") }}"#, PEERS).unwrap(),
        "a,b"
    );
    assert_eq!(
        render(r#"{{ lsdir(path="/peers") | join(sep=",") }}"#, PEERS).unwrap(),
        "a"
    );
    assert_eq!(
        render(r#"{{ ls(path="/") | join(sep=",") }}"#, PEERS).unwrap(),
        "node,peers"
    );
    assert_eq!(
        render(r#"{{ lsdir(path="/") | join(sep=",") }}"#, PEERS).unwrap(),
        "node,peers"
    );
    assert_eq!(
        render(r#"{{ ls(path="/nothing") | length }}"#, PEERS).unwrap(),
        "0"
    );
}

#[test]
fn keys_are_relative_to_the_prefix() {
    let pairs = [
        ("/fabric/peers/a", "1"),
        ("/fabric/node", "n"),
        ("/other", "x"),
    ];
    let out = render_with(
        r#"{{ getv(key="/node") }} {{ ls(path="/") | join(sep=",") }} {% for kv in gets(pattern="/peers/*") %}{{ kv.key }}{% endfor %}"#,
        "/fabric",
        &["/peers", "/node"],
        &pairs,
    )
    .unwrap();
    assert_eq!(out, "n node,peers /peers/a");
}

#[test]
fn reading_outside_the_resource_keys_is_an_error_naming_the_key() {
    let pairs = [("/fabric/peers/a", "1"), ("/fabric/secret", "s")];
    for text in [
        r#"{{ getv(key="/secret") }}"#,
        r#"{{ exists(key="/secret") }}"#,
        r#"{{ ls(path="/secret") }}"#,
        r#"{{ gets(pattern="/secret/*") }}"#,
    ] {
        let e = render_with(text, "/fabric", &["/peers"], &pairs).unwrap_err();
        assert!(
            e.contains("`/secret` is not under this resource's keys [/peers]"),
            "{text}: {e}"
        );
    }
}

#[test]
fn listing_an_ancestor_shows_only_what_is_in_scope() {
    let pairs = [
        ("/fabric/peers/a", "1"),
        ("/fabric/secret", "s"),
        ("/fabric/peersx", "y"),
    ];
    let out = render_with(
        r#"{{ ls(path="/") | join(sep=",") }}"#,
        "/fabric",
        &["/peers"],
        &pairs,
    )
    .unwrap();
    assert_eq!(out, "peers");
}

#[test]
fn a_prefix_does_not_match_a_longer_sibling() {
    let pairs = [("/app/db/url", "u"), ("/app/dbx/url", "x")];
    let out = render_with(
        r#"{{ getvs(pattern="/app/*/url") | join(sep=",") }}"#,
        "/",
        &["/app/db"],
        &pairs,
    )
    .unwrap();
    assert_eq!(out, "u");
}

#[test]
fn a_validation_failure_names_the_key_the_value_came_from() {
    let pairs = [("/peers/a/ip", "10.0.0.256")];
    let e = render(r#"{{ getv(key="/peers/a/ip") | ipv4 }}"#, &pairs).unwrap_err();
    assert!(e.contains("10.0.0.256") && e.contains("/peers/a/ip"), "{e}");
}

#[test]
fn a_syntax_error_is_a_configuration_error_with_the_line() {
    let e = render("line one\n{% if %}\n", PEERS).unwrap_err();
    assert!(e.contains("t.tera line 2"), "{e}");
}

#[test]
fn output_is_never_html_escaped() {
    assert_eq!(
        render(r#"{{ getv(key="/x") }}"#, &[("/x", "<a & \"b\">")]).unwrap(),
        "<a & \"b\">"
    );
}

#[test]
fn templates_have_no_environment_or_file_access() {
    for text in [
        r#"{{ get_env(name="HOME") }}"#,
        r#"{{ read_file(path="/etc/passwd") }}"#,
        r#"{{ now() }}"#,
    ] {
        assert!(render(text, PEERS).is_err(), "{text} must not be available");
    }
}
