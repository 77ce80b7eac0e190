//! systemd readiness, status and watchdog notifications (`sd_notify(3)`).
//!
//! Speaks the datagram protocol on `NOTIFY_SOCKET` directly. It never fails
//! the run: without `NOTIFY_SOCKET` every call is a no-op, and a send error
//! is logged once.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// An abstract socket, given as `@name` in `NOTIFY_SOCKET`.
    Abstract(Vec<u8>),
}

/// systemd readiness and watchdog, a no-op when `NOTIFY_SOCKET` is unset.
#[derive(Debug)]
pub struct Systemd {
    target: Option<Target>,
    /// `WATCHDOG_USEC`, when the watchdog is meant for this process.
    watchdog: Option<Duration>,
    ready_sent: AtomicBool,
    warned: AtomicBool,
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET` (a path or an abstract `@name`) and
    /// `WATCHDOG_USEC`, honoured only when `WATCHDOG_PID` is unset or names
    /// this process.
    pub fn from_env() -> Systemd {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var_os("WATCHDOG_USEC"),
            std::env::var_os("WATCHDOG_PID"),
            std::process::id(),
        )
    }

    /// Notifications go to the socket at `path` (`@name` for an abstract
    /// one); `watchdog` is the full watchdog period, as in `WATCHDOG_USEC`.
    pub(crate) fn with_socket(path: impl Into<OsString>, watchdog: Option<Duration>) -> Systemd {
        Systemd {
            target: parse_socket(path.into()),
            watchdog: watchdog.filter(|period| !period.is_zero()),
            ready_sent: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    fn from_vars(
        socket: Option<OsString>,
        watchdog_usec: Option<OsString>,
        watchdog_pid: Option<OsString>,
        our_pid: u32,
    ) -> Systemd {
        let for_us = watchdog_pid.is_none_or(|pid| {
            pid.to_str().and_then(|pid| pid.trim().parse::<u32>().ok()) == Some(our_pid)
        });
        let watchdog = watchdog_usec
            .filter(|_| for_us)
            .and_then(|usec| {
                usec.to_str()
                    .and_then(|usec| usec.trim().parse::<u64>().ok())
            })
            .map(Duration::from_micros);
        match socket {
            Some(socket) => Self::with_socket(socket, watchdog),
            None => Systemd {
                target: None,
                watchdog: None,
                ready_sent: AtomicBool::new(false),
                warned: AtomicBool::new(false),
            },
        }
    }

    /// Tells systemd start-up is complete (`READY=1`); only the first call sends.
    pub fn ready(&self) {
        if self.target.is_some() && !self.ready_sent.swap(true, Ordering::AcqRel) {
            self.send("READY=1\nSTATUS=ready\n");
        }
    }

    /// Sets the one-line status `systemctl status` shows.
    pub fn status(&self, text: &str) {
        // A newline would start another assignment: keep the status one line.
        let line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}\n"));
    }

    /// Tells systemd shutdown has begun (`STOPPING=1`).
    pub fn stopping(&self) {
        self.send("STOPPING=1\n");
    }

    /// How often to call [`Systemd::watchdog`]: half of `WATCHDOG_USEC`, or
    /// `None` when systemd expects no keep-alive from us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.watchdog.map(|period| period / 2)
    }

    /// Watchdog keep-alive (`WATCHDOG=1`).
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1\n");
        }
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(err) = send_to(target, message.as_bytes()) {
            let socket = match target {
                Target::Path(path) => path.display().to_string(),
                Target::Abstract(name) => format!("@{}", String::from_utf8_lossy(name)),
            };
            if !self.warned.swap(true, Ordering::AcqRel) {
                tracing::warn!(socket, error = %err, "notifying systemd failed");
            } else {
                tracing::debug!(socket, error = %err, "notifying systemd failed");
            }
        }
    }
}

fn parse_socket(socket: OsString) -> Option<Target> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        None => None,
        Some(b'@') => Some(Target::Abstract(bytes[1..].to_vec())),
        Some(b'/') => Some(Target::Path(PathBuf::from(socket))),
        Some(_) => {
            // e.g. systemd's "vsock:" form, meant for virtual machines.
            tracing::warn!(
                socket = %socket.to_string_lossy(),
                "NOTIFY_SOCKET is neither a path nor an abstract @name; systemd notifications disabled"
            );
            None
        }
    }
}

fn send_to(target: &Target, message: &[u8]) -> std::io::Result<()> {
    let addr = match target {
        Target::Path(path) => SocketAddr::from_pathname(path)?,
        Target::Abstract(name) => SocketAddr::from_abstract_name(name)?,
    };
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message, &addr)?;
    if sent != message.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete notification datagram",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeSystemd {
        _dir: tempfile::TempDir,
        path: PathBuf,
        socket: UnixDatagram,
    }

    impl FakeSystemd {
        fn new() -> FakeSystemd {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            FakeSystemd {
                _dir: dir,
                path,
                socket,
            }
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        fn nothing_pending(&self) -> bool {
            self.socket.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 16];
            let pending = self.socket.recv(&mut buf).is_ok();
            self.socket.set_nonblocking(false).unwrap();
            !pending
        }
    }

    #[test]
    fn ready_is_sent_once_with_a_status() {
        let fake = FakeSystemd::new();
        let systemd = Systemd::with_socket(&fake.path, None);
        systemd.ready();
        systemd.ready();
        assert_eq!(fake.recv(), "READY=1\nSTATUS=ready\n");
        assert!(fake.nothing_pending());
    }

    #[test]
    fn status_and_stopping_reach_the_socket() {
        let fake = FakeSystemd::new();
        let systemd = Systemd::with_socket(&fake.path, None);
        systemd.status("rendering 3 resources");
        systemd.status("two\nlines");
        systemd.stopping();
        assert_eq!(fake.recv(), "STATUS=rendering 3 resources\n");
        assert_eq!(fake.recv(), "STATUS=two lines\n");
        assert_eq!(fake.recv(), "STOPPING=1\n");
    }

    #[test]
    fn watchdog_pings_at_half_the_period() {
        let fake = FakeSystemd::new();
        let systemd = Systemd::with_socket(&fake.path, Some(Duration::from_secs(10)));
        assert_eq!(systemd.watchdog_interval(), Some(Duration::from_secs(5)));
        systemd.watchdog();
        assert_eq!(fake.recv(), "WATCHDOG=1\n");
    }

    #[test]
    fn no_watchdog_period_means_no_pings() {
        let fake = FakeSystemd::new();
        let systemd = Systemd::with_socket(&fake.path, None);
        assert_eq!(systemd.watchdog_interval(), None);
        systemd.watchdog();
        assert!(fake.nothing_pending());
    }

    #[test]
    fn abstract_sockets_are_reached_by_at_name() {
        let name = format!("confera-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Systemd::with_socket(format!("@{name}"), None).stopping();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn unset_socket_is_a_no_op() {
        let systemd = Systemd::from_vars(None, Some("10000000".into()), None, 1);
        assert_eq!(systemd.watchdog_interval(), None);
        systemd.ready();
        systemd.status("anything");
        systemd.watchdog();
        systemd.stopping();
    }

    #[test]
    fn a_vanished_socket_is_logged_not_fatal() {
        let fake = FakeSystemd::new();
        let systemd = Systemd::with_socket(&fake.path, Some(Duration::from_secs(1)));
        drop(fake);
        systemd.ready();
        systemd.watchdog();
        assert!(systemd.warned.load(Ordering::Acquire));
    }

    #[test]
    fn watchdog_usec_counts_only_for_our_pid() {
        let socket = || Some(OsString::from("/run/systemd/notify"));
        let usec = || Some(OsString::from("4000000"));
        let ours = Systemd::from_vars(socket(), usec(), None, 7);
        assert_eq!(ours.watchdog_interval(), Some(Duration::from_secs(2)));
        let ours = Systemd::from_vars(socket(), usec(), Some("7".into()), 7);
        assert_eq!(ours.watchdog_interval(), Some(Duration::from_secs(2)));
        let theirs = Systemd::from_vars(socket(), usec(), Some("8".into()), 7);
        assert_eq!(theirs.watchdog_interval(), None);
        let garbage = Systemd::from_vars(socket(), Some("soon".into()), None, 7);
        assert_eq!(garbage.watchdog_interval(), None);
    }

    #[test]
    fn notify_socket_forms_are_recognised() {
        assert_eq!(
            parse_socket("/run/systemd/notify".into()),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_socket("@/org/freedesktop/systemd1/notify".into()),
            Some(Target::Abstract(
                b"/org/freedesktop/systemd1/notify".to_vec()
            ))
        );
        assert_eq!(parse_socket("".into()), None);
        assert_eq!(parse_socket("vsock:2:1234".into()), None);
    }
}
