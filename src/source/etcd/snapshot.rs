//! The snapshot: every key under several prefixes, read at one revision,
//! through ranges a least-privilege user may be granted.

use std::collections::VecDeque;
use std::sync::Arc;

use etcd_client::{Client, GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};

use super::{
    covering_range, decode, describe_error, is_permission_denied, is_too_large, key_ranges,
    merge_prefixes, Etcd, EtcdConfig, KeyRange, MAX_MESSAGE,
};
use crate::error::SourceError;
use crate::logging::first_time;
use crate::store::{is_under_bytes, Store};

/// Keys in a range's first page: enough that nearly every prefix takes one
/// request. etcd 3.4 walks its index over the whole rest of the range for
/// every page, whatever the page's limit, so at 20,000 keys one request
/// instead of a page of 4,096 and then the rest saves ~2 ms of a ~55 ms
/// one-shot. A first page of very large values (over 8 KiB each on average)
/// exceeds the 256 MiB message limit and is asked for again at half the
/// size.
const FIRST_PAGE: i64 = 32768;

/// What each later page aims at, sized from the bytes per key seen so far:
/// a sixteenth of the message limit, so keys 16 times larger than those
/// seen still fit. 20,000 keys of 100 bytes take two pages instead of 20.
const PAGE_BYTES: usize = 16 * 1024 * 1024;

/// What etcd adds to each key and value in a reply (revisions, version,
/// lease, framing), for page sizing.
const KV_OVERHEAD: usize = 32;

/// First pages asked for in one read-only transaction: half etcd's default
/// `--max-txn-ops` (128). 100 prefixes take two requests instead of 100.
const TXN_RANGES: usize = 64;

/// Keys in a first page asked for in a transaction: a reply holds many, and
/// the client copies it once more to hand the pages out, so keep it to
/// about 16,000 keys; a larger prefix continues in pages of its own.
const TXN_FIRST_PAGE: i64 = 250;

/// Requests in flight at once: each is mostly a wait on etcd.
const SNAPSHOT_PARALLEL: usize = 16;

/// A read in progress: a range of prefix number `owner`, where its next
/// page starts and how many keys it may hold. `whole` when the range is the
/// prefix's whole range `[prefix, prefix0)`, whose siblings are dropped and
/// which is narrowed to the exact ranges if etcd refuses it.
struct Cursor {
    owner: usize,
    range: KeyRange,
    whole: bool,
    from: Vec<u8>,
    limit: i64,
    keys_seen: usize,
    bytes_seen: usize,
}

impl Cursor {
    fn new(owner: usize, range: KeyRange, whole: bool) -> Cursor {
        Cursor {
            owner,
            from: range.key.as_bytes().to_vec(),
            range,
            whole,
            limit: FIRST_PAGE,
            keys_seen: 0,
            bytes_seen: 0,
        }
    }

    fn options(&self, revision: i64) -> GetOptions {
        let options = GetOptions::new()
            .with_limit(self.limit)
            .with_revision(revision);
        match &self.range.end {
            Some(end) => options.with_range(end.as_bytes()),
            None => options,
        }
    }

    /// Takes one page's pairs into `pairs` (the prefix's own keys only, at
    /// or under `prefix`); the cursor for the next page, if there is one.
    fn absorb(
        mut self,
        mut page: GetResponse,
        prefix: &str,
        pairs: &mut Vec<(String, String)>,
    ) -> Option<Cursor> {
        let more = page.more();
        let kvs = page.take_kvs();
        let next = kvs.last().map(|last| {
            // The next page starts just after the last key read.
            let mut key = last.key().to_vec();
            key.push(0);
            key
        });
        pairs.reserve(kvs.len());
        for kv in kvs {
            self.keys_seen += 1;
            self.bytes_seen += kv.key().len() + kv.value().len() + KV_OVERHEAD;
            // Siblings (`/app-x` in `/app`'s whole range) are not ours, and
            // are dropped before they are decoded or reported.
            if self.whole && !is_under_bytes(kv.key(), prefix) {
                continue;
            }
            let mod_revision = kv.mod_revision();
            let (key, value) = kv.into_key_value();
            if let Some((key, Some(value))) = decode(key, value, mod_revision) {
                pairs.push((key, value));
            }
        }
        let next = next.filter(|_| more)?;
        let per_key = self.bytes_seen.div_ceil(self.keys_seen.max(1)).max(1);
        self.limit = i64::try_from(PAGE_BYTES / per_key)
            .unwrap_or(i64::MAX)
            .max(1);
        self.from = next;
        Some(self)
    }
}

/// What a request of a snapshot gives back.
enum Read {
    /// One cursor read to its end.
    Done,
    /// One cursor that etcd refused for want of read permission.
    Refused(Cursor),
    /// A transaction's first pages: the cursors that have more to read.
    Continue(Vec<Cursor>),
    /// A transaction etcd or the client would not take (a range refused,
    /// too many ranges, a reply too large): read its cursors one by one.
    Unbatched(Vec<Cursor>),
}

impl Etcd {
    /// Reads every key at or under `prefixes` at one revision. A Status call
    /// (which reads no key; at start-up, the connection probe's) fixes the
    /// revision; then every merged prefix is read as its whole range
    /// (siblings dropped): the first pages of many prefixes in read-only
    /// transactions, the rest of each range in pages sized by bytes, several
    /// requests at once, so the snapshot is consistent however many
    /// prefixes and keys there are. The store's revision is the snapshot's.
    ///
    /// Least privilege: if etcd refuses a prefix's whole range, its exact
    /// [`key_ranges`] are read instead; one of them refused is absent (noted
    /// once), both refused is an error naming them and the grant that would
    /// allow them.
    pub async fn snapshot(&mut self, prefixes: &[String]) -> Result<Store, SourceError> {
        let prefixes: Arc<[String]> = merge_prefixes(prefixes).into();
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
        let batched = prefixes.len() > 1;
        let cursors = prefixes.iter().enumerate().map(|(owner, prefix)| {
            let mut cursor = Cursor::new(owner, covering_range(prefix), prefix != "/");
            if batched {
                cursor.limit = TXN_FIRST_PAGE;
            }
            cursor
        });
        // Requests to send: batches of first pages, then single cursors.
        let mut batches: VecDeque<Vec<Cursor>> = VecDeque::new();
        let mut singles: VecDeque<Cursor> = VecDeque::new();
        if !batched {
            singles.extend(cursors);
        } else {
            let mut cursors = cursors.peekable();
            while cursors.peek().is_some() {
                batches.push_back(cursors.by_ref().take(TXN_RANGES).collect());
            }
        }
        let mut refused: Vec<Vec<KeyRange>> = vec![Vec::new(); prefixes.len()];
        let mut pairs = Vec::new();
        let mut reads = tokio::task::JoinSet::new();
        loop {
            while reads.len() < SNAPSHOT_PARALLEL {
                let (client, config) = (self.client.clone(), self.config.clone());
                let owners = Arc::clone(&prefixes);
                if let Some(batch) = batches.pop_front() {
                    reads.spawn(async move {
                        read_first_pages(client, &config, batch, &owners, revision).await
                    });
                } else if let Some(cursor) = singles.pop_front() {
                    reads.spawn(async move {
                        let prefix = &owners[cursor.owner];
                        read_cursor(client, &config, cursor, prefix, revision).await
                    });
                } else {
                    break;
                }
            }
            let Some(joined) = reads.join_next().await else {
                break;
            };
            let (found, read) = joined.expect("a snapshot read does not panic")?;
            pairs.extend(found);
            match read {
                Read::Done => {}
                Read::Continue(cursors) | Read::Unbatched(cursors) => singles.extend(cursors),
                Read::Refused(cursor) if cursor.whole => {
                    let ranges = key_ranges(&prefixes[cursor.owner]);
                    singles.extend(
                        ranges
                            .into_iter()
                            .map(|range| Cursor::new(cursor.owner, range, false)),
                    );
                }
                Read::Refused(cursor) => refused[cursor.owner].push(cursor.range),
            }
        }
        let mut newly_refused = Vec::new();
        for (prefix, refused) in prefixes.iter().zip(&mut refused) {
            refused.sort_by(|a, b| a.key.cmp(&b.key));
            if refused.len() == key_ranges(prefix).len() {
                let refused: Vec<&KeyRange> = refused.iter().collect();
                return Err(self.error(refused_message(&self.config, prefix, &refused)));
            }
            for range in refused.iter() {
                if first_time(format!("refused {}", range.describe())) {
                    newly_refused.push(range.describe());
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

/// The first pages of `cursors` in one read-only transaction (one
/// consistent reply, one round trip). Whatever etcd or the client will not
/// take as a batch comes back `Unbatched`, to be read one by one.
async fn read_first_pages(
    client: Client,
    config: &EtcdConfig,
    cursors: Vec<Cursor>,
    prefixes: &[String],
    revision: i64,
) -> Result<(Vec<(String, String)>, Read), SourceError> {
    let ops: Vec<TxnOp> = cursors
        .iter()
        .map(|c| TxnOp::get(c.from.clone(), Some(c.options(revision))))
        .collect();
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let reply = tokio::time::timeout(config.request_timeout, kv.txn(Txn::new().and_then(ops)))
        .await
        .map_err(|_| {
            config.error(format!(
                "reading {} prefixes: request timed out after {:?}",
                cursors.len(),
                config.request_timeout
            ))
        })?;
    let reply = match reply {
        Ok(reply) => reply,
        // A refused range, etcd's --max-txn-ops set low, a reply too large.
        Err(e)
            if is_permission_denied(&e)
                || is_too_large(&e)
                || e.to_string().contains("too many operations") =>
        {
            return Ok((Vec::new(), Read::Unbatched(cursors)))
        }
        Err(e) => {
            return Err(config.error(format!(
                "reading {} prefixes: {}",
                cursors.len(),
                describe_error(&e)
            )))
        }
    };
    let pages = reply.op_responses();
    if pages.len() != cursors.len() {
        return Ok((Vec::new(), Read::Unbatched(cursors)));
    }
    let mut pairs = Vec::new();
    let mut more = Vec::new();
    for (cursor, page) in cursors.into_iter().zip(pages) {
        let TxnOpResponse::Get(page) = page else {
            unreachable!("a transaction of gets answers with gets")
        };
        let prefix = &prefixes[cursor.owner];
        more.extend(cursor.absorb(page, prefix, &mut pairs));
    }
    Ok((pairs, Read::Continue(more)))
}

/// Every key of `cursor`'s range from where it stands, at `revision`, page
/// by page; a page the client would refuse as too large is asked for again
/// at half the size.
async fn read_cursor(
    client: Client,
    config: &EtcdConfig,
    mut cursor: Cursor,
    prefix: &str,
    revision: i64,
) -> Result<(Vec<(String, String)>, Read), SourceError> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut pairs = Vec::new();
    loop {
        let request = kv.get(cursor.from.clone(), Some(cursor.options(revision)));
        let reply = tokio::time::timeout(config.request_timeout, request)
            .await
            .map_err(|_| {
                config.error(format!(
                    "reading {}: request timed out after {:?}",
                    cursor.range.describe(),
                    config.request_timeout
                ))
            })?;
        let page = match reply {
            Ok(page) => page,
            Err(e) if is_permission_denied(&e) => return Ok((pairs, Read::Refused(cursor))),
            Err(e) if is_too_large(&e) && cursor.limit > 1 => {
                cursor.limit = (cursor.limit / 2).max(1);
                continue;
            }
            Err(e) => {
                return Err(config.error(format!(
                    "reading {}: {}",
                    cursor.range.describe(),
                    describe_error(&e)
                )))
            }
        };
        match cursor.absorb(page, prefix, &mut pairs) {
            Some(next) => cursor = next,
            None => return Ok((pairs, Read::Done)),
        }
    }
}
