//! Watches: one stream per merged prefix, each drained by its own task into
//! a channel, resuming from a revision. A stream watches the prefix's whole
//! range, or its exact ranges when etcd refuses that (least privilege). A
//! watch reports progress only for events it delivered or etcd's progress
//! notifications, never for the "watch created" reply, so a reconnect never
//! skips missed events.

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{covering_range, decode, describe_error, key_ranges, Etcd, KeyRange, MAX_MESSAGE};
use crate::error::SourceError;
use crate::store::is_under_bytes;

/// One change from a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: String, value: String },
    Delete { key: String },
}

/// What a watch task reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// Changes under the watched `prefix`, in order. `revision` is the
    /// progress they vouch for: every event of that watch up to it has been
    /// delivered (0: none, as in etcd's "watch created" reply). `header` is
    /// what etcd said about itself in the same response, to notice a
    /// rewritten history.
    Changes {
        prefix: String,
        revision: i64,
        changes: Vec<Change>,
        header: Header,
    },
    /// The watch of `prefix` ended: `compacted` when its start revision is
    /// gone, so only a full resync can catch up.
    Lost {
        prefix: String,
        reason: String,
        compacted: bool,
    },
}

/// etcd's cluster id and current revision, as a response header gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub cluster_id: u64,
    pub revision: i64,
}

impl Header {
    pub(super) fn of(header: Option<&etcd_client::ResponseHeader>) -> Header {
        header
            .map(|h| Header {
                cluster_id: h.cluster_id(),
                revision: h.revision(),
            })
            .unwrap_or_default()
    }
}

impl Etcd {
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
        // One watch over the prefix's whole range, as a user who may read
        // it needs; `drain` narrows it to the prefix's exact ranges if etcd
        // refuses it (a least-privilege grant, see `key_ranges`).
        let range = covering_range(prefix);
        let options = watch_options(&range, start_revision);
        let stream = self
            .request(|c| async move {
                c.watch_client()
                    .max_decoding_message_size(MAX_MESSAGE)
                    .watch(range.key, Some(options))
                    .await
            })
            .await?;
        Ok(tokio::spawn(drain(
            prefix.to_string(),
            start_revision,
            stream,
            generation,
            events,
        )))
    }
}

fn watch_options(range: &KeyRange, start_revision: i64) -> WatchOptions {
    let options = WatchOptions::new()
        .with_start_revision(start_revision)
        .with_progress_notify();
    match &range.end {
        Some(end) => options.with_range(end.as_bytes()),
        None => options,
    }
}

/// One watch of a stream: its range, the id etcd gave it, and the revision
/// up to which every event of it has been delivered.
struct Watched {
    range: KeyRange,
    id: Option<i64>,
    revision: i64,
    refused: bool,
}

impl Watched {
    fn new(range: KeyRange, start_revision: i64) -> Watched {
        Watched {
            range,
            id: None,
            revision: start_revision - 1,
            refused: false,
        }
    }
}

/// Reads a watch stream until it ends, forwarding changes under `prefix`.
/// The stream starts with one watch over the prefix's whole range; if etcd
/// refuses it for want of permission, it carries one watch per range of
/// [`key_ranges`] instead, and each reported revision is then the lowest any
/// live watch has delivered, so resuming from it loses nothing.
async fn drain(
    prefix: String,
    start_revision: i64,
    mut stream: etcd_client::WatchStream,
    generation: u64,
    events: mpsc::UnboundedSender<(u64, WatchEvent)>,
) {
    let mut watched = vec![Watched::new(covering_range(&prefix), start_revision)];
    let mut narrower = (prefix != "/").then(|| key_ranges(&prefix));
    let lost = 'stream: loop {
        match stream.message().await {
            Ok(Some(response)) => {
                if response.created() {
                    // Creations are answered in the order they were sent.
                    let Some(w) = watched.iter_mut().find(|w| w.id.is_none() && !w.refused) else {
                        continue;
                    };
                    if !response.canceled() {
                        w.id = Some(response.watch_id());
                        continue;
                    }
                    // Refused at creation: how etcd answers a missing permission.
                    tracing::debug!(range = %w.range.describe(), reason = %response.cancel_reason(), "etcd refused a watch");
                    w.refused = true;
                    let denied = response
                        .cancel_reason()
                        .to_ascii_lowercase()
                        .contains("permission denied");
                    if let Some(ranges) = narrower.take().filter(|_| denied) {
                        watched = Vec::with_capacity(ranges.len());
                        for range in ranges {
                            let options = watch_options(&range, start_revision);
                            if let Err(e) = stream.watch(range.key.clone(), Some(options)).await {
                                break 'stream WatchEvent::Lost {
                                    prefix: prefix.clone(),
                                    reason: describe_error(&e),
                                    compacted: false,
                                };
                            }
                            watched.push(Watched::new(range, start_revision));
                        }
                        continue;
                    }
                    if watched.iter().all(|w| w.refused) {
                        let what: Vec<String> =
                            watched.iter().map(|w| w.range.describe()).collect();
                        break WatchEvent::Lost {
                            prefix: prefix.clone(),
                            reason: format!(
                                "etcd refused to watch {}: {}",
                                what.join(" and "),
                                response.cancel_reason()
                            ),
                            compacted: false,
                        };
                    }
                    continue;
                }
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
                        // Siblings such as `/app-x` share the whole range.
                        if !is_under_bytes(kv.key(), &prefix) {
                            return None;
                        }
                        // Keys are exact; a non-UTF-8 value makes the key
                        // absent, as a snapshot of the same data does.
                        let (key, value) =
                            decode(kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision())?;
                        Some(match (event.event_type(), value) {
                            (EventType::Put, Some(value)) => Change::Put { key, value },
                            _ => Change::Delete { key },
                        })
                    })
                    .collect();
                // Resume after the last event delivered. Only a response without
                // events (a progress notification, sent to synced watchers) vouches
                // for its header revision: a catching-up watcher's header runs ahead.
                // ("Watch created" replies were handled above: they vouch for nothing.)
                let revision = response
                    .events()
                    .iter()
                    .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
                    .max()
                    .unwrap_or_else(|| response.header().map(|h| h.revision()).unwrap_or(0));
                // A response vouches only for its own watch (etcd 3.4's
                // stream-wide progress reply does not wait for every watch).
                let id = response.watch_id();
                for w in watched.iter_mut().filter(|w| w.id == Some(id)) {
                    w.revision = w.revision.max(revision);
                }
                let revision = watched
                    .iter()
                    .filter(|w| !w.refused)
                    .map(|w| w.revision)
                    .min()
                    .unwrap_or(revision);
                let event = WatchEvent::Changes {
                    prefix: prefix.clone(),
                    revision,
                    changes,
                    header: Header::of(response.header()),
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
