//! Watches: one per merged prefix, each drained by its own task into a
//! channel, resuming from a revision.

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
