//! Watch mode: the long-lived loop. Every trigger is an [`Event`] handled in
//! one `match`; the loop owns the store and the configuration, applies
//! changes as they arrive, and renders only the units a change touched, after
//! their debounce window.
//!
//! Invariants: nothing renders before the first full snapshot is in the
//! store; watch streams are drained by their own tasks, never by this loop;
//! a failure of any stage keeps the last good files and is retried with
//! backoff; shutdown waits for the batch in flight.

pub mod debounce;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cli::{Backend, Cli};
use crate::config::Config;
use crate::error::ConfigError;
use crate::pipeline::compare::{self, Fingerprint};
use crate::pipeline::{Attributes, Committed, Outcome, Pipeline};
use crate::reload;
use crate::resource::{Drift, Reload, Unit};
use crate::settings::{Mode, Settings};
use crate::source::etcd::{merge_prefixes, Change, Etcd, WatchEvent};
use crate::source::{self, env, file};
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::watch::debounce::{Backoff, Debouncer};
use crate::RunStatus;

/// How long to let a burst of editor writes to templates settle.
const CONFIG_SETTLE: Duration = Duration::from_millis(200);

/// A destination that keeps being changed by someone else is restored at
/// most this often, so confera never fights another writer in a tight loop.
const DRIFT_RESTORE_SPACING: Duration = Duration::from_secs(1);

/// Everything that can wake the loop.
#[derive(Debug)]
enum Event {
    /// Something from an etcd watch task, tagged with its generation.
    Watch(u64, WatchEvent),
    /// A data file of the file backend changed.
    DataFiles,
    /// A file under conf.d/ or templates/ changed.
    ConfigFiles,
    /// Something changed in a destination directory: maybe drift.
    Dest(Vec<PathBuf>),
    /// SIGHUP: reload the configuration now.
    Hup,
    /// A deadline passed: debounce, retry, reconnect or resync.
    Tick,
    Shutdown,
}

/// Which units read which prefixes, so a change costs a lookup per path
/// segment of its key rather than a scan of every unit.
#[derive(Debug, Default)]
struct Index {
    by_prefix: HashMap<String, Vec<String>>,
}

impl Index {
    fn build(units: &[Unit]) -> Index {
        let mut by_prefix: HashMap<String, Vec<String>> = HashMap::new();
        for unit in units {
            for prefix in unit.prefixes() {
                let names = by_prefix.entry(prefix.to_string()).or_default();
                if !names.contains(&unit.name) {
                    names.push(unit.name.clone());
                }
            }
        }
        Index { by_prefix }
    }

    /// Units whose keys include `key`: those indexed at `key` or any ancestor.
    fn affected<'a>(&'a self, key: &str, out: &mut HashSet<&'a str>) {
        let mut path = key;
        loop {
            if let Some(names) = self.by_prefix.get(path) {
                out.extend(names.iter().map(String::as_str));
            }
            if path == "/" {
                break;
            }
            path = match path.rfind('/') {
                Some(0) => "/",
                Some(i) => &path[..i],
                None => break,
            };
        }
    }
}

/// The etcd connection and its watches.
enum Link {
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

struct PendingReload {
    action: Reload,
    dest: PathBuf,
    units: Vec<String>,
    attempt: u32,
    at: Instant,
}

struct Daemon<'t> {
    cli: &'t Cli,
    telemetry: &'t Telemetry,
    settings: Settings,
    config: Config,
    index: Index,
    store: Arc<Store>,
    /// The first full snapshot is in the store.
    synced: bool,
    debounce: Debouncer<String>,
    failures: HashMap<String, u32>,
    reloads: Vec<PendingReload>,
    backoff: Backoff,
    // etcd only
    link: Option<Link>,
    generation: u64,
    revisions: HashMap<String, i64>,
    need_snapshot: bool,
    watch_tx: mpsc::UnboundedSender<(u64, WatchEvent)>,
    // drift defense
    /// What each owned destination holds after our last render or commit.
    owned: HashMap<PathBuf, Owned>,
    dest_watcher: Option<notify::RecommendedWatcher>,
    fs_tx: mpsc::Sender<Event>,
    // deadlines
    resync_at: Option<Instant>,
    config_reload_at: Option<Instant>,
    data_reload_at: Option<Instant>,
}

/// A destination confera owns, as it last left it.
struct Owned {
    unit: String,
    state: Fingerprint,
    /// When the last drift restore was scheduled, to restore at most once
    /// per second.
    last_restore: Option<Instant>,
    /// A restore is scheduled and not yet done.
    restoring: bool,
    /// A drifted state (None: deleted) already reported in `warn` mode, to
    /// report each edit once.
    warned: Option<Option<Fingerprint>>,
}

/// Runs watch mode until `shutdown` completes.
pub async fn run(
    cli: &Cli,
    settings: Settings,
    config: Config,
    telemetry: &Telemetry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunStatus, ConfigError> {
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    let (fs_tx, mut fs_rx) = mpsc::channel::<Event>(64);
    let _watchers = watch_files(&settings, fs_tx.clone())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ConfigError::Settings(format!("installing the SIGHUP handler: {e}")))?;
    let resync = match settings.mode {
        Mode::Watch { resync } => resync,
        _ => None,
    };
    let is_etcd = settings.backend.is_etcd();
    let mut daemon = Daemon {
        cli,
        telemetry,
        index: Index::build(&config.units),
        settings,
        config,
        store: Arc::new(Store::new()),
        synced: false,
        debounce: Debouncer::default(),
        failures: HashMap::new(),
        reloads: Vec::new(),
        backoff: Backoff::default(),
        link: is_etcd.then(|| Link::Down {
            attempt: 0,
            retry_at: Instant::now(),
        }),
        generation: 0,
        revisions: HashMap::new(),
        need_snapshot: true,
        watch_tx,
        owned: HashMap::new(),
        dest_watcher: None,
        fs_tx,
        resync_at: resync.map(|r| Instant::now() + r),
        config_reload_at: None,
        data_reload_at: None,
    };
    daemon.watch_destinations();
    daemon.config.remove_stale_stages();
    if !is_etcd {
        daemon.load_local_source();
    }
    tokio::pin!(shutdown);
    // systemd's watchdog is fed from the loop itself, so a stuck loop stops feeding it.
    let mut watchdog = telemetry
        .systemd
        .watchdog_interval()
        .map(tokio::time::interval);
    loop {
        let deadline = daemon.next_deadline();
        // A steady stream of watch events must not starve due work (the
        // debounce MAX): a passed deadline goes first.
        if deadline.is_some_and(|d| d <= Instant::now()) {
            // Changes already queued join this batch rather than the next.
            while let Ok((generation, e)) = watch_rx.try_recv() {
                daemon.on_watch(generation, e);
            }
            daemon.on_tick(resync).await;
            continue;
        }
        let event = tokio::select! {
            biased;
            _ = &mut shutdown => Event::Shutdown,
            _ = tick(&mut watchdog) => {
                telemetry.systemd.watchdog();
                continue;
            }
            Some((generation, e)) = watch_rx.recv() => Event::Watch(generation, e),
            Some(e) = fs_rx.recv() => e,
            Some(()) = hup.recv() => Event::Hup,
            _ = sleep_until(deadline) => Event::Tick,
        };
        match event {
            Event::Watch(generation, e) => daemon.on_watch(generation, e),
            Event::DataFiles => {
                daemon.data_reload_at = Some(Instant::now() + daemon.settings.wait.min);
            }
            Event::ConfigFiles => daemon.config_reload_at = Some(Instant::now() + CONFIG_SETTLE),
            Event::Dest(paths) => {
                for path in paths {
                    daemon.check_drift(&path);
                }
            }
            Event::Hup => {
                tracing::info!("SIGHUP received, reloading settings and configuration");
                daemon.reload_settings();
                daemon.config_reload_at = Some(Instant::now());
            }
            Event::Tick => daemon.on_tick(resync).await,
            Event::Shutdown => break,
        }
    }
    daemon.stop_watches();
    tracing::info!("stopped");
    Ok(RunStatus::Success)
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Daemon<'_> {
    fn next_deadline(&self) -> Option<Instant> {
        let link = match &self.link {
            Some(Link::Down { retry_at, .. }) => Some(*retry_at),
            _ => None,
        };
        let debounce = if self.synced {
            self.debounce.next_deadline()
        } else {
            None
        };
        [
            link,
            debounce,
            self.reloads.iter().map(|r| r.at).min(),
            self.resync_at,
            self.config_reload_at,
            self.data_reload_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn on_tick(&mut self, resync: Option<Duration>) {
        let now = Instant::now();
        if self.config_reload_at.is_some_and(|t| t <= now) {
            self.config_reload_at = None;
            self.reload_config();
        }
        if self.data_reload_at.is_some_and(|t| t <= now) {
            self.data_reload_at = None;
            self.load_local_source();
        }
        if self.resync_at.is_some_and(|t| t <= now) {
            self.resync_at = resync.map(|r| now + r);
            tracing::info!("periodic resync");
            // notify misses edits on some filesystems (NFS); compare by hand.
            let dests: Vec<PathBuf> = self.owned.keys().cloned().collect();
            for dest in dests {
                self.check_drift(&dest);
            }
            self.resync();
        }
        if matches!(&self.link, Some(Link::Down { retry_at, .. }) if *retry_at <= now) {
            self.connect().await;
        }
        if self.synced {
            self.process_due().await;
        }
        self.retry_reloads().await;
    }

    /// A full re-read: etcd reconnects with a fresh snapshot; local sources
    /// are read again.
    fn resync(&mut self) {
        if self.link.is_some() {
            self.need_snapshot = true;
            self.restart_link(0);
        } else {
            self.load_local_source();
        }
    }

    // ----- etcd -----

    async fn connect(&mut self) {
        let attempt = match &self.link {
            Some(Link::Down { attempt, .. }) => *attempt,
            _ => return,
        };
        match self.try_connect().await {
            Ok((etcd, tasks)) => {
                tracing::info!(
                    revision = self.store.revision(),
                    keys = self.store.len(),
                    "watching etcd"
                );
                self.link = Some(Link::Up {
                    _client: Box::new(etcd),
                    tasks,
                });
                self.telemetry
                    .metrics
                    .backend_up(self.settings.backend.label(), true);
                self.telemetry
                    .metrics
                    .revision(self.settings.backend.label(), self.store.revision());
                self.telemetry.health.set_healthy();
            }
            Err(e) => {
                self.telemetry
                    .metrics
                    .backend_up(self.settings.backend.label(), false);
                self.telemetry
                    .health
                    .set_unhealthy(format!("etcd unreachable: {e}"));
                let delay = self.backoff.next(attempt + 1);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "etcd unavailable; keeping the current files");
                self.link = Some(Link::Down {
                    attempt: attempt + 1,
                    retry_at: Instant::now() + delay,
                });
            }
        }
    }

    async fn try_connect(
        &mut self,
    ) -> Result<(Etcd, Vec<JoinHandle<()>>), crate::error::SourceError> {
        let mut etcd = Etcd::connect(source::etcd_config(&self.settings)).await?;
        let prefixes = merge_prefixes(&self.config.prefixes());
        if self.need_snapshot {
            let fresh = etcd.snapshot(&prefixes).await?;
            let revision = fresh.revision();
            self.apply_snapshot(&prefixes, fresh);
            self.revisions = prefixes.iter().map(|p| (p.clone(), revision)).collect();
            self.need_snapshot = false;
        }
        self.generation += 1;
        let mut tasks = Vec::with_capacity(prefixes.len());
        for prefix in &prefixes {
            let from = self
                .revisions
                .get(prefix)
                .copied()
                .unwrap_or(self.store.revision())
                + 1;
            let task = etcd
                .watch(prefix, from, self.generation, self.watch_tx.clone())
                .await;
            match task {
                Ok(task) => tasks.push(task),
                Err(e) => {
                    tasks.iter().for_each(JoinHandle::abort);
                    return Err(e);
                }
            }
        }
        Ok((etcd, tasks))
    }

    fn stop_watches(&mut self) {
        if let Some(Link::Up { tasks, .. }) = &self.link {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }

    /// Drops the connection and reconnects after the backoff of `attempt`.
    fn restart_link(&mut self, attempt: u32) {
        self.stop_watches();
        // A new generation makes events still queued from the old watches void;
        // their revisions were not recorded, so the new watches deliver them again.
        self.generation += 1;
        let delay = if attempt == 0 {
            Duration::ZERO
        } else {
            self.backoff.next(attempt)
        };
        self.link = Some(Link::Down {
            attempt,
            retry_at: Instant::now() + delay,
        });
    }

    fn on_watch(&mut self, generation: u64, event: WatchEvent) {
        if generation != self.generation {
            return;
        }
        match event {
            WatchEvent::Changes {
                prefix,
                revision,
                changes,
            } => {
                let store = Arc::make_mut(&mut self.store);
                let mut changed = Vec::new();
                for change in changes {
                    match change {
                        Change::Put { key, value } => {
                            if store.insert(&key, value) {
                                changed.push(key);
                            }
                        }
                        Change::Delete { key } => {
                            if store.remove(&key) {
                                changed.push(key);
                            }
                        }
                    }
                }
                store.set_revision(store.revision().max(revision));
                let metrics = &self.telemetry.metrics;
                metrics.events_applied(self.settings.backend.label(), changed.len() as u64);
                metrics.revision(self.settings.backend.label(), store.revision());
                metrics.keys(store.len());
                let seen = self.revisions.entry(prefix).or_insert(0);
                *seen = (*seen).max(revision);
                self.touch(&changed, false);
            }
            WatchEvent::Lost {
                prefix,
                reason,
                compacted,
            } => {
                self.telemetry
                    .metrics
                    .watch_restart(self.settings.backend.label());
                self.telemetry
                    .metrics
                    .backend_up(self.settings.backend.label(), false);
                self.telemetry
                    .health
                    .set_unhealthy(format!("etcd watch lost: {reason}"));
                if compacted {
                    tracing::warn!(prefix = %prefix, reason = %reason, "watch lost its history; resyncing");
                    self.need_snapshot = true;
                    self.restart_link(0);
                } else {
                    tracing::warn!(prefix = %prefix, reason = %reason, "watch lost; reconnecting");
                    self.restart_link(1);
                }
            }
        }
    }

    // ----- store -----

    /// Replaces what the store holds under `prefixes` with a fresh snapshot
    /// and schedules the units whose keys changed.
    fn apply_snapshot(&mut self, prefixes: &[String], fresh: Store) {
        let first = !self.synced;
        let changed = Arc::make_mut(&mut self.store).replace_under(prefixes, fresh);
        self.synced = true;
        self.telemetry.metrics.keys(self.store.len());
        if !first {
            self.telemetry.metrics.resync(self.settings.backend.label());
        }
        if first {
            let now = Instant::now();
            for unit in &self.config.units {
                self.debounce.at(unit.name.clone(), now);
            }
        } else {
            self.touch(&changed, true);
        }
    }

    /// Reads the file or env source again; a failure keeps the store.
    fn load_local_source(&mut self) {
        let fresh = match self.settings.backend {
            Backend::File => match file::load(&self.settings.files) {
                Ok(store) => store,
                Err(e) => {
                    tracing::error!(error = %e, "data files unreadable; keeping the current data and files");
                    self.telemetry.health.set_unhealthy(e.to_string());
                    return;
                }
            },
            Backend::Env => env::load(&self.config.prefixes()),
            Backend::Etcd | Backend::Etcdv3 => return,
        };
        self.apply_snapshot(&["/".to_string()], fresh);
        self.telemetry.health.set_healthy();
        self.telemetry
            .metrics
            .backend_up(self.settings.backend.label(), true);
    }

    /// Schedules every unit that reads one of `keys`.
    fn touch(&mut self, keys: &[String], immediately: bool) {
        if keys.is_empty() {
            return;
        }
        let mut affected = HashSet::new();
        for key in keys {
            self.index.affected(key, &mut affected);
        }
        let now = Instant::now();
        for unit in self
            .config
            .units
            .iter()
            .filter(|u| affected.contains(u.name.as_str()))
        {
            if immediately {
                self.debounce.at(unit.name.clone(), now);
            } else {
                let wait = unit.wait.unwrap_or(self.settings.wait);
                self.debounce.touch(unit.name.clone(), now, wait);
            }
        }
        tracing::debug!(keys = keys.len(), units = affected.len(), "changes applied");
    }

    // ----- pipeline -----

    async fn process_due(&mut self) {
        let now = Instant::now();
        let due = self.debounce.take_due(now);
        if due.is_empty() {
            return;
        }
        let units: Vec<&Unit> = self
            .config
            .units
            .iter()
            .filter(|u| due.contains(&u.name))
            .collect();
        // Drift defense: unset modes and owners keep what confera set, not
        // what someone changed them to since.
        let owned = &self.owned;
        let keep = |dest: &Path| {
            owned.get(dest).map(|o| Attributes {
                mode: o.state.mode,
                uid: o.state.uid,
                gid: o.state.gid,
            })
        };
        let pipeline = Pipeline {
            renderer: &self.config.renderer,
            options: self.settings.options,
            metrics: &self.telemetry.metrics,
            keep: Some(&keep),
        };
        let report = pipeline.run_batch(&units, &self.store).await;
        let mut retry = Vec::new();
        for (name, result) in &report.units {
            match result {
                Ok(outcome) => {
                    if self.failures.remove(name).is_some() {
                        tracing::info!(resource = %name, "recovered");
                    }
                    if let Outcome::Committed { written, .. } = outcome {
                        tracing::debug!(resource = %name, files = written.len(), "batch committed");
                    }
                    self.own(name, outcome.files());
                }
                Err(_) => {
                    let attempt = self.failures.entry(name.clone()).or_insert(0);
                    *attempt += 1;
                    retry.push((name.clone(), *attempt));
                }
            }
        }
        for (name, attempt) in retry {
            let delay = self.backoff.next(attempt);
            tracing::warn!(resource = %name, attempt, retry_in_ms = delay.as_millis() as u64, "will retry");
            self.debounce.at(name, now + delay);
        }
        // A reload that just worked makes a pending retry of it moot.
        self.reloads
            .retain(|r| !report.reloaded.contains(&r.action));
        for (action, units, _) in report.failed_reloads {
            self.schedule_reload_retry(action, units, 1);
        }
        if self.failures.is_empty() && self.reloads.is_empty() {
            self.telemetry.ready();
        }
    }

    fn schedule_reload_retry(&mut self, action: Reload, units: Vec<String>, attempt: u32) {
        let dest = self
            .config
            .units
            .iter()
            .find(|u| units.contains(&u.name))
            .map(|u| u.templates[0].dest.clone())
            .unwrap_or_default();
        self.reloads.retain(|r| r.action != action);
        self.reloads.push(PendingReload {
            action,
            dest,
            units,
            attempt,
            at: Instant::now() + self.backoff.next(attempt),
        });
    }

    async fn retry_reloads(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reloads)
            .into_iter()
            .partition(|r| r.at <= now);
        self.reloads = waiting;
        for r in due {
            match reload::reload(&r.action, &r.dest).await {
                Ok(()) => {
                    tracing::info!(resources = %r.units.join(","), attempt = r.attempt, "reload retry succeeded")
                }
                Err(e) => {
                    tracing::error!(resources = %r.units.join(","), attempt = r.attempt, error = %e, "reload retry failed");
                    self.schedule_reload_retry(r.action, r.units, r.attempt + 1);
                }
            }
        }
    }

    // ----- drift -----

    /// Records what a unit's destinations hold after a render that matched
    /// or was committed: anything else found there later is drift.
    fn own(&mut self, unit: &str, files: &[Committed]) {
        for file in files {
            let entry = self
                .owned
                .entry(file.dest.clone())
                .or_insert_with(|| Owned {
                    unit: unit.to_string(),
                    state: Fingerprint::of(&file.state),
                    last_restore: None,
                    restoring: false,
                    warned: None,
                });
            entry.unit = unit.to_string();
            entry.state = Fingerprint::of(&file.state);
            entry.warned = None;
            entry.restoring = false;
        }
    }

    /// Compares an owned destination with what confera left there and acts
    /// on the unit's drift policy. Our own commits match and pass silently.
    fn check_drift(&mut self, path: &Path) {
        let Some(owned) = self.owned.get_mut(path) else {
            return;
        };
        let Some(unit) = self.config.units.iter().find(|u| u.name == owned.unit) else {
            return;
        };
        let current = match compare::current(path) {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!(dest = %path.display(), error = %e, "cannot read destination to check for drift");
                return;
            }
        };
        let current = current.as_ref().map(Fingerprint::of);
        let difference = owned.state.difference(current.as_ref());
        if !difference.any() {
            return;
        }
        let what = difference.describe();
        match unit.drift {
            Drift::Ignore => {}
            Drift::Warn => {
                let seen = Some(current);
                if owned.warned != seen {
                    self.telemetry.metrics.drift(&unit.name, "warn");
                    tracing::warn!(resource = %unit.name, dest = %path.display(), differs = %what, policy = "warn", "destination changed outside confera");
                    owned.warned = seen;
                }
            }
            // One edit fires several events; one restore answers them all.
            Drift::Restore if owned.restoring => {}
            Drift::Restore => {
                let now = Instant::now();
                let at = match owned.last_restore {
                    Some(last) if now < last + DRIFT_RESTORE_SPACING => {
                        tracing::warn!(resource = %unit.name, dest = %path.display(), differs = %what, "destination keeps being changed outside confera; restoring at most once per second");
                        last + DRIFT_RESTORE_SPACING
                    }
                    _ => {
                        tracing::warn!(resource = %unit.name, dest = %path.display(), differs = %what, policy = "restore", "destination changed outside confera; restoring");
                        now
                    }
                };
                owned.last_restore = Some(at);
                owned.restoring = true;
                self.telemetry.metrics.drift(&unit.name, "restore");
                self.debounce.at(unit.name.clone(), at);
            }
        }
    }

    /// (Re)creates the watch on every destination directory.
    fn watch_destinations(&mut self) {
        self.dest_watcher = None;
        if self.settings.options.noop {
            return;
        }
        let tx = self.fs_tx.clone();
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
                let _ = tx.try_send(Event::Dest(event.paths));
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch destinations; drift is caught by the periodic resync only");
                return;
            }
        };
        let mut dirs: Vec<PathBuf> = self
            .config
            .units
            .iter()
            .filter(|u| u.drift != Drift::Ignore)
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
        self.dest_watcher = Some(watcher);
    }

    // ----- configuration -----

    /// Loads conf.d and templates again; a bad new configuration is reported
    /// and the running one kept.
    /// Resolves the settings again (the settings file may have changed). A
    /// changed source (backend, endpoints, credentials, data files) means a
    /// fresh connection and snapshot; a bad new file keeps the old settings.
    fn reload_settings(&mut self) {
        let mut settings = match Settings::from_cli(self.cli) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::error!(error = %e, "new settings rejected; keeping the running ones");
                return;
            }
        };
        if settings.backend != self.settings.backend {
            tracing::warn!("changing the backend needs a restart; keeping the running backend");
            settings.backend = self.settings.backend;
        }
        if settings.files != self.settings.files {
            tracing::warn!("changing the data files needs a restart; keeping the running ones");
            settings.files = self.settings.files.clone();
        }
        let source_changed = settings.nodes != self.settings.nodes
            || settings.username != self.settings.username
            || settings.password != self.settings.password
            || settings.tls != self.settings.tls;
        self.settings = settings;
        if source_changed && self.link.is_some() {
            tracing::info!("etcd settings changed; reconnecting");
            self.need_snapshot = true;
            self.restart_link(0);
        }
    }

    fn reload_config(&mut self) {
        let config = match Config::load(&self.settings) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "new configuration rejected; keeping the running one");
                return;
            }
        };
        let prefixes_changed = config.prefixes() != self.config.prefixes();
        tracing::info!(units = config.units.len(), "configuration reloaded");
        self.config = config;
        self.index = Index::build(&self.config.units);
        self.config.remove_stale_stages();
        let units: HashSet<&str> = self.config.units.iter().map(|u| u.name.as_str()).collect();
        self.owned.retain(|_, o| units.contains(o.unit.as_str()));
        self.watch_destinations();
        self.debounce.clear();
        self.failures.clear();
        let now = Instant::now();
        for unit in &self.config.units {
            self.debounce.at(unit.name.clone(), now);
        }
        if prefixes_changed {
            self.synced = self.link.is_none();
            self.resync();
        }
    }
}

/// Watches conf.d/, templates/ and, for the file backend, the data files'
/// directories. Callbacks only `try_send`: a full channel already holds an
/// event that triggers the same reload.
fn watch_files(
    settings: &Settings,
    tx: mpsc::Sender<Event>,
) -> Result<Vec<notify::RecommendedWatcher>, ConfigError> {
    let mut watchers = Vec::new();
    let confdir = settings.confdir.clone();
    let conf_tx = tx.clone();
    let mut conf_watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if is_content_event(&event) {
                    let _ = conf_tx.try_send(Event::ConfigFiles);
                }
            }
        })
        .map_err(|e| watch_error(&confdir, e))?;
    for dir in [confdir.join("conf.d"), confdir.join("templates")] {
        conf_watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|e| watch_error(&dir, e))?;
    }
    watchers.push(conf_watcher);

    if settings.backend == Backend::File {
        let files: Vec<PathBuf> = settings
            .files
            .iter()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
            .collect();
        let names = files.clone();
        let data_tx = tx;
        let mut data_watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(event) = res {
                    // Editors replace files by rename, so watch directories and
                    // match names; event paths are the watched (absolute)
                    // directory joined with a name.
                    if is_content_event(&event) && event.paths.iter().any(|p| names.contains(p)) {
                        let _ = data_tx.try_send(Event::DataFiles);
                    }
                }
            })
            .map_err(|e| watch_error(&settings.confdir, e))?;
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .map(|f| crate::pipeline::stage::parent_of(f))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            data_watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|e| watch_error(&dir, e))?;
        }
        watchers.push(data_watcher);
    }
    Ok(watchers)
}

fn is_content_event(event: &notify::Event) -> bool {
    use notify::EventKind;
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    ) && !matches!(
        event.kind,
        EventKind::Modify(notify::event::ModifyKind::Metadata(_))
    )
}

fn watch_error(path: &Path, e: notify::Error) -> ConfigError {
    let hint = match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            ": the inotify watch limit is reached; raise fs.inotify.max_user_watches"
        }
        _ => "",
    };
    ConfigError::Settings(format!("watching {}: {e}{hint}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_units_by_any_ancestor_of_a_key() {
        let mut index = Index::default();
        index
            .by_prefix
            .insert("/fabric/peers".into(), vec!["bird".into()]);
        index.by_prefix.insert("/fabric".into(), vec!["all".into()]);
        index.by_prefix.insert("/".into(), vec!["root".into()]);
        let mut out = HashSet::new();
        index.affected("/fabric/peers/a/asn", &mut out);
        let mut names: Vec<_> = out.into_iter().collect();
        names.sort();
        assert_eq!(names, ["all", "bird", "root"]);
        let mut out = HashSet::new();
        index.affected("/fabricx", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["root"]);
    }
}
