//! Specifications of the template functions, through a real Tera engine.

use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::resource::{Output, Template};
use crate::store::Store;

fn template(src: &str, prefix: &str, keys: &[&str]) -> Template {
    template_with(src, prefix, keys, Output::Plain)
}

fn template_with(src: &str, prefix: &str, keys: &[&str], output: Output) -> Template {
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
        output,
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
    render_files(&[("t.tera", text)], Output::Plain, prefix, keys, pairs)
}

/// Renders the first of `files` (name, text) with the given policy.
fn render_files(
    files: &[(&str, &str)],
    output: Output,
    prefix: &str,
    keys: &[&str],
    pairs: &[(&str, &str)],
) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let renderer = Renderer::load(dir.path(), &[]).map_err(|e| e.to_string())?;
    let store: Store = pairs.iter().copied().collect();
    renderer
        .render(
            &template_with(files[0].0, prefix, keys, output),
            &Arc::new(store),
        )
        .map(|r| r.text)
        .map_err(|e| e.to_string())
}

/// Renders `text` under the `bird` output policy with keys `/`.
fn render_bird(text: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
    render_files(&[("t.tera", text)], Output::Bird, "/", &["/"], pairs)
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

// The bird output policy (issue 11 item 2).

const HOSTILE: &[(&str, &str)] = &[
    (
        "/local/node",
        "node-a\nprotocol bgp evil { neighbor 192.0.2.66 as 666; }\n#",
    ),
    ("/nodes/ok/ip4", "10.0.0.1"),
];

#[test]
fn bird_output_refuses_a_structural_value_naming_key_and_line() {
    let e = render_bird("# ok\n# node {{ getv(key=\"/local/node\") }}\n", HOSTILE).unwrap_err();
    assert!(e.starts_with("render t.tera line 2: "), "{e}");
    assert!(e.contains("a newline at character 7"), "{e}");
    assert!(e.contains("(from key `/local/node`)"), "{e}");
    assert!(!e.contains("evil"), "the value is not shown: {e}");
}

#[test]
fn bird_output_names_the_key_of_a_listed_name_and_the_line_in_an_include() {
    let pairs = [("/nodes/x\ny/ip4", "10.0.0.1")];
    let e = render_files(
        &[
            ("main.tera", "a\n{% include \"inc.tera\" %}"),
            (
                "inc.tera",
                "{% for n in ls(path=\"/nodes\") %}\n\n# {{ n }}\n{% endfor %}",
            ),
        ],
        Output::Bird,
        "/",
        &["/"],
        &pairs,
    )
    .unwrap_err();
    assert!(e.starts_with("render inc.tera line 3: "), "{e}");
    assert!(e.contains(r"(from key `/nodes/x\ny`)"), "{e}");
}

#[test]
fn bird_output_passes_validated_raw_numeric_and_ordinary_values() {
    let pairs = [
        ("/n", "node-a"),
        ("/ip", "10.0.0.1"),
        ("/d", "desc; with {braces}"),
        ("/cfg", "import all;"),
    ];
    let out = render_bird(
        r#"{{ getv(key="/n") }} {{ getv(key="/ip") | ipv4 }} {{ getv(key="/d") | bird_string }} {{ getv(key="/cfg") | raw }} {{ 65001 }} {{ [getv(key="/ip") | ipv4, "10.0.0.2" | ipv4] | join(sep=", ") }} {{ getv(key="/n") | replace(from="-", to="_") }}"#,
        &pairs,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"node-a 10.0.0.1 "desc; with {braces}" import all; 65001 10.0.0.1, 10.0.0.2 node_a"#
    );
}

#[test]
fn bird_output_checks_values_built_from_store_values() {
    for text in [
        r##"{{ "# " ~ getv(key="/local/node") }}"##,
        r#"{{ [getv(key="/local/node")] | join(sep=",") }}"#,
        r#"{{ getv(key="/local/node") | upper }}"#,
        r#"{% set x %}{{ getv(key="/local/node") }}{% endset %}{{ x }}"#,
        r#"{{ getv(key="/nodes/ok/ip4") | ipv4 | replace(from=".", to=";") }}"#,
    ] {
        let e = render_bird(text, HOSTILE).unwrap_err();
        assert!(e.contains("refused to print a value"), "{text}: {e}");
    }
}

#[test]
fn plain_output_prints_values_as_they_are() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let out = render_files(
        &[("t.tera", r#"{{ getv(key="/tls/cert") }}"#)],
        Output::Plain,
        "/",
        &["/"],
        &[("/tls/cert", pem)],
    )
    .unwrap();
    assert_eq!(out, pem);
}

// Functions from confd and Calico (issue 14).

#[test]
fn exists_outside_the_keys_is_false_as_in_confd() {
    let pairs = [("/fabric/peers/a", "1"), ("/fabric/secret", "s")];
    let out = render_with(
        r#"{{ exists(key="/secret") }} {{ exists(key="/peers/a") }}"#,
        "/fabric",
        &["/peers"],
        &pairs,
    )
    .unwrap();
    assert_eq!(out, "false true");
}

#[test]
fn getv_with_a_default_outside_the_keys_says_how_to_fix_it() {
    let e = render_with(
        r#"{{ getv(key="/other/x", default="d") }}"#,
        "/fabric",
        &["/peers"],
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("key `/other/x` is not under this resource's keys [/peers], so getv would always return its default; add `/other/x` (or a prefix of it) to `keys`"),
        "{e}"
    );
}

#[test]
fn getenv_gives_the_default_for_an_unset_or_empty_variable() {
    // Names unique to this test: the environment is shared by all tests.
    std::env::set_var("CONFERA_TEST_GETENV_EMPTY", "");
    std::env::set_var("CONFERA_TEST_GETENV_SET", "v");
    let text = r#"{{ getenv(name="CONFERA_TEST_GETENV_EMPTY", default="d1") }} {{ getenv(name="CONFERA_TEST_GETENV_UNSET", default="d2") }} {{ getenv(name="CONFERA_TEST_GETENV_SET", default="d3") }} [{{ getenv(name="CONFERA_TEST_GETENV_EMPTY") }}]"#;
    let mut t = template("t.tera", "/", &["/"]);
    t.allow_env = true;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.tera"), text).unwrap();
    let renderer = Renderer::load(dir.path(), &[]).unwrap();
    let out = renderer.render(&t, &Arc::new(Store::new())).unwrap();
    assert_eq!(out.text, "d1 d2 v []");
}

#[test]
fn gets_patterns_follow_go_path_match() {
    let pairs = [
        ("/peers/node-1", "a"),
        ("/peers/node-2", "b"),
        ("/peers/node-10", "c"),
        ("/peers/node-x", "d"),
        ("/peers/node-1/asn", "e"),
    ];
    for (pattern, want) in [
        ("/peers/node-?", "a,b,d"),
        ("/peers/node-[0-9]", "a,b"),
        ("/peers/node-[^0-9]", "d"),
        ("/peers/node-[12]*", "a,c,b"),
        ("/peers/*/asn", "e"),
        ("/peers/node-\\\\?", ""),
    ] {
        let text = format!(r#"{{{{ getvs(pattern="{pattern}") | join(sep=",") }}}}"#);
        assert_eq!(render(&text, &pairs).unwrap(), want, "{pattern}");
    }
    let e = render(r#"{{ gets(pattern="/peers/[") }}"#, &pairs).unwrap_err();
    assert!(
        e.contains("bad pattern `/peers/[`: a `[` class is not closed"),
        "{e}"
    );
}

#[test]
fn hash_to_ipv4_gives_calico_s_router_id() {
    let out = render(
        r#"{{ hashToIPv4(name="node-a") }} {{ "node-a" | hash_to_ipv4 }}"#,
        &[],
    )
    .unwrap();
    assert_eq!(out, "102.87.15.240 102.87.15.240");
}

#[test]
fn printf_formats_like_go_and_names_the_verb_on_error() {
    let out = render(
        r#"{{ printf(format="%05d|%-6s|%.1f|%x", args=[42, "ab", 2.25, 255]) }}"#,
        &[],
    )
    .unwrap();
    assert_eq!(out, "00042|ab    |2.2|ff");
    let e = render(r#"{{ printf(format="%d", args=["x"]) }}"#, &[]).unwrap_err();
    assert!(e.contains("printf: `%d` needs an integer"), "{e}");
}

// Messages (issue 15 item 6).

#[test]
fn a_filter_on_an_undefined_variable_names_the_variable_and_line() {
    let e = render("ok\n{{ nme | bird_ident }}", &[]).unwrap_err();
    assert!(e.contains("t.tera line 2"), "{e}");
    assert!(e.contains("`nme` is not defined"), "{e}");
}

#[test]
fn confd_syntax_gets_the_tera_form() {
    let e = render("a\n{{getv \"/k\"}}", &[]).unwrap_err();
    assert!(e.contains("t.tera line 2"), "{e}");
    assert!(
        e.contains(r#"is confd (Go template) syntax; in Tera, write `{{ getv(key="/k") }}`"#),
        "{e}"
    );
}

#[test]
fn a_missing_endfor_names_the_for_it_opened() {
    let e = render("{% for x in [1] %}\n{{ x }}\n", &[]).unwrap_err();
    assert!(
        e.contains("`{% for x in [1] %}` on line 1 is never closed: add `{% endfor %}`"),
        "{e}"
    );
}
