//! Benchmark 1: Propagation latency in watch mode: etcd put → destination renamed
//! (inotify) → SIGHUP received by a stand-in daemon, beside a bare
//! etcd-client watch of the same prefix in the same run (the floor).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::support::cmd::Daemon;
use crate::support::etcd::Etcd;
use crate::{Opts, Section};

/// The default `--wait` MIN, added to the target of the default-wait case.
const DEFAULT_WAIT_MIN_MS: f64 = 50.0;
/// Quiet time between two changes, so each is measured alone.
const GAP: Duration = Duration::from_millis(10);

pub fn run(opts: &Opts) -> Section {
    let changes = if opts.quick { 20 } else { 200 };
    let bulk = if opts.quick { 1_000 } else { 10_000 };
    let etcd = Etcd::start();
    let k = if bulk >= 1000 {
        format!("{}k", bulk / 1000)
    } else {
        bulk.to_string()
    };
    let mut cases = vec![Case::measure(
        &etcd,
        "no other keys",
        "/lat/a",
        Some("0ms:0ms"),
        changes,
    )];
    load(&etcd, &keys("/lat/other", bulk, 100));
    cases.push(Case::measure(
        &etcd,
        &format!("{k} keys in another prefix"),
        "/lat/b",
        Some("0ms:0ms"),
        changes,
    ));
    load(&etcd, &keys("/lat/c/data", bulk, 100));
    cases.push(Case::measure(
        &etcd,
        &format!("{k} keys in the watched prefix"),
        "/lat/c",
        Some("0ms:0ms"),
        changes,
    ));
    cases.push(Case::measure(
        &etcd,
        &format!("{k} keys in the watched prefix, default --wait (50ms:1s)"),
        "/lat/c",
        None,
        if opts.quick { 10 } else { 100 },
    ));
    report(&cases, changes)
}

struct Case {
    label: String,
    wait: String,
    wait_min_ms: f64,
    floor: Vec<f64>,
    rename: Vec<f64>,
    hup: Vec<f64>,
    /// rename observed → SIGHUP received.
    signal: Vec<f64>,
    /// In-process write + fsync + rename + fsync(dir) of the same bytes
    /// beside the destination: the floor of an atomic, durable commit.
    commit: Vec<f64>,
    error: Option<String>,
}

impl Case {
    fn measure(etcd: &Etcd, label: &str, prefix: &str, wait: Option<&str>, changes: usize) -> Case {
        eprintln!("latency: {label}");
        let dir = tempdir("latency");
        let obs = Observer::new();
        let recorder = HupRecorder::start(dir.path(), obs.tx.clone());
        let confdir = dir.path().join("confdir");
        let dest = dir.path().join("out/lat.conf");
        simple_confdir(
            &confdir,
            "lat",
            "{{ getv(key=\"/target\") }}\n",
            &dest,
            prefix,
            &format!("pid_file = \"{}\"\n", recorder.pid_file.display()),
        );
        let key = format!("{prefix}/target");
        etcd.put(&key, "initial");
        let _fs = FsWatch::start(&[dest.parent().unwrap().to_path_buf()], obs.tx.clone());
        let daemon = spawn_watcher(&confdir, &etcd.client_url, wait, "info");
        let mut case = Case {
            label: label.to_string(),
            wait: wait.unwrap_or("default (50ms:1s)").to_string(),
            wait_min_ms: if wait.is_some() {
                0.0
            } else {
                DEFAULT_WAIT_MIN_MS
            },
            floor: Vec::new(),
            rename: Vec::new(),
            hup: Vec::new(),
            signal: Vec::new(),
            commit: Vec::new(),
            error: None,
        };
        // The first render at start-up commits and signals once.
        let deadline = mono_ns() + 20_000_000_000;
        let (mut synced, mut hups) = (false, 0);
        while !(synced && hups >= 1) {
            match obs.next(deadline) {
                None => {
                    case.error = Some(format!(
                        "no initial render within 20 s; log:\n{}",
                        daemon.log()
                    ));
                    return case;
                }
                Some(Obs::Fs { path, .. }) if path == dest => synced = content_is(&dest, "initial"),
                Some(Obs::Hup { .. }) => hups += 1,
                _ => {}
            }
        }
        let floor_dir = dir.path().join("floor");
        std::fs::create_dir_all(&floor_dir).unwrap();
        let _bare = BareWatch::start(&etcd.endpoint(), prefix, obs.tx.clone());
        obs.drain();
        for i in 0..changes {
            let value = value_of(&format!("c{i:05}"), 100);
            std::thread::sleep(GAP);
            let t0 = mono_ns();
            etcd.put(&key, &value);
            let deadline = t0 + 10_000_000_000;
            let (mut w, mut r, mut h) = (None, None, None);
            while w.is_none() || r.is_none() || h.is_none() {
                match obs.next(deadline) {
                    None => {
                        case.error = Some(format!(
                            "change {i}: watch {w:?} rename {r:?} hup {h:?} after 10 s; log:\n{}",
                            daemon.log()
                        ));
                        return case;
                    }
                    Some(Obs::Watch {
                        at,
                        key: k,
                        value: v,
                    }) if k == key && v == value => w = Some(at),
                    Some(Obs::Fs { at, path })
                        if path == dest && r.is_none() && content_is(&dest, &value) =>
                    {
                        r = Some(at)
                    }
                    Some(Obs::Hup { at, .. }) if at >= t0 => h = Some(at),
                    _ => {}
                }
            }
            let (w, r, h) = (w.unwrap(), r.unwrap(), h.unwrap());
            case.floor.push(ms(w - t0));
            case.rename.push(ms(r - t0));
            case.hup.push(ms(h - t0));
            case.signal.push(ms(h.saturating_sub(r)));
            case.commit.push(commit_floor(&floor_dir, &value));
        }
        drop(daemon);
        drop(recorder);
        case
    }
}

/// Writes VALUE to a temp file in DIR, fsyncs it, renames it over
/// DIR/dest and fsyncs DIR, as an atomic durable commit must; returns ms.
fn commit_floor(dir: &Path, value: &str) -> f64 {
    use std::io::Write;
    let t0 = mono_ns();
    let tmp = dir.join(".dest.tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(value.as_bytes()).unwrap();
    f.write_all(b"\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, dir.join("dest")).unwrap();
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
    ms(mono_ns() - t0)
}

/// Spawns `confera --watch` on CONFDIR against NODE.
pub fn spawn_watcher(confdir: &Path, node: &str, wait: Option<&str>, level: &str) -> Daemon {
    let mut cmd = confera();
    cmd.arg("--confdir")
        .arg(confdir)
        .args(["--backend", "etcd", "--node", node, "--watch"])
        .args(["--log-level", level]);
    if let Some(w) = wait {
        cmd.args(["--wait", w]);
    }
    Daemon::spawn_cmd(cmd)
}

/// True when PATH holds exactly `value` and a newline.
pub fn content_is(path: &PathBuf, value: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.len() == value.len() + 1 && t.starts_with(value))
}

fn report(cases: &[Case], changes: usize) -> Section {
    let mut md = format!(
        "## 1. Propagation latency (watch mode)\n\n\
         etcd put → destination renamed (inotify via the `notify` crate on the destination's \
         directory, content verified) → SIGHUP received by a stand-in daemon (sigwait, \
         CLOCK_MONOTONIC). Floor: a bare etcd-client watch of the same prefix in the bench \
         process, same puts. {changes} sequential changes per case (fewer with the default \
         --wait), 10 ms apart; ~100-byte values; the template reads one key. Times in ms from \
         just before the put call. Commit floor: the bench itself writing the same bytes to a \
         temp file beside a file, fsync, rename over it, fsync of the directory (what an \
         atomic durable commit costs on this disk), once after each change.\n\n\
         | case | --wait | floor: bare watch median / p99 | dest renamed median / p99 | ratio | SIGHUP received median / p99 | ratio | rename→SIGHUP median | commit floor median | confera's own share: SIGHUP − floor − commit floor − MIN | target: SIGHUP ≤ 2×floor + MIN | met |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for c in cases {
        if let Some(e) = &c.error {
            md.push_str(&format!(
                "| {} | {} | failed: {} |||||||||| **no** |\n",
                c.label,
                c.wait,
                e.lines().next().unwrap_or_default()
            ));
            eprintln!("latency: {}: {e}", c.label);
            rows.push(json!({"case": c.label, "error": e}));
            continue;
        }
        let (f, r, h, s, k) = (
            summarize(&c.floor),
            summarize(&c.rename),
            summarize(&c.hup),
            summarize(&c.signal),
            summarize(&c.commit),
        );
        let target = 2.0 * f.median + c.wait_min_ms;
        let met = h.median <= target;
        md.push_str(&format!(
            "| {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2}× | {:.2} / {:.2} | {:.2}× | {:.2} | {:.2} | {:.2} | ≤ {:.2} | {} |\n",
            c.label,
            c.wait,
            f.median,
            f.p99,
            r.median,
            r.p99,
            ratio(r.median, f.median),
            h.median,
            h.p99,
            ratio(h.median, f.median),
            s.median,
            k.median,
            h.median - f.median - k.median - c.wait_min_ms,
            target,
            yes_no(met)
        ));
        rows.push(json!({
            "case": c.label, "wait": c.wait,
            "floor_ms": f.json(), "rename_ms": r.json(), "sighup_ms": h.json(),
            "rename_to_sighup_ms": s.json(), "commit_floor_ms": k.json(),
            "own_share_ms": r3(h.median - f.median - k.median - c.wait_min_ms),
            "ratio_rename_median": ratio(r.median, f.median),
            "ratio_sighup_median": ratio(h.median, f.median),
            "target_ms": r3(target), "met": met,
        }));
    }
    Section {
        name: "latency",
        markdown: md,
        json: json!({"bench": "latency", "cases": Value::Array(rows)}),
    }
}
