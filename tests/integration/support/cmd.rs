//! Running the confera binary: one-shot runs with captured output, and
//! long-running daemons whose stderr is readable while they run.
//!
//! Also what the other fixtures share: polling with a deadline, stopping a
//! child by its pid, and reserving free loopback ports. Nothing here signals
//! a process it did not spawn, and nothing looks processes up by name.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long a one-shot `run` may take before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a daemon gets to exit after SIGTERM in [`Daemon::terminate`].
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(15);

/// The built `confera` binary, with no `CONFERA_*` and no `RUST_LOG` variable
/// inherited from the test's environment, and stdin from /dev/null.
///
/// `CONFERA_TEST_BINARY` names another binary to run instead: that is how
/// a new test is shown to fail on the code before a fix.
pub fn confera() -> Command {
    let binary = std::env::var_os("CONFERA_TEST_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_confera").into());
    let mut cmd = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"CONFERA_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    // Records of owed reloads go to a scratch directory, not /var/lib/confera
    // (a test that restarts confera passes its own --state-dir).
    cmd.env("STATE_DIRECTORY", state_dir());
    cmd.stdin(Stdio::null());
    cmd
}

/// The scratch directory the test fixtures give confera as its state
/// directory (records of owed reloads), shared by every run.
pub fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("confera-test-state")
}

/// The outcome of a finished confera run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit code, or 128 + the signal number if a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `confera ARGS` to completion (at most [`RUN_TIMEOUT`]).
pub fn run(args: &[&str]) -> Run {
    let mut cmd = confera();
    cmd.args(args);
    run_cmd(cmd)
}

/// Runs a prepared command (for example [`confera`] plus `.env(..)`) to
/// completion (at most [`RUN_TIMEOUT`]), capturing stdout and stderr.
pub fn run_cmd(mut cmd: Command) -> Run {
    let mut stdout = tempfile::tempfile().expect("create a temp file for stdout");
    let mut stderr = tempfile::tempfile().expect("create a temp file for stderr");
    cmd.stdout(stdout.try_clone().expect("dup stdout file"));
    cmd.stderr(stderr.try_clone().expect("dup stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", describe(&cmd)));
    let status = wait_timeout(&mut child, RUN_TIMEOUT);
    let read_back = |f: &mut File| {
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("rewind captured output");
        f.read_to_end(&mut bytes).expect("read captured output");
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let (stdout, stderr) = (read_back(&mut stdout), read_back(&mut stderr));
    let Some(status) = status else {
        stop_child(&mut child, Duration::ZERO);
        panic!(
            "{} did not finish within {RUN_TIMEOUT:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            describe(&cmd)
        );
    };
    Run {
        code: exit_code(status),
        stdout,
        stderr,
    }
}

impl Run {
    /// Asserts the exit code, showing the whole output when it differs.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, fragment: &str) -> &Self {
        assert!(
            self.stderr.contains(fragment),
            "stderr does not contain {fragment:?}\n{self}"
        );
        self
    }

    #[track_caller]
    pub fn assert_stdout_contains(&self, fragment: &str) -> &Self {
        assert!(
            self.stdout.contains(fragment),
            "stdout does not contain {fragment:?}\n{self}"
        );
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A long-running confera (watch mode). Its stderr goes to a file readable
/// with [`Daemon::log`] while it runs; Drop kills it by pid (SIGKILL) and, if
/// the test is panicking, prints the log so the failure shows it.
pub struct Daemon {
    child: Child,
    dir: TempDir,
    what: String,
}

impl Daemon {
    /// Spawns `confera ARGS`.
    pub fn spawn(args: &[&str]) -> Daemon {
        let mut cmd = confera();
        cmd.args(args);
        Daemon::spawn_cmd(cmd)
    }

    /// Spawns a prepared command; its stdout and stderr are replaced by files.
    pub fn spawn_cmd(mut cmd: Command) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("confera-daemon-")
            .tempdir()
            .expect("create the daemon's temp dir");
        let out = File::create(dir.path().join("stdout")).expect("create stdout file");
        let err = File::create(dir.path().join("stderr")).expect("create stderr file");
        cmd.stdout(out).stderr(err);
        let what = describe(&cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Daemon { child, dir, what }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("stderr"))
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.dir.path().join("stdout"))
    }

    /// Waits until stderr contains `fragment`; false on timeout.
    pub fn wait_for_log(&self, fragment: &str, deadline: Duration) -> bool {
        wait_until(deadline, || self.log().contains(fragment))
    }

    /// Waits until stderr contains `fragment`; on timeout, fails the test
    /// showing the log.
    #[track_caller]
    pub fn expect_log(&self, fragment: &str, deadline: Duration) {
        assert!(
            self.wait_for_log(fragment, deadline),
            "confera did not log {fragment:?} within {deadline:?}\n--- confera\n{}",
            self.log()
        );
    }

    /// How many times `fragment` occurs in stderr so far.
    pub fn log_count(&self, fragment: &str) -> usize {
        self.log().matches(fragment).count()
    }

    /// Sends a signal (for example SIGHUP to reload the configuration).
    pub fn signal(&mut self, signal: Signal) {
        assert!(
            signal_child(&mut self.child, signal),
            "{} has exited; cannot send {signal}\n--- stderr\n{}",
            self.what,
            self.log()
        );
    }

    /// True while the process has not exited (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `deadline` for the daemon to exit on its own; returns its
    /// exit code, or None if it is still running.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        wait_timeout(&mut self.child, deadline).map(exit_code)
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code. Panics
    /// (after SIGKILL) when the daemon ignores SIGTERM for [`TERMINATE_TIMEOUT`].
    #[track_caller]
    pub fn terminate(&mut self) -> i32 {
        signal_child(&mut self.child, Signal::SIGTERM);
        match wait_timeout(&mut self.child, TERMINATE_TIMEOUT) {
            Some(status) => exit_code(status),
            None => {
                stop_child(&mut self.child, Duration::ZERO);
                panic!(
                    "{} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM\n--- stderr\n{}",
                    self.what,
                    self.log()
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::ZERO);
        if std::thread::panicking() {
            eprintln!("--- {} stderr\n{}", self.what, self.log());
        }
    }
}

/// Free loopback ports held by live fixtures of this test process.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Loopback ports reserved for one fixture for as long as it lives, even
/// while its process is down (so it can restart on them): no other fixture
/// in this test process is handed one of them. Released on Drop.
pub struct PortLease {
    ports: Vec<u16>,
}

impl PortLease {
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut reserved = RESERVED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        for port in &self.ports {
            reserved.remove(port);
        }
    }
}

/// N distinct free ports on 127.0.0.1: bound to port 0 (so the kernel picks
/// them and they differ), skipping ports another fixture here holds, then
/// released for the process that will listen on them. Another process can
/// still take one in between: fixtures detect that and start again.
pub fn reserve_ports(n: usize) -> PortLease {
    let mut reserved = RESERVED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    // Every listener stays open until we are done, so none is offered twice.
    let mut listeners = Vec::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free loopback port");
        let port = listener
            .local_addr()
            .expect("a bound socket's address")
            .port();
        listeners.push(listener);
        if reserved.insert(port) {
            ports.push(port);
        }
    }
    PortLease { ports }
}

/// Owns a child while a fixture starts it: if start-up fails or panics,
/// Drop kills (SIGKILL) and reaps it, so no process outlives its test.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    pub fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until into_inner")
    }

    /// Hands the child over once start-up succeeded.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("child present until into_inner")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            stop_child(child, Duration::ZERO);
        }
    }
}

/// Polls `f` every 15 ms until it returns true (then true) or `deadline` has
/// passed (then false, after one last poll at or past the deadline).
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(POLL);
    }
}

/// The exit code of a status, or 128 + the signal number.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .expect("an exit status has a code or a signal")
}

/// Sends `signal` to the child by pid; false if it has already exited. An
/// exited child is reaped first, and a reaped pid is never signalled, since it
/// may belong to another process by now.
pub fn signal_child(child: &mut Child, signal: Signal) -> bool {
    if !matches!(child.try_wait(), Ok(None)) {
        return false;
    }
    kill(Pid::from_raw(child.id() as i32), signal).is_ok()
}

/// Waits for the child to exit, for at most `deadline`.
pub fn wait_timeout(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(deadline, || {
        status = child.try_wait().expect("wait for a child process");
        status.is_some()
    });
    status
}

/// Stops the child by pid: SIGTERM (after SIGCONT, in case it is paused), up
/// to `grace` to exit, then SIGKILL; always reaps it. With a zero `grace` it
/// sends SIGKILL straight away.
pub fn stop_child(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    if !grace.is_zero() {
        signal_child(child, Signal::SIGTERM);
        signal_child(child, Signal::SIGCONT);
        if let Some(status) = wait_timeout(child, grace) {
            return status;
        }
    }
    // `Child::kill` sends SIGKILL to the pid, and is a no-op once reaped.
    let _ = child.kill();
    child.wait().expect("reap a killed child process")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args().map(OsStr::to_string_lossy) {
        s.push(' ');
        s.push_str(&arg);
    }
    s
}

fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}
