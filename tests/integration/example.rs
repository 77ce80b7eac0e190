//! The bundled examples, run the way the README runs them: the BIRD example
//! renders exactly `examples/golden/*` and BIRD accepts it; the simple one
//! renders too. Each run works on a copy of the files a clone has, in a temp
//! dir, so the repository's own `out/` directories are never touched.
//! The deployment recipes of `examples/deploy/` are checked at the end.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::cmd::{confera, run, run_cmd, Run};

/// The repository root: the README's commands run from here.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// What the README's first command reads in a clone: the settings file
/// (file backend, examples/cluster.yaml), the resource, the templates, the
/// data, and the empty `out/` that git keeps with `.gitkeep`.
const BIRD_EXAMPLE: &[&str] = &[
    "confera.toml",
    "conf.d",
    "templates",
    "examples/cluster.yaml",
    "out/.gitkeep",
];

/// What the simple example's command reads.
const SIMPLE_EXAMPLE: &[&str] = &[
    "examples/simple/conf.d",
    "examples/simple/templates",
    "examples/simple/data.yaml",
    "examples/simple/out/.gitkeep",
];

/// Copies each of `entries` (files or directories, relative to the
/// repository root) into a fresh temp dir, at the same relative paths.
fn copy_of_repo(entries: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("confera-example-")
        .tempdir()
        .expect("create a temp dir for the example");
    for entry in entries {
        copy_recursively(&Path::new(REPO).join(entry), &dir.path().join(entry));
    }
    dir
}

fn copy_recursively(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
        for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("list {}: {e}", from.display())) {
            let entry = entry.expect("read a directory entry");
            copy_recursively(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// `confera ARGS` run from DIR.
fn run_in(dir: &Path, args: &[&str]) -> Run {
    let mut cmd = confera();
    cmd.current_dir(dir).args(args);
    run_cmd(cmd)
}

/// The README's first command, `confera --confdir . --onetime`, run in ROOT
/// (a copy of [`BIRD_EXAMPLE`]).
fn render_bird_example(root: &Path) -> Run {
    run_in(root, &["--confdir", ".", "--onetime"])
}

/// Every file of a directory except `.gitkeep`, sorted by name.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Asserts that DIR holds exactly the golden files, byte for byte.
#[track_caller]
fn assert_matches_golden(dir: &Path) {
    let golden = files_in(&Path::new(REPO).join("examples/golden"));
    let rendered = files_in(dir);
    assert_eq!(
        names(&rendered),
        names(&golden),
        "other files than the golden ones"
    );
    for (want, got) in golden.iter().zip(&rendered) {
        let (want_bytes, got_bytes) = (fs::read(want).unwrap(), fs::read(got).unwrap());
        assert!(
            want_bytes == got_bytes,
            "{} differs from {}; if the change is intended, render the example again and copy out/ to examples/golden/\n--- rendered\n{}",
            got.display(),
            want.display(),
            String::from_utf8_lossy(&got_bytes)
        );
    }
}

#[test]
fn the_bird_example_renders_exactly_the_golden_files_and_bird_accepts_them() {
    let clone = copy_of_repo(BIRD_EXAMPLE);

    render_bird_example(clone.path()).assert_success();

    assert_matches_golden(&clone.path().join("out"));
    let check = std::process::Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(clone.path().join("out/bird.conf"))
        .output()
        .expect("run bird -p");
    assert!(
        check.status.success(),
        "bird -p rejects the rendered example: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn rendering_the_bird_example_again_changes_nothing() {
    let clone = copy_of_repo(BIRD_EXAMPLE);
    render_bird_example(clone.path()).assert_success();

    let again = render_bird_example(clone.path());

    again.assert_success();
    assert!(!again.stderr.contains("committed dest="), "{again}");
}

#[test]
fn the_simple_example_renders_an_upstream_per_server() {
    let clone = copy_of_repo(SIMPLE_EXAMPLE);

    run_in(
        clone.path(),
        &[
            "--confdir",
            "examples/simple",
            "--backend",
            "file",
            "--file",
            "examples/simple/data.yaml",
            "--onetime",
        ],
    )
    .assert_success();

    let out = fs::read_to_string(clone.path().join("examples/simple/out/app.conf")).unwrap();
    for line in [
        "server 10.0.1.10:8000;  # web-1",
        "server 10.0.1.11:8000;  # web-2",
        "server 10.0.1.12:80;  # web-3",
        "listen 8080;",
    ] {
        assert!(out.contains(line), "{line:?} not in\n{out}");
    }
}

/// The deployment image's build runs `confera --version` as its smoke test.
#[test]
fn the_binary_reports_its_name_and_version() {
    let version = run(&["--version"]);
    version.assert_success();
    assert_eq!(
        version.stdout,
        format!("confera {}\n", env!("CARGO_PKG_VERSION"))
    );
}

// ----- examples/deploy -----

const SIDECAR: &str = "examples/deploy/bird-sidecar.yaml";

/// The documents of the Kubernetes manifest.
fn sidecar_manifest() -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    let text = fs::read_to_string(Path::new(REPO).join(SIDECAR)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).expect("a valid YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn manifest_object<'a>(docs: &'a [serde_yaml_ng::Value], kind: &str) -> &'a serde_yaml_ng::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("{SIDECAR} has no {kind}"))
}

/// The sidecar's conf.d/bird.toml, from its ConfigMap.
fn sidecar_resource(docs: &[serde_yaml_ng::Value]) -> String {
    manifest_object(docs, "ConfigMap")["data"]["bird.toml"]
        .as_str()
        .expect("the ConfigMap holds bird.toml")
        .to_owned()
}

fn container<'a>(
    pod: &'a serde_yaml_ng::Value,
    list: &str,
    name: &str,
) -> &'a serde_yaml_ng::Value {
    pod[list]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("the pod has no {list} entry {name}"))
}

fn strings(value: &serde_yaml_ng::Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|v| match v {
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    other => other.as_str().expect("a string").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The argument after `flag` in `args`.
fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
    &args[at + 1]
}

/// Where a container mounts the volume named `volume`.
fn mount_path(container: &serde_yaml_ng::Value, volume: &str) -> String {
    container["volumeMounts"]
        .as_sequence()
        .and_then(|ms| ms.iter().find(|m| m["name"].as_str() == Some(volume)))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| {
            panic!(
                "{} does not mount {volume}",
                container["name"].as_str().unwrap()
            )
        })
        .to_owned()
}

#[test]
fn the_sidecar_resource_renders_the_bundled_example_exactly_like_the_repos_conf_d() {
    let docs = sidecar_manifest();
    let copy = copy_of_repo(&["templates"]);
    let etc_bird = copy.path().join("etc-bird");
    fs::create_dir(&etc_bird).unwrap();
    let resource =
        sidecar_resource(&docs).replace("/etc/bird/", &format!("{}/", etc_bird.display()));
    fs::create_dir(copy.path().join("conf.d")).unwrap();
    fs::write(copy.path().join("conf.d/bird.toml"), resource).unwrap();

    // What the init container runs, against the example's data.
    run_in(
        Path::new(REPO),
        &[
            "--confdir",
            copy.path().to_str().unwrap(),
            "--backend",
            "file",
            "--file",
            "examples/cluster.yaml",
            "--onetime",
            "--sync-only",
        ],
    )
    .assert_success();

    assert_matches_golden(&etc_bird);
}

#[test]
fn the_sidecar_containers_agree_on_paths_ids_and_ports() {
    let docs = sidecar_manifest();
    let resource: toml::Table = toml::from_str(&sidecar_resource(&docs)).unwrap();
    let socket = resource["bird_socket"].as_str().unwrap();
    let main_file = resource["template"][0]["dest"].as_str().unwrap();
    let pod = &manifest_object(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let bird = container(pod, "containers", "bird");
    let confera = container(pod, "containers", "confera");
    let first_render = container(pod, "initContainers", "confera-first-render");

    // BIRD runs on the file confera renders, with the socket confera uses.
    let bird_args = strings(&bird["command"]);
    assert_eq!(after(&bird_args, "-c"), main_file);
    assert_eq!(after(&bird_args, "-s"), socket);
    // Both containers see the same paths for both, since BIRD opens the
    // staged file (bird_check) by the name confera gives it.
    for volume in ["bird-etc", "bird-run"] {
        assert_eq!(mount_path(bird, volume), mount_path(confera, volume));
        assert_eq!(
            mount_path(first_render, volume),
            mount_path(confera, volume)
        );
    }
    assert!(main_file.starts_with(&format!("{}/", mount_path(confera, "bird-etc"))));
    assert!(socket.starts_with(&format!("{}/", mount_path(confera, "bird-run"))));
    // BIRD drops to confera's uid and gid, which the image runs as.
    let security = &confera["securityContext"];
    let uid = security["runAsUser"].as_u64().unwrap().to_string();
    let gid = security["runAsGroup"].as_u64().unwrap().to_string();
    assert_eq!(after(&bird_args, "-u"), uid);
    assert_eq!(after(&bird_args, "-g"), gid);
    let dockerfile =
        fs::read_to_string(Path::new(REPO).join("examples/deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("\nUSER {uid}:{gid}\n")),
        "the image's USER is not {uid}:{gid}"
    );
    // The first render runs once without BIRD; the sidecar watches.
    let first_args = strings(&first_render["args"]);
    assert!(first_args.contains(&"--onetime".into()) && first_args.contains(&"--sync-only".into()));
    // The probes ask the address confera serves.
    let confera_args = strings(&confera["args"]);
    assert!(confera_args.contains(&"--watch".into()));
    let metrics = after(&confera_args, "--metrics-addr");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &confera[probe]["httpGet"];
        let addr = format!(
            "{}:{}",
            get["host"].as_str().unwrap(),
            get["port"].as_u64().unwrap()
        );
        assert_eq!(addr, metrics, "{probe}");
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
    }
}
