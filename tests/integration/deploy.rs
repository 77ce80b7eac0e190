//! The deployment recipes of `examples/deploy/` work as written: the
//! Kubernetes manifests are valid against the API schema they name, BIRD's
//! liveness probe really reaches a real BIRD's socket with the manifest's
//! user, groups and capabilities, a Docker build from the repository root
//! sends what the Dockerfiles copy and not the build output, the packaged
//! settings file holds only settings confera accepts, and the systemd
//! unit's identity (root and four capabilities, or BIRD's user with the
//! drop-in) is exactly what confera needs to write BIRD's files and reload
//! BIRD. Reads the recipes; never edits them.
//!
//! What needs a brand-new Debian root (the package installing, and
//! `systemd-analyze verify` on the units as installed, man page included)
//! is in `scripts/check-package`: `systemd-analyze` checks the man page with
//! the host's own `man`, so the unit can only be verified where the install
//! steps really ran.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

use crate::support::bird::Bird;
use crate::support::cmd::{confera, run_cmd, Run};
use crate::support::confdir::{ConfDir, REPO};
use crate::support::manifest::{after, container, pod_spec, sidecar_manifest, strings, SIDECAR};
use crate::support::user::{open_for_traversal, TempUser};

/// Debian's python, where python3-kubernetes is installed (a `python3`
/// earlier in PATH, from pyenv say, would not have it).
const PYTHON: &str = "/usr/bin/python3";

fn repo_file(relpath: &str) -> String {
    fs::read_to_string(Path::new(REPO).join(relpath))
        .unwrap_or_else(|e| panic!("read {relpath}: {e}"))
}

/// `k8s_schema.py FILES` (tests/integration/support): every document of
/// each file built into the Kubernetes client's model of its apiVersion and
/// kind.
fn validate_manifests(files: &[std::path::PathBuf]) -> Run {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(Path::new(REPO).join("tests/integration/support/k8s_schema.py"))
        .args(files);
    let run = run_cmd(cmd);
    assert!(
        !run.stdout.contains("No module named") && !run.stderr.contains("No module named"),
        "python3-kubernetes is not installed (scripts/setup installs it):\n{run}"
    );
    run
}

/// Every file under DIR (recursively) whose name ends with one of EXTENSIONS.
fn files_under(dir: &Path, extensions: &[&str], found: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, extensions, found);
        } else if extensions
            .iter()
            .any(|ext| path.to_string_lossy().ends_with(ext))
        {
            found.push(path);
        }
    }
}

/// The YAML files under examples/ that are Kubernetes manifests: a document
/// with an apiVersion and a kind.
fn kubernetes_manifests() -> Vec<std::path::PathBuf> {
    use serde::Deserialize;
    let mut yaml = Vec::new();
    files_under(
        &Path::new(REPO).join("examples"),
        &[".yaml", ".yml"],
        &mut yaml,
    );
    yaml.sort();
    yaml.into_iter()
        .filter(|file| {
            let text = fs::read_to_string(file).unwrap();
            let is_manifest = serde_yaml_ng::Deserializer::from_str(&text).any(|doc| {
                Value::deserialize(doc)
                    .is_ok_and(|d| d["apiVersion"].is_string() && d["kind"].is_string())
            });
            is_manifest
        })
        .collect()
}

#[test]
fn every_kubernetes_manifest_in_examples_is_valid_against_the_api_schema_it_names() {
    let manifests = kubernetes_manifests();
    assert!(
        manifests.contains(&Path::new(REPO).join(SIDECAR)),
        "{SIDECAR} is not found as a manifest: {manifests:?}"
    );

    let run = validate_manifests(&manifests);

    run.assert_success();
    for valid in [
        "ConfigMap confera-conf-d: valid V1ConfigMap",
        "DaemonSet bird: valid V1DaemonSet",
    ] {
        assert!(run.stdout.contains(valid), "{valid:?} not in\n{run}");
    }
}

#[test]
fn the_schema_check_refuses_a_field_where_the_api_has_none() {
    // A plausible slip: supplementalGroups is a field of the pod's
    // securityContext, not of a container's. The API server would refuse
    // the manifest; so must the check.
    let manifest = repo_file(SIDECAR).replacen(
        "          securityContext: &confera-security\n",
        "          securityContext: &confera-security\n            supplementalGroups: [10001]\n",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bird-sidecar.yaml");
    fs::write(&file, manifest).unwrap();

    let run = validate_manifests(&[file]);

    run.assert_code(1).assert_stdout_contains(
        "initContainers[0].securityContext: unknown field 'supplementalGroups' in V1SecurityContext",
    );
}

// ----- BIRD's liveness probe -----

fn id_list(value: &Value) -> Vec<u64> {
    value
        .as_sequence()
        .map(|ids| ids.iter().map(|id| id.as_u64().expect("an id")).collect())
        .unwrap_or_default()
}

/// CAPS (`NET_ADMIN` or `CAP_NET_ADMIN`) as a setpriv capability set that
/// holds those and nothing else: `-all,+net_admin,...`.
fn capability_set(caps: &[String]) -> String {
    let mut set = "-all".to_owned();
    for cap in caps {
        set.push_str(",+");
        set.push_str(&cap.trim_start_matches("CAP_").to_lowercase());
    }
    set
}

/// How a process of `container` runs: as kubelet starts an exec probe in
/// it, with the pod's and the container's securityContext, turned into
/// `setpriv` options.
fn setpriv_options(pod: &Value, container: &Value) -> Vec<String> {
    let security = &container["securityContext"];
    // No runAsUser/runAsGroup: the image's user, root for a BIRD image.
    let uid = security["runAsUser"].as_u64().unwrap_or(0);
    let gid = security["runAsGroup"].as_u64().unwrap_or(0);
    // Every process of the pod gets supplementalGroups and fsGroup.
    let mut groups: BTreeSet<u64> = id_list(&pod["securityContext"]["supplementalGroups"])
        .into_iter()
        .collect();
    groups.extend(pod["securityContext"]["fsGroup"].as_u64());
    let capabilities = &security["capabilities"];
    assert!(
        strings(&capabilities["drop"]).contains(&"ALL".to_owned()),
        "the container does not drop ALL capabilities: its set would be the runtime's default"
    );
    let caps = capability_set(&strings(&capabilities["add"]));
    let mut options = vec![
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        // The probe starts from the container's sets, not from the test's.
        format!("--inh-caps={caps}"),
        format!("--bounding-set={caps}"),
    ];
    options.push(if groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        let list: Vec<String> = groups.iter().map(u64::to_string).collect();
        format!("--groups={}", list.join(","))
    });
    if security["allowPrivilegeEscalation"].as_bool() == Some(false) {
        options.push("--no-new-privs".to_owned());
    }
    options
}

#[test]
fn birds_liveness_probe_reaches_birds_socket_with_the_manifests_user_groups_and_capabilities() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the probe test starts BIRD as root and drops to the manifest's ids (CI runs as root)"
    );
    let docs = sidecar_manifest();
    let pod = pod_spec(&docs);
    let bird = container(pod, "containers", "bird");
    let bird_args = strings(&bird["command"]);
    let socket_in_pod = after(&bird_args, "-s");
    let probe = strings(&bird["livenessProbe"]["exec"]["command"]);
    assert!(
        probe.iter().any(|a| a == socket_in_pod),
        "the probe {probe:?} does not ask BIRD's socket {socket_in_pod}"
    );
    // A real BIRD that drops to the manifest's -u/-g, as in the pod: the
    // socket is then theirs, 0660.
    let uid: u32 = after(&bird_args, "-u").parse().expect("a numeric -u");
    let gid: u32 = after(&bird_args, "-g").parse().expect("a numeric -g");
    let real = Bird::start_as("router id 10.0.0.1;\nprotocol device {}\n", uid, gid);
    let probe: Vec<String> = probe
        .iter()
        .map(|a| {
            if a == socket_in_pod {
                real.socket.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();

    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv_options(pod, bird)).args(&probe);
    let run = run_cmd(cmd);

    assert!(
        run.code == 0 && run.stdout.contains("Daemon is up and running"),
        "BIRD's liveness probe fails as the pod runs it, so kubelet would restart BIRD \
         again and again (setpriv {:?} {probe:?}):\n{run}",
        setpriv_options(pod, bird)
    );
}

// ----- the container images' build context -----

/// Every Dockerfile under examples/, each built from the repository root.
fn dockerfiles() -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    files_under(
        &Path::new(REPO).join("examples"),
        &["/Dockerfile"],
        &mut found,
    );
    found.sort();
    found
}

/// The sources of a Dockerfile's `COPY` lines that copy from the build
/// context (not `--from=` another stage).
fn dockerfile_copies(dockerfile: &str) -> BTreeSet<String> {
    dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|args| !args.trim_start().starts_with("--from="))
        .flat_map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            // Every word but the last (the destination).
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether Docker leaves PATH (relative to the context) out of the build
/// context: a pattern matches it or one of its parent directories. The
/// patterns use Go's `filepath.Match`, which `confera::pattern` implements;
/// exceptions (`!`) and `**` are not used, so this is Docker's whole rule.
fn docker_ignores(patterns: &[String], path: &str) -> bool {
    let mut prefixes = Vec::new();
    let mut at = 0;
    while let Some(slash) = path[at..].find('/') {
        prefixes.push(&path[..at + slash]);
        at += slash + 1;
    }
    prefixes.push(path);
    patterns.iter().any(|p| {
        prefixes
            .iter()
            .any(|prefix| confera::pattern::matches(p, prefix))
    })
}

#[test]
fn a_docker_build_from_the_repository_root_leaves_build_output_out_and_sends_what_is_copied() {
    let ignore = fs::read_to_string(Path::new(REPO).join(".dockerignore"))
        .expect("a .dockerignore at the repository root, or target/ goes to the builder");
    let patterns: Vec<String> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    for pattern in &patterns {
        assert!(
            !pattern.starts_with('!') && !pattern.contains("**"),
            "{pattern}: this check reads only plain patterns"
        );
    }

    for left_out in [
        "target/release/confera",
        "target/debug/deps",
        "out/bird.conf",
        "examples/simple/out/app.conf",
        "fuzz/target/release",
        ".git",
    ] {
        assert!(
            docker_ignores(&patterns, left_out),
            "{left_out} would be sent to the builder"
        );
    }
    let dockerfiles = dockerfiles();
    assert!(!dockerfiles.is_empty());
    for dockerfile in dockerfiles {
        for path in dockerfile_copies(&fs::read_to_string(&dockerfile).unwrap()) {
            let shown = dockerfile.strip_prefix(REPO).unwrap().display();
            assert!(
                Path::new(REPO).join(&path).exists(),
                "{shown} copies {path}, which does not exist"
            );
            assert!(
                !docker_ignores(&patterns, &path),
                "{shown} copies {path}, which .dockerignore leaves out of the context"
            );
        }
    }
}

// ----- the packaged settings file -----

/// The resource `confera check` needs to get as far as the settings.
fn minimal_confdir() -> ConfDir {
    let dir = ConfDir::new();
    dir.template("a.tera", "a\n").resource(
        "a.toml",
        "[template]\nsrc = \"a.tera\"\ndest = \"a.out\"\nkeys = [\"/a\"]\n",
    );
    dir
}

/// `confera check` with SETTINGS as its settings file. With a `username`,
/// the password is in the environment, where the file says to keep it
/// (`CONFERA_PASSWORD` in /etc/default/confera).
fn check_with_settings(dir: &ConfDir, settings: &str) -> Run {
    let file = dir.path().join("confera.toml");
    fs::write(&file, settings).unwrap();
    let mut cmd = confera();
    cmd.args(["check", "--confdir", dir.arg(), "--config-file"])
        .arg(&file);
    if settings.lines().any(|l| l.starts_with("username = ")) {
        cmd.env("CONFERA_PASSWORD", "not-a-secret");
    }
    run_cmd(cmd)
}

/// The settings a settings file shows commented out (`# key = value`), by
/// paragraph (a blank line ends one), each turned on.
fn commented_settings(text: &str) -> Vec<String> {
    let is_setting = |line: &str| {
        line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    };
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .filter_map(|l| l.strip_prefix("# "))
                .filter(|l| is_setting(l))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        })
        .filter(|settings| !settings.is_empty())
        .collect()
}

#[test]
fn the_packaged_confera_toml_is_accepted_as_shipped_and_with_each_paragraph_turned_on() {
    let shipped = repo_file("examples/deploy/confera.toml");
    let paragraphs = commented_settings(&shipped);
    assert!(
        paragraphs.len() >= 8,
        "too few settings shown: {paragraphs:?}"
    );
    let dir = minimal_confdir();

    check_with_settings(&dir, &shipped).assert_success();
    for settings in &paragraphs {
        let run = check_with_settings(&dir, settings);
        assert_eq!(run.code, 0, "confera refuses\n{settings}\n{run}");
    }
}

// ----- the systemd unit's identity -----

/// The unit's `KEY=` value (the last one, as systemd reads it).
fn unit_setting(unit: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .next_back()
        .map(str::to_owned)
}

/// A host set up as Debian's bird2 sets it up, with a throwaway user in the
/// place of `bird`: /etc/bird is the user's (0750) and holds a file of
/// theirs (0640), included by a real BIRD that runs as the user (its control
/// socket, 0660, and its pid file are the user's). Two resources write
/// /etc/bird: `fabric` into the user's file, reloaded over the socket, and
/// `signal` into a new file, reloaded by SIGHUP through BIRD's pid file.
struct BirdHost {
    confdir: ConfDir,
    etc_bird: std::path::PathBuf,
    bird: Bird,
    // Last: BIRD, running as the user, stops before the user is removed.
    user: TempUser,
}

impl BirdHost {
    fn new() -> BirdHost {
        let user = TempUser::create();
        let confdir = ConfDir::new();
        // The user (and BIRD as the user) reaches /etc/bird inside it.
        open_for_traversal(confdir.path());
        let etc_bird = confdir.path().join("etc-bird");
        fs::create_dir(&etc_bird).unwrap();
        chown(&etc_bird, Some(user.uid), Some(user.gid)).unwrap();
        fs::set_permissions(&etc_bird, fs::Permissions::from_mode(0o750)).unwrap();
        reset_destinations(&etc_bird, &user);
        let fabric = etc_bird.join("fabric.conf");
        let bird = Bird::start_as(
            &format!(
                "router id 10.0.0.1;\nprotocol device {{}}\ninclude \"{}\";\n",
                fabric.display()
            ),
            user.uid,
            user.gid,
        );
        confdir
            .file("data.yaml", "fabric: {asn: 64512}\n")
            .template(
                "fabric.conf.tera",
                "protocol static fabric_static { ipv4; route 10.99.0.0/24 blackhole; }\n",
            )
            .template("signal.conf.tera", "# reloaded by SIGHUP\n")
            .resource(
                "fabric",
                &format!(
                    "[template]\nsrc = \"fabric.conf.tera\"\ndest = \"{}\"\nkeys = [\"/fabric\"]\nbird_socket = \"{}\"\n",
                    fabric.display(),
                    bird.socket.display()
                ),
            )
            .resource(
                "signal",
                &format!(
                    "[template]\nsrc = \"signal.conf.tera\"\ndest = \"{}\"\nkeys = [\"/fabric\"]\nreload_signal = \"SIGHUP\"\npid_file = \"{}\"\n",
                    etc_bird.join("signal.conf").display(),
                    bird.pid_file.display()
                ),
            );
        BirdHost {
            confdir,
            etc_bird,
            bird,
            user,
        }
    }

    /// `confera --onetime` over this host's resources, started by `setpriv`
    /// with OPTIONS (identity, capabilities), from the destinations as they
    /// were before any render.
    fn render_with(&self, options: &[String]) -> Run {
        reset_destinations(&self.etc_bird, &self.user);
        let base = confera();
        let mut cmd = Command::new("setpriv");
        cmd.args(options)
            .arg(base.get_program())
            .args([
                "--confdir",
                self.confdir.arg(),
                "--backend",
                "file",
                "--file",
            ])
            .arg(self.confdir.path().join("data.yaml"))
            .arg("--onetime")
            .stdin(std::process::Stdio::null());
        for (key, value) in base.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        run_cmd(cmd)
    }
}

/// /etc/bird before confera: the user's fabric.conf (0640), no signal.conf.
fn reset_destinations(etc_bird: &Path, user: &TempUser) {
    let fabric = etc_bird.join("fabric.conf");
    fs::write(&fabric, "# nothing yet\n").unwrap();
    chown(&fabric, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(&fabric, fs::Permissions::from_mode(0o640)).unwrap();
    let _ = fs::remove_file(etc_bird.join("signal.conf"));
}

/// `setpriv` options for root bounded to CAPS (systemd's names), with no new
/// privileges, as the unit runs confera.
fn as_root_with(caps: &[String]) -> Vec<String> {
    let set = capability_set(caps);
    vec![
        "--reuid=0".into(),
        "--regid=0".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--bounding-set={set}"),
        "--no-new-privs".into(),
    ]
}

#[test]
fn the_units_capabilities_are_exactly_what_root_needs_to_write_birds_files_and_reload_bird() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs confera as root with the unit's capabilities (CI runs as root)"
    );
    let unit = repo_file("examples/deploy/confera.service");
    assert_eq!(unit_setting(&unit, "User").as_deref(), Some("root"));
    assert_eq!(
        unit_setting(&unit, "NoNewPrivileges").as_deref(),
        Some("yes")
    );
    let caps: Vec<String> = unit_setting(&unit, "CapabilityBoundingSet")
        .expect("the unit sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let host = BirdHost::new();

    // With the unit's set: both files written, the user's file still the
    // user's (0640), BIRD reloaded over its socket and by SIGHUP.
    let run = host.render_with(&as_root_with(&caps));
    run.assert_success();
    let fabric = fs::metadata(host.etc_bird.join("fabric.conf")).unwrap();
    assert_eq!((fabric.uid(), fabric.gid()), (host.user.uid, host.user.gid));
    assert_eq!(fabric.mode() & 0o7777, 0o640);
    host.bird.wait_for("fabric_static in show protocols", |b| {
        b.protocols().contains("fabric_static")
    });

    // Without any one of them, a write or a reload fails (exit 1, logged).
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let run = host.render_with(&as_root_with(&fewer));
        assert!(
            run.code == 1 && run.stderr.contains(" ERROR "),
            "without {missing} confera still wrote and reloaded everything: the unit's \
             CapabilityBoundingSet= holds a capability nothing needs\n{run}"
        );
    }
}

#[test]
fn with_the_run_as_bird_drop_in_confera_needs_no_capability() {
    let drop_in = repo_file("examples/deploy/run-as-bird.conf");
    assert_eq!(unit_setting(&drop_in, "User").as_deref(), Some("bird"));
    assert_eq!(unit_setting(&drop_in, "Group").as_deref(), Some("bird"));
    assert_eq!(
        unit_setting(&drop_in, "CapabilityBoundingSet").as_deref(),
        Some("")
    );
    let host = BirdHost::new();

    // BIRD's user (the throwaway user here), no capability at all.
    let run = host.render_with(&[
        format!("--reuid={}", host.user.uid),
        format!("--regid={}", host.user.gid),
        "--clear-groups".into(),
        format!("--inh-caps={}", capability_set(&[])),
        format!("--bounding-set={}", capability_set(&[])),
        "--no-new-privs".into(),
    ]);

    run.assert_success();
    assert!(host.etc_bird.join("signal.conf").exists());
    host.bird.wait_for("fabric_static in show protocols", |b| {
        b.protocols().contains("fabric_static")
    });
}
