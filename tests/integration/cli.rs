//! The command line and the settings as a user meets them, through the built
//! binary: confd's own command lines and `confd.toml` work as they are, log
//! levels never silence errors, backend settings are never silently
//! ignored, every duration is bounded before anything starts, a closed
//! output pipe is not a crash, and multi-line errors stay one readable log
//! event.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use nix::sys::signal::Signal;

use crate::support::cmd::{
    confera, exit_code, reserve_ports, run, run_cmd, signal_child, wait_timeout, wait_until,
    Daemon, KillOnDrop, PortLease, Run, RUN_TIMEOUT,
};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;

const DEADLINE: Duration = Duration::from_secs(5);

/// A confdir with unit `app` rendering `/app/greeting` (relative to PREFIX)
/// into `out/app.conf`, and a data file `data.yaml` holding
/// `app: {greeting: hello}` for the file backend.
fn app(prefix: &str) -> ConfDir {
    let dir = ConfDir::new();
    dir.dest("out/app.conf");
    dir.template("app.tera", "greeting={{ getv(key=\"/app/greeting\") }}\n")
        .resource(
            "app",
            &format!(
                "[template]\nsrc = \"app.tera\"\ndest = \"out/app.conf\"\n\
                 prefix = \"{prefix}\"\nkeys = [\"/app\"]\n"
            ),
        )
        .file("data.yaml", "app:\n  greeting: hello\n");
    dir
}

/// `--confdir DIR MODE...` with the file backend on DIR's `data.yaml`.
fn on_data(dir: &ConfDir, mode: &[&str]) -> Vec<String> {
    let data = dir.path().join("data.yaml").display().to_string();
    let args = ["--confdir", dir.arg(), "--backend", "file", "--file", &data];
    args.iter().chain(mode).map(|a| a.to_string()).collect()
}

/// `--onetime` on DIR's `data.yaml`.
fn onetime(dir: &ConfDir) -> Vec<String> {
    on_data(dir, &["--onetime"])
}

/// `--watch` on DIR's `data.yaml`, with a short debounce.
fn watching(dir: &ConfDir) -> Vec<String> {
    on_data(dir, &["--watch", "--wait", "20ms:200ms"])
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// An etcd endpoint where nothing listens (for as long as the lease lives).
fn dead_endpoint() -> (PortLease, String) {
    let lease = reserve_ports(1);
    let url = format!("http://127.0.0.1:{}", lease.ports()[0]);
    (lease, url)
}

// --- confd's command line and confd.toml --------------------------------------

#[test]
fn a_confd_command_line_with_single_dash_flags_runs_unchanged() {
    let etcd = Etcd::start();
    etcd.put("/production/app/greeting", "from etcd");
    let dir = app("/");

    // As a runit script or a systemd unit would have it for confd.
    let out = run(&[
        "-onetime",
        "-backend",
        "etcdv3",
        "-node",
        &etcd.client_url,
        "-confdir",
        dir.arg(),
        "-prefix",
        "/production",
        "-interval=60",
        "-log-level",
        "warning",
        "-sync-only",
        "-keep-stage-file=false",
        "-scheme",
        "http",
    ]);

    out.assert_success();
    assert_eq!(dir.read("out/app.conf"), "greeting=from etcd\n");
}

#[test]
fn an_unsupported_confd_flag_is_refused_naming_it_and_why() {
    let dir = app("/");
    let out = run(&[
        "-onetime",
        "-confdir",
        dir.arg(),
        "-srv-domain",
        "example.com",
    ]);
    out.assert_code(2)
        .assert_stderr_contains("confd's -srv-domain is not supported by confera")
        .assert_stderr_contains("--node");
}

#[test]
fn a_confd_toml_is_read_by_config_file_as_it_is() {
    let etcd = Etcd::start();
    etcd.put("/production/app/greeting", "from confd.toml");
    let dir = app("/");
    // confd's own spellings, a node without a scheme, and keys confd
    // writes with empty values.
    dir.file(
        "etc/confd.toml",
        &format!(
            "backend = \"etcdv3\"\n\
             confdir = \"{confdir}\"\n\
             nodes = [\"{endpoint}\"]\n\
             prefix = \"/production\"\n\
             log-level = \"warning\"\n\
             interval = 600\n\
             noop = false\n\
             watch = false\n\
             sync-only = true\n\
             scheme = \"http\"\n\
             srv_domain = \"\"\n\
             client_insecure = false\n",
            confdir = dir.arg(),
            endpoint = etcd.endpoint(),
        ),
    );
    let config_file = dir.path().join("etc/confd.toml");

    let out = run(&["--config-file", config_file.to_str().unwrap(), "--onetime"]);

    out.assert_success();
    assert_eq!(dir.read("out/app.conf"), "greeting=from confd.toml\n");
}

#[test]
fn a_confd_toml_key_confera_does_not_support_is_an_error_naming_the_key_and_the_file() {
    let dir = app("/");
    dir.file(
        "confd.toml",
        "backend = \"etcdv3\"\nsrv_domain = \"example.com\"\n",
    );
    let path = dir.path().join("confd.toml");

    let out = run(&["--config-file", path.to_str().unwrap(), "--onetime"]);

    out.assert_code(2)
        .assert_stderr_contains(&path.display().to_string())
        .assert_stderr_contains("confd's `srv_domain` is not supported by confera")
        .assert_stderr_contains("list the endpoints in `nodes`");
}

#[test]
fn an_error_after_an_unset_unsupported_confd_key_names_its_own_line() {
    // confd's sample confd.toml lists settings it does not use as "";
    // confera accepts them, and a mistake further down keeps its line.
    let dir = app("/");
    dir.file(
        "confd.toml",
        "srv_domain = \"\"\nbackend = \"file\"\n\ninterval = \"ten\"\n",
    );
    let path = dir.path().join("confd.toml");

    let out = run(&["--config-file", path.to_str().unwrap(), "--onetime"]);

    out.assert_code(2)
        .assert_stderr_contains(&path.display().to_string())
        .assert_stderr_contains("line 4")
        .assert_stderr_contains("interval = \"ten\"");
}

// --- log levels ----------------------------------------------------------------

/// `confera --onetime` on [`app`] with a second unit `broken` whose key is
/// missing, with the file backend and EXTRA arguments.
fn run_with_a_failing_unit(extra: &[&str]) -> Run {
    let dir = app("/");
    dir.dest("out/broken.conf");
    dir.template("broken.tera", "{{ getv(key=\"/app/missing\") }}\n")
        .resource(
            "broken",
            "[template]\nsrc = \"broken.tera\"\ndest = \"out/broken.conf\"\nkeys = [\"/app\"]\n",
        );
    let args = onetime(&dir);
    run(&[&strs(&args)[..], extra].concat())
}

#[test]
fn confds_warning_level_still_shows_errors() {
    for level in ["warning", "WARNING", "warn", "error", "fatal", "panic"] {
        let out = run_with_a_failing_unit(&["--log-level", level]);
        out.assert_code(1)
            .assert_stderr_contains("ERROR")
            .assert_stderr_contains("broken")
            .assert_stderr_contains("/app/missing");
        assert!(
            !out.stderr.contains(" INFO "),
            "{level} shows info lines\n{out}"
        );
    }
}

#[test]
fn an_unknown_log_level_is_exit_2_listing_the_accepted_names() {
    let out = run_with_a_failing_unit(&["--log-level", "warnign"]);
    out.assert_code(2)
        .assert_stderr_contains("`warnign` is not a log level")
        .assert_stderr_contains("trace, debug, info, warn (or warning), error");

    let dir = app("/");
    dir.file("confera.toml", "log-level = \"verbose\"\n");
    let out = run(&["--confdir", dir.arg(), "--onetime"]);
    out.assert_code(2)
        .assert_stderr_contains("`log-level` in")
        .assert_stderr_contains("`verbose` is not a log level");
    assert_eq!(dir.try_read("out/app.conf"), None);
}

// --- backend settings are never silently ignored --------------------------------

#[test]
fn a_node_flag_over_a_file_backend_from_confera_toml_selects_etcd_instead_of_being_ignored() {
    let dir = app("/");
    dir.file(
        "confera.toml",
        "backend = \"file\"\nfiles = [\"data.yaml\"]\n",
    );
    let (_lease, dead) = dead_endpoint();

    // The flag outranks the file, and it is an etcd setting: it selects
    // etcd, which does not answer, so nothing is rendered from the YAML.
    let out = run(&["--confdir", dir.arg(), "--onetime", "--node", &dead]);

    out.assert_code(2).assert_stderr_contains(&dead);
    assert_eq!(dir.try_read("out/app.conf"), None, "{out}");
}

#[test]
fn an_etcd_setting_beside_another_backend_at_the_same_place_is_exit_2_naming_both() {
    let dir = app("/");
    let data = dir.path().join("data.yaml");
    let (_lease, dead) = dead_endpoint();

    let out = run(&[
        "--confdir",
        dir.arg(),
        "--onetime",
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--node",
        &dead,
    ]);
    out.assert_code(2).assert_stderr_contains(
        "--node (command line) is an etcd setting, but --backend (command line) selects the file backend",
    );

    let mut cmd = confera();
    cmd.env("CONFERA_BACKEND", "env")
        .env("CONFERA_USERNAME", "u")
        .env("CONFERA_PASSWORD", "p")
        .args(["--confdir", dir.arg(), "--onetime"]);
    run_cmd(cmd).assert_code(2).assert_stderr_contains(
        "CONFERA_USERNAME (environment) is an etcd setting, but CONFERA_BACKEND (environment) selects the env backend",
    );

    dir.file(
        "confera.toml",
        &format!("backend = \"file\"\nfiles = [\"data.yaml\"]\nnodes = [\"{dead}\"]\n"),
    );
    let settings = dir.path().join("confera.toml").display().to_string();
    run(&["--confdir", dir.arg(), "--onetime"])
        .assert_code(2)
        .assert_stderr_contains(&format!(
            "`nodes` in {settings} is an etcd setting, but `backend` in {settings} selects the file backend"
        ));
    assert_eq!(dir.try_read("out/app.conf"), None);
}

// --- durations ------------------------------------------------------------------

#[test]
fn durations_too_long_for_the_clock_are_exit_2_naming_the_setting_not_a_panic() {
    let dir = app("/");
    let data = dir.path().join("data.yaml");
    let data = data.to_str().unwrap();
    let watch = [
        "--confdir",
        dir.arg(),
        "--watch",
        "--backend",
        "file",
        "--file",
        data,
    ];

    let out = run(&[&watch[..], &["--interval", "18446744073709551615"]].concat());
    out.assert_code(2)
        .assert_stderr_contains("--interval")
        .assert_stderr_contains("1..=31536000");

    let out = run(&[&watch[..], &["--wait", "0s:18446744073709551615"]].concat());
    out.assert_code(2)
        .assert_stderr_contains("--wait")
        .assert_stderr_contains("365 days");

    dir.file("confera.toml", "interval = 9999999999\n");
    let out = run(&watch);
    out.assert_code(2)
        .assert_stderr_contains("`interval` in")
        .assert_stderr_contains("out of range");
    dir.remove("confera.toml");

    dir.resource(
        "app",
        "[template]\nsrc = \"app.tera\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n\
         check_timeout = \"9999999999999999999\"\n",
    );
    let out = run(&watch);
    out.assert_code(2)
        .assert_stderr_contains("check_timeout")
        .assert_stderr_contains("365 days");
}

// --- a closed output pipe ---------------------------------------------------------

/// The writing end of a pipe whose reading end is already closed, as
/// `confera ... 2>&1 | head` has once head has gone.
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("create a pipe");
    drop(read);
    write
}

/// Starts `confera ARGS` with stdout and stderr on a [`closed_pipe`].
fn spawn_into_a_closed_pipe(args: &[&str]) -> KillOnDrop {
    let pipe = closed_pipe();
    let mut cmd = confera();
    cmd.args(args)
        .stdout(Stdio::from(pipe.try_clone().expect("dup the pipe")))
        .stderr(Stdio::from(pipe));
    // Our copies of the writing end go with the command.
    KillOnDrop::new(cmd.spawn().expect("spawn confera"))
}

/// Runs `confera ARGS` into a [`closed_pipe`]; returns the exit code.
fn run_into_a_closed_pipe(args: &[&str]) -> i32 {
    let mut child = spawn_into_a_closed_pipe(args);
    let status = wait_timeout(child.get(), RUN_TIMEOUT)
        .unwrap_or_else(|| panic!("confera {args:?} did not finish within {RUN_TIMEOUT:?}"));
    exit_code(status)
}

#[test]
fn a_closed_output_pipe_does_not_stop_a_run_or_its_commit() {
    let dir = app("/");
    let args = onetime(&dir);
    let onetime = strs(&args);

    let code = run_into_a_closed_pipe(&[&onetime[..], &["--log-level", "debug"]].concat());
    assert_eq!(code, 0);
    assert_eq!(dir.read("out/app.conf"), "greeting=hello\n");

    // Diffs on stdout, and check's listing, into a closed pipe too.
    dir.file("data.yaml", "app:\n  greeting: changed\n");
    assert_eq!(
        run_into_a_closed_pipe(&[&onetime[..], &["--noop", "--diff"]].concat()),
        0
    );
    assert_eq!(
        run_into_a_closed_pipe(&["check", "--confdir", dir.arg()]),
        0
    );
    // A configuration error is still exit 2, without a panic.
    assert_eq!(
        run_into_a_closed_pipe(&[&onetime[..], &["--log-level", "nope"]].concat()),
        2
    );
}

#[test]
fn a_watching_daemon_whose_log_pipe_closed_keeps_committing_changes() {
    let dir = app("/");
    let mut child = spawn_into_a_closed_pipe(&strs(&watching(&dir)));

    let rendered = |text: &str| dir.try_read("out/app.conf").as_deref() == Some(text);
    assert!(
        wait_until(DEADLINE, || rendered("greeting=hello\n")),
        "the first render never landed"
    );
    dir.file("data.yaml", "app:\n  greeting: again\n");
    assert!(
        wait_until(DEADLINE, || rendered("greeting=again\n")),
        "a change made after the log pipe closed never landed"
    );
    assert!(
        signal_child(child.get(), Signal::SIGTERM),
        "confera exited: {:?}",
        child.get().try_wait()
    );
    let status = wait_timeout(child.get(), DEADLINE).expect("confera exits on SIGTERM");
    assert_eq!(exit_code(status), 0);
}

// --- multi-line errors in logs -----------------------------------------------------

const BROKEN_RESOURCE: &str =
    "[template]\nsrc = \"app.tera\"\ndest = \"out/app.conf\"\nbogus = 1\n";

#[test]
fn a_toml_error_is_one_json_event_with_its_caret_block_in_one_field() {
    let dir = app("/");
    dir.resource("app", BROKEN_RESOURCE);
    let args = onetime(&dir);

    let out = run(&[&strs(&args)[..], &["--log-format", "json"]].concat());

    out.assert_code(2);
    let events: Vec<Value> = out
        .stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object: {line:?}: {e}\n{out}"))
        })
        .collect();
    let error = events
        .iter()
        .find(|e| e["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error event\n{out}"));
    let field = error["error"].as_str().expect("an `error` field");
    assert!(
        field.contains("app.toml")
            && field.contains("TOML parse error at line 4")
            && field.contains("4 | bogus = 1\n  | ^^^^^\nunknown field `bogus`"),
        "{field}"
    );
}

#[test]
fn a_toml_error_in_a_text_log_keeps_its_caret_block_indented_under_its_event() {
    let dir = app("/");
    let mut confera = Daemon::spawn(&strs(&watching(&dir)));
    assert!(
        wait_until(DEADLINE, || dir.try_read("out/app.conf").as_deref()
            == Some("greeting=hello\n")),
        "the first render never landed\n{}",
        confera.log()
    );

    dir.resource("app", BROKEN_RESOURCE);
    assert!(
        confera.wait_for_log("unknown field `bogus`", DEADLINE),
        "the broken resource was not reported\n{}",
        confera.log()
    );

    // Every line is an event (it starts with a timestamp) or a continuation
    // of one (indented); the caret block keeps its shape under its event.
    let log = confera.log();
    let timestamp = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").unwrap();
    for line in log.lines() {
        assert!(
            timestamp.is_match(line) || line.starts_with("    "),
            "a line that is neither an event nor indented: {line:?}\n{log}"
        );
    }
    assert!(
        log.contains("\n      |\n    4 | bogus = 1\n      | ^^^^^\n    unknown field `bogus`"),
        "{log}"
    );
    assert_eq!(confera.terminate(), 0);
}
