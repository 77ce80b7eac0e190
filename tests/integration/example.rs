//! The bundled examples, run the way the README runs them: the BIRD example
//! renders exactly `examples/golden/*` and BIRD accepts it; the simple one
//! renders too. Each run works on a copy of the files a clone has, in a temp
//! dir, so the repository's own `out/` directories are never touched.
//! The deployment recipes of `examples/deploy/` are checked at the end.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::cmd::{confera, run, run_cmd, Run};
use crate::support::confdir::{copy_of_repo, REPO};
use crate::support::manifest::{after, container, manifest_object, sidecar_manifest, strings};

/// What the README's first command reads in a clone: the settings file
/// (file backend, examples/cluster.yaml), the resource, the templates, the
/// data, and the empty `out/` that git keeps with `.gitkeep`.
pub(crate) const BIRD_EXAMPLE: &[&str] = &[
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

/// `confera ARGS` run from DIR, with no NODENAME: the example's node is
/// the data's /fabric/local/node.
fn run_in(dir: &Path, args: &[&str]) -> Run {
    run_as(dir, None, args)
}

/// `confera ARGS` run from DIR with NODENAME set to NODE (or unset).
fn run_as(dir: &Path, node: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = confera();
    cmd.current_dir(dir).args(args).env_remove("NODENAME");
    if let Some(node) = node {
        cmd.env("NODENAME", node);
    }
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

/// The bundled example rendered in a fresh copy as NODE (NODENAME), from
/// `examples/cluster.yaml` plus EXTRA data (YAML; later keys win).
fn render_bird_example_as(node: Option<&str>, extra: &str) -> (tempfile::TempDir, Run) {
    let clone = copy_of_repo(BIRD_EXAMPLE);
    fs::write(clone.path().join("extra.yaml"), extra).unwrap();
    let run = run_as(
        clone.path(),
        node,
        &[
            "--confdir",
            ".",
            "--backend",
            "file",
            "--file",
            "examples/cluster.yaml",
            "--file",
            "extra.yaml",
            "--onetime",
        ],
    );
    (clone, run)
}

/// The three rendered files of a copy, concatenated with their names.
fn rendered(clone: &Path) -> [String; 3] {
    ["bird.conf", "bird_filters.conf", "bird_ipam.conf"]
        .map(|f| fs::read_to_string(clone.join("out").join(f)).unwrap_or_default())
}

/// The `protocol NAME` block of a BIRD config.
#[track_caller]
fn protocol<'a>(config: &'a str, name: &str) -> &'a str {
    let start = config
        .find(&format!("protocol bgp {name} "))
        .unwrap_or_else(|| panic!("no protocol {name} in\n{config}"));
    let end = start + config[start..].find("\n}\n").expect("the block's end");
    &config[start..end]
}

#[track_caller]
fn assert_contains_all(text: &str, fragments: &[&str]) {
    for fragment in fragments {
        assert!(text.contains(fragment), "{fragment:?} not in\n{text}");
    }
}

#[track_caller]
fn assert_contains_none(text: &str, fragments: &[&str]) {
    for fragment in fragments {
        assert!(!text.contains(fragment), "{fragment:?} in\n{text}");
    }
}

#[test]
fn rendering_as_node_b_gives_node_bs_router_id_blocks_and_export_set_and_nothing_of_node_as() {
    let (clone, run) = render_bird_example_as(Some("node-b"), "");
    run.assert_success(); // and bird -p, the resource's check, accepted it

    let [main, filters, ipam] = rendered(clone.path());
    for file in [&main, &filters, &ipam] {
        assert!(file.starts_with("# Generated by confera from templates/"));
        assert!(file
            .lines()
            .next()
            .unwrap()
            .ends_with(r#" for node "node-b"."#));
    }
    assert_contains_all(
        &main,
        &[
            "router id 10.0.0.12;",
            "local 10.0.0.12 as 64512;",
            "protocol bgp mesh_node_a from fabric_node4",
            "protocol bgp mesh_node_c from fabric_node4",
        ],
    );
    assert_contains_none(&main, &["mesh_node_b", "10.0.0.11;", "route_server"]);
    assert_contains_all(
        &filters,
        &[
            "function fabric_own_block()\n{\n  if net.type = NET_IP4 then return net ~ [ 10.244.2.0/26 ];\n  return false;",
            "filter from_node_a",
        ],
    );
    assert_contains_none(&filters, &["filter from_node_b"]);
    assert_contains_all(&ipam, &["route 10.244.2.0/26 blackhole;"]);
    assert_contains_none(&ipam, &["10.244.1.", "fd00:10:244:1::"]);
}

#[test]
fn a_set_but_empty_nodename_renders_the_data_files_node() {
    let clone = copy_of_repo(BIRD_EXAMPLE);

    run_as(clone.path(), Some(""), &["--confdir", ".", "--onetime"]).assert_success();

    assert_matches_golden(&clone.path().join("out"));
}

#[test]
fn a_nodename_with_no_entry_under_nodes_fails_the_render_and_writes_nothing() {
    let (clone, run) = render_bird_example_as(Some("node-x"), "");

    run.assert_code(1)
        .assert_stderr_contains("this node, node-x, has no entry under /nodes");
    assert!(files_in(&clone.path().join("out")).is_empty());
}

#[test]
fn every_node_of_the_example_renders_and_gets_sessions_only_in_its_own_address_families() {
    // node-c has no IPv6 address, node-d no IPv4 one: no session of the
    // missing family is rendered for them (it would sit Idle forever).
    for (node, present, absent) in [
        (
            "node-a",
            &[
                "protocol bgp peer_global_tor_1_v6 ",
                "protocol bgp mesh6_node_d ",
            ][..],
            &[][..],
        ),
        (
            "node-c",
            &[
                "protocol bgp peer_global_tor_1 ",
                "protocol bgp mesh_node_a ",
            ],
            &[
                "protocol bgp peer_global_tor_1_v6 ",
                "protocol bgp mesh6_",
                "fabric_kernel6",
            ],
        ),
        (
            "node-d",
            &[
                "router id 10.0.0.14;",
                "protocol bgp mesh6_node_a ",
                "protocol bgp peer_global_tor_1_v6 ",
            ],
            &[
                "protocol bgp peer_global_tor_1 ",
                "protocol bgp mesh_",
                "fabric_kernel4",
                "template bgp fabric_node4",
            ],
        ),
    ] {
        let (clone, run) = render_bird_example_as(Some(node), "");
        run.assert_success();
        let [main, ..] = rendered(clone.path());
        assert_contains_all(&main, present);
        assert_contains_none(&main, absent);
    }
}

/// The example with the mesh off and node-a a route reflector.
const REFLECTOR: &str = r#"
fabric:
  global:
    mesh: "off"
  nodes:
    node-a:
      rr_cluster_id: 244.0.0.1
"#;

#[test]
fn with_the_mesh_off_a_reflector_has_clients_and_the_others_peer_only_with_it() {
    let (clone, run) = render_bird_example_as(Some("node-a"), REFLECTOR);
    run.assert_success();
    let [main, filters, _] = rendered(clone.path());
    // iBGP nodes are clients (node-d over IPv6, all it has); node-c, in its
    // own AS, is an eBGP neighbour.
    for client in ["rr_node_b", "rr6_node_b", "rr6_node_d"] {
        assert_contains_all(
            protocol(&main, client),
            &["rr client;", "rr cluster id 244.0.0.1;"],
        );
    }
    assert_contains_all(
        protocol(&main, "rr_node_c"),
        &["neighbor 10.0.0.9 as 64513;"],
    );
    assert_contains_none(protocol(&main, "rr_node_c"), &["rr client"]);
    assert_contains_all(
        &filters,
        &["if source = RTS_BGP && fabric_other_node_block() then accept;"],
    );

    let (clone, run) = render_bird_example_as(Some("node-b"), REFLECTOR);
    run.assert_success();
    let [main, filters, _] = rendered(clone.path());
    assert_contains_all(
        &main,
        &[
            "protocol bgp rr_node_a ",
            "import filter fabric_from_reflector;",
        ],
    );
    assert_contains_none(&main, &["rr_node_c", "rr_node_d", "rr client"]);
    assert_contains_none(
        &filters,
        &["if source = RTS_BGP && fabric_other_node_block()"],
    );
}

#[test]
fn two_node_names_that_map_to_one_bird_name_fail_the_render_naming_the_node() {
    let extra = "fabric: {nodes: {node.b: {ip4: 10.0.0.66}}}";

    let (clone, run) = render_bird_example_as(None, extra);

    run.assert_code(1).assert_stderr_contains(
        r#"node "node.b" maps to the same BIRD names (node_b) as another node"#,
    );
    assert!(files_in(&clone.path().join("out")).is_empty());
}

/// A BIRD config a hostile value would smuggle in, if it reached a file.
const PAYLOAD: &str = r#"x\nprotocol bgp evil { local as 64512; neighbor 192.0.2.66 as 666; ipv4 { import all; export all; }; }\n#"#;

#[test]
fn a_hostile_value_anywhere_fails_the_render_and_never_reaches_birds_files() {
    let yaml = |text: &str| text.replace("@PAYLOAD@", PAYLOAD);
    let nodename = Some(PAYLOAD.replace("\\n", "\n"));
    // What is hostile, NODENAME if any, the extra data, and what the error
    // says.
    let cases: [(&str, Option<String>, String, &str); 15] = [
        (
            "NODENAME",
            nodename,
            String::new(),
            "the node name from the NODENAME environment variable may hold only ASCII letters",
        ),
        (
            "the local node name",
            None,
            yaml(r#"fabric: {local: {node: "@PAYLOAD@"}}"#),
            "the node name from /local/node may hold only ASCII letters",
        ),
        // No ip4: the templates of issue 11 printed such a name in a comment.
        (
            "a node's name",
            None,
            yaml(r#"fabric: {nodes: {"@PAYLOAD@": {asn: 64512}}}"#),
            r"value cannot be a BIRD string: it contains '\n'",
        ),
        (
            "a node name with a space",
            None,
            yaml(r#"fabric: {nodes: {"node x": {ip4: 10.0.0.66}}}"#),
            r#""mesh_node x" is not a BIRD symbol name"#,
        ),
        (
            "a peer's name",
            None,
            yaml(
                r#"fabric: {peers: {global: {"@PAYLOAD@": '{"ip": "10.0.0.66", "asn": 65000}'}}}"#,
            ),
            "is not a BIRD symbol name",
        ),
        (
            "a description",
            None,
            yaml(
                r#"fabric: {peers: {global: {tor-1: '{"ip": "10.0.0.1", "asn": 65000, "description": "@PAYLOAD@"}'}}}"#,
            ),
            r"value cannot be a BIRD string: it contains '\n'",
        ),
        (
            "a description with a quote",
            None,
            yaml(
                r#"fabric: {peers: {global: {tor-1: '{"ip": "10.0.0.1", "asn": 65000, "description": "rack \"A\""}'}}}"#,
            ),
            r#"value cannot be a BIRD string: it contains '"'"#,
        ),
        (
            "a community",
            None,
            yaml(r#"fabric: {communities: {10.244.1.64-26: '["64512:100@PAYLOAD@"]'}}"#),
            "is not an unsigned integer",
        ),
        (
            "a community's prefix",
            None,
            yaml(r#"fabric: {communities: {"@PAYLOAD@": '["64512:100"]'}}"#),
            "is not an IP prefix",
        ),
        (
            "a block",
            None,
            yaml(r#"fabric: {nodes: {node-a: {blocks: ["10.244.1.0/26@PAYLOAD@"]}}}"#),
            "(value of key `/nodes/node-a/blocks/0`)",
        ),
        (
            "a service range",
            None,
            yaml(r#"fabric: {global: {services: {cluster: ["@PAYLOAD@"]}}}"#),
            "(value of key `/global/services/cluster/0`)",
        ),
        (
            "the mesh password",
            None,
            yaml(r#"fabric: {secrets: {mesh: {password: "a\"; import all; #"}}}"#),
            "(value of key `/secrets/mesh/password`)",
        ),
        (
            "a cluster id",
            None,
            yaml(
                r#"fabric: {global: {mesh: "off"}, nodes: {node-a: {rr_cluster_id: "@PAYLOAD@"}}}"#,
            ),
            "(value of key `/nodes/node-a/rr_cluster_id`)",
        ),
        (
            "an import limit action",
            None,
            yaml(r#"fabric: {global: {import: {limit_action: "@PAYLOAD@"}}}"#),
            "/global/import/limit_action must be one of disable, restart, block, warn",
        ),
        (
            "an AS number",
            None,
            yaml(r#"fabric: {nodes: {node-b: {asn: "@PAYLOAD@"}}}"#),
            "(value of key `/nodes/node-b/asn`)",
        ),
    ];
    for (what, nodename, extra, error) in cases {
        let (clone, run) = render_bird_example_as(nodename.as_deref(), &extra);

        assert_eq!(run.code, 1, "{what}: the render must fail\n{run}");
        assert!(
            run.stderr.contains("error=render ") && run.stderr.contains(error),
            "{what}: no render error saying {error:?}\n{run}"
        );
        assert!(
            !run.stderr.contains("\nprotocol bgp evil"),
            "{what}: the payload's newline reached the log\n{run}"
        );
        assert!(
            files_in(&clone.path().join("out")).is_empty(),
            "{what}: files were written"
        );
    }
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

/// The sidecar's conf.d/bird.toml, from its ConfigMap.
fn sidecar_resource(docs: &[serde_yaml_ng::Value]) -> String {
    manifest_object(docs, "ConfigMap")["data"]["bird.toml"]
        .as_str()
        .expect("the ConfigMap holds bird.toml")
        .to_owned()
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

/// Renders the sidecar's resource (its ConfigMap's bird.toml, with the
/// repository's templates as they are, as the quick start ships them) the
/// way its init container does, against the example's data, as NODE
/// (NODENAME, or unset). Returns the copy and its `etc-bird/`.
fn render_sidecar_as(node: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let docs = sidecar_manifest();
    let copy = copy_of_repo(&["templates"]);
    let etc_bird = copy.path().join("etc-bird");
    fs::create_dir(&etc_bird).unwrap();
    let resource =
        sidecar_resource(&docs).replace("/etc/bird/", &format!("{}/", etc_bird.display()));
    fs::create_dir(copy.path().join("conf.d")).unwrap();
    fs::write(copy.path().join("conf.d/bird.toml"), resource).unwrap();

    // What the init container runs, against the example's data.
    run_as(
        Path::new(REPO),
        node,
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
    (copy, etc_bird)
}

#[test]
fn the_sidecar_resource_renders_the_bundled_example_exactly_like_the_repos_conf_d() {
    let (_copy, etc_bird) = render_sidecar_as(None);

    assert_matches_golden(&etc_bird);
}

#[test]
fn every_sidecar_pod_renders_its_own_node_from_spec_node_name_with_the_templates_as_shipped() {
    let docs = sidecar_manifest();
    let pod = &manifest_object(&docs, "DaemonSet")["spec"]["template"]["spec"];
    for (list, name) in [
        ("initContainers", "confera-first-render"),
        ("containers", "confera"),
    ] {
        let env = container(pod, list, name)["env"].as_sequence().unwrap();
        let nodename = env
            .iter()
            .find(|e| e["name"].as_str() == Some("NODENAME"))
            .unwrap_or_else(|| panic!("{name} sets no NODENAME"));
        assert_eq!(
            nodename["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some("spec.nodeName"),
            "{name}"
        );
    }

    // The pod on node-b (NODENAME=node-b) renders node-b, not the data's
    // /fabric/local/node.
    let (_copy, etc_bird) = render_sidecar_as(Some("node-b"));
    let main = fs::read_to_string(etc_bird.join("bird.conf")).unwrap();
    let ipam = fs::read_to_string(etc_bird.join("bird_ipam.conf")).unwrap();
    assert_contains_all(
        &main,
        &["router id 10.0.0.12;", "protocol bgp mesh_node_a "],
    );
    assert_contains_all(&ipam, &["route 10.244.2.0/26 blackhole;"]);
    assert_contains_none(&ipam, &["10.244.1."]);
}

#[test]
fn the_systemd_unit_names_the_node_after_the_host() {
    let unit = fs::read_to_string(Path::new(REPO).join("examples/deploy/confera.service")).unwrap();
    let service = unit.split("[Service]").nth(1).unwrap();
    // %H: the host's name. /etc/default/confera may override it: systemd
    // lets an EnvironmentFile= win over Environment=.
    for line in [
        "\nEnvironment=NODENAME=%H\n",
        "\nEnvironmentFile=-/etc/default/confera\n",
    ] {
        assert!(
            service.contains(line),
            "{line:?} not in the unit's [Service]"
        );
    }
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
