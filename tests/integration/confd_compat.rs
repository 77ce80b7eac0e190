//! confd and Calico compatibility (issue 14): confd's own integration
//! cases (basic, exists, iteration, manykeys, nested), written here from
//! their description (the keys, the template ported to Tera, the expected
//! output), rendered byte-exact from a data file and from a real etcd; and
//! Calico's conventions (`//NODENAME` in keys and prefixes, `hashToIPv4`
//! router ids) on both backends.

use crate::support::cmd::{confera, run_cmd, Run};
use crate::support::confdir::ConfDir;
use crate::support::etcd::Etcd;

/// confd's integration data.
const KEYS: &[(&str, &str)] = &[
    ("/key", "foobar"),
    ("/database/host", "127.0.0.1"),
    ("/database/password", "p@sSw0rd"),
    ("/database/port", "3306"),
    ("/database/username", "confd"),
    ("/upstream/app1", "10.0.1.10:8080"),
    ("/upstream/app2", "10.0.1.11:8080"),
    ("/nested/east/app1", "10.0.1.10:8080"),
    ("/nested/west/app2", "10.0.1.11:8080"),
];

/// The same data as a YAML data file.
const DATA: &str = r#"key: foobar
database:
  host: 127.0.0.1
  password: p@sSw0rd
  port: "3306"
  username: confd
upstream:
  app1: 10.0.1.10:8080
  app2: 10.0.1.11:8080
nested:
  east:
    app1: 10.0.1.10:8080
  west:
    app2: 10.0.1.11:8080
"#;

/// Each case: name, keys, template, expected output.
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "basic",
        r#"["/key", "/database"]"#,
        r#"key: {{ getv(key="/key") }}
database_host: {{ getv(key="/database/host") }}
database_password: {{ getv(key="/database/password") }}
database_port: {{ getv(key="/database/port") }}
database_username: {{ getv(key="/database/username") }}
"#,
        "key: foobar
database_host: 127.0.0.1
database_password: p@sSw0rd
database_port: 3306
database_username: confd
",
    ),
    (
        "exists",
        r#"["/key", "/nonexistent"]"#,
        r#"{%- if exists(key="/key") %}
value: {{ getv(key="/key") }}
{%- endif %}
{%- if exists(key="/nonexistent") %}
value: {{ getv(key="/nonexistent") }}
{%- endif %}
"#,
        "\nvalue: foobar\n",
    ),
    (
        "iteration",
        r#"["/upstream"]"#,
        r#"upstream app {
{%- for kv in gets(pattern="/upstream/*") %}
    server {{ kv.value }};
{%- endfor %}
}
{% for ip in getvs(pattern="/upstream/*") %}{{ ip }}{% if not loop.last %},{% endif %}{% endfor %}
"#,
        "upstream app {
    server 10.0.1.10:8080;
    server 10.0.1.11:8080;
}
10.0.1.10:8080,10.0.1.11:8080
",
    ),
    (
        "manykeys",
        r#"["/key", "/database/host", "/database/port", "/upstream/app1", "/nested/west"]"#,
        r#"{{ getv(key="/key") }} {{ getv(key="/database/host") }}:{{ getv(key="/database/port") }} {{ getv(key="/upstream/app1") }} {{ getv(key="/nested/west/app2") }}
"#,
        "foobar 127.0.0.1:3306 10.0.1.10:8080 10.0.1.11:8080\n",
    ),
    (
        "nested",
        r#"["/nested"]"#,
        r#"{%- for dir in lsdir(path="/nested") %}
[{{ dir }}]
{%- for kv in gets(pattern=printf(format="/nested/%s/*", args=[dir])) %}
{{ kv.key | base }} = {{ kv.value }}
{%- endfor %}
{% endfor -%}
"#,
        "
[east]
app1 = 10.0.1.10:8080

[west]
app2 = 10.0.1.11:8080
",
    ),
];

/// A confdir with one resource per confd case.
fn confd_cases() -> ConfDir {
    let dir = ConfDir::new();
    dir.file("data.yaml", DATA);
    for (name, keys, template, _) in CASES {
        dir.template(&format!("{name}.conf.tera"), template)
            .resource(
                name,
                &format!(
                    "[template]\nsrc = \"{name}.conf.tera\"\ndest = {:?}\nkeys = {keys}\n",
                    dir.dest(&format!("out/{name}.conf"))
                ),
            );
    }
    dir
}

#[track_caller]
fn assert_cases_rendered(dir: &ConfDir, out: &Run) {
    out.assert_success();
    for (name, _, _, expected) in CASES {
        assert_eq!(
            dir.read(&format!("out/{name}.conf")),
            *expected,
            "confd case {name}"
        );
    }
}

fn with_file_backend(dir: &ConfDir, data: &str) -> std::process::Command {
    let mut cmd = confera();
    cmd.args(["--confdir", dir.arg(), "--backend", "file", "--file"])
        .arg(dir.path().join(data))
        .arg("--onetime");
    cmd
}

fn with_etcd(dir: &ConfDir, etcd: &Etcd) -> std::process::Command {
    let mut cmd = confera();
    cmd.args([
        "--confdir",
        dir.arg(),
        "--node",
        &etcd.client_url,
        "--onetime",
    ]);
    cmd
}

#[test]
fn confd_integration_cases_render_byte_exact_from_a_data_file() {
    let dir = confd_cases();

    let out = run_cmd(with_file_backend(&dir, "data.yaml"));

    assert_cases_rendered(&dir, &out);
}

#[test]
fn confd_integration_cases_render_byte_exact_from_etcd() {
    let etcd = Etcd::start();
    etcd.put_many(KEYS);
    let dir = confd_cases();

    let out = run_cmd(with_etcd(&dir, &etcd));

    assert_cases_rendered(&dir, &out);
}

/// Calico's key layout, for node-a and node-b.
const CALICO_KEYS: &[(&str, &str)] = &[
    ("/calico/bgp/v1/global/as_num", "64512"),
    (
        "/calico/bgp/v1/global/peer_v4/10.0.0.254",
        r#"{"ip":"10.0.0.254","as_num":"64600"}"#,
    ),
    ("/calico/bgp/v1/host/node-a/ip_addr_v4", "10.0.0.1"),
    ("/calico/bgp/v1/host/node-b/ip_addr_v4", "10.0.0.2"),
    ("/calico/bgp/v1/host/node-b/router_id", "10.9.9.9"),
    ("/calico/ipam/v2/host/node-a/ipv4/block/10.244.1.0-26", "{}"),
    ("/calico/ipam/v2/host/node-b/ipv4/block/10.244.2.0-26", "{}"),
];

/// Calico's resource shape: keys under this node's own `//NODENAME`.
const CALICO_RESOURCES: &[(&str, &str)] = &[
    (
        "bird",
        r#"[template]
src = "bird.cfg.tera"
dest = "@OUT@/bird.cfg"
prefix = "/calico/bgp/v1"
keys = ["/host//NODENAME", "/global"]
allow_env = true
"#,
    ),
    (
        "bird_ipam",
        r#"[template]
src = "bird_ipam.cfg.tera"
dest = "@OUT@/bird_ipam.cfg"
prefix = "/calico/ipam/v2/host//NODENAME"
keys = ["/ipv4/block"]
"#,
    ),
];

/// Calico's router id: the node's own, else `hashToIPv4` of its name.
const CALICO_BIRD: &str = r#"{%- set node = getenv(name="NODENAME") -%}
{%- set router_id = getv(key="/host/" ~ node ~ "/router_id", default="") -%}
# nodes visible: {{ ls(path="/host") | join(sep=",") }}
router id {% if router_id == "" %}{{ hashToIPv4(name=node) }}{% else %}{{ router_id | ipv4 }}{% endif %};
{%- for peer in getvs(pattern="/global/peer_v4/*") %}
{%- set p = peer | json %}
protocol bgp Global_{{ p.ip | replace(from=".", to="_") }} {
  local {{ getv(key="/host/" ~ node ~ "/ip_addr_v4") | ipv4 }} as {{ getv(key="/global/as_num") | asn }};
  neighbor {{ p.ip | ipv4 }} as {{ p.as_num | asn }};
}
{%- endfor %}
"#;

const CALICO_IPAM: &str = r#"{% for kv in gets(pattern="/ipv4/block/*") -%}
route {{ kv.key | base | replace(from="-", to="/") | cidr }} blackhole;
{% endfor -%}
"#;

fn calico_confdir() -> ConfDir {
    let dir = ConfDir::new();
    let out = dir.dest("out/x");
    let out = out.parent().unwrap().to_str().unwrap();
    dir.template("bird.cfg.tera", CALICO_BIRD)
        .template("bird_ipam.cfg.tera", CALICO_IPAM);
    for (name, text) in CALICO_RESOURCES {
        dir.resource(name, &text.replace("@OUT@", out));
    }
    dir.file("data.yaml", &nest(CALICO_KEYS));
    dir
}

/// The keys as a nested JSON document, which is valid YAML.
fn nest(keys: &[(&str, &str)]) -> String {
    let mut root = serde_json::Map::new();
    for (key, value) in keys {
        let mut node = &mut root;
        let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len() - 1] {
            node = node
                .entry(part.to_string())
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
                .as_object_mut()
                .unwrap();
        }
        node.insert(parts[parts.len() - 1].to_string(), (*value).into());
    }
    serde_json::to_string_pretty(&root).unwrap()
}

/// node-a has no router_id key: its router id is hashToIPv4("node-a").
const NODE_A_BIRD: &str = "# nodes visible: node-a
router id 102.87.15.240;
protocol bgp Global_10_0_0_254 {
  local 10.0.0.1 as 64512;
  neighbor 10.0.0.254 as 64600;
}
";

const NODE_A_IPAM: &str = "route 10.244.1.0/26 blackhole;\n";

#[test]
fn calico_nodename_and_hash_router_id_render_from_a_data_file() {
    let dir = calico_confdir();
    let mut cmd = with_file_backend(&dir, "data.yaml");
    cmd.env("NODENAME", "node-a");

    run_cmd(cmd).assert_success();

    assert_eq!(dir.read("out/bird.cfg"), NODE_A_BIRD);
    assert_eq!(dir.read("out/bird_ipam.cfg"), NODE_A_IPAM);
}

#[test]
fn calico_nodename_and_hash_router_id_render_from_etcd() {
    let etcd = Etcd::start();
    etcd.put_many(CALICO_KEYS);
    let dir = calico_confdir();
    let mut cmd = with_etcd(&dir, &etcd);
    cmd.env("NODENAME", "node-b");

    run_cmd(cmd).assert_success();

    // node-b has its own router id, and sees only its own keys.
    assert_eq!(
        dir.read("out/bird.cfg"),
        "# nodes visible: node-b
router id 10.9.9.9;
protocol bgp Global_10_0_0_254 {
  local 10.0.0.2 as 64512;
  neighbor 10.0.0.254 as 64600;
}
"
    );
    assert_eq!(
        dir.read("out/bird_ipam.cfg"),
        "route 10.244.2.0/26 blackhole;\n"
    );
}

#[test]
fn confera_check_shows_the_keys_with_nodename_resolved() {
    let dir = calico_confdir();
    let mut cmd = confera();
    cmd.env("NODENAME", "node-a")
        .args(["check", "--confdir", dir.arg()]);

    let out = run_cmd(cmd);

    out.assert_success()
        .assert_stdout_contains("prefix /calico/bgp/v1, keys /global, /host/node-a)")
        .assert_stdout_contains("prefix /calico/ipam/v2/host/node-a, keys /ipv4/block)");
}

#[test]
fn nodename_unset_is_a_configuration_error_naming_the_file_and_the_field() {
    let dir = calico_confdir();
    let mut cmd = with_file_backend(&dir, "data.yaml");
    cmd.env_remove("NODENAME");

    let out = run_cmd(cmd);

    out.assert_code(2)
        .assert_stderr_contains("conf.d/bird.toml: field `keys`: `/host//NODENAME` uses //NODENAME, but the NODENAME environment variable is unset or empty");
    assert!(!dir.exists("out/bird.cfg"));
}
