//! The README's etcd walk-through, step by step against a real etcd:
//! `scripts/load-etcd` loads the bundled example's keys from
//! `examples/cluster.yaml`, a confdir holding copies of `conf.d/` and
//! `templates/` renders from etcd exactly what it renders from the YAML, and
//! an unreachable etcd is exit 2 for `--onetime` but a retry for `--watch`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cmd::{confera, run_cmd, wait_until, Daemon, Run};
use crate::support::etcd::Etcd;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const CONFERA: &str = env!("CARGO_BIN_EXE_confera");
/// What the walk-through renders (conf.d/bird.toml's destinations).
const OUTPUTS: [&str; 3] = ["bird.conf", "bird_filters.conf", "bird_ipam.conf"];
/// The example's node, for templates that take it from the environment.
const NODENAME: &str = "node-a";

/// `scripts/load-etcd ARGS` against ETCD, with this build of confera.
fn load_etcd(etcd: &Etcd, args: &[&str]) -> Run {
    let mut cmd = Command::new(Path::new(REPO).join("scripts/load-etcd"));
    cmd.env("CONFERA", CONFERA)
        .env_remove("ETCDCTL_ENDPOINTS")
        .args(["--endpoints", &etcd.client_url])
        .args(args);
    run_cmd(cmd)
}

/// "Copy conf.d/ and templates/ to /etc/confera": here, to a temp dir (with
/// the `out/` directory the example's relative destinations need).
fn confdir_copy() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("confera-walkthrough-")
        .tempdir()
        .expect("create a temp confdir");
    for sub in ["conf.d", "templates"] {
        copy_dir(&Path::new(REPO).join(sub), &dir.path().join(sub));
    }
    fs::create_dir(dir.path().join("out")).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `confera --confdir DIR ARGS`, as the walk-through runs it.
fn confera_in(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = confera();
    cmd.env("NODENAME", NODENAME)
        .args(["--confdir", dir.to_str().unwrap()])
        .args(args);
    cmd
}

fn outputs(dir: &Path) -> Vec<(String, String)> {
    OUTPUTS
        .iter()
        .map(|name| {
            let path = dir.join("out").join(name);
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (name.to_string(), text)
        })
        .collect()
}

/// The keys `confera flatten` makes of a data file, as (key, value) pairs.
fn flattened(file: &Path) -> Vec<(String, String)> {
    let mut cmd = confera();
    cmd.args(["flatten", "-0", file.to_str().unwrap()]);
    let out = run_cmd(cmd);
    out.assert_success();
    let fields: Vec<&str> = out.stdout.split('\0').collect();
    fields
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[0].to_string(), pair[1].to_string()))
        .collect()
}

#[test]
fn load_etcd_puts_every_key_of_the_example_so_etcd_renders_what_the_yaml_renders() {
    let etcd = Etcd::start();
    let cluster = Path::new(REPO).join("examples/cluster.yaml");

    let loaded = load_etcd(&etcd, &[]);
    loaded
        .assert_success()
        .assert_stdout_contains("load-etcd: put");

    // Exactly the keys and values the file backend reads from the YAML.
    let want = flattened(&cluster);
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(etcd.get_prefix("/"), want);

    // The walk-through's commands: from etcd, and from the YAML.
    let from_etcd = confdir_copy();
    run_cmd(confera_in(
        from_etcd.path(),
        &["--onetime", "--node", &etcd.client_url],
    ))
    .assert_success();
    let from_yaml = confdir_copy();
    run_cmd(confera_in(
        from_yaml.path(),
        &["--onetime", "--file", cluster.to_str().unwrap()],
    ))
    .assert_success();
    assert_eq!(outputs(from_etcd.path()), outputs(from_yaml.path()));
}

#[test]
fn load_etcd_keeps_values_with_spaces_newlines_and_leading_dashes_intact() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("odd.yaml");
    fs::write(
        &data,
        "odd:\n  dash: \"-1\"\n  lines: \"a b\\nc\"\n  empty: \"\"\n  json: '{\"k\": [1, 2]}'\n",
    )
    .unwrap();

    load_etcd(&etcd, &[data.to_str().unwrap()]).assert_success();

    assert_eq!(
        etcd.get_prefix("/odd/"),
        [
            ("/odd/dash", "-1"),
            ("/odd/empty", ""),
            ("/odd/json", "{\"k\": [1, 2]}"),
            ("/odd/lines", "a b\nc"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

#[test]
fn load_etcd_writes_nothing_when_a_data_file_is_bad() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let bad = dir.path().join("bad.yaml");
    fs::write(&good, "good: 1\n").unwrap();
    fs::write(&bad, "bad: [1, 2\n").unwrap();

    let out = load_etcd(&etcd, &[good.to_str().unwrap(), bad.to_str().unwrap()]);

    assert_ne!(out.code, 0, "{out}");
    out.assert_stderr_contains("bad.yaml");
    assert_eq!(etcd.get_prefix("/"), []);
}

#[test]
fn with_etcd_unreachable_onetime_exits_2_at_once_and_watch_waits_for_it() {
    let mut etcd = Etcd::start();
    load_etcd(&etcd, &[]).assert_success();
    etcd.stop();
    let dir = confdir_copy();

    // --onetime: exit 2 within seconds, naming the endpoint; nothing written.
    let started = Instant::now();
    let out = run_cmd(confera_in(
        dir.path(),
        &["--onetime", "--node", &etcd.client_url],
    ));
    out.assert_code(2).assert_stderr_contains(&etcd.client_url);
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");
    assert!(!dir.path().join("out/bird.conf").exists());

    // --watch: keeps running, retrying, and renders once etcd is back.
    let mut watch = Daemon::spawn_cmd(confera_in(
        dir.path(),
        &["--watch", "--node", &etcd.client_url],
    ));
    assert!(
        watch.wait_for_log("etcd unavailable", Duration::from_secs(10)),
        "{}",
        watch.log()
    );
    assert!(watch.is_running(), "{}", watch.log());
    assert!(!dir.path().join("out/bird.conf").exists());
    etcd.restart();
    assert!(
        wait_until(Duration::from_secs(30), || dir
            .path()
            .join("out/bird.conf")
            .exists()),
        "no render after etcd came back\n{}",
        watch.log()
    );
    assert_eq!(watch.terminate(), 0);
}
