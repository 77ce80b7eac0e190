//! A stand-in daemon that counts the SIGHUPs it receives: a real, separate
//! bash process with a pid file, for checking confera's reload step.
//!
//! The script installs its HUP trap before it writes the pid file, so a
//! signal sent to the pid it names is always counted. It waits in the `read`
//! builtin (no child processes), which a trapped signal interrupts at once, so
//! the trap runs promptly and once per delivered signal. Signals are not
//! queued, though: several SIGHUPs sent within the same instant can reach it
//! as one, exactly as with a real daemon. The script reads its stdin, a pipe
//! this fixture holds open, so it also exits on its own if the test process
//! dies without running Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::cmd::{signal_child, stop_child, wait_until};

const SCRIPT: &str = r#"
trap 'echo hup >> "$1"' HUP
echo $$ > "$2.tmp"
mv "$2.tmp" "$2"
while :; do
    read -r -t 1
    status=$?
    # 0: a line; >128: timeout or a trapped signal; anything else: EOF.
    if [ "$status" -ne 0 ] && [ "$status" -le 128 ]; then exit 0; fi
done
"#;

const START_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HupDaemon {
    /// The file holding the daemon's pid, for a resource's `pid_file`.
    pub pid_file: PathBuf,
    /// One line is appended per SIGHUP handled.
    pub count_file: PathBuf,
    pid: i32,
    child: Mutex<Child>,
    // Held open so the script's `read` never sees EOF while we live.
    _stdin: ChildStdin,
}

impl HupDaemon {
    /// Starts a daemon whose files are `DIR/daemon.pid` and `DIR/daemon.hups`.
    pub fn start(dir: &Path) -> HupDaemon {
        HupDaemon::start_named(dir, "daemon")
    }

    /// Starts a daemon whose files are `DIR/NAME.pid` and `DIR/NAME.hups`,
    /// for tests with several daemons in one dir.
    pub fn start_named(dir: &Path, name: &str) -> HupDaemon {
        let pid_file = dir.join(format!("{name}.pid"));
        let count_file = dir.join(format!("{name}.hups"));
        assert!(
            !pid_file.exists(),
            "{} already exists: give each HupDaemon its own name",
            pid_file.display()
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(SCRIPT)
            .arg("hup-daemon")
            .arg(&count_file)
            .arg(&pid_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn bash for the HUP-counting daemon");
        let stdin = child.stdin.take().expect("piped stdin");
        let expected = child.id().to_string();
        let written = wait_until(START_TIMEOUT, || {
            std::fs::read_to_string(&pid_file).is_ok_and(|pid| pid.trim() == expected)
        });
        if !written {
            stop_child(&mut child, Duration::ZERO);
            panic!(
                "the HUP daemon did not write {} within {START_TIMEOUT:?}",
                pid_file.display()
            );
        }
        HupDaemon {
            pid_file,
            count_file,
            pid: child.id() as i32,
            child: Mutex::new(child),
            _stdin: stdin,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How many SIGHUPs the daemon has handled so far.
    pub fn hups(&self) -> usize {
        match std::fs::read_to_string(&self.count_file) {
            Ok(text) => text.lines().count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => panic!("read {}: {e}", self.count_file.display()),
        }
    }

    /// Waits until at least `n` SIGHUPs were handled; false on timeout.
    pub fn wait_for_hups(&self, n: usize, deadline: Duration) -> bool {
        wait_until(deadline, || self.hups() >= n)
    }

    /// True until the process exits.
    pub fn is_alive(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// Sends a signal to the daemon by pid (a test's own SIGHUP, say).
    pub fn signal(&self, signal: Signal) {
        assert!(
            signal_child(&mut self.child.lock().unwrap(), signal),
            "the HUP daemon has exited"
        );
    }

    /// Kills the daemon (SIGKILL) and reaps it; the pid file stays behind,
    /// naming a dead process, as after a crash.
    pub fn kill(&self) {
        stop_child(&mut self.child.lock().unwrap(), Duration::ZERO);
    }
}

impl Drop for HupDaemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        stop_child(child, Duration::ZERO);
    }
}
