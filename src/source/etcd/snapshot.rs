//! The snapshot: every key under several prefixes, read at one revision,
//! only through the key ranges the prefixes cover.

use etcd_client::{Client, GetOptions};

use super::{
    decode, describe_error, first_time, is_permission_denied, is_too_large, key_ranges,
    merge_prefixes, Etcd, EtcdConfig, KeyRange, MAX_MESSAGE,
};
use crate::error::SourceError;
use crate::store::Store;

/// Keys in a range's first page. etcd values are at most 1.5 MiB by default
/// (`--max-request-bytes`), so 128 of the largest still fit the 256 MiB
/// message limit, and etcd never builds a huge reply on a guess.
const FIRST_PAGE: i64 = 128;

/// What each later page aims at, sized from the bytes per key seen so far:
/// a sixteenth of the message limit, so keys 16 times larger than those
/// seen still fit. 20,000 keys of 100 bytes take two pages instead of 20.
const PAGE_BYTES: usize = 16 * 1024 * 1024;

/// What etcd adds to each key and value in a reply (revisions, version,
/// lease, framing), for page sizing.
const KV_OVERHEAD: usize = 32;

/// Ranges read at once: each read is mostly a wait on etcd.
const SNAPSHOT_PARALLEL: usize = 16;

/// The outcome of reading one range.
enum Read {
    Pairs(Vec<(String, String)>),
    /// etcd refused it for want of read permission.
    Refused,
}

impl Etcd {
    /// Reads every key at or under `prefixes` at one revision. A Status call
    /// (which reads no key; at start-up, the connection probe's) fixes the
    /// revision; then every merged prefix is
    /// read as its [`key_ranges`], all ranges concurrently, each in pages
    /// sized by bytes, so the snapshot is consistent however many prefixes
    /// and keys there are. The store's revision is the snapshot's.
    ///
    /// Least privilege: a range etcd refuses (no read permission) is absent
    /// when the other range of its prefix may be read, and noted once; a
    /// prefix none of whose ranges may be read is an error naming them and
    /// the grant that would allow them.
    pub async fn snapshot(&mut self, prefixes: &[String]) -> Result<Store, SourceError> {
        let prefixes = merge_prefixes(prefixes);
        if prefixes.is_empty() {
            return Ok(Store::new());
        }
        // The connection probe's revision serves the first snapshot; later
        // ones (resyncs) ask again.
        let revision = match self.probed.take().filter(|&r| r > 0) {
            Some(revision) => revision,
            None => {
                let status = self
                    .request(|mut c| async move { c.status().await })
                    .await?;
                status
                    .header()
                    .map(|h| h.revision())
                    .ok_or_else(|| self.error("a Status reply without a header".into()))?
            }
        };
        let ranges: Vec<(usize, KeyRange)> = prefixes
            .iter()
            .enumerate()
            .flat_map(|(i, p)| key_ranges(p).into_iter().map(move |r| (i, r)))
            .collect();
        let mut outcomes: Vec<Option<Read>> = ranges.iter().map(|_| None).collect();
        let mut reads = tokio::task::JoinSet::new();
        let mut queue = ranges.iter().enumerate();
        loop {
            while reads.len() < SNAPSHOT_PARALLEL {
                let Some((slot, (_, range))) = queue.next() else {
                    break;
                };
                let (client, config, range) =
                    (self.client.clone(), self.config.clone(), range.clone());
                reads.spawn(
                    async move { (slot, read_range(client, &config, &range, revision).await) },
                );
            }
            let Some(joined) = reads.join_next().await else {
                break;
            };
            let (slot, read) = joined.expect("a snapshot read does not panic");
            outcomes[slot] = Some(read?);
        }
        let mut pairs = Vec::new();
        let mut newly_refused = Vec::new();
        for (i, prefix) in prefixes.iter().enumerate() {
            let mine: Vec<(&KeyRange, Read)> = ranges
                .iter()
                .zip(outcomes.iter_mut())
                .filter(|((p, _), _)| *p == i)
                .map(|((_, r), o)| (r, o.take().expect("every range was read")))
                .collect();
            if mine.iter().all(|(_, read)| matches!(read, Read::Refused)) {
                let refused: Vec<&KeyRange> = mine.iter().map(|(r, _)| *r).collect();
                return Err(self.error(refused_message(&self.config, prefix, &refused)));
            }
            for (range, read) in mine {
                match read {
                    Read::Pairs(mut found) => pairs.append(&mut found),
                    Read::Refused if first_time(format!("refused {}", range.describe())) => {
                        newly_refused.push(range.describe())
                    }
                    Read::Refused => {}
                }
            }
        }
        if !newly_refused.is_empty() {
            // Normal under least privilege (a grant on `/app/` leaves out the
            // key `/app`), so one line, once; a template that needs such a
            // key fails with "not found", and this line says why.
            tracing::info!(
                ranges = %newly_refused.join("; "),
                "etcd refuses this user read on part of the resources' keys; treating it as absent"
            );
        }
        Ok(Store::from_entries(pairs, revision))
    }
}

/// Why nothing of `prefix` may be read, and the grants that would allow it.
fn refused_message(config: &EtcdConfig, prefix: &str, refused: &[&KeyRange]) -> String {
    let user = config
        .username
        .as_deref()
        .map_or("confera (no --username)".to_string(), |u| {
            format!("user `{u}`")
        });
    let what: Vec<String> = refused.iter().map(|r| r.describe()).collect();
    let grants: Vec<String> = refused.iter().map(|r| format!("`{}`", r.grant())).collect();
    let what = match what.as_slice() {
        [one] => format!("may not read {one}"),
        many => format!("may read neither {}", many.join(" nor ")),
    };
    format!(
        "permission denied: {user} {what}, which the resources' key {prefix} covers; grant read permission with {}",
        grants.join(" or ")
    )
}

/// Every key of `range` at `revision`, in pages: the first of
/// [`FIRST_PAGE`] keys, the next sized by bytes ([`PAGE_BYTES`]); a page the
/// client would refuse as too large is asked for again at half the size.
async fn read_range(
    client: Client,
    config: &EtcdConfig,
    range: &KeyRange,
    revision: i64,
) -> Result<Read, SourceError> {
    let err = |message: String| SourceError::Etcd {
        endpoints: config.describe(),
        message,
    };
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut from = range.key.as_bytes().to_vec();
    let mut limit = FIRST_PAGE;
    let (mut keys_seen, mut bytes_seen) = (0usize, 0usize);
    let mut pairs = Vec::new();
    loop {
        let mut options = GetOptions::new().with_limit(limit).with_revision(revision);
        if let Some(end) = &range.end {
            options = options.with_range(end.as_bytes());
        }
        let reply =
            tokio::time::timeout(config.request_timeout, kv.get(from.clone(), Some(options)))
                .await
                .map_err(|_| {
                    err(format!(
                        "reading {}: request timed out after {:?}",
                        range.describe(),
                        config.request_timeout
                    ))
                })?;
        let mut page = match reply {
            Ok(page) => page,
            Err(e) if is_permission_denied(&e) => return Ok(Read::Refused),
            Err(e) if is_too_large(&e) && limit > 1 => {
                limit = (limit / 2).max(1);
                continue;
            }
            Err(e) => {
                return Err(err(format!(
                    "reading {}: {}",
                    range.describe(),
                    describe_error(&e)
                )))
            }
        };
        let more = page.more();
        let kvs = page.take_kvs();
        let next = kvs.last().map(|last| {
            // The next page starts just after the last key read.
            let mut key = last.key().to_vec();
            key.push(0);
            key
        });
        for kv in kvs {
            keys_seen += 1;
            bytes_seen += kv.key().len() + kv.value().len() + KV_OVERHEAD;
            let mod_revision = kv.mod_revision();
            let (key, value) = kv.into_key_value();
            if let Some((key, Some(value))) = decode(key, value, mod_revision) {
                pairs.push((key, value));
            }
        }
        match (more, next) {
            (true, Some(next)) => {
                from = next;
                let per_key = bytes_seen.div_ceil(keys_seen.max(1)).max(1);
                limit = i64::try_from(PAGE_BYTES / per_key)
                    .unwrap_or(i64::MAX)
                    .max(1);
            }
            _ => return Ok(Read::Pairs(pairs)),
        }
    }
}
