//! The deployment recipes of `examples/deploy/` work as written: the
//! Kubernetes manifest is valid against the API schema it names, BIRD's
//! liveness probe really reaches a real BIRD's socket with the manifest's
//! user, groups and capabilities, and a Docker build from the repository
//! root sends exactly what the Dockerfile copies. Reads the recipes; never
//! edits them.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

use crate::support::bird::Bird;
use crate::support::cmd::{run_cmd, Run};
use crate::support::confdir::REPO;
use crate::support::manifest::{after, container, pod_spec, sidecar_manifest, strings, SIDECAR};

/// Debian's python, where python3-kubernetes is installed (a `python3`
/// earlier in PATH, from pyenv say, would not have it).
const PYTHON: &str = "/usr/bin/python3";

fn repo_file(relpath: &str) -> String {
    fs::read_to_string(Path::new(REPO).join(relpath))
        .unwrap_or_else(|e| panic!("read {relpath}: {e}"))
}

/// `k8s_schema.py FILE` (tests/integration/support): every document of FILE
/// built into the Kubernetes client's model of its apiVersion and kind.
fn validate_manifest(file: &Path) -> Run {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(Path::new(REPO).join("tests/integration/support/k8s_schema.py"))
        .arg(file);
    let run = run_cmd(cmd);
    assert!(
        !run.stdout.contains("No module named") && !run.stderr.contains("No module named"),
        "python3-kubernetes is not installed (scripts/setup installs it):\n{run}"
    );
    run
}

#[test]
fn the_sidecar_manifest_is_valid_against_the_kubernetes_api_schema_it_names() {
    let run = validate_manifest(&Path::new(REPO).join(SIDECAR));

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

    let run = validate_manifest(&file);

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

// ----- the container image's build context -----

/// The sources of the Dockerfile's `COPY` lines that copy from the build
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

#[test]
fn a_docker_build_from_the_repository_root_sends_exactly_what_the_dockerfile_copies() {
    let ignore = fs::read_to_string(Path::new(REPO).join(".dockerignore"))
        .expect("a .dockerignore at the repository root, or target/ goes to the builder");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Everything is left out, then only named paths are let back in: an
    // allow-list, so no new directory (target/, out/, a local build) can
    // slip into the context.
    assert_eq!(
        patterns.first(),
        Some(&"*"),
        ".dockerignore must start with *"
    );
    let allowed: BTreeSet<String> = patterns[1..]
        .iter()
        .map(|p| {
            p.strip_prefix('!')
                .unwrap_or_else(|| panic!("{p:?}: after *, only !exceptions"))
                .trim_matches('/')
                .to_owned()
        })
        .collect();

    let copied = dockerfile_copies(&repo_file("examples/deploy/Dockerfile"));

    assert_eq!(
        allowed, copied,
        "the build context (.dockerignore) and the Dockerfile's COPY sources differ"
    );
    for path in &copied {
        assert!(
            Path::new(REPO).join(path).exists(),
            "the Dockerfile copies {path}, which does not exist"
        );
    }
}
