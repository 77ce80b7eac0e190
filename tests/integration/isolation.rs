//! One resource never stalls another (issue 12): each resource's pipeline
//! and each reload run on their own, renders have a time and size limit,
//! retries back off from when the failed work finished, reloads of one
//! daemon still coalesce (and are keyed by destination when they name it),
//! and SIGTERM ends everything within a few seconds, leaving no command
//! behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::cmd::{reserve_ports, wait_until, Daemon};
use crate::support::etcd::Etcd;
use crate::watch::{Site, DEADLINE, WAIT};

const VALUE: &str = r#"v={{ getv(key="/KEY/v") }}
"#;

/// A template printing `/NAME/v`.
fn value_template(name: &str) -> String {
    VALUE.replace("KEY", name)
}

/// The pids a command line wrote into FILE (one per line).
fn pids(file: &Path) -> Vec<i32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// True while a process with that pid exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !matches!(
            stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]),
            Some("Z" | "X")
        ),
    }
}

pub(crate) fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

fn status(addr: &str) -> Value {
    let (_, body) = get(addr, "/status").expect("confera serves /status");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn a_hanging_reload_and_a_hanging_check_never_delay_another_resource_and_sigterm_kills_them() {
    let etcd = Etcd::start();
    etcd.put("/a/v", "1");
    etcd.put("/b/v", "0");
    etcd.put("/c/v", "1");
    let site = Site::new();
    let hung = site.dir.path().join("hung-pids");
    let hang = format!("echo $$ >> {}; exec sleep 1000", hung.display());
    // A's reload never exits; C's check never exits; both default to 30 s.
    site.unit(
        "a",
        &["/a"],
        &value_template("a"),
        &format!("reload_cmd = {hang:?}"),
    );
    site.unit("b", &["/b"], &value_template("b"), "");
    site.unit(
        "c",
        &["/c"],
        &value_template("c"),
        &format!("check_cmd = {hang:?}"),
    );
    let mut confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);

    site.wait_for_output("b", "v=0\n");
    assert!(
        wait_until(DEADLINE, || pids(&hung).len() == 2),
        "A's reload and C's check did not both start: {:?}",
        pids(&hung)
    );
    for i in 1..=5 {
        let put = Instant::now();
        etcd.put("/b/v", &i.to_string());
        let want = format!("v={i}\n");
        assert!(
            wait_until(Duration::from_secs(2), || site.output("b").as_deref()
                == Some(want.as_str())),
            "change {i} to B took more than 2 s (A and C hang)\n{}",
            confera.log()
        );
        std::thread::sleep(Duration::from_secs(1).saturating_sub(put.elapsed()));
    }
    assert_eq!(
        site.output("c"),
        None,
        "C's check never passed: nothing written"
    );

    let asked = Instant::now();
    assert_eq!(confera.terminate(), 0);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        asked.elapsed()
    );
    for pid in pids(&hung) {
        assert!(
            wait_until(Duration::from_secs(1), || !alive(pid)),
            "command {pid} outlived confera"
        );
    }
    let stages: Vec<PathBuf> = fs::read_dir(site.dir.dest("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".confera-stage-"))
        .collect();
    assert!(stages.is_empty(), "staging directories left: {stages:?}");
}

/// Quadratic in the data value: n=20000 is 400 million iterations.
const SLOW: &str = r#"{% set n = getv(key="/slow/n") | int %}{% for i in range(end=n) %}{% for j in range(end=n) %}.{% endfor %}{% endfor %}
"#;

#[test]
fn a_render_past_its_time_limit_is_abandoned_reported_and_retried_only_on_a_change() {
    let etcd = Etcd::start();
    etcd.put("/slow/n", "3");
    etcd.put("/fast/v", "0");
    let site = Site::new();
    site.unit("slow", &["/slow"], SLOW, r#"render_timeout = "500ms""#);
    site.unit("fast", &["/fast"], &value_template("fast"), "");
    let port = reserve_ports(1);
    let addr = format!("127.0.0.1:{}", port.ports()[0]);
    let confera = site.watch_etcd(
        &etcd.client_url,
        WAIT,
        &["--metrics-addr", &addr, "--stuck-after", "2s"],
    );
    site.wait_for_output("slow", ".........\n");
    site.wait_for_output("fast", "v=0\n");
    assert!(wait_until(DEADLINE, || get(&addr, "/healthz")
        .is_some_and(|(s, _)| s == 200)));

    etcd.put("/slow/n", "20000");
    assert!(
        confera.wait_for_log("render abandoned", DEADLINE),
        "the long render was not abandoned\n{}",
        confera.log()
    );
    for i in 1..=3 {
        etcd.put("/fast/v", &i.to_string());
        site.wait_for_output("fast", &format!("v={i}\n"));
    }
    assert_eq!(
        site.output("slow").as_deref(),
        Some(".........\n"),
        "the old file stays"
    );
    let report = status(&addr);
    let slow = &report["resources"]["slow"];
    assert_eq!(slow["stuck"], true, "{report}");
    assert!(
        slow["last_error"].as_str().unwrap().contains("time limit"),
        "{report}"
    );
    let (code, reason) = get(&addr, "/healthz").unwrap();
    assert_eq!(code, 503, "{reason}");
    assert!(reason.contains("slow"), "{reason}");
    // Not retried with backoff: parked until its data changes.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        confera.log_count("render abandoned"),
        1,
        "{}",
        confera.log()
    );

    etcd.put("/slow/n", "2");
    site.wait_for_output("slow", "....\n");
    assert!(wait_until(DEADLINE, || get(&addr, "/healthz")
        .is_some_and(|(s, _)| s == 200)));
}

#[test]
fn a_render_past_its_output_limit_is_abandoned_and_the_old_file_stays() {
    let etcd = Etcd::start();
    etcd.put("/slow/n", "3");
    let site = Site::new();
    site.unit("slow", &["/slow"], SLOW, "max_output = 1000");
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("slow", ".........\n");

    etcd.put("/slow/n", "2000");
    assert!(
        confera.wait_for_log("output size limit of 1000 bytes", DEADLINE),
        "{}",
        confera.log()
    );
    assert_eq!(site.output("slow").as_deref(), Some(".........\n"));
}

#[test]
fn failing_checks_retry_with_backoff_counted_from_when_they_finished() {
    let etcd = Etcd::start();
    etcd.put("/a/v", "1");
    etcd.put("/b/v", "1");
    let site = Site::new();
    let runs = site.dir.path().join("runs");
    // Each check takes a second and fails.
    let check = format!(
        "date +%s.%N >> {}-$(basename {{{{dest}}}}); sleep 1; exit 1",
        runs.display()
    );
    site.unit(
        "a",
        &["/a"],
        &value_template("a"),
        &format!("check_cmd = {check:?}"),
    );
    site.unit(
        "b",
        &["/b"],
        &value_template("b"),
        &format!("check_cmd = {check:?}"),
    );
    let mut confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);

    let starts = |name: &str| -> Vec<f64> {
        fs::read_to_string(format!("{}-{name}.conf", runs.display()))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || starts("a").len() >= 4
            && starts("b").len() >= 4),
        "{}",
        confera.log()
    );
    for name in ["a", "b"] {
        let s = starts(name);
        for (k, pair) in s.windows(2).take(3).enumerate() {
            // The pause after a one-second check is at least the backoff of
            // attempt k+1: 0.5 s, 1 s, 2 s (jitter only adds).
            let pause = pair[1] - pair[0] - 1.0;
            let backoff = 0.5 * f64::from(1u32 << k);
            assert!(
                pause >= backoff - 0.05,
                "{name}: retry {} came {pause:.2} s after the failed check ended, want >= {backoff} s: {s:?}",
                k + 1
            );
        }
    }
    let asked = Instant::now();
    assert_eq!(confera.terminate(), 0);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn units_sharing_a_reload_that_names_the_destination_are_reloaded_once_per_destination() {
    let etcd = Etcd::start();
    etcd.put("/a/v", "1");
    etcd.put("/b/v", "1");
    let site = Site::new();
    let log = site.dir.path().join("reloads");
    let reload = format!("echo {{{{dest}}}} >> {}", log.display());
    for name in ["a", "b"] {
        site.unit(
            name,
            &[&format!("/{name}")],
            &value_template(name),
            &format!("reload_cmd = {reload:?}"),
        );
    }
    let _confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("a", "v=1\n");
    site.wait_for_output("b", "v=1\n");
    let reloaded = || {
        let mut lines: Vec<String> = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let want = vec![
        site.dest("a").display().to_string(),
        site.dest("b").display().to_string(),
    ];
    assert!(
        wait_until(DEADLINE, || reloaded() == want),
        "reloads named {:?}, want {want:?}",
        reloaded()
    );
}

#[test]
fn units_sharing_a_plain_reload_still_coalesce_into_one_per_batch() {
    let etcd = Etcd::start();
    etcd.put("/a/v", "1");
    etcd.put("/b/v", "1");
    let site = Site::new();
    site.unit("a", &["/a"], &value_template("a"), "");
    site.unit("b", &["/b"], &value_template("b"), "");
    let confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    site.wait_for_output("a", "v=1\n");
    site.wait_for_output("b", "v=1\n");
    site.wait_for_hups(1);
    crate::watch::barrier(&confera, || etcd.put("/a/unused", "x"));
    assert_eq!(site.daemon.hups(), 1, "one SIGHUP for the batch of both");
}

#[test]
fn sigterm_while_a_render_runs_away_exits_within_seconds() {
    let etcd = Etcd::start();
    etcd.put("/slow/n", "20000");
    let site = Site::new();
    // Far within the default 10 s render limit.
    site.unit("slow", &["/slow"], SLOW, "");
    let mut confera = site.watch_etcd(&etcd.client_url, WAIT, &[]);
    assert!(confera.wait_for_log("watching etcd", DEADLINE));
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    confera.signal(Signal::SIGTERM);
    let code = confera.wait_exit(Duration::from_secs(5));
    assert_eq!(
        code,
        Some(0),
        "took {:?}\n{}",
        asked.elapsed(),
        confera.log()
    );
}

/// Longer values are refused at start (exit 2, see `cli::durations_too_long_
/// for_the_clock_are_exit_2_naming_the_setting_not_a_panic`); the longest
/// accepted ones run.
#[test]
fn the_longest_interval_and_wait_accepted_never_panic() {
    let etcd = Etcd::start();
    etcd.put("/a/v", "1");
    let site = Site::new();
    site.unit("a", &["/a"], &value_template("a"), "");
    let mut confera: Daemon = site.watch_etcd(
        &etcd.client_url,
        "1ms:31536000s",
        &["--interval", "31536000"],
    );
    site.wait_for_output("a", "v=1\n");
    etcd.put("/a/v", "2");
    site.wait_for_output("a", "v=2\n");
    assert_eq!(confera.terminate(), 0, "{}", confera.log());
    assert!(!confera.log().contains("panicked"), "{}", confera.log());
}
