//! Keys are what etcd says they are: `/e/k` and `/e/k/` are two keys, and
//! the same data gives the same files whether confera read it in one
//! snapshot or followed it through a watch, even when a value is not UTF-8.
//!
//! What a template sees (README, "Keys"): paths written in templates are
//! normalised, so `getv("/k")` reads exactly `/e/k`; a key with an empty
//! segment (`/e/k/`) is stored but invisible to `getv`, `gets` and `ls`.

use crate::support::cmd::{reserve_ports, run, wait_until, Daemon};
use crate::support::confdir::ConfDir;
use crate::support::etcd::{scrape, sum_metric, Etcd};
use crate::watch::{Site, DEADLINE, WAIT};

/// Everything a template can ask about `/e`: one key, the listing, a glob.
const SEES: &str = r#"k={{ getv(key="/k", default="absent") }}
ls={{ ls(path="/") | join(sep=",") }}
gets={% for kv in gets(pattern="/*") %}{{ kv.key }}={{ kv.value }};{% endfor %}
"#;

/// What a fresh `--onetime` renders from ETCD for a resource with prefix
/// PREFIX, keys `["/"]` and TEMPLATE: the reference a watcher must match.
fn fresh_one_shot(etcd: &Etcd, prefix: &str, template: &str) -> String {
    let conf = ConfDir::new();
    conf.dest("out/fresh.conf");
    conf.template("fresh.tera", template);
    conf.resource(
        "fresh",
        &format!(
            "[template]\nsrc = \"fresh.tera\"\ndest = \"out/fresh.conf\"\nprefix = {prefix:?}\nkeys = [\"/\"]\n"
        ),
    );
    run(&[
        "--confdir",
        conf.arg(),
        "--onetime",
        "--node",
        &etcd.client_url,
    ])
    .assert_success();
    conf.read("out/fresh.conf")
}

/// An etcd holding PAIRS.
fn etcd_with(pairs: &[(&str, &str)]) -> Etcd {
    let etcd = Etcd::start();
    etcd.put_many(pairs);
    etcd
}

/// Unit NAME rendering TEMPLATE from the prefix `/NAME` (keys `["/"]`), and
/// confera watching ETCD with EXTRA flags, once the first render is in.
fn watched(etcd: &Etcd, name: &str, template: &str, first: &str, extra: &[&str]) -> (Site, Daemon) {
    let site = Site::new();
    site.unit(name, &["/"], template, &format!("prefix = \"/{name}\""));
    let confera = site.watch_etcd(&etcd.client_url, WAIT, extra);
    site.wait_for_output(name, first);
    (site, confera)
}

/// Unit NAME's file is what a fresh one-shot renders from the same data.
#[track_caller]
fn assert_same_as_a_fresh_one_shot(site: &Site, name: &str, etcd: &Etcd, template: &str) {
    assert_eq!(
        site.output(name).unwrap(),
        fresh_one_shot(etcd, &format!("/{name}"), template),
        "watch and snapshot give the same store for the same data"
    );
}

#[test]
fn a_key_and_its_trailing_slash_spelling_are_two_keys_in_one_shot() {
    let etcd = etcd_with(&[("/e/j", "other"), ("/e/k", "plain"), ("/e/k/", "slash")]);
    assert_eq!(
        fresh_one_shot(&etcd, "/e", SEES),
        "k=plain\nls=j,k\ngets=/j=other;/k=plain;\n",
        "`/e/k/` must not shadow `/e/k`, and templates never see it"
    );
    etcd.delete("/e/k");
    assert_eq!(
        fresh_one_shot(&etcd, "/e", SEES),
        "k=absent\nls=j\ngets=/j=other;\n",
        "`/e/k/` must not stand in for a deleted `/e/k`"
    );
}

#[test]
fn deleting_one_spelling_of_a_key_keeps_the_other_in_watch_mode() {
    let etcd = etcd_with(&[("/e/j", "1"), ("/e/k", "plain"), ("/e/k/", "slash")]);
    let first = "k=plain\nls=j,k\ngets=/j=1;/k=plain;\n";
    let (site, _confera) = watched(&etcd, "e", SEES, first, &[]);

    // Deleting `/e/k/` leaves `/e/k`, which etcd still holds; the put after
    // it shows the watcher has seen the delete.
    etcd.delete("/e/k/");
    etcd.put("/e/j", "2");
    site.wait_for_output("e", "k=plain\nls=j,k\ngets=/j=2;/k=plain;\n");

    // And the other way round: `/e/k/` never stands in for `/e/k`.
    etcd.delete("/e/k");
    etcd.put("/e/k/", "slash again");
    etcd.put("/e/j", "3");
    site.wait_for_output("e", "k=absent\nls=j\ngets=/j=3;\n");
    assert_same_as_a_fresh_one_shot(&site, "e", &etcd, SEES);
}

/// Lists every key of the prefix.
const LIST: &str = "{% for kv in gets(pattern=\"/*\") %}{{ kv.key }}={{ kv.value }};{% endfor %}\n";

#[test]
fn a_value_that_is_not_utf8_put_over_a_live_key_gives_the_file_a_fresh_one_shot_gives() {
    let etcd = etcd_with(&[("/u/a", "1"), ("/u/b", "2")]);
    let (site, _confera) = watched(&etcd, "u", LIST, "/a=1;/b=2;\n", &[]);

    // A snapshot leaves such a key out, so the watcher must drop it too
    // rather than keep the old value live; the put after it shows the
    // watcher has seen it.
    etcd.put_bytes("/u/a", &[0xff, 0xfe]);
    etcd.put("/u/z", "after");
    site.wait_for_output("u", "/b=2;/z=after;\n");
    assert_same_as_a_fresh_one_shot(&site, "u", &etcd, LIST);
}

#[test]
fn a_value_that_is_not_utf8_is_logged_once_with_its_key_escaped_and_counted() {
    let etcd = etcd_with(&[("/u/a", "1"), ("/u/bad\nkey", "2")]);
    let port = reserve_ports(1);
    let metrics = format!("127.0.0.1:{}", port.ports()[0]);
    // `--interval 1` adds full resyncs, which read the bad values again.
    let extra = ["--metrics-addr", &metrics, "--interval", "1"];
    let (site, confera) = watched(&etcd, "u", LIST, "/a=1;/bad\nkey=2;\n", &extra);
    etcd.put_bytes("/u/a", &[0xff, 0xfe]);
    etcd.put_bytes("/u/bad\nkey", &[b'x', 0xc3]);
    site.wait_for_output("u", "\n");

    let url = format!("http://{metrics}");
    let resyncs = || {
        sum_metric(
            &scrape(&url),
            "confera_full_resyncs_total",
            &[r#"backend="etcd""#],
        )
    };
    assert!(
        wait_until(DEADLINE, || resyncs() >= 2.0),
        "no two full resyncs within {DEADLINE:?}\n{}",
        confera.log()
    );
    // Once per bad value, whether a watch or a snapshot met it; a newline in
    // a key cannot forge a log line.
    assert_eq!(
        confera.log_count("value is not UTF-8"),
        2,
        "{}",
        confera.log()
    );
    assert!(
        confera.log().contains(r"key=/u/bad\nkey"),
        "{}",
        confera.log()
    );
    assert_eq!(
        sum_metric(
            &scrape(&url),
            "confera_undecodable_entries_total",
            &[r#"part="value""#]
        ),
        2.0
    );
}
