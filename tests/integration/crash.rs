//! Crash safety: confera killed with SIGKILL at random moments while it
//! renders a large, fast-changing value. A reader watching the destination
//! must only ever see a complete old or a complete new file, and a clean
//! start afterwards must converge and leave no staging directory behind.

use crate::support::confdir::stage_entries;
use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::cmd::{wait_until, Daemon};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;

/// Each version of the value is about this large.
const VALUE_BYTES: usize = 300 * 1024;
/// The writer puts a new version this often (20 a second).
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// How many times confera is killed with SIGKILL.
const KILLS: usize = 40;
/// Each life lasts a random time in this range (milliseconds).
const LIFE_MS: std::ops::RangeInclusive<u64> = 20..=300;

const HEADER: &str = "confera-crash-test version ";
const TRAILER: &str = "end version ";

/// 64-bit FNV-1a: a checksum with no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Version V of the value: a header line naming V, ~300 KB of lines that
/// differ per version, and a trailer naming V again with the body's checksum.
fn versioned_value(v: u64) -> String {
    let mut body = String::with_capacity(VALUE_BYTES + 128);
    let mut line = 0;
    while body.len() < VALUE_BYTES {
        body.push_str(&format!(
            "v{v:08} line {line:06} abcdefghijklmnopqrstuvwxyz0123456789\n"
        ));
        line += 1;
    }
    let sum = fnv1a(body.as_bytes());
    format!("{HEADER}{v:08}\n{body}{TRAILER}{v:08} fnv1a64 {sum:016x}\n")
}

/// The version a complete file holds, or why the file is not complete.
fn verify(bytes: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let (first, rest) = text
        .split_once('\n')
        .ok_or_else(|| format!("no header line in {} bytes", bytes.len()))?;
    let head: u64 = first
        .strip_prefix(HEADER)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad header {first:?}"))?;
    let body_end = rest.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
    let (body, last) = rest.split_at(body_end);
    let fields: Vec<&str> = last
        .strip_prefix(TRAILER)
        .ok_or_else(|| format!("bad trailer {:?} (header {head})", truncate(last)))?
        .split_whitespace()
        .collect();
    let [tail, "fnv1a64", sum] = fields[..] else {
        return Err(format!("bad trailer {:?}", truncate(last)));
    };
    let tail: u64 = tail.parse().map_err(|_| format!("bad trailer {last:?}"))?;
    if tail != head {
        return Err(format!("header version {head}, trailer version {tail}"));
    }
    if !last.ends_with('\n') || format!("{:016x}", fnv1a(body.as_bytes())) != sum {
        return Err(format!("version {head}: checksum mismatch"));
    }
    Ok(head)
}

fn truncate(s: &str) -> &str {
    &s[..s.len().min(80)]
}

/// What the reader saw.
#[derive(Default)]
struct Observed {
    reads: u64,
    versions: BTreeSet<u64>,
    /// Torn, empty or otherwise incomplete files, and disappearances after
    /// the first complete file: each with a description.
    bad: Vec<String>,
    /// Times a read saw an older version than an earlier read.
    went_back: Vec<(u64, u64)>,
}

/// Reads DEST in a tight loop until STOP, checking every read.
fn read_continuously(dest: &Path, stop: &AtomicBool, observed: &Mutex<Observed>) {
    let mut seen_first = false;
    let mut last = 0;
    let mut local = Observed::default();
    while !stop.load(Ordering::Relaxed) {
        match fs::read(dest) {
            Ok(bytes) => {
                local.reads += 1;
                match verify(&bytes) {
                    Ok(v) => {
                        seen_first = true;
                        if v < last {
                            local.went_back.push((last, v));
                        }
                        last = last.max(v);
                        local.versions.insert(v);
                    }
                    Err(why) => local.bad.push(why),
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if seen_first {
                    local.reads += 1;
                    local.bad.push("the destination disappeared".into());
                }
            }
            Err(e) => local.bad.push(format!("read failed: {e}")),
        }
        thread::yield_now();
    }
    *observed.lock().unwrap() = local;
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_torn_or_missing_destination() {
    let started = Instant::now();
    let etcd = Etcd::start();
    let conf = ConfDir::new();
    let dest = conf.dest("out/big.conf");
    conf.template("big.tera", r#"{{ getv(key="/big") }}"#)
        .resource(
            "big",
            &format!(
                "[template]\nsrc = \"big.tera\"\ndest = \"{}\"\nkeys = [\"/big\"]\n",
                dest.display()
            ),
        );
    let args = [
        "--confdir",
        conf.arg(),
        "--backend",
        "etcd",
        "--node",
        &etcd.client_url,
        "--watch",
        "--wait",
        "0ms:0ms",
    ];
    etcd.put("/big", &versioned_value(1));

    let stop_writer = AtomicBool::new(false);
    let stop_reader = AtomicBool::new(false);
    let last_written = AtomicU64::new(1);
    let observed = Mutex::new(Observed::default());
    let mut kills = 0;
    let mut stale_after_kills = 0;
    let mut stale_before_clean_start = 0;
    thread::scope(|s| {
        s.spawn(|| read_continuously(&dest, &stop_reader, &observed));
        let writer = s.spawn(|| {
            let mut v = 1;
            while !stop_writer.load(Ordering::Relaxed) {
                thread::sleep(WRITE_EVERY);
                v += 1;
                etcd.put("/big", &versioned_value(v));
                last_written.store(v, Ordering::SeqCst);
            }
        });

        let mut last_pid = 0;
        for _ in 0..KILLS {
            let confera = Daemon::spawn(&args);
            thread::sleep(Duration::from_millis(rand::random_range(LIFE_MS)));
            last_pid = confera.pid();
            drop(confera); // SIGKILL, then reaped
            kills += 1;
            // Caught mid-stage: the next start must clean these up.
            stale_after_kills += stage_entries(dest.parent().unwrap()).len();
        }
        stop_writer.store(true, Ordering::SeqCst);
        writer.join().expect("the writer thread");
        stale_before_clean_start = stage_entries(dest.parent().unwrap()).len();
        if stale_before_clean_start == 0 {
            // The last kill happened outside a stage: leave what a kill
            // mid-stage leaves (a half-written file in a staging directory
            // of the dead process), so the clean start has something to
            // clean up on every run.
            let stale = dest
                .parent()
                .unwrap()
                .join(format!(".confera-stage-big-{last_pid}-0badc0de"));
            fs::create_dir(&stale).unwrap();
            fs::write(stale.join("big.conf"), &versioned_value(0)[..1000]).unwrap();
        }

        // A clean start converges on the final data, then exits on SIGTERM.
        let mut confera = Daemon::spawn(&args);
        let final_value = versioned_value(last_written.load(Ordering::SeqCst));
        let converged = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&dest).is_ok_and(|text| text == final_value)
        });
        stop_reader.store(true, Ordering::SeqCst);
        assert!(
            converged,
            "after the kills, a clean start did not render the final version {}",
            last_written.load(Ordering::SeqCst)
        );
        assert_eq!(confera.terminate(), 0, "{}", confera.log());
    });

    let observed = observed.into_inner().unwrap();
    let left = stage_entries(dest.parent().unwrap());
    println!(
        "kills: {kills}, reads checked: {}, versions seen: {} of {} written, \
         staging dirs left by kills: {stale_after_kills} \
         ({stale_before_clean_start} before the final clean start), \
         bad reads: {}, took {:?}",
        observed.reads,
        observed.versions.len(),
        last_written.load(Ordering::SeqCst),
        observed.bad.len(),
        started.elapsed()
    );
    assert!(
        observed.bad.is_empty(),
        "{} torn, empty or missing reads, first ones: {:?}",
        observed.bad.len(),
        &observed.bad[..observed.bad.len().min(5)]
    );
    assert!(
        observed.went_back.is_empty(),
        "the destination went back to older versions: {:?}",
        &observed.went_back[..observed.went_back.len().min(5)]
    );
    assert!(kills >= 25);
    // The test proves something only if confera committed in many lives.
    assert!(
        observed.versions.len() >= 10,
        "only {} versions were seen: confera hardly ever committed between kills",
        observed.versions.len()
    );
    assert!(
        left.is_empty(),
        "staging directories left after a clean start and SIGTERM: {left:?}"
    );
}

#[test]
fn the_reader_rejects_torn_empty_and_mixed_files() {
    let v7 = versioned_value(7);
    let v8 = versioned_value(8);
    assert_eq!(verify(v7.as_bytes()), Ok(7));
    assert!(verify(b"").is_err());
    assert!(verify(&v7.as_bytes()[..v7.len() / 2]).is_err());
    assert!(verify(&v7.as_bytes()[..v7.len() - 1]).is_err());
    // The head of one version and the tail of the next, as an in-place
    // rewrite caught halfway would show.
    let mixed = format!("{}{}", &v7[..v7.len() / 2], &v8[v8.len() / 2..]);
    assert!(verify(mixed.as_bytes()).is_err());
    // One changed byte in the body.
    let flipped = v7.replacen("line 000100", "line 000101", 1);
    assert!(verify(flipped.as_bytes()).is_err());
}

/// A confdir with unit `app` rendering `/app/greeting` and reloading a
/// stand-in daemon by SIGHUP.
fn owed_site(etcd: &Etcd) -> crate::watch::Site {
    let site = crate::watch::Site::new();
    site.unit(
        "app",
        &["/app"],
        "greeting={{ getv(key=\"/app/greeting\") }}\n",
        "",
    );
    etcd.put("/app/greeting", "hello");
    site
}

/// Where confera records the reloads it owes for SITE: the test fixtures
/// point `STATE_DIRECTORY` at a scratch directory; one file per confdir.
fn owed_record(site: &crate::watch::Site) -> std::path::PathBuf {
    crate::support::cmd::state_dir().join(confera::watch::owed::file_name(site.dir.path()))
}

fn revive(site: &crate::watch::Site) -> crate::support::daemon::HupDaemon {
    let revived = crate::support::daemon::HupDaemon::start_named(site.dir.path(), "revived");
    let pid_file = &site.daemon.pid_file;
    let tmp = pid_file.with_extension("new");
    fs::write(&tmp, format!("{}\n", revived.pid())).unwrap();
    fs::rename(&tmp, pid_file).unwrap();
    revived
}

/// A watcher whose reload fails (the daemon is dead) and that stops: the
/// reload stays owed in its record.
fn leave_a_reload_owed(site: &crate::watch::Site, etcd: &Etcd) {
    site.daemon.kill();
    let mut confera = site.watch_etcd(&etcd.client_url, crate::watch::WAIT, &[]);
    site.wait_for_output("app", "greeting=hello\n");
    assert!(confera.wait_for_log("reload failed", crate::watch::DEADLINE));
    assert_eq!(confera.terminate(), 0);
    assert!(owed_record(site).exists(), "no record of the owed reload");
}

/// Issue 12: a reload that failed before confera stopped is still owed
/// after a restart, although every file is then "unchanged".
#[test]
fn a_reload_owed_when_confera_stopped_is_done_after_a_restart() {
    let etcd = Etcd::start();
    let site = owed_site(&etcd);
    leave_a_reload_owed(&site, &etcd);
    let revived = revive(&site);
    let confera = site.watch_etcd(&etcd.client_url, crate::watch::WAIT, &[]);
    assert!(
        revived.wait_for_hups(1, crate::watch::DEADLINE),
        "the owed reload was forgotten across the restart\n{}",
        confera.log()
    );
    assert!(
        wait_until(crate::watch::DEADLINE, || !owed_record(&site).exists()),
        "the record still holds a reload that was done"
    );
}

/// `--sync-only` writes files and runs no reload: not even one a previous
/// run owed, whose record stays for a run that reloads.
#[test]
fn a_sync_only_watcher_runs_no_reload_a_previous_run_owed() {
    let etcd = Etcd::start();
    let site = owed_site(&etcd);
    leave_a_reload_owed(&site, &etcd);
    let revived = revive(&site);
    let mut confera = site.watch_etcd(&etcd.client_url, crate::watch::WAIT, &["--sync-only"]);
    confera.expect_log("ready", crate::watch::DEADLINE);
    etcd.put("/app/greeting", "synced");
    site.wait_for_output("app", "greeting=synced\n");

    assert!(
        !revived.wait_for_hups(1, std::time::Duration::from_secs(2)),
        "--sync-only signalled the daemon\n{}",
        confera.log()
    );
    assert_eq!(confera.terminate(), 0);
    assert!(owed_record(&site).exists(), "the owed reload was dropped");
}

/// Issue 12: in polling mode a failed reload is retried at the next poll,
/// though the file no longer changes.
#[test]
fn polling_mode_retries_a_failed_reload_at_the_next_poll() {
    let etcd = Etcd::start();
    let site = owed_site(&etcd);
    site.daemon.kill();
    let _confera = site.run_etcd(&etcd.client_url, &["--interval", "1"]);
    site.wait_for_output("app", "greeting=hello\n");
    let revived = revive(&site);
    assert!(
        revived.wait_for_hups(1, Duration::from_secs(5)),
        "the failed reload was never retried"
    );
}

/// Issue 12: unit `bird` cleaning its stale staging directories leaves
/// those of unit `bird-v6`, whose owner still runs, alone.
#[test]
fn stale_stage_clean_up_of_one_unit_spares_a_live_directory_of_a_longer_named_unit() {
    let dir = ConfDir::new();
    dir.file("data.yaml", "v: 1\n");
    for unit in ["bird", "bird-v6"] {
        dir.template(&format!("{unit}.tera"), "{{ getv(key=\"/v\") }}\n")
            .resource(
                unit,
                &format!(
                    "[template]\nsrc = \"{unit}.tera\"\ndest = {:?}\nkeys = [\"/v\"]\n",
                    dir.dest(&format!("out/{unit}.conf"))
                ),
            );
    }
    let mut owner = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let live = dir.dest(&format!(
        "out/.confera-stage-bird-v6-{}-0000abcd",
        owner.id()
    ));
    fs::create_dir_all(&live).unwrap();
    let data = dir.path().join("data.yaml");
    crate::support::cmd::run(&[
        "--confdir",
        dir.arg(),
        "--backend",
        "file",
        "--file",
        data.to_str().unwrap(),
        "--onetime",
    ])
    .assert_success();
    let kept = live.exists();
    let _ = owner.kill();
    let _ = owner.wait();
    assert!(kept, "unit bird removed bird-v6's live staging directory");
}
