//! What each resource and the backend link are doing, for `/status`,
//! `/healthz`, `/readyz`, `confera status` and the matching gauges.
//!
//! The loop, the workers and the link report into it; it decides nothing
//! about the pipeline. It never holds its lock across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct Status {
    inner: Arc<Mutex<State>>,
    metrics: Metrics,
}

struct State {
    /// `None` when the backend is linked and in sync, else why not.
    link: Option<String>,
    /// A rewritten history being repaired: what was seen.
    repair: Option<String>,
    /// The last history change seen (kept after the repair, for people).
    last_history_change: Option<HistoryChange>,
    ready: bool,
    stuck_after: Duration,
    resources: BTreeMap<String, Resource>,
    /// Exec mode: the child.
    child: Option<Child>,
}

/// The exec child as status shows it.
#[derive(Debug, Clone, Default)]
struct Child {
    command: String,
    /// Its pid while it runs.
    pid: Option<u32>,
    started_at: Option<SystemTime>,
    starts: u64,
    last_exit: Option<String>,
    last_exit_at: Option<SystemTime>,
    /// When it is started again, after exiting on its own.
    restart_at: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
struct Resource {
    last_attempt: Option<SystemTime>,
    last_success: Option<SystemTime>,
    revision: Option<i64>,
    last_error: Option<String>,
    /// Failing since (the first failure after a success).
    failing_since: Option<Instant>,
    pending_reload: bool,
    running_since: Option<Instant>,
    /// Its last render was abandoned at a limit: stuck until its inputs change.
    abandoned: bool,
}

/// A history change etcd showed: what confera saw and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryChange {
    pub at: f64,
    pub reason: String,
    pub old_revision: i64,
    pub new_revision: i64,
    pub old_cluster: u64,
    pub new_cluster: u64,
}

/// The `/status` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub healthy: bool,
    /// Why not healthy, one reason per line.
    pub problems: Vec<String>,
    pub ready: bool,
    pub backend: BackendReport,
    pub resources: BTreeMap<String, ResourceReport>,
    /// Exec mode: the child confera runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<ChildReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChildReport {
    pub command: String,
    pub running: bool,
    pub pid: Option<u32>,
    /// Unix seconds of the last start.
    pub started_at: Option<f64>,
    /// Starts, the first one included.
    pub starts: u64,
    /// How the last child ended: "exit status 1", "killed by signal 9 (SIGKILL)".
    pub last_exit: Option<String>,
    pub last_exit_at: Option<f64>,
    /// Seconds until it is started again, while it waits to be.
    pub restart_in: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendReport {
    pub up: bool,
    pub error: Option<String>,
    pub repairing_history: Option<String>,
    pub last_history_change: Option<HistoryChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceReport {
    /// Unix seconds of the last render attempt.
    pub last_attempt: Option<f64>,
    /// Unix seconds of the last full success (committed or unchanged, and
    /// reloaded when it had to be).
    pub last_success: Option<f64>,
    /// The backend revision the resource's files reflect.
    pub revision: Option<i64>,
    pub last_error: Option<String>,
    pub pending_reload: bool,
    /// Its work has run longer than the stuck threshold.
    pub stuck: bool,
    /// Seconds its current work has been running.
    pub running_for: Option<f64>,
    pub failing: bool,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Status {
    pub fn new(metrics: Metrics, stuck_after: Duration) -> Status {
        Status {
            inner: Arc::new(Mutex::new(State {
                link: Some("starting".to_owned()),
                repair: None,
                last_history_change: None,
                ready: false,
                stuck_after,
                resources: BTreeMap::new(),
                child: None,
            })),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain values, always whole: a panic elsewhere cannot corrupt them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_stuck_after(&self, stuck_after: Duration) {
        self.lock().stuck_after = stuck_after;
    }

    /// The backend is connected, its watches alive and the store in sync.
    pub fn link_up(&self) {
        self.lock().link = None;
    }

    /// The backend is unreachable or a watch was lost.
    pub fn link_down(&self, reason: impl Into<String>) {
        self.lock().link = Some(reason.into());
    }

    /// A rewritten history was detected; files are being brought back to
    /// the backend's new state.
    pub fn history_changed(&self, change: HistoryChange) {
        let mut state = self.lock();
        state.repair = Some(change.reason.clone());
        state.last_history_change = Some(change);
        self.metrics.history_repairing(true);
    }

    /// The fresh snapshot after a history change is in the store.
    pub fn history_repaired(&self) {
        let mut state = self.lock();
        if state.repair.take().is_some() {
            self.metrics.history_repairing(false);
        }
    }

    /// The first batch was attempted.
    pub fn set_ready(&self) -> bool {
        let mut state = self.lock();
        !std::mem::replace(&mut state.ready, true)
    }

    /// Forgets resources no longer configured.
    pub fn retain(&self, names: &[&str]) {
        let mut state = self.lock();
        state.resources.retain(|name, _| {
            let keep = names.contains(&name.as_str());
            if !keep {
                self.metrics.forget_resource(name);
            }
            keep
        });
    }

    /// A resource's work started.
    pub fn started(&self, name: &str) {
        let mut state = self.lock();
        let r = state.resources.entry(name.to_owned()).or_default();
        r.running_since = Some(Instant::now());
        r.last_attempt = Some(SystemTime::now());
        self.metrics
            .last_attempt(name, r.last_attempt.map(unix).unwrap_or_default());
    }

    /// A resource's work ended: rendered and committed (or unchanged) at
    /// `revision`, or failed with `error`.
    pub fn finished(&self, name: &str, revision: i64, result: Result<(), String>) {
        let mut state = self.lock();
        let r = state.resources.entry(name.to_owned()).or_default();
        r.running_since = None;
        match result {
            Ok(()) => {
                r.abandoned = false;
                r.revision = Some(revision);
                r.last_error = None;
                r.failing_since = None;
                if !r.pending_reload {
                    r.last_success = Some(SystemTime::now());
                }
            }
            Err(e) => {
                r.last_error = Some(e);
                r.failing_since.get_or_insert_with(Instant::now);
            }
        }
        self.metrics
            .resource_failing(name, r.failing_since.is_some());
        self.metrics
            .resource_revision(name, r.revision.unwrap_or(0));
    }

    /// `name`'s last render was abandoned at its time or size limit: it is
    /// stuck until its data or templates change.
    pub fn abandoned(&self, name: &str) {
        let mut state = self.lock();
        let r = state.resources.entry(name.to_owned()).or_default();
        r.abandoned = true;
    }

    /// A reload for `name` is owed (`true`) or was done (`false`).
    pub fn reload_pending(&self, name: &str, pending: bool, error: Option<String>) {
        let mut state = self.lock();
        let r = state.resources.entry(name.to_owned()).or_default();
        let was = std::mem::replace(&mut r.pending_reload, pending);
        if was && !pending && r.failing_since.is_none() {
            r.last_success = Some(SystemTime::now());
        }
        if let Some(e) = error {
            r.last_error = Some(e);
        } else if !pending && r.failing_since.is_none() {
            r.last_error = None;
        }
        self.metrics.reload_pending(name, pending);
    }

    /// Exec mode is on, running `command` once the first render succeeded.
    pub fn child_declared(&self, command: &str) {
        self.lock().child = Some(Child {
            command: command.to_owned(),
            ..Child::default()
        });
    }

    /// The exec child started as `pid`.
    pub fn child_started(&self, pid: u32) {
        let mut state = self.lock();
        let child = state.child.get_or_insert_with(Child::default);
        child.pid = Some(pid);
        child.started_at = Some(SystemTime::now());
        child.starts += 1;
        child.restart_at = None;
    }

    /// The exec child ended as `how`; it is started again after `restart_in`.
    pub fn child_exited(&self, how: &str, restart_in: Option<Duration>) {
        let mut state = self.lock();
        let child = state.child.get_or_insert_with(Child::default);
        child.pid = None;
        child.last_exit = Some(how.to_owned());
        child.last_exit_at = Some(SystemTime::now());
        child.restart_at = restart_in.map(|d| Instant::now() + d);
    }

    /// The document `/status` serves; also refreshes the time-based gauges.
    pub fn report(&self) -> Report {
        let state = self.lock();
        let now = Instant::now();
        let mut problems = Vec::new();
        if let Some(link) = &state.link {
            problems.push(link.clone());
        }
        if let Some(repair) = &state.repair {
            problems.push(format!("repairing a rewritten etcd history: {repair}"));
        }
        // Not started yet is not a problem: readiness covers the first render.
        let child = state.child.as_ref().map(|c| {
            let restart_in = c.restart_at.map(|at| at.saturating_duration_since(now));
            if c.pid.is_none() && c.starts > 0 {
                let mut problem = format!(
                    "exec child not running: {}",
                    c.last_exit.as_deref().unwrap_or("exited")
                );
                if let Some(d) = restart_in {
                    problem.push_str(&format!("; restarting in {:.1}s", d.as_secs_f64()));
                }
                problems.push(problem);
            }
            ChildReport {
                command: c.command.clone(),
                running: c.pid.is_some(),
                pid: c.pid,
                started_at: c.started_at.map(unix),
                starts: c.starts,
                last_exit: c.last_exit.clone(),
                last_exit_at: c.last_exit_at.map(unix),
                restart_in: restart_in.map(|d| d.as_secs_f64()),
            }
        });
        let mut resources = BTreeMap::new();
        for (name, r) in &state.resources {
            let running_for = r.running_since.map(|s| now.duration_since(s));
            let stuck = r.abandoned || running_for.is_some_and(|d| d >= state.stuck_after);
            let failing_long = r
                .failing_since
                .is_some_and(|s| now.duration_since(s) >= state.stuck_after);
            if r.abandoned {
                problems.push(format!(
                    "resource {name} stuck: {}",
                    r.last_error.as_deref().unwrap_or("render abandoned")
                ));
            } else if stuck {
                problems.push(format!(
                    "resource {name} stuck for {}s",
                    running_for.unwrap_or_default().as_secs()
                ));
            } else if failing_long {
                problems.push(format!(
                    "resource {name} failing: {}",
                    r.last_error.as_deref().unwrap_or("unknown error")
                ));
            }
            self.metrics.resource_stuck(name, stuck);
            resources.insert(
                name.clone(),
                ResourceReport {
                    last_attempt: r.last_attempt.map(unix),
                    last_success: r.last_success.map(unix),
                    revision: r.revision,
                    last_error: r.last_error.clone(),
                    pending_reload: r.pending_reload,
                    stuck,
                    running_for: running_for.map(|d| d.as_secs_f64()),
                    failing: r.failing_since.is_some(),
                },
            );
        }
        Report {
            healthy: problems.is_empty(),
            problems,
            ready: state.ready,
            backend: BackendReport {
                up: state.link.is_none(),
                error: state.link.clone(),
                repairing_history: state.repair.clone(),
                last_history_change: state.last_history_change.clone(),
            },
            resources,
            child,
        }
    }

    /// Healthy: the backend is linked and in sync, no history is being
    /// repaired, and no resource is stuck or failing past the threshold.
    pub fn health(&self) -> Result<(), String> {
        let report = self.report();
        if report.healthy {
            Ok(())
        } else {
            Err(report.problems.join("; "))
        }
    }

    /// Ready: the first batch was attempted and the backend's history is
    /// not being repaired.
    pub fn readiness(&self) -> bool {
        let state = self.lock();
        state.ready && state.repair.is_none()
    }
}

/// `confera status`: fetches `/status` from a running confera at `addr`
/// and prints it, as a table or as the JSON document. Failed when the
/// instance is unhealthy; a configuration error when it cannot be reached.
pub async fn query(
    addr: Option<std::net::SocketAddr>,
    json: bool,
) -> Result<crate::RunStatus, crate::error::ConfigError> {
    use crate::error::ConfigError;
    let addr = addr.ok_or_else(|| {
        ConfigError::Settings(
            "confera status needs the instance's --metrics-addr (or CONFERA_METRICS_ADDR)".into(),
        )
    })?;
    let unreachable = |e: String| ConfigError::Settings(format!("confera at {addr}: {e}"));
    let body = tokio::time::timeout(Duration::from_secs(5), get(addr, "/status"))
        .await
        .map_err(|_| unreachable("no answer within 5s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let report: Report = serde_json::from_str(&body)
        .map_err(|e| unreachable(format!("not a status document: {e}")))?;
    let text = if json { body } else { table(addr, &report) };
    use std::io::Write;
    // A closed stdout is not our error.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(if report.healthy {
        crate::RunStatus::Success
    } else {
        crate::RunStatus::Failed
    })
}

/// One HTTP/1.1 GET with `Connection: close`; the body of any answer.
async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut response)
        .await?;
    let response = String::from_utf8_lossy(&response);
    let (_, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")
    })?;
    Ok(body.to_owned())
}

/// The report for people: a line for the instance, one per resource.
fn table(addr: std::net::SocketAddr, report: &Report) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let ago = |t: Option<f64>| match t {
        Some(t) => format!("{:.0}s ago", (now - t).max(0.0)),
        None => "never".to_owned(),
    };
    let mut out = format!(
        "confera at {addr}: {}, {}\n",
        if report.healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        },
        if report.ready { "ready" } else { "not ready" },
    );
    for problem in &report.problems {
        out.push_str(&format!("  problem: {problem}\n"));
    }
    if let Some(change) = &report.backend.last_history_change {
        out.push_str(&format!("  last history change: {}\n", change.reason));
    }
    if let Some(child) = &report.child {
        out.push_str(&child_line(child, ago));
    }
    out.push_str(&format!(
        "{:<24} {:<9} {:>12} {:>12} {:>9}  {}\n",
        "RESOURCE", "STATE", "ATTEMPT", "SUCCESS", "REVISION", "LAST ERROR"
    ));
    for (name, r) in &report.resources {
        let state = if r.stuck {
            "stuck"
        } else if r.failing {
            "failing"
        } else if r.pending_reload {
            "reload-owed"
        } else if r.running_for.is_some() {
            "running"
        } else {
            "ok"
        };
        out.push_str(&format!(
            "{:<24} {:<9} {:>12} {:>12} {:>9}  {}\n",
            name,
            state,
            ago(r.last_attempt),
            ago(r.last_success),
            r.revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            r.last_error.as_deref().unwrap_or("").replace('\n', " "),
        ));
    }
    out
}

/// The exec child's line of `confera status`.
fn child_line(child: &ChildReport, ago: impl Fn(Option<f64>) -> String) -> String {
    let state = match (child.pid, child.restart_in) {
        (Some(pid), _) => format!("running as pid {pid}, started {}", ago(child.started_at)),
        (None, Some(d)) => format!("not running, restarting in {d:.1}s"),
        (None, None) if child.starts == 0 => "not started yet".to_owned(),
        (None, None) => "not running".to_owned(),
    };
    let mut line = format!(
        "  exec child: {state}; {} start(s); `{}`\n",
        child.starts, child.command
    );
    if let Some(exit) = &child.last_exit {
        line.push_str(&format!(
            "  exec child last exit: {exit}, {}\n",
            ago(child.last_exit_at)
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_running_past_the_threshold_is_stuck_and_unhealthy() {
        let status = Status::new(Metrics::new(), Duration::ZERO);
        status.link_up();
        status.started("bird");
        let report = status.report();
        assert!(report.resources["bird"].stuck);
        assert!(!report.healthy);
        assert!(status.health().unwrap_err().contains("resource bird stuck"));
        status.finished("bird", 7, Ok(()));
        assert!(status.health().is_ok());
        assert_eq!(status.report().resources["bird"].revision, Some(7));
    }

    #[test]
    fn a_history_repair_makes_health_and_readiness_fail_until_repaired() {
        let status = Status::new(Metrics::new(), Duration::from_secs(60));
        status.link_up();
        status.set_ready();
        status.history_changed(HistoryChange {
            at: 0.0,
            reason: "revision went back from 42 to 2".into(),
            old_revision: 42,
            new_revision: 2,
            old_cluster: 1,
            new_cluster: 2,
        });
        assert!(!status.readiness());
        assert!(status.health().unwrap_err().contains("42 to 2"));
        status.history_repaired();
        assert!(status.readiness());
        assert!(status.health().is_ok());
        assert!(status.report().backend.last_history_change.is_some());
    }

    #[test]
    fn an_exec_child_that_exited_is_a_problem_until_it_runs_again() {
        let status = Status::new(Metrics::new(), Duration::from_secs(60));
        status.link_up();
        status.child_declared("bird -f");
        assert!(status.health().is_ok(), "not started yet is no problem");
        status.child_started(42);
        assert_eq!(status.report().child.unwrap().pid, Some(42));
        status.child_exited("killed by signal 9 (SIGKILL)", Some(Duration::from_secs(2)));
        let problem = status.health().unwrap_err();
        assert!(
            problem.contains("exec child not running: killed by signal 9 (SIGKILL); restarting in"),
            "{problem}"
        );
        let child = status.report().child.unwrap();
        assert!(!child.running && child.restart_in.is_some());
        status.child_started(43);
        assert!(status.health().is_ok());
        assert_eq!(status.report().child.unwrap().starts, 2);
    }

    #[test]
    fn an_owed_reload_delays_the_last_success_until_it_is_done() {
        let status = Status::new(Metrics::new(), Duration::from_secs(60));
        status.reload_pending("bird", true, Some("reload failed".into()));
        status.finished("bird", 3, Ok(()));
        let report = status.report();
        assert_eq!(report.resources["bird"].last_success, None);
        assert!(report.resources["bird"].pending_reload);
        status.reload_pending("bird", false, None);
        assert!(status.report().resources["bird"].last_success.is_some());
    }
}
