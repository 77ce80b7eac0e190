//! A field of a secret JSON value is as secret as the value (a review
//! finding): a validation filter that refuses it never quotes it, says it
//! is secret, and names the key it came from.

use crate::support::confdir::ConfDir;

#[test]
fn a_filter_error_on_a_field_of_a_secret_json_value_never_shows_it_and_names_the_key() {
    let conf = ConfDir::new();
    let dest = conf.dest("out/bird.conf");
    conf.template(
        "peer.tera",
        "{%- set peer = getv(key=\"/peers/tor1\") | json -%}\nneighbor {{ peer.ip | ipv4 }} as {{ peer.asn | asn }};\n",
    )
    .resource(
        "peer",
        &format!(
            "[template]\nsrc = \"peer.tera\"\ndest = \"{}\"\nkeys = [\"/peers\"]\nsecret_keys = [\"/peers\"]\n",
            dest.display()
        ),
    );
    let hostile = serde_json::json!({
        "ip": "10.9.8.7\nprotocol bgp evil { neighbor 192.0.2.66 as 666; }",
        "asn": 65000,
    });
    conf.file(
        "data.json",
        &serde_json::json!({"peers": {"tor1": hostile.to_string()}}).to_string(),
    );

    let r = conf.onetime_with_file("data.json", &[]);

    r.assert_code(1).assert_stderr_contains(
        "render peer.tera line 2: the value (from a secret key, not shown) is not an IPv4 address: \
         it contains whitespace or a control character (from secret key `/peers/tor1`)",
    );
    for shown in ["10.9.8.7", "192.0.2.66", "evil"] {
        assert!(!r.stderr.contains(shown), "{shown} shown\n{r}");
    }
    assert!(!dest.exists());
}

/// A unit reading `/db/pass1`, with SECRET_KEYS, whose template refuses the
/// value (it is no IPv4 address) so that an error would quote it.
fn refusing_unit(secret_keys: &str) -> ConfDir {
    let conf = ConfDir::new();
    conf.template("db.tera", "{{ getv(key=\"/db/pass1\") | ipv4 }}\n")
        .resource(
            "db",
            &format!(
                "[template]\nsrc = \"db.tera\"\ndest = \"{}\"\nkeys = [\"/db/pass1\"]\nsecret_keys = {secret_keys}\n",
                conf.dest("out/db.conf").display()
            ),
        )
        .file("data.json", r#"{"db": {"pass1": "hunter2-secret"}}"#);
    conf
}

#[test]
fn a_secret_key_pattern_with_go_classes_and_wildcards_hides_the_value_it_matches() {
    for pattern in ["/db/pass?", "/db/pass[0-9]", "/db/p*"] {
        let conf = refusing_unit(&format!("[{pattern:?}]"));

        let r = conf.onetime_with_file("data.json", &[]);

        r.assert_code(1)
            .assert_stderr_contains("(from a secret key, not shown)");
        assert!(!r.stderr.contains("hunter2"), "{pattern}: value shown\n{r}");
    }
}

#[test]
fn a_malformed_secret_key_pattern_is_a_configuration_error_naming_the_field() {
    let conf = refusing_unit(r#"["/db/pass["]"#);

    let r = conf.onetime_with_file("data.json", &[]);

    r.assert_code(2).assert_stderr_contains("secret_keys");
    assert!(!r.stderr.contains("hunter2"), "{r}");
}
