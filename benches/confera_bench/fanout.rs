//! Benchmark 8: Fan-out: many confera watchers against one etcd, (a) directly and
//! (b) through one `etcd grpc-proxy`: the watchers and watch streams etcd
//! itself holds (its own gauges, on etcd's metrics URL), etcd's and the
//! proxy's CPU, and how long one put takes to reach every watcher's
//! destination. The proxy's own `/metrics` is not read: in etcd 3.4.23 it
//! relays etcd's metrics (etcd's start time and memory), so its
//! `etcd_grpc_proxy_*` series are etcd's unused copies, not the proxy's.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::support::cmd::stop_child;
use crate::support::etcd::{Etcd, GrpcProxy};
use crate::{Opts, Section};

const KEY: &str = "/fan/value";
/// Each watcher runs as its own uid: inotify instances are limited per user
/// (fs.inotify.max_user_instances, 128 here), as they would be per host.
const FIRST_UID: u32 = 61_000;

pub fn run(opts: &Opts) -> Section {
    let n = if opts.quick { 20 } else { 200 };
    let puts = if opts.quick { 5 } else { 20 };
    let etcd = Etcd::start();
    let direct = phase(&etcd, None, n, puts);
    let proxy = GrpcProxy::start(&etcd);
    let via = phase(&etcd, Some(&proxy), n, puts);
    drop(proxy);
    report(&[direct, via], n, puts)
}

/// The watchers of one phase, killed by pid on Drop.
struct Fleet {
    children: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            stop_child(c, Duration::ZERO);
        }
    }
}

#[derive(Default)]
struct Phase {
    label: String,
    watchers: usize,
    startup_s: f64,
    etcd_watchers: f64,
    etcd_watch_streams: f64,
    /// Every watcher's latency for every put (ms).
    each: Vec<f64>,
    /// Per put: until the last watcher had it (ms).
    all: Vec<f64>,
    etcd_cpu_ms_per_put: f64,
    proxy_cpu_ms_per_put: Option<f64>,
    confera_cpu_ms_per_put: f64,
    confera_rss_mb_avg: f64,
    error: Option<String>,
}

/// The pid of the process listening on 127.0.0.1:PORT (from `ss -ltnp`).
fn listener_pid(url: &str) -> Option<i32> {
    let port = url.rsplit(':').next()?;
    let out = Command::new("ss").args(["-ltnpH"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port} ")))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|p| p.split(',').next())
        .and_then(|p| p.parse().ok())
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            chown_tree(&e.path(), uid);
        }
    }
}

fn phase(etcd: &Etcd, proxy: Option<&GrpcProxy>, n: usize, puts: usize) -> Phase {
    let label = if proxy.is_some() {
        "through one grpc-proxy"
    } else {
        "direct"
    };
    eprintln!("fanout: {n} watchers {label}");
    let mut result = Phase {
        label: label.to_string(),
        watchers: n,
        ..Phase::default()
    };
    let node = proxy.map_or(etcd.client_url.clone(), |p| p.url.clone());
    let root = tempdir("fanout");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let initial = format!("initial-{label}");
    etcd.put(KEY, &initial);
    let mut dests: HashMap<PathBuf, usize> = HashMap::new();
    let mut out_dirs = Vec::new();
    for i in 0..n {
        let dir = root.path().join(format!("w{i:03}"));
        let dest = dir.join("out/fan.conf");
        simple_confdir(
            &dir.join("confdir"),
            "fan",
            "{{ getv(key=\"/value\") }}\n",
            &dest,
            "/fan",
            "",
        );
        chown_tree(&dir, FIRST_UID + i as u32);
        out_dirs.push(dest.parent().unwrap().to_path_buf());
        dests.insert(dest, i);
    }
    let obs = Observer::new();
    let _fs = FsWatch::start(&out_dirs, obs.tx.clone());
    // Waits until every destination holds VALUE; the latency of each.
    let collect = |value: &str, t0: u64, secs: u64| -> Result<Vec<f64>, usize> {
        let mut seen: Vec<Option<f64>> = vec![None; n];
        let mut missing = n;
        let deadline = mono_ns() + secs * 1_000_000_000;
        while missing > 0 {
            match obs.next(deadline) {
                None => return Err(missing),
                Some(Obs::Fs { at, path }) => {
                    if let Some(&i) = dests.get(&path) {
                        if seen[i].is_none() && crate::latency::content_is(&path, value) {
                            seen[i] = Some(ms(at.saturating_sub(t0)));
                            missing -= 1;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(seen.into_iter().map(Option::unwrap).collect())
    };
    let t_start = mono_ns();
    let mut fleet = Fleet {
        children: Vec::new(),
    };
    for i in 0..n {
        let dir = root.path().join(format!("w{i:03}"));
        let log = std::fs::File::create(dir.join("stderr")).unwrap();
        let uid = FIRST_UID + i as u32;
        let child = confera()
            .arg("--confdir")
            .arg(dir.join("confdir"))
            .args(["--backend", "etcd", "--node", &node, "--watch"])
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn a confera watcher");
        fleet.children.push(child);
    }
    if let Err(missing) = collect(&initial, t_start, 180) {
        let log = std::fs::read_to_string(root.path().join("w000/stderr")).unwrap_or_default();
        result.error = Some(format!(
            "{missing} of {n} watchers never rendered; w000's log:\n{log}"
        ));
        return result;
    }
    result.startup_s = ms(mono_ns() - t_start) / 1e3;
    // Let every watch settle once every watcher has caught up.
    std::thread::sleep(Duration::from_millis(500));
    // etcd's own gauges, from etcd's metrics URL (never the proxy's).
    result.etcd_watchers = etcd.metric("etcd_debugging_mvcc_watcher_total", &[])
        + etcd.metric("etcd_mvcc_watcher_total", &[])
        + 0.0;
    result.etcd_watch_streams = etcd.metric("etcd_debugging_mvcc_watch_stream_total", &[]) + 0.0;
    let etcd_pid = etcd.pid().unwrap();
    let proxy_pid = proxy.and_then(|p| listener_pid(&p.url));
    let pids: Vec<i32> = fleet.children.iter().map(|c| c.id() as i32).collect();
    let cpu = |pid: i32| proc_sample(pid).map_or(0.0, |s| s.cpu_ms());
    let fleet_cpu = || pids.iter().map(|p| cpu(*p)).sum::<f64>();
    let (etcd0, proxy0, fleet0) = (cpu(etcd_pid), proxy_pid.map(cpu), fleet_cpu());
    for p in 0..puts {
        std::thread::sleep(Duration::from_millis(200));
        let value = value_of(&format!("p{p:03}-{label}"), 100);
        let t0 = mono_ns();
        etcd.put(KEY, &value);
        match collect(&value, t0, 60) {
            Ok(each) => {
                result.all.push(each.iter().cloned().fold(0.0, f64::max));
                result.each.extend(each);
            }
            Err(missing) => {
                result.error = Some(format!("put {p}: {missing} of {n} watchers missed it"));
                return result;
            }
        }
    }
    // Let the last renders' logging and drift checks finish.
    std::thread::sleep(Duration::from_millis(300));
    result.etcd_cpu_ms_per_put = (cpu(etcd_pid) - etcd0) / puts as f64;
    result.proxy_cpu_ms_per_put = proxy_pid
        .zip(proxy0)
        .map(|(pid, c0)| (cpu(pid) - c0) / puts as f64);
    result.confera_cpu_ms_per_put = (fleet_cpu() - fleet0) / puts as f64;
    result.confera_rss_mb_avg = pids
        .iter()
        .filter_map(|p| proc_sample(*p))
        .map(|s| s.rss_kb as f64 / 1024.0)
        .sum::<f64>()
        / n as f64;
    drop(fleet);
    result
}

fn report(phases: &[Phase], n: usize, puts: usize) -> Section {
    let mut md = format!(
        "## 8. Fan-out\n\n\
         {n} confera watchers on this machine (each its own uid, confdir and destination \
         directory; default settings), against one etcd, directly and then through one `etcd \
         grpc-proxy`; {puts} puts of one key that every watcher renders, 200 ms apart. \
         Latency: from just before the put to each destination's rename (inotify, content \
         verified). Watchers and streams: etcd's own `etcd_debugging_mvcc_watcher_total` and \
         `etcd_debugging_mvcc_watch_stream_total` gauges on etcd's metrics URL (the proxy's \
         `/metrics` relays etcd's in etcd 3.4.23, so it is not read). CPU from /proc/PID/stat \
         over the puts.\n\n\
         | path | start-up of all (s) | watchers on etcd | watch streams on etcd | each watcher: p50 / p99 (ms) | last of {n}: median / p99 (ms) | etcd CPU ms / put | proxy CPU ms / put | all confera CPU ms / put | confera RSS MB each |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for p in phases {
        if let Some(e) = &p.error {
            md.push_str(&format!(
                "| {} | failed: {} |||||||||\n",
                p.label,
                e.lines().next().unwrap_or_default()
            ));
            eprintln!("fanout: {}: {e}", p.label);
            rows.push(json!({"path": p.label, "error": e}));
            continue;
        }
        let (each, all) = (summarize(&p.each), summarize(&p.all));
        md.push_str(&format!(
            "| {} | {:.1} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} | {} | {:.1} | {:.1} |\n",
            p.label,
            p.startup_s,
            p.etcd_watchers,
            p.etcd_watch_streams,
            each.median,
            each.p99,
            all.median,
            all.p99,
            p.etcd_cpu_ms_per_put,
            p.proxy_cpu_ms_per_put.map_or("-".into(), |c| format!("{c:.1}")),
            p.confera_cpu_ms_per_put,
            p.confera_rss_mb_avg,
        ));
        rows.push(json!({
            "path": p.label, "watchers": p.watchers, "startup_s": r3(p.startup_s),
            "etcd_watchers": p.etcd_watchers, "etcd_watch_streams": p.etcd_watch_streams,
            "each_ms": each.json(), "last_of_all_ms": all.json(),
            "etcd_cpu_ms_per_put": r3(p.etcd_cpu_ms_per_put),
            "proxy_cpu_ms_per_put": p.proxy_cpu_ms_per_put.map(r3),
            "confera_cpu_ms_per_put": r3(p.confera_cpu_ms_per_put),
            "confera_rss_mb_each": r3(p.confera_rss_mb_avg),
        }));
    }
    Section {
        name: "fanout",
        markdown: md,
        json: json!({"bench": "fanout", "watchers": n, "puts": puts, "phases": Value::Array(rows)}),
    }
}
