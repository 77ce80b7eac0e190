//! Exec mode: confera runs a real BIRD 2 as its child (`[exec]` in
//! confera.toml, or `--exec`), rendering the file BIRD reads from a real
//! etcd, reloading it, stopping it, restarting it, and, as PID 1 in a PID
//! namespace of its own, reaping the orphans its commands leave.
//!
//! BIRD's configs hold only `protocol device` and static blackhole routes:
//! nothing listens, and nothing reaches the host's routing tables.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::support::bird::birdc;
use crate::support::cmd::{confera, reserve_ports, run_cmd, wait_until, Daemon, PortLease};
use crate::support::confdir::ConfDir;
use crate::support::etcd::{scrape, sum_metric, Etcd};

const DEADLINE: Duration = Duration::from_secs(10);

/// BIRD's main file: one static protocol per key under /exec/statics (the
/// key's name is the protocol's, its value the route).
const TEMPLATE: &str = r#"log "@DIR@/bird.log" all;
router id 10.0.0.1;
protocol device {}
{%- for name in ls(path="/statics") %}
protocol static {{ name | bird_ident }} { ipv4; route {{ getv(key="/statics/" ~ name) | cidr }} blackhole; }
{%- endfor %}
"#;

const RESOURCE: &str = r#"[template]
src = "bird.conf.tera"
dest = "@DIR@/bird.conf"
prefix = "/exec"
keys = ["/statics"]
check_cmd = "bird -p -c {{src}}"
"#;

/// Reloads through the exec child: a signal with no pid file.
const BY_SIGHUP: &str = "reload_signal = \"HUP\"\n";
/// Reloads through the child's control socket.
const BY_SOCKET: &str = "bird_socket = \"@DIR@/bird.ctl\"\n";

/// A confera in watch mode running BIRD as its child. Fields drop in
/// order: confera (and so BIRD) first, then etcd.
struct ExecBird {
    confera: Daemon,
    etcd: Etcd,
    conf: ConfDir,
    dir: TempDir,
    metrics: PortLease,
}

impl ExecBird {
    /// Writes the template, the resource (plus `reload`) and a confera.toml
    /// whose `[exec]` table runs BIRD on the rendered file (plus `exec`),
    /// then starts confera without waiting for anything.
    fn spawn(etcd: Etcd, reload: &str, exec: &str) -> ExecBird {
        ExecBird::spawn_with(etcd, &format!("{RESOURCE}{reload}"), exec, |cmd| cmd)
    }

    /// [`ExecBird::spawn`] against a fresh etcd holding route s1, waiting
    /// until BIRD runs it; BIRD's pid with it.
    fn running(reload: &str, exec: &str) -> (ExecBird, i32) {
        let etcd = Etcd::start();
        etcd.put("/exec/statics/s1", "10.9.1.0/24");
        let exec = ExecBird::spawn(etcd, reload, exec);
        exec.wait_for_statics(&["s1"]);
        let pid = exec.bird_pid().expect("BIRD wrote its pid file");
        (exec, pid)
    }

    /// [`ExecBird::spawn`] with a resource of its own (`@DIR@` is BIRD's
    /// directory) and confera's command line wrapped by `wrap`.
    fn spawn_with(
        etcd: Etcd,
        resource: &str,
        exec: &str,
        wrap: impl FnOnce(Command) -> Command,
    ) -> ExecBird {
        let dir = tempfile::Builder::new()
            .prefix("confera-exec-bird-")
            .tempdir()
            .expect("create BIRD's temp dir");
        let conf = ConfDir::new();
        let fill = |text: &str| text.replace("@DIR@", dir.path().to_str().unwrap());
        conf.template("bird.conf.tera", &fill(TEMPLATE));
        conf.resource("bird", &fill(resource));
        conf.file(
            "confera.toml",
            &fill(&format!(
                "[exec]\ncommand = \"bird -f -c @DIR@/bird.conf -s @DIR@/bird.ctl -P @DIR@/bird.pid\"\n{exec}"
            )),
        );
        let metrics = reserve_ports(1);
        let addr = format!("127.0.0.1:{}", metrics.ports()[0]);
        let mut cmd = confera();
        cmd.args(["--confdir", conf.arg(), "--node", &etcd.client_url]);
        cmd.args(["--watch", "--wait", "20ms:200ms", "--metrics-addr", &addr]);
        cmd.arg("--state-dir").arg(dir.path().join("state"));
        let confera = Daemon::spawn_cmd(wrap(cmd));
        ExecBird {
            confera,
            etcd,
            conf,
            dir,
            metrics,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("bird.ctl")
    }

    /// BIRD's pid, from the pid file it writes.
    fn bird_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("bird.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The static protocols BIRD runs, as `birdc show protocols` lists them.
    fn statics(&self) -> Vec<String> {
        birdc(&self.socket(), "show protocols")
            .lines()
            .filter(|line| line.split_whitespace().nth(1) == Some("Static"))
            .map(|line| line.split_whitespace().next().unwrap().to_owned())
            .collect()
    }

    #[track_caller]
    fn wait_for_statics(&self, expected: &[&str]) {
        assert!(
            wait_until(DEADLINE, || self.statics() == expected),
            "BIRD did not run {expected:?} within {DEADLINE:?}: {:?}\n--- confera\n{}",
            self.statics(),
            self.confera.log()
        );
    }

    #[track_caller]
    fn wait_for_log(&self, fragment: &str) {
        self.confera.expect_log(fragment, DEADLINE);
    }

    fn metric(&self, name: &str) -> f64 {
        let text = scrape(&format!("http://127.0.0.1:{}", self.metrics.ports()[0]));
        sum_metric(&text, name, &[])
    }

    /// `confera status` against this confera.
    fn status(&self) -> crate::support::cmd::Run {
        let addr = format!("127.0.0.1:{}", self.metrics.ports()[0]);
        let mut cmd = confera();
        cmd.args(["status", "--metrics-addr", &addr]);
        run_cmd(cmd)
    }

    /// Waits for confera to exit on its own; its exit code.
    #[track_caller]
    fn exit_code(&mut self, within: Duration) -> i32 {
        self.confera.wait_exit(within).unwrap_or_else(|| {
            panic!(
                "confera did not exit within {within:?}\n--- confera\n{}",
                self.confera.log()
            )
        })
    }
}

/// True once `pid` has exited and been reaped, or is a zombie.
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// The pids whose parent is `parent`, with their state ('Z' for zombies),
/// as /proc shows them from here.
fn children(parent: i32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(s), Some(ppid)) = (fields.next(), fields.next()) else {
            continue;
        };
        if ppid.parse() == Ok(parent) {
            found.push((pid, s.chars().next().unwrap_or('?')));
        }
    }
    found
}

#[test]
fn bird_starts_only_after_the_first_render_and_a_change_in_etcd_reaches_it_by_sighup() {
    let mut etcd = Etcd::start();
    etcd.put("/exec/statics/s1", "10.9.1.0/24");
    // etcd cannot answer: confera can render nothing, so BIRD must wait.
    etcd.pause();
    let exec = ExecBird::spawn(etcd, BY_SIGHUP, "");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        exec.bird_pid().is_none() && !exec.socket().exists(),
        "BIRD started before confera rendered its file\n--- confera\n{}",
        exec.confera.log()
    );
    assert!(!exec.confera.log().contains("exec child started"));

    let mut exec = exec;
    exec.etcd.resume();
    exec.wait_for_statics(&["s1"]);
    let log = exec.confera.log();
    let committed = log.find("committed").expect("confera committed bird.conf");
    let started = log
        .find("exec child started")
        .expect("confera started BIRD");
    assert!(committed < started, "BIRD started before the commit\n{log}");
    let pid = exec.bird_pid().unwrap();

    exec.etcd.put("/exec/statics/s2", "10.9.2.0/24");
    exec.wait_for_statics(&["s1", "s2"]);
    exec.wait_for_log("signalled the exec child");
    assert_eq!(exec.bird_pid(), Some(pid), "reloaded, not restarted");
    assert_eq!(exec.metric("confera_child_starts_total"), 1.0);
}

#[test]
fn a_change_in_etcd_reaches_the_child_through_bird_socket_and_sighup_stays_conferas() {
    let (exec, pid) = ExecBird::running(BY_SOCKET, "");

    exec.etcd.put("/exec/statics/s2", "10.9.2.0/24");
    exec.etcd.delete("/exec/statics/s1");
    exec.wait_for_statics(&["s2"]);
    exec.wait_for_log("bird reconfigured");
    assert_eq!(exec.bird_pid(), Some(pid), "reloaded, not restarted");
    let log_path = exec.dir.path().join("bird.log");
    let bird_log = || std::fs::read_to_string(&log_path).unwrap();
    let reconfigurations = bird_log().matches("Reconfigured").count();
    assert!(reconfigurations >= 1, "{}", bird_log());

    // SIGHUP is confera's own (re-read its settings), not the child's.
    let mut exec = exec;
    exec.confera.signal(Signal::SIGHUP);
    exec.wait_for_log("settings reloaded");
    exec.wait_for_log("configuration reloaded");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(exec.bird_pid(), Some(pid));
    assert_eq!(exec.statics(), ["s2"]);
    assert_eq!(bird_log().matches("Reconfigured").count(), reconfigurations);
}

#[test]
fn sigterm_stops_bird_and_confera_exits_with_birds_status_within_the_kill_timeout() {
    let (mut exec, pid) = ExecBird::running(BY_SIGHUP, "kill_timeout = \"4s\"\n");

    let sent = Instant::now();
    exec.confera.signal(Signal::SIGTERM);
    let code = exec.exit_code(DEADLINE);
    let took = sent.elapsed();

    // BIRD ends with status 0 on SIGTERM, after logging its shutdown.
    assert_eq!(code, 0, "{}", exec.confera.log());
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(is_gone(pid), "BIRD (pid {pid}) outlived confera");
    let bird_log = std::fs::read_to_string(exec.dir.path().join("bird.log")).unwrap();
    assert!(bird_log.contains("Shutdown completed"), "{bird_log}");
    assert!(exec
        .confera
        .log()
        .contains("exec child stopped status=exit status 0"));
}

#[test]
fn a_child_that_ignores_the_kill_signal_is_killed_with_its_group_after_the_kill_timeout() {
    // SIGSTOP as the kill signal: BIRD stops and never exits by itself.
    let (mut exec, pid) = ExecBird::running(
        BY_SIGHUP,
        "kill_signal = \"SIGSTOP\"\nkill_timeout = \"1s\"\n",
    );

    let sent = Instant::now();
    exec.confera.signal(Signal::SIGTERM);
    let code = exec.exit_code(DEADLINE);
    let took = sent.elapsed();

    assert_eq!(code, 128 + 9, "{}", exec.confera.log());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(is_gone(pid), "BIRD (pid {pid}) outlived confera");
    assert!(exec.confera.log().contains("killing its process group"));
}

#[test]
fn bird_killed_from_outside_is_restarted_within_the_backoff_and_gets_the_current_config() {
    let (exec, first) = ExecBird::running(BY_SIGHUP, "restart_backoff = \"300ms:2s\"\n");

    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    exec.etcd.put("/exec/statics/s2", "10.9.2.0/24");
    let killed = Instant::now();
    assert!(
        wait_until(DEADLINE, || exec.bird_pid().is_some_and(|p| p != first)
            && exec.statics() == ["s1", "s2"]),
        "no new BIRD with the current config: {:?}\n--- confera\n{}",
        exec.statics(),
        exec.confera.log()
    );
    // The first restart waits 300 ms (plus at most a quarter of jitter).
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    let log = exec.confera.log();
    assert!(
        log.contains(
            "exec child exited; restarting it status=killed by signal 9 (SIGKILL) attempt=1"
        ),
        "{log}"
    );
    assert_eq!(exec.metric("confera_child_restarts_total"), 1.0);
    assert_eq!(exec.metric("confera_child_exits_total"), 1.0);
    assert_eq!(exec.metric("confera_child_running"), 1.0);
    assert_eq!(exec.metric("confera_child_last_exit_code"), 137.0);
    let status = exec.status();
    status.assert_success();
    for fragment in [
        "exec child: running as pid",
        "2 start(s)",
        "exec child last exit: killed by signal 9 (SIGKILL)",
    ] {
        status.assert_stdout_contains(fragment);
    }
}

#[test]
fn bird_killed_from_outside_with_on_exit_exit_ends_confera_with_a_non_zero_status() {
    let (mut exec, pid) = ExecBird::running(BY_SIGHUP, "on_exit = \"exit\"\n");

    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();

    assert_eq!(exec.exit_code(DEADLINE), 128 + 9, "{}", exec.confera.log());
    assert!(exec.confera.log().contains("on_exit = exit"));
}

#[test]
fn a_first_render_that_fails_leaves_no_child_started() {
    let etcd = Etcd::start();
    // Host bits set: the `cidr` filter refuses it, so the render fails.
    etcd.put("/exec/statics/s1", "10.9.1.1/24");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let conf = ConfDir::new();
    conf.template(
        "bird.conf.tera",
        &TEMPLATE.replace("@DIR@", dir.path().to_str().unwrap()),
    );
    conf.resource(
        "bird",
        &RESOURCE.replace("@DIR@", dir.path().to_str().unwrap()),
    );
    // Anything that starts leaves a mark.
    let child = format!(
        "sh -c 'echo started > {}; exec sleep 1000'",
        marker.display()
    );
    let mut cmd = confera();
    cmd.args(["--confdir", conf.arg(), "--node", &etcd.client_url]);
    cmd.args(["--watch", "--exec", &child]);
    cmd.arg("--state-dir").arg(dir.path().join("state"));

    let run = run_cmd(cmd);

    run.assert_code(1)
        .assert_stderr_contains("the first render failed; the exec child is not started");
    assert!(!marker.exists(), "the child was started\n{run}");
    assert!(!run.stderr.contains("exec child started"), "{run}");
}

#[test]
fn the_childs_output_passes_through_unchanged_or_prefixed_line_by_line() {
    let data = tempfile::tempdir().unwrap();
    let conf = ConfDir::new();
    conf.template("out.tera", "{{ getv(key=\"/x\") }}\n");
    conf.resource(
        "out",
        &format!(
            "[template]\nsrc = \"out.tera\"\ndest = \"{}\"\nkeys = [\"/x\"]\n",
            data.path().join("out").display()
        ),
    );
    conf.file("data.yaml", "x: 1\n");
    let child = "sh -c 'echo hello; echo oops >&2; exec sleep 1000'";
    let spawn = |extra: &str| {
        conf.file("confera.toml", extra);
        let mut cmd = confera();
        cmd.args(["--confdir", conf.arg(), "--watch", "--exec", child]);
        cmd.arg("--file").arg(conf.path().join("data.yaml"));
        cmd.arg("--state-dir").arg(data.path().join("state"));
        Daemon::spawn_cmd(cmd)
    };

    let plain = spawn("");
    assert!(
        wait_until(DEADLINE, || plain.stdout() == "hello\n"),
        "{:?}",
        plain.stdout()
    );
    assert!(plain.wait_for_log("\noops\n", DEADLINE), "{}", plain.log());
    drop(plain);

    let prefixed = spawn("[exec]\nprefix = \"[child] \"\n");
    assert!(
        wait_until(DEADLINE, || prefixed.stdout() == "[child] hello\n"),
        "{:?}",
        prefixed.stdout()
    );
    assert!(
        prefixed.wait_for_log("\n[child] oops\n", DEADLINE),
        "{}",
        prefixed.log()
    );
}

/// `unshare --pid --fork --mount-proc`: confera is PID 1 of a PID namespace
/// of its own; `--kill-child` takes it down if the test drops unshare.
fn as_pid_1(cmd: Command) -> Command {
    let mut unshare = Command::new("unshare");
    unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"]);
    unshare.arg(cmd.get_program()).args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => unshare.env(name, value),
            None => unshare.env_remove(name),
        };
    }
    unshare.stdin(std::process::Stdio::null());
    unshare
}

#[test]
fn as_pid_1_confera_reaps_orphans_and_its_own_commands_keep_their_exit_statuses() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "a PID namespace needs root (CI runs as root)"
    );
    let etcd = Etcd::start();
    etcd.put("/exec/statics/s1", "10.9.1.0/24");
    // Every check and every reload leaves a short-lived orphan behind: its
    // shell exits first, so the sleep becomes PID 1's child.
    let resource = format!(
        "{}reload_signal = \"HUP\"\nreload_cmd = \"sleep 0.3 & exit 0\"\n",
        RESOURCE.replace("bird -p -c {{src}}", "sleep 0.3 & bird -p -c {{src}}")
    );
    let mut exec = ExecBird::spawn_with(etcd, &resource, "", as_pid_1);
    exec.wait_for_statics(&["s1"]);
    let pid1 = children(exec.confera.pid())
        .first()
        .expect("unshare's child: confera as PID 1")
        .0;

    // Changes, each checked and reloaded.
    for i in 2..=6 {
        exec.etcd
            .put(&format!("/exec/statics/s{i}"), &format!("10.9.{i}.0/24"));
        let names: Vec<String> = (1..=i).map(|n| format!("s{n}")).collect();
        exec.wait_for_statics(&names.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // One that BIRD's check refuses: host bits set, printed past the filter.
    exec.conf.template(
        "bird.conf.tera",
        &TEMPLATE
            .replace("@DIR@", exec.dir.path().to_str().unwrap())
            .replace("| cidr }}", "| raw }}"),
    );
    exec.etcd.put("/exec/statics/s7", "10.9.7.1/24");
    exec.wait_for_log("exited with status 1");

    let log = exec.confera.log();
    assert!(
        log.matches("reload command succeeded").count() >= 5,
        "reload commands lost their statuses\n{log}"
    );
    assert!(
        !log.contains("could not start `sh`"),
        "a status was stolen\n{log}"
    );
    assert!(log.contains("Invalid IPv4 prefix 10.9.7.1/24"), "{log}");
    // Every orphan has exited by now (0.3 s each): none is left a zombie.
    let zombies = || -> Vec<i32> {
        children(pid1)
            .into_iter()
            .filter(|(_, state)| *state == 'Z')
            .map(|(pid, _)| pid)
            .collect()
    };
    assert!(
        wait_until(DEADLINE, || zombies().is_empty()),
        "zombies of confera (PID 1): {:?}\n--- confera\n{log}",
        zombies()
    );
    assert!(exec.metric("confera_orphans_reaped_total") >= 5.0);

    // As PID 1 it still stops BIRD on SIGTERM and exits with its status.
    kill(Pid::from_raw(pid1), Signal::SIGTERM).unwrap();
    assert_eq!(exec.exit_code(DEADLINE), 0, "{}", exec.confera.log());
    let bird_log = std::fs::read_to_string(exec.dir.path().join("bird.log")).unwrap();
    assert!(bird_log.contains("Shutdown completed"), "{bird_log}");
}

#[test]
fn a_missing_program_is_a_configuration_error_before_anything_starts() {
    let conf = ConfDir::new();
    conf.template("out.tera", "x\n");
    conf.resource(
        "out",
        "[template]\nsrc = \"out.tera\"\ndest = \"/nonexistent/out\"\n",
    );
    let mut cmd = confera();
    cmd.args(["--confdir", conf.arg(), "--backend", "env", "--watch"]);
    cmd.args(["--exec", "confera-no-such-daemon -f"]);
    run_cmd(cmd)
        .assert_code(2)
        .assert_stderr_contains("`confera-no-such-daemon` is not found in PATH");
}

/// examples/exec: the manifest's conf.d and the image's confera.toml load
/// together in exec mode (`confera check`), BIRD is started on the file the
/// first template renders, and reloaded over the socket it is started with.
#[test]
fn the_exec_recipe_loads_and_starts_bird_on_the_files_it_renders() {
    use serde::Deserialize;
    let repo = Path::new(crate::support::confdir::REPO);
    let text = std::fs::read_to_string(repo.join("examples/exec/bird-exec.yaml")).unwrap();
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect();
    let config_map = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .unwrap();
    let resource = config_map["data"]["bird.toml"].as_str().unwrap();
    let settings = std::fs::read_to_string(repo.join("examples/exec/confera.toml")).unwrap();
    let table: toml::Table = toml::from_str(&settings).unwrap();
    let argv: Vec<&str> = table["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let after = |flag: &str| argv[argv.iter().position(|w| *w == flag).unwrap() + 1];
    let first_dest = resource
        .lines()
        .find_map(|l| l.strip_prefix("dest = "))
        .unwrap();
    assert_eq!(first_dest, format!("\"{}\"", after("-c")));
    assert!(resource.contains(&format!("bird_socket = \"{}\"", after("-s"))));
    let pod = &docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap()["spec"]["template"]["spec"];
    assert_eq!(pod["containers"].as_sequence().unwrap().len(), 1);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(table["exec"]["kill_timeout"].as_str() == Some("10s") && grace > 10 + 5);

    // Loaded in exec mode, with the paths moved into a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let moved = |text: &str| {
        text.replace("/etc/bird", &dir.path().join("etc").display().to_string())
            .replace("/run/bird", &dir.path().join("run").display().to_string())
    };
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    let conf = ConfDir::new();
    conf.copy_in(&repo.join("templates"), "templates");
    conf.resource("bird", &moved(resource));
    conf.file("confera.toml", &moved(&settings));
    let mut cmd = confera();
    cmd.args(["--confdir", conf.arg(), "check"]);
    let run = run_cmd(cmd);
    run.assert_success();
}
