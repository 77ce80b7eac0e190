//! Benchmark 3: Bursts: 300 changes in under half a second and 1,000 in
//! about one second; how many renders (commits) and SIGHUPs confera makes
//! of them with default settings, and with no debounce. With
//! `BENCH_BEFORE_BIN`, the default cases run for that binary too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::support::cmd::{wait_until, Daemon};
use crate::support::etcd::Etcd;
use crate::{Opts, Section};

pub fn run(opts: &Opts) -> Section {
    let etcd = Etcd::start();
    let mut bins: Vec<(&str, PathBuf)> = vec![("confera", confera_bin())];
    if let Some(before) = before_bin() {
        bins.push(("before", before));
    }
    let mut cases = Vec::new();
    let mut prefix = 0;
    for (label, bin) in &bins {
        for (n, span) in [
            (300, Duration::from_millis(450)),
            (1_000, Duration::from_secs(1)),
        ] {
            prefix += 1;
            let p = format!("/burst/{prefix}");
            cases.push(burst(&etcd, &p, (label, bin), None, n, span, opts));
        }
    }
    if !opts.quick {
        let p = "/burst/none";
        let now = (&"confera", &bins[0].1);
        cases.push(burst(
            &etcd,
            p,
            now,
            Some("0ms:0ms"),
            1_000,
            Duration::from_secs(1),
            opts,
        ));
    }
    report(&cases)
}

/// `confera --watch` from BIN on CONFDIR at debug level.
fn spawn(bin: &Path, confdir: &Path, node: &str, wait: Option<&str>) -> Daemon {
    let mut cmd = confera_at(bin);
    cmd.arg("--confdir")
        .arg(confdir)
        .args(["--backend", "etcd", "--node", node, "--watch"])
        .args(["--log-level", "debug"]);
    if let Some(w) = wait {
        cmd.args(["--wait", w]);
    }
    Daemon::spawn_cmd(cmd)
}

struct Case {
    binary: String,
    wait: String,
    changes: usize,
    put_seconds: f64,
    commits: usize,
    /// "changes applied" debug lines: watch responses taken into the store.
    applied: usize,
    hups: usize,
    last_ack_to_final_ms: f64,
    error: Option<String>,
}

fn burst(
    etcd: &Etcd,
    prefix: &str,
    (binary, bin): (&&str, &PathBuf),
    wait: Option<&str>,
    n: usize,
    span: Duration,
    opts: &Opts,
) -> Case {
    let label = wait.unwrap_or("default").to_string();
    eprintln!("burst: {binary}, {n} changes, --wait {label}");
    let mut case = Case {
        binary: binary.to_string(),
        wait: label,
        changes: n,
        put_seconds: 0.0,
        commits: 0,
        applied: 0,
        hups: 0,
        last_ack_to_final_ms: 0.0,
        error: None,
    };
    let dir = tempdir("burst");
    let obs = Observer::new();
    let recorder = HupRecorder::start(dir.path(), obs.tx.clone());
    let confdir = dir.path().join("confdir");
    let dest = dir.path().join("out/burst.conf");
    simple_confdir(
        &confdir,
        "burst",
        "{{ gets(pattern=\"/k/*\") | length }}\n",
        &dest,
        prefix,
        &format!("pid_file = \"{}\"\n", recorder.pid_file.display()),
    );
    let _fs = FsWatch::start(&[dest.parent().unwrap().to_path_buf()], obs.tx.clone());
    // Debug level for the "changes applied" lines (one per watch response).
    let daemon = spawn(bin, &confdir, &etcd.client_url, wait);
    let hups = std::cell::Cell::new(0usize);
    let count = |obs: &Observer, deadline: u64, until: &dyn Fn() -> bool| -> Option<u64> {
        loop {
            match obs.next(deadline)? {
                Obs::Hup { .. } => hups.set(hups.get() + 1),
                Obs::Fs { at, .. } if until() => return Some(at),
                _ => {}
            }
        }
    };
    let initial = |text: &str| std::fs::read_to_string(&dest).is_ok_and(|t| t == text);
    if count(&obs, mono_ns() + 20_000_000_000, &|| initial("0\n")).is_none() {
        case.error = Some(format!("no initial render; log:\n{}", daemon.log()));
        return case;
    }
    wait_until(Duration::from_secs(5), || {
        daemon.log_count("committed dest=") >= 1
    });
    // Quiet for longer than MAX: the burst's first put is an isolated change.
    std::thread::sleep(Duration::from_millis(1_200));
    let commits0 = daemon.log_count("committed dest=");
    let applied0 = daemon.log_count("changes applied");
    let t_start = mono_ns();
    let last_ack = put_burst(&etcd.endpoint(), prefix, n, span);
    case.put_seconds = ms(last_ack - t_start) / 1e3;
    let done = format!("{n}\n");
    let Some(final_at) = count(&obs, mono_ns() + 20_000_000_000, &|| initial(&done)) else {
        case.error = Some(format!(
            "the burst never fully rendered; log:\n{}",
            daemon.log()
        ));
        return case;
    };
    case.last_ack_to_final_ms = ms(final_at.saturating_sub(last_ack));
    // Nothing is pending once the last change is rendered; give a late
    // render or signal (there should be none) the MAX window to show up.
    let _ = count(&obs, mono_ns() + 1_500_000_000, &|| false);
    case.commits = daemon.log_count("committed dest=") - commits0;
    case.applied = daemon.log_count("changes applied") - applied0;
    let name = format!(
        "burst-{binary}-{n}-wait-{}.log",
        wait.unwrap_or("default").replace(':', "-")
    );
    let _ = std::fs::write(opts.out.join(name), daemon.log());
    case.hups = hups.get().saturating_sub(1);
    drop(daemon);
    drop(recorder);
    case
}

/// Puts `n` distinct keys under PREFIX/k, spread evenly over `span`, from
/// an async client (puts overlap); returns when the last was acknowledged.
fn put_burst(endpoint: &str, prefix: &str, n: usize, span: Duration) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("connect");
        let start = tokio::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let mut c = client.clone();
            let key = format!("{prefix}/k/{i:05}");
            let value = value_of(&format!("b{i}"), 100);
            set.spawn(async move {
                c.put(key, value, None).await.expect("put");
                mono_ns()
            });
            tokio::time::sleep_until(start + span.mul_f64((i + 1) as f64 / n as f64)).await;
        }
        let mut last = 0;
        while let Some(at) = set.join_next().await {
            last = last.max(at.expect("put task"));
        }
        last
    })
}

fn report(cases: &[Case]) -> Section {
    let mut md = String::from(
        "## 3. Bursts\n\n\
         300 puts of distinct keys spread evenly over 0.45 s, and 1,000 over ~1 s, from an async \
         client; the template renders the number of keys (so every render differs). Commits are \
         confera's \"committed\" log lines (run at debug level, whose \"changes applied\" lines \
         count the watch responses taken into the store; the logs are kept in \
         target/bench/burst-*.log), SIGHUPs those a stand-in daemon received; the start-up \
         render is not counted. Targets with default settings: 300 puts give at most 5 reloads, \
         1,000 a handful of renders (≤ 5) with the file current at the end.\n\n\
         | binary | --wait | changes | put over (s) | watch batches applied | commits (renders) | SIGHUPs | last put ack → final file (ms) | target | met |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for c in cases {
        if let Some(e) = &c.error {
            md.push_str(&format!(
                "| {} | {} | failed: {} |||||||| **no** |\n",
                c.binary,
                c.wait,
                e.lines().next().unwrap_or_default()
            ));
            eprintln!("burst: {e}");
            rows.push(json!({"binary": c.binary, "wait": c.wait, "error": e}));
            continue;
        }
        let debounced = !c.wait.starts_with("0ms");
        let met = !debounced || (c.commits <= 5 && c.hups <= 5);
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {:.1} | {} | {} |\n",
            c.binary,
            c.wait,
            c.changes,
            c.put_seconds,
            c.applied,
            c.commits,
            c.hups,
            c.last_ack_to_final_ms,
            if debounced { "≤ 5" } else { "(none)" },
            if debounced { yes_no(met) } else { "-" },
        ));
        rows.push(json!({
            "binary": c.binary, "wait": c.wait, "changes": c.changes, "put_seconds": r3(c.put_seconds),
            "applied": c.applied, "commits": c.commits, "sighups": c.hups,
            "last_ack_to_final_ms": r3(c.last_ack_to_final_ms), "met": met,
        }));
    }
    Section {
        name: "burst",
        markdown: md,
        json: json!({"bench": "burst", "cases": Value::Array(rows)}),
    }
}
