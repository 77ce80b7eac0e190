//! Drift defense: what confera left in each destination (a fingerprint,
//! never the content), the watch on destination directories, and the
//! decision to restore or warn when a destination changes behind its back.
//!
//! It never writes a destination itself: a restore is a normal run of the
//! resource, scheduled by the loop. confera's own commits are never drift.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::pipeline::compare::{self, Fingerprint};
use crate::pipeline::{Attributes, Committed};
use crate::resource::{self, Unit};
use crate::telemetry::metrics::Metrics;
use crate::watch::debounce::after;
use crate::watch::inbox::Inbox;

/// A destination that keeps being changed by someone else is restored at
/// most this often, so confera never fights another writer in a tight loop.
const RESTORE_SPACING: Duration = Duration::from_secs(1);

/// A destination confera owns, as it last left it.
struct Owned {
    unit: String,
    state: Fingerprint,
    /// When the last restore was scheduled, to restore at most once per second.
    last_restore: Option<Instant>,
    /// A restore is scheduled and not yet done.
    restoring: bool,
    /// A drifted state (None: deleted) already reported in `warn` mode, to
    /// report each edit once.
    warned: Option<Option<Fingerprint>>,
}

#[derive(Default)]
pub struct Drift {
    owned: HashMap<PathBuf, Owned>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl Drift {
    /// Records what a unit's destinations hold after a render that matched
    /// or was committed: anything else found there later is drift.
    pub fn own(&mut self, unit: &str, files: &[Committed]) {
        for file in files {
            let entry = self
                .owned
                .entry(file.dest.clone())
                .or_insert_with(|| Owned {
                    unit: unit.to_string(),
                    state: file.state,
                    last_restore: None,
                    restoring: false,
                    warned: None,
                });
            entry.unit = unit.to_string();
            entry.state = file.state;
            entry.warned = None;
            entry.restoring = false;
        }
    }

    /// Forgets a destination confera no longer left a file in (a rollback
    /// removed the file its commit created).
    pub fn forget(&mut self, dest: &Path) {
        self.owned.remove(dest);
    }

    /// The attributes confera set, by destination: unset modes and owners
    /// keep those, not what someone changed them to since.
    pub fn kept_attributes(&self) -> HashMap<PathBuf, Attributes> {
        self.owned
            .iter()
            .map(|(dest, o)| (dest.clone(), Attributes::of_fingerprint(&o.state)))
            .collect()
    }

    /// The unit that owns `dest`, if confera owns it.
    pub fn owner(&self, dest: &Path) -> Option<&str> {
        self.owned.get(dest).map(|o| o.unit.as_str())
    }

    pub fn owned_paths(&self) -> Vec<PathBuf> {
        self.owned.keys().cloned().collect()
    }

    /// Forgets destinations of units no longer configured.
    pub fn retain_units(&mut self, units: &HashSet<&str>) {
        self.owned.retain(|_, o| units.contains(o.unit.as_str()));
    }

    /// Compares an owned destination with what confera left there and acts
    /// on the unit's drift policy: the unit to run and when, for a restore.
    pub fn check(
        &mut self,
        path: &Path,
        units: &[Unit],
        metrics: &Metrics,
    ) -> Option<(String, Instant)> {
        let owned = self.owned.get_mut(path)?;
        let unit = units.iter().find(|u| u.name == owned.unit)?;
        let current = match compare::current(path) {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(dest = %path.display(), error = %e, "cannot read destination to check for drift");
                return None;
            }
        };
        let current = current.as_ref().map(Fingerprint::of);
        let difference = owned.state.difference(current.as_ref());
        if !difference.any() {
            return None;
        }
        let what = difference.describe();
        match unit.drift {
            resource::Drift::Ignore => None,
            resource::Drift::Warn => {
                let seen = Some(current);
                if owned.warned != seen {
                    metrics.drift(&unit.name, "warn");
                    tracing::warn!(resource = %unit.name, dest = %path.display(), differs = %what, policy = "warn", "destination changed outside confera");
                    owned.warned = seen;
                }
                None
            }
            // One edit fires several events; one restore answers them all.
            resource::Drift::Restore if owned.restoring => None,
            resource::Drift::Restore => {
                let now = Instant::now();
                let at = match owned.last_restore {
                    Some(last) if now < after(last, RESTORE_SPACING) => {
                        tracing::warn!(resource = %unit.name, dest = %path.display(), differs = %what, "destination keeps being changed outside confera; restoring at most once per second");
                        after(last, RESTORE_SPACING)
                    }
                    _ => {
                        tracing::warn!(resource = %unit.name, dest = %path.display(), differs = %what, policy = "restore", "destination changed outside confera; restoring");
                        now
                    }
                };
                owned.last_restore = Some(at);
                owned.restoring = true;
                metrics.drift(&unit.name, "restore");
                Some((unit.name.clone(), at))
            }
        }
    }

    /// (Re)creates the watch on every destination directory; changes land
    /// in `inbox` as a set of paths, so none is ever dropped.
    pub fn watch(&mut self, units: &[Unit], noop: bool, inbox: &Arc<Inbox>) {
        self.watcher = None;
        if noop {
            return;
        }
        let inbox = inbox.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            use notify::event::{AccessKind, AccessMode, EventKind};
            let Ok(event) = res else { return };
            // Reads (including our own drift check's) are not changes; reacting
            // to them would make every check trigger the next one.
            let read_only = matches!(event.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write));
            // Our own staging directories come and go with every commit.
            let staging = event
                .paths
                .iter()
                .all(|p| p.to_string_lossy().contains("/.confera-stage-"));
            if !event.paths.is_empty() && !read_only && !staging {
                inbox.dests(event.paths);
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch destinations; drift is caught by the periodic resync only");
                return;
            }
        };
        let mut dirs: Vec<PathBuf> = units
            .iter()
            .filter(|u| u.drift != resource::Drift::Ignore)
            .flat_map(|u| u.templates.iter())
            .map(|t| {
                let dest = compare::resolve_dest(&t.dest).unwrap_or_else(|_| t.dest.clone());
                crate::pipeline::stage::parent_of(&dest)
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch destination directory for drift");
            }
        }
        self.watcher = Some(watcher);
    }
}
