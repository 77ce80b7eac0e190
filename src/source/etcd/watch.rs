//! Watches: one per merged prefix, each drained by its own task into a
//! channel, resuming from a revision. A watch reports progress only for
//! events it delivered or etcd's progress notifications, never for the
//! "watch created" reply, so a reconnect never skips missed events.

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{describe_error, Etcd, MAX_MESSAGE};
use crate::error::SourceError;
use crate::store::{is_under, normalize_key};

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

/// How a watch of a merged prefix is asked for.
fn watch_options(start_revision: i64) -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_start_revision(start_revision)
        .with_progress_notify()
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
        // A plain string prefix; the `/` boundary is filtered in `drain`.
        let key = prefix.to_string();
        let options = watch_options(start_revision);
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

/// The changes of one response that lie under `prefix`.
fn decode(events: &[etcd_client::Event], prefix: &str) -> Vec<Change> {
    events
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            let key = normalize_key(kv.key_str().ok()?);
            if !is_under(&key, prefix) {
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
        .collect()
}

/// The revision a response vouches for: its last event, or the header of
/// a progress notification. etcd's "watch created" reply carries the
/// current revision in its header while the events before it may still be
/// on their way, so it vouches for nothing; nor does a catching-up
/// watcher's header, which runs ahead of its events.
fn progress(response: &etcd_client::WatchResponse) -> i64 {
    let last_event = response
        .events()
        .iter()
        .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
        .max();
    match last_event {
        Some(revision) => revision,
        None if response.created() => 0,
        None => response.header().map(|h| h.revision()).unwrap_or(0),
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
                let event = WatchEvent::Changes {
                    prefix: prefix.clone(),
                    revision: progress(&response),
                    changes: decode(response.events(), &prefix),
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
