//! Resource workers: each due resource's pipeline (render, compare, stage,
//! check, commit) runs as a task of its own, and each reload as another, so
//! a slow or stuck resource only delays itself. Resources of one batch that
//! reload the same daemon still share one reload, run once all of them are
//! done; two reloads of the same daemon never run at once (a later one
//! waits, merged with any other that queues behind it).
//!
//! It never decides when to run (the scheduler does) and never touches the
//! store. On shutdown every task is aborted: a commit in flight completes
//! (commits hold no await), commands die with their process group, staging
//! directories are removed as their `Stage` drops.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{Id, JoinSet};
use tracing::Instrument;

use crate::error::{ReloadFailure, UnitError};
use crate::pipeline::{Outcome, Pipeline, ReloadKey};
use crate::resource::Unit;
use crate::store::Store;

/// What a finished task reports.
#[derive(Debug)]
pub enum Done {
    Unit {
        name: String,
        /// The store revision the unit was rendered from.
        revision: i64,
        result: Result<Outcome, UnitError>,
    },
    Reload {
        key: ReloadKey,
        units: Vec<String>,
        attempt: u32,
        result: Result<(), ReloadFailure>,
    },
}

/// The units of one batch that share a reload.
struct Group {
    key: ReloadKey,
    waiting: HashSet<String>,
    changed: Vec<String>,
}

/// A reload ready to run: its key, the units that want it, the attempt.
pub type ReloadJob = (ReloadKey, Vec<String>, u32);

#[derive(Default)]
pub struct Workers {
    tasks: JoinSet<Done>,
    /// What each task is, so a panicked one is still reported.
    ids: HashMap<Id, Task>,
    /// Units whose pipeline runs, since when.
    running: HashMap<String, Instant>,
    groups: Vec<Group>,
    reloading: HashSet<ReloadKey>,
    queued: Vec<ReloadJob>,
}

enum Task {
    Unit(String, i64),
    Reload(ReloadJob),
}

impl Workers {
    pub fn is_busy(&self, unit: &str) -> bool {
        self.running.contains_key(unit)
    }

    /// Whether a reload with this key runs now.
    pub fn is_reloading(&self, key: &ReloadKey) -> bool {
        self.reloading.contains(key)
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts the pipeline of each of `units` on `store`. Units reloading
    /// the same daemon form one group whose reload runs when all are done.
    pub fn start(&mut self, units: Vec<Unit>, pipeline: &Pipeline, store: &Arc<Store>) {
        let mut batch: Vec<Group> = Vec::new();
        for unit in &units {
            let Some(key) = ReloadKey::of(unit).filter(|_| pipeline.reloads()) else {
                continue;
            };
            match batch.iter_mut().find(|g| g.key == key) {
                Some(group) => {
                    group.waiting.insert(unit.name.clone());
                }
                None => batch.push(Group {
                    key,
                    waiting: HashSet::from([unit.name.clone()]),
                    changed: Vec::new(),
                }),
            }
        }
        self.groups.extend(batch);
        for unit in units {
            let name = unit.name.clone();
            let revision = store.revision();
            let (pipeline, store) = (pipeline.clone(), store.clone());
            let span = tracing::info_span!("resource", resource = %name);
            let task = async move {
                let result = pipeline.process(&unit, &store).await;
                Done::Unit {
                    name: unit.name,
                    revision,
                    result,
                }
            };
            let handle = self.tasks.spawn(task.instrument(span));
            self.ids
                .insert(handle.id(), Task::Unit(name.clone(), revision));
            self.running.insert(name, Instant::now());
        }
    }

    /// Records that `name`'s pipeline ended; returns the reload its group
    /// can now run, if every member is done and one of them changed.
    pub fn unit_done(&mut self, name: &str, needs_reload: bool) -> Option<ReloadJob> {
        self.running.remove(name);
        let index = self.groups.iter().position(|g| g.waiting.contains(name))?;
        let group = &mut self.groups[index];
        group.waiting.remove(name);
        if needs_reload {
            group.changed.push(name.to_owned());
        }
        if !group.waiting.is_empty() {
            return None;
        }
        let group = self.groups.swap_remove(index);
        (!group.changed.is_empty()).then_some((group.key, group.changed, 1))
    }

    /// Runs a reload, unless one of the same daemon runs: then it waits,
    /// merged with any other already waiting.
    pub fn reload(&mut self, job: ReloadJob, pipeline: &Pipeline) {
        let (key, units, attempt) = job;
        if self.reloading.contains(&key) {
            match self.queued.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, queued, queued_attempt)) => {
                    queued.extend(units);
                    queued.sort();
                    queued.dedup();
                    *queued_attempt = (*queued_attempt).min(attempt);
                }
                None => self.queued.push((key, units, attempt)),
            }
            return;
        }
        self.reloading.insert(key.clone());
        let pipeline = pipeline.clone();
        let job = (key.clone(), units.clone(), attempt);
        let handle = self.tasks.spawn(async move {
            let result = pipeline.reload(&key, &units).await;
            Done::Reload {
                key,
                units,
                attempt,
                result,
            }
        });
        self.ids.insert(handle.id(), Task::Reload(job));
    }

    /// No reload runs or waits behind another.
    pub fn reloads_idle(&self) -> bool {
        self.reloading.is_empty() && self.queued.is_empty()
    }

    /// Records that a reload ended; returns one that waited behind it.
    pub fn reload_done(&mut self, key: &ReloadKey) -> Option<ReloadJob> {
        self.reloading.remove(key);
        let index = self.queued.iter().position(|(k, _, _)| k == key)?;
        Some(self.queued.swap_remove(index))
    }

    /// The next finished task. A task that panicked is reported as a
    /// failure of what it ran. Pending forever while nothing runs.
    pub async fn next(&mut self) -> Done {
        loop {
            match self.tasks.join_next_with_id().await {
                None => std::future::pending::<()>().await,
                Some(Ok((id, done))) => {
                    self.ids.remove(&id);
                    return done;
                }
                Some(Err(e)) => {
                    let Some(task) = self.ids.remove(&e.id()) else {
                        continue;
                    };
                    tracing::error!(error = %e, "a worker task panicked");
                    return match task {
                        Task::Unit(name, revision) => Done::Unit {
                            result: Err(UnitError::Render {
                                template: name.clone(),
                                line: None,
                                message: format!("the worker panicked: {e}"),
                            }),
                            name,
                            revision,
                        },
                        Task::Reload((key, units, attempt)) => Done::Reload {
                            key,
                            units,
                            attempt,
                            result: Err(ReloadFailure::Command(
                                crate::command::CommandError::Failed {
                                    command: "reload".into(),
                                    status: "panicked".into(),
                                    stderr: e.to_string(),
                                },
                            )),
                        },
                    };
                }
            }
        }
    }

    /// The reloads that had not run when shutdown began: waiting behind
    /// another, or of a group not yet complete. Owed after a restart.
    pub fn unfinished_reloads(&self) -> Vec<ReloadJob> {
        let mut jobs: Vec<ReloadJob> = self.queued.clone();
        for group in &self.groups {
            if !group.changed.is_empty() {
                jobs.push((group.key.clone(), group.changed.clone(), 1));
            }
        }
        for task in self.ids.values() {
            if let Task::Reload(job) = task {
                jobs.push(job.clone());
            }
        }
        jobs
    }

    /// Aborts every task and waits at most `bound` for them to end. Returns
    /// false when some did not end in time.
    pub async fn shutdown(&mut self, bound: Duration) -> bool {
        self.tasks.abort_all();
        tokio::time::timeout(bound, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok()
    }
}
