//! Finding a daemon (by pid file or by process name) and sending it a signal.
//!
//! This module never signals a process group, never signals pid 0 or -1, and
//! never panics on a stale pid file: every failure is a [`ProcessError`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The kernel keeps only this many bytes of a process name in /proc/PID/comm.
const COMM_LEN: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "unknown signal `{name}`: use a name such as SIGHUP, HUP or SIGUSR1, or a number such as 1"
    )]
    UnknownSignal { name: String },

    #[error("pid file {} does not exist: is the daemon running, and does pid_file name the file it writes?", path.display())]
    PidFileMissing { path: PathBuf },

    #[error("could not read pid file {}", path.display())]
    PidFileRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("pid file {} is empty: is the daemon still starting?", path.display())]
    PidFileEmpty { path: PathBuf },

    #[error("pid file {} does not hold a pid: its first line is `{content}`", path.display())]
    PidFileGarbage { path: PathBuf, content: String },

    #[error("pid file {} names pid {pid}, which cannot be a daemon's: refusing to signal it", path.display())]
    PidFileBadPid { path: PathBuf, pid: i64 },

    #[error("pid file {} names pid {pid}, which is not running: start the daemon, or remove the stale pid file", path.display())]
    PidFileStale { path: PathBuf, pid: Pid },

    #[error("pid file {} names pid {pid}, which is `{found}`, not `{expected}`: the pid file is stale and the pid was reused", path.display())]
    PidFileMismatch {
        path: PathBuf,
        pid: Pid,
        expected: String,
        found: String,
    },

    #[error("refusing to signal pid {pid}: it does not name a single process")]
    InvalidPid { pid: Pid },

    #[error("pid {pid} names no running process")]
    NoSuchProcess { pid: Pid },

    #[error(
        "not permitted to send {signal} to pid {pid}: run confera as root or as the daemon's user"
    )]
    NotPermitted { pid: Pid, signal: Signal },

    #[error("could not send {signal} to pid {pid}")]
    Signal {
        pid: Pid,
        signal: Signal,
        #[source]
        source: Errno,
    },

    #[error("no process named `{name}` is running: start the daemon, or check process_name against /proc/PID/comm")]
    NoProcessNamed { name: String },

    #[error("no process to signal: set pid_file or process_name")]
    NoTarget,
}

/// Parses "SIGHUP", "HUP", "hup", "1", "SIGUSR1", ... into a signal.
pub fn parse_signal(name: &str) -> Result<Signal, ProcessError> {
    let unknown = || ProcessError::UnknownSignal {
        name: name.to_owned(),
    };
    let trimmed = name.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let number: i32 = trimmed.parse().map_err(|_| unknown())?;
        return Signal::try_from(number).map_err(|_| unknown());
    }
    let upper = trimmed.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().map_err(|_| unknown())
}

/// Reads the pid on the first line of a pid file. A missing or empty file,
/// anything but a number, and pids 0 and 1 are errors naming the path.
pub fn read_pid_file(path: &Path) -> Result<Pid, ProcessError> {
    let contents = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ProcessError::PidFileMissing {
            path: path.to_owned(),
        },
        _ => ProcessError::PidFileRead {
            path: path.to_owned(),
            source,
        },
    })?;
    let contents = String::from_utf8_lossy(&contents);
    let first = contents.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(ProcessError::PidFileEmpty {
            path: path.to_owned(),
        });
    }
    let garbage = || ProcessError::PidFileGarbage {
        path: path.to_owned(),
        content: first.chars().take(40).collect(),
    };
    let digits = first.strip_prefix('-').unwrap_or(first);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(garbage());
    }
    let pid: i64 = first.parse().map_err(|_| garbage())?;
    if pid <= 1 || pid > i64::from(i32::MAX) {
        return Err(ProcessError::PidFileBadPid {
            path: path.to_owned(),
            pid,
        });
    }
    Ok(Pid::from_raw(pid as i32))
}

/// The pids of running processes whose name (/proc/PID/comm) is exactly
/// `name`, in ascending order, excluding this process. Zombies are skipped.
///
/// The kernel truncates names to 15 bytes; a longer `name` matches a process
/// whose truncated name agrees and whose argv[0] or executable is `name`.
pub fn find_by_name(name: &str) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut pids: Vec<Pid> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own && pid <= i32::MAX as u32)
        .filter(|&pid| process_is_named(pid, name))
        .map(|pid| Pid::from_raw(pid as i32))
        .collect();
    pids.sort();
    pids
}

fn process_is_named(pid: u32, name: &str) -> bool {
    let Some(comm) = read_comm(pid) else {
        return false;
    };
    let named = if name.len() <= COMM_LEN {
        comm == name
    } else {
        comm.as_bytes() == &name.as_bytes()[..COMM_LEN] && long_name_matches(pid, name)
    };
    named && !is_zombie(pid)
}

fn read_comm(pid: u32) -> Option<String> {
    let comm = fs::read(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    Some(String::from_utf8_lossy(comm).into_owned())
}

/// For a name longer than comm holds: compare argv[0], then the executable.
fn long_name_matches(pid: u32, name: &str) -> bool {
    let basename_is = |path: &Path| path.file_name().is_some_and(|base| base == name);
    let argv0 = fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| {
            let first = cmdline.split(|&b| b == 0).next()?;
            Some(PathBuf::from(String::from_utf8_lossy(first).into_owned()))
        });
    if argv0.as_deref().is_some_and(basename_is) {
        return true;
    }
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| basename_is(&exe))
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true; // gone since the scan
    };
    // The state follows the parenthesised name, which may itself hold ") ".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some('Z' | 'X'))
}

/// Sends `signal` to the single process `pid` (never a process group).
pub fn send_signal(pid: Pid, signal: Signal) -> Result<(), ProcessError> {
    if pid.as_raw() <= 0 {
        return Err(ProcessError::InvalidPid { pid });
    }
    kill(pid, signal).map_err(|errno| match errno {
        Errno::ESRCH => ProcessError::NoSuchProcess { pid },
        Errno::EPERM => ProcessError::NotPermitted { pid, signal },
        source => ProcessError::Signal {
            pid,
            signal,
            source,
        },
    })
}

/// Resolves the daemon (the pid in `pid_file`, else every process named
/// `process_name`) and sends it `signal`; returns the pids signalled.
///
/// With both set, the pid file decides and the name guards against a stale
/// pid file whose pid now belongs to another program.
pub fn signal_daemon(
    pid_file: Option<&Path>,
    process_name: Option<&str>,
    signal: Signal,
) -> Result<Vec<Pid>, ProcessError> {
    if let Some(path) = pid_file {
        let pid = read_pid_file(path)?;
        let stale = || ProcessError::PidFileStale {
            path: path.to_owned(),
            pid,
        };
        if let Some(expected) = process_name {
            let raw = pid.as_raw() as u32;
            match read_comm(raw) {
                None => return Err(stale()),
                Some(_) if process_is_named(raw, expected) => {}
                Some(_) if is_zombie(raw) => return Err(stale()),
                Some(found) => {
                    return Err(ProcessError::PidFileMismatch {
                        path: path.to_owned(),
                        pid,
                        expected: expected.to_owned(),
                        found,
                    })
                }
            }
        }
        return match send_signal(pid, signal) {
            Err(ProcessError::NoSuchProcess { .. }) => Err(stale()),
            other => other.map(|()| vec![pid]),
        };
    }

    let Some(name) = process_name else {
        return Err(ProcessError::NoTarget);
    };
    let mut signalled = Vec::new();
    for pid in find_by_name(name) {
        match send_signal(pid, signal) {
            Ok(()) => signalled.push(pid),
            // It exited between the scan and the signal.
            Err(ProcessError::NoSuchProcess { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if signalled.is_empty() {
        return Err(ProcessError::NoProcessNamed {
            name: name.to_owned(),
        });
    }
    Ok(signalled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;
    use tokio::process::{Child, Command};

    #[test]
    fn parse_signal_accepts_full_short_lowercase_and_numeric_names() {
        for (name, expected) in [
            ("SIGHUP", Signal::SIGHUP),
            ("HUP", Signal::SIGHUP),
            ("hup", Signal::SIGHUP),
            ("sighup", Signal::SIGHUP),
            (" HUP\n", Signal::SIGHUP),
            ("1", Signal::SIGHUP),
            ("SIGUSR1", Signal::SIGUSR1),
            ("usr2", Signal::SIGUSR2),
            ("15", Signal::SIGTERM),
        ] {
            assert_eq!(parse_signal(name).unwrap(), expected, "{name:?}");
        }
    }

    #[test]
    fn parse_signal_rejects_unknown_names_and_numbers_naming_the_value() {
        for name in ["SIGFOO", "FOO", "", "0", "999", "-1", "99999999999", "SIG"] {
            let err = parse_signal(name).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("unknown signal `{name}`")),
                "{err}"
            );
        }
    }

    fn pid_file_with(contents: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.pid");
        fs::write(&path, contents).unwrap();
        (dir, path)
    }

    #[test]
    fn read_pid_file_reads_the_first_line() {
        for contents in ["1234\n", "1234", "  1234  \n", "1234\nextra\n"] {
            let (_dir, path) = pid_file_with(contents);
            assert_eq!(read_pid_file(&path).unwrap(), Pid::from_raw(1234));
        }
    }

    #[test]
    fn read_pid_file_reports_a_missing_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.pid");
        let err = read_pid_file(&path).unwrap_err();
        assert!(
            matches!(err, ProcessError::PidFileMissing { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("pid file {} does not exist", path.display())),
            "{err}"
        );
    }

    #[test]
    fn read_pid_file_reports_an_empty_file() {
        for contents in ["", "\n", "  \n"] {
            let (_dir, path) = pid_file_with(contents);
            let err = read_pid_file(&path).unwrap_err();
            assert!(matches!(err, ProcessError::PidFileEmpty { .. }), "{err:?}");
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn read_pid_file_reports_garbage_naming_the_file_and_content() {
        for contents in ["bird\n", "12ab", "+12", "-", "1.5", "\u{0}\u{1}"] {
            let (_dir, path) = pid_file_with(contents);
            let err = read_pid_file(&path).unwrap_err();
            assert!(
                matches!(err, ProcessError::PidFileGarbage { .. }),
                "{contents:?}: {err:?}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn read_pid_file_refuses_pids_that_cannot_be_a_daemon() {
        for contents in ["0", "1", "-5", "99999999999"] {
            let (_dir, path) = pid_file_with(contents);
            let err = read_pid_file(&path).unwrap_err();
            assert!(
                matches!(err, ProcessError::PidFileBadPid { .. }),
                "{contents:?}: {err:?}"
            );
        }
    }

    #[test]
    fn send_signal_refuses_process_groups() {
        for raw in [0, -1, -1234] {
            let err = send_signal(Pid::from_raw(raw), Signal::SIGHUP).unwrap_err();
            assert!(matches!(err, ProcessError::InvalidPid { .. }), "{err:?}");
        }
    }

    /// Spawns `program 1000` and waits until its exec is visible in /proc:
    /// spawn may return before the kernel renames the child.
    fn spawn(program: &Path) -> (Child, Pid) {
        let child = Command::new(program)
            .arg("1000")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let expected: String = program
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .take(COMM_LEN)
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while read_comm(pid).as_deref() != Some(expected.as_str()) {
            assert!(std::time::Instant::now() < deadline, "{expected} never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        (child, Pid::from_raw(pid as i32))
    }

    async fn exit_signal(child: &mut Child) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(1), child.wait())
            .await
            .expect("the child exits")
            .unwrap();
        status.signal()
    }

    /// A pid that just exited and was reaped.
    async fn dead_pid() -> Pid {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id().unwrap() as i32);
        child.wait().await.unwrap();
        pid
    }

    /// A symlink to sleep whose name (and so comm) no other process has.
    fn unique_sleep(dir: &Path, name: &str) -> PathBuf {
        let link = dir.join(name);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        link
    }

    #[tokio::test]
    async fn signal_daemon_signals_the_pid_in_the_pid_file() {
        let (mut child, pid) = spawn(Path::new("sleep"));
        let (_dir, path) = pid_file_with(&format!("{pid}\n"));

        let signalled = signal_daemon(Some(&path), None, Signal::SIGTERM).unwrap();

        assert_eq!(signalled, vec![pid]);
        assert_eq!(exit_signal(&mut child).await, Some(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn signal_daemon_reports_a_pid_file_naming_a_dead_process() {
        let pid = dead_pid().await;
        let (_dir, path) = pid_file_with(&format!("{pid}\n"));

        let err = signal_daemon(Some(&path), None, Signal::SIGHUP).unwrap_err();

        assert!(matches!(err, ProcessError::PidFileStale { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&format!(
                "pid file {} names pid {pid}, which is not running",
                path.display()
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn send_signal_to_a_dead_pid_names_it() {
        let pid = dead_pid().await;
        let err = send_signal(pid, Signal::SIGHUP).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("pid {pid} names no running process")
        );
    }

    #[tokio::test]
    async fn signal_daemon_signals_every_process_with_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("cfs-{}", std::process::id());
        let program = unique_sleep(dir.path(), &name);
        let (mut first, first_pid) = spawn(&program);
        let (mut second, second_pid) = spawn(&program);

        assert_eq!(find_by_name(&name), {
            let mut both = vec![first_pid, second_pid];
            both.sort();
            both
        });
        let mut signalled = signal_daemon(None, Some(&name), Signal::SIGTERM).unwrap();
        signalled.sort();

        assert_eq!(signalled.len(), 2);
        assert_eq!(exit_signal(&mut first).await, Some(Signal::SIGTERM as i32));
        assert_eq!(exit_signal(&mut second).await, Some(Signal::SIGTERM as i32));
    }

    #[test]
    fn signal_daemon_reports_no_process_with_the_name() {
        let err = signal_daemon(None, Some("confera-nope"), Signal::SIGHUP).unwrap_err();
        assert_eq!(
            err.to_string().split(':').next().unwrap(),
            "no process named `confera-nope` is running"
        );
    }

    #[test]
    fn signal_daemon_without_a_target_is_an_error() {
        let err = signal_daemon(None, None, Signal::SIGHUP).unwrap_err();
        assert!(matches!(err, ProcessError::NoTarget), "{err:?}");
    }

    #[tokio::test]
    async fn find_by_name_matches_names_longer_than_the_kernel_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("confera-long-sleeper-{}", std::process::id());
        let (_child, pid) = spawn(&unique_sleep(dir.path(), &name));

        assert_eq!(find_by_name(&name), vec![pid]);
        assert!(find_by_name(&format!("{name}x")).is_empty());
    }

    #[test]
    fn find_by_name_excludes_this_process() {
        let own = read_comm(std::process::id()).unwrap();
        assert!(!find_by_name(&own).contains(&Pid::this()));
    }

    #[tokio::test]
    async fn signal_daemon_refuses_a_pid_file_whose_pid_now_runs_another_program() {
        let (mut child, pid) = spawn(Path::new("sleep"));
        let (_dir, path) = pid_file_with(&format!("{pid}\n"));

        let err = signal_daemon(Some(&path), Some("bird"), Signal::SIGTERM).unwrap_err();

        assert!(
            err.to_string().starts_with(&format!(
                "pid file {} names pid {pid}, which is `sleep`, not `bird`",
                path.display()
            )),
            "{err}"
        );
        assert_eq!(child.try_wait().unwrap(), None, "sleep was not signalled");
    }
}
