//! Benchmark 4: Idle cost: CPU and context switches per second of a synced watcher
//! that receives no change, beside an idle `etcdctl watch` (the floor).

use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::cost::{wait_dest, EtcdctlWatch};
use crate::latency::spawn_watcher;
use crate::support::cmd::wait_until;
use crate::support::etcd::Etcd;
use crate::{Opts, Section};

pub fn run(opts: &Opts) -> Section {
    let window = Duration::from_secs(if opts.quick { 5 } else { 30 });
    let etcd = Etcd::start();
    load(&etcd, &keys("/idle/data", 1_000, 100));
    let dir = tempdir("idle");
    let confdir = dir.path().join("confdir");
    let dest = dir.path().join("out/idle.conf");
    simple_confdir(
        &confdir,
        "idle",
        "{{ getv(key=\"/target\") }}\n",
        &dest,
        "/idle",
        "",
    );
    let floor = EtcdctlWatch::start(&etcd.endpoint(), "/idle", dir.path());
    let floor_ready = floor.wait_ready(&etcd, "/idle/target", "ready");
    let obs = Observer::new();
    let _fs = FsWatch::start(&[dest.parent().unwrap().to_path_buf()], obs.tx.clone());
    let daemon = spawn_watcher(&confdir, &etcd.client_url, None, "info");
    let synced = wait_dest(&obs, &dest, "ready", 30).is_some();
    // One change through both, so both are past their start-up.
    etcd.put("/idle/target", "go");
    let ready = floor_ready
        && synced
        && wait_dest(&obs, &dest, "go", 10).is_some()
        && wait_until(Duration::from_secs(10), || floor.saw("go"));
    if !ready {
        let log = daemon.log();
        eprintln!("idle: setup failed; log:\n{log}");
        return Section {
            name: "idle",
            markdown: format!(
                "## 4. Idle cost\n\nfailed: the watcher did not sync\n\n```\n{log}\n```\n"
            ),
            json: json!({"bench": "idle", "error": log}),
        };
    }
    // Let the post-commit work (logs, drift check) finish before the window.
    std::thread::sleep(Duration::from_millis(500));
    let pids = [daemon.pid(), floor.pid()];
    let before = pids.map(|p| proc_sample(p).unwrap());
    let t0 = mono_ns();
    // The window itself is what is measured: nothing to wait for.
    std::thread::sleep(window);
    let after = pids.map(|p| proc_sample(p).unwrap());
    let secs = ms(mono_ns() - t0) / 1e3;
    let rate = |i: usize| {
        let (b, a) = (before[i], after[i]);
        (
            (a.cpu_ticks - b.cpu_ticks) as f64 / secs,
            (a.cpu_ns_live.saturating_sub(b.cpu_ns_live)) as f64 / 1e6 / secs,
            (a.ctx_switches.saturating_sub(b.ctx_switches)) as f64 / secs,
            a.threads,
        )
    };
    let (c_ticks, c_ms, c_ctx, c_threads) = rate(0);
    let (f_ticks, f_ms, f_ctx, f_threads) = rate(1);
    let met = c_ms <= 1.0 && c_ctx <= 10.0;
    let md = format!(
        "## 4. Idle cost\n\n\
         A watcher synced to a prefix of 1,000 keys, default settings, receiving nothing for \
         {secs:.0} s; floor: an idle `etcdctl watch --prefix` of the same prefix over the same \
         window. CPU as 10 ms ticks (utime+stime) and as ms from the live threads' schedstat; \
         context switches summed over every thread (voluntary + involuntary).\n\n\
         | process | threads | CPU ticks / s | CPU ms / s (schedstat) | context switches / s |\n\
         |---|---|---|---|---|\n\
         | confera --watch | {c_threads} | {c_ticks:.3} | {c_ms:.3} | {c_ctx:.2} |\n\
         | etcdctl watch (floor) | {f_threads} | {f_ticks:.3} | {f_ms:.3} | {f_ctx:.2} |\n\
         | ratio | | | {} | {} |\n\n\
         Target (ours: an idle watcher should not poll): ≤ 1 ms CPU / s and ≤ 10 wake-ups / s: {}.\n",
        if f_ms > 0.0 { format!("{:.2}×", c_ms / f_ms) } else { "-".into() },
        if f_ctx > 0.0 { format!("{:.2}×", c_ctx / f_ctx) } else { "-".into() },
        yes_no(met)
    );
    Section {
        name: "idle",
        markdown: md,
        json: json!({
            "bench": "idle", "seconds": r3(secs),
            "confera": {"threads": c_threads, "cpu_ticks_per_s": r3(c_ticks), "cpu_ms_per_s": r3(c_ms), "ctx_per_s": r3(c_ctx)},
            "etcdctl_watch": {"threads": f_threads, "cpu_ticks_per_s": r3(f_ticks), "cpu_ms_per_s": r3(f_ms), "ctx_per_s": r3(f_ctx)},
            "met": met,
        }),
    }
}
