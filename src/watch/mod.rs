//! Watch mode: the long-lived loop. Every trigger is an [`Event`] handled in
//! one `match`; the loop owns the store and the configuration and hands the
//! work to parts that each own one concern:
//!
//! - [`link`]: the etcd link (connect, snapshots, watches, history checks);
//! - [`scheduler`]: debounce windows, retries and backoff (pure, clocked);
//! - [`worker`]: the resource pipelines and reloads, each a task of its own;
//! - [`drift`]: drift defense; [`reconfigure`]: configuration hot reload;
//! - [`owed`]: reloads still owed, across restarts;
//! - health and status live in `telemetry::status`, fed from here.
//!
//! Invariants: nothing renders before the first full snapshot is in the
//! store; watch streams are drained by their own tasks, never by this loop;
//! the loop never waits for a resource's work, so one stuck resource never
//! delays another; every pass goes through the `select!` that serves
//! shutdown, SIGHUP and the watchdog; shutdown is bounded.

pub mod debounce;
pub mod drift;
pub mod inbox;
pub mod index;
pub mod link;
pub mod owed;
pub mod reconfigure;
pub mod scheduler;
pub mod worker;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cli::{Backend, Cli};
use crate::config::Config;
use crate::error::{ConfigError, UnitError};
use crate::pipeline::{Pipeline, ReloadKey, RenderLimits};
use crate::settings::{Mode, Settings};
use crate::source::etcd::{Change, WatchEvent};
use crate::source::{self, env, file};
use crate::store::Store;
use crate::telemetry::status::HistoryChange;
use crate::telemetry::Telemetry;
use crate::RunStatus;
use debounce::after;
use drift::Drift;
use inbox::Inbox;
use index::Index;
use link::{Delivery, Link};
use owed::Owed;
use scheduler::{ReloadRetry, Scheduler};
use worker::{Done, Workers};

/// How long to let a burst of editor writes to templates settle.
const CONFIG_SETTLE: Duration = Duration::from_millis(200);

/// How long shutdown lets running work finish on its own (a check, its
/// commit and the reload after it). Past it the work is aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long shutdown then waits for aborted work: a commit in flight
/// completes well within it (commits hold no await); commands are killed
/// with their process group at once. With the metrics server's own grace
/// (at most 2 s, only while clients hold connections), confera exits within
/// about 5 s of SIGTERM whatever runs.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(1);

/// Everything that can wake the loop.
#[derive(Debug)]
enum Event {
    /// Something from an etcd watch task, tagged with its generation.
    Watch(u64, WatchEvent),
    /// Configuration, data or destination files changed (see [`Inbox`]).
    Files,
    /// A resource's pipeline or a reload finished.
    Done(Done),
    /// SIGHUP: reload the settings and configuration now.
    Hup,
    /// A deadline passed: debounce, retry, reconnect or resync.
    Tick,
    Shutdown,
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
    scheduler: Scheduler,
    workers: Workers,
    /// Units that became due while their worker was busy: run again after.
    rerun: HashSet<String>,
    /// Renders abandoned at their limit whose thread may still run.
    abandoned: crate::pipeline::Abandoned,
    /// Commits waiting for BIRD's verdict, and rejected file sets.
    rejections: crate::pipeline::rejected::Rejections,
    /// Destinations changed while their unit ran: checked once it is done.
    deferred_drift: HashSet<std::path::PathBuf>,
    /// Units of the first batch not yet done; ready once it is empty.
    first_batch: Option<HashSet<String>>,
    link: Option<Link>,
    /// Exec mode: starts the child once the first batch succeeded.
    exec: Option<crate::exec::Starter>,
    /// Units of the first batch that failed.
    first_failed: Vec<String>,
    /// The first batch succeeded: start the child once its reloads are done
    /// (they find no child and so have nothing to tell it).
    start_child: bool,
    /// Exec mode: the first batch failed, so the child never starts and the
    /// run ends with exit 1.
    fatal: bool,
    drift: Drift,
    owed: Owed,
    inbox: Arc<Inbox>,
    _file_watchers: Vec<notify::RecommendedWatcher>,
    stop: CancellationToken,
    // deadlines
    resync_at: Option<Instant>,
    config_reload_at: Option<Instant>,
    data_reload_at: Option<Instant>,
}

/// Runs watch mode until `shutdown` completes.
pub async fn run(
    cli: &Cli,
    settings: Settings,
    config: Config,
    telemetry: &Telemetry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    exec: Option<crate::exec::Starter>,
) -> Result<RunStatus, ConfigError> {
    let stop = cancelled_by(shutdown);
    let inbox = Arc::new(Inbox::default());
    let file_watchers = reconfigure::watch_files(&settings, &inbox)?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ConfigError::Settings(format!("installing the SIGHUP handler: {e}")))?;
    let (link, mut watch_rx) = if settings.backend.is_etcd() {
        let (link, rx) = Link::new(source::etcd_config(&settings));
        (Some(link), Some(rx))
    } else {
        (None, None)
    };
    let owed = crate::run::owed_reloads(&settings, &config);
    let rejections = crate::run::rejections(&settings);
    let mut daemon = Daemon {
        cli,
        telemetry,
        rejections,
        index: Index::build(&config.units),
        resync_at: resync_period(&settings).map(|r| after(Instant::now(), r)),
        settings,
        config,
        store: Arc::new(Store::new()),
        synced: false,
        scheduler: Scheduler::default(),
        workers: Workers::default(),
        rerun: HashSet::new(),
        deferred_drift: HashSet::new(),
        abandoned: Default::default(),
        first_batch: None,
        link,
        exec,
        first_failed: Vec::new(),
        start_child: false,
        fatal: false,
        drift: Drift::default(),
        owed,
        inbox,
        _file_watchers: file_watchers,
        stop: stop.clone(),
        config_reload_at: None,
        data_reload_at: None,
    };
    daemon.start();
    let inbox = daemon.inbox.clone();
    // systemd's watchdog is fed from the loop itself, so a stuck loop stops feeding it.
    let mut watchdog = telemetry
        .systemd
        .watchdog_interval()
        .map(tokio::time::interval);
    loop {
        let deadline = daemon.next_deadline();
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => Event::Shutdown,
            () = tick(&mut watchdog) => {
                telemetry.systemd.watchdog();
                continue;
            }
            Some(()) = hup.recv() => Event::Hup,
            // A passed deadline goes before a steady stream of watch events,
            // so due work (the debounce MAX) is never starved.
            () = sleep_until(deadline) => Event::Tick,
            done = daemon.workers.next() => Event::Done(done),
            Some((generation, e)) = recv(&mut watch_rx) => Event::Watch(generation, e),
            () = inbox.wait() => Event::Files,
        };
        match event {
            Event::Watch(generation, e) => daemon.on_watch(generation, e),
            Event::Files => daemon.on_files(),
            Event::Done(done) => daemon.on_done(done),
            Event::Hup => {
                tracing::info!("SIGHUP received, reloading settings and configuration");
                daemon.reload_settings();
                daemon.config_reload_at = Some(Instant::now());
            }
            Event::Tick => {
                // Changes already queued join this batch rather than the next.
                while let Some(Ok((generation, e))) = watch_rx.as_mut().map(|rx| rx.try_recv()) {
                    daemon.on_watch(generation, e);
                }
                daemon.on_tick().await;
            }
            Event::Shutdown => break,
        }
        daemon.start_child_when_idle();
    }
    daemon.shutdown().await;
    tracing::info!("stopped");
    Ok(if daemon.fatal {
        RunStatus::Failed
    } else {
        RunStatus::Success
    })
}

/// A token cancelled once `shutdown` completes.
pub fn cancelled_by(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> CancellationToken {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    stop
}

async fn recv(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<(u64, WatchEvent)>>,
) -> Option<(u64, WatchEvent)> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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
        // Already due (an isolated change): no timer, whose millisecond
        // ticks would add up to two milliseconds to every change.
        Some(d) if d <= Instant::now() => {}
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn resync_period(settings: &Settings) -> Option<Duration> {
    match settings.mode {
        Mode::Watch { resync } => resync,
        _ => None,
    }
}

impl Daemon<'_> {
    fn start(&mut self) {
        self.drift
            .watch(&self.config.units, self.settings.options.noop, &self.inbox);
        self.config.remove_stale_stages();
        // Reloads a previous run owed are retried at once.
        let now = Instant::now();
        for (key, units) in self.owed.all() {
            for unit in units.iter() {
                tracing::info!(resource = %unit, resources = %units.join(","), "retrying a reload owed since the last run");
            }
            for unit in &units {
                self.telemetry.status.reload_pending(unit, true, None);
            }
            self.scheduler.reload_at(
                ReloadRetry {
                    key,
                    units,
                    attempt: 1,
                },
                now,
            );
        }
        if self.link.is_none() {
            self.load_local_source();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let link = self.link.as_ref().and_then(Link::retry_at);
        let work = if self.synced {
            self.scheduler.next_deadline()
        } else {
            None
        };
        [
            link,
            work,
            self.resync_at,
            self.config_reload_at,
            self.data_reload_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn on_tick(&mut self) {
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
            self.resync_at = resync_period(&self.settings).map(|r| after(now, r));
            tracing::info!("periodic resync");
            // notify misses edits on some filesystems (NFS); compare by hand.
            for dest in self.drift.owned_paths() {
                self.check_drift(&dest);
            }
            self.resync();
        }
        if self
            .link
            .as_ref()
            .and_then(Link::retry_at)
            .is_some_and(|t| t <= now)
        {
            self.connect().await;
        }
        if self.synced {
            self.start_due();
        }
        let retries = self.scheduler.take_due_reloads(Instant::now());
        if retries.is_empty() {
            return;
        }
        // Built only when needed: it copies every owned file's attributes.
        let pipeline = self.pipeline();
        for retry in retries {
            self.workers
                .reload((retry.key, retry.units, retry.attempt), &pipeline);
        }
    }

    /// A full re-read: etcd reconnects with a fresh snapshot; local sources
    /// are read again.
    fn resync(&mut self) {
        match &mut self.link {
            Some(link) => link.resync(),
            None => self.load_local_source(),
        }
    }

    fn backend(&self) -> &'static str {
        self.settings.backend.label()
    }

    // ----- etcd -----

    async fn connect(&mut self) {
        let Some(link) = &mut self.link else { return };
        let prefixes = self.config.prefixes();
        let applied = self.store.revision();
        // A connect or snapshot can take seconds: shutdown must not wait for it.
        let result = tokio::select! {
            result = link.connect(&prefixes, applied) => result,
            () = self.stop.cancelled() => return,
        };
        let metrics = &self.telemetry.metrics;
        let status = &self.telemetry.status;
        match result {
            Ok(connected) => {
                if let Some(change) = connected.history {
                    self.history_changed(change);
                }
                if let Some((prefixes, fresh)) = connected.snapshot {
                    let revision = fresh.revision();
                    self.apply_snapshot(&prefixes, fresh);
                    if connected.repaired {
                        // The store now reflects the new history, revision and all.
                        Arc::make_mut(&mut self.store).set_revision(revision);
                        tracing::warn!(
                            revision,
                            keys = self.store.len(),
                            "store replaced after the history change"
                        );
                        self.telemetry.status.history_repaired();
                    }
                }
                tracing::info!(
                    revision = self.store.revision(),
                    keys = self.store.len(),
                    "watching etcd"
                );
                metrics.backend_up(self.backend(), true);
                metrics.revision(self.backend(), self.store.revision());
                status.link_up();
            }
            Err((e, delay)) => {
                metrics.backend_up(self.backend(), false);
                status.link_down(format!("etcd unreachable: {e}"));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "etcd unavailable; keeping the current files");
            }
        }
    }

    fn on_watch(&mut self, generation: u64, event: WatchEvent) {
        let Some(link) = &mut self.link else { return };
        let backend = self.settings.backend.label();
        let metrics = &self.telemetry.metrics;
        match link.deliver(generation, event, self.store.revision()) {
            Delivery::Stale => {}
            Delivery::Apply { changes, revision } => {
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
                metrics.events_applied(backend, changed.len() as u64);
                metrics.revision(backend, store.revision());
                metrics.keys(store.len());
                self.touch(&changed, false);
            }
            Delivery::HistoryChanged(change) => self.history_changed(change),
            Delivery::Lost { reason, compacted } => {
                metrics.watch_restart(backend);
                metrics.backend_up(backend, false);
                self.telemetry
                    .status
                    .link_down(format!("etcd watch lost: {reason}"));
                if compacted {
                    tracing::warn!(reason = %reason, "watch lost its history; resyncing");
                } else {
                    tracing::warn!(reason = %reason, "watch lost; reconnecting");
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
        if first {
            let now = Instant::now();
            for unit in &self.config.units {
                self.scheduler.at(&unit.name, now);
            }
        } else {
            self.telemetry.metrics.resync(self.backend());
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
                    self.telemetry.status.link_down(e.to_string());
                    return;
                }
            },
            Backend::Env => env::load(&self.config.prefixes()),
            Backend::Etcd | Backend::Etcdv3 => return,
        };
        self.apply_snapshot(&["/".to_string()], fresh);
        self.telemetry.status.link_up();
        self.telemetry.metrics.backend_up(self.backend(), true);
    }

    /// Reports a rewritten etcd history (the link takes the fresh snapshot).
    fn history_changed(&self, change: HistoryChange) {
        tracing::warn!(
            old_revision = change.old_revision,
            new_revision = change.new_revision,
            old_cluster = %format!("{:x}", change.old_cluster),
            new_cluster = %format!("{:x}", change.new_cluster),
            reason = %change.reason,
            "etcd history was rewritten; replacing the store with a fresh snapshot"
        );
        self.telemetry
            .metrics
            .history_change(self.settings.backend.label());
        self.telemetry.status.history_changed(change);
    }

    /// Schedules every unit that reads one of `keys`: at once when
    /// `immediately`, else by its wait and wait mode.
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
                self.scheduler.at(&unit.name, now);
            } else {
                let wait = unit.wait.unwrap_or(self.settings.wait);
                let mode = unit.wait_mode.unwrap_or(self.settings.wait_mode);
                self.scheduler.touch(&unit.name, now, wait, mode);
            }
        }
        tracing::debug!(keys = keys.len(), units = affected.len(), "changes applied");
    }

    // ----- workers -----

    /// What each worker runs with.
    fn pipeline(&self) -> Pipeline {
        Pipeline {
            renderer: self.config.renderer.clone(),
            options: self.settings.options,
            metrics: self.telemetry.metrics.clone(),
            limits: RenderLimits {
                timeout: self.settings.limits.render_timeout,
                max_output: self.settings.limits.max_output,
            },
            keep: Arc::new(self.drift.kept_attributes()),
            abandoned: self.abandoned.clone(),
            rejections: self.rejections.clone(),
            daemon_files: self.config.daemon_files.clone(),
        }
    }

    /// Starts every due unit whose worker is free; a busy one runs again
    /// once its current work ends.
    fn start_due(&mut self) {
        let due = self.scheduler.take_due(Instant::now());
        if due.is_empty() {
            return;
        }
        let mut ready = HashSet::new();
        for name in due {
            if self.workers.is_busy(&name) {
                self.rerun.insert(name);
            } else {
                ready.insert(name);
            }
        }
        let units: Vec<_> = self
            .config
            .units
            .iter()
            .filter(|u| ready.contains(&u.name))
            .cloned()
            .collect();
        if units.is_empty() {
            return;
        }
        for unit in &units {
            self.telemetry.status.started(&unit.name);
        }
        if self.first_batch.is_none() {
            self.first_batch = Some(ready);
        }
        let pipeline = self.pipeline();
        self.workers.start(units, &pipeline, &self.store);
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Unit {
                name,
                revision,
                result,
            } => self.unit_done(name, revision, result),
            Done::Reload {
                key,
                units,
                attempt,
                result,
            } => self.reload_done(key, units, attempt, result),
        }
    }

    fn unit_done(
        &mut self,
        name: String,
        revision: i64,
        result: Result<crate::pipeline::Outcome, UnitError>,
    ) {
        let failed = result.is_err();
        let status = &self.telemetry.status;
        let unit = self.config.units.iter().find(|u| u.name == name);
        let needs_reload = result.as_ref().is_ok_and(|o| o.needs_reload())
            && unit.and_then(ReloadKey::of).is_some()
            && self.settings.options.reloads();
        match &result {
            Ok(outcome) => {
                if self.scheduler.succeeded(&name) {
                    tracing::info!(resource = %name, "recovered");
                }
                self.drift.own(&name, outcome.files());
                if needs_reload {
                    status.reload_pending(&name, true, None);
                } else {
                    // A unit whose daemon must reload succeeds with that reload.
                    self.telemetry.metrics.unit_success(&name);
                }
                status.finished(&name, revision, Ok(()));
            }
            Err(e @ UnitError::RenderLimit { .. }) => {
                tracing::error!(resource = %name, error = %e, "render abandoned; the resource stays failed until its data or templates change");
                self.telemetry.metrics.render_limit(&name);
                self.scheduler.park(&name);
                status.finished(&name, revision, Err(e.to_string()));
                status.abandoned(&name);
            }
            Err(e @ UnitError::StillRejected { .. }) => {
                crate::pipeline::log_unit_error(&name, e);
                self.scheduler.park(&name);
                status.finished(&name, revision, Err(e.to_string()));
            }
            Err(e) => {
                crate::pipeline::log_unit_error(&name, e);
                let (attempt, delay) = self.scheduler.failed(&name, Instant::now());
                tracing::warn!(resource = %name, attempt, retry_in_ms = delay.as_millis() as u64, "will retry");
                status.finished(&name, revision, Err(e.to_string()));
            }
        }
        if let Some(job) = self.workers.unit_done(&name, needs_reload) {
            let pipeline = self.pipeline();
            self.workers.reload(job, &pipeline);
        }
        if self.rerun.remove(&name) {
            self.scheduler.at(&name, Instant::now());
        }
        self.recheck_deferred_drift(std::slice::from_ref(&name));
        if let Some(first) = &mut self.first_batch {
            let was_in_it = first.remove(&name);
            let complete = first.is_empty();
            if complete {
                self.telemetry.ready();
            }
            if was_in_it {
                if failed {
                    self.first_failed.push(name);
                }
                if complete {
                    self.first_batch_done();
                }
            }
        }
    }

    /// Exec mode: the child starts only on a complete first render.
    fn first_batch_done(&mut self) {
        if self.exec.is_none() {
            return;
        }
        if self.first_failed.is_empty() {
            self.start_child = true;
            return;
        }
        tracing::error!(resources = %self.first_failed.join(","), "the first render failed; the exec child is not started");
        self.exec = None;
        self.fatal = true;
        self.stop.cancel();
    }

    fn start_child_when_idle(&mut self) {
        if self.start_child && self.workers.reloads_idle() {
            self.start_child = false;
            if let Some(starter) = self.exec.take() {
                starter.start();
            }
        }
    }

    fn reload_done(
        &mut self,
        key: ReloadKey,
        units: Vec<String>,
        attempt: u32,
        result: Result<(), crate::error::ReloadFailure>,
    ) {
        let status = &self.telemetry.status;
        let units_done = units.clone();
        match result {
            Ok(()) => {
                if attempt > 1 {
                    for unit in units.iter() {
                        tracing::info!(resource = %unit, resources = %units.join(","), attempt, "reload retry succeeded");
                    }
                }
                self.owed.paid(&key);
                self.scheduler.reload_done(&key);
                for unit in &units {
                    status.reload_pending(unit, false, None);
                }
            }
            Err(e) => {
                if attempt > 1 {
                    for unit in units.iter() {
                        tracing::error!(resource = %unit, resources = %units.join(","), attempt, error = %e, "reload retry failed");
                    }
                }
                if let crate::error::ReloadFailure::Rejected(rejection) = &e {
                    self.rolled_back(rejection);
                }
                let units = e.still_owed(&units);
                if units.is_empty() {
                    self.scheduler.reload_done(&key);
                } else {
                    self.owed.owe(&key, &units);
                    for unit in &units {
                        status.reload_pending(unit, true, Some(format!("reload failed: {e}")));
                    }
                    let retry = ReloadRetry {
                        key: key.clone(),
                        units: units.clone(),
                        attempt: attempt + 1,
                    };
                    let delay = self.scheduler.reload_failed(retry, Instant::now());
                    for unit in units.iter() {
                        tracing::warn!(resource = %unit, resources = %units.join(","), attempt, retry_in_ms = delay.as_millis() as u64, "reload will be retried");
                    }
                }
            }
        }
        if let Some(job) = self.workers.reload_done(&key) {
            let pipeline = self.pipeline();
            self.workers.reload(job, &pipeline);
        }
        self.recheck_deferred_drift(&units_done);
    }

    /// Checks again the destinations of `units` whose drift check waited
    /// for their work to end.
    fn recheck_deferred_drift(&mut self, units: &[String]) {
        let deferred: Vec<_> = self
            .deferred_drift
            .iter()
            .filter(|p| {
                self.drift
                    .owner(p)
                    .is_some_and(|o| units.iter().any(|u| u == o))
            })
            .cloned()
            .collect();
        for path in deferred {
            self.deferred_drift.remove(&path);
            self.check_drift(&path);
        }
    }

    /// BIRD rejected a configuration and these resources' files were put
    /// back: what confera left there is the previous files again (not
    /// drift), and each stays failed, parked until its inputs change.
    fn rolled_back(&mut self, rejection: &crate::error::Rejection) {
        for (dest, state) in &rejection.restored {
            let owner = self.drift.owner(dest).map(str::to_owned);
            match (owner, state) {
                (Some(unit), Some(state)) => self.drift.own(
                    &unit,
                    &[crate::pipeline::Committed {
                        dest: dest.clone(),
                        state: *state,
                    }],
                ),
                (Some(_), None) => self.drift.forget(dest),
                (None, _) => {}
            }
        }
        let message = format!("reload failed: {}", rejection.error);
        for unit in &rejection.rolled_back {
            self.scheduler.park(unit);
            self.telemetry
                .status
                .finished(unit, self.store.revision(), Err(message.clone()));
            self.telemetry
                .status
                .reload_pending(unit, false, Some(message.clone()));
        }
    }

    /// Lets running work finish for [`SHUTDOWN_GRACE`], stops the rest
    /// within [`SHUTDOWN_BOUND`], records the reloads still owed, and stops
    /// the link.
    async fn shutdown(&mut self) {
        let grace = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(grace);
        while !self.workers.is_empty() {
            tokio::select! {
                done = self.workers.next() => self.on_done(done),
                () = &mut grace => break,
            }
        }
        for (key, units, _) in self.workers.unfinished_reloads() {
            self.owed.owe(&key, &units);
        }
        if !self.workers.is_empty() {
            tracing::info!("stopping running work");
        }
        if !self.workers.shutdown(SHUTDOWN_BOUND).await {
            tracing::warn!(
                bound_ms = SHUTDOWN_BOUND.as_millis() as u64,
                "some work did not stop in time"
            );
        }
        if let Some(link) = &mut self.link {
            link.stop();
        }
    }

    // ----- files: configuration, data, destinations -----

    fn on_files(&mut self) {
        let mail = self.inbox.take();
        let now = Instant::now();
        if mail.config {
            self.config_reload_at = Some(after(now, CONFIG_SETTLE));
        }
        if mail.data {
            self.data_reload_at = Some(after(now, self.settings.wait.min));
        }
        for path in mail.dests {
            self.check_drift(&path);
        }
    }

    fn check_drift(&mut self, path: &std::path::Path) {
        // While its unit runs, a destination may hold our own new commit,
        // not yet recorded: look again once the unit is done.
        if let Some(unit) = self.drift.owner(path) {
            // A reload may roll the files back (BIRD rejected them).
            let reloading = self
                .config
                .units
                .iter()
                .find(|u| u.name == unit)
                .and_then(ReloadKey::of)
                .is_some_and(|key| self.workers.is_reloading(&key));
            if self.workers.is_busy(unit) || reloading {
                self.deferred_drift.insert(path.to_path_buf());
                return;
            }
        }
        if let Some((unit, at)) =
            self.drift
                .check(path, &self.config.units, &self.telemetry.metrics)
        {
            self.scheduler.at(&unit, at);
        }
    }

    // ----- configuration -----

    /// Resolves the settings again (the settings file may have changed) and
    /// applies them; what needs a restart is named and kept as it runs.
    fn reload_settings(&mut self) {
        let mut settings = match Settings::from_cli(self.cli) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::error!(error = %e, "new settings rejected; keeping the running ones");
                return;
            }
        };
        let change = reconfigure::compare(&self.settings, &mut settings);
        if !change.need_restart.is_empty() {
            tracing::warn!(settings = %change.need_restart.join(", "), "these settings changed but need a restart; keeping the running values");
        }
        if settings.mode != self.settings.mode {
            self.resync_at = resync_period(&settings).map(|r| after(Instant::now(), r));
        }
        self.telemetry
            .status
            .set_stuck_after(settings.limits.stuck_after);
        let confdir_changed = change.confdir;
        self.settings = settings;
        if confdir_changed {
            match reconfigure::watch_files(&self.settings, &self.inbox) {
                Ok(watchers) => self._file_watchers = watchers,
                Err(e) => tracing::error!(error = %e, "cannot watch the new confdir"),
            }
        }
        if change.reconnect {
            if let Some(link) = &mut self.link {
                tracing::info!("etcd settings changed; reconnecting");
                link.set_config(source::etcd_config(&self.settings));
                link.resync();
            }
        }
        tracing::info!("settings reloaded");
    }

    /// Loads conf.d and templates again; a bad new configuration is reported
    /// and the running one kept.
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
        self.telemetry
            .declare(self.settings.backend.label(), &self.config.units);
        self.index = Index::build(&self.config.units);
        self.config.remove_stale_stages();
        let names: Vec<&str> = self.config.units.iter().map(|u| u.name.as_str()).collect();
        self.telemetry.status.retain(&names);
        self.drift.retain_units(&names.iter().copied().collect());
        self.drift
            .watch(&self.config.units, self.settings.options.noop, &self.inbox);
        self.scheduler.clear();
        let now = Instant::now();
        for unit in &self.config.units {
            self.scheduler.at(&unit.name, now);
        }
        // Exec mode, child not started: the first batch is the new
        // configuration's, whose units may have other names.
        if self.exec.is_some() && !self.start_child {
            self.first_batch = None;
            self.first_failed.clear();
        }
        if prefixes_changed {
            self.synced = self.link.is_none();
            self.resync();
        }
    }
}
