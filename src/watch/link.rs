//! The etcd link: connecting, the first and repair snapshots, one watch per
//! merged prefix resumed from the last revision applied, reconnects with
//! backoff, and the history checks.
//!
//! A history is rewritten when etcd's cluster id changes or its revision
//! goes below the last one applied (a wiped etcd, a restore from backup).
//! Either takes a fresh snapshot that replaces the store under every
//! watched prefix. It never touches the store or renders: it tells the
//! loop what to apply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::SourceError;
use crate::source::etcd::{merge_prefixes, Change, Etcd, EtcdConfig, Header, WatchEvent};
use crate::store::Store;
use crate::telemetry::status::HistoryChange;
use crate::watch::debounce::{after, Backoff};

enum State {
    Down {
        attempt: u32,
        retry_at: Instant,
    },
    /// The client is held so its connection outlives the watch tasks using it.
    Up {
        _client: Box<Etcd>,
        tasks: Vec<JoinHandle<()>>,
    },
}

/// What a connect brought.
pub struct Connected {
    /// A fresh snapshot to replace the store under `prefixes`, when one was
    /// taken (start-up, resync, compaction, history change).
    pub snapshot: Option<(Vec<String>, Store)>,
    /// A history change this connect found (not one a watch reported).
    pub history: Option<HistoryChange>,
    /// The snapshot repairs a history change (found now or by a watch).
    pub repaired: bool,
}

/// What a watch event means for the loop.
pub enum Delivery {
    /// An event of a watch already replaced: ignore it.
    Stale,
    /// Apply these changes, which bring the store to `revision`.
    Apply { changes: Vec<Change>, revision: i64 },
    /// The history was rewritten: the link is being restarted with a fresh
    /// snapshot; the changes of this response were not applied.
    HistoryChanged(HistoryChange),
    /// A watch was lost; the link reconnects.
    Lost { reason: String, compacted: bool },
}

pub struct Link {
    config: EtcdConfig,
    state: State,
    /// Bumped whenever the watches are replaced, so queued events of the
    /// old ones are void: their revisions were not recorded, so the new
    /// watches deliver them again.
    generation: u64,
    /// Per merged prefix, the last revision applied from its watch.
    revisions: HashMap<String, i64>,
    need_snapshot: bool,
    /// The cluster the store reflects (0: not known yet).
    cluster: u64,
    /// A history change found by a watch, reported at the next connect.
    pending_history: Option<HistoryChange>,
    backoff: Backoff,
    tx: mpsc::UnboundedSender<(u64, WatchEvent)>,
}

impl Link {
    /// A link that connects at once; events arrive on the receiver.
    pub fn new(config: EtcdConfig) -> (Link, mpsc::UnboundedReceiver<(u64, WatchEvent)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Link {
            config,
            state: State::Down {
                attempt: 0,
                retry_at: Instant::now(),
            },
            generation: 0,
            revisions: HashMap::new(),
            need_snapshot: true,
            cluster: 0,
            pending_history: None,
            backoff: Backoff::default(),
            tx,
        };
        (link, rx)
    }

    pub fn set_config(&mut self, config: EtcdConfig) {
        self.config = config;
    }

    /// When to try connecting, while down.
    pub fn retry_at(&self) -> Option<Instant> {
        match &self.state {
            State::Down { retry_at, .. } => Some(*retry_at),
            State::Up { .. } => None,
        }
    }

    /// Connects, checks etcd's history against what the store reflects
    /// (`applied`: the store's revision), takes a snapshot when one is
    /// needed, and starts the watches. On failure the link stays down and
    /// retries after a backoff; the error is returned for reporting.
    pub async fn connect(
        &mut self,
        prefixes: &[String],
        applied: i64,
    ) -> Result<Connected, (SourceError, Duration)> {
        let attempt = match &self.state {
            State::Down { attempt, .. } => *attempt,
            State::Up { .. } => {
                return Ok(Connected {
                    snapshot: None,
                    history: None,
                    repaired: false,
                })
            }
        };
        match self.try_connect(prefixes, applied).await {
            Ok((etcd, tasks, connected)) => {
                self.state = State::Up {
                    _client: Box::new(etcd),
                    tasks,
                };
                Ok(connected)
            }
            Err(e) => {
                let delay = self.backoff.next(attempt + 1);
                self.state = State::Down {
                    attempt: attempt + 1,
                    retry_at: after(Instant::now(), delay),
                };
                Err((e, delay))
            }
        }
    }

    async fn try_connect(
        &mut self,
        prefixes: &[String],
        applied: i64,
    ) -> Result<(Etcd, Vec<JoinHandle<()>>, Connected), SourceError> {
        let mut etcd = Etcd::connect(self.config.clone()).await?;
        let prefixes = merge_prefixes(prefixes);
        let header = etcd.header().await?;
        let pending = self.pending_history.take();
        let history = match &pending {
            Some(_) => None,
            None => self.check(header, applied, "on reconnect"),
        };
        if history.is_some() {
            self.need_snapshot = true;
        }
        let mut snapshot = None;
        if self.need_snapshot {
            let fresh = etcd.snapshot(&prefixes).await.inspect_err(|_| {
                // Still to repair at the next attempt.
                self.pending_history = pending.clone().or(history.clone());
            })?;
            let revision = fresh.revision();
            self.revisions = prefixes.iter().map(|p| (p.clone(), revision)).collect();
            self.cluster = header.cluster_id;
            self.need_snapshot = false;
            snapshot = Some((prefixes.clone(), fresh));
        }
        self.generation += 1;
        let mut tasks = Vec::with_capacity(prefixes.len());
        for prefix in &prefixes {
            let from = self.revisions.get(prefix).copied().unwrap_or(applied) + 1;
            match etcd
                .watch(prefix, from, self.generation, self.tx.clone())
                .await
            {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    tasks.iter().for_each(JoinHandle::abort);
                    return Err(e);
                }
            }
        }
        let repaired = snapshot.is_some() && (pending.is_some() || history.is_some());
        Ok((
            etcd,
            tasks,
            Connected {
                snapshot,
                history,
                repaired,
            },
        ))
    }

    /// A history change, when `header` shows another cluster or a revision
    /// below `applied`.
    fn check(&self, header: Header, applied: i64, when: &str) -> Option<HistoryChange> {
        let new_cluster =
            self.cluster != 0 && header.cluster_id != 0 && header.cluster_id != self.cluster;
        let went_back = header.revision != 0 && header.revision < applied;
        if !new_cluster && !went_back {
            return None;
        }
        let reason = if new_cluster {
            format!(
                "etcd cluster changed from {:x} to {:x} {when} (revision {applied} -> {})",
                self.cluster, header.cluster_id, header.revision
            )
        } else {
            format!(
                "etcd revision went back from {applied} to {} {when} (cluster {:x})",
                header.revision, header.cluster_id
            )
        };
        Some(HistoryChange {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            reason,
            old_revision: applied,
            new_revision: header.revision,
            old_cluster: self.cluster,
            new_cluster: header.cluster_id,
        })
    }

    /// Interprets one watch event; `applied` is the store's revision.
    pub fn deliver(&mut self, generation: u64, event: WatchEvent, applied: i64) -> Delivery {
        if generation != self.generation {
            return Delivery::Stale;
        }
        match event {
            WatchEvent::Changes {
                prefix,
                revision,
                changes,
                header,
            } => {
                if let Some(change) = self.check(header, applied, "in a watch response") {
                    self.need_snapshot = true;
                    self.pending_history = Some(change.clone());
                    self.restart(0);
                    return Delivery::HistoryChanged(change);
                }
                if self.cluster == 0 {
                    self.cluster = header.cluster_id;
                }
                let seen = self.revisions.entry(prefix).or_insert(0);
                *seen = (*seen).max(revision);
                Delivery::Apply { changes, revision }
            }
            WatchEvent::Lost {
                reason, compacted, ..
            } => {
                if compacted {
                    self.need_snapshot = true;
                    self.restart(0);
                } else {
                    self.restart(1);
                }
                Delivery::Lost { reason, compacted }
            }
        }
    }

    /// A full re-read: reconnect at once with a fresh snapshot.
    pub fn resync(&mut self) {
        self.need_snapshot = true;
        self.restart(0);
    }

    /// Drops the connection and reconnects after the backoff of `attempt`.
    fn restart(&mut self, attempt: u32) {
        self.stop();
        self.generation += 1;
        let delay = if attempt == 0 {
            Duration::ZERO
        } else {
            self.backoff.next(attempt)
        };
        self.state = State::Down {
            attempt,
            retry_at: after(Instant::now(), delay),
        };
    }

    pub fn stop(&mut self) {
        if let State::Up { tasks, .. } = &self.state {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link::new(EtcdConfig::new(vec!["http://127.0.0.1:1".into()])).0
    }

    fn changes(revision: i64, header: Header) -> WatchEvent {
        WatchEvent::Changes {
            prefix: "/app".into(),
            revision,
            changes: vec![],
            header,
        }
    }

    #[test]
    fn a_header_revision_below_the_applied_one_is_a_history_change() {
        let mut link = link();
        link.cluster = 7;
        let header = Header {
            cluster_id: 7,
            revision: 2,
        };
        match link.deliver(0, changes(0, header), 42) {
            Delivery::HistoryChanged(change) => {
                assert_eq!((change.old_revision, change.new_revision), (42, 2));
                assert!(change.reason.contains("from 42 to 2"), "{}", change.reason);
            }
            _ => panic!("not a history change"),
        }
        assert!(link.need_snapshot);
        assert!(link.retry_at().is_some());
    }

    #[test]
    fn another_cluster_id_is_a_history_change() {
        let mut link = link();
        link.cluster = 7;
        let header = Header {
            cluster_id: 8,
            revision: 50,
        };
        assert!(matches!(
            link.deliver(0, changes(50, header), 42),
            Delivery::HistoryChanged(_)
        ));
    }

    #[test]
    fn events_of_a_replaced_watch_are_stale() {
        let mut link = link();
        link.resync();
        assert!(matches!(
            link.deliver(0, changes(5, Header::default()), 1),
            Delivery::Stale
        ));
    }

    #[test]
    fn a_reply_vouching_for_nothing_records_no_progress() {
        let mut link = link();
        let header = Header {
            cluster_id: 7,
            revision: 99,
        };
        assert!(matches!(
            link.deliver(0, changes(0, header), 10),
            Delivery::Apply { revision: 0, .. }
        ));
        assert_eq!(link.revisions["/app"], 0);
    }
}
