//! The Calico example (`examples/calico/`, issue 14 item 11): confera's
//! BIRD 2 templates for Calico's key layout render exactly the golden files
//! for each node, from the data file and from a real etcd loaded with the
//! same keys; BIRD accepts every rendered set; a hostile value in a Calico
//! key is refused with nothing committed; and a live BIRD on the rendered
//! config (in a network namespace of the test's own) is reconfigured over
//! its control socket. Each run renders a copy of
//! the example in a temp dir, so the repository is never written.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::bird::Bird;
use crate::support::cmd::{confera, run_cmd, Run};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;
use crate::support::netns::Netns;

/// The example, in the repository.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/calico");

/// The nodes with golden files: a dual-stack mesh member with its own
/// peers, an IPv6-only node (router id from hashToIPv4), a route reflector.
const NODES: &[&str] = &["node-a", "node-c", "node-d"];

/// What one node's confera writes: two BIRDs, three files each.
const FILES: &[&str] = &[
    "bird.conf",
    "bird6.conf",
    "bird6_aggr.conf",
    "bird6_ipam.conf",
    "bird_aggr.conf",
    "bird_ipam.conf",
];

/// A copy of the example's confdir and data file, with an empty `out/`
/// for the resources' relative destinations.
fn example_copy() -> ConfDir {
    let dir = ConfDir::new();
    let example = Path::new(EXAMPLE);
    dir.copy_in(&example.join("conf.d"), "conf.d")
        .copy_in(&example.join("templates"), "templates")
        .copy_in(&example.join("data.yaml"), "data.yaml");
    dir.dest("out/x");
    dir
}

/// `confera --onetime` for NODE, without `--sync-only`: the example's own
/// `bird -p` check runs on each staged set.
fn render(dir: &ConfDir, node: &str, backend: &[&str]) -> Run {
    let mut cmd = confera();
    cmd.env("NODENAME", node)
        .env_remove("CALICO_ROUTER_ID")
        .args(["--confdir", dir.arg()])
        .args(backend)
        .arg("--onetime");
    run_cmd(cmd)
}

fn file_backend(dir: &ConfDir) -> Vec<String> {
    let data = dir.path().join("data.yaml");
    vec![
        "--backend".into(),
        "file".into(),
        "--file".into(),
        data.to_str().unwrap().into(),
    ]
}

fn render_from_file(dir: &ConfDir, node: &str) -> Run {
    let args = file_backend(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    render(dir, node, &args)
}

fn render_from_etcd(dir: &ConfDir, node: &str, etcd: &Etcd) -> Run {
    render(dir, node, &["--node", &etcd.client_url])
}

fn golden(node: &str) -> PathBuf {
    Path::new(EXAMPLE).join("golden").join(node)
}

/// Asserts that `out/` holds exactly NODE's golden files, byte for byte.
#[track_caller]
fn assert_golden(dir: &ConfDir, node: &str) {
    let mut names: Vec<String> = fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, FILES, "{node}: other files than the golden ones");
    for name in FILES {
        let want = fs::read(golden(node).join(name)).unwrap();
        let got = fs::read(dir.path().join("out").join(name)).unwrap();
        assert!(
            want == got,
            "{node}: out/{name} differs from examples/calico/golden/{node}/{name}; if the change is \
             intended, render the example again and copy out/ to golden/{node}/\n--- rendered\n{}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// The keys of the example's data file, flattened the way the file backend
/// documents it (nested maps are path segments, scalars strings), written
/// here independently of confera's own reader.
fn example_keys() -> Vec<(String, String)> {
    fn flatten(prefix: &str, value: &serde_yaml_ng::Value, out: &mut Vec<(String, String)>) {
        use serde_yaml_ng::Value as Y;
        match value {
            Y::Mapping(map) => {
                for (k, v) in map {
                    let k = k.as_str().expect("data.yaml keys are strings");
                    flatten(&format!("{prefix}/{k}"), v, out);
                }
            }
            Y::String(s) => out.push((prefix.to_owned(), s.clone())),
            Y::Number(n) => out.push((prefix.to_owned(), n.to_string())),
            Y::Bool(b) => out.push((prefix.to_owned(), b.to_string())),
            other => panic!("{prefix}: unexpected {other:?} in data.yaml"),
        }
    }
    let text = fs::read_to_string(Path::new(EXAMPLE).join("data.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut keys = Vec::new();
    flatten("", &doc, &mut keys);
    keys
}

#[test]
fn the_calico_example_renders_each_nodes_golden_files_from_the_data_file() {
    for node in NODES {
        let dir = example_copy();

        render_from_file(&dir, node).assert_success();

        assert_golden(&dir, node);
    }
}

#[test]
fn the_calico_example_renders_the_same_bytes_from_etcd_with_nodename_set() {
    let etcd = Etcd::start();
    let keys = example_keys();
    assert!(
        keys.len() > 30,
        "data.yaml flattened to {} keys",
        keys.len()
    );
    etcd.put_many(&keys);

    for node in NODES {
        let dir = example_copy();

        render_from_etcd(&dir, node, &etcd).assert_success();

        assert_golden(&dir, node);
    }
}

#[test]
fn bird_p_accepts_every_golden_calico_set() {
    for node in NODES {
        for main in ["bird.conf", "bird6.conf"] {
            // Includes resolve beside the main file, so the set is checked whole.
            let path = golden(node).join(main);
            let check = Command::new("bird")
                .arg("-p")
                .arg("-c")
                .arg(&path)
                .output()
                .expect("run bird -p");
            assert!(
                check.status.success(),
                "bird -p rejects {}: {}",
                path.display(),
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
}

#[test]
fn an_ipv6_only_node_takes_its_router_id_from_hash_to_ipv4_of_its_name() {
    // The first four bytes of SHA-256("node-c") are 09 2c d5 e2.
    let want = "router id 9.44.213.226;  # hashToIPv4 of the node name\n";
    for main in ["bird.conf", "bird6.conf"] {
        let text = fs::read_to_string(golden("node-c").join(main)).unwrap();
        assert!(text.contains(want), "{main}:\n{text}");
    }
}

#[test]
fn calico_router_id_hash_derives_the_router_id_from_the_node_name() {
    let dir = example_copy();
    let mut cmd = confera();
    cmd.env("NODENAME", "node-a")
        .env("CALICO_ROUTER_ID", "hash")
        .args(["--confdir", dir.arg()])
        .args(file_backend(&dir))
        .arg("--onetime");

    run_cmd(cmd).assert_success();

    // SHA-256("node-a") starts 66 57 0f f0; only the router id line differs.
    for main in ["bird.conf", "bird6.conf"] {
        let want = fs::read_to_string(golden("node-a").join(main))
            .unwrap()
            .replace(
                "router id 10.0.0.11;  # /host/node-a/ip_addr_v4",
                "router id 102.87.15.240;  # hashToIPv4 of the node name",
            );
        assert_eq!(dir.read(&format!("out/{main}")), want, "{main}");
    }
}

// ----- hostile values -----

/// The line of `templates/calico/<template>` that contains `fragment`.
fn template_line(template: &str, fragment: &str) -> usize {
    let path = Path::new(EXAMPLE).join("templates/calico").join(template);
    let text = fs::read_to_string(&path).unwrap();
    let index = text
        .lines()
        .position(|line| line.contains(fragment))
        .unwrap_or_else(|| panic!("{fragment:?} not in {}", path.display()));
    index + 1
}

/// Content, inode and modification time of each file in `out/`.
fn snapshot(dir: &ConfDir) -> Vec<(String, Vec<u8>, u64, i64)> {
    FILES
        .iter()
        .map(|name| {
            let path = dir.path().join("out").join(name);
            let meta = fs::metadata(&path).unwrap();
            let text = fs::read(&path).unwrap();
            (name.to_string(), text, meta.ino(), meta.mtime_nsec())
        })
        .collect()
}

/// A BGP session that imports and exports everything, as a value would
/// smuggle it in after a newline.
const SESSION: &str = "protocol bgp evil { local as 64512; neighbor 10.0.0.66 as 666; \
                       ipv4 { import all; export all; }; }";

#[test]
fn hostile_calico_values_are_refused_and_nothing_is_committed() {
    let etcd = Etcd::start();
    etcd.put_many(&example_keys());
    let dir = example_copy();
    render_from_etcd(&dir, "node-a", &etcd).assert_success();
    assert_golden(&dir, "node-a");
    let before = snapshot(&dir);
    let peer_key = "/calico/bgp/v1/global/peer_v4/10.0.0.254";
    let peer = etcd.get(peer_key).unwrap();
    let mesh_comment = template_line("bird.tera", "# {{ other }}: {{ other_ip }}");
    let peer_ip = template_line("bird.tera", "set ip = peer.ip | ipv4");
    let password = template_line("bird.tera", "password {{ peer.password | bird_string }}");
    // (key, value, what the error says); each case is undone before the next.
    let node = format!("x\n{SESSION}\n#");
    let cases = [
        (
            format!("/calico/bgp/v1/host/{node}/ip_addr_v4"),
            "10.0.0.66".to_owned(),
            vec![
                format!("render calico/bird.tera line {mesh_comment}: refused to print a value that contains a newline"),
                format!("(from key `/host/{}`)", node.escape_debug()),
            ],
        ),
        (
            peer_key.to_owned(),
            serde_json::json!({"ip": format!("10.0.0.254\n{SESSION}"), "as_num": "64600"}).to_string(),
            vec![
                format!("render calico/bird.tera line {peer_ip}: "),
                // peer_v4 is a secret key: its fields are never shown, and the key is named.
                "the value (from a secret key, not shown) is not an IPv4 address: it contains whitespace or a control character (from secret key `/global/peer_v4/10.0.0.254`)".to_owned(),
            ],
        ),
        (
            peer_key.to_owned(),
            serde_json::json!({"ip": "10.0.0.254", "as_num": "64600", "password": format!("x\"; }}\n{SESSION}\n#")}).to_string(),
            vec![
                format!("render calico/bird.tera line {password}: value cannot be a BIRD string: it contains '\"' at character 2"),
            ],
        ),
    ];

    for (key, value, messages) in &cases {
        etcd.put(key, value);

        let out = render_from_etcd(&dir, "node-a", &etcd);

        out.assert_code(1);
        for message in messages {
            out.assert_stderr_contains(message);
        }
        if key == peer_key {
            // A field of the secret peer_v4 value is never quoted.
            assert!(!out.stderr.contains("neighbor 10.0.0.66"), "{out}");
        }
        assert!(!out.stderr.contains("committed dest="), "{out}");
        assert_eq!(snapshot(&dir), before, "out/ changed after {key:?}");
        assert_golden(&dir, "node-a"); // and no staging directory is left
        if key == peer_key {
            etcd.put(key, &peer);
        } else {
            etcd.delete(key);
        }
    }
    // Back to the original keys: the last good render stands, nothing to do.
    let again = render_from_etcd(&dir, "node-a", &etcd);
    again.assert_success();
    assert_eq!(snapshot(&dir), before);
}

// ----- in place of Calico's confd -----

#[test]
fn confera_reconfigures_a_live_bird_running_the_calico_config_over_its_socket() {
    // node-a's BIRD runs its config as deployed, kernel protocol included,
    // in a namespace of its own: it programs that namespace's tables only,
    // and its BGP sessions reach nothing.
    let netns = Netns::create();
    let etcd = Etcd::start();
    etcd.put_many(&example_keys());
    let dir = example_copy();
    let bird_dir = tempfile::Builder::new()
        .prefix("confera-calico-bird-")
        .tempdir()
        .unwrap();
    let socket = bird_dir.path().join("bird.ctl");
    let resource = dir.read("conf.d/bird.toml").replacen(
        "allow_env = true\n",
        &format!("allow_env = true\nbird_socket = {:?}\n", socket),
        1,
    );
    dir.file("conf.d/bird.toml", &resource);
    // The first render, before BIRD runs (a pod's init container).
    let mut first = confera();
    first
        .env("NODENAME", "node-a")
        .args(["--confdir", dir.arg(), "--node", &etcd.client_url])
        .args(["--onetime", "--sync-only"]);
    run_cmd(first).assert_success();
    let bird = Bird::in_netns(netns.name(), bird_dir, dir.path().join("out/bird.conf"));
    assert!(bird.protocols().contains("Global_10_0_0_254"));
    let routes = Command::new("ip")
        .args(["-n", netns.name(), "route", "show"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("blackhole 10.244.1.0/26 proto bird"),
        "{routes}"
    );

    etcd.put(
        "/calico/bgp/v1/global/peer_v4/10.0.0.253",
        r#"{"ip": "10.0.0.253", "as_num": "64601"}"#,
    );
    let out = render_from_etcd(&dir, "node-a", &etcd);

    out.assert_success()
        .assert_stderr_contains("bird reconfigured");
    bird.wait_for("the new global peer", |b| {
        b.protocols().contains("Global_10_0_0_253")
    });
}
