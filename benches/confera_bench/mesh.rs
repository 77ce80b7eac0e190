//! Benchmark 7: Full-mesh BIRD render: the bundled templates/bird.conf.tera for one
//! node of a node-to-node mesh of 100, 1,000 and 5,000 nodes, as a whole
//! `--onetime` process from a data file; render time as the difference
//! with a trivial template over the same data in the same run.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::*;
use crate::{Opts, Section};

pub fn run(opts: &Opts) -> Section {
    let runs = if opts.quick { 3 } else { 7 };
    let sizes: &[usize] = if opts.quick {
        &[100, 1_000]
    } else {
        &[100, 1_000, 5_000]
    };
    let callgrind = opts.callgrind && Command::new("valgrind").arg("--version").output().is_ok();
    let mut results = Vec::new();
    for &n in sizes {
        eprintln!("mesh: {n} nodes");
        results.push(measure(n, runs, callgrind && n == 1_000, &opts.out));
    }
    report(&results, runs)
}

struct Result {
    nodes: usize,
    lines: usize,
    bytes: usize,
    mesh: Summary,
    trivial: Summary,
    rss_mb: f64,
    instructions: Option<(u64, u64)>,
    error: Option<String>,
}

/// A data file like examples/cluster.yaml with N nodes (IPv4 only), this
/// host being the first.
fn data_file(path: &Path, n: usize) {
    let mut text = String::from(
        "fabric:\n  local:\n    node: n00000\n  global:\n    asn: 64512\n    mesh: \"on\"\n  nodes:\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "    n{i:05}:\n      ip4: 10.{}.{}.{}\n",
            i / 62_500,
            (i / 250) % 250,
            i % 250 + 1
        ));
    }
    write(path, &text);
}

fn confdir(dir: &Path, template: &str, text: &str, dest: &Path) {
    write(&dir.join(format!("templates/{template}")), text);
    write(
        &dir.join("conf.d/bird.toml"),
        &format!(
            "[template]\nsrc = \"{template}\"\ndest = \"{}\"\nprefix = \"/fabric\"\n\
             keys = [\"/local\", \"/global\", \"/nodes\", \"/peers\", \"/secrets/peers\"]\n",
            dest.display()
        ),
    );
}

fn measure(n: usize, runs: usize, callgrind: bool, out: &Path) -> Result {
    let dir = tempdir("mesh");
    let data = dir.path().join("cluster.yaml");
    data_file(&data, n);
    let bundled = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/bird.conf.tera"),
    )
    .expect("read templates/bird.conf.tera");
    let mesh_dest = dir.path().join("out/bird.conf");
    let trivial_dest = dir.path().join("out/trivial.conf");
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    confdir(
        &dir.path().join("mesh"),
        "bird.conf.tera",
        &bundled,
        &mesh_dest,
    );
    confdir(
        &dir.path().join("trivial"),
        "trivial.tera",
        "{{ getv(key=\"/local/node\") }}\n",
        &trivial_dest,
    );
    let cmd = |which: &str| {
        let mut c = confera();
        c.arg("--confdir")
            .arg(dir.path().join(which))
            .args(["--backend", "file", "--file"])
            .arg(&data)
            .arg("--onetime");
        c
    };
    let stderr = dir.path().join("stderr");
    let mut result = Result {
        nodes: n,
        lines: 0,
        bytes: 0,
        mesh: Summary::default(),
        trivial: Summary::default(),
        rss_mb: 0.0,
        instructions: None,
        error: None,
    };
    let (mut mesh, mut trivial, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=runs {
        let _ = std::fs::remove_file(&mesh_dest);
        let _ = std::fs::remove_file(&trivial_dest);
        let m = run_measured(&mut cmd("mesh"), &stderr);
        if m.code != 0 {
            result.error = Some(format!(
                "exit {}: {}",
                m.code,
                std::fs::read_to_string(&stderr).unwrap_or_default()
            ));
            return result;
        }
        let t = run_measured(&mut cmd("trivial"), &stderr);
        // Run 0 warms the page cache.
        if i > 0 {
            mesh.push(m.wall_ms);
            trivial.push(t.wall_ms);
            rss.push(m.maxrss_kb as f64 / 1024.0);
        }
    }
    let text = std::fs::read_to_string(&mesh_dest).unwrap_or_default();
    result.lines = text.lines().count();
    result.bytes = text.len();
    result.mesh = summarize(&mesh);
    result.trivial = summarize(&trivial);
    result.rss_mb = summarize(&rss).median;
    if callgrind {
        let count = |which: &str| -> Option<u64> {
            let file = dir.path().join(format!("callgrind.{which}"));
            let c = cmd(which);
            let mut vg = Command::new("valgrind");
            vg.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", file.display()))
                .arg(c.get_program())
                .args(c.get_args());
            for (k, v) in c.get_envs() {
                match v {
                    Some(v) => vg.env(k, v),
                    None => vg.env_remove(k),
                };
            }
            let _ = std::fs::remove_file(&mesh_dest);
            let m = run_measured(&mut vg, &stderr);
            if m.code != 0 {
                return None;
            }
            let annotated = Command::new("callgrind_annotate")
                .arg(&file)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&annotated.stdout).into_owned();
            let _ = std::fs::write(out.join(format!("mesh-{n}-callgrind-{which}.txt")), &text);
            std::fs::read_to_string(&file)
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("summary: "))
                .and_then(|v| v.trim().parse().ok())
        };
        result.instructions = count("mesh").zip(count("trivial"));
    }
    result
}

fn report(results: &[Result], runs: usize) -> Section {
    let mut md = format!(
        "## 7. Full-mesh BIRD render\n\n\
         templates/bird.conf.tera (the bundled template, unchanged) for node n00000 of an \
         N-node mesh (IPv4 only, one `protocol bgp` of ~22 lines per peer), from a YAML data \
         file, `--onetime`, destination removed before each run (so it is written), no \
         check_cmd; median of {runs} runs after a warm-up. Baseline: the same process, data and \
         keys with a trivial template (start-up + data load + commit); render ≈ the \
         difference.\n\n\
         | nodes | output lines (bytes) | whole process median / p99 (ms) | trivial template median (ms) | render ≈ (ms) | ratio | peak RSS (MB) | instructions (callgrind: mesh / trivial) | target (1,000 nodes < 50 ms) | met |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for r in results {
        if let Some(e) = &r.error {
            let first = e.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
            md.push_str(&format!(
                "| {} | failed: {} |||||||| **no** |\n",
                r.nodes,
                first.replace('|', "\\|")
            ));
            eprintln!("mesh: {}: {e}", r.nodes);
            rows.push(json!({"nodes": r.nodes, "error": e}));
            continue;
        }
        let render = r.mesh.median - r.trivial.median;
        let met = (r.nodes == 1_000).then_some(r.mesh.median < 50.0);
        md.push_str(&format!(
            "| {} | {} ({}) | {:.1} / {:.1} | {:.1} | {:.1} | {:.2}× | {:.1} | {} | {} | {} |\n",
            r.nodes,
            r.lines,
            r.bytes,
            r.mesh.median,
            r.mesh.p99,
            r.trivial.median,
            render,
            ratio(r.mesh.median, r.trivial.median),
            r.rss_mb,
            r.instructions.map_or("-".into(), |(m, t)| format!(
                "{:.0} M / {:.0} M",
                m as f64 / 1e6,
                t as f64 / 1e6
            )),
            if r.nodes == 1_000 { "< 50 ms" } else { "-" },
            met.map_or("-", yes_no),
        ));
        rows.push(json!({
            "nodes": r.nodes, "lines": r.lines, "bytes": r.bytes,
            "whole_ms": r.mesh.json(), "trivial_ms": r.trivial.json(), "render_ms": r3(render),
            "peak_rss_mb": r3(r.rss_mb),
            "instructions": r.instructions.map(|(m, t)| json!({"mesh": m, "trivial": t})),
            "met": met,
        }));
    }
    Section {
        name: "mesh",
        markdown: md,
        json: json!({"bench": "mesh", "runs": runs, "results": Value::Array(rows)}),
    }
}
