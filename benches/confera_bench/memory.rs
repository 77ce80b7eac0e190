//! Benchmark 5: Memory: resident set (VmRSS now, VmHWM peak) of a watcher holding
//! 0, 10k and 100k keys of ~100 bytes, after start-up and 10 changes.

use serde_json::{json, Value};

use crate::common::*;
use crate::cost::wait_dest;
use crate::latency::spawn_watcher;
use crate::support::etcd::Etcd;
use crate::{Opts, Section};

const PREFIX: &str = "/mem";

pub fn run(opts: &Opts) -> Section {
    let sizes: &[usize] = if opts.quick {
        &[0, 1_000, 10_000]
    } else {
        &[0, 10_000, 25_000, 100_000]
    };
    let etcd = Etcd::start();
    let mut loaded = 0;
    let mut rows = Vec::new();
    let mut md = String::from(
        "## 5. Memory\n\n\
         A watcher (default settings) whose resource covers a prefix holding N keys of ~100 \
         bytes (keys ~15 bytes); the template reads one key. Measured after the initial \
         snapshot and 10 changes. Data = the sum of key and value bytes, the floor any \
         in-memory copy needs.\n\n\
         | keys | data (MB) | VmRSS (MB) | VmHWM (MB) | RSS − 0-key RSS per key (bytes) | target | met |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut base_rss = None;
    for &size in sizes {
        let all = keys(&format!("{PREFIX}/data"), size, 100);
        load(&etcd, &all[loaded..]);
        loaded = size;
        let data: usize = all.iter().map(|(k, v)| k.len() + v.len()).sum();
        eprintln!("memory: {size} keys");
        let dir = tempdir("memory");
        let confdir = dir.path().join("confdir");
        let dest = dir.path().join("out/mem.conf");
        simple_confdir(
            &confdir,
            "mem",
            "{{ getv(key=\"/target\") }}\n",
            &dest,
            PREFIX,
            "",
        );
        let key = format!("{PREFIX}/target");
        etcd.put(&key, &format!("start-{size}"));
        let obs = Observer::new();
        let _fs = FsWatch::start(&[dest.parent().unwrap().to_path_buf()], obs.tx.clone());
        let daemon = spawn_watcher(&confdir, &etcd.client_url, None, "info");
        let mut ok = wait_dest(&obs, &dest, &format!("start-{size}"), 60).is_some();
        for i in 0..10 {
            if !ok {
                break;
            }
            let v = value_of(&format!("m{size}-{i}"), 100);
            etcd.put(&key, &v);
            ok = wait_dest(&obs, &dest, &v, 10).is_some();
        }
        if !ok {
            let log = daemon.log();
            eprintln!("memory: {size}: failed; log:\n{log}");
            md.push_str(&format!("| {size} | failed |||||| **no** |\n"));
            rows.push(json!({"keys": size, "error": log}));
            continue;
        }
        let s = proc_sample(daemon.pid()).unwrap();
        let rss_mb = s.rss_kb as f64 / 1024.0;
        let hwm_mb = s.hwm_kb as f64 / 1024.0;
        let base = *base_rss.get_or_insert(s.rss_kb);
        let per_key = if size > 0 {
            (s.rss_kb as f64 - base as f64) * 1024.0 / size as f64
        } else {
            0.0
        };
        let target = match size {
            10_000 => Some(30.0),
            100_000 => Some(80.0),
            _ => None,
        };
        let met = target.map(|t| hwm_mb < t);
        md.push_str(&format!(
            "| {size} | {:.2} | {rss_mb:.1} | {hwm_mb:.1} | {} | {} | {} |\n",
            data as f64 / 1e6,
            if size > 0 {
                format!("{per_key:.0}")
            } else {
                "-".into()
            },
            target.map_or("-".into(), |t| format!("VmHWM < {t} MB")),
            met.map_or("-", yes_no),
        ));
        rows.push(json!({
            "keys": size, "data_bytes": data, "vmrss_kb": s.rss_kb, "vmhwm_kb": s.hwm_kb,
            "rss_per_key_bytes": r3(per_key), "target_mb": target, "met": met,
        }));
    }
    Section {
        name: "memory",
        markdown: md,
        json: json!({"bench": "memory", "sizes": Value::Array(rows)}),
    }
}
