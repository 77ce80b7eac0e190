//! The fixtures themselves: each one does what the other tests rely on.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::cmd::{confera, run_cmd, wait_until, Daemon};
use crate::support::confdir::ConfDir;
use crate::support::daemon::HupDaemon;
use crate::support::etcd::{Etcd, GrpcProxy};

const SECOND: Duration = Duration::from_secs(1);

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=2s")
        .args(args)
        .output()
        .expect("run etcdctl")
}

fn accepts_connections(endpoint: &str) -> bool {
    std::net::TcpStream::connect(endpoint).is_ok()
}

#[test]
fn etcd_puts_gets_and_deletes_keys() {
    let etcd = Etcd::start();
    assert!(etcd.client_url.starts_with("http://127.0.0.1:"));

    etcd.put("/app/db/url", "postgres://db");
    etcd.put("/app/dbx", "other");
    assert_eq!(etcd.get("/app/db/url").as_deref(), Some("postgres://db"));
    assert_eq!(etcd.get("/app/missing"), None);

    assert!(etcd.delete("/app/dbx"));
    assert!(!etcd.delete("/app/dbx"));
    assert_eq!(etcd.get("/app/dbx"), None);

    etcd.put("/app/db/user", "u");
    assert_eq!(etcd.delete_prefix("/app/db/"), 2);
    assert!(etcd.get_prefix("/app/").is_empty());
}

#[test]
fn etcd_put_many_loads_2000_keys_in_a_few_transactions() {
    let etcd = Etcd::start();
    let pairs: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("/bulk/{i:05}"), format!("value {i}")))
        .collect();
    let before = etcd.revision();

    let started = Instant::now();
    etcd.put_many(&pairs);
    let took = started.elapsed();

    let stored = etcd.get_prefix("/bulk/");
    assert_eq!(stored.len(), 2000);
    assert_eq!(stored[1234], pairs[1234]);
    // 2000 keys in transactions of 128 puts: 16 transactions, 16 revisions.
    assert_eq!(etcd.revision() - before, 16);
    assert!(took < 10 * SECOND, "put_many of 2000 keys took {took:?}");
}

#[test]
fn etcd_range_requests_counts_reads_only() {
    let etcd = Etcd::start();
    etcd.put("/k", "v");
    let before = etcd.range_requests();

    etcd.get("/k");
    etcd.get_prefix("/");
    etcd.revision();
    etcd.put("/k", "w");
    assert!(etcdctl(&etcd.endpoint(), &["get", "/k"]).status.success());

    assert_eq!(etcd.range_requests() - before, 3);
}

#[test]
fn etcd_keeps_its_data_and_url_across_stop_kill_and_restart() {
    let mut etcd = Etcd::start();
    let url = etcd.client_url.clone();
    etcd.put("/survives", "restart");

    etcd.stop();
    etcd.restart();
    assert_eq!(etcd.client_url, url);
    assert_eq!(etcd.get("/survives").as_deref(), Some("restart"));

    etcd.put("/survives", "crash");
    etcd.kill();
    assert!(!accepts_connections(&etcd.endpoint()));
    etcd.restart();
    assert_eq!(etcd.get("/survives").as_deref(), Some("crash"));
}

#[test]
fn etcd_pause_stops_answers_until_resume() {
    let mut etcd = Etcd::start();
    etcd.put("/k", "v");

    etcd.pause();
    let paused = etcdctl(&etcd.endpoint(), &["--command-timeout=300ms", "get", "/k"]);
    assert!(!paused.status.success(), "a paused etcd answered");

    etcd.resume();
    assert_eq!(etcd.get("/k").as_deref(), Some("v"));
}

#[test]
fn etcd_compact_removes_old_revisions() {
    let etcd = Etcd::start();
    etcd.put("/k", "1");
    let old = etcd.revision();
    etcd.put("/k", "2");

    etcd.compact(etcd.revision());

    let read_old = etcdctl(&etcd.endpoint(), &["get", "/k", &format!("--rev={old}")]);
    assert!(!read_old.status.success());
    assert!(String::from_utf8_lossy(&read_old.stderr).contains("compacted"));
}

#[test]
fn grpc_proxy_forwards_and_cuts_connections_when_killed() {
    let etcd = Etcd::start();
    let mut proxy = GrpcProxy::start(&etcd);
    let endpoint = proxy.url.trim_start_matches("http://").to_owned();

    assert!(etcdctl(&endpoint, &["put", "/via/proxy", "yes"])
        .status
        .success());
    assert_eq!(etcd.get("/via/proxy").as_deref(), Some("yes"));

    proxy.kill();
    assert!(!accepts_connections(&endpoint));
    etcd.put("/via/proxy", "after restart");

    proxy.restart();
    let got = etcdctl(&endpoint, &["get", "--print-value-only", "/via/proxy"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "after restart");
}

#[tokio::test]
async fn etcd_fixture_works_inside_a_tokio_runtime() {
    let mut etcd = Etcd::start();
    etcd.put("/async", "ok");
    assert_eq!(etcd.get("/async").as_deref(), Some("ok"));
    etcd.restart();
    assert_eq!(etcd.get("/async").as_deref(), Some("ok"));
}

#[test]
fn dropping_fixtures_ends_their_processes() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let proxy = GrpcProxy::start(&etcd);
    let daemon = HupDaemon::start(dir.path());
    let etcd_pid = etcd.pid().unwrap();
    let daemon_pid = daemon.pid();
    let proxy_url = proxy.url.trim_start_matches("http://").to_owned();

    drop((proxy, etcd, daemon));

    assert!(!std::path::Path::new(&format!("/proc/{etcd_pid}")).exists());
    assert!(!std::path::Path::new(&format!("/proc/{daemon_pid}")).exists());
    assert!(!accepts_connections(&proxy_url));
}

#[test]
fn hup_daemon_counts_each_sighup_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = HupDaemon::start(dir.path());
    let pid: i32 = std::fs::read_to_string(&daemon.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, daemon.pid());
    assert_eq!(daemon.hups(), 0);

    for n in 1..=3 {
        daemon.signal(Signal::SIGHUP);
        assert!(daemon.wait_for_hups(n, 2 * SECOND), "hup {n} not counted");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(daemon.hups(), 3);
    assert!(daemon.is_alive());
}

#[test]
fn hup_daemon_handles_a_sighup_sent_as_soon_as_its_pid_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        let daemon = HupDaemon::start_named(dir.path(), &format!("d{i}"));
        let pid = std::fs::read_to_string(&daemon.pid_file).unwrap();
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
        assert!(daemon.wait_for_hups(1, 2 * SECOND), "start {i}: hup lost");
        assert!(daemon.is_alive(), "start {i}: the hup killed the daemon");
    }
}

#[test]
fn hup_daemon_kill_leaves_a_stale_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = HupDaemon::start(dir.path());
    daemon.kill();
    assert!(!daemon.is_alive());
    assert!(daemon.pid_file.exists());
}

#[test]
fn run_cmd_captures_code_stdout_and_stderr() {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "echo out; echo err >&2; exit 4"]);
    let run = run_cmd(cmd);
    run.assert_code(4)
        .assert_stdout_contains("out")
        .assert_stderr_contains("err");
}

#[test]
fn confera_command_drops_rust_log_and_uses_the_built_binary() {
    let cmd = confera();
    assert!(cmd
        .get_envs()
        .any(|(name, value)| name == "RUST_LOG" && value.is_none()));
    assert!(std::path::Path::new(cmd.get_program()).is_file());
}

#[test]
fn daemon_log_is_readable_while_it_runs_and_terminate_returns_its_code() {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        "trap 'echo bye >&2; exit 3' TERM; echo ready >&2; while :; do sleep 0.05; done",
    ]);
    let mut daemon = Daemon::spawn_cmd(cmd);
    assert!(daemon.wait_for_log("ready", 5 * SECOND), "{}", daemon.log());
    assert!(daemon.is_running());

    assert_eq!(daemon.terminate(), 3);
    assert!(daemon.log().contains("bye"));
}

#[test]
fn wait_until_gives_up_at_the_deadline() {
    let started = Instant::now();
    assert!(!wait_until(Duration::from_millis(100), || false));
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(wait_until(Duration::ZERO, || true));
}

#[test]
fn confdir_has_conf_d_and_templates_and_writes_files() {
    let conf = ConfDir::new();
    assert!(conf.path().join("conf.d").is_dir());
    assert!(conf.path().join("templates").is_dir());

    conf.template("a.tera", "{{ x }}")
        .resource("a", "[template]\n")
        .file("data/values.yaml", "x: 1\n");
    assert_eq!(conf.read("templates/a.tera"), "{{ x }}");
    assert_eq!(conf.read("conf.d/a.toml"), "[template]\n");
    assert_eq!(conf.try_read("data/values.yaml").as_deref(), Some("x: 1\n"));

    let dest = conf.dest("out/sub/a.conf");
    assert!(dest.parent().unwrap().is_dir());
    assert!(!conf.exists("out/sub/a.conf"));
}
