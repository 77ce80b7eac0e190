//! Benchmark 6: One-shot at scale: `confera --onetime` as a whole process, from a data
//! file and from etcd, with N keys spread over R resources; wall time and
//! peak RSS (wait4), beside `cat` of the data file or `etcdctl get --prefix`
//! of the same keys in the same run.
//!
//! Knobs (environment): `BENCH_ONESHOT_KEYS` and `BENCH_ONESHOT_UNITS`
//! (comma-separated sizes, instead of the defaults), `BENCH_ONESHOT_SOURCES`
//! (`json,etcd,yaml`, any of them), and `BENCH_BEFORE_BIN`: another confera
//! binary measured in the same runs, interleaved with this one, for a
//! before/after table side by side.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};

use crate::common::*;
use crate::support::etcd::Etcd;
use crate::{Opts, Section};

#[derive(Clone, Copy, PartialEq)]
enum Src {
    Json,
    Yaml,
    Etcd,
}

impl Src {
    fn key(self) -> &'static str {
        match self {
            Src::Json => "json",
            Src::Yaml => "yaml",
            Src::Etcd => "etcd",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Src::Json => "file (JSON)",
            Src::Yaml => "file (YAML)",
            Src::Etcd => "etcd",
        }
    }
}

pub fn run(opts: &Opts) -> Section {
    let runs = if opts.quick { 3 } else { 7 };
    let sizes = if opts.quick {
        sizes_from_env("BENCH_ONESHOT_KEYS", &[1_000, 10_000])
    } else {
        sizes_from_env("BENCH_ONESHOT_KEYS", &[1_000, 10_000, 20_000, 100_000])
    };
    let units = if opts.quick {
        sizes_from_env("BENCH_ONESHOT_UNITS", &[1, 10])
    } else {
        sizes_from_env("BENCH_ONESHOT_UNITS", &[1, 10, 100])
    };
    let sources =
        std::env::var("BENCH_ONESHOT_SOURCES").unwrap_or_else(|_| "json,etcd,yaml".into());
    let before = before_bin();
    let etcd = Etcd::start();
    let mut results = Vec::new();
    for src in [Src::Json, Src::Etcd] {
        if !sources.split(',').any(|s| s == src.key()) {
            continue;
        }
        for &n in &sizes {
            for &r in &units {
                results.push(measure(&etcd, src, n, r, runs, before.as_deref()));
            }
        }
    }
    if sources.split(',').any(|s| s == Src::Yaml.key()) {
        results.push(measure(
            &etcd,
            Src::Yaml,
            10_000,
            1,
            runs,
            before.as_deref(),
        ));
    }
    report(&results, runs, before.as_deref())
}

struct Result {
    src: Src,
    keys: usize,
    units: usize,
    write: Summary,
    unchanged: Summary,
    baseline: Summary,
    rss_mb: f64,
    baseline_rss_mb: f64,
    cpu_ms: f64,
    /// The same runs with `BENCH_BEFORE_BIN`, interleaved.
    before: Option<Before>,
    error: Option<String>,
}

struct Before {
    write: Summary,
    unchanged: Summary,
    rss_mb: f64,
    cpu_ms: f64,
}

/// The data of unit j of R: keys `{top}/u{j}/k/{i}` for every i ≡ j (mod R).
fn data(top: &str, n: usize, r: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{top}/u{:03}/k/{i:06}", i % r),
                value_of(&format!("v{i}"), 100),
            )
        })
        .collect()
}

/// The data as a nested document for the file backend.
fn document(pairs: &[(String, String)]) -> Value {
    let mut root = Map::new();
    for (key, value) in pairs {
        let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
        let mut map = &mut root;
        for p in &parts[..parts.len() - 1] {
            map = map
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .unwrap();
        }
        map.insert(
            parts[parts.len() - 1].to_string(),
            Value::String(value.clone()),
        );
    }
    Value::Object(root)
}

fn yaml(v: &Value, indent: usize, out: &mut String) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            out.push_str(&" ".repeat(indent));
            match child {
                Value::String(s) => out.push_str(&format!("\"{k}\": \"{s}\"\n")),
                _ => {
                    out.push_str(&format!("\"{k}\":\n"));
                    yaml(child, indent + 2, out);
                }
            }
        }
    }
}

fn confdir(dir: &Path, top: &str, r: usize) -> Vec<PathBuf> {
    let confdir = dir.join("confdir");
    write(
        &confdir.join("templates/unit.tmpl"),
        "{% for e in gets(pattern=\"/k/*\") %}{{ e.key }} {{ e.value }}\n{% endfor %}",
    );
    let mut dests = Vec::new();
    std::fs::create_dir_all(dir.join("out")).unwrap();
    for j in 0..r {
        let dest = dir.join(format!("out/u{j:03}.conf"));
        write(
            &confdir.join(format!("conf.d/u{j:03}.toml")),
            &format!(
                "[template]\nsrc = \"unit.tmpl\"\ndest = \"{}\"\nprefix = \"{top}/u{j:03}\"\nkeys = [\"/\"]\n",
                dest.display()
            ),
        );
        dests.push(dest);
    }
    dests
}

fn measure(
    etcd: &Etcd,
    src: Src,
    n: usize,
    r: usize,
    runs: usize,
    before_bin: Option<&Path>,
) -> Result {
    eprintln!("oneshot: {} {n} keys {r} units", src.name());
    let dir = tempdir("oneshot");
    let top = format!("/os{n}x{r}");
    let pairs = data(&top, n, r);
    let dests = confdir(dir.path(), &top, r);
    let mut source_args: Vec<std::ffi::OsString> = Vec::new();
    let mut baseline_cmd;
    match src {
        Src::Json | Src::Yaml => {
            let doc = document(&pairs);
            let file = if src == Src::Json {
                let f = dir.path().join("data.json");
                write(&f, &serde_json::to_string(&doc).unwrap());
                f
            } else {
                let f = dir.path().join("data.yaml");
                let mut text = String::new();
                yaml(&doc, 0, &mut text);
                write(&f, &text);
                f
            };
            source_args.extend(["--backend".into(), "file".into(), "--file".into()]);
            source_args.push(file.clone().into());
            baseline_cmd = Command::new("cat");
            baseline_cmd.arg(&file);
        }
        Src::Etcd => {
            load(etcd, &pairs);
            source_args.extend(["--backend", "etcd", "--node", &etcd.client_url].map(Into::into));
            baseline_cmd = Command::new("etcdctl");
            baseline_cmd
                .args(["--endpoints", &etcd.endpoint(), "get", "--prefix", &top])
                .env("ETCDCTL_API", "3");
        }
    }
    let command = |bin: Option<&Path>| {
        let mut cmd = bin.map_or_else(confera, confera_at);
        cmd.arg("--confdir")
            .arg(dir.path().join("confdir"))
            .arg("--onetime")
            .args(&source_args);
        cmd
    };
    let mut confera_cmd = command(None);
    let mut before_cmd = before_bin.map(|b| command(Some(b)));
    let stderr = dir.path().join("stderr");
    let mut result = Result {
        src,
        keys: n,
        units: r,
        write: Summary::default(),
        unchanged: Summary::default(),
        baseline: Summary::default(),
        rss_mb: 0.0,
        baseline_rss_mb: 0.0,
        cpu_ms: 0.0,
        before: None,
        error: None,
    };
    let failed = |m: &Measured| {
        Some(format!(
            "exit {}: {}",
            m.code,
            std::fs::read_to_string(&stderr).unwrap_or_default()
        ))
    };
    // Warm-up (page cache, etcd's caches), not counted.
    for cmd in std::iter::once(&mut confera_cmd).chain(before_cmd.as_mut()) {
        let warm = run_measured(cmd, &stderr);
        if warm.code != 0 {
            result.error = failed(&warm);
            if src == Src::Etcd {
                etcd.delete_prefix(&top);
            }
            return result;
        }
    }
    let (mut write_ms, mut same_ms, mut base_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut base_rss, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut b_write, mut b_same, mut b_rss, mut b_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One write run and one unchanged run of a binary; None when it failed.
    let pair = |cmd: &mut Command| {
        for d in &dests {
            let _ = std::fs::remove_file(d);
        }
        let w = run_measured(cmd, &stderr);
        if w.code != 0 {
            return Err(failed(&w));
        }
        let u = run_measured(cmd, &stderr);
        Ok((w, u))
    };
    for i in 0..runs {
        // Alternate which binary goes first, so neither always runs on a
        // freshly written file set or a warmer etcd.
        let mut order: Vec<bool> = vec![false];
        if before_cmd.is_some() {
            order.push(true);
            if i % 2 == 1 {
                order.reverse();
            }
        }
        for is_before in order {
            let cmd = match (is_before, before_cmd.as_mut()) {
                (true, Some(b)) => b,
                _ => &mut confera_cmd,
            };
            match pair(cmd) {
                Err(e) => {
                    result.error = e;
                    break;
                }
                Ok((w, u)) if is_before => {
                    b_write.push(w.wall_ms);
                    b_rss.push(w.maxrss_kb as f64 / 1024.0);
                    b_cpu.push(w.user_ms + w.sys_ms);
                    b_same.push(u.wall_ms);
                }
                Ok((w, u)) => {
                    write_ms.push(w.wall_ms);
                    rss.push(w.maxrss_kb as f64 / 1024.0);
                    cpu.push(w.user_ms + w.sys_ms);
                    same_ms.push(u.wall_ms);
                }
            }
        }
        if result.error.is_some() {
            break;
        }
        let b = run_measured(&mut baseline_cmd, &stderr);
        base_ms.push(b.wall_ms);
        base_rss.push(b.maxrss_kb as f64 / 1024.0);
    }
    if src == Src::Etcd {
        etcd.delete_prefix(&top);
    }
    result.write = summarize(&write_ms);
    result.unchanged = summarize(&same_ms);
    result.baseline = summarize(&base_ms);
    result.rss_mb = summarize(&rss).median;
    result.baseline_rss_mb = summarize(&base_rss).median;
    result.cpu_ms = summarize(&cpu).median;
    if before_cmd.is_some() {
        result.before = Some(Before {
            write: summarize(&b_write),
            unchanged: summarize(&b_same),
            rss_mb: summarize(&b_rss).median,
            cpu_ms: summarize(&b_cpu).median,
        });
    }
    result
}

fn report(results: &[Result], runs: usize, before_bin: Option<&Path>) -> Section {
    let mut md = format!(
        "## 6. One-shot at scale\n\n\
         `confera --onetime` (default log level) as a whole process, median of {runs} runs after \
         one warm-up; wall time from spawn to reap, peak RSS and CPU from wait4's rusage. N keys \
         of ~100 bytes spread over R resources, each with its own prefix and a template that \
         prints every key and value of its prefix (N lines in all). \"write\": the destinations \
         were removed first, so every file is staged, fsynced and renamed; \"unchanged\": they \
         already match (the common steady state). Baseline in the same run: `cat` of the data \
         file, or `etcdctl get --prefix` of the same keys (stdout to /dev/null).\n\n\
         | source | keys | resources | write median / max (ms) | unchanged median (ms) | baseline median (ms) | ratio (unchanged / baseline) | CPU ms (write) | peak RSS MB (baseline) | target | met |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for r in results {
        if let Some(e) = &r.error {
            let first = e.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
            md.push_str(&format!(
                "| {} | {} | {} | failed: {} ||||||| **no** |\n",
                r.src.name(),
                r.keys,
                r.units,
                first.replace('|', "\\|")
            ));
            eprintln!("oneshot: {} {} {}: {e}", r.src.name(), r.keys, r.units);
            rows.push(
                json!({"source": r.src.name(), "keys": r.keys, "units": r.units, "error": e}),
            );
            continue;
        }
        let target = (r.keys == 10_000).then_some(150.0);
        let met = target.map(|t| r.write.median < t);
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} / {:.1} | {:.1} | {:.1} | {:.2}× | {:.1} | {:.1} ({:.1}) | {} | {} |\n",
            r.src.name(),
            r.keys,
            r.units,
            r.write.median,
            r.write.max,
            r.unchanged.median,
            r.baseline.median,
            ratio(r.unchanged.median, r.baseline.median),
            r.cpu_ms,
            r.rss_mb,
            r.baseline_rss_mb,
            target.map_or("-".into(), |t| format!("< {t} ms")),
            met.map_or("-", yes_no),
        ));
        let before = r.before.as_ref().map(|b| {
            json!({
                "write_ms": b.write.json(), "unchanged_ms": b.unchanged.json(),
                "cpu_ms_write": r3(b.cpu_ms), "peak_rss_mb": r3(b.rss_mb),
            })
        });
        rows.push(json!({
            "source": r.src.name(), "keys": r.keys, "units": r.units, "before": before,
            "write_ms": r.write.json(), "unchanged_ms": r.unchanged.json(), "baseline_ms": r.baseline.json(),
            "ratio_unchanged_baseline": ratio(r.unchanged.median, r.baseline.median),
            "cpu_ms_write": r3(r.cpu_ms), "peak_rss_mb": r3(r.rss_mb), "baseline_peak_rss_mb": r3(r.baseline_rss_mb),
            "target_ms": target, "met": met,
        }));
    }
    if let Some(bin) = before_bin {
        md.push_str(&format!(
            "\nBefore and after, measured in the same runs, interleaved (before: `{}`):\n\n\
             | source | keys | resources | write median, before → after (ms) | unchanged median, before → after (ms) | unchanged, after / before | CPU ms (write), before → after | peak RSS MB, before → after |\n\
             |---|---|---|---|---|---|---|---|\n",
            bin.display()
        ));
        for r in results.iter().filter(|r| r.error.is_none()) {
            let Some(b) = &r.before else { continue };
            md.push_str(&format!(
                "| {} | {} | {} | {:.1} → {:.1} | {:.1} → {:.1} | {:.2}× | {:.1} → {:.1} | {:.1} → {:.1} |\n",
                r.src.name(),
                r.keys,
                r.units,
                b.write.median,
                r.write.median,
                b.unchanged.median,
                r.unchanged.median,
                ratio(r.unchanged.median, b.unchanged.median),
                b.cpu_ms,
                r.cpu_ms,
                b.rss_mb,
                r.rss_mb,
            ));
        }
    }
    Section {
        name: "oneshot",
        markdown: md,
        json: json!({"bench": "oneshot", "runs": runs, "before_bin": before_bin.map(|b| b.display().to_string()), "results": Value::Array(rows)}),
    }
}
