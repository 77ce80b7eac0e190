//! A configuration that is refused never stays on disk unnoticed (issue 11
//! item 7, issue 15 item 4): what BIRD itself rejects over its control
//! socket is rolled back to the files it replaced, reported with BIRD's
//! message mapped to the rejected lines, counted, and not tried again until
//! the data changes; a failed check names the staged file it ran on and the
//! line of the new content; both keep the refused set for inspection under
//! `<state-dir>/rejected/<resource>/`, removed on the next success.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::isolation::get;
use crate::support::bird::Bird;
use crate::support::cmd::{reserve_ports, run, wait_until, Daemon, PortLease};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;

const DEADLINE: Duration = Duration::from_secs(10);

/// BIRD's main file: the fixture's `log` line, then the peers it includes.
const MAIN: &str = r#"log "@DIR@/bird.log" all;
router id 10.0.0.1;
protocol device {}
include "peers.conf";
"#;

/// One passive session per key under /bgp/peers; the neighbour is printed
/// without a validation filter, so a bad address reaches BIRD.
const PEERS: &str = r#"
{%- for name in ls(path="/peers") %}
protocol bgp {{ name | bird_ident }} {
  local 127.0.0.1 port @PORT@ as 65000;
  neighbor {{ getv(key="/peers/" ~ name) }} as 65001;
  multihop;
  strict bind yes;
  passive on;
  ipv4 { import none; export none; };
}
{%- endfor %}
"#;

/// A unit of two files, reloaded over BIRD's socket, with no check at all.
const RESOURCE: &str = r#"bird_socket = "@DIR@/bird.ctl"
@EXTRA@

[[template]]
src = "bird.conf.tera"
dest = "@DIR@/bird.conf"
prefix = "/bgp"
keys = ["/peers"]

[[template]]
src = "peers.conf.tera"
dest = "@DIR@/peers.conf"
prefix = "/bgp"
keys = ["/peers"]
"#;

/// A BIRD running the rendered files, and a `confera --watch` in front of
/// it with its own state directory and metrics port.
struct Site {
    confera: Daemon,
    bird: Bird,
    etcd: Etcd,
    state: tempfile::TempDir,
    metrics: String,
    _conf: ConfDir,
    _ports: PortLease,
}

impl Site {
    fn start(extra: &str) -> Site {
        let etcd = Etcd::start();
        etcd.put("/bgp/peers/p1", "127.0.0.2");
        let ports = reserve_ports(2);
        let bird_dir = tempfile::Builder::new()
            .prefix("confera-rejected-")
            .tempdir()
            .unwrap();
        let dir = bird_dir.path().to_str().unwrap().to_owned();
        let fill = |text: &str| {
            text.replace("@DIR@", &dir)
                .replace("@PORT@", &ports.ports()[0].to_string())
                .replace("@EXTRA@", extra)
        };
        let conf = ConfDir::new();
        conf.template("bird.conf.tera", &fill(MAIN))
            .template("peers.conf.tera", &fill(PEERS))
            .resource("bird", &fill(RESOURCE));
        let state = tempfile::tempdir().unwrap();
        let common = |extra: &[&str]| {
            let mut args = vec![
                "--confdir",
                conf.arg(),
                "--node",
                etcd.client_url.as_str(),
                "--state-dir",
                state.path().to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            args.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let args = common(&["--onetime", "--sync-only"]);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>()).assert_success();
        let main = bird_dir.path().join("bird.conf");
        let bird = Bird::with_config_path(bird_dir, main);
        let metrics = format!("127.0.0.1:{}", ports.ports()[1]);
        let args = common(&["--watch", "--metrics-addr", &metrics]);
        let confera = Daemon::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let site = Site {
            confera,
            bird,
            etcd,
            state,
            metrics,
            _conf: conf,
            _ports: ports,
        };
        site.wait_for_log("ready");
        site
    }

    #[track_caller]
    fn wait_for_log(&self, fragment: &str) {
        self.confera.expect_log(fragment, DEADLINE);
    }

    fn files(&self) -> (Vec<u8>, Vec<u8>) {
        let read = |name: &str| fs::read(self.bird.dir().join(name)).unwrap();
        (read("bird.conf"), read("peers.conf"))
    }

    fn bgp_protocols(&self) -> Vec<String> {
        self.bird
            .protocols()
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("BGP"))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    }

    fn kept(&self) -> PathBuf {
        self.state.path().join("rejected/bird")
    }

    fn metric(&self, series: &str) -> Option<String> {
        let (_, body) = get(&self.metrics, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(series))
            .map(|l| l[series.len()..].trim().to_owned())
    }
}

#[test]
fn a_config_bird_rejects_is_rolled_back_reported_and_not_retried_until_the_data_changes() {
    let mut site = Site::start("");
    let before = site.files();
    assert_eq!(site.bgp_protocols(), ["p1"]);

    site.etcd.put("/bgp/peers/p2", "10.0.0.300");

    site.wait_for_log("BIRD rejected the configuration");
    // The files are the old ones again, byte for byte, and BIRD runs them.
    assert!(
        wait_until(DEADLINE, || site.files() == before),
        "the rejected files stayed\n{}",
        site.confera.log()
    );
    assert_eq!(site.bgp_protocols(), ["p1"]);
    assert_eq!(site.bird.reconfigurations(), 0);
    let log = site.confera.log();
    let peers = site.bird.dir().join("peers.conf");
    // BIRD's own words, mapped to the rejected content it read.
    assert!(log.contains("Invalid IPv4 address 10.0.0.300"), "{log}");
    let rejected = fs::read_to_string(site.kept().join(peers.strip_prefix("/").unwrap())).unwrap();
    let line = 1 + rejected
        .lines()
        .position(|l| l.contains("10.0.0.300"))
        .unwrap();
    assert!(
        log.contains(&format!("{}:{line}:", peers.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "line {line} of the rejected content for {}: \"neighbor 10.0.0.300 as 65001;\"",
            peers.display()
        )),
        "{log}"
    );
    assert!(
        log.contains(
            "bird: the previous files are back in place (BIRD keeps running its old configuration)"
        ),
        "{log}"
    );
    // The rejected set is kept, privately, where BIRD would have read it.
    let kept = site.kept();
    assert_eq!(
        fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let kept_peers = kept.join(peers.strip_prefix("/").unwrap());
    assert!(fs::read_to_string(&kept_peers)
        .unwrap()
        .contains("neighbor 10.0.0.300 as 65001;"));
    assert_eq!(
        site.metric(r#"confera_rejected_configs_total{resource="bird",action="rollback"}"#)
            .as_deref(),
        Some("1")
    );

    // Not retried: the same data gives the same rejected files.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(site.confera.log_count("BIRD rejected the configuration"), 1);
    assert_eq!(site.files(), before);
    assert!(site.confera.is_running());

    // A later good change goes through, and the kept set is cleaned up.
    site.etcd.put("/bgp/peers/p2", "127.0.0.3");
    site.bird.wait_for("p1 and p2", |b| {
        b.protocols().contains("p2 ") && b.protocols().contains("p1 ")
    });
    assert!(
        wait_until(DEADLINE, || !kept.exists()),
        "{}",
        kept.display()
    );
    assert_eq!(site.bird.reconfigurations(), 1);
}

#[test]
fn with_on_reject_keep_the_rejected_file_stays_and_is_counted() {
    let site = Site::start("on_reject = \"keep\"");
    let (_, peers_before) = site.files();

    site.etcd.put("/bgp/peers/p2", "10.0.0.300");

    site.wait_for_log("BIRD rejected the configuration");
    let log = site.confera.log();
    assert!(
        log.contains("bird: the rejected files stay (on_reject = \"keep\")"),
        "{log}"
    );
    let (_, peers) = site.files();
    assert_ne!(peers, peers_before);
    assert!(String::from_utf8_lossy(&peers).contains("neighbor 10.0.0.300 as 65001;"));
    assert_eq!(site.bgp_protocols(), ["p1"]);
    assert!(wait_until(DEADLINE, || site
        .metric(r#"confera_rejected_configs_total{resource="bird",action="keep"}"#)
        .is_some_and(|v| v != "0")));
}

// ----- a failed check (issue 15 item 4) -----

/// A resource checked with `bird -p`, rendering `/a` into a protocol name.
fn checked(conf: &ConfDir) -> PathBuf {
    let dest = conf.dest("out/bird.conf");
    conf.template(
        "t.tera",
        "router id 10.0.0.1;\nprotocol device {}\nprotocol static s_{{ getv(key=\"/a\") }} { ipv4; }\n",
    )
    .resource(
        "bird",
        &format!(
            "[template]\nsrc = \"t.tera\"\ndest = \"{}\"\nkeys = [\"/a\"]\ncheck_cmd = \"bird -p -c {{{{src}}}}\"\noutput = \"plain\"\n",
            dest.display()
        ),
    );
    dest
}

fn render(conf: &ConfDir, state: &Path, value: &str) -> crate::support::cmd::Run {
    conf.file("data.yaml", &format!("a: {value}\n"));
    conf.onetime_with_file("data.yaml", &["--state-dir", state.to_str().unwrap()])
}

#[test]
fn a_failed_check_names_the_staged_file_and_the_new_line_and_keeps_the_rejected_set() {
    let conf = ConfDir::new();
    let state = tempfile::tempdir().unwrap();
    let dest = checked(&conf);
    render(&conf, state.path(), "good").assert_success();
    let before = fs::read_to_string(&dest).unwrap();

    let r = render(&conf, state.path(), "x-y");

    r.assert_code(1);
    // The checker ran on the staged copy, and says so; line 3 is the new line 3.
    let staged = format!("{}/.confera-stage-bird-", dest.parent().unwrap().display());
    let at = r
        .stderr
        .find(&format!("`bird -p -c {staged}"))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(r.stderr[at..].contains("/bird.conf:3:"), "{r}");
    r.assert_stderr_contains("bird: check failed")
        .assert_stderr_contains(&format!(
            "line 3 of the new content for {}: \"protocol static s_x-y {{ ipv4; }}\"",
            dest.display()
        ));
    let kept = state.path().join("rejected/bird");
    r.assert_stderr_contains(&format!(
        "the rejected files are kept in {}",
        kept.display()
    ));
    assert_eq!(
        fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let kept_file = kept.join(dest.strip_prefix("/").unwrap());
    assert!(fs::read_to_string(&kept_file).unwrap().contains("s_x-y"));
    assert_eq!(fs::read_to_string(&dest).unwrap(), before);

    render(&conf, state.path(), "fixed").assert_success();
    assert!(!kept.exists(), "the next success removes the kept set");
}
