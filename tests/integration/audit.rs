//! `confera check` finds on this host what would make a render fail, and
//! warns about destination directories other users can write; loading (and
//! so `check`) refuses two resources writing one file, however spelled.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::support::cmd::{run, Run};
use crate::support::confdir::ConfDir;
use crate::support::user::{open_for_traversal, TempUser};

/// A confdir with unit `app` writing DEST, with EXTRA in its `[template]`.
fn app(dest: &Path, extra: &str) -> ConfDir {
    let dir = ConfDir::new();
    dir.template("app.tera", "x\n");
    app_unit(&dir, "app", dest, extra);
    dir
}

/// A confdir with unit `app` writing RELPATH under it (its directory
/// created), with EXTRA in its `[template]`; returns the destination too.
fn app_writing(relpath: &str, extra: &str) -> (ConfDir, PathBuf) {
    let dir = ConfDir::new();
    let dest = dir.dest(relpath);
    dir.template("app.tera", "x\n");
    app_unit(&dir, "app", &dest, extra);
    (dir, dest)
}

fn app_unit(dir: &ConfDir, name: &str, dest: &Path, extra: &str) {
    dir.resource(
        name,
        &format!(
            "[template]\nsrc = \"app.tera\"\ndest = {:?}\n{extra}\n",
            dest.display().to_string()
        ),
    );
}

fn check(dir: &ConfDir) -> Run {
    run(&["check", "--confdir", dir.arg()])
}

// --- what would fail at render time -------------------------------------------

#[test]
fn check_reports_a_missing_destination_directory_and_exits_1() {
    let dir = ConfDir::new();
    let dest = dir.path().join("out/app.conf");
    dir.template("app.tera", "x\n");
    app_unit(&dir, "app", &dest, "");

    let out = check(&dir);

    out.assert_code(1).assert_stderr_contains(&format!(
        "error: resource app: dest {}: directory {} does not exist",
        dest.display(),
        dir.path().join("out").display()
    ));
    assert!(!dir.exists("out"), "check created something: {out}");
}

#[test]
fn check_reports_destinations_on_pseudo_filesystems() {
    let dir = app(Path::new("/proc/confera-test.conf"), "");
    app_unit(&dir, "sys", Path::new("/sys/confera-test.conf"), "");

    let out = check(&dir);

    out.assert_code(1)
        .assert_stderr_contains(
            "error: resource app: dest /proc/confera-test.conf: directory /proc is on the proc pseudo filesystem",
        )
        .assert_stderr_contains(
            "error: resource sys: dest /sys/confera-test.conf: directory /sys is on the sysfs pseudo filesystem",
        );
}

#[test]
fn check_reports_a_destination_on_a_read_only_filesystem() {
    let Some(ro) = ReadOnlyMount::new() else {
        return;
    };
    let dest = ro.path().join("app.conf");
    let dir = app(&dest, "");

    let out = check(&dir);

    out.assert_code(1).assert_stderr_contains(&format!(
        "error: resource app: dest {}: directory {} is on a read-only filesystem",
        dest.display(),
        ro.path().display()
    ));
}

/// An immutable directory (`chattr +i`) refuses even root's new entries.
#[test]
fn check_reports_a_destination_directory_confera_cannot_write() {
    let (dir, dest) = app_writing("locked/app.conf", "");
    let locked = dest.parent().unwrap().to_path_buf();
    let _immutable = Immutable::new(&locked);

    let out = check(&dir);

    out.assert_code(1).assert_stderr_contains(&format!(
        "error: resource app: dest {}: directory {} is not writable by confera's user root (uid 0)",
        dest.display(),
        locked.display()
    ));
}

#[test]
fn check_reports_a_check_cmd_or_reload_cmd_whose_program_does_not_exist() {
    let (dir, _) = app_writing(
        "out/app.conf",
        "check_cmd = \"/usr/sbin/no-such-checker -t -c {{src}}\"\nreload_cmd = \"no-such-reloader reload\"",
    );

    let out = check(&dir);

    out.assert_code(1)
        .assert_stderr_contains(
            "error: resource app: check_cmd: program /usr/sbin/no-such-checker does not exist",
        )
        .assert_stderr_contains(
            "error: resource app: reload_cmd: program `no-such-reloader` was not found in PATH (",
        );
}

#[test]
fn check_reports_a_link_at_dest() {
    let (dir, dest) = app_writing("out/app.conf", "");
    std::os::unix::fs::symlink("/etc/hostname", &dest).unwrap();

    check(&dir).assert_code(1).assert_stderr_contains(&format!(
        "error: resource app: dest {} is a symbolic link to /etc/hostname: refusing to write through it",
        dest.display()
    ));
}

#[test]
fn check_of_a_healthy_confdir_prints_no_finding() {
    let (dir, _) = app_writing("out/app.conf", "check_cmd = \"sh -n {{src}}\"");

    let out = check(&dir);

    out.assert_success();
    assert_eq!(out.stderr, "", "{out}");
}

// --- warnings -------------------------------------------------------------------

#[test]
fn check_warns_when_another_user_can_write_a_destination_directory_and_exits_0() {
    let dir = ConfDir::new();
    open_for_traversal(dir.path());
    let user = TempUser::create();
    user.own_dir(&dir.path().join("out"));
    let dest = dir.path().join("out/app.conf");
    dir.template("app.tera", "x\n");
    app_unit(&dir, "app", &dest, "");
    let shared = dir.dest("shared/app.conf");
    fs::set_permissions(
        shared.parent().unwrap(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    app_unit(&dir, "shared", &shared, "");

    let out = check(&dir);

    out.assert_success()
        .assert_stderr_contains(&format!(
            "warning: resource app: dest {}: directory {} can be written by its owner {} (uid {}): that user can replace the file confera writes there",
            dest.display(),
            dir.path().join("out").display(),
            user.name,
            user.uid
        ))
        .assert_stderr_contains(&format!(
            "warning: resource shared: dest {}: directory {} can be written by every user",
            shared.display(),
            shared.parent().unwrap().display()
        ));
}

// --- two resources, one file ---------------------------------------------------------

/// Each spelling names `out/app.conf` of the confdir in another way:
/// through a symlinked directory, with `..`, and relative (to a confdir
/// given through a link) versus absolute.
#[test]
fn two_resources_writing_one_file_are_refused_at_load_whatever_the_spelling() {
    let links = TempDir::new().unwrap();
    for (n, spelling) in ["alias/app.conf", "out/../out/app.conf", "out/app.conf"]
        .into_iter()
        .enumerate()
    {
        let dir = ConfDir::new();
        let dest = dir.dest("out/app.conf");
        std::os::unix::fs::symlink("out", dir.path().join("alias")).unwrap();
        dir.template("app.tera", "x\n");
        app_unit(&dir, "a", &dest, "");
        // The last spelling is relative; the confdir is given through a link.
        let confdir = links.path().join(format!("confdir-{n}"));
        std::os::unix::fs::symlink(dir.path(), &confdir).unwrap();
        let (other, shown) = if n == 2 {
            (PathBuf::from(spelling), confdir.join(spelling))
        } else {
            (dir.path().join(spelling), dir.path().join(spelling))
        };
        app_unit(&dir, "b", &other, "");
        let confdir = confdir.to_str().unwrap();
        let want = format!(
            "field `dest`: {} is also written by {}",
            shown.display(),
            Path::new(confdir).join("conf.d/a.toml").display()
        );

        let once = run(&["--confdir", confdir, "--backend", "env", "--onetime"]);

        once.assert_code(2).assert_stderr_contains(&want);
        assert!(!dest.exists(), "{spelling}: {once}");
        run(&["check", "--confdir", confdir])
            .assert_code(2)
            .assert_stderr_contains(&want);
    }
}

// --- fixtures --------------------------------------------------------------------------

/// A tmpfs remounted read-only; None (after printing SKIPPED) where this
/// machine refuses to mount.
struct ReadOnlyMount {
    dir: TempDir,
}

impl ReadOnlyMount {
    fn new() -> Option<ReadOnlyMount> {
        let dir = tempfile::Builder::new()
            .prefix("confera-ro-")
            .tempdir()
            .unwrap();
        let mount = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        if !mount.status.success() {
            println!(
                "SKIPPED: the read-only filesystem test needs a tmpfs, and mount was refused: {}",
                String::from_utf8_lossy(&mount.stderr)
            );
            return None;
        }
        let ro = ReadOnlyMount { dir };
        let remount = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(ro.path())
            .status()
            .unwrap();
        assert!(remount.success(), "remount read-only");
        Some(ro)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A directory made immutable (`chattr +i`) until Drop.
struct Immutable {
    dir: PathBuf,
}

impl Immutable {
    fn new(dir: &Path) -> Immutable {
        let status = Command::new("chattr").arg("+i").arg(dir).status().unwrap();
        assert!(status.success(), "chattr +i {}", dir.display());
        Immutable {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.dir).status();
    }
}
