//! The etcd v3 source: a consistent snapshot of several prefixes at one
//! revision, and watches that resume from a revision.
//!
//! Keys are exact: what etcd returns is stored as it is, never normalised.
//! confera reads and watches only the key ranges its resources' keys cover
//! ([`KeyRange`]), each shaped like an etcd permission, so a user granted
//! read on exactly those keys or prefixes is enough; the health probe reads no
//! key. Watch streams are drained by their own tasks into a channel, never by
//! the render loop: an unread stream makes h2 close the whole connection.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

mod snapshot;
mod watch;

pub use watch::{Change, Header, WatchEvent};

use crate::error::SourceError;
use crate::store::{is_under, normalize_key};

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<crate::settings::Tls>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            username: None,
            password: None,
            tls: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn describe(&self) -> String {
        self.endpoints.join(",")
    }

    /// An error of these endpoints.
    fn error(&self, message: String) -> SourceError {
        SourceError::Etcd {
            endpoints: self.describe(),
            message,
        }
    }
}

/// A connected client.
pub struct Etcd {
    client: Client,
    config: EtcdConfig,
    /// The revision the connection probe saw, for the first snapshot to
    /// read at (one round trip fewer at start-up).
    probed: Option<i64>,
}

impl Etcd {
    /// Connects and proves the connection with a cheap request, so that an
    /// unreachable etcd fails within seconds, naming the endpoints.
    pub async fn connect(config: EtcdConfig) -> Result<Etcd, SourceError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            // A stalled etcd shows as a lost watch within ~8 s; a ping every
            // 5 s is the only idle traffic.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        let err = |message: String| config.error(message);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls).map_err(err)?);
        }
        let endpoints: Vec<String> = config.endpoints.iter().map(|e| trim_endpoint(e)).collect();
        // etcd-client's balancer keeps sending requests to endpoints that
        // refuse connections, so with several endpoints use those that answer.
        let endpoints = if endpoints.len() > 1 {
            live_endpoints(&endpoints, &options, config.request_timeout)
                .await
                .map_err(err)?
        } else {
            endpoints
        };
        let (client, revision) = connect_checked(&endpoints, options, config.request_timeout)
            .await
            .map_err(err)?;
        Ok(Etcd {
            client,
            config,
            probed: Some(revision),
        })
    }

    fn error(&self, message: String) -> SourceError {
        self.config.error(message)
    }

    async fn request<T, F, Fut>(&mut self, f: F) -> Result<T, SourceError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.config.request_timeout;
        match tokio::time::timeout(timeout, f(self.client.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(describe_error(&e))),
            Err(_) => Err(self.error(format!("request timed out after {timeout:?}"))),
        }
    }
}

impl Etcd {
    /// etcd's cluster id and current revision, from the endpoint's status
    /// (which reads no key), to notice a wiped or restored etcd.
    pub async fn header(&mut self) -> Result<Header, SourceError> {
        let status = self
            .request(|mut c| async move { c.status().await })
            .await?;
        Ok(Header::of(status.header()))
    }
}

/// Connects and proves the connection with a Status call (connecting is
/// lazy), all within `timeout`; returns the client and the revision Status
/// reported. Status reads no key, so it needs no permission: a
/// least-privilege user is refused only where it reads.
async fn connect_checked(
    endpoints: &[String],
    options: ConnectOptions,
    timeout: Duration,
) -> Result<(Client, i64), String> {
    let connect = async {
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| describe_error(&e))?;
        let status = client.status().await.map_err(|e| describe_error(&e))?;
        if status.leader() == 0 {
            return Err("the member has no leader".to_string());
        }
        let revision = status.header().map_or(0, |h| h.revision());
        Ok((client, revision))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// The endpoints that answer, probed concurrently; an error naming each
/// endpoint's failure when none does.
async fn live_endpoints(
    endpoints: &[String],
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let mut probes = tokio::task::JoinSet::new();
    for endpoint in endpoints {
        let (endpoint, options) = (endpoint.clone(), options.clone());
        probes.spawn(async move {
            let result = connect_checked(std::slice::from_ref(&endpoint), options, timeout).await;
            (endpoint, result.map(drop))
        });
    }
    let mut live = Vec::new();
    let mut reasons = Vec::new();
    while let Some(probe) = probes.join_next().await {
        match probe.expect("an endpoint probe does not panic") {
            (endpoint, Ok(())) => live.push(endpoint),
            (endpoint, Err(e)) => {
                tracing::warn!(endpoint = %endpoint, error = %e, "etcd endpoint does not answer; using the others");
                reasons.push(format!("{endpoint}: {e}"));
            }
        }
    }
    if live.is_empty() {
        reasons.sort();
        return Err(format!("no endpoint answers ({})", reasons.join("; ")));
    }
    // Keep the order the user gave.
    live.sort_by_key(|e| endpoints.iter().position(|x| x == e));
    Ok(live)
}

/// Reads the CA and the client identity for TLS to etcd.
fn tls_options(tls: &crate::settings::Tls) -> Result<etcd_client::TlsOptions, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

/// The largest gRPC message accepted: a page of big values, or a watch
/// response carrying a large transaction (tonic's default is 4 MiB).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Sorted prefixes with every prefix that lies under another dropped.
pub fn merge_prefixes(prefixes: &[String]) -> Vec<String> {
    let mut sorted: Vec<String> = prefixes.iter().map(|p| normalize_key(p)).collect();
    sorted.sort();
    sorted.dedup();
    let mut merged: Vec<String> = Vec::with_capacity(sorted.len());
    for prefix in sorted {
        if !merged.iter().any(|m| is_under(&prefix, m)) {
            merged.push(prefix);
        }
    }
    merged
}

/// One etcd key range that confera reads and watches: a single key, or the
/// range `[key, end)`. Each has the shape of an etcd permission (`read KEY`,
/// or `--prefix read KEY`), so the grant a user needs is exactly the ranges
/// its resources' keys cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub key: String,
    /// The exclusive end; `None` for exactly `key`.
    pub end: Option<String>,
}

impl KeyRange {
    /// What etcd is asked for, for errors and logs: `the key /app`, `the keys
    /// under /app/ (range [/app/, /app0))`.
    pub fn describe(&self) -> String {
        match &self.end {
            None => format!("the key {}", self.key),
            Some(end) => format!("the keys under {} (range [{}, {end}))", self.key, self.key),
        }
    }

    /// The etcdctl command that grants a role read on this range.
    pub fn grant(&self) -> String {
        match &self.end {
            None => format!("etcdctl role grant-permission ROLE read {}", self.key),
            Some(_) => format!(
                "etcdctl role grant-permission ROLE --prefix read {}",
                self.key
            ),
        }
    }
}

/// The exact ranges that hold a merged prefix: the key itself and,
/// separately, the keys below it, `[prefix/, prefix0)` ('0' is the byte
/// after '/'), each the shape of an etcd grant. A grant on either is enough
/// for confera to start; see [`Etcd::snapshot`]. The root is one range,
/// every key starting with `/`. Siblings such as `/app-x` are not in them.
pub fn key_ranges(prefix: &str) -> Vec<KeyRange> {
    if prefix == "/" {
        return vec![KeyRange {
            key: "/".into(),
            end: Some("0".into()),
        }];
    }
    vec![
        KeyRange {
            key: prefix.to_string(),
            end: None,
        },
        KeyRange {
            key: format!("{prefix}/"),
            end: Some(format!("{prefix}0")),
        },
    ]
}

/// The one range holding a merged prefix, the keys below it and siblings
/// such as `/app-x` (`[prefix, prefix0)`, '0' being the byte after '/'):
/// what a snapshot and a watch ask for first, since one request is cheapest
/// for a user who may read it. Readers drop the siblings; where etcd
/// refuses the range, they ask for the exact [`key_ranges`].
pub fn covering_range(prefix: &str) -> KeyRange {
    if prefix == "/" {
        return key_ranges(prefix).remove(0);
    }
    KeyRange {
        key: prefix.to_string(),
        end: Some(format!("{prefix}0")),
    }
}

/// Whether etcd refused a request for want of permission (not for bad
/// credentials, which fail every request alike).
fn is_permission_denied(e: &etcd_client::Error) -> bool {
    // gRPC status 7 is PERMISSION_DENIED (tonic is not a direct dependency).
    matches!(e, etcd_client::Error::GRpcStatus(s) if i32::from(s.code()) == 7)
}

/// Whether a response was larger than the client accepts (tonic's decoder
/// refuses it with OUT_OF_RANGE), so a smaller page can succeed.
fn is_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if i32::from(s.code()) == 11 && s.message().contains("too large"))
}

/// Decodes one key-value pair as the store holds it: `None` when the key
/// is not UTF-8 (it cannot be stored), `Some((key, None))` when only the
/// value is not (the key is absent from the store, as a snapshot of the same
/// data leaves it). Either is reported once per key and revision.
pub(crate) fn decode(
    key: Vec<u8>,
    value: Vec<u8>,
    mod_revision: i64,
) -> Option<(String, Option<String>)> {
    let key = match String::from_utf8(key) {
        Ok(key) => key,
        Err(e) => {
            report_undecodable("key", &e.into_bytes(), mod_revision);
            return None;
        }
    };
    match String::from_utf8(value) {
        Ok(value) => Some((key, Some(value))),
        Err(_) => {
            report_undecodable("value", key.as_bytes(), mod_revision);
            Some((key, None))
        }
    }
}

/// Logs and counts a key or value that is not UTF-8, once per key and
/// revision however many snapshots and watches see it. The key is escaped,
/// so it cannot forge log lines.
fn report_undecodable(part: &'static str, key: &[u8], mod_revision: i64) {
    let escaped = match std::str::from_utf8(key) {
        Ok(text) => text.escape_debug().to_string(),
        Err(_) => key.escape_ascii().to_string(),
    };
    if !crate::logging::first_time(format!("{part} {escaped} {mod_revision}")) {
        return;
    }
    crate::telemetry::metrics::count_undecodable(part);
    tracing::warn!(
        key = %escaped,
        revision = mod_revision,
        "{part} is not UTF-8; the key is left out of the store, as if absent"
    );
}

/// An endpoint as etcd-client wants it: without a trailing `/`.
fn trim_endpoint(endpoint: &str) -> String {
    endpoint.trim_end_matches('/').to_string()
}

/// A readable one-line description of an etcd-client error, with the
/// gRPC status message rather than its debug dump.
fn describe_error(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut text = format!("{:?}: {}", status.code(), status.message());
            let mut source = std::error::Error::source(status);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text.push_str(": ");
                    text.push_str(&more);
                }
                source = s.source();
            }
            // gRPC status 16 is UNAUTHENTICATED; etcd 3.4 answers bad
            // credentials with InvalidArgument and these messages.
            let auth_failed = i32::from(status.code()) == 16
                || [
                    "authentication failed",
                    "user name is empty",
                    "invalid auth token",
                ]
                .iter()
                .any(|m| status.message().contains(m));
            if auth_failed {
                text.push_str(" (check --username and --password)");
            }
            text
        }
        etcd_client::Error::TransportError(t) => {
            let mut text = t.to_string();
            let mut source = std::error::Error::source(t);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_prefixes_merge_into_the_outermost() {
        let merged = merge_prefixes(&[
            "/app/db".into(),
            "/app".into(),
            "/app/dbx".into(),
            "/other/".into(),
            "/appx".into(),
        ]);
        assert_eq!(merged, ["/app", "/appx", "/other"]);
        assert_eq!(merge_prefixes(&["/a".into(), "/".into()]), ["/"]);
    }

    #[test]
    fn a_prefix_is_read_as_its_key_and_the_range_below_it() {
        let ranges = key_ranges("/app");
        assert_eq!(ranges[0].describe(), "the key /app");
        assert_eq!(
            ranges[1].describe(),
            "the keys under /app/ (range [/app/, /app0))"
        );
        assert_eq!(
            ranges[1].grant(),
            "etcdctl role grant-permission ROLE --prefix read /app/"
        );
        assert_eq!(key_ranges("/").len(), 1);
    }

    #[test]
    fn bytes_that_are_not_utf8_never_reach_the_store() {
        assert_eq!(
            decode(b"/k".to_vec(), b"v".to_vec(), 1),
            Some(("/k".into(), Some("v".into())))
        );
        assert_eq!(
            decode(b"/k".to_vec(), vec![0xff], 2),
            Some(("/k".into(), None))
        );
        assert_eq!(decode(vec![b'/', 0xff], b"v".to_vec(), 3), None);
    }
}
