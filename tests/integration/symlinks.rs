//! Destinations in a directory a local user owns (as Debian gives /etc/bird
//! to bird): whatever links that user plants, at `dest`, in the directory
//! path, or in place of a staging directory, root confera never writes
//! through them. Only `follow_symlink = true` follows a link, and only one
//! the user could not have planted.
//!
//! Each test creates a throwaway user, gives it `out/`, and lets it act
//! through `runuser`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::cmd::{run, wait_until, Daemon, Run};
use crate::support::confdir::{stage_entries, ConfDir};
use crate::support::user::{open_for_traversal, TempUser};

const DEADLINE: Duration = Duration::from_secs(10);
const PRECIOUS: &str = "root:only:precious\n";

/// A confdir whose unit `app` renders "new\n" into `out/app.conf` (EXTRA in
/// its `[template]`), `out/` owned by a throwaway user, and a root-only
/// file `victim/precious.conf` the user must never be able to change.
struct Site {
    dir: ConfDir,
    user: TempUser,
    victim: PathBuf,
}

impl Site {
    fn new(extra: &str) -> Site {
        let dir = ConfDir::new();
        open_for_traversal(dir.path());
        let user = TempUser::create();
        user.own_dir(&dir.path().join("out"));
        let victim = dir.dest("victim/precious.conf");
        fs::write(&victim, PRECIOUS).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(victim.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();
        dir.template("app.tera", "new\n");
        let site = Site { dir, user, victim };
        site.unit("app", &site.dest(), extra);
        site
    }

    fn unit(&self, name: &str, dest: &Path, extra: &str) {
        self.dir.resource(
            name,
            &format!(
                "[template]\nsrc = \"app.tera\"\ndest = {:?}\n{extra}\n",
                dest.display().to_string()
            ),
        );
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("out/app.conf")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn onetime(&self) -> Run {
        run(&["--confdir", self.dir.arg(), "--backend", "env", "--onetime"])
    }

    /// The user plants `LINK -> TARGET` (`ln -sfn`).
    fn plant(&self, target: &Path, link: &Path) {
        self.user.sh(&format!(
            "ln -sfn '{}' '{}'",
            target.display(),
            link.display()
        ));
    }

    #[track_caller]
    fn assert_victim_untouched(&self) {
        assert_eq!(fs::read_to_string(&self.victim).unwrap(), PRECIOUS);
        let meta = fs::metadata(&self.victim).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o600, 0));
    }
}

fn is_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn a_link_the_directory_owner_plants_at_dest_is_refused_and_its_target_untouched() {
    let site = Site::new("");
    site.plant(&site.victim, &site.dest());

    let run = site.onetime();

    run.assert_code(1).assert_stderr_contains(&format!(
        "{} is a symbolic link to {}: refusing to write through it",
        site.dest().display(),
        site.victim.display()
    ));
    site.assert_victim_untouched();
    assert!(is_link(&site.dest()), "the link is left as it was");
    assert_eq!(stage_entries(&site.out()), Vec::<String>::new());
}

#[test]
fn a_dangling_link_at_dest_creates_nothing() {
    let site = Site::new("");
    let target = site.victim.with_file_name("cron-job");
    site.plant(&target, &site.dest());

    let run = site.onetime();

    run.assert_code(1).assert_stderr_contains(&format!(
        "{} is a symbolic link to {}: refusing",
        site.dest().display(),
        target.display()
    ));
    assert!(!target.exists(), "{run}");
    assert!(fs::symlink_metadata(&target).is_err());
}

#[test]
fn a_link_planted_in_the_directory_path_is_refused() {
    let site = Site::new("");
    // dest is out/sub/app.conf; the user swaps `sub` for a link to root's
    // directory.
    let dest = site.out().join("sub/app.conf");
    site.unit("app", &dest, "");
    site.plant(site.victim.parent().unwrap(), &site.out().join("sub"));

    let run = site.onetime();

    run.assert_code(1).assert_stderr_contains(&format!(
        "{} is a symbolic link to {} that is owned by {} (uid {}): refusing to follow it",
        site.out().join("sub").display(),
        site.victim.parent().unwrap().display(),
        site.user.name,
        site.user.uid
    ));
    site.assert_victim_untouched();
    assert!(!site.victim.with_file_name("app.conf").exists(), "{run}");
}

/// The check runs between staging and commit: a window in which the owner
/// of the destination directory can move confera's staging directory away
/// and plant a link under its name, into root's directory holding a file of
/// the same name. The commit goes through the staging directory's handle,
/// so it moves confera's own file, never root's.
#[test]
fn a_staging_directory_swapped_for_a_link_during_the_check_never_redirects_the_commit() {
    let site = Site::new("");
    let root_file = site.victim.with_file_name("app.conf");
    fs::write(&root_file, PRECIOUS).unwrap();
    let swap = format!(
        "runuser -u {} -- sh -c 'd=$(dirname {{{{src}}}}); mv \"$d\" \"$d.moved\" && ln -s {} \"$d\"'",
        site.user.name,
        site.victim.parent().unwrap().display()
    );
    site.unit("app", &site.dest(), &format!("check_cmd = {swap:?}"));

    let run = site.onetime();

    run.assert_success();
    assert_eq!(fs::read_to_string(&root_file).unwrap(), PRECIOUS, "{run}");
    assert_eq!(fs::read_to_string(site.dest()).unwrap(), "new\n");
    site.assert_victim_untouched();
}

/// Names under confera's staging prefix that someone planted: links and
/// trees of a dead run are removed without following anything; they never
/// receive a staged file.
#[test]
fn pre_planted_staging_entries_never_redirect_a_write() {
    let site = Site::new("");
    let victim_dir = site.victim.parent().unwrap();
    let out = site.out();
    site.plant(
        victim_dir,
        &out.join(".confera-stage-app-999999999-00000001"),
    );
    site.user.sh(&format!(
        "mkdir {0}/.confera-stage-app-999999998-00000002 && ln -s {1} {0}/.confera-stage-app-999999998-00000002/app.conf && ln -s {2} {0}/.confera-stage-app-999999998-00000002/sub && echo planted > {0}/.confera-stage-app-999999997-00000003",
        out.display(),
        site.victim.display(),
        victim_dir.display()
    ));

    let run = site.onetime();

    run.assert_success();
    site.assert_victim_untouched();
    assert_eq!(fs::read_dir(victim_dir).unwrap().count(), 1, "{run}");
    assert_eq!(fs::read_to_string(site.dest()).unwrap(), "new\n");
    assert_eq!(stage_entries(&out), Vec::<String>::new(), "{run}");
}

/// Drift defense restores a destination through the normal pipeline, so a
/// link planted in place of the file is refused on every retry, never
/// written through, and the file comes back once the link is gone.
#[test]
fn drift_restore_never_writes_through_a_freshly_planted_link() {
    let site = Site::new("");
    let data = site.dir.dest("data.yaml");
    fs::write(&data, "x: 1\n").unwrap();
    let confera = Daemon::spawn(&[
        "--confdir",
        site.dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--watch",
        "--wait",
        "20ms:200ms",
    ]);
    assert!(wait_until(DEADLINE, || fs::read_to_string(site.dest())
        .is_ok_and(|t| t == "new\n")));

    site.plant(&site.victim, &site.dest());

    let refused = format!(
        "{} is a symbolic link to {}: refusing to write through it",
        site.dest().display(),
        site.victim.display()
    );
    assert!(
        wait_until(DEADLINE, || confera.log_count(&refused) >= 2),
        "refused and retried:\n{}",
        confera.log()
    );
    site.assert_victim_untouched();
    assert!(is_link(&site.dest()));

    site.user.sh(&format!("rm '{}'", site.dest().display()));
    assert!(
        wait_until(DEADLINE, || fs::read_to_string(site.dest())
            .is_ok_and(|t| t == "new\n")),
        "restored once the link is gone:\n{}",
        confera.log()
    );
    assert!(!is_link(&site.dest()));
    site.assert_victim_untouched();
}

/// `follow_symlink = true` follows a link root made in a directory only
/// root can write; a link the user planted, or one root made in the user's
/// directory (which the user could replace), is refused.
#[test]
fn follow_symlink_follows_only_a_link_no_unprivileged_user_could_have_planted() {
    let site = Site::new("follow_symlink = true");
    fs::remove_file(site.dir.path().join("conf.d/app.toml")).unwrap();
    let admin_dir = site.dir.dest("etc/x");
    let admin_dir = admin_dir.parent().unwrap();
    let real = site.dir.dest("real/app.conf");
    fs::write(&real, "old\n").unwrap();
    std::os::unix::fs::symlink("../real/app.conf", admin_dir.join("app.conf")).unwrap();
    site.unit(
        "admin",
        &admin_dir.join("app.conf"),
        "follow_symlink = true",
    );

    site.onetime().assert_success();

    assert_eq!(fs::read_to_string(&real).unwrap(), "new\n");
    assert!(is_link(&admin_dir.join("app.conf")));

    // The user's own link, and root's link in the user's directory.
    let planted = site.out().join("planted.conf");
    site.plant(&site.victim, &planted);
    let rootlink = site.out().join("rootlink.conf");
    std::os::unix::fs::symlink(&site.victim, &rootlink).unwrap();
    site.unit("planted", &planted, "follow_symlink = true");
    site.unit("rootlink", &rootlink, "follow_symlink = true");

    let run = site.onetime();

    run.assert_code(1)
        .assert_stderr_contains(&format!(
            "{} is a symbolic link to {} that is owned by {} (uid {}): refusing to follow it",
            planted.display(),
            site.victim.display(),
            site.user.name,
            site.user.uid
        ))
        .assert_stderr_contains(&format!(
            "{} is a symbolic link to {} that sits in {}, which its owner {} (uid {}) can write: refusing to follow it",
            rootlink.display(),
            site.victim.display(),
            site.out().display(),
            site.user.name,
            site.user.uid
        ));
    site.assert_victim_untouched();
}
