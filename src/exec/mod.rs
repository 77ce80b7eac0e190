//! Exec mode: confera runs the daemon it configures as its child
//! (`--exec`, `[exec]` in confera.toml). The [`Supervisor`] starts the child
//! once the first render of every resource succeeded, restarts it or ends
//! confera when it exits, stops it when confera stops, and forwards
//! SIGUSR1 and SIGUSR2; `reload_signal` without a pid file or process name
//! reaches it through [`signal_child`]. [`reaper`] does PID 1's reaping.
//!
//! It never starts the child before the supervisor is told to, never
//! signals any process but the child (and, to stop it, the child's own
//! process group), and never lets confera return before the child is gone.
//!
//! Kept on tokio's process API and `nix`, not `process-wrap`: its process
//! group wrapper waits for and signals the whole group, while confera waits
//! for the child alone and reloads only the child; a group is signalled
//! only to kill what is left of it.

pub mod output;
pub mod reaper;

use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reload::process::ProcessError;
use crate::telemetry::Telemetry;
use crate::watch::debounce::Backoff;

/// What to run and how to treat it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The program and its arguments (split like a shell would, but run
    /// without one).
    pub argv: Vec<String>,
    /// Sent to the child when confera is told to stop.
    pub kill_signal: Signal,
    /// How long the child gets to exit after `kill_signal` before its
    /// process group is killed.
    pub kill_timeout: Duration,
    pub on_exit: OnExit,
    /// The first restart delay; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Put in front of every line of the child's output; `None` passes the
    /// output through untouched.
    pub prefix: Option<String>,
}

impl Spec {
    pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

    /// A spec with the defaults for everything but the command.
    pub fn new(argv: Vec<String>) -> Spec {
        Spec {
            argv,
            kill_signal: Signal::SIGTERM,
            kill_timeout: Spec::DEFAULT_KILL_TIMEOUT,
            on_exit: OnExit::Restart,
            backoff_min: Spec::DEFAULT_BACKOFF_MIN,
            backoff_max: Spec::DEFAULT_BACKOFF_MAX,
            prefix: None,
        }
    }

    /// The command as people read it.
    pub fn display(&self) -> String {
        shlex::try_join(self.argv.iter().map(String::as_str))
            .unwrap_or_else(|_| self.argv.join(" "))
    }

    /// Checks that the program exists and may be executed, so that a typo
    /// is a configuration error at start rather than a child that never runs.
    pub fn check_program(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let program = &self.argv[0];
        let runnable = |path: &std::path::Path| {
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if program.contains('/') {
            if runnable(std::path::Path::new(program)) {
                return Ok(());
            }
            return Err(format!("exec: {program} is not an executable file"));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        if std::env::split_paths(&path).any(|dir| runnable(&dir.join(program))) {
            return Ok(());
        }
        Err(format!(
            "exec: `{program}` is not found in PATH ({})",
            path.to_string_lossy()
        ))
    }
}

/// What happens when the child exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Start it again after a backoff.
    #[default]
    Restart,
    /// Stop confera with the child's exit status, for a supervisor above
    /// (a container runtime) to act on.
    Exit,
}

/// A process's exit status as a shell reports it: its exit code, or 128 + N
/// when signal N ended it.
pub fn shell_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        (None, None) => 1,
    }
}

/// "exit status 3" or "killed by signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(n)) => match Signal::try_from(n) {
            Ok(signal) => format!("killed by signal {n} ({signal})"),
            Err(_) => format!("killed by signal {n}"),
        },
        (None, None) => status.to_string(),
    }
}

// ----- the child, as reloads see it -----

/// The child as reloads see it.
enum Slot {
    /// Not in exec mode.
    Off,
    /// In exec mode, no child runs (not yet started, between restarts, or
    /// stopped): when one starts it reads the files as they are.
    Down,
    Up(Current),
}

#[derive(Clone)]
struct Current {
    pid: u32,
    /// Opened while the child could not yet have been reaped: a signal
    /// through it never reaches a process that reused the pid.
    pidfd: Arc<OwnedFd>,
    started: Instant,
}

static CHILD: Mutex<Slot> = Mutex::new(Slot::Off);

fn slot() -> MutexGuard<'static, Slot> {
    CHILD.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a child killed with SIGKILL may take to be reaped (a process
/// stuck in the kernel may never be).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long a reload signal waits after the child started: a daemon that
/// has not yet installed its handler would die of SIGHUP's default action.
pub const SIGNAL_GRACE: Duration = Duration::from_secs(1);

/// Whether exec mode is on and no child runs now.
pub fn child_is_down() -> bool {
    matches!(*slot(), Slot::Down)
}

/// Sends `signal` to the exec child (`reload_signal` without `pid_file` or
/// `process_name`). With no child running this succeeds without sending
/// anything: the next child reads the files as they are now.
pub async fn signal_child(signal: Signal) -> Result<(), ProcessError> {
    let current = match &*slot() {
        Slot::Off => return Err(ProcessError::NoTarget),
        Slot::Down => None,
        Slot::Up(current) => Some(current.clone()),
    };
    let Some(current) = current else {
        tracing::info!(signal = %signal, "the exec child is not running; it reads the current files when it starts");
        return Ok(());
    };
    let age = current.started.elapsed();
    if age < SIGNAL_GRACE {
        tokio::time::sleep(SIGNAL_GRACE - age).await;
    }
    send(&current, signal)?;
    tracing::info!(signal = %signal, pid = current.pid, "signalled the exec child");
    Ok(())
}

fn send(current: &Current, signal: Signal) -> Result<(), ProcessError> {
    let pid = Pid::from_raw(current.pid as i32);
    let Some(sig) = rustix::process::Signal::from_named_raw(signal as i32) else {
        return Err(ProcessError::InvalidPid { pid });
    };
    match rustix::process::pidfd_send_signal(&*current.pidfd, sig) {
        Ok(()) => Ok(()),
        // Gone already: the supervisor starts the next one, or confera stops.
        Err(e) if e == rustix::io::Errno::SRCH => Ok(()),
        Err(e) => Err(ProcessError::Signal {
            pid,
            signal,
            source: nix::errno::Errno::from_raw(e.raw_os_error()),
        }),
    }
}

// ----- the supervisor -----

/// Starts the child when told to (see [`Supervisor::starter`]).
#[derive(Clone)]
pub struct Starter(Arc<Notify>);

impl Starter {
    /// The first render of every resource succeeded: start the child.
    pub fn start(&self) {
        self.0.notify_one();
    }
}

/// Runs the child for the life of confera.
pub struct Supervisor {
    start: Arc<Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<ExitStatus>>,
}

impl Supervisor {
    /// Spawns the supervising task. It waits for [`Starter::start`]; it
    /// stops the child when `stop` is cancelled, and cancels `stop` itself
    /// when the child exits under [`OnExit::Exit`].
    pub fn spawn(spec: Spec, telemetry: &Telemetry, stop: CancellationToken) -> Supervisor {
        *slot() = Slot::Down;
        telemetry.status.child_declared(&spec.display());
        let start = Arc::new(Notify::new());
        let task = tokio::spawn(supervise(
            spec,
            Watchers {
                metrics: telemetry.metrics.clone(),
                status: telemetry.status.clone(),
            },
            start.clone(),
            stop.clone(),
        ));
        Supervisor { start, stop, task }
    }

    pub fn starter(&self) -> Starter {
        Starter(self.start.clone())
    }

    /// Stops the child (if it runs) and waits until it is gone; returns how
    /// the last child ended, or `None` when none was ever started.
    pub async fn finish(self) -> Option<ExitStatus> {
        self.stop.cancel();
        match self.task.await {
            Ok(status) => status,
            Err(e) => {
                tracing::error!(error = %e, "the exec supervisor failed");
                None
            }
        }
    }
}

/// Where the supervisor reports.
struct Watchers {
    metrics: crate::telemetry::metrics::Metrics,
    status: crate::telemetry::status::Status,
}

async fn supervise(
    spec: Spec,
    report: Watchers,
    start: Arc<Notify>,
    stop: CancellationToken,
) -> Option<ExitStatus> {
    // Before the child starts too, so that SIGUSR1 never ends confera.
    let mut forwarded = Forwarded::install();
    tokio::select! {
        () = start.notified() => {}
        () = stop.cancelled() => {
            tracing::info!("stopping before the exec child was started");
            return None;
        }
    }
    let backoff = Backoff {
        base: spec.backoff_min,
        cap: spec.backoff_max,
    };
    let mut attempt = 0;
    loop {
        let mut child = match Running::spawn(&spec) {
            Ok(child) => child,
            Err(e) => {
                // As a shell would: 127 for a program not found, else 126.
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                tracing::error!(command = %spec.display(), error = %e, "cannot start the exec child");
                Running::failed(ExitStatus::from_raw(code << 8))
            }
        };
        if let Some(pid) = child.pid() {
            report.metrics.child_started();
            report.status.child_started(pid);
            tracing::info!(command = %spec.display(), pid, "exec child started");
        }
        let status = tokio::select! {
            status = child.wait(&mut forwarded) => status,
            () = stop.cancelled() => {
                let status = child.stop(&spec).await;
                report.metrics.child_exited(shell_code(status));
                report.status.child_exited(&describe(status), None);
                tracing::info!(status = %describe(status), "exec child stopped");
                return Some(status);
            }
        };
        report.metrics.child_exited(shell_code(status));
        // A child that ran long enough was healthy: start over from the
        // shortest delay.
        if child.ran_for() >= spec.backoff_max {
            attempt = 0;
        }
        match spec.on_exit {
            OnExit::Exit => {
                report.status.child_exited(&describe(status), None);
                tracing::warn!(status = %describe(status), code = shell_code(status), "exec child exited; on_exit = exit: confera stops with its status");
                stop.cancel();
                return Some(status);
            }
            OnExit::Restart => {
                attempt += 1;
                let delay = backoff.next(attempt);
                report.status.child_exited(&describe(status), Some(delay));
                tracing::warn!(status = %describe(status), attempt, retry_in_ms = delay.as_millis() as u64, "exec child exited; restarting it");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return Some(status),
                }
                report.metrics.child_restarted();
            }
        }
    }
}

/// SIGUSR1 and SIGUSR2 for the child. Installed only in exec mode: a
/// confera without a child keeps their default action.
struct Forwarded {
    usr1: Option<tokio::signal::unix::Signal>,
    usr2: Option<tokio::signal::unix::Signal>,
}

impl Forwarded {
    fn install() -> Forwarded {
        use tokio::signal::unix::{signal, SignalKind};
        Forwarded {
            usr1: signal(SignalKind::user_defined1()).ok(),
            usr2: signal(SignalKind::user_defined2()).ok(),
        }
    }

    async fn next(&mut self) -> Signal {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            if let Some(s) = s {
                if s.recv().await.is_some() {
                    return;
                }
            }
            std::future::pending().await
        }
        tokio::select! {
            () = recv(&mut self.usr1) => Signal::SIGUSR1,
            () = recv(&mut self.usr2) => Signal::SIGUSR2,
        }
    }
}

/// One run of the child.
struct Running {
    child: Option<tokio::process::Child>,
    current: Option<Current>,
    _waited: Option<reaper::Waited>,
    /// Set when the spawn failed.
    failed: Option<ExitStatus>,
}

impl Running {
    fn spawn(spec: &Spec) -> std::io::Result<Running> {
        let mut command = Command::new(&spec.argv[0]);
        command
            .args(&spec.argv[1..])
            // The child reads no terminal: in a group of its own it would
            // stop at its first read.
            .stdin(Stdio::null())
            // systemd's notify socket is confera's: a child must not report for it.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            // Its own process group, so whatever it leaves is killed with it.
            .process_group(0)
            .kill_on_drop(true);
        if spec.prefix.is_some() {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let parent = nix::unistd::getpid();
        let death = spec.kill_signal;
        // SAFETY: prctl and getppid are async-signal-safe, and the closure
        // touches nothing the parent holds.
        unsafe {
            command.pre_exec(move || {
                // If confera dies without stopping it, the child is told to
                // stop too. The "parent" is the spawning thread: a tokio
                // worker, which lives as long as the runtime.
                nix::sys::prctl::set_pdeathsig(death)?;
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other("confera exited"));
                }
                Ok(())
            });
        }
        let (mut child, waited) = reaper::spawn(&mut command)?;
        let pid = child.id().expect("a fresh child has its pid");
        if let Some(prefix) = &spec.prefix {
            let out = child.stdout.take().expect("stdout is piped");
            let err = child.stderr.take().expect("stderr is piped");
            tokio::spawn(output::copy_lines(
                out,
                prefix.clone(),
                output::Stream::Stdout,
            ));
            tokio::spawn(output::copy_lines(
                err,
                prefix.clone(),
                output::Stream::Stderr,
            ));
        }
        let raw = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .map_err(std::io::Error::from)?;
        let current = Current {
            pid,
            pidfd: Arc::new(pidfd),
            started: Instant::now(),
        };
        *slot() = Slot::Up(current.clone());
        Ok(Running {
            child: Some(child),
            current: Some(current),
            _waited: Some(waited),
            failed: None,
        })
    }

    fn failed(status: ExitStatus) -> Running {
        Running {
            child: None,
            current: None,
            _waited: None,
            failed: Some(status),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.pid)
    }

    fn ran_for(&self) -> Duration {
        self.current
            .as_ref()
            .map_or(Duration::ZERO, |c| c.started.elapsed())
    }

    /// Waits for the child to exit on its own, forwarding SIGUSR1/2 to it.
    async fn wait(&mut self, forwarded: &mut Forwarded) -> ExitStatus {
        let (Some(child), Some(current)) = (&mut self.child, &self.current) else {
            return self.failed.unwrap_or_default();
        };
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                signal = forwarded.next() => {
                    tracing::info!(signal = %signal, pid = current.pid, "forwarding a signal to the exec child");
                    if let Err(e) = send(current, signal) {
                        tracing::warn!(error = %e, "could not forward the signal");
                    }
                }
            }
        };
        self.gone(status)
    }

    /// Sends the kill signal, waits up to the kill timeout, then kills the
    /// child's process group; returns once the child is reaped.
    async fn stop(&mut self, spec: &Spec) -> ExitStatus {
        let (Some(child), Some(current)) = (&mut self.child, &self.current) else {
            return self.failed.unwrap_or_default();
        };
        tracing::info!(signal = %spec.kill_signal, pid = current.pid, timeout_ms = spec.kill_timeout.as_millis() as u64, "stopping the exec child");
        if let Err(e) = send(current, spec.kill_signal) {
            tracing::warn!(error = %e, "could not signal the exec child");
        }
        let status = match tokio::time::timeout(spec.kill_timeout, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    pid = current.pid,
                    timeout_ms = spec.kill_timeout.as_millis() as u64,
                    "the exec child did not stop in time; killing its process group"
                );
                let _ = killpg(Pid::from_raw(current.pid as i32), Signal::SIGKILL);
                match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                    Ok(status) => status,
                    // Stuck in the kernel: nothing more can be done for it.
                    Err(_) => {
                        tracing::error!(
                            pid = current.pid,
                            "the exec child did not die of SIGKILL; leaving it"
                        );
                        Ok(ExitStatus::from_raw(Signal::SIGKILL as i32))
                    }
                }
            }
        };
        self.gone(status)
    }

    /// The child was reaped: kill what it left in its process group and
    /// mark it down for reloads.
    fn gone(&mut self, status: std::io::Result<ExitStatus>) -> ExitStatus {
        *slot() = Slot::Down;
        let pid = self.current.as_ref().map_or(0, |c| c.pid);
        // The group outlives its leader while members remain, so its id
        // cannot have been reused; ESRCH means nothing is left.
        if pid > 0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        match status {
            Ok(status) => status,
            Err(e) => {
                // Only possible if something else reaped it.
                tracing::error!(pid, error = %e, "cannot wait for the exec child");
                ExitStatus::from_raw(1 << 8)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_map_to_shell_codes() {
        assert_eq!(shell_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(shell_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(shell_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(shell_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(
            describe(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(describe(ExitStatus::from_raw(2 << 8)), "exit status 2");
    }

    #[test]
    fn a_missing_program_is_named() {
        let spec = Spec::new(vec!["confera-no-such-program".into()]);
        let e = spec.check_program().unwrap_err();
        assert!(
            e.contains("`confera-no-such-program` is not found in PATH"),
            "{e}"
        );
        assert!(Spec::new(vec!["sh".into()]).check_program().is_ok());
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a program\n").unwrap();
        let e = Spec::new(vec![text.display().to_string()])
            .check_program()
            .unwrap_err();
        assert!(e.ends_with("notes.txt is not an executable file"), "{e}");
    }

    #[test]
    fn the_command_is_shown_quoted() {
        let spec = Spec::new(vec!["bird".into(), "-c".into(), "/etc/my bird.conf".into()]);
        assert_eq!(spec.display(), "bird -c '/etc/my bird.conf'");
    }
}
