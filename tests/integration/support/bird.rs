//! A real BIRD 2 under a temp dir: its own config, control socket, pid file
//! and log, stopped by pid on Drop.
//!
//! Fixture configs never contain `protocol kernel`: nothing is exported into
//! the host's routing tables, and nothing listens beyond loopback. The one
//! exception is a BIRD started in a network namespace the test created
//! itself ([`Bird::in_netns`], the fabric lab), whose kernel tables are the
//! namespace's own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::cmd::wait_until;

const START_DEADLINE: Duration = Duration::from_secs(10);
const WAIT_DEADLINE: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(20);

/// The line BIRD logs when a reconfiguration has completed.
const RECONFIGURED: &str = "<INFO> Reconfigured";

pub struct Bird {
    dir: TempDir,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Bird {
    /// Write `config_text` (after a `log` line) to `<dir>/bird.conf` and start
    /// BIRD on it.
    pub fn start(config_text: &str) -> Bird {
        let dir = tempfile::tempdir().expect("create temp dir for BIRD");
        let config = dir.path().join("bird.conf");
        fs::write(&config, with_log_line(dir.path(), config_text)).expect("write bird.conf");
        Bird::with_config_path(dir, config)
    }

    /// Start BIRD on an existing config file, so that its includes resolve
    /// relative to it. The `log` line is prepended to the file if missing.
    pub fn with_config_path(dir: TempDir, config: PathBuf) -> Bird {
        Bird::spawn(dir, config, None, None)
    }

    /// Like [`Bird::start`], but BIRD drops to `uid`/`gid` after start-up
    /// (`-u UID -g GID`), as a deployment runs it: the control socket is
    /// then given to that user. The temp dir is world-writable, as an
    /// `emptyDir` volume is, since BIRD writes its log and pid file there
    /// once it is that user.
    pub fn start_as(config_text: &str, uid: u32, gid: u32) -> Bird {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("create temp dir for BIRD");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))
            .expect("make BIRD's temp dir world-writable");
        let config = dir.path().join("bird.conf");
        fs::write(&config, with_log_line(dir.path(), config_text)).expect("write bird.conf");
        Bird::spawn(dir, config, None, Some((uid, gid)))
    }

    /// Like [`Bird::with_config_path`], but BIRD runs in the network
    /// namespace `netns` (`ip netns exec`, which execs BIRD in place, so the
    /// child's pid is BIRD's). The control socket stays in `dir`.
    pub fn in_netns(netns: &str, dir: TempDir, config: PathBuf) -> Bird {
        Bird::spawn(dir, config, Some(netns), None)
    }

    fn spawn(dir: TempDir, config: PathBuf, netns: Option<&str>, user: Option<(u32, u32)>) -> Bird {
        let text = fs::read_to_string(&config)
            .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
        if !text.contains(&log_line(dir.path())) {
            fs::write(&config, with_log_line(dir.path(), &text)).expect("prepend log line");
        }
        let socket = dir.path().join("bird.ctl");
        let pid_file = dir.path().join("bird.pid");
        let log = dir.path().join("bird.log");
        let output = fs::File::create(dir.path().join("bird.out")).expect("create bird.out");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "bird"]);
                command
            }
            None => Command::new("bird"),
        };
        if let Some((uid, gid)) = user {
            command.args(["-u", &uid.to_string(), "-g", &gid.to_string()]);
        }
        let child = command
            .arg("-f")
            .arg("-c")
            .arg(&config)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("dup bird.out"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn bird (is bird2 installed?): {e}"));
        let mut bird = Bird {
            dir,
            socket,
            pid_file,
            config,
            log,
            child,
        };
        bird.wait_until_ready();
        bird
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll bird") {
                panic!(
                    "bird exited with {status} before it was ready\n--- output:\n{}--- log:\n{}",
                    fs::read_to_string(self.dir.path().join("bird.out")).unwrap_or_default(),
                    fs::read_to_string(&self.log).unwrap_or_default(),
                );
            }
            if self.socket.exists() && self.birdc("show status").contains("Daemon is up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bird was not ready within {START_DEADLINE:?} on {}",
                self.socket.display()
            );
            thread::sleep(POLL);
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replace the config file with `config_text`, after the `log` line.
    /// BIRD notices only when told to reconfigure.
    pub fn write_config(&self, config_text: &str) {
        fs::write(&self.config, with_log_line(self.dir(), config_text)).expect("write bird.conf");
    }

    /// `birdc -s SOCK <cmd>`; its stdout.
    pub fn birdc(&self, cmd: &str) -> String {
        birdc(&self.socket, cmd)
    }

    /// `show protocols`, as birdc prints it.
    pub fn protocols(&self) -> String {
        self.birdc("show protocols")
    }

    /// How many reconfigurations BIRD has completed: its log's
    /// `<INFO> Reconfigured` lines. Start-up logs `Started` instead, and a
    /// rejected configuration logs nothing.
    pub fn reconfigurations(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.ends_with(RECONFIGURED))
            .count()
    }

    /// Wait until `condition` holds, or panic naming `what` after 5 s.
    pub fn wait_for(&self, what: &str, condition: impl Fn(&Bird) -> bool) {
        assert!(
            wait_until(WAIT_DEADLINE, || condition(self)),
            "timed out after {WAIT_DEADLINE:?} waiting for {what}\n--- log:\n{}",
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(POLL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `birdc -s SOCKET <cmd>` against any BIRD (one confera runs, say); its stdout.
pub fn birdc(socket: &Path, cmd: &str) -> String {
    let output = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run birdc: {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn log_line(dir: &Path) -> String {
    format!("log \"{}\" all;", dir.join("bird.log").display())
}

fn with_log_line(dir: &Path, config_text: &str) -> String {
    format!("{}\n{config_text}", log_line(dir))
}
