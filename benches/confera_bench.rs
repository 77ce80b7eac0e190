//! confera's benchmark suite: the release binary measured as whole
//! processes against real etcd, real files and real signals, beside a
//! baseline measured in the same run (a bare etcd-client watch, `etcdctl`,
//! `cat`).
//!
//! ```text
//! scripts/bench [--quick] [BENCH]...      # builds release, runs, writes target/bench/
//! cargo bench --bench confera_bench -- [--quick] [--out DIR] [--callgrind] [BENCH]...
//! ```
//! BENCH is one of latency, cost, burst, idle, memory, oneshot, mesh,
//! fanout, peers (default: all of them, in that order). Each writes
//! `<out>/<bench>.json` and `<out>/<bench>.md`; the run writes
//! `<out>/report.md` with the machine and every section. `--quick` runs
//! small sizes and few repetitions (a smoke run, well under a minute per
//! bench). Every process a bench starts, it stops by pid.

#[path = "../tests/integration/support/mod.rs"]
mod support;

#[path = "confera_bench/common.rs"]
mod common;

#[path = "confera_bench/burst.rs"]
mod burst;
#[path = "confera_bench/cost.rs"]
mod cost;
#[path = "confera_bench/fanout.rs"]
mod fanout;
#[path = "confera_bench/idle.rs"]
mod idle;
#[path = "confera_bench/latency.rs"]
mod latency;
#[path = "confera_bench/memory.rs"]
mod memory;
#[path = "confera_bench/mesh.rs"]
mod mesh;
#[path = "confera_bench/oneshot.rs"]
mod oneshot;
#[path = "confera_bench/peers.rs"]
mod peers;

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Value};

/// How a bench is run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    /// Also count instructions with valgrind's callgrind where it helps.
    pub callgrind: bool,
    pub out: PathBuf,
}

/// What one bench reports: a Markdown section and the same figures as JSON.
pub struct Section {
    pub name: &'static str,
    pub markdown: String,
    pub json: Value,
}

/// A benchmark: its name on the command line and its entry point.
type Bench = (&'static str, fn(&Opts) -> Section);

const BENCHES: &[Bench] = &[
    ("latency", latency::run),
    ("cost", cost::run),
    ("burst", burst::run),
    ("idle", idle::run),
    ("memory", memory::run),
    ("oneshot", oneshot::run),
    ("mesh", mesh::run),
    ("fanout", fanout::run),
    ("peers", peers::run),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__hup-recorder") {
        common::hup_recorder_main(PathBuf::from(&args[1]).as_path());
    }
    if args.first().map(String::as_str) == Some("__measure") {
        common::measure_main(&args[1..]);
    }
    let mut opts = Opts {
        quick: false,
        callgrind: false,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
    };
    let mut selected: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--quick" => opts.quick = true,
            "--callgrind" => opts.callgrind = true,
            "--out" => opts.out = PathBuf::from(it.next().expect("--out DIR")),
            "all" => selected.extend(BENCHES.iter().map(|(n, _)| *n)),
            "-h" | "--help" => {
                println!(
                    "usage: confera_bench [--quick] [--callgrind] [--out DIR] [all|{}]...",
                    BENCHES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join("|")
                );
                return ExitCode::SUCCESS;
            }
            name => match BENCHES.iter().find(|(n, _)| *n == name) {
                Some((n, _)) => selected.push(n),
                None => {
                    eprintln!("confera_bench: unknown benchmark or flag `{name}` (try --help)");
                    return ExitCode::from(2);
                }
            },
        }
    }
    if selected.is_empty() {
        selected.extend(BENCHES.iter().map(|(n, _)| *n));
    }
    std::fs::create_dir_all(&opts.out).expect("create the output directory");
    let machine = common::machine();
    eprintln!(
        "confera_bench: {} -> {} ({})",
        selected.join(" "),
        opts.out.display(),
        if opts.quick { "quick" } else { "full" }
    );
    let mut sections = Vec::new();
    let mut failed = 0;
    for name in &selected {
        let (static_name, bench) = BENCHES.iter().find(|(n, _)| n == name).unwrap();
        let started = std::time::Instant::now();
        let load_before = common::loadavg();
        eprintln!("==> {name}");
        // A panicking bench (a fixture that timed out, say) is reported as
        // failed; its fixtures stop their processes as they unwind.
        let mut section =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench(&opts))) {
                Ok(section) => section,
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    failed += 1;
                    Section {
                        name: static_name,
                        markdown: format!("## {name}\n\nThe benchmark failed: {why}\n"),
                        json: json!({"bench": name, "error": why}),
                    }
                }
            };
        let elapsed = started.elapsed().as_secs_f64();
        let meta = json!({
            "quick": opts.quick,
            "seconds": common::r3(elapsed),
            "loadavg_before": load_before,
            "loadavg_after": common::loadavg(),
        });
        if let Value::Object(map) = &mut section.json {
            map.insert("run".into(), meta);
        }
        section.markdown.push_str(&format!(
            "\n_{name}: {elapsed:.1} s, load average {load_before} before, {} after._\n",
            common::loadavg()
        ));
        let json_text = serde_json::to_string_pretty(&section.json).unwrap();
        std::fs::write(opts.out.join(format!("{name}.json")), json_text).unwrap();
        std::fs::write(opts.out.join(format!("{name}.md")), &section.markdown).unwrap();
        eprintln!("{}", section.markdown);
        sections.push(section);
    }
    let mut report = format!(
        "# confera benchmark report{}\n\nMachine: {}\n\n",
        if opts.quick { " (quick)" } else { "" },
        machine
    );
    for s in &sections {
        report.push_str(&s.markdown);
        report.push('\n');
    }
    let name = if selected.len() == BENCHES.len() {
        "report.md".to_string()
    } else {
        format!("report-{}.md", selected.join("-"))
    };
    std::fs::write(opts.out.join(&name), report).unwrap();
    std::fs::write(
        opts.out.join("machine.json"),
        serde_json::to_string_pretty(&machine).unwrap(),
    )
    .unwrap();
    eprintln!("confera_bench: wrote {}", opts.out.join(name).display());
    if failed > 0 {
        eprintln!("confera_bench: {failed} benchmark(s) failed");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
