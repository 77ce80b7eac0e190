//! Watch mode (`--watch`) as a user sees it: confera runs as a daemon against
//! a real etcd (or data files), and every change reaches its destination and
//! the daemon's SIGHUP promptly, once, and only when the output changed.
//! Failures keep the last good files and are retried; losing etcd, even past
//! a compaction, never loses a change.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::cmd::{wait_until, Daemon};
use crate::support::confdir::ConfDir;
use crate::support::daemon::HupDaemon;
use crate::support::etcd::{Etcd, GrpcProxy};

/// A short debounce, so that tests wait on changes rather than on windows.
pub(crate) const WAIT: &str = "20ms:200ms";
/// How long an expected effect may take to show.
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);

const GREETING: &str = r#"greeting={{ getv(key="/app/greeting") }}
"#;
const PEERS: &str = r#"{% for kv in gets(pattern="/app/peers/*") %}{{ kv.key }}={{ kv.value }}
{% endfor %}"#;

/// A confdir whose units render into `out/NAME.conf` and reload one
/// stand-in daemon by SIGHUP.
pub(crate) struct Site {
    pub dir: ConfDir,
    pub daemon: HupDaemon,
}

impl Site {
    pub fn new() -> Site {
        let dir = ConfDir::new();
        let daemon = HupDaemon::start(dir.path());
        Site { dir, daemon }
    }

    /// Adds unit NAME: `templates/NAME.tera` holding TEMPLATE, rendered from
    /// KEYS into `out/NAME.conf`, reloading the stand-in daemon. EXTRA is
    /// more TOML for the `[template]` table.
    pub fn unit(&self, name: &str, keys: &[&str], template: &str, extra: &str) -> &Self {
        let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        self.dir.template(&format!("{name}.tera"), template);
        self.dir.resource(
            name,
            &format!(
                "[template]\nsrc = \"{name}.tera\"\ndest = {:?}\nkeys = [{}]\npid_file = {:?}\n{extra}\n",
                self.dest(name),
                keys.join(", "),
                self.daemon.pid_file,
            ),
        );
        self
    }

    /// `out/NAME.conf`, the destination of unit NAME.
    pub fn dest(&self, name: &str) -> PathBuf {
        self.dir.dest(&format!("out/{name}.conf"))
    }

    /// What unit NAME's destination holds, if it exists.
    pub fn output(&self, name: &str) -> Option<String> {
        self.dir.try_read(&format!("out/{name}.conf"))
    }

    #[track_caller]
    pub fn wait_for_output(&self, name: &str, want: &str) {
        let ok = wait_until(DEADLINE, || self.output(name).as_deref() == Some(want));
        assert!(
            ok,
            "out/{name}.conf is {:?} after {DEADLINE:?}, want {want:?}",
            self.output(name)
        );
    }

    #[track_caller]
    pub fn wait_for_hups(&self, n: usize) {
        assert!(
            self.daemon.wait_for_hups(n, DEADLINE),
            "the daemon got {} SIGHUPs after {DEADLINE:?}, want {n}",
            self.daemon.hups()
        );
    }

    /// confera in watch mode on etcd at NODE.
    pub fn watch_etcd(&self, node: &str, wait: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["--watch", "--log-level", "debug", "--wait", wait];
        args.extend_from_slice(extra);
        self.run_etcd(node, &args)
    }

    /// confera on this site's confdir and the etcd at NODE, in the mode
    /// and with the settings ARGS give.
    pub fn run_etcd(&self, node: &str, args: &[&str]) -> Daemon {
        let mut all = vec![
            "--confdir",
            self.dir.arg(),
            "--backend",
            "etcd",
            "--node",
            node,
        ];
        all.extend_from_slice(args);
        Daemon::spawn(&all)
    }

    /// confera in watch mode on the data file DATA.
    pub fn watch_file(&self, data: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--confdir",
            self.dir.arg(),
            "--backend",
            "file",
            "--file",
            data.to_str().expect("UTF-8 temp path"),
            "--watch",
            "--log-level",
            "debug",
            "--wait",
            WAIT,
        ];
        args.extend_from_slice(extra);
        Daemon::spawn(&args)
    }
}

/// A file's identity and last write: any commit changes it (a rename gives a
/// new inode; an in-place write a new mtime).
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Stamp {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    Stamp {
        ino: meta.ino(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
    }
}

/// How many times confera has logged that it rendered a unit and found
/// nothing to write: a render that certainly finished.
pub(crate) fn unchanged_renders(confera: &Daemon) -> usize {
    confera
        .log()
        .lines()
        .filter(|l| l.contains("}: unchanged"))
        .count()
}

/// How many times confera has committed DEST.
pub(crate) fn commits(confera: &Daemon, dest: &Path) -> usize {
    let field = format!("dest={} ", dest.display());
    confera
        .log()
        .lines()
        .filter(|l| l.contains(": committed ") && l.contains(&field))
        .count()
}

/// Makes CHANGE (one that renders to the same output) and waits until
/// confera has rendered it: everything that happened before it has then
/// been processed, so an effect that has not shown by now will not.
#[track_caller]
pub(crate) fn barrier(confera: &Daemon, change: impl FnOnce()) {
    let before = unchanged_renders(confera);
    change();
    assert!(
        wait_until(DEADLINE, || unchanged_renders(confera) > before),
        "confera did not render the barrier change within {DEADLINE:?}"
    );
}

#[track_caller]
fn wait_for_log(confera: &Daemon, fragment: &str) {
    confera.expect_log(fragment, DEADLINE);
}

/// Starts etcd with /app/greeting=hello, and confera watching it with one
/// unit `app` that renders the greeting; returns once the first render and
/// its SIGHUP are done.
fn greeting_site() -> (Etcd, Site, Daemon) {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("app", "greeting=hello\n");
    site.wait_for_hups(1);
    (etcd, site, confera)
}

#[test]
fn a_put_reaches_the_file_and_the_daemon_gets_exactly_one_sighup() {
    let (etcd, site, confera) = greeting_site();

    etcd.put("/app/greeting", "world");

    site.wait_for_output("app", "greeting=world\n");
    site.wait_for_hups(2);
    barrier(&confera, || etcd.put("/app/unused", "1"));
    assert_eq!(site.daemon.hups(), 2);
    assert_eq!(commits(&confera, &site.dest("app")), 2);
}

#[test]
fn puts_that_change_no_output_write_nothing_and_reload_nothing() {
    let etcd = Etcd::start();
    etcd.put("/app/db/url", "postgres://db");
    let site = Site::new();
    site.unit(
        "app",
        &["/app/db"],
        r#"url={{ getv(key="/app/db/url") }}
"#,
        "",
    );
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("app", "url=postgres://db\n");
    site.wait_for_hups(1);
    let before = stamp(&site.dest("app"));

    // The same value again; keys outside every unit (`/app/dbx` shares the
    // watched prefix's bytes but not its `/` boundary); then a key the unit
    // watches but its template does not read, which is rendered.
    barrier(&confera, || {
        etcd.put("/app/db/url", "postgres://db");
        etcd.put("/app/dbx", "elsewhere");
        etcd.put("/other/key", "elsewhere");
        etcd.put("/app/db/pool", "10");
    });

    assert_eq!(
        stamp(&site.dest("app")),
        before,
        "the destination was written"
    );
    assert_eq!(site.output("app").as_deref(), Some("url=postgres://db\n"));
    assert_eq!(site.daemon.hups(), 1);
    assert_eq!(commits(&confera, &site.dest("app")), 1);
}

#[test]
fn a_deleted_key_disappears_from_the_output() {
    let etcd = Etcd::start();
    for peer in ["a", "b", "c"] {
        etcd.put(&format!("/app/peers/{peer}"), peer);
    }
    let site = Site::new();
    site.unit("app", &["/app"], PEERS, "");
    let _confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("app", "/app/peers/a=a\n/app/peers/b=b\n/app/peers/c=c\n");

    assert!(etcd.delete("/app/peers/b"));

    site.wait_for_output("app", "/app/peers/a=a\n/app/peers/c=c\n");
    site.wait_for_hups(2);
}

#[test]
fn only_the_units_whose_keys_changed_are_rendered() {
    let etcd = Etcd::start();
    etcd.put("/a/v", "1");
    etcd.put("/b/v", "1");
    let site = Site::new();
    site.unit("a", &["/a"], r#"{{ getv(key="/a/v") }}"#, "")
        .unit("b", &["/b"], r#"{{ getv(key="/b/v") }}"#, "");
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("a", "1");
    site.wait_for_output("b", "1");
    // The log line follows the rename.
    assert!(wait_until(DEADLINE, || commits(&confera, &site.dest("b")) == 1));
    let b_before = stamp(&site.dest("b"));
    let renders_of_b = || confera.log_count("resource{resource=b}");
    let b_renders_before = renders_of_b();

    etcd.put("/a/v", "2");

    site.wait_for_output("a", "2");
    barrier(&confera, || etcd.put("/a/unused", "x"));
    assert_eq!(commits(&confera, &site.dest("a")), 2);
    assert_eq!(commits(&confera, &site.dest("b")), 1);
    assert_eq!(stamp(&site.dest("b")), b_before);
    assert_eq!(renders_of_b(), b_renders_before, "unit b was rendered");
}

#[test]
fn a_burst_of_300_puts_is_coalesced_into_a_few_commits_showing_the_final_data() {
    let burst = burst_of_300_puts(Some("100ms:2s"));
    assert!(
        (1..=5).contains(&burst.commits),
        "{} commits for the burst",
        burst.commits
    );
    assert!(
        (1..=5).contains(&burst.hups),
        "{} SIGHUPs for the burst",
        burst.hups
    );
}

/// What a burst of 300 puts gave: commits and SIGHUPs after the start-up
/// render, and how long the puts took.
struct Burst {
    commits: usize,
    hups: usize,
    took: Duration,
}

/// confera watching a unit that lists `/app/peers/*` (with `--wait WAIT`,
/// or the defaults), then 300 puts of 100 keys from 10 writers, as fast as
/// etcd takes them (well under half a second); each key ends at v2. Returns
/// once the file shows the final data.
fn burst_of_300_puts(wait: Option<&str>) -> Burst {
    let etcd = Etcd::start();
    let site = Site::new();
    site.unit("app", &["/app"], PEERS, "");
    etcd.put("/app/peers/start", "0");
    let confera = match wait {
        Some(wait) => site.watch_etcd(&etcd.client_url, wait, &[]),
        None => site.run_etcd(&etcd.client_url, &["--watch", "--log-level", "debug"]),
    };
    site.wait_for_output("app", "/app/peers/start=0\n");
    site.wait_for_hups(1);

    let started = Instant::now();
    std::thread::scope(|s| {
        for writer in 0..10 {
            let etcd = &etcd;
            s.spawn(move || {
                for round in 0..3 {
                    for key in 0..10 {
                        etcd.put(&format!("/app/peers/{writer}{key}"), &format!("v{round}"));
                    }
                }
            });
        }
    });
    let took = started.elapsed();
    let want: String = (0..100)
        .map(|k| format!("/app/peers/{k:02}=v2\n"))
        .chain(["/app/peers/start=0\n".to_string()])
        .collect();

    site.wait_for_output("app", &want);
    barrier(&confera, || etcd.put("/app/unused", "x"));
    Burst {
        commits: commits(&confera, &site.dest("app")) - 1,
        hups: site.daemon.hups() - 1,
        took,
    }
}

#[test]
fn an_isolated_change_renders_at_once_however_long_the_wait() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    let min = Duration::from_secs(4);
    let _confera = site.watch_etcd(&etcd.client_url, "4s:120s", &[]);
    site.wait_for_output("app", "greeting=hello\n");
    site.wait_for_hups(1);
    // Nothing rendered within the last MIN: the next change is isolated.
    std::thread::sleep(min);

    let put = Instant::now();
    etcd.put("/app/greeting", "world");

    // Well before MIN: only the leading edge renders this soon.
    let soon = wait_until(min / 2, || {
        site.output("app").as_deref() == Some("greeting=world\n")
    });
    assert!(soon, "not rendered {:?} after the put", put.elapsed());
    site.wait_for_hups(2);
}

#[test]
fn with_wait_mode_trailing_an_isolated_change_waits_for_min_of_quiet() {
    let (etcd, site) = (Etcd::start(), Site::new());
    etcd.put("/app/greeting", "hello");
    site.unit("app", &["/app"], GREETING, "");
    let _confera = site.watch_etcd(&etcd.client_url, "2s:10s", &["--wait-mode", "trailing"]);
    site.wait_for_output("app", "greeting=hello\n");

    let put = Instant::now();
    etcd.put("/app/greeting", "world");

    site.wait_for_output("app", "greeting=world\n");
    assert!(
        put.elapsed() >= Duration::from_secs(2),
        "rendered before MIN"
    );
}

#[test]
fn with_default_settings_a_burst_of_300_puts_in_half_a_second_gives_at_most_5_reloads() {
    let burst = burst_of_300_puts(None);
    assert!(
        (1..=5).contains(&burst.hups),
        "{} SIGHUPs for 300 puts in {:?}",
        burst.hups,
        burst.took
    );
    assert!(
        (1..=5).contains(&burst.commits),
        "{} commits",
        burst.commits
    );
}

#[test]
fn the_first_render_at_start_up_is_not_delayed_by_wait() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");

    let started = Instant::now();
    let _confera = site.watch_etcd(&etcd.client_url, "2s:5s", &[]);
    site.wait_for_output("app", "greeting=hello\n");

    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "first render took {took:?}"
    );
}

#[test]
fn the_first_render_already_holds_all_of_5000_preloaded_keys() {
    let etcd = Etcd::start();
    let pairs: Vec<(String, String)> = (0..5000)
        .map(|i| (format!("/app/peers/{i:04}"), format!("v{i}")))
        .collect();
    etcd.put_many(&pairs);
    let site = Site::new();
    site.unit(
        "app",
        &["/app"],
        r#"{% for kv in gets(pattern="/app/peers/*") %}{{ kv.key }}={{ kv.value }}
{% endfor %}"#,
        "",
    );

    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);

    assert!(
        wait_until(DEADLINE, || site.output("app").is_some()),
        "no output"
    );
    let want: String = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    assert!(
        site.output("app").as_deref() == Some(want.as_str()),
        "the first render holds {} of 5000 keys",
        site.output("app").unwrap_or_default().lines().count()
    );
    barrier(&confera, || etcd.put("/app/unused", "x"));
    assert_eq!(commits(&confera, &site.dest("app")), 1);
    assert_eq!(site.daemon.hups(), 1);
}

#[test]
fn confera_survives_an_etcd_crash_keeps_the_file_and_catches_up_after_the_restart() {
    let (mut etcd, site, mut confera) = greeting_site();

    etcd.kill();
    wait_for_log(&confera, "watch lost; reconnecting");
    wait_for_log(&confera, "etcd unavailable; keeping the current files");
    assert!(confera.is_running());
    assert_eq!(site.output("app").as_deref(), Some("greeting=hello\n"));

    etcd.restart();
    etcd.put("/app/greeting", "after the crash");

    let ok = wait_until(Duration::from_secs(10), || {
        site.output("app").as_deref() == Some("greeting=after the crash\n")
    });
    assert!(ok, "no catch-up: {:?}", site.output("app"));
    assert!(confera.is_running());
}

#[test]
fn a_compaction_missed_while_disconnected_is_caught_up_by_a_resync() {
    let etcd = Etcd::start();
    for peer in ["a", "b", "c"] {
        etcd.put(&format!("/app/peers/{peer}"), "1");
    }
    let mut proxy = GrpcProxy::start(&etcd);
    let site = Site::new();
    site.unit("app", &["/app"], PEERS, "");
    let confera = site.watch_etcd(&proxy.url, WAIT, &[]);
    site.wait_for_output("app", "/app/peers/a=1\n/app/peers/b=1\n/app/peers/c=1\n");

    proxy.kill();
    etcd.put("/app/peers/b", "2");
    etcd.put("/app/peers/d", "1");
    assert!(etcd.delete("/app/peers/a"));
    etcd.put("/app/peers/d", "2");
    etcd.compact(etcd.revision());
    proxy.restart();

    let want: String = etcd
        .get_prefix("/app/peers/")
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    assert_eq!(want, "/app/peers/b=2\n/app/peers/c=1\n/app/peers/d=2\n");
    let ok = wait_until(Duration::from_secs(10), || {
        site.output("app").as_deref() == Some(want.as_str())
    });
    assert!(ok, "output {:?}, want {want:?}", site.output("app"));
    wait_for_log(&confera, "watch lost its history; resyncing");
}

#[test]
fn a_render_that_fails_on_a_missing_key_is_retried_and_a_put_of_the_key_renders_at_once() {
    let etcd = Etcd::start();
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    // After the third failure the next retry is 2 s away.
    wait_for_log(&confera, "will retry resource=app attempt=3");
    assert!(
        confera.log().contains("/app/greeting"),
        "the error names the key"
    );
    assert_eq!(site.output("app"), None);

    let put = Instant::now();
    etcd.put("/app/greeting", "at last");

    site.wait_for_output("app", "greeting=at last\n");
    let took = put.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the put took {took:?} to render: it waited for the retry"
    );
    wait_for_log(&confera, "recovered resource=app");
    site.wait_for_hups(1);
}

#[test]
fn a_check_failing_on_an_outside_condition_is_retried_without_any_etcd_change() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    let allow = site.dir.path().join("allow");
    site.unit(
        "app",
        &["/app"],
        GREETING,
        &format!("check_cmd = \"test -e {}\"", allow.display()),
    );
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    wait_for_log(&confera, "will retry resource=app attempt=1");
    assert_eq!(site.output("app"), None);

    fs::write(&allow, "").unwrap();

    site.wait_for_output("app", "greeting=hello\n");
    site.wait_for_hups(1);
}

#[test]
fn a_failed_reload_is_reported_and_retried_until_the_daemon_is_back() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    site.daemon.kill();
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("app", "greeting=hello\n");
    wait_for_log(&confera, "which is not running");
    wait_for_log(&confera, "reload retry failed");

    let revived = HupDaemon::start_named(site.dir.path(), "revived");
    let pid_file = &site.daemon.pid_file;
    let tmp = pid_file.with_extension("new");
    fs::write(&tmp, format!("{}\n", revived.pid())).unwrap();
    fs::rename(&tmp, pid_file).unwrap();

    assert!(
        revived.wait_for_hups(1, Duration::from_secs(10)),
        "the revived daemon got no SIGHUP"
    );
    wait_for_log(&confera, "reload retry succeeded");
}

#[test]
fn interval_with_watch_resyncs_periodically() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &["--interval", "1"]);
    site.wait_for_output("app", "greeting=hello\n");

    let resyncs = wait_until(DEADLINE, || confera.log_count("periodic resync") >= 2);
    assert!(resyncs, "fewer than 2 periodic resyncs");

    // A resync that finds nothing new writes and reloads nothing, and the
    // watch still works after it.
    etcd.put("/app/greeting", "still watching");
    site.wait_for_output("app", "greeting=still watching\n");
    site.wait_for_hups(2);
    assert_eq!(commits(&confera, &site.dest("app")), 2);
}

#[test]
fn the_file_backend_follows_edits_renames_deletes_and_returns_of_its_data_file() {
    let site = Site::new();
    site.unit("app", &["/app"], GREETING, "");
    site.dir.file("data/app.yaml", "app:\n  greeting: hello\n");
    let data = site.dir.path().join("data/app.yaml");
    let confera = site.watch_file(&data, &[]);
    site.wait_for_output("app", "greeting=hello\n");

    // Written in place.
    fs::write(&data, "app:\n  greeting: in place\n").unwrap();
    site.wait_for_output("app", "greeting=in place\n");

    // Replaced by rename, as editors save.
    site.dir
        .file("data/app.yaml", "app:\n  greeting: renamed\n");
    site.wait_for_output("app", "greeting=renamed\n");

    // Deleted: the last good file stays.
    fs::remove_file(&data).unwrap();
    wait_for_log(
        &confera,
        "data files unreadable; keeping the current data and files",
    );
    assert_eq!(site.output("app").as_deref(), Some("greeting=renamed\n"));

    site.dir.file("data/app.yaml", "app:\n  greeting: back\n");
    site.wait_for_output("app", "greeting=back\n");
    site.wait_for_hups(4);
}

#[test]
fn an_edited_template_renders_without_a_restart() {
    let (_etcd, site, _confera) = greeting_site();

    site.dir
        .template("app.tera", r#"hello={{ getv(key="/app/greeting") }}"#);

    site.wait_for_output("app", "hello=hello");
    site.wait_for_hups(2);
}

#[test]
fn a_new_conf_d_file_starts_rendering() {
    let (etcd, site, _confera) = greeting_site();
    etcd.put("/new/v", "fresh");

    site.unit("new", &["/new"], r#"v={{ getv(key="/new/v") }}"#, "");

    site.wait_for_output("new", "v=fresh");
    etcd.put("/new/v", "watched");
    site.wait_for_output("new", "v=watched");
}

#[test]
fn a_broken_template_is_reported_with_file_and_line_and_the_old_one_keeps_running() {
    let (etcd, site, confera) = greeting_site();

    site.dir
        .template("app.tera", "line one\n{{ getv(key=\"/app/greeting\") \n");

    wait_for_log(
        &confera,
        "new configuration rejected; keeping the running one",
    );
    let log = confera.log();
    let rejected = log
        .lines()
        .find(|l| l.contains("new configuration rejected"))
        .unwrap();
    assert!(
        rejected.contains("app.tera") && rejected.contains("line 2"),
        "{rejected}"
    );
    assert_eq!(site.output("app").as_deref(), Some("greeting=hello\n"));
    etcd.put("/app/greeting", "old template");
    site.wait_for_output("app", "greeting=old template\n");
}

#[test]
fn sighup_to_confera_reloads_templates_that_no_watch_sees() {
    let (_etcd, site, mut confera) = greeting_site();
    // The template is a symlink to a file outside the confdir (as with a
    // mounted ConfigMap); editing its target fires no event in templates/.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("app.tera");
    fs::write(&target, GREETING).unwrap();
    let link = site.dir.path().join("templates/app.tera");
    let tmp = site.dir.path().join("templates/.app.tera.link");
    std::os::unix::fs::symlink(&target, &tmp).unwrap();
    fs::rename(&tmp, &link).unwrap();
    wait_for_log(&confera, "configuration reloaded");
    let reloads = confera.log_count("configuration reloaded");

    fs::write(&target, r#"via sighup={{ getv(key="/app/greeting") }}"#).unwrap();
    confera.signal(Signal::SIGHUP);

    site.wait_for_output("app", "via sighup=hello");
    wait_for_log(&confera, "SIGHUP received");
    assert_eq!(confera.log_count("configuration reloaded"), reloads + 1);
}

/// Issue 12: SIGHUP applies every setting, or names exactly those that
/// need a restart.
#[test]
fn sighup_applies_a_new_interval_and_names_the_settings_that_need_a_restart() {
    let (_etcd, site, mut confera) = greeting_site();
    assert_eq!(confera.log_count("periodic resync"), 0);
    site.dir
        .file("confera.toml", "interval = 1\nlog_format = \"json\"\n");
    confera.signal(Signal::SIGHUP);

    wait_for_log(&confera, "need a restart");
    let line = confera
        .log()
        .lines()
        .find(|l| l.contains("need a restart"))
        .unwrap()
        .to_owned();
    assert!(line.contains("settings=log-format"), "{line}");
    assert!(!line.contains("interval"), "{line}");
    wait_for_log(&confera, "periodic resync");
}

#[test]
fn sigterm_exits_cleanly_with_0() {
    let (_etcd, _site, mut confera) = greeting_site();

    let asked = Instant::now();
    assert_eq!(confera.terminate(), 0);

    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn sigterm_during_the_first_render_finishes_it_then_exits_0() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    let checking = site.dir.path().join("checking");
    site.unit(
        "app",
        &["/app"],
        GREETING,
        &format!("check_cmd = \"touch {}; sleep 1\"", checking.display()),
    );
    let mut confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    assert!(
        wait_until(DEADLINE, || checking.exists()),
        "the check never ran"
    );

    let code = confera.terminate();

    assert_eq!(code, 0, "{}", confera.log());
    assert_eq!(site.output("app").as_deref(), Some("greeting=hello\n"));
    assert_eq!(site.daemon.hups(), 1);
}

#[test]
fn sigterm_during_a_render_finishes_its_commit_and_reload_then_exits_0() {
    let etcd = Etcd::start();
    etcd.put("/app/greeting", "hello");
    let site = Site::new();
    let checking = site.dir.path().join("checking");
    site.unit(
        "app",
        &["/app"],
        GREETING,
        &format!(
            "check_cmd = \"if grep -q slow {{{{src}}}}; then touch {}; sleep 1; fi\"",
            checking.display()
        ),
    );
    let mut confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("app", "greeting=hello\n");
    site.wait_for_hups(1);

    etcd.put("/app/greeting", "slow");
    assert!(
        wait_until(DEADLINE, || checking.exists()),
        "the check never ran"
    );
    let asked = Instant::now();
    let code = confera.terminate();

    assert_eq!(code, 0);
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(site.output("app").as_deref(), Some("greeting=slow\n"));
    assert_eq!(site.daemon.hups(), 2);
}

/// Issue 12: destination, conf.d and data-file events no longer share one
/// 64-slot channel that drops what does not fit; a data-file edit made
/// while 80 destinations were just committed and their reload runs is
/// applied.
#[test]
fn a_data_file_edit_during_a_slow_reload_of_80_destinations_is_applied() {
    let dir = ConfDir::new();
    dir.file("data.yaml", "app:\n  v: 1\n")
        .template("app.tera", "v={{ getv(key=\"/app/v\") }}\n");
    let names: Vec<String> = (0..80).map(|i| format!("u{i:02}")).collect();
    for name in &names {
        dir.resource(
            name,
            &format!(
                "[template]\nsrc = \"app.tera\"\ndest = {:?}\nkeys = [\"/app\"]\nreload_cmd = \"sleep 3\"\nreload_timeout = \"10s\"\n",
                dir.dest(&format!("out/{name}.conf"))
            ),
        );
    }
    let all_are = |want: &str| {
        names
            .iter()
            .all(|n| dir.try_read(&format!("out/{n}.conf")).as_deref() == Some(want))
    };
    let data = dir.path().join("data.yaml");
    let confera = Daemon::spawn(&[
        "--confdir",
        dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--watch",
        "--wait",
        WAIT,
    ]);
    assert!(wait_until(Duration::from_secs(15), || all_are("v=1\n")));
    dir.file("data.yaml", "app:\n  v: 2\n");
    assert!(wait_until(Duration::from_secs(15), || all_are("v=2\n")));
    // The reload of that batch now sleeps for 3 s.
    dir.file("data.yaml", "app:\n  v: 3\n");
    assert!(
        wait_until(Duration::from_secs(15), || all_are("v=3\n")),
        "the edit made during the reload was never applied\n{}",
        confera.log()
    );
}
