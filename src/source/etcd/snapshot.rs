//! The snapshot: every key under several prefixes, read at one revision.

use etcd_client::{Client, GetOptions};

use super::{describe_error, merge_prefixes, Etcd, EtcdConfig, MAX_MESSAGE};
use crate::error::SourceError;
use crate::store::{is_under, normalize_key, Store};

impl Etcd {
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
