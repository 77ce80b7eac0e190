//! Least privilege in etcd: with auth enabled, a user whose role may read
//! exactly what the resources' keys cover (`--prefix read /app/`, `read
//! /global/asn`) is enough, in one-shot and in watch mode; confera's health
//! probe reads no key, and a refused read names the key, the range and the
//! grant that is missing. Users, roles and grants are set up with etcdctl.

use crate::support::cmd::{run, Run};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;
use crate::watch::{Site, WAIT};

const READER: &str = "reader";
const READER_PASSWORD: &str = "reader-pw";

/// Reads a directory, a leaf key and, with a default, the bare key `/app`,
/// which a grant on the prefix `/app/` does not cover.
const TEMPLATE: &str = r#"name={{ getv(key="/app/name") }} port={{ getv(key="/app/port") }} asn={{ getv(key="/global/asn") }} app={{ getv(key="/app", default="not granted") }}
"#;

/// An etcd with auth enabled, holding `/app/*`, the bare key `/app`, a
/// sibling `/apple` and `/global/*`. User `reader` may read only the prefix
/// `/app/` and the key `/global/asn`; the fixture writes as root.
fn etcd_with_a_reader() -> Etcd {
    let mut etcd = Etcd::start();
    for (key, value) in [
        ("/app", "bare"),
        ("/app/name", "web"),
        ("/app/port", "8080"),
        ("/apple", "sibling"),
        ("/global/asn", "64512"),
        ("/global/secret", "s"),
    ] {
        etcd.put(key, value);
    }
    let reader = format!("{READER}:{READER_PASSWORD}");
    let steps: [&[&str]; 8] = [
        &["user", "add", "root:root-pw"],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix",
            "read",
            "/app/",
        ],
        &["role", "grant-permission", "reader", "read", "/global/asn"],
        &["user", "add", &reader],
        &["user", "grant-role", READER, "reader"],
        &["auth", "enable"],
    ];
    for step in steps {
        etcd.etcdctl(step);
    }
    etcd.login("root", "root-pw");
    etcd
}

/// A site whose unit `app` reads KEYS with [`TEMPLATE`].
fn site(keys: &[&str]) -> Site {
    let site = Site::new();
    site.unit("app", keys, TEMPLATE, "");
    site
}

fn onetime_as_reader(dir: &ConfDir, etcd: &Etcd) -> Run {
    run(&[
        "--confdir",
        dir.arg(),
        "--onetime",
        "--node",
        &etcd.client_url,
        "--username",
        READER,
        "--password",
        READER_PASSWORD,
    ])
}

#[test]
fn a_reader_granted_only_the_resources_keys_renders_in_one_shot() {
    let etcd = etcd_with_a_reader();
    let site = site(&["/app", "/global/asn"]);
    onetime_as_reader(&site.dir, &etcd).assert_success();
    assert_eq!(
        site.output("app").as_deref(),
        Some("name=web port=8080 asn=64512 app=not granted\n")
    );
}

#[test]
fn a_reader_granted_only_the_resources_keys_follows_changes_in_watch_mode() {
    let etcd = etcd_with_a_reader();
    let site = site(&["/app", "/global/asn"]);
    let mut confera = site.watch_etcd(
        &etcd.client_url,
        WAIT,
        &["--username", READER, "--password", READER_PASSWORD],
    );
    site.wait_for_output("app", "name=web port=8080 asn=64512 app=not granted\n");
    etcd.put("/app/name", "api");
    etcd.put("/global/asn", "64513");
    site.wait_for_output("app", "name=api port=8080 asn=64513 app=not granted\n");
    assert!(
        !confera.log().contains("etcd unavailable"),
        "{}",
        confera.log()
    );
    assert_eq!(confera.terminate(), 0, "{}", confera.log());
}

#[test]
fn a_refused_read_names_the_key_and_the_missing_permission() {
    let etcd = etcd_with_a_reader();
    let site = site(&["/app", "/global/asn", "/billing"]);
    onetime_as_reader(&site.dir, &etcd)
        .assert_code(2)
        .assert_stderr_contains("permission denied: user `reader` may read neither the key /billing nor the keys under /billing/ (range [/billing/, /billing0))")
        .assert_stderr_contains("`etcdctl role grant-permission ROLE --prefix read /billing/`");
    assert_eq!(site.output("app"), None, "nothing is written");
}

#[test]
fn a_reader_granted_a_key_and_the_prefix_below_it_follows_both_in_watch_mode() {
    let etcd = etcd_with_a_reader();
    // The key `/app` and the keys below `/app/`, but not the siblings in
    // between (`/apple`): confera watches the two ranges on one stream.
    etcd.etcdctl(&[
        "--user",
        "root:root-pw",
        "role",
        "grant-permission",
        "reader",
        "read",
        "/app",
    ]);
    let site = site(&["/app", "/global/asn"]);
    let _confera = site.watch_etcd(
        &etcd.client_url,
        WAIT,
        &["--username", READER, "--password", READER_PASSWORD],
    );
    site.wait_for_output("app", "name=web port=8080 asn=64512 app=bare\n");
    etcd.put("/app", "bare again");
    site.wait_for_output("app", "name=web port=8080 asn=64512 app=bare again\n");
    etcd.put("/app/port", "8081");
    site.wait_for_output("app", "name=web port=8081 asn=64512 app=bare again\n");
}
