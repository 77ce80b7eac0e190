//! A throwaway unprivileged user, for tests that need a local actor other
//! than root: created with a unique name, removed (with its group) on Drop.
//! Commands run as the user through `runuser`, so what they create is the
//! user's, exactly as if the user had typed them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::cmd::wait_until;

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct TempUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TempUser {
    /// Creates `cft<pid>x<n>`: a system user with its own group, no home and
    /// no login shell.
    pub fn create() -> TempUser {
        let name = format!(
            "cft{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        // useradd takes a lock on /etc/passwd; parallel tests may meet it.
        let mut last = None;
        let made = wait_until(Duration::from_secs(20), || {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    &name,
                ])
                .output()
                .expect("run useradd");
            let ok = out.status.success();
            last = Some(out);
            ok
        });
        assert!(made, "useradd {name} failed: {last:?}");
        let user = nix::unistd::User::from_name(&name)
            .expect("look up the new user")
            .expect("the new user exists");
        TempUser {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }

    /// Runs `sh -c SCRIPT` as the user; panics, showing the output, when it
    /// fails.
    #[track_caller]
    pub fn sh(&self, script: &str) -> Output {
        let out = Command::new("runuser")
            .args(["-u", &self.name, "--", "sh", "-c", script])
            .output()
            .expect("run runuser");
        assert!(
            out.status.success(),
            "as {}: `{script}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Gives PATH (a directory) to the user, mode 0755, as Debian gives
    /// /etc/bird to bird.
    pub fn own_dir(&self, path: &Path) {
        std::fs::create_dir_all(path).unwrap();
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        let removed = wait_until(Duration::from_secs(20), || {
            Command::new("userdel")
                .arg(&name)
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !removed {
            eprintln!("could not remove the throwaway user {name}");
        }
    }
}

/// Lets every user traverse (not list) DIR, so a throwaway user can reach
/// a directory it owns inside a private temp dir.
pub fn open_for_traversal(dir: &Path) {
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
}
