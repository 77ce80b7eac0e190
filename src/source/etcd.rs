//! The etcd v3 source: a consistent snapshot of several prefixes at one
//! revision, and watches that resume from a revision.
//!
//! Watch streams are drained by their own tasks into a channel, never by the
//! render loop: an unread stream makes h2 close the whole connection.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use crate::error::SourceError;
use crate::store::{is_under, normalize_key, Store};

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
}

/// A connected client.
pub struct Etcd {
    client: Client,
    config: EtcdConfig,
}

/// One change from a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: String },
    Delete { key: String },
}

/// What a watch task reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// Changes under the watched `prefix`, in order; every event of that
    /// watch up to `revision` has been delivered (progress notifications
    /// carry no changes, only the revision).
    Changes {
        prefix: String,
        revision: i64,
        changes: Vec<Change>,
    },
    /// The watch of `prefix` ended: `compacted` when its start revision is
    /// gone, so only a full resync can catch up.
    Lost {
        prefix: String,
        reason: String,
        compacted: bool,
    },
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
        let err = |message: String| SourceError::Etcd {
            endpoints: config.describe(),
            message,
        };
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
        let client = connect_checked(&endpoints, options, config.request_timeout)
            .await
            .map_err(err)?;
        Ok(Etcd { client, config })
    }

    fn error(&self, message: String) -> SourceError {
        SourceError::Etcd {
            endpoints: self.config.describe(),
            message,
        }
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

    /// Reads every key at or under `prefixes` at one revision: a first
    /// request fixes the revision, then every prefix is read in pages at it,
    /// several prefixes at a time, so the snapshot is consistent however many
    /// prefixes and keys there are. The store's revision is the snapshot's.
    pub async fn snapshot(&mut self, prefixes: &[String]) -> Result<Store, SourceError> {
        let prefixes = merge_prefixes(prefixes);
        let Some(first) = prefixes.first() else {
            return Ok(Store::new());
        };
        let (start, end) = key_range(first);
        let probe = self
            .request(|mut c| async move {
                c.get(
                    start,
                    Some(GetOptions::new().with_range(end).with_count_only()),
                )
                .await
            })
            .await?;
        let revision = probe.header().map(|h| h.revision()).unwrap_or(0);
        let mut reads = tokio::task::JoinSet::new();
        let mut store = Store::new();
        for (i, prefix) in prefixes.into_iter().enumerate() {
            // A few reads in flight hide round trips without flooding etcd.
            if i >= SNAPSHOT_PARALLEL {
                if let Some(page) = reads.join_next().await {
                    merge_pages(&mut store, page)?;
                }
            }
            let client = self.client.clone();
            let config = self.config.clone();
            reads.spawn(async move { read_prefix(client, &config, prefix, revision).await });
        }
        while let Some(page) = reads.join_next().await {
            merge_pages(&mut store, page)?;
        }
        store.set_revision(revision);
        Ok(store)
    }

    /// Watches `prefix` (a merged prefix) from `start_revision`. The stream
    /// is drained by its own task into `events`, each event tagged with
    /// `generation` so the receiver can drop events of watches it replaced.
    /// The task ends when the stream ends or `events` closes.
    pub async fn watch(
        &mut self,
        prefix: &str,
        start_revision: i64,
        generation: u64,
        events: mpsc::UnboundedSender<(u64, WatchEvent)>,
    ) -> Result<tokio::task::JoinHandle<()>, SourceError> {
        // A plain string prefix; the `/` boundary is filtered in `drain`.
        let key = prefix.to_string();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision)
            .with_progress_notify();
        let stream = self
            .request(|c| async move {
                c.watch_client()
                    .max_decoding_message_size(MAX_MESSAGE)
                    .watch(key, Some(options))
                    .await
            })
            .await?;
        Ok(tokio::spawn(drain(
            prefix.to_string(),
            stream,
            generation,
            events,
        )))
    }
}

/// Reads a watch stream until it ends, forwarding changes under `prefix`.
async fn drain(
    prefix: String,
    mut stream: etcd_client::WatchStream,
    generation: u64,
    events: mpsc::UnboundedSender<(u64, WatchEvent)>,
) {
    let lost = loop {
        match stream.message().await {
            Ok(Some(response)) => {
                if response.canceled() {
                    let compacted = response.compact_revision() > 0;
                    break WatchEvent::Lost {
                        prefix: prefix.clone(),
                        reason: if compacted {
                            format!(
                                "revision compacted (oldest available {})",
                                response.compact_revision()
                            )
                        } else {
                            format!("watch cancelled: {}", response.cancel_reason())
                        },
                        compacted,
                    };
                }
                let changes: Vec<Change> = response
                    .events()
                    .iter()
                    .filter_map(|event| {
                        let kv = event.kv()?;
                        let key = normalize_key(kv.key_str().ok()?);
                        if !is_under(&key, &prefix) {
                            return None;
                        }
                        Some(match event.event_type() {
                            EventType::Put => Change::Put {
                                key,
                                value: kv.value_str().ok()?.to_string(),
                            },
                            EventType::Delete => Change::Delete { key },
                        })
                    })
                    .collect();
                // Resume after the last event delivered. Only a response without
                // events (a progress notification, sent to synced watchers) vouches
                // for its header revision: a catching-up watcher's header runs ahead.
                let revision = response
                    .events()
                    .iter()
                    .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
                    .max()
                    .unwrap_or_else(|| response.header().map(|h| h.revision()).unwrap_or(0));
                let event = WatchEvent::Changes {
                    prefix: prefix.clone(),
                    revision,
                    changes,
                };
                if events.send((generation, event)).is_err() {
                    return;
                }
            }
            Ok(None) => {
                break WatchEvent::Lost {
                    prefix: prefix.clone(),
                    reason: "watch stream closed by the server".into(),
                    compacted: false,
                }
            }
            Err(e) => {
                break WatchEvent::Lost {
                    prefix: prefix.clone(),
                    reason: describe_error(&e),
                    compacted: false,
                }
            }
        }
    };
    let _ = events.send((generation, lost));
}

/// Connects and proves the connection with a cheap read (connecting is
/// lazy), all within `timeout`.
async fn connect_checked(
    endpoints: &[String],
    options: ConnectOptions,
    timeout: Duration,
) -> Result<Client, String> {
    let connect = async {
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| describe_error(&e))?;
        client
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| describe_error(&e))?;
        Ok(client)
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

/// Keys per snapshot page: small enough for etcd to answer quickly, large
/// enough that 100k keys take a hundred round trips.
const SNAPSHOT_PAGE: i64 = 1000;

/// Prefixes read at once during a snapshot.
const SNAPSHOT_PARALLEL: usize = 8;

/// Every key at or under `prefix`, in pages, at `revision`.
async fn read_prefix(
    client: Client,
    config: &EtcdConfig,
    prefix: String,
    revision: i64,
) -> Result<Vec<(String, String)>, SourceError> {
    let err = |message: String| SourceError::Etcd {
        endpoints: config.describe(),
        message,
    };
    let (mut from, end) = key_range(&prefix);
    let mut pairs = Vec::new();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(SNAPSHOT_PAGE)
            .with_revision(revision);
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let page =
            tokio::time::timeout(config.request_timeout, kv.get(from.clone(), Some(options)))
                .await
                .map_err(|_| {
                    err(format!(
                        "request timed out after {:?}",
                        config.request_timeout
                    ))
                })?
                .map_err(|e| err(describe_error(&e)))?;
        for kv in page.kvs() {
            let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "skipping key or value that is not UTF-8");
                continue;
            };
            // The range also holds siblings such as `prefix-x`; not ours.
            if is_under(&normalize_key(key), &prefix) {
                pairs.push((key.to_string(), value.to_string()));
            }
        }
        match (page.more(), page.kvs().last()) {
            (true, Some(last)) => {
                // The next page starts just after the last key read.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(pairs),
        }
    }
}

fn merge_pages(
    store: &mut Store,
    joined: Result<Result<Vec<(String, String)>, SourceError>, tokio::task::JoinError>,
) -> Result<(), SourceError> {
    let pairs = joined.expect("a snapshot read does not panic")?;
    for (key, value) in pairs {
        store.insert(&key, value);
    }
    Ok(())
}

/// The largest gRPC message accepted: a page of big values, or a watch
/// response carrying a large transaction (tonic's default is 4 MiB).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// The key range holding a merged prefix and everything below it:
/// `[prefix, prefix + "0")`, since '0' is the byte after '/'. It also holds
/// siblings such as `prefix-x`, which the reader drops.
fn key_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix == "/" {
        return (b"/".to_vec(), b"0".to_vec());
    }
    (
        prefix.as_bytes().to_vec(),
        format!("{prefix}0").into_bytes(),
    )
}

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
}
