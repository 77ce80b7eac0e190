//! Logs a person and a log query can use (issue 15 items 7 and 9): every
//! JSON event about a resource carries `resource` (and `dest`, and for a
//! reload `resources`) at the top level; a failure names the resource and
//! what failed; a quiet run logs one summary line; polling says its period;
//! a dry run never says it is ready.

use std::time::Duration;

use serde_json::Value;

use crate::isolation::get;
use crate::support::cmd::{reserve_ports, wait_until, Daemon, Run};
use crate::support::confdir::ConfDir;

const DEADLINE: Duration = Duration::from_secs(10);

/// Two resources, `a` and `b`, printing `/a` and `/b`, sharing one reload
/// command, and the data file.
fn two_resources(conf: &ConfDir, a: &str, b: &str) {
    conf.template("t.tera", "v = {{ getv(key=\"/v\") }}\n");
    for name in ["a", "b"] {
        let dest = conf.dest(&format!("out/{name}.conf"));
        conf.resource(
            name,
            &format!(
                "[template]\nsrc = \"t.tera\"\ndest = \"{}\"\nprefix = \"/{name}\"\nkeys = [\"/v\"]\nreload_cmd = \"true\"\n",
                dest.display()
            ),
        );
    }
    conf.file(
        "data.yaml",
        &format!("a:\n  v: \"{a}\"\nb:\n  v: \"{b}\"\n"),
    );
}

fn onetime(conf: &ConfDir, flags: &[&str]) -> Run {
    conf.onetime_with_file("data.yaml", flags)
}

/// The JSON events on stderr with this message.
fn events<'a>(events: &'a [Value], message: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["message"] == message).collect()
}

#[test]
fn json_events_about_a_resource_carry_resource_and_dest_at_the_top_level() {
    let conf = ConfDir::new();
    two_resources(&conf, "1", "1");

    let r = onetime(&conf, &["--log-format", "json"]);

    r.assert_success();
    let all: Vec<Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for name in ["a", "b"] {
        let dest = conf.path().join(format!("out/{name}.conf"));
        let committed = events(&all, "committed");
        assert!(
            committed
                .iter()
                .any(|e| e["resource"] == name && e["dest"] == dest.to_str().unwrap()),
            "{r}"
        );
        // One reload for both, logged for each, naming both.
        let reloaded = events(&all, "reload command succeeded");
        assert_eq!(reloaded.len(), 2, "{r}");
        assert!(
            reloaded
                .iter()
                .any(|e| e["resource"] == name && e["resources"] == "a,b"),
            "{r}"
        );
    }

    // A failure carries the resource at the top level too.
    conf.template("t.tera", "v = {{ getv(key=\"/missing\") }}\n");
    let failed = onetime(&conf, &["--log-format", "json"]);
    failed.assert_code(1);
    let all: Vec<Value> = failed
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors: Vec<&Value> = all.iter().filter(|e| e["level"] == "ERROR").collect();
    assert!(errors.iter().any(|e| e["resource"] == "a"), "{failed}");
    assert!(
        errors.iter().any(|e| e["message"] == "a: render failed"),
        "{failed}"
    );
}

#[test]
fn a_failure_names_the_resource_and_what_failed_and_a_quiet_run_logs_one_summary() {
    let conf = ConfDir::new();
    two_resources(&conf, "1", "1");
    onetime(&conf, &[]).assert_success();

    let quiet = onetime(&conf, &[]);

    quiet.assert_success();
    let info: Vec<&str> = quiet
        .stderr
        .lines()
        .filter(|l| !l.contains("snapshot loaded"))
        .collect();
    assert_eq!(info.len(), 1, "{quiet}");
    assert!(info[0].contains("INFO 2 resources, 0 changed"), "{quiet}");

    conf.resource(
        "a",
        &format!(
            "[template]\nsrc = \"t.tera\"\ndest = \"{}\"\nprefix = \"/a\"\nkeys = [\"/v\"]\ncheck_cmd = \"false\"\n",
            conf.path().join("out/a.conf").display()
        ),
    );
    conf.file("data.yaml", "a:\n  v: \"2\"\nb:\n  v: \"1\"\n");
    let failed = onetime(&conf, &[]);
    failed
        .assert_code(1)
        .assert_stderr_contains("ERROR a: check failed resource=a error=check failed")
        .assert_stderr_contains("INFO 2 resources, 0 changed, 1 failed");
}

#[test]
fn polling_mode_logs_its_period() {
    let conf = ConfDir::new();
    two_resources(&conf, "1", "1");
    let data = conf.path().join("data.yaml");
    let mut confera = Daemon::spawn(&[
        "--confdir",
        conf.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--interval",
        "3",
    ]);

    assert!(
        confera.wait_for_log("polling every 3s", DEADLINE),
        "{}",
        confera.log()
    );
    assert_eq!(confera.terminate(), 0);
}

#[test]
fn a_dry_run_in_watch_mode_never_logs_ready() {
    let conf = ConfDir::new();
    two_resources(&conf, "1", "1");
    let data = conf.path().join("data.yaml");
    let port = reserve_ports(1);
    let addr = format!("127.0.0.1:{}", port.ports()[0]);
    let mut confera = Daemon::spawn(&[
        "--confdir",
        conf.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--watch",
        "--noop",
        "--metrics-addr",
        &addr,
    ]);

    // Ready for probes once the first batch was attempted...
    assert!(
        wait_until(DEADLINE, || get(&addr, "/readyz")
            .is_some_and(|(s, _)| s == 200)),
        "{}",
        confera.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    // ...but a dry run does not claim it in the log.
    assert!(!confera.log().contains("ready"), "{}", confera.log());
    assert!(confera.log().contains("would change"), "{}", confera.log());
    assert_eq!(confera.terminate(), 0);
}
