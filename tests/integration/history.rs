//! A rewritten etcd history is noticed (issue 12): when etcd is wiped (or
//! restored from an old backup) its revision goes back; confera sees it,
//! replaces its store with a fresh snapshot, renders what changed, and says
//! so in its logs, its status and its metrics, without `--interval`.

use std::time::Duration;

use serde_json::Value;

use crate::support::cmd::{reserve_ports, wait_until};
use crate::support::etcd::{scrape, sum_metric, Etcd};
use crate::watch::{Site, WAIT};

const PEERS: &str = r#"{% for kv in gets(pattern="/app/peers/*") %}{{ kv.key }}={{ kv.value }}
{% endfor %}"#;

#[test]
fn a_wiped_etcd_with_other_keys_is_noticed_and_the_file_follows_it_without_interval() {
    let mut etcd = Etcd::start();
    for i in 0..40 {
        etcd.put("/app/peers/a", &i.to_string());
    }
    etcd.put("/app/peers/b", "old");
    let site = Site::new();
    site.unit("app", &["/app"], PEERS, "");
    let port = reserve_ports(1);
    let addr = format!("127.0.0.1:{}", port.ports()[0]);
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &["--metrics-addr", &addr]);
    site.wait_for_output("app", "/app/peers/a=39\n/app/peers/b=old\n");
    let old_revision = etcd.revision();

    etcd.wipe_and_restart();
    etcd.put("/app/peers/new", "1");
    assert!(etcd.revision() < old_revision);

    let converged = wait_until(Duration::from_secs(15), || {
        site.output("app").as_deref() == Some("/app/peers/new=1\n")
    });
    assert!(
        converged,
        "the file is {:?} 15 s after etcd was wiped\n{}",
        site.output("app"),
        confera.log()
    );
    assert!(
        confera.log().contains("etcd history was rewritten"),
        "{}",
        confera.log()
    );
    let fetch = || -> Value {
        let body = crate::isolation::get(&addr, "/status")
            .expect("/status answers")
            .1;
        serde_json::from_str(&body).unwrap()
    };
    // The file is written before the loop hears that its unit is done.
    wait_until(Duration::from_secs(5), || {
        fetch()["resources"]["app"]["revision"] == etcd.revision()
    });
    let status = fetch();
    let change = &status["backend"]["last_history_change"];
    assert_eq!(change["old_revision"], old_revision, "{status}");
    assert!(
        change["reason"].as_str().unwrap().contains("went back"),
        "{status}"
    );
    assert_eq!(status["backend"]["repairing_history"], Value::Null);
    assert_eq!(
        status["resources"]["app"]["revision"],
        etcd.revision(),
        "{status}"
    );
    let metrics = scrape(&format!("http://{addr}"));
    assert!(sum_metric(&metrics, "confera_history_changes_total", &[]) >= 1.0);
    assert_eq!(
        sum_metric(&metrics, "confera_backend_revision", &[]),
        etcd.revision() as f64
    );
}
