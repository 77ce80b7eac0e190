//! Running confera as a service: what an operator sees from outside.
//!
//! - `--metrics-addr` serves `/metrics` (OpenMetrics), `/healthz` and
//!   `/readyz`, in watch mode and in polling mode; the counters and gauges
//!   follow renders, commits, reloads, check failures and the store.
//! - `/healthz` is 503 with a reason naming etcd while etcd is unreachable,
//!   200 while connected; `/readyz` is 200 once the first full render is
//!   committed, 503 before.
//! - `--log-format json` writes one JSON object per line on stderr.
//! - systemd: `READY=1` after the first full render, `WATCHDOG=1` at half of
//!   `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM.
//! - `confera completions`, `confera man`, `confera check` and `--help`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use clap::CommandFactory;
use serde_json::Value;

use crate::support::cmd::{confera, reserve_ports, run, run_cmd, wait_until, Daemon, PortLease};
use crate::support::confdir::ConfDir;
use crate::support::etcd::{sum_metric, Etcd};
use crate::watch::{unchanged_renders, Site, DEADLINE, WAIT};

const GREETING: &str = "greeting={{ getv(key=\"/app/greeting\") }}\n";

/// The HTTP side of `--metrics-addr 127.0.0.1:P`, on a free loopback port
/// held for as long as the probe lives.
struct Probe {
    addr: String,
    _port: PortLease,
}

impl Probe {
    fn new() -> Probe {
        let port = reserve_ports(1);
        Probe {
            addr: format!("127.0.0.1:{}", port.ports()[0]),
            _port: port,
        }
    }

    /// `127.0.0.1:P`, for `--metrics-addr`.
    fn addr(&self) -> &str {
        &self.addr
    }

    /// GET PATH: (status, body), or None while nothing listens.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.addr, path)
    }

    /// Waits until GET PATH answers STATUS; returns the body.
    #[track_caller]
    fn wait_status(&self, path: &str, status: u16) -> String {
        let mut last = None;
        let ok = wait_until(DEADLINE, || {
            last = self.get(path);
            last.as_ref().is_some_and(|(s, _)| *s == status)
        });
        assert!(
            ok,
            "GET {path} did not answer {status} within {DEADLINE:?}; last answer: {last:?}"
        );
        last.unwrap().1
    }

    /// The current `/metrics` text ("" while nothing listens).
    fn metrics(&self) -> String {
        match self.get("/metrics") {
            Some((200, body)) => body,
            _ => String::new(),
        }
    }

    /// The sum of the samples of NAME with all of LABELS (`name="value"`).
    fn value(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics(), name, labels)
    }

    /// Waits until the sample NAME{LABELS} equals WANT.
    #[track_caller]
    fn wait_value(&self, name: &str, labels: &[&str], want: f64) {
        let ok = wait_until(DEADLINE, || self.value(name, labels) == want);
        assert!(
            ok,
            "{name}{labels:?} is {} after {DEADLINE:?}, want {want}\n--- /metrics\n{}",
            self.value(name, labels),
            self.metrics()
        );
    }

    /// Asserts that the sample NAME{LABELS} equals WANT now.
    #[track_caller]
    fn assert_value(&self, name: &str, labels: &[&str], want: f64) {
        let text = self.metrics();
        assert_eq!(
            sum_metric(&text, name, labels),
            want,
            "{name}{labels:?}\n--- /metrics\n{text}"
        );
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close` over a std TcpStream:
/// (status, body), or None when the connection is refused.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

const RENDERS: &str = "confera_renders_total";
const COMMITS: &str = "confera_commits_total";
const RELOADS: &str = "confera_reloads_total";
const CHECK_FAILURES: &str = "confera_check_failures_total";
const STORE_KEYS: &str = "confera_store_keys";
const REVISION: &str = "confera_backend_revision";
const EVENTS: &str = "confera_events_applied_total";
const BACKEND_UP: &str = "confera_backend_up";

const APP: &str = r#"resource="app""#;
const SUCCESS: &str = r#"result="success""#;
const SIGNAL: &str = r#"method="signal""#;
const ETCD: &str = r#"backend="etcd""#;

/// etcd with /app/greeting=hello and confera watching it (serving metrics on
/// PROBE) with unit `app`, whose check refuses the word "forbidden"; returns
/// once the first render is committed and its SIGHUP handled.
fn metered_site(probe: &Probe) -> (Etcd, Site, Daemon) {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit(
        "app",
        &["/app"],
        GREETING,
        r#"check_cmd = "! grep -q forbidden {{src}}""#,
    );
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &["--metrics-addr", probe.addr()]);
    site.wait_for_output("app", "greeting=hello\n");
    site.wait_for_hups(1);
    (etcd, site, confera)
}

#[test]
fn metrics_follow_renders_commits_reloads_and_the_store() {
    let probe = Probe::new();
    let (etcd, site, confera) = metered_site(&probe);

    probe.wait_value(RELOADS, &[APP, SIGNAL, SUCCESS], 1.0);
    probe.assert_value(RENDERS, &[APP, SUCCESS], 1.0);
    probe.assert_value(COMMITS, &[APP], 1.0);
    probe.assert_value(STORE_KEYS, &[], 1.0);
    probe.wait_value(REVISION, &[ETCD], etcd.revision() as f64);
    probe.assert_value(EVENTS, &[ETCD], 0.0);

    // A change of output: rendered, committed, reloaded.
    etcd.put("/app/greeting", "world");
    site.wait_for_output("app", "greeting=world\n");
    probe.wait_value(RELOADS, &[APP, SIGNAL, SUCCESS], 2.0);
    probe.assert_value(RENDERS, &[APP, SUCCESS], 2.0);
    probe.assert_value(COMMITS, &[APP], 2.0);
    probe.assert_value(EVENTS, &[ETCD], 1.0);
    probe.assert_value(REVISION, &[ETCD], etcd.revision() as f64);

    // A key the template does not read: rendered, nothing committed.
    let unchanged = unchanged_renders(&confera);
    etcd.put("/app/extra", "1");
    assert!(wait_until(DEADLINE, || unchanged_renders(&confera) > unchanged));
    probe.wait_value(STORE_KEYS, &[], 2.0);
    probe.assert_value(RENDERS, &[APP, SUCCESS], 3.0);
    probe.assert_value(COMMITS, &[APP], 2.0);
    probe.assert_value(RELOADS, &[APP], 2.0);
    probe.assert_value(EVENTS, &[ETCD], 2.0);

    // A delete moves the store gauges too.
    etcd.delete("/app/extra");
    probe.wait_value(STORE_KEYS, &[], 1.0);
    probe.wait_value(EVENTS, &[ETCD], 3.0);
    probe.assert_value(REVISION, &[ETCD], etcd.revision() as f64);
}

#[test]
fn metrics_count_check_failures_and_nothing_is_committed_or_reloaded() {
    let probe = Probe::new();
    let (etcd, site, _confera) = metered_site(&probe);
    probe.wait_value(RELOADS, &[APP, SIGNAL, SUCCESS], 1.0);
    probe.assert_value(CHECK_FAILURES, &[APP], 0.0);

    etcd.put("/app/greeting", "forbidden");

    let failed = wait_until(DEADLINE, || probe.value(CHECK_FAILURES, &[APP]) >= 1.0);
    assert!(failed, "no check failure counted\n{}", probe.metrics());
    probe.assert_value(COMMITS, &[APP], 1.0);
    probe.assert_value(RELOADS, &[APP], 1.0);
    assert_eq!(site.output("app").as_deref(), Some("greeting=hello\n"));
    assert_eq!(site.daemon.hups(), 1);
}

#[test]
fn healthz_is_503_naming_etcd_while_etcd_is_down_and_200_once_it_is_back() {
    let probe = Probe::new();
    let (mut etcd, site, _confera) = metered_site(&probe);
    assert_eq!(probe.wait_status("/healthz", 200), "ok");
    probe.wait_value(BACKEND_UP, &[ETCD], 1.0);

    etcd.kill();

    let mut last = None;
    let down = wait_until(DEADLINE, || {
        last = probe.get("/healthz");
        last.as_ref()
            .is_some_and(|(status, reason)| *status == 503 && reason.contains("etcd"))
    });
    assert!(down, "/healthz names no unreachable etcd: {last:?}");
    probe.assert_value(BACKEND_UP, &[ETCD], 0.0);
    assert_eq!(site.output("app").as_deref(), Some("greeting=hello\n"));

    etcd.restart();

    let ok = wait_until(Duration::from_secs(10), || {
        probe.get("/healthz") == Some((200, "ok".to_owned()))
    });
    assert!(
        ok,
        "/healthz after etcd returned: {:?}",
        probe.get("/healthz")
    );
    probe.wait_value(BACKEND_UP, &[ETCD], 1.0);
    etcd.put("/app/greeting", "back");
    site.wait_for_output("app", "greeting=back\n");
}

/// Issue 12: ready means the first batch was attempted; a failing resource
/// shows in the status, not as a daemon that never becomes ready (systemd
/// would kill it at its start timeout).
#[test]
fn readyz_is_200_once_the_first_batch_was_attempted_even_if_a_resource_fails() {
    let etcd = Etcd::start();
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    let probe = Probe::new();
    let _confera = site.watch_etcd(&etcd.client_url, WAIT, &["--metrics-addr", probe.addr()]);

    // The first render fails: /app/greeting is missing.
    assert_eq!(probe.wait_status("/readyz", 200), "ready");
    assert!(probe.value(RENDERS, &[APP, r#"result="failure""#]) >= 1.0);
    let status: Value = serde_json::from_str(&probe.get("/status").unwrap().1).unwrap();
    let app = &status["resources"]["app"];
    assert_eq!(app["failing"], true, "{status}");
    assert!(
        app["last_error"]
            .as_str()
            .unwrap()
            .contains("/app/greeting"),
        "{status}"
    );
    probe.assert_value("confera_resource_failing", &[APP], 1.0);

    etcd.put("/app/greeting", "hello");

    site.wait_for_output("app", "greeting=hello\n");
    probe.wait_value("confera_resource_failing", &[APP], 0.0);
    assert_eq!(probe.get("/readyz"), Some((200, "ready".to_owned())));
}

#[test]
fn polling_mode_serves_metrics_health_and_readiness_too() {
    let dir = ConfDir::new();
    dir.file("data.yaml", "app:\n  greeting: polled\n")
        .template("app.tera", GREETING)
        .resource(
            "app",
            &format!(
                "[template]\nsrc = \"app.tera\"\ndest = {:?}\nkeys = [\"/app\"]\n",
                dir.dest("out/app.conf")
            ),
        );
    let probe = Probe::new();
    let data = dir.path().join("data.yaml");
    let _confera = Daemon::spawn(&[
        "--confdir",
        dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--interval",
        "60",
        "--metrics-addr",
        probe.addr(),
    ]);

    assert_eq!(probe.wait_status("/readyz", 200), "ready");
    assert_eq!(dir.read("out/app.conf"), "greeting=polled\n");
    assert_eq!(probe.wait_status("/healthz", 200), "ok");
    probe.assert_value(COMMITS, &[APP], 1.0);
    probe.assert_value(RENDERS, &[APP, SUCCESS], 1.0);
    probe.assert_value(STORE_KEYS, &[], 1.0);
}

/// Every stderr line of a JSON-logging run, parsed; panics naming the first
/// line that is not one JSON object.
fn json_lines(stderr: &str) -> Vec<serde_json::Map<String, Value>> {
    stderr
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => map,
            other => panic!("not one JSON object per line: {line:?} ({other:?})\n{stderr}"),
        })
        .collect()
}

/// The unit a JSON line is about: the `unit` field of the event, or of the
/// `span` it was logged in.
fn unit_of(line: &serde_json::Map<String, Value>) -> Option<&str> {
    line.get("resource")
        .or_else(|| line.get("span").and_then(|s| s.get("resource")))
        .and_then(Value::as_str)
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields_and_stdout_stays_empty() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "").unit(
        "broken",
        &["/broken"],
        "{{ getv(key=\"/broken/missing\") }}",
        "",
    );
    let mut confera = site.watch_etcd(&etcd.client_url, WAIT, &["--log-format", "json"]);
    site.wait_for_output("app", "greeting=hello\n");
    etcd.put("/app/greeting", "world");
    site.wait_for_output("app", "greeting=world\n");
    assert!(confera.wait_for_log("will retry", DEADLINE));
    assert_eq!(confera.terminate(), 0);

    let lines = json_lines(&confera.log());

    // Every line: an RFC 3339 `timestamp`, an upper-case `level` and a
    // `message`; the event's own fields sit beside them (flattened).
    for line in &lines {
        let timestamp = line["timestamp"].as_str().unwrap_or_default();
        assert!(timestamp.len() > 19 && timestamp.ends_with('Z'), "{line:?}");
        let level = line["level"].as_str().unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "{line:?}"
        );
        assert!(
            line["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{line:?}"
        );
    }
    // A commit names its destination in `dest`, and its unit in the `span`
    // it ran in: {"span": {"name": "resource", "resource": "app"}}.
    let dest = site.dest("app").display().to_string();
    let commits: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "committed")
        .collect();
    assert_eq!(commits.len(), 2, "{lines:#?}");
    for commit in commits {
        assert_eq!(commit["level"], "INFO");
        assert_eq!(commit["dest"], dest.as_str());
        assert_eq!(commit["span"]["name"], "resource");
        assert_eq!(commit["span"]["resource"], "app");
    }
    // A failed unit: an ERROR naming the unit, with the cause in `error`
    // (template, line and key); its retry: a WARN with `attempt` and
    // `retry_in_ms`.
    let failure = lines
        .iter()
        .find(|l| l["level"] == "ERROR" && unit_of(l) == Some("broken"))
        .unwrap_or_else(|| panic!("no ERROR line for unit broken: {lines:#?}"));
    let error = failure["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("broken.tera")
            && error.contains("line 1")
            && error.contains("/broken/missing"),
        "{failure:?}"
    );
    let retry = lines.iter().find(|l| l["message"] == "will retry").unwrap();
    assert_eq!(retry["level"], "WARN");
    assert_eq!(unit_of(retry), Some("broken"));
    assert!(
        retry["attempt"].as_u64().is_some_and(|a| a >= 1),
        "{retry:?}"
    );
    assert!(retry["retry_in_ms"].as_u64().is_some(), "{retry:?}");
    assert_eq!(confera.stdout(), "", "stdout carries no logs");
}

/// A `NOTIFY_SOCKET` stand-in: a datagram socket in a temp dir that collects
/// what confera tells "systemd".
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
            received: Vec::new(),
        }
    }

    /// Reads every datagram waiting; returns how many messages so far.
    fn poll(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.received
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.received.len()
    }

    /// How many messages received so far carry the assignment LINE.
    fn count(&mut self, line: &str) -> usize {
        self.poll();
        self.received
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    #[track_caller]
    fn wait_for(&mut self, line: &str, n: usize) {
        let ok = wait_until(DEADLINE, || self.count(line) >= n);
        assert!(
            ok,
            "fewer than {n} {line:?} within {DEADLINE:?}; received {:?}",
            self.received
        );
    }
}

#[test]
fn systemd_hears_ready_once_the_first_batch_was_attempted_watchdog_pings_and_stopping() {
    let dir = ConfDir::new();
    dir.file("data.yaml", "app: {}\n")
        .template("app.tera", GREETING)
        .resource(
            "app",
            &format!(
                "[template]\nsrc = \"app.tera\"\ndest = {:?}\nkeys = [\"/app\"]\n",
                dir.dest("out/app.conf")
            ),
        );
    let mut notify = NotifySocket::bind();
    let data = dir.path().join("data.yaml");
    let mut cmd = confera();
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .args(["--confdir", dir.arg(), "--backend", "file", "--file"])
        .arg(&data)
        .args(["--watch", "--wait", WAIT, "--log-level", "debug"]);
    let mut confera = Daemon::spawn_cmd(cmd);

    // The first render fails (no /app/greeting): the batch was attempted,
    // so READY=1 all the same; the failure shows per resource.
    assert!(confera.wait_for_log("will retry", DEADLINE));
    notify.wait_for("WATCHDOG=1", 2);
    notify.wait_for("READY=1", 1);

    dir.file("data.yaml", "app:\n  greeting: ready\n");

    assert!(wait_until(DEADLINE, || dir
        .try_read("out/app.conf")
        .as_deref()
        == Some("greeting=ready\n")));
    // WATCHDOG_USEC=200000: a ping every 100 ms.
    let pings = notify.count("WATCHDOG=1");
    notify.wait_for("WATCHDOG=1", pings + 3);

    assert_eq!(notify.count("STOPPING=1"), 0, "{:?}", notify.received);
    assert_eq!(confera.terminate(), 0);
    notify.wait_for("STOPPING=1", 1);
    assert_eq!(notify.count("READY=1"), 1, "{:?}", notify.received);
}

#[test]
fn completions_and_the_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        out.assert_success();
        assert!(
            out.stdout.contains("confera") && out.stdout.contains("confdir"),
            "{shell}: {out}"
        );
    }
    let man = run(&["man"]);
    man.assert_success();
    assert!(man.stdout.contains(".TH confera 1"), "{man}");
    assert!(man.stdout.contains("metrics\\-addr"), "{man}");
}

#[test]
fn check_reports_a_broken_template_with_file_and_line_and_exits_2() {
    let dir = ConfDir::new();
    dir.template("good.tera", GREETING)
        .resource(
            "good",
            "[template]\nsrc = \"good.tera\"\ndest = \"out/good.conf\"\nkeys = [\"/app\"]\n",
        )
        .template("bad.tera", "first line\nsecond line\n{% if %}\n")
        .resource(
            "bad",
            "[template]\nsrc = \"bad.tera\"\ndest = \"out/bad.conf\"\nkeys = [\"/app\"]\n",
        );

    let out = run(&["check", "--confdir", dir.arg()]);

    out.assert_code(2)
        .assert_stderr_contains("bad.tera")
        .assert_stderr_contains("line 3");
    assert!(!dir.exists("out"), "check wrote something: {out}");
}

#[test]
fn check_lists_what_each_unit_reads_without_any_backend() {
    let dir = ConfDir::new();
    dir.template("app.tera", GREETING)
        .resource(
            "app",
            "[template]\nsrc = \"app.tera\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n",
        )
        .template("bird.tera", "{{ getv(key=\"/asn\") }}")
        .template("filters.tera", "{{ getv(key=\"/policy/x\") }}")
        .resource(
            "bird",
            concat!(
                "[[template]]\nsrc = \"bird.tera\"\ndest = \"/etc/bird/bird.conf\"\n",
                "prefix = \"/fabric\"\nkeys = [\"/asn\", \"/nodes\"]\n",
                "[[template]]\nsrc = \"filters.tera\"\ndest = \"/etc/bird/filters.conf\"\n",
                "prefix = \"/fabric\"\nkeys = [\"/policy\"]\n",
            ),
        );
    // The destination directory exists, so check finds nothing that would
    // fail here (/etc/bird may draw a warning: bird can write it).
    dir.dest("out/app.conf");
    // An etcd endpoint where nothing listens: check never asks it.
    let unused = reserve_ports(1);
    let mut cmd = confera();
    cmd.env(
        "CONFERA_NODE",
        format!("http://127.0.0.1:{}", unused.ports()[0]),
    )
    .args(["check", "--confdir", dir.arg()]);

    let out = run_cmd(cmd);

    out.assert_success();
    let app_dest = dir.path().join("out/app.conf");
    assert_eq!(
        out.stdout,
        format!(
            "app: app.tera -> {} (prefix /, keys /app)\n\
             bird: bird.tera -> /etc/bird/bird.conf (prefix /fabric, keys /asn, /nodes)\n\
             bird: filters.tera -> /etc/bird/filters.conf (prefix /fabric, keys /policy)\n",
            app_dest.display()
        ),
        "{out}"
    );
    let written = std::fs::read_dir(dir.path().join("out")).unwrap().count();
    assert_eq!(written, 0, "check wrote something: {out}");
}

/// The help headings and the flags under each, in order.
const HELP_SECTIONS: [(&str, &[&str]); 4] = [
    (
        "Source",
        &[
            "confdir",
            "config-file",
            "backend",
            "node",
            "file",
            "prefix",
            "username",
            "password",
            "client-cert",
            "client-key",
            "client-ca-keys",
        ],
    ),
    (
        "Mode",
        &[
            "onetime",
            "watch",
            "interval",
            "wait",
            "wait-mode",
            "render-timeout",
            "max-output",
            "stuck-after",
            "state-dir",
            "exec",
        ],
    ),
    (
        "Output",
        &["noop", "diff", "exit-code", "sync-only", "keep-stage-file"],
    ),
    ("Logging", &["log-level", "log-format", "metrics-addr"]),
];

/// The `--long` flags of each `Heading:` section of a help text, in order.
fn sections(help: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in help.lines() {
        if let Some(heading) = line.strip_suffix(':').filter(|h| !h.starts_with(' ')) {
            sections.push((heading.to_owned(), Vec::new()));
        } else if let (Some(flag), Some((_, flags))) =
            (line.trim_start().strip_prefix("--"), sections.last_mut())
        {
            let name = flag.split([' ', '=']).next().unwrap_or_default();
            flags.push(name.to_owned());
        }
    }
    sections
}

#[test]
fn help_groups_the_flags_under_source_mode_output_and_logging() {
    let out = run(&["--help"]);
    out.assert_success();

    let found = sections(&out.stdout);
    let grouped: Vec<(&str, Vec<&str>)> = found
        .iter()
        .filter(|(h, _)| HELP_SECTIONS.iter().any(|(want, _)| want == h))
        .map(|(h, flags)| (h.as_str(), flags.iter().map(String::as_str).collect()))
        .collect();
    let want: Vec<(&str, Vec<&str>)> = HELP_SECTIONS
        .iter()
        .map(|(h, flags)| (*h, flags.to_vec()))
        .collect();
    assert_eq!(grouped, want, "{}", out.stdout);
}

#[test]
fn every_flag_has_a_one_line_explanation() {
    // In the short help, each explanation starts on its flag's line.
    let short = run(&["-h"]);
    short.assert_success();
    for line in short.stdout.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") {
            let (flag, explanation) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
            assert!(
                !explanation.trim().is_empty(),
                "{flag} has no explanation on its line\n{}",
                short.stdout
            );
        }
    }
    // Each explanation is one paragraph: no line breaks, no long help.
    let cli = confera::cli::Cli::command();
    for arg in cli.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(!help.trim().is_empty(), "--{long} has no help");
        assert!(!help.contains('\n'), "--{long}: {help:?} is not one line");
        assert!(
            arg.get_long_help().is_none(),
            "--{long} has a long help beyond its one line"
        );
    }
}

#[test]
fn status_lists_each_resource_and_confera_status_reads_it_from_the_metrics_address() {
    let probe = Probe::new();
    let (mut etcd, _site, _confera) = metered_site(&probe);
    let revision = etcd.revision();
    let fetch = || -> Value { serde_json::from_str(&probe.get("/status").unwrap().1).unwrap() };
    assert!(wait_until(DEADLINE, || fetch()["resources"]["app"]
        ["revision"]
        == revision));
    let status = fetch();
    let app = &status["resources"]["app"];
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["backend"]["up"], true, "{status}");
    assert!(app["last_attempt"].as_f64().is_some(), "{status}");
    assert!(app["last_success"].as_f64().is_some(), "{status}");
    assert_eq!(app["last_error"], Value::Null, "{status}");
    assert_eq!(app["pending_reload"], false, "{status}");
    assert_eq!(app["stuck"], false, "{status}");

    let table = run(&["status", "--metrics-addr", probe.addr()]);
    table.assert_success();
    table.assert_stdout_contains(&format!("confera at {}: healthy, ready", probe.addr()));
    assert!(
        table.stdout.lines().any(|l| l.starts_with("app ")
            && l.contains(" ok ")
            && l.contains(&revision.to_string())),
        "{table}"
    );
    let json = run(&["status", "--json", "--metrics-addr", probe.addr()]);
    json.assert_success();
    let parsed: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed["resources"]["app"]["revision"], revision);

    etcd.stop();
    assert!(wait_until(DEADLINE, || run(&[
        "status",
        "--metrics-addr",
        probe.addr()
    ])
    .code
        == 1));
    run(&["status", "--metrics-addr", probe.addr()])
        .assert_code(1)
        .assert_stdout_contains("UNHEALTHY")
        .assert_stdout_contains("etcd");
}

#[test]
fn confera_status_with_nothing_listening_is_exit_2_naming_the_address() {
    let probe = Probe::new();
    run(&["status", "--metrics-addr", probe.addr()])
        .assert_code(2)
        .assert_stderr_contains(probe.addr());
    run(&["status"])
        .assert_code(2)
        .assert_stderr_contains("--metrics-addr");
}

/// Issue 11 item 4: clients of the metrics port can never take the
/// descriptors that staging and commits need.
#[test]
fn eleven_hundred_half_open_metrics_connections_under_ulimit_1024_never_starve_a_commit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // This test's own side of the connections needs more than 1024.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192).max(soft), hard).unwrap();
    }
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    let probe = Probe::new();
    let mut cmd = std::process::Command::new("sh");
    let binary = std::env::var_os("CONFERA_TEST_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_confera").into());
    cmd.args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(binary)
        .args(["--confdir", site.dir.arg(), "--backend", "etcd", "--node"])
        .arg(&etcd.client_url)
        .args(["--watch", "--wait", WAIT, "--metrics-addr", probe.addr()])
        .stdin(std::process::Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"CONFERA_") {
            cmd.env_remove(name);
        }
    }
    let confera = Daemon::spawn_cmd(cmd);
    site.wait_for_output("app", "greeting=hello\n");
    assert_eq!(probe.wait_status("/readyz", 200), "ready");

    let addr: std::net::SocketAddr = probe.addr().parse().unwrap();
    // 1,100 connections from 100 threads, so connects that wait in a full
    // backlog time out side by side; past confera's cap the rest wait in
    // the kernel's backlog (or time out).
    let openers: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for _ in 0..11 {
                    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        // Half a request, never finished.
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHo");
                        mine.push(s);
                    }
                }
                mine
            })
        })
        .collect();
    let clients: Vec<TcpStream> = openers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    eprintln!("opened {} connections", clients.len());
    // More than confera's cap of 64 got through; the rest wait in the
    // kernel (or time out) without costing confera a descriptor.
    assert!(
        clients.len() >= 100,
        "only {} connections opened",
        clients.len()
    );

    etcd.put("/app/greeting", "still committed");
    site.wait_for_output("app", "greeting=still committed\n");
    assert!(
        !confera.log().contains("Too many open files"),
        "{}",
        confera.log()
    );
    drop(clients);
}

/// The Grafana dashboard in examples/ queries only metric names that a
/// running confera really exports (counters with `_total`, histograms
/// with `_bucket`/`_sum`/`_count`).
#[test]
fn the_grafana_dashboard_queries_only_metrics_that_confera_exports() {
    let dir = ConfDir::new();
    dir.file("data.yaml", "app:\n  greeting: hi\n")
        .template("app.tera", GREETING)
        .resource(
            "app",
            &format!(
                "[template]\nsrc = \"app.tera\"\ndest = {:?}\nkeys = [\"/app\"]\nreload_cmd = \"true\"\n",
                dir.dest("out/app.conf")
            ),
        );
    let probe = Probe::new();
    let data = dir.path().join("data.yaml");
    let _confera = Daemon::spawn(&[
        "--confdir",
        dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--watch",
        "--metrics-addr",
        probe.addr(),
    ]);
    assert_eq!(probe.wait_status("/readyz", 200), "ready");
    let exposition = probe.metrics();
    let mut exported = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            exported.insert(format!("{family}{suffix}"));
        }
    }

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana-dashboard.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let name = regex::Regex::new(r"confera_[a-z_]+").unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            queried.extend(name.find_iter(expr).map(|m| m.as_str().to_owned()));
        }
    }
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not export:\n{exposition}"
    );
    assert!(queried.len() >= 15, "{queried:?}");
    for key in [
        "confera_resource_stuck",
        "confera_history_changes_total",
        "confera_reload_pending",
    ] {
        assert!(queried.contains(key), "the dashboard shows no {key}");
    }
}

/// Issue 12: a resource has succeeded once its daemon took the new
/// configuration, not when its file was written.
#[test]
fn last_success_timestamp_waits_for_the_reload() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    site.daemon.kill();
    let probe = Probe::new();
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &["--metrics-addr", probe.addr()]);
    site.wait_for_output("app", "greeting=hello\n");
    assert!(confera.wait_for_log("reload failed", DEADLINE));
    probe.wait_value(RELOADS, &[APP, r#"result="failure""#], 1.0);
    probe.assert_value("confera_last_success_timestamp_seconds", &[APP], 0.0);
    probe.assert_value("confera_reload_pending", &[APP], 1.0);
}
