//! What every benchmark shares: a monotonic clock that is comparable across
//! processes, statistics, /proc readers, a SIGHUP recorder process, an
//! inotify observer of destinations, a bare etcd-client watch (the floor),
//! and whole-process runs measured with wait4.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::cmd::stop_child;

/// Nanoseconds of CLOCK_MONOTONIC: the same clock in every process of this
/// machine (Rust's `Instant` is this clock too, but cannot be serialised).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Median, p99 and the extremes of a sample (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(samples: &[f64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = |p: f64| {
        let r = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[r - 1]
    };
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    Summary {
        n: s.len(),
        median,
        p99: rank(0.99),
        min: s[0],
        max: s[s.len() - 1],
    }
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({"n": self.n, "median": r3(self.median), "p99": r3(self.p99), "min": r3(self.min), "max": r3(self.max)})
    }
}

/// Rounds to 3 decimals for reports.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        r3(a / b)
    } else {
        f64::NAN
    }
}

pub fn yes_no(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

/// A value of about `len` bytes that starts with `tag`.
pub fn value_of(tag: &str, len: usize) -> String {
    let mut v = format!("{tag}-");
    while v.len() < len {
        v.push(char::from(b'a' + (v.len() % 26) as u8));
    }
    v
}

// ----- /proc -----

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// A process's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of every thread, living or exited (clock ticks).
    pub cpu_ticks: u64,
    /// Sum of on-CPU ns of the threads alive now (schedstat, ns resolution).
    pub cpu_ns_live: u64,
    /// Voluntary + involuntary context switches of the threads alive now.
    pub ctx_switches: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// Bytes passed to read()/pread() (files, pipes; not recv on sockets).
    pub rchar: u64,
    pub threads: u64,
}

impl ProcSample {
    pub fn cpu_ms(&self) -> f64 {
        self.cpu_ticks as f64 * 1000.0 / clk_tck()
    }
}

pub fn proc_sample(pid: i32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let mut cpu_ns_live = 0;
    let mut ctx = 0;
    let mut threads = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let dir = task.path();
            threads += 1;
            if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
                cpu_ns_live += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(dir.join("status")) {
                ctx += field(&s, "voluntary_ctxt_switches:")
                    + field(&s, "nonvoluntary_ctxt_switches:");
            }
        }
    }
    Some(ProcSample {
        cpu_ticks: utime + stime,
        cpu_ns_live,
        ctx_switches: ctx,
        rss_kb: field(&status, "VmRSS:"),
        hwm_kb: field(&status, "VmHWM:"),
        rchar: field(&io, "rchar:"),
        threads,
    })
}

/// TCP bytes received and sent on the established sockets of `pid`, from
/// the kernel's tcp_info (`ss -tinp`): what actually crossed the wire to
/// the process, HTTP/2 framing and keepalives included.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpBytes {
    pub received: u64,
    pub sent: u64,
}

pub fn tcp_bytes(pids: &[i32]) -> HashMap<i32, TcpBytes> {
    let mut out: HashMap<i32, TcpBytes> = pids.iter().map(|p| (*p, TcpBytes::default())).collect();
    let Ok(output) = Command::new("ss")
        .args(["-tinpH", "state", "established"])
        .stderr(Stdio::null())
        .output()
    else {
        return out;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut current: Option<i32> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = pids
                .iter()
                .copied()
                .find(|p| line.contains(&format!("pid={p},")));
            continue;
        }
        let Some(pid) = current else { continue };
        let num = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let e = out.entry(pid).or_default();
        e.received += num("bytes_received:");
        e.sent += num("bytes_acked:");
    }
    out
}

// ----- observations -----

/// Something a benchmark observed, with the CLOCK_MONOTONIC ns it was seen.
#[derive(Debug)]
pub enum Obs {
    /// The bare etcd-client watch delivered `key` = `value`.
    Watch { at: u64, key: String, value: String },
    /// inotify reported a rename onto (or a write of) `path`.
    Fs { at: u64, path: PathBuf },
    /// The SIGHUP recorder received SIGHUP at `at` (its own clock read).
    Hup { at: u64 },
}

pub struct Observer {
    pub tx: Sender<Obs>,
    pub rx: Receiver<Obs>,
}

impl Observer {
    pub fn new() -> Observer {
        let (tx, rx) = mpsc::channel();
        Observer { tx, rx }
    }

    /// The next observation before `deadline_ns` (mono), or None.
    pub fn next(&self, deadline_ns: u64) -> Option<Obs> {
        let now = mono_ns();
        if now >= deadline_ns {
            return self.rx.try_recv().ok();
        }
        match self
            .rx
            .recv_timeout(Duration::from_nanos(deadline_ns - now))
        {
            Ok(o) => Some(o),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("every observer source is gone"),
        }
    }

    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// inotify (through the notify crate) on destination directories: reports
/// creations, renames onto and writes of any file in them.
pub struct FsWatch {
    _watcher: notify::RecommendedWatcher,
}

impl FsWatch {
    pub fn start(dirs: &[PathBuf], tx: Sender<Obs>) -> FsWatch {
        use notify::event::{EventKind, ModifyKind};
        use notify::{RecursiveMode, Watcher};
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let at = mono_ns();
            let Ok(event) = res else { return };
            let relevant = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Modify(ModifyKind::Name(_))
                    | EventKind::Modify(ModifyKind::Data(_))
                    | EventKind::Modify(ModifyKind::Any)
            );
            if relevant {
                for path in event.paths {
                    let _ = tx.send(Obs::Fs { at, path });
                }
            }
        })
        .expect("create an inotify watcher");
        for dir in dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .unwrap_or_else(|e| panic!("watch {}: {e}", dir.display()));
        }
        FsWatch { _watcher: watcher }
    }
}

/// A bare etcd-client watch on a prefix, in this process on its own
/// runtime: the floor that confera's propagation is compared with.
pub struct BareWatch {
    rt: Option<tokio::runtime::Runtime>,
}

impl BareWatch {
    pub fn start(endpoint: &str, prefix: &str, tx: Sender<Obs>) -> BareWatch {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (ready_tx, ready_rx) = mpsc::channel();
        let endpoint = endpoint.to_string();
        let prefix = prefix.to_string();
        rt.spawn(async move {
            let mut client = etcd_client::Client::connect([endpoint], None)
                .await
                .expect("connect the bare watch");
            let mut stream = client
                .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
                .await
                .expect("start the bare watch");
            let _ = ready_tx.send(());
            while let Ok(Some(resp)) = stream.message().await {
                let at = mono_ns();
                for event in resp.events() {
                    if let Some(kv) = event.kv() {
                        let _ = tx.send(Obs::Watch {
                            at,
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: String::from_utf8_lossy(kv.value()).into_owned(),
                        });
                    }
                }
            }
            drop(client);
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the bare watch starts within 10 s");
        BareWatch { rt: Some(rt) }
    }
}

impl Drop for BareWatch {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A stand-in daemon: this benchmark binary re-executed as
/// `__hup-recorder PIDFILE`. It blocks SIGHUP, writes its pid file, and for
/// each SIGHUP taken with sigwait prints the CLOCK_MONOTONIC ns of receipt;
/// a thread here forwards those as [`Obs::Hup`]. Stopped by pid on Drop.
pub struct HupRecorder {
    pub pid_file: PathBuf,
    child: Child,
    reader: Option<thread::JoinHandle<()>>,
}

impl HupRecorder {
    pub fn start(dir: &Path, tx: Sender<Obs>) -> HupRecorder {
        let pid_file = dir.join("daemon.pid");
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .arg("__hup-recorder")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the SIGHUP recorder");
        let stdout = child.stdout.take().expect("piped stdout");
        let expected = child.id().to_string();
        let ok = crate::support::cmd::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == expected)
        });
        if !ok {
            stop_child(&mut child, Duration::ZERO);
            panic!("the SIGHUP recorder wrote no pid file");
        }
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(at) = line.trim().parse::<u64>() {
                    if tx.send(Obs::Hup { at }).is_err() {
                        break;
                    }
                }
            }
        });
        HupRecorder {
            pid_file,
            child,
            reader: Some(reader),
        }
    }
}

impl Drop for HupRecorder {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::ZERO);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The body of `__hup-recorder PIDFILE` (see [`HupRecorder`]).
pub fn hup_recorder_main(pid_file: &Path) -> ! {
    use nix::sys::signal::{SigSet, Signal};
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().expect("block SIGHUP");
    let tmp = pid_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id())).expect("write pid file");
    std::fs::rename(&tmp, pid_file).expect("rename pid file");
    let mut out = std::io::stdout().lock();
    loop {
        match set.wait() {
            Ok(Signal::SIGHUP) => {
                let at = mono_ns();
                if writeln!(out, "{at}").and_then(|_| out.flush()).is_err() {
                    std::process::exit(0);
                }
            }
            _ => std::process::exit(0),
        }
    }
}

// ----- whole-process runs -----

/// One finished process: wall time from spawn to reap, and its rusage.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wall_ms: f64,
    pub maxrss_kb: i64,
    pub user_ms: f64,
    pub sys_ms: f64,
    pub code: i32,
}

/// Runs `cmd` (stdout to /dev/null, stderr to `stderr_file`) and measures
/// it from a fresh launcher process (this binary as `__measure`), which
/// spawns it and reaps it with wait4. The launcher is needed for the peak
/// RSS: a child spawned from a big process inherits that process's
/// high-water mark in ru_maxrss (vfork + exec keeps the larger of the old
/// and new mm's), so measured from here it would report this bench's RSS.
/// The launcher is a few MB, well under anything confera uses.
pub fn run_measured(cmd: &mut Command, stderr_file: &Path) -> Measured {
    let result = stderr_file.with_extension("measure");
    let _ = std::fs::remove_file(&result);
    let mut launcher = Command::new(std::env::current_exe().expect("current exe"));
    launcher
        .arg("__measure")
        .arg(&result)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => launcher.env(k, v),
            None => launcher.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        launcher.current_dir(dir);
    }
    let err = File::create(stderr_file).expect("create stderr file");
    let status = launcher
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .expect("run the measuring launcher");
    assert!(status.success(), "the measuring launcher failed: {status}");
    let text = std::fs::read_to_string(&result).expect("the launcher's result");
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    Measured {
        wall_ms: f[0],
        maxrss_kb: f[1] as i64,
        user_ms: f[2],
        sys_ms: f[3],
        code: f[4] as i32,
    }
}

/// The body of `__measure RESULT PROGRAM ARGS...` (see [`run_measured`]):
/// spawns PROGRAM with this process's stdio and environment, reaps it with
/// wait4 and writes `wall_ms maxrss_kb user_ms sys_ms code` to RESULT.
pub fn measure_main(args: &[String]) -> ! {
    let (result, program, rest) = (&args[0], &args[1], &args[2..]);
    let t0 = mono_ns();
    let child = Command::new(program)
        .args(rest)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
    let wall = mono_ns() - t0;
    // The child is reaped; std's Child does nothing on drop.
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    std::fs::write(
        result,
        format!(
            "{} {} {} {} {code}\n",
            ms(wall),
            ru.ru_maxrss,
            tv(ru.ru_utime),
            tv(ru.ru_stime)
        ),
    )
    .expect("write the measurement");
    std::process::exit(0);
}

/// The confera binary under test: `target/release/confera` as built by
/// cargo for this bench, or $BENCH_CONFERA_BIN.
pub fn confera_bin() -> PathBuf {
    std::env::var_os("BENCH_CONFERA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_confera")))
}

/// The first binary of `BENCH_BEFORE_BIN` (paths separated by `:`), an
/// older confera measured beside this one.
pub fn before_bin() -> Option<PathBuf> {
    let list = std::env::var("BENCH_BEFORE_BIN").ok()?;
    list.split(':').find(|p| !p.is_empty()).map(PathBuf::from)
}

/// `confera` with a clean environment (no CONFERA_*, no RUST_LOG).
pub fn confera() -> Command {
    confera_at(&confera_bin())
}

/// The confera binary BIN with a clean environment, as [`confera`].
pub fn confera_at(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"CONFERA_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// A temp dir for one benchmark, removed on Drop.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("confera-bench-{prefix}-"))
        .tempdir()
        .expect("create a temp dir")
}

/// Writes PATH (creating parents).
pub fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A confdir with one resource `NAME` rendering TEMPLATE_TEXT to DEST.
/// `extra` is appended to the `[template]` table (pid_file, ...).
pub fn simple_confdir(
    confdir: &Path,
    name: &str,
    template_text: &str,
    dest: &Path,
    prefix: &str,
    extra: &str,
) {
    write(
        &confdir.join(format!("templates/{name}.tmpl")),
        template_text,
    );
    write(
        &confdir.join(format!("conf.d/{name}.toml")),
        &format!(
            "[template]\nsrc = \"{name}.tmpl\"\ndest = \"{}\"\nprefix = \"{prefix}\"\nkeys = [\"/\"]\n{extra}",
            dest.display()
        ),
    );
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
}

/// Puts PAIRS in slices of 10,000: the fixture's `put_many` is one call
/// with a 10 s deadline, which 100k keys can exceed on a busy machine.
pub fn load(etcd: &crate::support::etcd::Etcd, pairs: &[(String, String)]) {
    for chunk in pairs.chunks(10_000) {
        etcd.put_many(chunk);
    }
}

/// Keys `{prefix}/{i:06}` with values of about `len` bytes.
pub fn keys(prefix: &str, n: usize, len: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}/{i:06}"), value_of(&format!("v{i}"), len)))
        .collect()
}

/// Machine facts for the report header.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cmd_out = |c: &str, args: &[&str]| {
        Command::new(c)
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    json!({
        "cpu": model,
        "cores": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": r3(mem as f64 / 1024.0 / 1024.0),
        "kernel": cmd_out("uname", &["-sr"]),
        "etcd": cmd_out("etcd", &["--version"]),
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "confera": confera_bin().display().to_string(),
    })
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Comma-separated numbers from environment variable NAME, or DEFAULT.
pub fn sizes_from_env(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(text) => text
            .split(',')
            .map(|n| {
                n.trim()
                    .replace('_', "")
                    .parse()
                    .expect("a size list such as 1000,20000")
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}
