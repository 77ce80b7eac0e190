//! Finding a daemon (by pid file or by process name) and sending it a signal.
//!
//! A pid file cannot aim root's signal at someone else's process: the pid
//! file is read without following a link an unprivileged user could plant,
//! and the process it names must be one its owner could signal themselves
//! (unless root or confera's user owns the file). A process name must match
//! exactly one process, of root, confera's user or the daemon's user.
//! Processes are looked up with `procfs` and signalled through a pidfd, so
//! a pid reused between the check and the signal is never hit.
//!
//! This module never signals a process group, never signals pid 0 or -1, and
//! never panics on a stale pid file: every failure is a [`ProcessError`].

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use procfs::process::Process;

use crate::pipeline::pinned::{self, PathError, Target};

/// The kernel keeps only this many bytes of a process name in /proc/PID/comm.
const COMM_LEN: usize = 15;

/// A pid file larger than this is not a pid file.
const PID_FILE_LIMIT: u64 = 4096;

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

    #[error("pid file {0}")]
    PidFileUnsafe(PathError),

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

    #[error("pid file {} is owned by {owner} but names pid {pid}, which runs as {runs_as}: refusing to signal it (a pid file may only name its owner's processes unless root owns it)", path.display())]
    PidFileForeign {
        path: PathBuf,
        pid: Pid,
        owner: String,
        runs_as: String,
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

    #[error("process_name `{name}` matches {} processes ({}): refusing to guess which is the daemon; set pid_file", found.len(), describe(found))]
    SeveralNamed { name: String, found: Vec<Found> },

    #[error("the only process named `{name}` is pid {} of {}, not of root, confera's user or the daemon's ({}): refusing to signal it", found.pid, pinned::user_name(found.uid), expected_users(expected))]
    UnexpectedUser {
        name: String,
        found: Found,
        expected: Vec<u32>,
    },

    #[error("no process to signal: set pid_file or process_name")]
    NoTarget,
}

/// A process found by name, and the user it runs as (its effective uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub pid: Pid,
    pub uid: u32,
}

fn describe(found: &[Found]) -> String {
    let all: Vec<String> = found
        .iter()
        .map(|f| format!("pid {} of {}", f.pid, pinned::user_name(f.uid)))
        .collect();
    all.join(", ")
}

fn expected_users(uids: &[u32]) -> String {
    let all: Vec<String> = uids.iter().map(|&u| pinned::user_name(u)).collect();
    all.join(", ")
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

/// A pid read from a pid file, and the uid owning that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidFile {
    pub pid: Pid,
    pub owner: u32,
}

/// Reads the pid on the first line of a pid file, and the file's owner. The
/// file is reached like a destination with `follow_symlink` (only links
/// root or confera's user made in directories nobody else can write) and
/// must be a regular file. A missing or empty file, anything but a number,
/// and pids 0 and 1 are errors naming the path.
pub fn read_pid_file(path: &Path) -> Result<PidFile, ProcessError> {
    let missing = || ProcessError::PidFileMissing {
        path: path.to_owned(),
    };
    let target = match Target::resolve(path, true) {
        Ok(target) => target,
        Err(e) if e.is_not_found() => return Err(missing()),
        Err(e) => return Err(ProcessError::PidFileUnsafe(e)),
    };
    let (file, st) = match target.open_regular(OFlag::O_RDONLY, Mode::empty()) {
        Ok(opened) => opened,
        Err(e) if e.is_not_found() => return Err(missing()),
        Err(e) => return Err(ProcessError::PidFileUnsafe(e)),
    };
    let mut contents = Vec::new();
    file.take(PID_FILE_LIMIT)
        .read_to_end(&mut contents)
        .map_err(|source| ProcessError::PidFileRead {
            path: path.to_owned(),
            source,
        })?;
    let pid = parse_pid(path, &contents)?;
    Ok(PidFile {
        pid,
        owner: st.st_uid,
    })
}

fn parse_pid(path: &Path, contents: &[u8]) -> Result<Pid, ProcessError> {
    let contents = String::from_utf8_lossy(contents);
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

/// What /proc says about a live (not zombie) process.
struct Info {
    comm: String,
    ruid: u32,
    euid: u32,
    suid: u32,
    process: Process,
}

/// Looks a process up; `None` when it is gone or a zombie.
fn info(pid: i32) -> Option<Info> {
    let process = Process::new(pid).ok()?;
    let stat = process.stat().ok()?;
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return None;
    }
    let status = process.status().ok()?;
    Some(Info {
        comm: stat.comm,
        ruid: status.ruid,
        euid: status.euid,
        suid: status.suid,
        process,
    })
}

impl Info {
    /// Whether the process is named `name`: its comm, or for a name longer
    /// than comm holds, a truncated comm plus argv[0] or the executable.
    fn is_named(&self, name: &str) -> bool {
        if name.len() <= COMM_LEN {
            return self.comm == name;
        }
        if self.comm.as_bytes() != &name.as_bytes()[..COMM_LEN] {
            return false;
        }
        let basename_is = |path: &Path| path.file_name().is_some_and(|base| base == name);
        let argv0 = self
            .process
            .cmdline()
            .ok()
            .and_then(|c| c.into_iter().next());
        argv0.is_some_and(|a| basename_is(Path::new(&a)))
            || self.process.exe().is_ok_and(|exe| basename_is(&exe))
    }
}

/// The pids of running processes whose name is exactly `name` (see
/// [`Info::is_named`]), in ascending order, excluding this process. Zombies
/// are skipped.
pub fn find_by_name(name: &str) -> Vec<Pid> {
    find(name).into_iter().map(|f| f.pid).collect()
}

fn find(name: &str) -> Vec<Found> {
    let own = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut found: Vec<Found> = all
        .filter_map(Result::ok)
        .map(|p| p.pid())
        .filter(|&pid| pid != own)
        .filter_map(|pid| info(pid).filter(|i| i.is_named(name)).map(|i| (pid, i)))
        .map(|(pid, i)| Found {
            pid: Pid::from_raw(pid),
            uid: i.euid,
        })
        .collect();
    found.sort_by_key(|f| f.pid);
    found
}

/// Sends `signal` to the single process `pid` (never a process group).
pub fn send_signal(pid: Pid, signal: Signal) -> Result<(), ProcessError> {
    send_checked(pid, signal, |_| Ok(()))
}

/// Opens a pidfd on `pid`, runs `check` on what /proc says about it, then
/// signals through the pidfd: if the process died and its pid was reused
/// after the pidfd was opened, the signal fails instead of hitting the
/// newcomer. Kernels without pidfds fall back to kill(2).
fn send_checked(
    pid: Pid,
    signal: Signal,
    check: impl FnOnce(Option<&Info>) -> Result<(), ProcessError>,
) -> Result<(), ProcessError> {
    if pid.as_raw() <= 0 {
        return Err(ProcessError::InvalidPid { pid });
    }
    let errno = |errno: Errno| match errno {
        Errno::ESRCH => ProcessError::NoSuchProcess { pid },
        Errno::EPERM => ProcessError::NotPermitted { pid, signal },
        source => ProcessError::Signal {
            pid,
            signal,
            source,
        },
    };
    let raw =
        rustix::process::Pid::from_raw(pid.as_raw()).ok_or(ProcessError::InvalidPid { pid })?;
    let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(e) if e == rustix::io::Errno::NOSYS => None,
        Err(e) => return Err(errno(Errno::from_raw(e.raw_os_error()))),
    };
    let info = info(pid.as_raw());
    check(info.as_ref())?;
    if info.is_none() {
        return Err(ProcessError::NoSuchProcess { pid });
    }
    match pidfd {
        Some(fd) => {
            let sig = rustix::process::Signal::from_named_raw(signal as i32)
                .ok_or(ProcessError::InvalidPid { pid })?;
            rustix::process::pidfd_send_signal(&fd, sig)
                .map_err(|e| errno(Errno::from_raw(e.raw_os_error())))
        }
        None => kill(pid, signal).map_err(errno),
    }
}

/// Resolves the daemon (the pid in `pid_file`, else the one process named
/// `process_name`) and sends it `signal`; returns the pid signalled.
///
/// With a pid file, the process must be one the file's owner could signal
/// (its real or saved uid is the owner's), unless root or confera's user
/// owns the file; with `process_name` too, the name guards against a stale
/// pid file whose pid now belongs to another program. By name alone, the
/// name must match exactly one process, and it must run as root, as
/// confera's user or as one of `daemon_users` (the owners of the daemon's files).
pub fn signal_daemon(
    pid_file: Option<&Path>,
    process_name: Option<&str>,
    signal: Signal,
    daemon_users: &[u32],
) -> Result<Vec<Pid>, ProcessError> {
    if let Some(path) = pid_file {
        let PidFile { pid, owner } = read_pid_file(path)?;
        let stale = || ProcessError::PidFileStale {
            path: path.to_owned(),
            pid,
        };
        let checked = send_checked(pid, signal, |info| {
            let Some(info) = info else {
                return Err(stale());
            };
            if !pinned::is_trusted_owner(owner) && info.ruid != owner && info.suid != owner {
                return Err(ProcessError::PidFileForeign {
                    path: path.to_owned(),
                    pid,
                    owner: pinned::user_name(owner),
                    runs_as: pinned::user_name(info.euid),
                });
            }
            match process_name {
                Some(expected) if !info.is_named(expected) => Err(ProcessError::PidFileMismatch {
                    path: path.to_owned(),
                    pid,
                    expected: expected.to_owned(),
                    found: info.comm.clone(),
                }),
                _ => Ok(()),
            }
        });
        return match checked {
            Err(ProcessError::NoSuchProcess { .. }) => Err(stale()),
            other => other.map(|()| vec![pid]),
        };
    }

    let Some(name) = process_name else {
        return Err(ProcessError::NoTarget);
    };
    let found = find(name);
    let one = match found.as_slice() {
        [] => {
            return Err(ProcessError::NoProcessNamed {
                name: name.to_owned(),
            })
        }
        [one] => *one,
        _ => {
            return Err(ProcessError::SeveralNamed {
                name: name.to_owned(),
                found,
            })
        }
    };
    let mut expected = vec![0];
    for uid in std::iter::once(nix::unistd::geteuid().as_raw()).chain(daemon_users.iter().copied())
    {
        if !expected.contains(&uid) {
            expected.push(uid);
        }
    }
    let unexpected = || ProcessError::UnexpectedUser {
        name: name.to_owned(),
        found: one,
        expected: expected.clone(),
    };
    if !expected.contains(&one.uid) {
        return Err(unexpected());
    }
    let checked = send_checked(one.pid, signal, |info| match info {
        // The pid was reused since the scan: not the process we judged.
        Some(info) if !info.is_named(name) || info.euid != one.uid => {
            Err(ProcessError::NoSuchProcess { pid: one.pid })
        }
        _ => Ok(()),
    });
    match checked {
        Err(ProcessError::NoSuchProcess { .. }) => Err(ProcessError::NoProcessNamed {
            name: name.to_owned(),
        }),
        other => other.map(|()| vec![one.pid]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;
    use tokio::process::{Child, Command};

    fn read_comm(pid: u32) -> Option<String> {
        Some(Process::new(pid as i32).ok()?.stat().ok()?.comm)
    }

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
            assert_eq!(read_pid_file(&path).unwrap().pid, Pid::from_raw(1234));
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

        let signalled = signal_daemon(Some(&path), None, Signal::SIGTERM, &[]).unwrap();

        assert_eq!(signalled, vec![pid]);
        assert_eq!(exit_signal(&mut child).await, Some(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn signal_daemon_reports_a_pid_file_naming_a_dead_process() {
        let pid = dead_pid().await;
        let (_dir, path) = pid_file_with(&format!("{pid}\n"));

        let err = signal_daemon(Some(&path), None, Signal::SIGHUP, &[]).unwrap_err();

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
    async fn a_name_matching_several_processes_is_a_failure_and_none_is_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("cfs-{}", std::process::id());
        let program = unique_sleep(dir.path(), &name);
        let (mut first, first_pid) = spawn(&program);
        let (mut second, second_pid) = spawn(&program);

        let mut both = vec![first_pid, second_pid];
        both.sort();
        assert_eq!(find_by_name(&name), both);
        let err = signal_daemon(None, Some(&name), Signal::SIGTERM, &[]).unwrap_err();

        let me = pinned::user_name(nix::unistd::geteuid().as_raw());
        assert!(
            err.to_string().starts_with(&format!(
                "process_name `{name}` matches 2 processes (pid {} of {me}, pid {} of {me}): refusing to guess",
                both[0], both[1]
            )),
            "{err}"
        );
        assert_eq!(first.try_wait().unwrap(), None, "not signalled");
        assert_eq!(second.try_wait().unwrap(), None, "not signalled");
    }

    #[tokio::test]
    async fn a_name_matching_one_process_of_root_signals_it() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("cfo-{}", std::process::id());
        let (mut child, pid) = spawn(&unique_sleep(dir.path(), &name));

        let signalled = signal_daemon(None, Some(&name), Signal::SIGTERM, &[]).unwrap();

        assert_eq!(signalled, vec![pid]);
        assert_eq!(exit_signal(&mut child).await, Some(Signal::SIGTERM as i32));
    }

    #[test]
    fn signal_daemon_reports_no_process_with_the_name() {
        let err = signal_daemon(None, Some("confera-nope"), Signal::SIGHUP, &[]).unwrap_err();
        assert_eq!(
            err.to_string().split(':').next().unwrap(),
            "no process named `confera-nope` is running"
        );
    }

    #[test]
    fn signal_daemon_without_a_target_is_an_error() {
        let err = signal_daemon(None, None, Signal::SIGHUP, &[]).unwrap_err();
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

        let err = signal_daemon(Some(&path), Some("bird"), Signal::SIGTERM, &[]).unwrap_err();

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
