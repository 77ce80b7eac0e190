//! Metrics, liveness and readiness, and the tiny HTTP server that exposes them.
//!
//! Owns the `confera_*` OpenMetrics registry and the `/metrics`, `/healthz`
//! and `/readyz` endpoints. It never decides anything: the pipeline and the
//! watch loop report into it. Labels are bounded: unit names and fixed words,
//! never keys or values.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// The content type of an OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the render duration histogram, in seconds.
const RENDER_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open connections get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The fixed words allowed in each bounded label; anything else becomes `other`.
const RELOAD_METHODS: [&str; 3] = ["signal", "command", "bird_socket"];
const DRIFT_ACTIONS: [&str; 2] = ["restore", "warn"];
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
    backend_up: Family<BackendLabels, Gauge>,
    revision: Family<BackendLabels, Gauge>,
    watch_restarts: Family<BackendLabels, Counter>,
    resyncs: Family<BackendLabels, Counter>,
    events_applied: Family<BackendLabels, Counter>,
    keys: Gauge,
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
        registry.register(
            "undecodable_entries",
            "Keys or values from the backend that are not UTF-8, left out of the store, by part",
            undecodable().clone(),
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
                backend_up,
                revision,
                watch_restarts,
                resyncs,
                events_applied,
                keys,
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

/// Liveness and readiness, shared with the HTTP server.
///
/// Starts unhealthy ("starting") and not ready.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<HealthState>,
}

struct HealthState {
    /// `None` when healthy, else the reason.
    unhealthy: Mutex<Option<String>>,
    ready: AtomicBool,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            unhealthy: Mutex::new(Some("starting".to_owned())),
            ready: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("healthy", &self.healthy())
            .field("ready", &self.ready())
            .finish()
    }
}

impl Health {
    /// The backend is connected, its watches are alive and the store is in sync.
    pub fn set_healthy(&self) {
        *self.lock() = None;
    }

    /// Something is wrong, e.g. "etcd unreachable: ...".
    pub fn set_unhealthy(&self, reason: impl Into<String>) {
        *self.lock() = Some(reason.into());
    }

    /// The first full render is committed.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// `Ok` when healthy, else the reason.
    pub fn healthy(&self) -> Result<(), String> {
        match &*self.lock() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // The state is a plain value, always whole: a panic elsewhere cannot corrupt it.
        self.inner
            .unhealthy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves GET `/metrics` (OpenMetrics text), `/healthz` (200 "ok" or 503 with
/// the reason) and `/readyz` (200 "ready" or 503 "not ready"); any other path
/// is 404, any other method on those paths 405.
///
/// Binds before returning, so a bind error names the address; then serves in
/// a spawned task, one task per connection, until `shutdown` is cancelled.
/// Returns the bound address (useful with port 0) and the server task, which
/// ends once open connections have finished (at most a short grace period).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
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
    let task = tokio::spawn(accept_loop(listener, metrics, health, shutdown));
    Ok((bound, task))
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning, keep serving.
                tracing::warn!(error = %err, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = respond(&request, &metrics, &health);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
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
    health: &Health,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
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
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
            );
            response
        }
        "/healthz" => match health.healthy() {
            Ok(()) => text(StatusCode::OK, "ok".to_owned()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        _ if health.ready() => text(StatusCode::OK, "ready".to_owned()),
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
        let health = Health::default();
        assert_eq!(health.healthy(), Err("starting".to_owned()));
        assert!(!health.ready());
        health.set_healthy();
        health.set_ready();
        assert_eq!(health.healthy(), Ok(()));
        assert!(health.clone().ready());
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
        Health,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let (metrics, health, shutdown) =
            (Metrics::new(), Health::default(), CancellationToken::new());
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

        health.set_healthy();
        health.set_ready();
        let (status, _, body) = get_async(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, _, body) = get_async(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready"));

        health.set_unhealthy("etcd unreachable: connection refused");
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
            Health::default(),
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
}
