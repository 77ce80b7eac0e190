//! BIRD end to end: a real BIRD 2 and a real etcd, with confera in watch
//! mode rendering the very file BIRD was started with (`bird -c`), checking
//! it and telling BIRD to re-read it.
//!
//! Every BGP session is loopback-only and passive: BIRD listens on
//! 127.0.0.1 at a free port (`strict bind yes`) for multihop peers on
//! 127.0.0.x that never connect, and no config has a `protocol kernel`, so
//! nothing reaches the host's routing tables.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::bird::Bird;
use crate::support::cmd::{reserve_ports, run, wait_until, Daemon, PortLease};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;

const DEADLINE: Duration = Duration::from_secs(5);

/// The head of every main file. Its first line is the BIRD fixture's own
/// `log` line, so the fixture starts BIRD on the rendered file as it is.
const HEAD: &str = r#"log "@DIR@/bird.log" all;
router id 10.0.0.1;
protocol device {}
"#;

/// One passive BGP protocol per key under /bgp/peers: the key's name is the
/// protocol's name (`@NAME@`), its value the neighbour (`@NEIGHBOR@`).
const PEERS: &str = r#"
{%- for name in ls(path="/peers") %}

protocol bgp @NAME@ {
  local 127.0.0.1 port @PORT@ as 65000;
  neighbor @NEIGHBOR@ as 65001;
  multihop;
  strict bind yes;
  passive on;
  ipv4 { import none; export none; };
}
{%- endfor %}
"#;

/// Names and addresses through confera's validation filters.
const CHECKED_NAME: &str = "{{ name | bird_ident }}";
const CHECKED_NEIGHBOR: &str = r#"{{ getv(key="/peers/" ~ name) | ipv4 }}"#;
/// The same without validation: whatever etcd holds reaches the file.
const RAW_NAME: &str = "{{ name }}";
const RAW_NEIGHBOR: &str = r#"{{ getv(key="/peers/" ~ name) }}"#;

/// A main file with one protocol per peer, rendered with these expressions.
fn peers_template(name: &str, neighbor: &str) -> String {
    format!("{HEAD}{PEERS}")
        .replace("@NAME@", name)
        .replace("@NEIGHBOR@", neighbor)
}

/// A single-template resource rendering BIRD's main file from /bgp/peers,
/// plus `settings` (check and reload).
fn peers_resource(settings: &str) -> String {
    format!(
        r#"[template]
src = "bird.conf.tera"
dest = "@DIR@/bird.conf"
prefix = "/bgp"
keys = ["/peers"]
{settings}
"#
    )
}

const RELOAD_BY_SOCKET: &str = r#"bird_socket = "@DIR@/bird.ctl""#;
const RELOAD_BY_SIGHUP: &str = r#"pid_file = "@DIR@/bird.pid""#;
const CHECK_WITH_BIRD_P: &str = r#"check_cmd = "bird -p -c {{src}}""#;

/// One BIRD, the etcd its peers come from, and a `confera --watch` between
/// them. Fields drop in order: confera first, BIRD, then etcd.
struct Fabric {
    confera: Daemon,
    bird: Bird,
    etcd: Etcd,
    _conf: ConfDir,
    _port: PortLease,
}

impl Fabric {
    /// Puts `keys` into a fresh etcd; renders the templates (`@DIR@` is
    /// BIRD's directory, `@PORT@` its BGP port) once with `--sync-only`;
    /// starts BIRD on the rendered `@DIR@/bird.conf`; then starts confera
    /// in watch mode and waits for its first render, which finds BIRD's
    /// files as they are.
    fn start(keys: &[(&str, &str)], templates: &[(&str, &str)], resource: &str) -> Fabric {
        let etcd = Etcd::start();
        for (key, value) in keys {
            etcd.put(key, value);
        }
        let port = reserve_ports(1);
        let bird_dir = tempfile::Builder::new()
            .prefix("confera-bird-e2e-")
            .tempdir()
            .expect("create BIRD's temp dir");
        let dir = bird_dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        let fill = |text: &str| {
            text.replace("@DIR@", &dir)
                .replace("@PORT@", &port.ports()[0].to_string())
        };
        let conf = ConfDir::new();
        for (name, text) in templates {
            conf.template(name, &fill(text));
        }
        conf.resource("bird", &fill(resource));

        let (confdir, node) = (conf.arg(), etcd.client_url.as_str());
        run(&[
            "--confdir",
            confdir,
            "--node",
            node,
            "--onetime",
            "--sync-only",
        ])
        .assert_success();
        let main_file = bird_dir.path().join("bird.conf");
        let rendered = read(&main_file);
        let bird = Bird::with_config_path(bird_dir, main_file);
        assert_eq!(
            read(&bird.config),
            rendered,
            "BIRD must run on the file exactly as confera rendered it"
        );

        let confera = Daemon::spawn(&[
            "--confdir",
            conf.arg(),
            "--node",
            &etcd.client_url,
            "--watch",
            "--log-level",
            "debug",
        ]);
        let fabric = Fabric {
            confera,
            bird,
            etcd,
            _conf: conf,
            _port: port,
        };
        fabric.wait_for_log("unchanged");
        fabric
    }

    /// A fabric whose main file is `peers_template(name, neighbor)`.
    fn with_peers(keys: &[(&str, &str)], name: &str, neighbor: &str, settings: &str) -> Fabric {
        let template = peers_template(name, neighbor);
        Fabric::start(
            keys,
            &[("bird.conf.tera", &template)],
            &peers_resource(settings),
        )
    }

    /// The names of BIRD's BGP protocols, as `birdc show protocols` lists them.
    fn bgp_protocols(&self) -> Vec<String> {
        bgp_protocols(&self.bird.protocols())
    }

    #[track_caller]
    fn wait_for_protocols(&self, expected: &[&str]) {
        self.bird
            .wait_for(&format!("BGP protocols {expected:?}"), |bird| {
                bgp_protocols(&bird.protocols()) == expected
            });
    }

    #[track_caller]
    fn wait_for_log(&self, fragment: &str) {
        self.confera.expect_log(fragment, DEADLINE);
    }

    /// Waits until confera has logged `fragment` at least `n` times.
    #[track_caller]
    fn wait_for_log_count(&self, fragment: &str, n: usize) {
        assert!(
            wait_until(DEADLINE, || self.confera.log_count(fragment) >= n),
            "confera did not log {fragment:?} {n} times within {DEADLINE:?}\n--- confera\n{}",
            self.confera.log()
        );
    }

    fn main_file(&self) -> String {
        read(&self.bird.config)
    }

    fn dir(&self) -> &Path {
        self.bird.dir()
    }

    /// Asserts that BIRD answers on its socket and confera still runs.
    #[track_caller]
    fn assert_both_running(&mut self) {
        assert!(
            self.bird.birdc("show status").contains("Daemon is up"),
            "BIRD stopped answering"
        );
        assert!(
            self.confera.is_running(),
            "confera exited\n{}",
            self.confera.log()
        );
    }

    /// Asserts that no staging directory is left beside the destinations.
    #[track_caller]
    fn assert_no_stage_left(&self) {
        let left = crate::support::confdir::stage_entries(self.dir());
        assert!(left.is_empty(), "staging directories left behind: {left:?}");
    }
}

fn bgp_protocols(show_protocols: &str) -> Vec<String> {
    show_protocols
        .lines()
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            let name = columns.next()?;
            (columns.next()? == "BGP").then(|| name.to_owned())
        })
        .collect()
}

#[track_caller]
fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Whether `text` holds `path` followed by BIRD's `:line:col ` position.
fn names_line_and_column(text: &str, path: &str) -> bool {
    text.match_indices(path).any(|(at, _)| {
        let rest = &text[at + path.len()..];
        let Some(rest) = rest.strip_prefix(':') else {
            return false;
        };
        let (line, rest) = split_number(rest);
        let Some(rest) = rest.strip_prefix(':') else {
            return false;
        };
        let (col, rest) = split_number(rest);
        line.is_some() && col.is_some() && rest.starts_with(' ')
    })
}

fn split_number(text: &str) -> (Option<u32>, &str) {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    (text[..digits].parse().ok(), &text[digits..])
}

/// The 1-based number of the first line of `text` containing `fragment`.
fn line_of(text: &str, fragment: &str) -> usize {
    1 + text
        .lines()
        .position(|line| line.contains(fragment))
        .unwrap_or_else(|| panic!("{fragment:?} is not in\n{text}"))
}

/// `bird -p -c FILE`: its exit status and stderr.
fn bird_parse(file: &Path) -> (bool, String) {
    let output = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(file)
        .output()
        .expect("run bird -p");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_peer_put_in_etcd_appears_in_bird_and_a_deleted_one_disappears_via_the_control_socket() {
    let f = Fabric::with_peers(
        &[("/bgp/peers/p1", "127.0.0.2")],
        CHECKED_NAME,
        CHECKED_NEIGHBOR,
        RELOAD_BY_SOCKET,
    );
    assert_eq!(f.bgp_protocols(), ["p1"]);

    f.etcd.put("/bgp/peers/p2", "127.0.0.3");
    f.wait_for_protocols(&["p1", "p2"]);
    f.wait_for_log_count("bird reconfigured", 1);

    f.etcd.delete("/bgp/peers/p1");
    f.wait_for_protocols(&["p2"]);
    f.wait_for_log_count("bird reconfigured", 2);

    f.bird
        .wait_for("two reconfigurations", |b| b.reconfigurations() == 2);
    assert!(!f.main_file().contains("127.0.0.2"));
    assert_eq!(f.confera.log_count("bird reconfigured"), 2);
}

#[test]
fn configure_soft_and_configure_file_over_the_socket_reconfigure_bird_too() {
    for mode in ["soft", "file"] {
        let settings = format!("{RELOAD_BY_SOCKET}\nbird_configure = \"{mode}\"");
        let f = Fabric::with_peers(
            &[("/bgp/peers/p1", "127.0.0.2")],
            CHECKED_NAME,
            CHECKED_NEIGHBOR,
            &settings,
        );

        f.etcd.put("/bgp/peers/p2", "127.0.0.3");

        f.wait_for_protocols(&["p1", "p2"]);
        f.wait_for_log_count("bird reconfigured", 1);
        f.bird
            .wait_for("one reconfiguration", |b| b.reconfigurations() == 1);
    }
}

#[test]
fn a_sighup_to_the_pid_in_birds_pid_file_makes_bird_read_the_new_peer() {
    let f = Fabric::with_peers(
        &[("/bgp/peers/p1", "127.0.0.2")],
        CHECKED_NAME,
        CHECKED_NEIGHBOR,
        RELOAD_BY_SIGHUP,
    );

    f.etcd.put("/bgp/peers/p2", "127.0.0.3");

    f.wait_for_protocols(&["p1", "p2"]);
    f.wait_for_log(&format!("pids=[{}]", f.bird.pid()));
    assert!(f.confera.log().contains("signalled daemon"));
    f.bird
        .wait_for("one reconfiguration", |b| b.reconfigurations() == 1);

    f.etcd.delete("/bgp/peers/p1");
    f.wait_for_protocols(&["p2"]);
}

#[test]
fn a_value_that_fails_validation_never_reaches_birds_file_and_is_rendered_once_fixed() {
    let mut f = Fabric::with_peers(
        &[("/bgp/peers/p1", "127.0.0.2")],
        CHECKED_NAME,
        CHECKED_NEIGHBOR,
        RELOAD_BY_SOCKET,
    );
    let before = f.main_file();

    // An address that is no IPv4 address: the ipv4 filter fails the render,
    // and so does every retry.
    f.etcd.put("/bgp/peers/p2", "10.0.0.300");
    f.wait_for_log("bird: render failed");
    f.wait_for_log("attempt=2");
    let log = f.confera.log();
    assert!(log.contains("10.0.0.300"), "{log}");
    assert_eq!(f.main_file(), before);
    assert_eq!(f.bgp_protocols(), ["p1"]);
    assert_eq!(f.bird.reconfigurations(), 0);
    f.assert_both_running();

    f.etcd.put("/bgp/peers/p2", "127.0.0.3");
    f.wait_for_protocols(&["p1", "p2"]);
    f.wait_for_log("recovered");
    let before = f.main_file();

    // A name BIRD cannot read as a symbol: bird_ident fails the render.
    let failures = f.confera.log_count("bird: render failed");
    f.etcd.put("/bgp/peers/peer-3", "127.0.0.4");
    f.wait_for_log_count("bird: render failed", failures + 1);
    assert!(f.confera.log().contains("peer-3"), "{}", f.confera.log());
    assert_eq!(f.main_file(), before);
    assert_eq!(f.bgp_protocols(), ["p1", "p2"]);
    f.assert_both_running();

    f.etcd.delete("/bgp/peers/peer-3");
    f.etcd.put("/bgp/peers/peer_3", "127.0.0.4");
    f.wait_for_protocols(&["p1", "p2", "peer_3"]);
    f.assert_no_stage_left();
}

#[test]
fn a_config_bird_rejects_is_stopped_by_bird_p_and_the_old_file_stays() {
    // The template writes the key's name as the protocol name, unchecked.
    let mut f = Fabric::with_peers(
        &[("/bgp/peers/p1", "127.0.0.2")],
        RAW_NAME,
        CHECKED_NEIGHBOR,
        &format!("{CHECK_WITH_BIRD_P}\n{RELOAD_BY_SOCKET}"),
    );
    let before = f.main_file();

    f.etcd.put("/bgp/peers/peer-2", "127.0.0.3");

    f.wait_for_log("check failed");
    let log = f.confera.log();
    // bird -p names the staged copy, with line and column.
    let staged = format!("{}/.confera-stage-bird-", f.dir().display());
    let at = log.find(&staged).expect("the error names the staged file");
    assert!(
        names_line_and_column(&log[at..], "/bird.conf"),
        "no file:line:col in\n{log}"
    );
    assert!(log.contains("syntax error"), "{log}");
    assert_eq!(f.main_file(), before);
    assert_eq!(f.bgp_protocols(), ["p1"]);
    assert_eq!(f.bird.reconfigurations(), 0);
    f.assert_both_running();
    f.assert_no_stage_left();

    f.etcd.delete("/bgp/peers/peer-2");
    f.etcd.put("/bgp/peers/p2", "127.0.0.3");
    f.wait_for_protocols(&["p1", "p2"]);
}

/// The include trap. bird.conf and filters.conf are one unit: the new main
/// file imports through a filter that only the new filters.conf defines. The
/// pair is staged side by side, checked together and committed together,
/// and BIRD reconfigures once. Checked against the installed (old)
/// filters.conf, the same main file fails.
#[test]
fn a_main_file_and_the_include_it_needs_change_as_one_transaction_with_one_reconfiguration() {
    const MAIN: &str = r#"include "filters.conf";
{%- set import = getv(key="/policy/import") | bird_ident %}
{%- for name in ls(path="/peers") %}

protocol bgp {{ name | bird_ident }} {
  local 127.0.0.1 port @PORT@ as 65000;
  neighbor {{ getv(key="/peers/" ~ name) | ipv4 }} as 65001;
  multihop;
  strict bind yes;
  passive on;
  ipv4 { import filter {{ import }}; export none; };
}
{%- endfor %}
"#;
    const FILTERS: &str = r#"filter {{ getv(key="/policy/import") | bird_ident }} {
  accept;
}
"#;
    const RESOURCE: &str = r#"check_cmd = "bird -p -c {{src}}"
bird_socket = "@DIR@/bird.ctl"

[[template]]
src = "bird.conf.tera"
dest = "@DIR@/bird.conf"
prefix = "/bgp"
keys = ["/peers", "/policy"]

[[template]]
src = "filters.conf.tera"
dest = "@DIR@/filters.conf"
prefix = "/bgp"
keys = ["/policy"]
"#;
    let main = format!("{HEAD}{MAIN}");
    let f = Fabric::start(
        &[
            ("/bgp/peers/p1", "127.0.0.2"),
            ("/bgp/policy/import", "import_v1"),
        ],
        &[("bird.conf.tera", &main), ("filters.conf.tera", FILTERS)],
        RESOURCE,
    );
    let old_filters = read(&f.dir().join("filters.conf"));
    let input_filter = |bird: &Bird| bird.birdc("show protocols all p1");
    assert!(input_filter(&f.bird).contains("import_v1"));

    f.etcd.put("/bgp/policy/import", "import_v2");

    f.bird.wait_for("p1 importing through import_v2", |bird| {
        input_filter(bird).contains("import_v2")
    });
    f.wait_for_log("bird reconfigured");
    f.bird
        .wait_for("one reconfiguration", |b| b.reconfigurations() == 1);
    assert_eq!(
        f.confera.log_count("committed dest="),
        2,
        "{}",
        f.confera.log()
    );
    // A later change arrives, with exactly one more reconfiguration: the
    // paired change caused exactly one.
    f.etcd.put("/bgp/peers/p2", "127.0.0.3");
    f.wait_for_protocols(&["p1", "p2"]);
    f.wait_for_log_count("bird reconfigured", 2);
    f.bird
        .wait_for("two reconfigurations", |b| b.reconfigurations() == 2);
    assert_eq!(f.confera.log_count("bird reconfigured"), 2);

    // The trap: the new main file beside the OLD filters.conf does not parse.
    let trap = tempfile::tempdir().unwrap();
    fs::write(trap.path().join("bird.conf"), f.main_file()).unwrap();
    fs::write(trap.path().join("filters.conf"), &old_filters).unwrap();
    let (ok, stderr) = bird_parse(&trap.path().join("bird.conf"));
    assert!(!ok, "the new bird.conf parsed with the old filters.conf");
    let trap_main = trap.path().join("bird.conf");
    let line = line_of(&f.main_file(), "import filter import_v2");
    let at = format!("{}:{line}:", trap_main.display());
    assert!(stderr.contains(&at), "{at:?} not in {stderr}");
    // ...while the pair as committed does.
    let (ok, stderr) = bird_parse(&f.bird.config);
    assert!(ok, "{stderr}");
}

#[test]
fn bird_check_asks_the_running_bird_to_parse_the_staged_file_before_commit() {
    let mut f = Fabric::with_peers(
        &[("/bgp/peers/p1", "127.0.0.2")],
        RAW_NAME,
        CHECKED_NEIGHBOR,
        &format!("{RELOAD_BY_SOCKET}\nbird_check = true"),
    );
    let before = f.main_file();

    f.etcd.put("/bgp/peers/peer-2", "127.0.0.3");

    f.wait_for_log("BIRD rejected the configuration");
    let log = f.confera.log();
    assert!(log.contains("check failed"), "{log}");
    let staged = format!("{}/.confera-stage-bird-", f.dir().display());
    let at = log
        .find(&staged)
        .expect("BIRD's message names the staged file");
    assert!(
        names_line_and_column(&log[at..], "/bird.conf"),
        "no file:line:col in\n{log}"
    );
    assert_eq!(f.main_file(), before);
    assert_eq!(f.bgp_protocols(), ["p1"]);
    assert_eq!(f.bird.reconfigurations(), 0);
    f.assert_both_running();

    f.etcd.delete("/bgp/peers/peer-2");
    f.etcd.put("/bgp/peers/p2", "127.0.0.3");
    f.wait_for_protocols(&["p1", "p2"]);
    f.wait_for_log("bird reconfigured");
    assert_ne!(f.main_file(), before);
    f.assert_no_stage_left();
}

/// With no check, a value BIRD cannot parse reaches the file. The reload
/// over the socket then reports BIRD's 8002 answer, file:line:col included.
/// With `on_reject = "keep"` the file stays and the reload is retried until
/// BIRD accepts the file: here, once it is fixed by hand (drift = "ignore"
/// leaves the fix alone). The default rolls back (see `rejected.rs`).
#[test]
fn a_reload_reports_birds_verdict_and_a_rejected_one_is_retried_until_bird_accepts() {
    let f = Fabric::with_peers(
        &[("/bgp/peers/p1", "127.0.0.2")],
        CHECKED_NAME,
        RAW_NEIGHBOR,
        &format!("{RELOAD_BY_SOCKET}\ndrift = \"ignore\"\non_reject = \"keep\""),
    );

    f.etcd.put("/bgp/peers/p2", "127.0.0.3");
    f.wait_for_log("bird reconfigured");
    assert!(f.confera.log().contains("outcome=Reconfigured"));
    f.wait_for_protocols(&["p1", "p2"]);

    f.etcd.put("/bgp/peers/p3", "10.0.0.300");

    f.wait_for_log("reload failed");
    let broken = f.main_file();
    let at = format!(
        "{}:{}:",
        f.bird.config.display(),
        line_of(&broken, "10.0.0.300")
    );
    let log = f.confera.log();
    assert!(log.contains("BIRD rejected the configuration"), "{log}");
    assert!(log.contains("code=8002"), "{log}");
    assert!(log.contains(&at), "{at:?} not in\n{log}");
    assert!(log.contains("Invalid IPv4 address 10.0.0.300"), "{log}");
    f.wait_for_log("reload retry failed");
    assert_eq!(f.bgp_protocols(), ["p1", "p2"]);

    // Atomically, so that a retry never reads half a file.
    let fixed = f.dir().join("bird.conf.fixed");
    fs::write(&fixed, broken.replace("10.0.0.300", "127.0.0.4")).unwrap();
    fs::rename(&fixed, &f.bird.config).unwrap();

    f.wait_for_log("reload retry succeeded");
    f.wait_for_protocols(&["p1", "p2", "p3"]);
}
