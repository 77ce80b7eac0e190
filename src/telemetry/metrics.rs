//! Metrics, liveness and readiness, and the tiny HTTP server that exposes them.
//!
//! Owns the `confera_*` OpenMetrics registry and the `/metrics`, `/healthz`,
//! `/readyz` and `/status` endpoints. It never decides anything: the pipeline and the
//! watch loop report into it. Labels are bounded: unit names and fixed words,
//! never keys or values.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::status::Status;

/// The content type of an OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the render duration histogram, in seconds.
const RENDER_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may stay open, requests and idle time together.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// How long open connections get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The fixed words allowed in each bounded label; anything else becomes `other`.
const RELOAD_METHODS: [&str; 3] = ["signal", "command", "bird_socket"];
const DRIFT_ACTIONS: [&str; 2] = ["restore", "warn"];
/// What was done with a configuration the daemon rejected (`on_reject`).
const REJECT_ACTIONS: [&str; 2] = ["rollback", "keep"];
const BACKENDS: [&str; 3] = ["etcd", "file", "env"];
const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    resource: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    resource: String,
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    resource: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabels {
    part: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// `confera_undecodable_entries_total{part}`, process-wide: the etcd source
/// that meets such entries has no `Metrics` handle, so every registry shares
/// this one family.
fn undecodable() -> &'static Family<PartLabels, Counter> {
    static FAMILY: std::sync::OnceLock<Family<PartLabels, Counter>> = std::sync::OnceLock::new();
    FAMILY.get_or_init(Family::default)
}

/// Counts a key (`part = "key"`) or value (`"value"`) from the backend that
/// is not UTF-8 and was left out of the store.
pub fn count_undecodable(part: &'static str) {
    let part = fixed(part, &["key", "value"]);
    undecodable().get_or_create(&PartLabels { part }).inc();
}

struct Inner {
    registry: Registry,
    renders: Family<ResultLabels, Counter>,
    render_duration: HistogramFamily<ResourceLabels>,
    commits: Family<ResourceLabels, Counter>,
    check_failures: Family<ResourceLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    last_success: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    drift: Family<DriftLabels, Counter>,
    rejected_configs: Family<DriftLabels, Counter>,
    backend_up: Family<BackendLabels, Gauge>,
    revision: Family<BackendLabels, Gauge>,
    watch_restarts: Family<BackendLabels, Counter>,
    resyncs: Family<BackendLabels, Counter>,
    events_applied: Family<BackendLabels, Counter>,
    keys: Gauge,
    last_attempt: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    failing: Family<ResourceLabels, Gauge>,
    stuck: Family<ResourceLabels, Gauge>,
    reload_pending: Family<ResourceLabels, Gauge>,
    resource_revision: Family<ResourceLabels, Gauge>,
    render_limits: Family<ResourceLabels, Counter>,
    history_changes: Family<BackendLabels, Counter>,
    history_repairing: Gauge,
    http_rejected: Counter,
    child_running: Gauge,
    child_starts: Counter,
    child_exits: Counter,
    child_restarts: Counter,
    child_last_exit_code: Gauge,
    orphans_reaped: Counter,
}

/// All confera metrics, prefixed `confera_`. Cheap to clone (Arc inside).
/// Labels are bounded: unit names and fixed words, never keys or values.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("confera");
        let renders = Family::<ResultLabels, Counter>::default();
        registry.register(
            "renders",
            "Template renders per resource, by result",
            renders.clone(),
        );
        let render_duration: HistogramFamily<ResourceLabels> =
            Family::new_with_constructor(|| Histogram::new(RENDER_BUCKETS));
        registry.register_with_unit(
            "render_duration",
            "Time spent rendering a resource's templates",
            Unit::Seconds,
            render_duration.clone(),
        );
        let commits = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "commits",
            "Destination files committed per resource",
            commits.clone(),
        );
        let check_failures = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "check_failures",
            "Failed check commands per resource",
            check_failures.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Reload actions per resource, by method and result",
            reloads.clone(),
        );
        let last_success = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "last_success_timestamp",
            "Unix time of the last fully successful run of a resource",
            Unit::Seconds,
            last_success.clone(),
        );
        let drift = Family::<DriftLabels, Counter>::default();
        registry.register(
            "drift",
            "Destination files found changed behind confera's back, by action",
            drift.clone(),
        );
        let rejected_configs = Family::<DriftLabels, Counter>::default();
        registry.register(
            "rejected_configs",
            "Committed configurations the daemon rejected, by what was done (rollback or keep)",
            rejected_configs.clone(),
        );
        let backend_up = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "backend_up",
            "Whether the backend is connected and its watches alive (1) or not (0)",
            backend_up.clone(),
        );
        let revision = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "backend_revision",
            "The backend revision the store reflects",
            revision.clone(),
        );
        let watch_restarts = Family::<BackendLabels, Counter>::default();
        registry.register(
            "watch_restarts",
            "Watches re-established after being lost",
            watch_restarts.clone(),
        );
        let resyncs = Family::<BackendLabels, Counter>::default();
        registry.register(
            "full_resyncs",
            "Full re-reads of the backend",
            resyncs.clone(),
        );
        let events_applied = Family::<BackendLabels, Counter>::default();
        registry.register(
            "events_applied",
            "Change events applied to the store",
            events_applied.clone(),
        );
        let keys = Gauge::default();
        registry.register("store_keys", "Keys held in the store", keys.clone());
        let last_attempt = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "last_attempt_timestamp",
            "Unix time of the last render attempt of a resource",
            Unit::Seconds,
            last_attempt.clone(),
        );
        let failing = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resource_failing",
            "Whether a resource's last attempt failed (1) or not (0)",
            failing.clone(),
        );
        let stuck = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resource_stuck",
            "Whether a resource's work has run past the stuck threshold (1) or not (0)",
            stuck.clone(),
        );
        let reload_pending = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "reload_pending",
            "Whether a resource's daemon still owes a reload (1) or not (0)",
            reload_pending.clone(),
        );
        let resource_revision = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resource_revision",
            "The backend revision a resource's files reflect",
            resource_revision.clone(),
        );
        let render_limits = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "render_limits",
            "Renders abandoned at their time or output size limit",
            render_limits.clone(),
        );
        let history_changes = Family::<BackendLabels, Counter>::default();
        registry.register(
            "history_changes",
            "Rewritten backend histories detected (new cluster or revision gone back)",
            history_changes.clone(),
        );
        let history_repairing = Gauge::default();
        registry.register(
            "history_repairing",
            "Whether a rewritten backend history is being repaired (1) or not (0)",
            history_repairing.clone(),
        );
        let http_rejected = Counter::default();
        registry.register(
            "http_connections_rejected",
            "Metrics connections that could not be accepted (descriptor limits)",
            http_rejected.clone(),
        );
        registry.register(
            "undecodable_entries",
            "Keys or values from the backend that are not UTF-8, left out of the store, by part",
            undecodable().clone(),
        );
        let child_running = Gauge::default();
        registry.register(
            "child_running",
            "Exec mode: whether the child runs (1) or not (0)",
            child_running.clone(),
        );
        let child_starts = Counter::default();
        registry.register(
            "child_starts",
            "Exec mode: child starts, the first one included",
            child_starts.clone(),
        );
        let child_exits = Counter::default();
        registry.register(
            "child_exits",
            "Exec mode: child exits, on its own or stopped",
            child_exits.clone(),
        );
        let child_restarts = Counter::default();
        registry.register(
            "child_restarts",
            "Exec mode: child restarts after it exited on its own",
            child_restarts.clone(),
        );
        let child_last_exit_code = Gauge::default();
        registry.register(
            "child_last_exit_code",
            "Exec mode: the child's last exit status as a shell gives it (128+N for signal N)",
            child_last_exit_code.clone(),
        );
        let orphans_reaped = Counter::default();
        registry.register(
            "orphans_reaped",
            "Orphaned processes reaped while confera runs as PID 1",
            orphans_reaped.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                renders,
                render_duration,
                commits,
                check_failures,
                reloads,
                last_success,
                drift,
                rejected_configs,
                backend_up,
                revision,
                watch_restarts,
                resyncs,
                events_applied,
                keys,
                last_attempt,
                failing,
                stuck,
                reload_pending,
                resource_revision,
                render_limits,
                history_changes,
                history_repairing,
                http_rejected,
                child_running,
                child_starts,
                child_exits,
                child_restarts,
                child_last_exit_code,
                orphans_reaped,
            }),
        }
    }

    /// One render of `unit`: `confera_renders_total{resource,result}` and
    /// `confera_render_duration_seconds{resource}`.
    pub fn render(&self, unit: &str, ok: bool, duration: Duration) {
        self.inner
            .renders
            .get_or_create(&ResultLabels {
                resource: unit.to_owned(),
                result: outcome(ok),
            })
            .inc();
        self.inner
            .render_duration
            .get_or_create(&resource(unit))
            .observe(duration.as_secs_f64());
    }

    /// `confera_commits_total{resource}`.
    pub fn commit(&self, unit: &str) {
        self.inner.commits.get_or_create(&resource(unit)).inc();
    }

    /// `confera_check_failures_total{resource}`.
    pub fn check_failure(&self, unit: &str) {
        self.inner
            .check_failures
            .get_or_create(&resource(unit))
            .inc();
    }

    /// `confera_reloads_total{resource,method,result}`; `method` is one of
    /// `signal`, `command`, `bird_socket` (anything else is counted as `other`).
    pub fn reload(&self, unit: &str, method: &str, ok: bool) {
        self.inner
            .reloads
            .get_or_create(&ReloadLabels {
                resource: unit.to_owned(),
                method: fixed(method, &RELOAD_METHODS),
                result: outcome(ok),
            })
            .inc();
    }

    /// `confera_last_success_timestamp_seconds{resource}` set to now.
    pub fn unit_success(&self, unit: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.inner
            .last_success
            .get_or_create(&resource(unit))
            .set(now);
    }

    /// `confera_drift_total{resource,action}`; `action` is `restore` or `warn`.
    pub fn drift(&self, unit: &str, action: &str) {
        self.inner
            .drift
            .get_or_create(&DriftLabels {
                resource: unit.to_owned(),
                action: fixed(action, &DRIFT_ACTIONS),
            })
            .inc();
    }

    /// `confera_rejected_configs_total{resource,action}`; `action` is
    /// `rollback` or `keep`.
    pub fn rejected_config(&self, unit: &str, action: &str) {
        self.inner
            .rejected_configs
            .get_or_create(&DriftLabels {
                resource: unit.to_owned(),
                action: fixed(action, &REJECT_ACTIONS),
            })
            .inc();
    }

    /// `confera_backend_up{backend}`: 1 or 0.
    pub fn backend_up(&self, backend: &str, up: bool) {
        self.inner
            .backend_up
            .get_or_create(&backend_labels(backend))
            .set(i64::from(up));
    }

    /// `confera_backend_revision{backend}`.
    pub fn revision(&self, backend: &str, revision: i64) {
        self.inner
            .revision
            .get_or_create(&backend_labels(backend))
            .set(revision);
    }

    /// `confera_watch_restarts_total{backend}`.
    pub fn watch_restart(&self, backend: &str) {
        self.inner
            .watch_restarts
            .get_or_create(&backend_labels(backend))
            .inc();
    }

    /// `confera_full_resyncs_total{backend}`.
    pub fn resync(&self, backend: &str) {
        self.inner
            .resyncs
            .get_or_create(&backend_labels(backend))
            .inc();
    }

    /// `confera_events_applied_total{backend}` increased by `n`.
    pub fn events_applied(&self, backend: &str, n: u64) {
        self.inner
            .events_applied
            .get_or_create(&backend_labels(backend))
            .inc_by(n);
    }

    /// `confera_store_keys`.
    pub fn keys(&self, n: usize) {
        self.inner.keys.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// `confera_last_attempt_timestamp_seconds{resource}`.
    pub fn last_attempt(&self, unit: &str, unix_seconds: f64) {
        self.inner
            .last_attempt
            .get_or_create(&resource(unit))
            .set(unix_seconds);
    }

    /// `confera_resource_failing{resource}`.
    pub fn resource_failing(&self, unit: &str, failing: bool) {
        self.inner
            .failing
            .get_or_create(&resource(unit))
            .set(i64::from(failing));
    }

    /// `confera_resource_stuck{resource}`.
    pub fn resource_stuck(&self, unit: &str, stuck: bool) {
        self.inner
            .stuck
            .get_or_create(&resource(unit))
            .set(i64::from(stuck));
    }

    /// `confera_reload_pending{resource}`.
    pub fn reload_pending(&self, unit: &str, pending: bool) {
        self.inner
            .reload_pending
            .get_or_create(&resource(unit))
            .set(i64::from(pending));
    }

    /// `confera_resource_revision{resource}`.
    pub fn resource_revision(&self, unit: &str, revision: i64) {
        self.inner
            .resource_revision
            .get_or_create(&resource(unit))
            .set(revision);
    }

    /// `confera_render_limits_total{resource}`.
    pub fn render_limit(&self, unit: &str) {
        self.inner
            .render_limits
            .get_or_create(&resource(unit))
            .inc();
    }

    /// `confera_history_changes_total{backend}`.
    pub fn history_change(&self, backend: &str) {
        self.inner
            .history_changes
            .get_or_create(&backend_labels(backend))
            .inc();
    }

    /// `confera_history_repairing`.
    pub fn history_repairing(&self, repairing: bool) {
        self.inner.history_repairing.set(i64::from(repairing));
    }

    /// `confera_http_connections_rejected_total`: an accept failed.
    pub fn http_rejected(&self) {
        self.inner.http_rejected.inc();
    }

    /// Exec mode: the child was started.
    pub fn child_started(&self) {
        self.inner.child_starts.inc();
        self.inner.child_running.set(1);
    }

    /// Exec mode: the child exited with this shell-style status.
    pub fn child_exited(&self, code: u8) {
        self.inner.child_exits.inc();
        self.inner.child_running.set(0);
        self.inner.child_last_exit_code.set(i64::from(code));
    }

    /// Exec mode: the child is started again after exiting on its own.
    pub fn child_restarted(&self) {
        self.inner.child_restarts.inc();
    }

    /// `confera_orphans_reaped_total` increased by `n`.
    pub fn orphans_reaped(&self, n: u64) {
        self.inner.orphans_reaped.inc_by(n);
    }

    /// Creates the series of `backend` and of each resource (with its
    /// reload method, if it reloads) at zero, so that dashboards and alerts
    /// see every series before its first event.
    pub fn declare(&self, backend: &str, resources: &[(&str, Option<&str>)]) {
        let b = backend_labels(backend);
        drop(self.inner.backend_up.get_or_create(&b));
        drop(self.inner.revision.get_or_create(&b));
        drop(self.inner.watch_restarts.get_or_create(&b));
        drop(self.inner.resyncs.get_or_create(&b));
        drop(self.inner.events_applied.get_or_create(&b));
        drop(self.inner.history_changes.get_or_create(&b));
        for (unit, method) in resources {
            let r = resource(unit);
            for result in ["success", "failure"] {
                drop(self.inner.renders.get_or_create(&ResultLabels {
                    resource: (*unit).to_owned(),
                    result,
                }));
                if let Some(method) = method {
                    drop(self.inner.reloads.get_or_create(&ReloadLabels {
                        resource: (*unit).to_owned(),
                        method: fixed(method, &RELOAD_METHODS),
                        result,
                    }));
                }
            }
            for action in DRIFT_ACTIONS {
                drop(self.inner.drift.get_or_create(&DriftLabels {
                    resource: (*unit).to_owned(),
                    action,
                }));
            }
            if *method == Some("bird_socket") {
                for action in REJECT_ACTIONS {
                    drop(self.inner.rejected_configs.get_or_create(&DriftLabels {
                        resource: (*unit).to_owned(),
                        action,
                    }));
                }
            }
            drop(self.inner.commits.get_or_create(&r));
            drop(self.inner.check_failures.get_or_create(&r));
            drop(self.inner.render_limits.get_or_create(&r));
            drop(self.inner.last_success.get_or_create(&r));
            drop(self.inner.last_attempt.get_or_create(&r));
            drop(self.inner.failing.get_or_create(&r));
            drop(self.inner.stuck.get_or_create(&r));
            drop(self.inner.reload_pending.get_or_create(&r));
            drop(self.inner.resource_revision.get_or_create(&r));
        }
    }

    /// Drops the per-resource gauges of a resource no longer configured.
    pub fn forget_resource(&self, unit: &str) {
        let labels = resource(unit);
        self.inner.failing.remove(&labels);
        self.inner.stuck.remove(&labels);
        self.inner.reload_pending.remove(&labels);
        self.inner.resource_revision.remove(&labels);
    }

    /// The OpenMetrics text exposition, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) = encode(&mut text, &self.inner.registry) {
            tracing::warn!(error = %err, "encoding metrics failed");
        }
        text
    }
}

fn resource(unit: &str) -> ResourceLabels {
    ResourceLabels {
        resource: unit.to_owned(),
    }
}

fn backend_labels(backend: &str) -> BackendLabels {
    BackendLabels {
        backend: fixed(backend, &BACKENDS),
    }
}

fn outcome(ok: bool) -> &'static str {
    if ok {
        "success"
    } else {
        "failure"
    }
}

/// Maps `word` onto one of the `allowed` label values, or `other`, so that a
/// caller's typo can never grow a label's cardinality.
fn fixed(word: &str, allowed: &[&'static str]) -> &'static str {
    allowed
        .iter()
        .copied()
        .find(|allowed| *allowed == word)
        .unwrap_or(OTHER)
}

/// At most this many metrics connections are open at once. Past it the
/// server stops accepting (clients wait in the kernel's backlog, holding
/// none of confera's descriptors), so HTTP clients can never exhaust the
/// descriptors that staging and commits need.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves GET `/metrics` (OpenMetrics text), `/healthz` (200 "ok" or 503 with
/// the reasons), `/readyz` (200 "ready" or 503 "not ready") and `/status`
/// (JSON, see [`super::status::Report`]); any other path is 404, any other
/// method on those paths 405.
///
/// Binds before returning, so a bind error names the address; then serves in
/// a spawned task, one task per connection (at most [`MAX_CONNECTIONS`]),
/// until `shutdown` is cancelled. A connection gets [`HEADER_READ_TIMEOUT`]
/// to send its headers and [`CONNECTION_LIFETIME`] in all. Returns the bound
/// address (useful with port 0) and the server task, which ends once open
/// connections have finished (at most a short grace period).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    status: Status,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot listen for metrics on {addr}: {err}"),
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving metrics and health");
    let task = tokio::spawn(accept_loop(listener, metrics, status, shutdown));
    Ok((bound, task))
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Metrics,
    status: Status,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning, keep serving.
                tracing::warn!(error = %err, "accepting a metrics connection failed");
                metrics.http_rejected();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let status = status.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = respond(&request, &metrics, &status);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                // A slow or idle client gives its slot back after a while.
                () = tokio::time::sleep(CONNECTION_LIFETIME) => Ok(()),
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                        Ok(result) => result,
                        Err(_elapsed) => Ok(()),
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "metrics connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    tracing::debug!("metrics server stopped");
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    status: &Status,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status") {
        return text(StatusCode::NOT_FOUND, "not found".to_owned());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            // Stuck is a matter of time: refresh those gauges first.
            let _ = status.report();
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
            );
            response
        }
        "/status" => {
            let report = status.report();
            let body = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
            let mut response = Response::new(Full::new(Bytes::from(body)));
            if !report.healthy {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        "/healthz" => match status.health() {
            Ok(()) => text(StatusCode::OK, "ok".to_owned()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        _ if status.readiness() => text(StatusCode::OK, "ready".to_owned()),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready".to_owned()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn lines_for<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| line.starts_with(family))
            .collect()
    }

    #[test]
    fn counters_move_and_show_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.render("bird", true, Duration::from_millis(3));
        metrics.render("bird", false, Duration::from_millis(4));
        metrics.render("bird", true, Duration::from_millis(5));
        metrics.commit("bird");
        metrics.check_failure("nginx");
        metrics.reload("bird", "bird_socket", true);
        metrics.drift("bird", "restore");
        metrics.watch_restart("etcd");
        metrics.resync("etcd");
        metrics.events_applied("etcd", 7);
        metrics.events_applied("etcd", 3);
        let text = metrics.encode();

        for expected in [
            r#"confera_renders_total{resource="bird",result="success"} 2"#,
            r#"confera_renders_total{resource="bird",result="failure"} 1"#,
            r#"confera_render_duration_seconds_count{resource="bird"} 3"#,
            r#"confera_commits_total{resource="bird"} 1"#,
            r#"confera_check_failures_total{resource="nginx"} 1"#,
            r#"confera_reloads_total{resource="bird",method="bird_socket",result="success"} 1"#,
            r#"confera_drift_total{resource="bird",action="restore"} 1"#,
            r#"confera_watch_restarts_total{backend="etcd"} 1"#,
            r#"confera_full_resyncs_total{backend="etcd"} 1"#,
            r#"confera_events_applied_total{backend="etcd"} 10"#,
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "missing {expected:?} in\n{text}"
            );
        }
    }

    #[test]
    fn gauges_hold_the_last_value() {
        let metrics = Metrics::new();
        metrics.backend_up("etcd", true);
        metrics.backend_up("etcd", false);
        metrics.revision("etcd", 42);
        metrics.keys(5);
        metrics.keys(3);
        metrics.unit_success("bird");
        let text = metrics.encode();

        assert!(
            text.contains("confera_backend_up{backend=\"etcd\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("confera_backend_revision{backend=\"etcd\"} 42\n"),
            "{text}"
        );
        assert!(text.contains("confera_store_keys 3\n"), "{text}");
        let stamp = lines_for(&text, "confera_last_success_timestamp_seconds{")[0];
        let seconds: f64 = stamp.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(seconds > 1.6e9, "{stamp}");
    }

    #[test]
    fn labels_carry_only_the_given_names_and_fixed_words() {
        let metrics = Metrics::new();
        metrics.reload("bird", "signal", false);
        metrics.reload("bird", "/secret/key=value", true);
        metrics.drift("bird", "overwrite everything");
        metrics.backend_up("consul", true);
        let text = metrics.encode();

        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("overwrite"), "{text}");
        assert!(!text.contains("consul"), "{text}");
        assert!(text.contains(
            r#"confera_reloads_total{resource="bird",method="signal",result="failure"} 1"#
        ));
        assert!(text.contains(
            r#"confera_reloads_total{resource="bird",method="other",result="success"} 1"#
        ));
        assert!(text.contains(r#"confera_drift_total{resource="bird",action="other"} 1"#));
        assert!(text.contains(r#"confera_backend_up{backend="other"} 1"#));
    }

    #[test]
    fn encoded_text_is_openmetrics() {
        let metrics = Metrics::new();
        metrics.render("bird", true, Duration::from_millis(1));
        metrics.keys(1);
        let text = metrics.encode();

        assert!(text.ends_with("# EOF\n"), "{text}");
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF",
                    "{line}"
                );
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.starts_with("confera_"), "{line}");
            assert!(
                typed.iter().any(|family| name.starts_with(family.as_str())),
                "sample {name} has no # TYPE"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("# TYPE confera_render_duration_seconds histogram\n"));
        assert!(text.contains("# UNIT confera_render_duration_seconds seconds\n"));
        assert!(
            text.contains(r#"confera_render_duration_seconds_bucket{le="+Inf",resource="bird"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn health_starts_unhealthy_and_not_ready() {
        let status = Status::new(Metrics::new(), Duration::from_secs(60));
        assert_eq!(status.health(), Err("starting".to_owned()));
        assert!(!status.readiness());
        status.link_up();
        status.set_ready();
        assert_eq!(status.health(), Ok(()));
        assert!(status.clone().readiness());
    }

    /// A tiny HTTP/1.1 client: one request, `Connection: close`, returns
    /// (status, headers, body).
    fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    async fn get_async(addr: SocketAddr, path: &'static str) -> (u16, String, String) {
        tokio::task::spawn_blocking(move || get(addr, "GET", path))
            .await
            .unwrap()
    }

    async fn start() -> (
        SocketAddr,
        Metrics,
        Status,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let metrics = Metrics::new();
        let (health, shutdown) = (
            Status::new(metrics.clone(), Duration::from_secs(60)),
            CancellationToken::new(),
        );
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        (addr, metrics, health, shutdown, task)
    }

    #[tokio::test]
    async fn serve_exposes_metrics_as_openmetrics() {
        let (addr, metrics, _health, shutdown, _task) = start().await;
        metrics.render("bird", true, Duration::from_millis(2));

        let (status, head, body) = get_async(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase().contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert!(body.contains(r#"confera_renders_total{resource="bird",result="success"} 1"#));
        assert!(body.ends_with("# EOF\n"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn healthz_flips_with_the_reason_and_readyz_follows_readiness() {
        let (addr, _metrics, health, shutdown, _task) = start().await;

        assert_eq!(get_async(addr, "/healthz").await.0, 503);
        assert_eq!(get_async(addr, "/healthz").await.2, "starting");
        assert_eq!(get_async(addr, "/readyz").await.0, 503);
        assert_eq!(get_async(addr, "/readyz").await.2, "not ready");

        health.link_up();
        health.set_ready();
        let (status, _, body) = get_async(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, _, body) = get_async(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready"));

        health.link_down("etcd unreachable: connection refused");
        let (status, _, body) = get_async(addr, "/healthz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "etcd unreachable: connection refused")
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405() {
        let (addr, _metrics, _health, shutdown, _task) = start().await;
        assert_eq!(get_async(addr, "/").await.0, 404);
        assert_eq!(get_async(addr, "/metrics/extra").await.0, 404);
        let (status, head, _) = tokio::task::spawn_blocking(move || get(addr, "POST", "/metrics"))
            .await
            .unwrap();
        assert_eq!(status, 405);
        assert!(
            head.to_ascii_lowercase().contains("allow: get, head"),
            "{head}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_slow_client_does_not_block_others() {
        let (addr, _metrics, _health, shutdown, _task) = start().await;
        let slow = TcpStream::connect(addr).unwrap();
        (&slow).write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
        let (status, _, _) = get_async(addr, "/readyz").await;
        assert_eq!(status, 503);
        drop(slow);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn binding_an_address_in_use_names_it() {
        let (addr, _metrics, _health, shutdown, _task) = start().await;
        let err = serve(
            addr,
            Metrics::new(),
            Status::new(Metrics::new(), Duration::from_secs(60)),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn cancellation_stops_the_server() {
        let (addr, _metrics, _health, shutdown, task) = start().await;
        // An idle keep-alive connection must not hold the server open.
        let idle = TcpStream::connect(addr).unwrap();
        assert_eq!(get_async(addr, "/healthz").await.0, 503);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server task ends after cancellation")
            .unwrap();
        assert!(TcpStream::connect(addr).is_err());
        drop(idle);
    }

    #[tokio::test]
    async fn status_is_json_listing_each_resource() {
        let (addr, _metrics, status, shutdown, _task) = start().await;
        status.link_up();
        status.started("bird");
        status.finished("bird", 12, Ok(()));
        let (code, head, body) = get_async(addr, "/status").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            head.to_ascii_lowercase().contains("application/json"),
            "{head}"
        );
        let report: crate::telemetry::status::Report = serde_json::from_str(&body).unwrap();
        assert_eq!(report.resources["bird"].revision, Some(12));
        assert!(report.healthy);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_without_holding_descriptors() {
        let (addr, _metrics, _status, shutdown, _task) = start().await;
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 20)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count();
        // Our own client ends count too; the server holds at most the cap.
        assert!(
            open < idle.len() + MAX_CONNECTIONS + 40,
            "{open} descriptors open"
        );
        drop(idle);
        assert_eq!(get_async(addr, "/healthz").await.0, 503);
        shutdown.cancel();
    }
}
