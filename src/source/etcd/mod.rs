//! The etcd v3 source: a consistent snapshot of several prefixes at one
//! revision, and watches that resume from a revision.
//!
//! Watch streams are drained by their own tasks into a channel, never by the
//! render loop: an unread stream makes h2 close the whole connection.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

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
}

/// A connected client.
pub struct Etcd {
    client: Client,
    config: EtcdConfig,
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
