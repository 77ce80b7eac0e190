//! Benchmark 2: Cost per change in watch mode, at two store sizes: etcd range reads,
//! CPU time, TCP bytes received and bytes read per change, beside an
//! `etcdctl watch` of the same prefix measured the same way (the floor).
//! None of them may grow with the number of keys in the watched prefix.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::latency::{content_is, spawn_watcher};
use crate::support::cmd::{stop_child, wait_until, Daemon};
use crate::support::etcd::Etcd;
use crate::{Opts, Section};

const PREFIX: &str = "/cost";

pub fn run(opts: &Opts) -> Section {
    let sizes: &[usize] = if opts.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 25_000, 100_000]
    };
    let changes = if opts.quick { 30 } else { 200 };
    let etcd = Etcd::start();
    let mut loaded = 0;
    let mut results = Vec::new();
    for &size in sizes {
        let all = keys(&format!("{PREFIX}/data"), size, 100);
        load(&etcd, &all[loaded..]);
        loaded = size;
        eprintln!("cost: {size} keys");
        results.push(measure(&etcd, size, changes));
    }
    report(&results, changes)
}

/// An `etcdctl watch --prefix` whose output goes to a file.
pub struct EtcdctlWatch {
    child: Child,
    pub out: std::path::PathBuf,
}

impl EtcdctlWatch {
    pub fn start(endpoint: &str, prefix: &str, dir: &Path) -> EtcdctlWatch {
        let out = dir.join("etcdctl-watch.out");
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("etcdctl")
            .args(["--endpoints", endpoint, "watch", "--prefix", prefix])
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl watch");
        EtcdctlWatch { child, out }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn saw(&self, value: &str) -> bool {
        std::fs::read_to_string(&self.out).is_ok_and(|t| t.contains(value))
    }

    /// Waits until the watch relays a put of KEY (it may start watching
    /// after a first put, so put again every 200 ms); the last value put
    /// stays in KEY. False after 10 s.
    pub fn wait_ready(&self, etcd: &Etcd, key: &str, value: &str) -> bool {
        for attempt in 0..50 {
            let v = format!("{value}-{attempt}");
            etcd.put(key, &v);
            if wait_until(Duration::from_millis(200), || self.saw(&v)) {
                etcd.put(key, value);
                return wait_until(Duration::from_secs(5), || self.saw(value));
            }
        }
        false
    }
}

impl Drop for EtcdctlWatch {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::ZERO);
    }
}

/// Counters of etcd, confera and the etcdctl floor at one moment.
#[derive(Clone, Copy)]
struct Counters {
    range: f64,
    txn: f64,
    confera: ProcSample,
    floor: ProcSample,
    confera_tcp: TcpBytes,
    floor_tcp: TcpBytes,
}

fn counters(etcd: &Etcd, confera: i32, floor: i32) -> Counters {
    let tcp = tcp_bytes(&[confera, floor]);
    Counters {
        range: etcd.metric("grpc_server_handled_total", &[r#"grpc_method="Range""#]),
        txn: etcd.metric("grpc_server_handled_total", &[r#"grpc_method="Txn""#]),
        confera: proc_sample(confera).expect("confera is running"),
        floor: proc_sample(floor).expect("etcdctl is running"),
        confera_tcp: tcp[&confera],
        floor_tcp: tcp[&floor],
    }
}

struct Result {
    size: usize,
    startup_ms: f64,
    startup_range: f64,
    startup_txn: f64,
    range_per_change: f64,
    txn_per_change: f64,
    cpu_ms: f64,
    cpu_ns_live: f64,
    tcp_rx: f64,
    rchar: f64,
    ctx: f64,
    floor_cpu_ms: f64,
    floor_cpu_ns_live: f64,
    floor_tcp_rx: f64,
    floor_ctx: f64,
    rss_kb: u64,
    error: Option<String>,
}

fn measure(etcd: &Etcd, size: usize, changes: usize) -> Result {
    let mut result = Result {
        size,
        startup_ms: 0.0,
        startup_range: 0.0,
        startup_txn: 0.0,
        range_per_change: 0.0,
        txn_per_change: 0.0,
        cpu_ms: 0.0,
        cpu_ns_live: 0.0,
        tcp_rx: 0.0,
        rchar: 0.0,
        ctx: 0.0,
        floor_cpu_ms: 0.0,
        floor_cpu_ns_live: 0.0,
        floor_tcp_rx: 0.0,
        floor_ctx: 0.0,
        rss_kb: 0,
        error: None,
    };
    let dir = tempdir("cost");
    let confdir = dir.path().join("confdir");
    let dest = dir.path().join("out/cost.conf");
    simple_confdir(
        &confdir,
        "cost",
        "{{ getv(key=\"/target\") }}\n",
        &dest,
        PREFIX,
        "",
    );
    let key = format!("{PREFIX}/target");
    let floor = EtcdctlWatch::start(&etcd.endpoint(), PREFIX, dir.path());
    let initial = format!("initial-{size}");
    if !floor.wait_ready(etcd, &key, &initial) {
        result.error = Some("etcdctl watch saw nothing".into());
        return result;
    }
    let obs = Observer::new();
    let _fs = FsWatch::start(&[dest.parent().unwrap().to_path_buf()], obs.tx.clone());
    let (range0, txn0) = (
        etcd.metric("grpc_server_handled_total", &[r#"grpc_method="Range""#]),
        etcd.metric("grpc_server_handled_total", &[r#"grpc_method="Txn""#]),
    );
    let t0 = mono_ns();
    let daemon = spawn_watcher(&confdir, &etcd.client_url, Some("0ms:0ms"), "info");
    match wait_dest(&obs, &dest, &initial, 60) {
        Some(at) => result.startup_ms = ms(at - t0),
        None => {
            result.error = Some(format!("no initial render; log:\n{}", daemon.log()));
            return result;
        }
    }
    result.startup_range =
        etcd.metric("grpc_server_handled_total", &[r#"grpc_method="Range""#]) - range0;
    result.startup_txn = etcd.metric("grpc_server_handled_total", &[r#"grpc_method="Txn""#]) - txn0;
    let warmup = 3;
    let mut n = 0;
    let step = |n: usize| -> Option<String> {
        let value = value_of(&format!("s{size}-c{n:05}"), 100);
        etcd.put(&key, &value);
        if wait_dest(&obs, &dest, &value, 10).is_none() {
            return Some(format!("change {n} not rendered; log:\n{}", daemon.log()));
        }
        None
    };
    for _ in 0..warmup {
        if let Some(e) = step(n) {
            result.error = Some(e);
            return result;
        }
        n += 1;
    }
    let committed = |d: &Daemon| d.log_count("committed dest=");
    let settle = |d: &Daemon, n: usize, last: &str| {
        wait_until(Duration::from_secs(10), || {
            committed(d) > n && floor.saw(last)
        })
    };
    settle(
        &daemon,
        n,
        &value_of(&format!("s{size}-c{:05}", n - 1), 100),
    );
    let before = counters(etcd, daemon.pid(), floor.pid());
    for _ in 0..changes {
        std::thread::sleep(Duration::from_millis(5));
        if let Some(e) = step(n) {
            result.error = Some(e);
            return result;
        }
        n += 1;
    }
    let last = value_of(&format!("s{size}-c{:05}", n - 1), 100);
    if !settle(&daemon, n, &last) {
        result.error = Some("the last change was not logged".into());
        return result;
    }
    let after = counters(etcd, daemon.pid(), floor.pid());
    let per = |a: f64, b: f64| (a - b) / changes as f64;
    result.range_per_change = per(after.range, before.range);
    result.txn_per_change = per(after.txn, before.txn);
    result.cpu_ms = per(after.confera.cpu_ms(), before.confera.cpu_ms());
    result.cpu_ns_live = per(
        after.confera.cpu_ns_live as f64,
        before.confera.cpu_ns_live as f64,
    );
    result.tcp_rx = per(
        after.confera_tcp.received as f64,
        before.confera_tcp.received as f64,
    );
    result.rchar = per(after.confera.rchar as f64, before.confera.rchar as f64);
    result.ctx = per(
        after.confera.ctx_switches as f64,
        before.confera.ctx_switches as f64,
    );
    result.floor_cpu_ms = per(after.floor.cpu_ms(), before.floor.cpu_ms());
    result.floor_cpu_ns_live = per(
        after.floor.cpu_ns_live as f64,
        before.floor.cpu_ns_live as f64,
    );
    result.floor_tcp_rx = per(
        after.floor_tcp.received as f64,
        before.floor_tcp.received as f64,
    );
    result.floor_ctx = per(
        after.floor.ctx_switches as f64,
        before.floor.ctx_switches as f64,
    );
    result.rss_kb = after.confera.rss_kb;
    result
}

/// Waits (at most `secs`) for inotify to report DEST holding `value`;
/// returns when it was seen.
pub fn wait_dest(obs: &Observer, dest: &std::path::PathBuf, value: &str, secs: u64) -> Option<u64> {
    let deadline = mono_ns() + secs * 1_000_000_000;
    loop {
        match obs.next(deadline)? {
            Obs::Fs { at, path } if &path == dest && content_is(dest, value) => return Some(at),
            _ => {}
        }
    }
}

fn report(results: &[Result], changes: usize) -> Section {
    let mut md = format!(
        "## 2. Cost per change (watch mode)\n\n\
         One watcher on a prefix holding N keys of ~100 bytes; the template reads one key, which \
         {changes} sequential changes update (after 3 warm-up changes). Range reads: etcd's \
         `grpc_server_handled_total{{grpc_method=\"Range\"}}` (and Txn, which confera's snapshot \
         uses). CPU: utime+stime from /proc/PID/stat (10 ms ticks) and the sum of the live \
         threads' schedstat (ns). TCP bytes: `bytes_received` of the process's established \
         sockets (kernel tcp_info via `ss -tinp`). rchar: /proc/PID/io (files and pipes; socket \
         recv is not counted there). Floor: an `etcdctl watch --prefix` of the same prefix \
         (stdout to a file), measured the same way in the same run.\n\n\
         | keys | start-up to first file (ms) | Range+Txn at start-up | Range reads / change (target 0) | Txn / change | CPU ms / change (ticks; schedstat) | floor CPU ms / change (ticks; schedstat) | ratio (schedstat) | TCP bytes rx / change | floor TCP bytes rx / change | ratio | rchar / change | ctx switches / change (floor) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for r in results {
        if let Some(e) = &r.error {
            md.push_str(&format!(
                "| {} | failed: {} ||||||||||||\n",
                r.size,
                e.lines().next().unwrap_or_default()
            ));
            eprintln!("cost: {}: {e}", r.size);
            rows.push(json!({"keys": r.size, "error": e}));
            continue;
        }
        md.push_str(&format!(
            "| {} | {:.1} | {} + {} | {:.3} | {:.3} | {:.3}; {:.3} | {:.3}; {:.3} | {:.2}× | {:.0} | {:.0} | {:.2}× | {:.0} | {:.1} ({:.1}) |\n",
            r.size,
            r.startup_ms,
            r.startup_range,
            r.startup_txn,
            r.range_per_change,
            r.txn_per_change,
            r.cpu_ms,
            r.cpu_ns_live / 1e6,
            r.floor_cpu_ms,
            r.floor_cpu_ns_live / 1e6,
            ratio(r.cpu_ns_live, r.floor_cpu_ns_live),
            r.tcp_rx,
            r.floor_tcp_rx,
            ratio(r.tcp_rx, r.floor_tcp_rx),
            r.rchar,
            r.ctx,
            r.floor_ctx,
        ));
        rows.push(json!({
            "keys": r.size, "startup_ms": r3(r.startup_ms),
            "startup_range": r.startup_range, "startup_txn": r.startup_txn,
            "range_per_change": r3(r.range_per_change), "txn_per_change": r3(r.txn_per_change),
            "cpu_ms_per_change_ticks": r3(r.cpu_ms), "cpu_ms_per_change_schedstat": r3(r.cpu_ns_live / 1e6),
            "floor_cpu_ms_per_change_ticks": r3(r.floor_cpu_ms), "floor_cpu_ms_per_change_schedstat": r3(r.floor_cpu_ns_live / 1e6),
            "tcp_rx_per_change": r3(r.tcp_rx), "floor_tcp_rx_per_change": r3(r.floor_tcp_rx),
            "rchar_per_change": r3(r.rchar), "ctx_per_change": r3(r.ctx), "floor_ctx_per_change": r3(r.floor_ctx),
            "rss_kb": r.rss_kb,
        }));
    }
    let ok: Vec<&Result> = results.iter().filter(|r| r.error.is_none()).collect();
    let mut growth = Value::Null;
    if let [small, .., large] = ok.as_slice() {
        let g = |a: f64, b: f64| ratio(a, b);
        let cpu = g(large.cpu_ns_live, small.cpu_ns_live);
        let tcp = g(large.tcp_rx, small.tcp_rx);
        let flat = cpu <= 1.5 && tcp <= 1.5 && large.range_per_change == 0.0;
        md.push_str(&format!(
            "\nGrowth from {} to {} keys: CPU per change {:.2}×, TCP bytes per change {:.2}×, \
             rchar per change {:.2}×; Range reads per change {} → {}. Target: 0 Range reads per \
             change and no growth with the store (≤ 1.5× allowing for noise): {}.\n",
            small.size,
            large.size,
            cpu,
            tcp,
            g(large.rchar, small.rchar),
            small.range_per_change,
            large.range_per_change,
            yes_no(flat)
        ));
        growth = json!({"cpu": cpu, "tcp": tcp, "flat": flat});
    }
    Section {
        name: "cost",
        markdown: md,
        json: json!({"bench": "cost", "changes": changes, "sizes": Value::Array(rows), "growth": growth}),
    }
}
