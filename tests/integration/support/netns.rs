//! A network-namespace lab: namespaces, bridges and veth links that a test
//! creates for itself, with a real BIRD in each namespace that needs one.
//!
//! Every name carries the test process's pid and the lab's tag, so labs of
//! parallel tests and of other runs never meet. Bridges live in a namespace
//! of the lab's own (the "switch"), never in the host's. On Drop, the BIRDs
//! are stopped by pid first, then every namespace the lab created is
//! deleted, which takes its links and routes with it; this also runs when
//! the test fails. Needs root (CI runs as root).
//!
//! [`Netns`] is a single namespace of the test's own, for one daemon whose
//! config touches routing tables (a real deployment's `protocol kernel`).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

use super::bird::Bird;

pub struct Lab {
    /// `cf<pid>-<tag>`: the start of every namespace name of this lab.
    prefix: String,
    /// Namespaces created so far, deleted in reverse order on Drop.
    namespaces: Vec<String>,
    /// BIRDs by node name, stopped before any namespace is deleted.
    birds: Vec<(String, Bird)>,
    /// Numbers the switch-side ends of the veth links.
    links: usize,
}

/// The namespace holding the lab's bridges.
const SWITCH: &str = "sw";

impl Lab {
    /// A lab with its switch namespace. `tag` tells labs of one test run
    /// apart (a few letters).
    pub fn new(tag: &str) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the network-namespace lab needs root (CI runs as root)"
        );
        let mut lab = Lab {
            prefix: format!("cf{}-{tag}", std::process::id()),
            namespaces: Vec::new(),
            birds: Vec::new(),
            links: 0,
        };
        lab.node(SWITCH);
        lab
    }

    /// The full name of NODE's namespace.
    pub fn netns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// Creates NODE's namespace, with its loopback up.
    pub fn node(&mut self, node: &str) {
        let netns = self.netns(node);
        // Registered first, so that Drop deletes it even if `add` half-fails.
        self.namespaces.push(netns.clone());
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        self.ip(node, &["link", "set", "lo", "up"]);
    }

    /// A bridge named BRIDGE in the switch namespace.
    pub fn bridge(&mut self, bridge: &str) {
        self.ip(SWITCH, &["link", "add", bridge, "type", "bridge"]);
        self.ip(SWITCH, &["link", "set", bridge, "up"]);
    }

    /// Links NODE to BRIDGE with a veth pair whose node end is IFNAME,
    /// holding ADDRESSES (`10.0.0.11/24`, `fd00::11/64`; IPv6 ones skip
    /// duplicate address detection, so they are usable at once).
    pub fn link(&mut self, node: &str, bridge: &str, ifname: &str, addresses: &[&str]) {
        self.links += 1;
        let port = format!("p{}", self.links);
        let netns = self.netns(node);
        self.ip(
            SWITCH,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", &netns,
            ],
        );
        self.ip(SWITCH, &["link", "set", &port, "master", bridge]);
        self.ip(SWITCH, &["link", "set", &port, "up"]);
        for address in addresses {
            if address.contains(':') {
                self.ip(
                    node,
                    &["-6", "addr", "add", address, "dev", ifname, "nodad"],
                );
            } else {
                self.ip(node, &["addr", "add", address, "dev", ifname]);
            }
        }
        self.ip(node, &["link", "set", ifname, "up"]);
    }

    /// Lets NODE forward IPv4 and IPv6 packets between its links.
    pub fn forwarding(&self, node: &str) {
        for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            run_ok(&mut self.exec(node, &["sysctl", "-qw", setting]));
        }
    }

    /// `ip -n NETNS ARGS`, which must succeed; its stdout.
    pub fn ip(&self, node: &str, args: &[&str]) -> String {
        let netns = self.netns(node);
        let output = run_ok(Command::new("ip").args(["-n", &netns]).args(args));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `ip netns exec NETNS ARGS`, ready to run.
    pub fn exec(&self, node: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.netns(node)])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Starts BIRD in NODE's namespace on CONFIG (inside DIR, which holds
    /// its socket and log and which the BIRD fixture owns from now on).
    pub fn start_bird(&mut self, node: &str, dir: TempDir, config: PathBuf) {
        let bird = Bird::in_netns(&self.netns(node), dir, config);
        self.birds.push((node.to_owned(), bird));
    }

    /// NODE's BIRD.
    pub fn bird(&self, node: &str) -> &Bird {
        self.birds
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, bird)| bird)
            .unwrap_or_else(|| panic!("no BIRD runs on {node}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // BIRDs first (by pid, in the fixture's Drop): a namespace with a
        // process still in it outlives its name.
        self.birds.clear();
        for netns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", netns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs COMMAND, panicking with its stderr unless it succeeds.
fn run_ok(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One namespace with a unique name and its loopback up, deleted on Drop.
/// Stop the processes in it before it drops: declare it before them.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create() -> Netns {
        let name = format!(
            "confera-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Owned first, so that Drop deletes it even if bringing lo up fails.
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        run_ok(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]));
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
