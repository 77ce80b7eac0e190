//! The bundled BIRD example as a running fabric: every node a real BIRD in a
//! network namespace of its own, on veth links to bridges, with configs
//! rendered by the confera binary from the repository's own `conf.d/` and
//! `templates/` and a per-node `NODENAME`; a top-of-rack switch stands in
//! as one more BIRD. Each test builds its lab from scratch (names carry the
//! pid) and tears it down on Drop, BIRDs first, even when it fails. Needs
//! root, as CI has. Timers are short in the lab's data (hold 3 s, BFD at
//! 100 ms), so a lab converges in seconds.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use crate::support::cmd::{confera, run_cmd, wait_until};
use crate::support::confdir::copy_of_repo;
use crate::support::netns::Lab;

/// How long a lab may take to converge after its BIRDs started.
const CONVERGE: Duration = Duration::from_secs(30);

/// What every scenario's data shares: short BGP timers and the pod pools.
const TIMERS: &str = r#"
    hold_time: 3
    keepalive_time: 1
    connect_delay_time: 1
    connect_retry_time: 1
    pools: [10.244.0.0/16, "fd00:10:244::/48"]"#;

/// A lab of fabric nodes, each rendered by confera from the repository's
/// resource and templates.
struct Fabric {
    lab: Lab,
    data: String,
}

impl Fabric {
    fn new(tag: &str, data: &str) -> Fabric {
        Fabric {
            lab: Lab::new(tag),
            data: data.replace("@TIMERS@", TIMERS),
        }
    }

    /// Renders the bundled example from the lab's data as NODE (`NODENAME`,
    /// no `/local/node` in the data) and starts BIRD on it in NODE's
    /// namespace.
    fn start_node(&mut self, node: &str) {
        let dir = copy_of_repo(&["conf.d", "templates"]);
        fs::create_dir(dir.path().join("out")).unwrap();
        fs::write(dir.path().join("lab.yaml"), &self.data).unwrap();
        let mut render = confera();
        render
            .current_dir(dir.path())
            .args(["--confdir", ".", "--backend", "file", "--file", "lab.yaml"])
            .arg("--onetime")
            .env("NODENAME", node);
        run_cmd(render).assert_success();
        let config = dir.path().join("out/bird.conf");
        self.lab.start_bird(node, dir, config);
    }

    /// Starts a hand-written BIRD config (the stand-in switch) in NODE's
    /// namespace.
    fn start_bird(&mut self, node: &str, config: &str) {
        let dir = tempfile::Builder::new()
            .prefix("confera-lab-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("bird.conf");
        fs::write(&path, config).unwrap();
        self.lab.start_bird(node, dir, path);
    }

    fn birdc(&self, node: &str, command: &str) -> String {
        self.lab.bird(node).birdc(command)
    }

    /// Waits until NODE's BGP protocols are exactly EXPECTED, all
    /// Established.
    #[track_caller]
    fn wait_established(&self, node: &str, expected: &[&str]) {
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        let converged = wait_until(CONVERGE, || {
            let sessions = bgp_sessions(&self.birdc(node, "show protocols"));
            sessions.keys().cloned().collect::<BTreeSet<_>>() == expected
                && sessions.values().all(|info| info == "Established")
        });
        assert!(
            converged,
            "{node}: BGP sessions {expected:?} not all Established within {CONVERGE:?}\n{}\n--- log\n{}",
            self.birdc(node, "show protocols"),
            fs::read_to_string(&self.lab.bird(node).log).unwrap_or_default()
        );
    }

    /// Waits until the prefixes NODE learned over BGP are exactly EXPECTED
    /// (IPv4 and IPv6 tables).
    #[track_caller]
    fn wait_bgp_routes(&self, node: &str, expected: &[&str]) {
        let query = "show route where source = RTS_BGP";
        self.wait_prefixes(node, query, expected);
    }

    /// Waits until `show route protocol PROTOCOL` on NODE lists exactly
    /// EXPECTED.
    #[track_caller]
    fn wait_routes_from(&self, node: &str, protocol: &str, expected: &[&str]) {
        self.wait_prefixes(node, &format!("show route protocol {protocol}"), expected);
    }

    #[track_caller]
    fn wait_prefixes(&self, node: &str, query: &str, expected: &[&str]) {
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        let converged = wait_until(CONVERGE, || prefixes(&self.birdc(node, query)) == expected);
        assert!(
            converged,
            "{node}: `{query}` is not {expected:?} within {CONVERGE:?}\n{}",
            self.birdc(node, query)
        );
    }

    /// The kernel's routes from BIRD in NODE's namespace, IPv4 and IPv6.
    fn kernel_routes(&self, node: &str) -> String {
        let v4 = self.lab.ip(node, &["-4", "route", "show", "proto", "bird"]);
        let v6 = self.lab.ip(node, &["-6", "route", "show", "proto", "bird"]);
        format!("{v4}{v6}")
    }

    /// Waits until NODE's kernel routes from BIRD hold every line of WANTED
    /// (each a fragment of one route line).
    #[track_caller]
    fn wait_kernel_routes(&self, node: &str, wanted: &[&str]) {
        let has_all = |routes: &str| {
            wanted
                .iter()
                .all(|w| routes.lines().any(|line| line.contains(w)))
        };
        let converged = wait_until(CONVERGE, || has_all(&self.kernel_routes(node)));
        assert!(
            converged,
            "{node}: kernel routes lack some of {wanted:?}\n{}",
            self.kernel_routes(node)
        );
    }
}

/// The most specific of NODE's kernel routes covering ADDRESS.
fn most_specific_route(lab: &Lab, node: &str, address: &str) -> String {
    let routes = lab.ip(node, &["route", "show", "match", address]);
    let length = |line: &str| -> u8 {
        let prefix = line
            .split_whitespace()
            .find(|w| w.contains('/') || *w == "default");
        match prefix.and_then(|p| p.split_once('/')) {
            Some((_, len)) => len.parse().unwrap_or(0),
            None => 0,
        }
    };
    routes
        .lines()
        .max_by_key(|line| length(line))
        .unwrap_or_else(|| panic!("no route covers {address} on {node}"))
        .to_owned()
}

/// BGP protocols and their info column (`Established`, `Passive`, ...)
/// from `show protocols`.
fn bgp_sessions(show_protocols: &str) -> std::collections::BTreeMap<String, String> {
    show_protocols
        .lines()
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns.get(1) == Some(&"BGP"))
                .then(|| (columns[0].to_owned(), columns[5..].join(" ")))
        })
        .collect()
}

/// The prefixes of a `show route` answer: the first column of each line
/// that starts one.
fn prefixes(show_route: &str) -> BTreeSet<String> {
    show_route
        .lines()
        .filter(|line| !line.starts_with(char::is_whitespace))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|first| first.contains('/'))
        .map(str::to_owned)
        .collect()
}

// ----- node-to-node mesh, with a top-of-rack switch -----

/// Three nodes on one subnet, node-c in an AS of its own, plus node-d,
/// IPv6 only, and "rogue", a node of the data whose BIRD is hand-written
/// to announce more than its block. Every rendered node peers with the
/// switch over IPv4 (TCP-MD5) and IPv6 (default route asked for). No
/// `/local/node`: each node's name comes from NODENAME.
const MESH: &str = r#"
fabric:
  global:
    asn: 64512
    mesh: "on"
    bfd: "on"
    bfd_interval: 100 @TIMERS@
    services:
      cluster: [10.96.0.0/12]
    import:
      refuse: [10.0.0.0/24, "fd00:0:0:1::/64"]
  nodes:
    node-a: {ip4: 10.0.0.11, ip6: "fd00:0:0:1::11", blocks: [10.244.1.0/26, "fd00:10:244:1::/64"]}
    node-b: {ip4: 10.0.0.12, ip6: "fd00:0:0:1::12", blocks: [10.244.2.0/26, "fd00:10:244:2::/64"]}
    node-c: {ip4: 10.0.0.9, ip6: "fd00:0:0:1::9", asn: 64513, blocks: [10.244.3.0/26, "fd00:10:244:3::/64"]}
    node-d: {ip6: "fd00:0:0:1::14", router_id: 10.0.0.14, blocks: ["fd00:10:244:4::/64"]}
    rogue: {ip4: 10.0.0.66, blocks: [10.244.6.0/26]}
  peers:
    global:
      tor: '{"ip": "10.0.0.1", "asn": 65000, "bfd": false}'
      tor-v6: '{"ip": "fd00:0:0:1::1", "asn": 65000, "bfd": false, "accept_default": true}'
  secrets:
    mesh:
      password: lab-mesh-secret
    peers:
      global:
        tor:
          password: lab-tor-secret
"#;

/// The switch: announces a default route, one ordinary outside route per
/// family, and routes no node may take; to node-a also node-a's own block
/// and node-b's block (as a switch passes on what other nodes announce).
/// It takes everything, so its tables show what each node announced.
const TOR: &str = r#"
router id 10.0.0.1;
protocol device {}

protocol static tor_out4 {
  ipv4;
  route 0.0.0.0/0 blackhole;          # no node asked for an IPv4 default
  route 172.16.0.0/16 blackhole;      # ordinary: taken
  route 240.0.0.0/4 blackhole;        # reserved
  route 192.0.2.0/24 blackhole;       # documentation
  route 10.0.0.0/24 blackhole;        # the nodes' subnet (/global/import/refuse)
  route 172.17.0.0/28 blackhole;      # longer than /24
  route 10.244.2.32/27 blackhole;     # a hijack inside node-b's block
  route 10.244.9.0/24 blackhole;      # pool space of no node
  route 10.96.0.0/16 blackhole;       # inside the service range
}
protocol static tor_out6 {
  ipv6;
  route ::/0 blackhole;               # asked for: taken
  route fd00:99::/32 blackhole;       # ordinary: taken
  route 2001:db8::/32 blackhole;      # documentation
  route fc00::/7 blackhole;           # shorter than /16
  route fd00:10:244:2::/80 blackhole; # a hijack inside node-b's block
}
protocol static tor_to_a {
  ipv4;
  route 10.244.1.0/26 blackhole;      # node-a's own block: refused by node-a
  route 10.244.2.0/26 blackhole;      # node-b's block, passed on: taken
}

template bgp tor {
  passive on;
  hold time 3;
  keepalive time 1;
}
@SESSIONS@
"#;

/// The switch's IPv4 session with NODE (`a`) at IP4, exporting what
/// EXPORT selects.
fn tor_session4(node: &str, ip4: &str, asn: u32, export: &str) -> String {
    format!(
        r#"
protocol bgp tor_{node} from tor {{
  local 10.0.0.1 as 65000;
  neighbor {ip4} as {asn};
  password "lab-tor-secret";
  ipv4 {{ import all; export where {export}; }};
}}
"#
    )
}

/// The switch's IPv6 session with NODE at IP6.
fn tor_session6(node: &str, ip6: &str, asn: u32) -> String {
    format!(
        r#"
protocol bgp tor6_{node} from tor {{
  local fd00:0:0:1::1 as 65000;
  neighbor {ip6} as {asn};
  ipv6 {{ import all; export where proto = "tor_out6"; }};
}}
"#
    )
}

/// The rogue node: a mesh neighbour of node-a, node-b and node-c that
/// announces its own block, and also a route inside node-b's block, pool
/// space of no node and an outside route.
const ROGUE: &str = r#"
router id 10.0.0.66;
protocol device {}
protocol bfd {}
protocol static rogue_out {
  ipv4;
  route 10.244.6.0/26 blackhole;      # its block: taken
  route 10.244.2.1/32 blackhole;      # inside node-b's block
  route 10.244.9.0/24 blackhole;      # pool space of no node
  route 172.16.5.0/24 blackhole;      # not pod space at all
}
template bgp rogue {
  local 10.0.0.66 as 64512;
  password "lab-mesh-secret";
  bfd on;
  hold time 3;
  keepalive time 1;
  connect delay time 1;
  ipv4 { import none; export where proto = "rogue_out"; };
}
protocol bgp rogue_a from rogue { neighbor 10.0.0.11 as 64512; }
protocol bgp rogue_b from rogue { neighbor 10.0.0.12 as 64512; }
protocol bgp rogue_c from rogue { neighbor 10.0.0.9 as 64513; }
"#;

fn mesh_fabric(tag: &str) -> Fabric {
    let mut fabric = Fabric::new(tag, MESH);
    fabric.lab.bridge("br0");
    let tor4 = r#"proto = "tor_out4""#;
    let sessions = [
        tor_session4(
            "a",
            "10.0.0.11",
            64512,
            r#"proto = "tor_out4" || proto = "tor_to_a""#,
        ),
        tor_session4("b", "10.0.0.12", 64512, tor4),
        tor_session4("c", "10.0.0.9", 64513, tor4),
        tor_session6("a", "fd00:0:0:1::11", 64512),
        tor_session6("b", "fd00:0:0:1::12", 64512),
        tor_session6("c", "fd00:0:0:1::9", 64513),
        tor_session6("d", "fd00:0:0:1::14", 64512),
    ]
    .concat();
    fabric.lab.node("tor");
    fabric
        .lab
        .link("tor", "br0", "eth0", &["10.0.0.1/24", "fd00:0:0:1::1/64"]);
    fabric.lab.node("rogue");
    fabric.lab.link("rogue", "br0", "eth0", &["10.0.0.66/24"]);
    for (node, addresses) in [
        ("node-a", &["10.0.0.11/24", "fd00:0:0:1::11/64"][..]),
        ("node-b", &["10.0.0.12/24", "fd00:0:0:1::12/64"]),
        ("node-c", &["10.0.0.9/24", "fd00:0:0:1::9/64"]),
        ("node-d", &["fd00:0:0:1::14/64"]),
    ] {
        fabric.lab.node(node);
        fabric.lab.link(node, "br0", "eth0", addresses);
    }
    fabric.start_bird("tor", &TOR.replace("@SESSIONS@", &sessions));
    fabric.start_bird("rogue", ROGUE);
    for node in ["node-a", "node-b", "node-c", "node-d"] {
        fabric.start_node(node);
    }
    fabric
}

/// Node N's blocks in the mesh lab (node-d has only an IPv6 one).
fn mesh_blocks(n: &str) -> Vec<String> {
    let block6 = format!("fd00:10:244:{n}::/64");
    match n {
        "4" => vec![block6],
        _ => vec![format!("10.244.{n}.0/26"), block6],
    }
}

#[test]
fn a_mesh_with_a_switch_learns_exactly_each_nodes_blocks_and_filters_the_rest() {
    let fabric = mesh_fabric("mesh");

    // Every node names itself from NODENAME, consistently in all three
    // files: its sessions go to the others, never to itself, per address
    // family the two sides share; node-d (IPv6 only) has no IPv4 session.
    // Every node with IPv4 peers with the switch in both families, with the
    // rogue node, and with node-d over IPv6.
    let common = [
        "peer_global_tor",
        "peer_global_tor_v6",
        "mesh_rogue",
        "mesh6_node_d",
    ];
    for (node, nodes) in [
        (
            "node-a",
            ["mesh_node_b", "mesh6_node_b", "mesh_node_c", "mesh6_node_c"],
        ),
        (
            "node-b",
            ["mesh_node_a", "mesh6_node_a", "mesh_node_c", "mesh6_node_c"],
        ),
        (
            "node-c",
            ["mesh_node_a", "mesh6_node_a", "mesh_node_b", "mesh6_node_b"],
        ),
    ] {
        fabric.wait_established(node, &[&common[..], &nodes[..]].concat());
    }
    fabric.wait_established(
        "node-d",
        &[
            "peer_global_tor_v6",
            "mesh6_node_a",
            "mesh6_node_b",
            "mesh6_node_c",
        ],
    );

    // From the switch, each node takes the ordinary routes and the IPv6
    // default it asked for; never the IPv4 default, reserved or
    // documentation ranges, its subnet, over-long or too-short prefixes,
    // service space, unowned pool space, its own block, or anything inside
    // another node's block. From each node, exactly that node's blocks:
    // the rogue's extra routes are refused.
    for (node, own, v4) in [
        ("node-a", "1", true),
        ("node-b", "2", true),
        ("node-c", "3", true),
        ("node-d", "4", false),
    ] {
        let mut expected: Vec<String> = vec!["::/0".into(), "fd00:99::/32".into()];
        for n in ["1", "2", "3", "4"].into_iter().filter(|n| *n != own) {
            expected.extend(mesh_blocks(n).into_iter().filter(|b| v4 || b.contains(':')));
        }
        if v4 {
            expected.extend(["172.16.0.0/16".into(), "10.244.6.0/26".into()]);
        }
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        fabric.wait_bgp_routes(node, &expected);
    }
    fabric.wait_routes_from("node-b", "mesh_rogue", &["10.244.6.0/26"]);
    // The switch passing on node-b's block is taken (a spare path); the mesh
    // route stays the best one.
    fabric.wait_routes_from(
        "node-a",
        "peer_global_tor",
        &["10.244.2.0/26", "172.16.0.0/16"],
    );
    let best = fabric.birdc("node-a", "show route 10.244.2.0/26 primary");
    assert!(best.contains("[mesh_node_b "), "{best}");

    // The switch receives from each node only that node's own blocks, and
    // the service range every node with IPv4 announces.
    for (session, n) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        let blocks = mesh_blocks(n);
        let (v6, v4): (Vec<&String>, Vec<&String>) = blocks.iter().partition(|b| b.contains(':'));
        if !v4.is_empty() {
            fabric.wait_routes_from("tor", &format!("tor_{session}"), &[v4[0], "10.96.0.0/12"]);
        }
        fabric.wait_routes_from("tor", &format!("tor6_{session}"), &[v6[0]]);
    }

    // The kernel holds the node's blocks as blackholes and what BIRD
    // learned; no IPv4 default from the switch, no service range.
    fabric.wait_kernel_routes(
        "node-a",
        &[
            "blackhole 10.244.1.0/26",
            "10.244.2.0/26 via 10.0.0.12 dev eth0",
            "10.244.3.0/26 via 10.0.0.9 dev eth0",
            "172.16.0.0/16 via 10.0.0.1 dev eth0",
            "blackhole fd00:10:244:1::/64",
            "fd00:10:244:2::/64 via fd00:0:0:1::12 dev eth0",
            "fd00:10:244:4::/64 via fd00:0:0:1::14 dev eth0",
            "default via fd00:0:0:1::1 dev eth0",
        ],
    );
    fabric.wait_kernel_routes("node-d", &["blackhole fd00:10:244:4::/64"]);
    let kernel = fabric.kernel_routes("node-a");
    for absent in [
        "default via 10.0.0.1",
        "10.96.0.0",
        "240.0.0.0",
        "10.244.2.32",
        "10.244.2.1 ",
    ] {
        assert!(!kernel.contains(absent), "{absent} in\n{kernel}");
    }
    // With a default route to the switch, as a real node has, a packet for
    // an unused pod address still meets the blackhole first: it cannot go
    // to the switch and be routed straight back.
    fabric
        .lab
        .ip("node-a", &["route", "add", "default", "via", "10.0.0.1"]);
    let unused = most_specific_route(&fabric.lab, "node-a", "10.244.1.50");
    assert!(unused.starts_with("blackhole 10.244.1.0/26 "), "{unused}");

    // BFD watches every node session.
    let neighbors = ["10.0.0.12", "10.0.0.9", "fd00:0:0:1::12", "fd00:0:0:1::14"];
    let all_up = |bfd: &str| {
        neighbors.iter().all(|n| {
            bfd.lines()
                .any(|l| l.starts_with(&format!("{n} ")) && l.contains(" Up "))
        })
    };
    assert!(
        wait_until(CONVERGE, || all_up(
            &fabric.birdc("node-a", "show bfd sessions")
        )),
        "BFD is not up with all of {neighbors:?}\n{}",
        fabric.birdc("node-a", "show bfd sessions")
    );
}

// ----- route reflection -----

/// No mesh: node-a reflects for node-b and node-d (its iBGP clients);
/// node-c, in an AS of its own, peers with node-a over eBGP.
const REFLECTOR: &str = r#"
fabric:
  global:
    asn: 64512
    mesh: "off" @TIMERS@
  nodes:
    node-a: {ip4: 10.0.0.11, rr_cluster_id: 244.0.0.1, blocks: [10.244.1.0/26]}
    node-b: {ip4: 10.0.0.12, blocks: [10.244.2.0/26]}
    node-c: {ip4: 10.0.0.9, asn: 64513, blocks: [10.244.3.0/26]}
    node-d: {ip4: 10.0.0.14, blocks: [10.244.4.0/26]}
"#;

#[test]
fn with_the_mesh_off_clients_learn_each_others_blocks_through_the_route_reflector() {
    let mut fabric = Fabric::new("rr", REFLECTOR);
    fabric.lab.bridge("br0");
    for (node, ip4) in [
        ("node-a", "10.0.0.11/24"),
        ("node-b", "10.0.0.12/24"),
        ("node-c", "10.0.0.9/24"),
        ("node-d", "10.0.0.14/24"),
    ] {
        fabric.lab.node(node);
        fabric.lab.link(node, "br0", "eth0", &[ip4]);
        fabric.start_node(node);
    }

    // Only sessions with the reflector.
    fabric.wait_established("node-a", &["rr_node_b", "rr_node_c", "rr_node_d"]);
    for node in ["node-b", "node-c", "node-d"] {
        fabric.wait_established(node, &["rr_node_a"]);
    }

    // Every node learns every other node's block, and only those.
    for (node, others) in [
        (
            "node-a",
            ["10.244.2.0/26", "10.244.3.0/26", "10.244.4.0/26"],
        ),
        (
            "node-b",
            ["10.244.1.0/26", "10.244.3.0/26", "10.244.4.0/26"],
        ),
        (
            "node-c",
            ["10.244.1.0/26", "10.244.2.0/26", "10.244.4.0/26"],
        ),
        (
            "node-d",
            ["10.244.1.0/26", "10.244.2.0/26", "10.244.3.0/26"],
        ),
    ] {
        fabric.wait_bgp_routes(node, &others);
    }

    // node-b has node-d's block by reflection: originator node-d, the
    // reflector's cluster id, and node-d itself as the next hop, in BIRD
    // and in the kernel.
    let reflected = fabric.birdc("node-b", "show route 10.244.4.0/26 all");
    for fragment in [
        "via 10.0.0.14 on eth0",
        "BGP.originator_id: 10.0.0.14",
        "BGP.cluster_list: 244.0.0.1",
    ] {
        assert!(
            reflected.contains(fragment),
            "{fragment:?} not in\n{reflected}"
        );
    }
    fabric.wait_kernel_routes(
        "node-b",
        &[
            "blackhole 10.244.2.0/26",
            "10.244.4.0/26 via 10.0.0.14 dev eth0",
        ],
    );
}

// ----- nodes on different subnets -----

/// node-a and node-b on two subnets joined by a router, which is also a
/// route server for node-a (two hops away from node-a's subnet). BIRD
/// learns the host's routes to the other subnet from the kernel
/// (`igp: kernel`) to resolve next hops.
const MULTIHOP: &str = r#"
fabric:
  global:
    asn: 64512
    node_link: multihop
    igp: kernel @TIMERS@
  nodes:
    node-a: {ip4: 10.0.1.11, blocks: [10.244.1.0/26]}
    node-b: {ip4: 10.0.2.12, blocks: [10.244.2.0/26]}
  peers:
    node:
      node-a:
        route-server: '{"ip": "10.0.2.1", "asn": 65100, "multihop": 2}'
"#;

const ROUTE_SERVER: &str = r#"
router id 10.0.2.1;
protocol device {}
protocol static rs_out {
  ipv4;
  route 172.16.0.0/16 blackhole;
}
protocol bgp rs_node_a {
  local 10.0.2.1 as 65100;
  neighbor 10.0.1.11 as 64512;
  multihop 2;
  passive on;
  hold time 3;
  keepalive time 1;
  ipv4 { import all; export where proto = "rs_out"; };
}
"#;

#[test]
fn nodes_on_different_subnets_peer_multihop_and_resolve_next_hops_through_the_kernel() {
    let mut fabric = Fabric::new("hop", MULTIHOP);
    fabric.lab.bridge("br1");
    fabric.lab.bridge("br2");
    fabric.lab.node("router");
    fabric.lab.link("router", "br1", "eth1", &["10.0.1.1/24"]);
    fabric.lab.link("router", "br2", "eth2", &["10.0.2.1/24"]);
    fabric.lab.forwarding("router");
    for (node, bridge, ip4, other, gateway) in [
        ("node-a", "br1", "10.0.1.11/24", "10.0.2.0/24", "10.0.1.1"),
        ("node-b", "br2", "10.0.2.12/24", "10.0.1.0/24", "10.0.2.1"),
    ] {
        fabric.lab.node(node);
        fabric.lab.link(node, bridge, "eth0", &[ip4]);
        fabric
            .lab
            .ip(node, &["route", "add", other, "via", gateway]);
    }
    fabric.start_bird("router", ROUTE_SERVER);
    fabric.start_node("node-a");
    fabric.start_node("node-b");

    fabric.wait_established("node-a", &["mesh_node_b", "peer_node_route_server"]);
    fabric.wait_established("node-b", &["mesh_node_a"]);
    fabric.wait_bgp_routes("node-a", &["10.244.2.0/26", "172.16.0.0/16"]);
    fabric.wait_bgp_routes("node-b", &["10.244.1.0/26"]);

    // Both the other node's block and the route server's route resolve
    // through the router, and reach the kernel that way.
    for node_route in [
        ("node-a", "10.244.2.0/26 via 10.0.1.1 dev eth0"),
        ("node-a", "172.16.0.0/16 via 10.0.1.1 dev eth0"),
        ("node-b", "10.244.1.0/26 via 10.0.2.1 dev eth0"),
    ] {
        fabric.wait_kernel_routes(node_route.0, &[node_route.1]);
    }
}

// ----- import limit -----

/// One node whose switch may send it three routes, and sends five.
const LIMIT: &str = r#"
fabric:
  global:
    asn: 64512 @TIMERS@
  nodes:
    node-a: {ip4: 10.0.0.11, blocks: [10.244.1.0/26]}
  peers:
    global:
      tor: '{"ip": "10.0.0.1", "asn": 65000, "import_limit": 3}'
"#;

const FLOODING_TOR: &str = r#"
router id 10.0.0.1;
protocol device {}
protocol static tor_out4 {
  ipv4;
  route 172.16.0.0/24 blackhole;
  route 172.16.1.0/24 blackhole;
  route 172.16.2.0/24 blackhole;
  route 172.16.3.0/24 blackhole;
  route 172.16.4.0/24 blackhole;
}
protocol bgp tor_a {
  local 10.0.0.1 as 65000;
  neighbor 10.0.0.11 as 64512;
  passive on;
  hold time 3;
  keepalive time 1;
  ipv4 { import all; export where proto = "tor_out4"; };
}
"#;

#[test]
fn a_peer_over_its_import_limit_is_shut_down_and_shown_so_not_silently_cut() {
    let mut fabric = Fabric::new("lim", LIMIT);
    fabric.lab.bridge("br0");
    fabric.lab.node("tor");
    fabric.lab.link("tor", "br0", "eth0", &["10.0.0.1/24"]);
    fabric.lab.node("node-a");
    fabric.lab.link("node-a", "br0", "eth0", &["10.0.0.11/24"]);
    fabric.start_bird("tor", FLOODING_TOR);
    fabric.start_node("node-a");

    // The session is shut down, `birdc show protocols` says why, and BIRD
    // logs a warning: nothing is dropped behind an Established session.
    let shut_down = wait_until(CONVERGE, || {
        let sessions = bgp_sessions(&fabric.birdc("node-a", "show protocols"));
        sessions.get("peer_global_tor").map(String::as_str)
            == Some("Automatic shutdown: Route limit exceeded")
    });
    let log = fs::read_to_string(&fabric.lab.bird("node-a").log).unwrap_or_default();
    assert!(
        shut_down,
        "{}\n--- log\n{log}",
        fabric.birdc("node-a", "show protocols all peer_global_tor")
    );
    assert!(
        log.contains("Protocol peer_global_tor hits route receive limit (3), action: disable"),
        "{log}"
    );
    fabric.wait_bgp_routes("node-a", &[]);
}
