//! A real etcd on free loopback ports, and a grpc-proxy in front of one.
//!
//! Each fixture owns a temp dir (data dir and log file), its ports and its
//! process, which Drop stops by pid. The methods are synchronous and work
//! from plain and from tokio tests: they drive an etcd-client on a private
//! current-thread runtime, and from inside a runtime they do so on a scoped
//! helper thread, since a runtime cannot block inside another. Failures panic
//! with the cause: these are test fixtures.
//!
//! Ports are picked free, but another process may take one before etcd binds
//! it. So each etcd gets a unique member name, and "ready" means that a
//! member of that name answers at the URL, not merely that something does:
//! a test never talks to another test's etcd by mistake.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp,
};
use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::runtime::Runtime;

use super::cmd::{reserve_ports, signal_child, stop_child, KillOnDrop, PortLease};

/// How long etcd or the proxy may take to serve after spawning.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any single client call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Drop and `stop` wait after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Attempts with fresh ports when another process took one first.
const PORT_ATTEMPTS: usize = 5;

/// etcd's `--max-txn-ops` default.
const MAX_TXN_OPS: usize = 128;
/// Well under etcd's `--max-request-bytes` default of 1.5 MiB.
const MAX_TXN_BYTES: usize = 1 << 20;
/// Transactions in flight at once in `put_many`.
const TXN_CONCURRENCY: usize = 8;

pub struct Etcd {
    /// `http://127.0.0.1:P`, for `--node`.
    pub client_url: String,
    /// `http://127.0.0.1:M`, serving `/metrics`.
    pub metrics_url: String,
    /// The unique member name (the temp dir's name).
    name: String,
    member_id: u64,
    ports: PortLease,
    dir: TempDir,
    child: Option<Child>,
    conn: Conn,
}

impl Etcd {
    /// Starts a single-member etcd on free loopback ports and waits (at most
    /// 10 s) until it has a leader.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("confera-etcd-")
            .tempdir()
            .expect("create etcd's temp dir");
        let name = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for _ in 0..PORT_ATTEMPTS {
            let ports = reserve_ports(3);
            let &[client_port, _, metrics_port] = ports.ports() else {
                unreachable!()
            };
            let client_url = format!("http://127.0.0.1:{client_port}");
            let expect = Identity::Name(name.clone());
            match start_etcd(dir.path(), &name, &ports, &client_url, &expect) {
                Ok((child, conn)) => {
                    return Etcd {
                        client_url,
                        metrics_url: format!("http://127.0.0.1:{metrics_port}"),
                        member_id: conn.member_id,
                        name,
                        ports,
                        dir,
                        child: Some(child),
                        conn,
                    };
                }
                // The data dir may hold a half-initialised member.
                Err(StartError::PortTaken) => {
                    let _ = std::fs::remove_dir_all(dir.path().join("data"));
                }
                Err(StartError::Failed(why)) => panic!("etcd did not start: {why}"),
            }
        }
        panic!("etcd did not start: its ports were taken {PORT_ATTEMPTS} times in a row");
    }

    /// `127.0.0.1:P`, the form etcdctl and the grpc-proxy take.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.ports.ports()[0])
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What etcd logged so far (warnings and errors).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("etcd.log"), 0)
    }

    pub fn put(&self, key: &str, value: &str) {
        let mut c = self.conn.client.clone();
        self.conn.call(format!("put {key}"), async move {
            c.put(key, value, None).await
        });
    }

    /// Puts a value of arbitrary bytes, such as one that is not UTF-8.
    pub fn put_bytes(&self, key: &str, value: &[u8]) {
        let mut c = self.conn.client.clone();
        let value = value.to_vec();
        self.conn.call(format!("put {key}"), async move {
            c.put(key, value, None).await
        });
    }

    /// Runs `etcdctl --endpoints ENDPOINT ARGS...` (the v3 API) and returns
    /// its stdout; panics with its output when it fails. For set-up steps
    /// such as users, roles, grants and `auth enable`.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("run etcdctl (is etcd-client installed?)");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// From now on the fixture's own calls (put, get, ...) authenticate as
    /// USER, as they must once `etcdctl auth enable` has run.
    pub fn login(&mut self, user: &str, password: &str) {
        let url = self.client_url.clone();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_user(user, password);
        let client = self.conn.call(format!("login as {user}"), async move {
            Client::connect([url], Some(options)).await
        });
        self.conn.client = client;
    }

    /// Deletes KEY; true if it existed.
    pub fn delete(&self, key: &str) -> bool {
        let mut c = self.conn.client.clone();
        let resp = self.conn.call(
            format!("delete {key}"),
            async move { c.delete(key, None).await },
        );
        resp.deleted() > 0
    }

    /// Deletes every key starting with PREFIX (bytewise, as etcd does);
    /// returns how many.
    pub fn delete_prefix(&self, prefix: &str) -> u64 {
        let mut c = self.conn.client.clone();
        let resp = self
            .conn
            .call(format!("delete prefix {prefix}"), async move {
                c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            });
        resp.deleted() as u64
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let mut c = self.conn.client.clone();
        let resp = self
            .conn
            .call(format!("get {key}"), async move { c.get(key, None).await });
        resp.kvs().first().map(|kv| {
            kv.value_str()
                .unwrap_or_else(|e| panic!("value of {key} is not UTF-8: {e}"))
                .to_owned()
        })
    }

    /// Every key and value under PREFIX, sorted by key.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c = self.conn.client.clone();
        let resp = self.conn.call(format!("get prefix {prefix}"), async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        });
        resp.kvs()
            .iter()
            .map(|kv| {
                let k = kv.key_str().expect("UTF-8 key").to_owned();
                let v = kv.value_str().expect("UTF-8 value").to_owned();
                (k, v)
            })
            .collect()
    }

    /// Puts many pairs quickly: transactions of at most 128 puts (and 1 MiB),
    /// 8 in flight at once. Pairs in different transactions get different
    /// revisions; a key must not appear twice.
    pub fn put_many<K: AsRef<str>, V: AsRef<str>>(&self, pairs: &[(K, V)]) {
        let mut batches: Vec<Vec<TxnOp>> = vec![Vec::new()];
        let mut bytes = 0;
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            let size = k.len() + v.len() + 16;
            let last = batches.last().unwrap();
            if last.len() == MAX_TXN_OPS || (!last.is_empty() && bytes + size > MAX_TXN_BYTES) {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            batches.last_mut().unwrap().push(TxnOp::put(k, v, None));
        }
        let client = self.conn.client.clone();
        let n = pairs.len();
        self.conn.call(format!("put_many of {n} keys"), async move {
            let mut set = tokio::task::JoinSet::new();
            for ops in batches.into_iter().filter(|ops| !ops.is_empty()) {
                if set.len() == TXN_CONCURRENCY {
                    set.join_next().await.unwrap().expect("txn task")?;
                }
                let mut c = client.clone();
                set.spawn(async move { c.txn(Txn::new().and_then(ops)).await.map(drop) });
            }
            while let Some(done) = set.join_next().await {
                done.expect("txn task")?;
            }
            Ok(())
        });
    }

    /// The store's current revision (read with Status, which is not a Range
    /// and so does not move [`Etcd::range_requests`]).
    pub fn revision(&self) -> i64 {
        let mut c = self.conn.client.clone();
        let resp = self
            .conn
            .call("status".into(), async move { c.status().await });
        resp.header()
            .expect("a status response has a header")
            .revision()
    }

    /// Compacts the history up to REVISION and waits for the physical
    /// compaction, so watches from older revisions fail with ErrCompacted.
    pub fn compact(&self, revision: i64) {
        let mut c = self.conn.client.clone();
        self.conn.call(format!("compact {revision}"), async move {
            c.compact(revision, Some(CompactionOptions::new().with_physical()))
                .await
        });
    }

    /// How many Range (read) requests etcd has handled, with any result code:
    /// the sum of `grpc_server_handled_total{grpc_method="Range"}`. Includes
    /// the fixture's own `get`/`get_prefix` calls (and reads forwarded by a
    /// grpc-proxy), so compare differences around the step under test.
    pub fn range_requests(&self) -> u64 {
        self.metric("grpc_server_handled_total", &[r#"grpc_method="Range""#]) as u64
    }

    /// The sum of etcd's samples of metric NAME whose labels include all of
    /// LABELS (each written `name="value"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&scrape(&self.metrics_url), name, labels)
    }

    /// SIGTERM, then waits (SIGKILL after 3 s). The ports and data stay
    /// reserved for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, STOP_GRACE);
        }
    }

    /// SIGKILL, as in a crash; the data dir keeps what etcd had synced
    /// (every acknowledged write).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::ZERO);
        }
    }

    /// Starts etcd again on the same ports and data dir (stopping it first
    /// if it runs) and waits until it serves.
    pub fn restart(&mut self) {
        self.stop();
        let expect = Identity::MemberId(self.member_id);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let started = start_etcd(
                self.dir.path(),
                &self.name,
                &self.ports,
                &self.client_url,
                &expect,
            );
            match started {
                Ok((child, conn)) => {
                    self.child = Some(child);
                    self.conn = conn;
                    return;
                }
                // Another process took a port while etcd was down; it may
                // be short-lived, so try again for a while.
                Err(StartError::PortTaken) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(100))
                }
                Err(StartError::PortTaken) => panic!(
                    "etcd could not restart: another process holds one of ports {:?}",
                    self.ports.ports()
                ),
                Err(StartError::Failed(why)) => panic!("etcd did not restart: {why}"),
            }
        }
    }

    /// Stops etcd, deletes its data, and starts a brand-new etcd on the same
    /// ports: what a wiped etcd, or a restore from an old backup, looks
    /// like to a client (its revision starts again from 1).
    pub fn wipe_and_restart(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.data_dir()).expect("remove etcd's data dir");
        let expect = Identity::Name(self.name.clone());
        let (child, conn) = start_etcd(
            self.dir.path(),
            &self.name,
            &self.ports,
            &self.client_url,
            &expect,
        )
        .unwrap_or_else(|_| {
            panic!(
                "a wiped etcd did not restart on ports {:?}",
                self.ports.ports()
            )
        });
        self.member_id = conn.member_id;
        self.child = Some(child);
        self.conn = conn;
    }

    /// SIGSTOP: etcd keeps its connections but answers nothing. (Fixture
    /// calls made while paused fail after 10 s.)
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`Etcd::pause`].
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&mut self, signal: Signal) {
        let child = self.child.as_mut().expect("etcd is not running");
        assert!(signal_child(child, signal), "etcd has exited");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An `etcd grpc-proxy` in front of an [`Etcd`], on its own free port. Killing
/// and restarting it cuts a client's connections while etcd keeps going.
pub struct GrpcProxy {
    /// `http://127.0.0.1:R`, for `--node`.
    pub url: String,
    /// `http://127.0.0.1:M`, serving the proxy's `/metrics`.
    pub metrics_url: String,
    etcd_endpoint: String,
    etcd_member_id: u64,
    ports: PortLease,
    dir: TempDir,
    child: Option<Child>,
}

impl GrpcProxy {
    /// Starts a proxy to ETCD and waits until a request through it reaches
    /// that etcd.
    pub fn start(etcd: &Etcd) -> GrpcProxy {
        for _ in 0..PORT_ATTEMPTS {
            let ports = reserve_ports(2);
            let &[port, metrics_port] = ports.ports() else {
                unreachable!()
            };
            let mut proxy = GrpcProxy {
                url: format!("http://127.0.0.1:{port}"),
                metrics_url: format!("http://127.0.0.1:{metrics_port}"),
                etcd_endpoint: etcd.endpoint(),
                etcd_member_id: etcd.member_id,
                ports,
                dir: tempfile::Builder::new()
                    .prefix("confera-grpc-proxy-")
                    .tempdir()
                    .expect("create the proxy's temp dir"),
                child: None,
            };
            match proxy.spawn_and_wait() {
                Ok(()) => return proxy,
                Err(StartError::PortTaken) => continue,
                Err(StartError::Failed(why)) => panic!("etcd grpc-proxy did not start: {why}"),
            }
        }
        panic!(
            "etcd grpc-proxy did not start: its ports were taken {PORT_ATTEMPTS} times in a row"
        );
    }

    /// What the proxy logged so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("proxy.log"), 0)
    }

    /// The sum of the proxy's samples of metric NAME with all of LABELS, for
    /// example `etcd_grpc_proxy_watchers_coalescing_total`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&scrape(&self.metrics_url), name, labels)
    }

    /// SIGKILL: every client connection through the proxy drops at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::ZERO);
        }
    }

    /// Starts the proxy again on the same port (killing it first if it runs).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartError::PortTaken) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(100))
                }
                Err(StartError::PortTaken) => panic!(
                    "etcd grpc-proxy could not restart: another process holds one of ports {:?}",
                    self.ports.ports()
                ),
                Err(StartError::Failed(why)) => panic!("etcd grpc-proxy did not restart: {why}"),
            }
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log = self.dir.path().join("proxy.log");
        let from = file_len(&log);
        let &[port, metrics_port] = self.ports.ports() else {
            unreachable!()
        };
        let child = Command::new("etcd")
            .arg("grpc-proxy")
            .arg("start")
            .arg(format!("--endpoints={}", self.etcd_endpoint))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .arg(format!("--metrics-addr=http://127.0.0.1:{metrics_port}"))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .stdin(Stdio::null())
            .stdout(append(&log))
            .stderr(append(&log))
            .current_dir(self.dir.path())
            .spawn()
            .expect("spawn etcd grpc-proxy (is etcd installed?)");
        let mut child = KillOnDrop::new(child);
        let expect = Identity::MemberId(self.etcd_member_id);
        Conn::wait_ready(child.get(), &self.url, &expect, &log, from)?;
        self.child = Some(child.into_inner());
        Ok(())
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, STOP_GRACE);
        }
    }
}

enum StartError {
    /// A port was in use: try again (with new ports where possible).
    PortTaken,
    Failed(String),
}

/// Which etcd must answer for a start to count as ready.
enum Identity {
    /// A fresh member: the one with this (unique) name.
    Name(String),
    /// A known member, restarted or behind a proxy.
    MemberId(u64),
}

/// Spawns etcd and waits until it is ready; on failure the process is gone.
fn start_etcd(
    dir: &Path,
    name: &str,
    ports: &PortLease,
    client_url: &str,
    expect: &Identity,
) -> Result<(Child, Conn), StartError> {
    let &[client_port, peer_port, metrics_port] = ports.ports() else {
        unreachable!()
    };
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = dir.join("etcd.log");
    let from = file_len(&log);
    let child = Command::new("etcd")
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={name}={peer}"))
        .arg(format!(
            "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
        ))
        // A single member has no peer to miss heartbeats from: short raft
        // timers only make the first election (start-up) faster.
        .arg("--heartbeat-interval=10")
        .arg("--election-timeout=100")
        .arg("--logger=zap")
        .arg("--log-level=warn")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(append(&log))
        .stderr(append(&log))
        .current_dir(dir)
        .spawn()
        .expect("spawn etcd (is etcd installed?)");
    let mut child = KillOnDrop::new(child);
    let conn = Conn::wait_ready(child.get(), client_url, expect, &log, from)?;
    Ok((child.into_inner(), conn))
}

/// A connected client on its own current-thread runtime.
struct Conn {
    rt: OwnRuntime,
    client: Client,
    member_id: u64,
}

impl Conn {
    /// Polls URL until the expected member answers a Status call and has a
    /// leader. Fails early if CHILD exits; LOG is its output, of which only
    /// what follows byte FROM belongs to this run.
    fn wait_ready(
        child: &mut Child,
        url: &str,
        expect: &Identity,
        log: &Path,
        from: usize,
    ) -> Result<Conn, StartError> {
        let rt = OwnRuntime::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for etcd") {
                let text = read_lossy(log, from);
                return Err(if text.contains("address already in use") {
                    StartError::PortTaken
                } else {
                    StartError::Failed(format!("it exited with {status}; its log:\n{text}"))
                });
            }
            let attempt = async {
                let options =
                    ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
                let mut client = Client::connect([url], Some(options)).await?;
                let status = client.status().await?;
                let member_id = status.header().map_or(0, |h| h.member_id());
                let ours = match expect {
                    Identity::MemberId(id) => member_id == *id,
                    Identity::Name(name) => {
                        let members = client.member_list().await?;
                        members
                            .members()
                            .iter()
                            .any(|m| m.id() == member_id && m.name() == name)
                    }
                };
                let ready = ours && status.leader() != 0;
                Ok::<_, etcd_client::Error>(ready.then_some((client, member_id)))
            };
            let ready =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), attempt).await });
            if let Ok(Ok(Some((client, member_id)))) = ready {
                return Ok(Conn {
                    rt,
                    client,
                    member_id,
                });
            }
            if Instant::now() > deadline {
                stop_child(child, Duration::ZERO);
                return Err(StartError::Failed(format!(
                    "{url} was not ready within {START_TIMEOUT:?}; its log:\n{}",
                    read_lossy(log, from)
                )));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Runs one client call to completion within [`CALL_TIMEOUT`].
    fn call<T, F>(&self, what: String, fut: F) -> T
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send,
    {
        // The timer must be created inside our runtime, not a caller's.
        match self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
        {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("etcd {what}: {e}"),
            Err(_) => panic!("etcd {what}: no answer within {CALL_TIMEOUT:?} (paused or down?)"),
        }
    }
}

/// A current-thread runtime that may be used and dropped anywhere, including
/// inside a test's own tokio runtime.
struct OwnRuntime(Option<Runtime>);

impl OwnRuntime {
    fn new() -> OwnRuntime {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime for the etcd client");
        OwnRuntime(Some(rt))
    }

    /// Blocks on FUT; on a scoped helper thread when this thread is already
    /// inside a tokio runtime (a `#[tokio::test]`), where blocking on
    /// another runtime would panic.
    fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.0.as_ref().expect("runtime present until drop");
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(fut);
        }
        std::thread::scope(|s| match s.spawn(|| rt.block_on(fut)).join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        // A plain drop blocks, which panics inside another runtime.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn append(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The file's text from byte FROM on; empty if it does not exist.
fn read_lossy(path: &Path, from: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
}

fn file_len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// GET URL/metrics over a plain TCP connection (HTTP/1.0, so the server
/// closes when done) and returns the body.
pub fn scrape(url: &str) -> String {
    let addr = url.strip_prefix("http://").expect("an http:// metrics URL");
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(CALL_TIMEOUT)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send GET /metrics");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("read {url}/metrics: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response from {url}/metrics"));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {url}/metrics: {}",
        head.lines().next().unwrap_or_default()
    );
    body.to_owned()
}

/// Sums the samples of NAME in Prometheus text whose label set includes every
/// one of LABELS (each written `name="value"`).
pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_set) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|l| label_set.split(',').any(|have| have == *l));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
