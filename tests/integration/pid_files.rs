//! Reload by signal as root: a pid file or a process name that a local user
//! controls can never aim confera's signal at someone else's process. Each
//! test creates a throwaway user, who writes pid files and runs processes
//! through `runuser` and `setpriv`.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::support::cmd::{run, stop_child, wait_until, Run};
use crate::support::confdir::ConfDir;
use crate::support::daemon::HupDaemon;
use crate::support::user::{open_for_traversal, TempUser};

const DEADLINE: Duration = Duration::from_secs(5);

/// A confdir with `run/` owned by a throwaway user, and unit `app` writing
/// `out/app.conf` and reloading by SIGTERM with RELOAD (`pid_file = ...` or
/// `process_name = ...`).
struct Site {
    dir: ConfDir,
    user: TempUser,
}

impl Site {
    fn new() -> Site {
        let dir = ConfDir::new();
        open_for_traversal(dir.path());
        let user = TempUser::create();
        user.own_dir(&dir.path().join("run"));
        dir.template("app.tera", "new\n");
        Site { dir, user }
    }

    fn reload(&self, reload: &str) {
        self.dir.resource(
            "app",
            &format!(
                "[template]\nsrc = \"app.tera\"\ndest = {:?}\nreload_signal = \"SIGTERM\"\n{reload}\n",
                self.dir.dest("out/app.conf").display().to_string()
            ),
        );
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("run/daemon.pid")
    }

    /// The user writes PID into `run/daemon.pid`.
    fn user_writes_pid(&self, pid: u32) {
        self.user
            .sh(&format!("echo {pid} > '{}'", self.pid_file().display()));
    }

    /// PROGRAM ARGS running as the user (setpriv execs it: the child's pid is
    /// the program's).
    fn spawn_as_user(&self, program: &Path, args: &[&str]) -> UserProcess {
        let child = Command::new("setpriv")
            .arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .arg("--clear-groups")
            .arg(program)
            .args(args)
            .spawn()
            .expect("spawn setpriv");
        let pid = child.id();
        let uid = self.user.uid;
        assert!(
            wait_until(DEADLINE, || owner_of(pid) == Some(uid)),
            "pid {pid} never ran as uid {uid}"
        );
        UserProcess { child }
    }

    fn onetime(&self) -> Run {
        run(&["--confdir", self.dir.arg(), "--backend", "env", "--onetime"])
    }
}

/// A process the test started as the throwaway user; killed on Drop.
struct UserProcess {
    child: Child,
}

impl UserProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The signal that ended it, waiting up to DEADLINE.
    fn ended_by(&mut self) -> Option<i32> {
        let mut status = None;
        wait_until(DEADLINE, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.and_then(|s| s.signal())
    }
}

impl Drop for UserProcess {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::ZERO);
    }
}

/// The real uid of a process, from /proc/PID/status.
fn owner_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_pid_file_a_local_user_owns_cannot_aim_the_signal_at_a_root_process() {
    let site = Site::new();
    let root_daemon = HupDaemon::start(site.dir.path());
    site.user_writes_pid(root_daemon.pid() as u32);
    site.reload(&format!("pid_file = {:?}", site.pid_file()));

    let run = site.onetime();

    run.assert_code(1).assert_stderr_contains(&format!(
        "pid file {} is owned by {} (uid {}) but names pid {}, which runs as root (uid 0): refusing to signal it",
        site.pid_file().display(),
        site.user.name,
        site.user.uid,
        root_daemon.pid()
    ));
    assert!(
        root_daemon.is_alive(),
        "the root process was signalled\n{run}"
    );
    assert_eq!(site.dir.read("out/app.conf"), "new\n", "the commit stands");
}

#[test]
fn a_pid_file_a_local_user_owns_may_name_that_users_own_process() {
    let site = Site::new();
    let mut daemon = site.spawn_as_user(Path::new("/bin/sleep"), &["1000"]);
    site.user_writes_pid(daemon.pid());
    site.reload(&format!("pid_file = {:?}", site.pid_file()));

    let run = site.onetime();

    run.assert_success();
    assert_eq!(daemon.ended_by(), Some(libc::SIGTERM), "{run}");
}

/// A link the user plants in place of the pid file, to a pid file root
/// wrote, is not followed: the owner check would otherwise see root's file.
#[test]
fn a_pid_file_link_a_local_user_plants_is_not_followed() {
    let site = Site::new();
    let root_daemon = HupDaemon::start(site.dir.path());
    site.user.sh(&format!(
        "ln -s '{}' '{}'",
        root_daemon.pid_file.display(),
        site.pid_file().display()
    ));
    site.reload(&format!("pid_file = {:?}", site.pid_file()));

    let run = site.onetime();

    run.assert_code(1).assert_stderr_contains(&format!(
        "pid file {} is a symbolic link to {} that is owned by {} (uid {}): refusing to follow it",
        site.pid_file().display(),
        root_daemon.pid_file.display(),
        site.user.name,
        site.user.uid
    ));
    assert!(root_daemon.is_alive(), "{run}");
}

#[test]
fn a_process_name_run_by_the_owner_of_the_resources_file_is_signalled() {
    let site = Site::new();
    let name = format!("cfo{}", std::process::id());
    let program = site.dir.path().join(&name);
    std::os::unix::fs::symlink("/bin/sleep", &program).unwrap();
    let mut daemon = site.spawn_as_user(&program, &["1000"]);
    // The daemon's own file is the user's, as /etc/bird is bird's.
    site.reload(&format!(
        "process_name = {name:?}\nowner = {:?}",
        site.user.name
    ));

    let run = site.onetime();

    run.assert_code(0);
    assert_eq!(daemon.ended_by(), Some(libc::SIGTERM), "{run}");
}

#[test]
fn a_process_name_matching_only_another_users_process_is_a_reported_failure() {
    let site = Site::new();
    let name = format!("cfn{}", std::process::id());
    let program = site.dir.path().join(&name);
    std::os::unix::fs::symlink("/bin/sleep", &program).unwrap();
    let mut impostor = site.spawn_as_user(&program, &["1000"]);
    site.reload(&format!("process_name = {name:?}"));

    let run = site.onetime();

    run.assert_code(1).assert_stderr_contains(&format!(
        "the only process named `{name}` is pid {} of {} (uid {}), not of root",
        impostor.pid(),
        site.user.name,
        site.user.uid
    ));
    assert!(impostor.is_alive(), "{run}");
}
