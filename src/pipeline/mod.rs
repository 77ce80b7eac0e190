//! The per-unit pipeline, render → compare → stage → check → commit, and the
//! batch around it: every affected unit is committed first, then each
//! distinct reload action runs once.
//!
//! Invariants kept here: nothing is written or reloaded when no output
//! changed; a failed render or check leaves every destination untouched;
//! files BIRD rejects are put back (`on_reject`) and the same render is not
//! committed again; one failing unit never stops the others.

pub mod check;
pub mod commit;
pub mod compare;
pub mod mask;
pub mod pinned;
pub mod rejected;
pub mod stage;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::error::{CheckFailure, Rejection, ReloadFailure, UnitError};
use crate::reload;
use crate::reload::bird::BirdError;
use crate::render::{self, KeyRead, Rendered, Renderer};
use crate::resource::{OnReject, Reload, Template, Unit};
use crate::store::Store;
use crate::telemetry::metrics::Metrics;
use compare::{Difference, FileState, Fingerprint};
use rejected::{Named, Pending, Quoting, Rejections, Rollback};
use stage::Stage;

/// What the run is allowed to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Render and compare only: write nothing, run nothing.
    pub noop: bool,
    /// With `noop`, print a unified diff of each change on stdout.
    pub diff: bool,
    /// Write files but skip check and reload.
    pub sync_only: bool,
    /// Leave staging directories in place (for debugging).
    pub keep_stage: bool,
    /// With `noop`, a run in which some file would change ends with exit 3.
    pub exit_code: bool,
}

impl Options {
    /// Whether this run reloads anything at all (and so keeps a record of
    /// the reloads it owes).
    pub fn reloads(&self) -> bool {
        !self.noop && !self.sync_only
    }
}

/// What happened to one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every destination already held the render. `files` is what they hold.
    Unchanged { files: Vec<Committed> },
    /// `--noop` and the output differs from the destinations.
    WouldChange,
    /// `written` destinations were committed; `files` is every member's
    /// state as it now is. `reload` is false when only modes or owners
    /// changed: the daemon reads the same configuration as before.
    Committed {
        written: Vec<PathBuf>,
        files: Vec<Committed>,
        reload: bool,
    },
}

impl Outcome {
    /// The state of every destination of the unit after this outcome, when
    /// they match the render.
    pub fn files(&self) -> &[Committed] {
        match self {
            Outcome::Unchanged { files } | Outcome::Committed { files, .. } => files,
            Outcome::WouldChange => &[],
        }
    }

    /// Whether the unit's daemon must re-read its configuration.
    pub fn needs_reload(&self) -> bool {
        matches!(self, Outcome::Committed { reload: true, .. })
    }
}

/// A destination (the file a commit writes, see `pinned::Target`) and a
/// fingerprint of the state a render gave it: enough to notice drift,
/// without a copy of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub dest: PathBuf,
    pub state: Fingerprint,
}

/// What a unit would write: every member, changed or not.
struct Planned<'a> {
    template: &'a Template,
    reads: Vec<KeyRead>,
    dest: PathBuf,
    /// `None` only under `--noop`, for a destination whose directory does
    /// not exist yet.
    target: Option<pinned::Target>,
    have: Option<FileState>,
    want: FileState,
}

/// A check failure, with the staged paths the checker saw kept as they are,
/// each `staged:LINE` it names mapped to the destination and the line of
/// the new content, and where the rejected set is kept. A checker may quote
/// the file it rejects, so the message is redacted like a diff.
fn check_error(
    stage: &Stage,
    failure: &CheckFailure,
    planned: &[Planned],
    kept: Option<&Path>,
) -> UnitError {
    let quotings: Vec<Quoting> = planned.iter().map(Planned::quoting).collect();
    let named: Vec<Named> = stage
        .files()
        .iter()
        .zip(&quotings)
        .map(|(file, quoting)| Named {
            named: &file.staged,
            dest: &file.dest,
            content: &file.state.content,
            quoting,
        })
        .collect();
    let mut message = failure.to_string();
    message.push_str(&rejected::line_notes(&message, &named, "new"));
    if let Some(kept) = kept {
        message.push_str(&format!(
            "; the rejected files are kept in {}",
            kept.display()
        ));
    }
    for p in planned {
        message = render::redact(&message, p.template, &p.reads);
    }
    let dests: Vec<String> = stage
        .files()
        .iter()
        .map(|f| f.dest.display().to_string())
        .collect();
    UnitError::Check {
        dests: dests.join(", "),
        message,
    }
}

impl Planned<'_> {
    fn as_committed(&self) -> Committed {
        Committed {
            dest: self.dest.clone(),
            state: Fingerprint::of(&self.want),
        }
    }

    fn quoting(&self) -> Quoting {
        Quoting {
            never: self.template.secrets.all,
            secrets: render::secret_texts(self.template, &self.reads),
        }
    }
}

/// The result of one batch.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Units processed, with their outcome or error, in batch order.
    pub units: Vec<(String, Result<Outcome, UnitError>)>,
    /// Reload actions that failed, with the units that wanted them.
    pub failed_reloads: Vec<(ReloadKey, Vec<String>, ReloadFailure)>,
    /// Reload actions that succeeded.
    pub reloaded: Vec<ReloadKey>,
}

impl BatchReport {
    pub fn failures(&self) -> usize {
        self.units.iter().filter(|(_, r)| r.is_err()).count() + self.failed_reloads.len()
    }

    /// Units whose files were written.
    pub fn changed(&self) -> usize {
        self.units
            .iter()
            .filter(|(_, r)| matches!(r, Ok(Outcome::Committed { .. })))
            .count()
    }

    /// Units whose files would change (`--noop`).
    pub fn would_change(&self) -> usize {
        self.units
            .iter()
            .filter(|(_, r)| matches!(r, Ok(Outcome::WouldChange)))
            .count()
    }
}

/// One reload of one daemon: units with equal reload settings share it,
/// except that a reload which names the destination (`{{dest}}` in
/// `reload_cmd`, `bird_configure = "file"`) is one per destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReloadKey {
    pub action: Reload,
    /// The destination the action is told about.
    pub dest: PathBuf,
}

impl ReloadKey {
    /// The reload of `unit`, or `None` when it reloads nothing.
    pub fn of(unit: &Unit) -> Option<ReloadKey> {
        if unit.reload.is_none() {
            return None;
        }
        let dest = unit.templates[0].dest.clone();
        Some(ReloadKey {
            dest: if uses_dest(&unit.reload) {
                dest
            } else {
                // Any member's destination would do; the key must not differ.
                PathBuf::new()
            },
            action: unit.reload.clone(),
        })
    }
}

/// Whether a reload action is told the destination's path.
fn uses_dest(action: &Reload) -> bool {
    let file = action.bird_socket.is_some()
        && action.bird_configure == crate::resource::BirdConfigure::File;
    let cmd = action.cmd.as_deref().is_some_and(|c| {
        let expanded = crate::command::expand(c, Path::new("\0"), Path::new("\0"));
        expanded != c
    });
    file || cmd
}

/// What one render may take: the global settings, which a unit may lower
/// or raise for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    pub timeout: Duration,
    pub max_output: u64,
}

impl Default for RenderLimits {
    fn default() -> Self {
        let limits = crate::settings::Limits::default();
        RenderLimits {
            timeout: limits.render_timeout,
            max_output: limits.max_output,
        }
    }
}

/// Everything a unit's pipeline needs; cheap to clone, so each resource
/// worker owns one.
#[derive(Clone)]
pub struct Pipeline {
    pub renderer: Arc<Renderer>,
    pub options: Options,
    pub metrics: Metrics,
    pub limits: RenderLimits,
    /// Attributes to keep where a template sets none, by destination; else
    /// the destination's current ones are kept.
    pub keep: Arc<HashMap<PathBuf, Attributes>>,
    /// Renders abandoned at their time limit, by unit, with a flag their
    /// thread sets when it ends: a unit gets no second render thread while
    /// one it abandoned still runs, so runaway renders cannot pile up.
    pub abandoned: Abandoned,
    /// Commits waiting for the daemon's verdict, and rejected file sets.
    pub rejections: Rejections,
    /// See [`crate::config::Config::daemon_files`].
    pub daemon_files: Arc<crate::config::DaemonFiles>,
}

/// See [`Pipeline::abandoned`].
pub type Abandoned = Arc<std::sync::Mutex<HashMap<String, Arc<AtomicBool>>>>;

/// A file's mode and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attributes {
    pub fn of_fingerprint(state: &Fingerprint) -> Attributes {
        Attributes {
            mode: state.mode,
            uid: state.uid,
            gid: state.gid,
        }
    }

    pub fn of(state: &FileState) -> Attributes {
        Attributes {
            mode: state.mode,
            uid: state.uid,
            gid: state.gid,
        }
    }
}

impl Pipeline {
    pub fn new(renderer: Arc<Renderer>, options: Options, metrics: Metrics) -> Pipeline {
        Pipeline {
            renderer,
            options,
            metrics,
            limits: RenderLimits::default(),
            keep: Arc::default(),
            abandoned: Abandoned::default(),
            rejections: Rejections::default(),
            daemon_files: Arc::default(),
        }
    }

    /// Processes `units` against one store snapshot, then runs each
    /// distinct reload once (one-shot and polling modes; watch mode runs
    /// units on their own workers and calls [`Pipeline::reload`]).
    pub async fn run_batch(&self, units: &[&Unit], store: &Arc<Store>) -> BatchReport {
        let mut report = BatchReport::default();
        let mut reloads: Vec<(ReloadKey, Vec<String>)> = Vec::new();
        for unit in units {
            let span = tracing::info_span!("resource", resource = %unit.name);
            let result = self.process(unit, store).instrument(span).await;
            match (&result, ReloadKey::of(unit)) {
                (Ok(outcome), Some(key)) if outcome.needs_reload() && self.reloads() => {
                    match reloads.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, names)) => names.push(unit.name.clone()),
                        None => reloads.push((key, vec![unit.name.clone()])),
                    }
                }
                (Ok(_), _) => self.metrics.unit_success(&unit.name),
                (Err(e), _) => log_unit_error(&unit.name, e),
            }
            report.units.push((unit.name.clone(), result));
        }
        for (key, names) in reloads {
            match self.reload(&key, &names).await {
                Ok(()) => report.reloaded.push(key),
                Err(e) => report.failed_reloads.push((key, names, e)),
            }
        }
        let (total, failed) = (report.units.len(), report.failures());
        let failed_part = if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        };
        let plural = if total == 1 { "" } else { "s" };
        if self.options.noop {
            let would = report.would_change();
            tracing::info!(
                resources = total,
                would_change = would,
                failed,
                "{total} resource{plural}, {would} would change{failed_part}"
            );
        } else {
            let changed = report.changed();
            tracing::info!(
                resources = total,
                changed,
                failed,
                "{total} resource{plural}, {changed} changed{failed_part}"
            );
        }
        report
    }

    /// Runs one reload for `names`, counts it, and on success records each
    /// unit's last success (a unit has succeeded once its daemon took it).
    ///
    /// When BIRD rejects the configuration (8002), each resource's files
    /// are rolled back to what its commits replaced (`on_reject =
    /// "rollback"`, the default) or left in place (`"keep"`).
    pub async fn reload(&self, key: &ReloadKey, names: &[String]) -> Result<(), ReloadFailure> {
        let resources = names.join(",");
        let span = tracing::info_span!("reload", resources = %resources);
        let snapshot = self.rejections.pending(names);
        let daemon_files: Vec<(&Path, bool)> = names
            .iter()
            .filter_map(|n| self.daemon_files.get(n))
            .map(|(dest, follow)| (dest.as_path(), *follow))
            .collect();
        let result = reload::reload(&key.action, &key.dest, &daemon_files, names)
            .instrument(span)
            .await;
        let result = match result {
            Ok(()) => {
                self.rejections.accepted(&snapshot);
                Ok(())
            }
            Err(ReloadFailure::Bird(error @ BirdError::Config { .. })) => Err(
                ReloadFailure::Rejected(Box::new(self.rejected(error, names, &snapshot))),
            ),
            Err(e) => Err(e),
        };
        for name in names {
            self.metrics
                .reload(name, reload::method(&key.action), result.is_ok());
            if result.is_ok() {
                self.metrics.unit_success(name);
            }
        }
        if let Err(e) = &result {
            for name in names {
                tracing::error!(resource = %name, resources = %resources, error = %e, "{name}: reload failed");
            }
        }
        result
    }

    /// BIRD rejected what `names` committed: per resource, puts the
    /// previous files back or leaves them, counts it, and says so.
    fn rejected(&self, error: BirdError, names: &[String], snapshot: &[Pending]) -> Rejection {
        // BIRD's message may quote a value, and a value may be secret.
        let secrets: Vec<String> = snapshot
            .iter()
            .flat_map(|p| &p.members)
            .flat_map(|m| m.quoting.secrets.iter().cloned())
            .collect();
        let error = match error {
            BirdError::Config {
                socket,
                code,
                message,
            } => BirdError::Config {
                socket,
                code,
                message: render::redact_texts(&message, &secrets),
            },
            other => other,
        };
        let message = error.to_string();
        let named: Vec<Named> = snapshot
            .iter()
            .flat_map(|p| &p.members)
            .map(|m| Named {
                named: &m.dest,
                dest: &m.dest,
                content: &m.current.content,
                quoting: &m.quoting,
            })
            .collect();
        let mut detail = rejected::line_notes(&message, &named, "rejected");
        let mut rolled_back = Vec::new();
        let mut restored = Vec::new();
        for name in names {
            let pending = snapshot.iter().find(|p| p.unit == *name);
            let what = match pending {
                Some(p) if p.policy == OnReject::Rollback => match self.rejections.roll_back(p) {
                    Rollback::Done { restored: files } => {
                        let files_of: Vec<(&Path, &[u8])> = p
                            .members
                            .iter()
                            .map(|m| (m.dest.as_path(), m.current.content.as_slice()))
                            .collect();
                        let kept = self
                            .rejections
                            .keep(name, &files_of)
                            .map(|d| format!(", the rejected ones are kept in {}", d.display()))
                            .unwrap_or_default();
                        self.metrics.rejected_config(name, "rollback");
                        rolled_back.push(name.clone());
                        restored.extend(files);
                        format!("the previous files are back in place (BIRD keeps running its old configuration){kept}; not tried again until its data or templates change")
                    }
                    Rollback::Superseded => {
                        "committed again since; the newer files wait for their own reload".into()
                    }
                    Rollback::Failed(e) => {
                        self.metrics.rejected_config(name, "keep");
                        format!("the previous files could not be put back ({e}); the rejected files stay and the reload is retried")
                    }
                },
                Some(_) => {
                    self.metrics.rejected_config(name, "keep");
                    "the rejected files stay (on_reject = \"keep\"); the reload is retried".into()
                }
                None => {
                    self.metrics.rejected_config(name, "keep");
                    "no record of the files its commit replaced (committed before a restart); the rejected files stay and the reload is retried".into()
                }
            };
            detail.push_str(&format!("; {name}: {what}"));
        }
        Rejection {
            error,
            detail,
            rolled_back,
            restored,
        }
    }

    /// Whether this run reloads anything at all.
    pub fn reloads(&self) -> bool {
        self.options.reloads()
    }

    /// Renders, compares, stages, checks and commits one unit.
    pub async fn process(&self, unit: &Unit, store: &Arc<Store>) -> Result<Outcome, UnitError> {
        let outcome = self.run_stages(unit, store).await;
        // The next success cleans up a rejected set kept for inspection.
        if matches!(
            outcome,
            Ok(Outcome::Unchanged { .. } | Outcome::Committed { .. })
        ) {
            self.rejections.clear(&unit.name);
        }
        outcome
    }

    async fn run_stages(&self, unit: &Unit, store: &Arc<Store>) -> Result<Outcome, UnitError> {
        let started = Instant::now();
        let planned = match self.render(unit, store).await {
            Ok(rendered) => self.plan(unit, rendered),
            Err(e) => Err(e),
        };
        self.metrics
            .render(&unit.name, planned.is_ok(), started.elapsed());
        let planned = planned?;
        let differences: Vec<Difference> = planned
            .iter()
            .map(|p| compare::difference(p.have.as_ref(), &p.want))
            .collect();
        let changed: Vec<bool> = differences.iter().map(Difference::any).collect();
        let files: Vec<Committed> = planned.iter().map(Planned::as_committed).collect();
        let reload = differences.iter().any(|d| d.missing || d.content);
        if !changed.contains(&true) {
            tracing::debug!(resource = %unit.name, "unchanged");
            return Ok(Outcome::Unchanged { files });
        }
        if self.options.noop {
            self.report_noop(unit, &planned, &differences);
            return Ok(Outcome::WouldChange);
        }
        let fingerprints: Vec<(PathBuf, Fingerprint)> =
            files.iter().map(|f| (f.dest.clone(), f.state)).collect();
        if self.rejections.still_refused(&unit.name, &fingerprints) {
            let kept = self
                .rejections
                .dir_of(&unit.name)
                .filter(|d| d.exists())
                .map(|d| format!(" (kept in {})", d.display()))
                .unwrap_or_default();
            return Err(UnitError::StillRejected { kept });
        }
        let mut members = Vec::with_capacity(planned.len());
        for p in &planned {
            // Only --noop plans a destination whose directory is missing.
            let target = p.target.clone().ok_or_else(|| {
                UnitError::Destination(pinned::PathError::Io {
                    path: p.dest.clone(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            })?;
            members.push((target, p.want.clone()));
        }
        let stage = Stage::create(&unit.name, members, self.options.keep_stage)?;
        if !self.options.sync_only {
            if let Err(failure) = check::check(unit, &stage).await {
                self.metrics.check_failure(&unit.name);
                let files: Vec<(&Path, &[u8])> = stage
                    .files()
                    .iter()
                    .map(|f| (f.dest.as_path(), f.state.content.as_slice()))
                    .collect();
                let kept = self.rejections.keep(&unit.name, &files);
                return Err(check_error(&stage, &failure, &planned, kept.as_deref()));
            }
        }
        // What the commit replaces, so that a configuration BIRD rejects can
        // be put back.
        let pending = (unit.on_reject.is_some() && reload && self.reloads()).then(|| Pending {
            unit: unit.name.clone(),
            policy: unit.on_reject.unwrap_or_default(),
            members: planned
                .iter()
                .zip(stage.files())
                .zip(&changed)
                .map(|((p, file), changed)| rejected::Member {
                    dest: file.dest.clone(),
                    target: file.target.clone(),
                    previous: changed.then(|| p.have.clone()),
                    current: p.want.clone(),
                    quoting: p.quoting(),
                })
                .collect(),
        });
        // No await from here to the end of the commits: a shutdown that
        // drops this future can never stop between two of them.
        let mut written = Vec::new();
        for (file, changed) in stage.files().iter().zip(&changed) {
            if !changed {
                continue;
            }
            let method = commit::commit(file)?;
            tracing::info!(
                dest = %file.dest.display(),
                resource = %unit.name,
                method = ?method,
                duration_ms = started.elapsed().as_millis() as u64,
                "committed"
            );
            written.push(file.dest.clone());
        }
        if let Some(pending) = pending {
            self.rejections.committed(pending);
        }
        self.metrics.commit(&unit.name);
        Ok(Outcome::Committed {
            written,
            files,
            reload,
        })
    }

    /// Renders every member on a thread of its own, within the unit's time
    /// and output limits. A render past its time is abandoned: its thread is
    /// told to stop at its next write and nobody waits for it.
    async fn render(&self, unit: &Unit, store: &Arc<Store>) -> Result<Vec<Rendered>, UnitError> {
        let timeout = unit.render_timeout.unwrap_or(self.limits.timeout);
        let max_output = unit.max_output.unwrap_or(self.limits.max_output);
        let max_output = usize::try_from(max_output).unwrap_or(usize::MAX);
        {
            let mut abandoned = self.abandoned.lock().unwrap_or_else(|p| p.into_inner());
            match abandoned.get(&unit.name) {
                Some(ended) if !ended.load(Ordering::Acquire) => {
                    return Err(UnitError::RenderLimit {
                        template: unit.templates[0].src.clone(),
                        limit: "time limit (a render abandoned earlier is still running)".into(),
                    });
                }
                Some(_) => {
                    abandoned.remove(&unit.name);
                }
                None => {}
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = {
            let (renderer, store, cancel) = (self.renderer.clone(), store.clone(), cancel.clone());
            let ended = ended.clone();
            let templates = unit.templates.clone();
            move || {
                let rendered: Result<Vec<Rendered>, UnitError> = templates
                    .iter()
                    .map(|t| renderer.render_limited(t, &store, max_output, &cancel))
                    .collect();
                ended.store(true, Ordering::Release);
                let _ = tx.send(rendered);
                // Off the change's path, once the output is handed on.
                render::free_render_values();
                give_back_free_memory();
            }
        };
        let failed = |message: String| UnitError::Render {
            template: unit.templates[0].src.clone(),
            line: None,
            message,
        };
        // A plain thread, not spawn_blocking: the runtime waits for blocking
        // tasks at exit, and an abandoned render must not hold up shutdown.
        std::thread::Builder::new()
            .name(format!("render {}", unit.name))
            .spawn(job)
            .map_err(|e| failed(format!("cannot start a render thread: {e}")))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(rendered)) => rendered,
            Ok(Err(_)) => Err(failed("the render thread panicked".into())),
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                self.abandoned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(unit.name.clone(), ended);
                Err(UnitError::RenderLimit {
                    template: unit.templates[0].src.clone(),
                    limit: format!("time limit of {timeout:?}"),
                })
            }
        }
    }

    /// Works out what every member should look like.
    fn plan<'u>(
        &self,
        unit: &'u Unit,
        rendered: Vec<Rendered>,
    ) -> Result<Vec<Planned<'u>>, UnitError> {
        let mut planned = Vec::with_capacity(unit.templates.len());
        for (template, rendered) in unit.templates.iter().zip(rendered) {
            // Never through a link an unprivileged user could have planted.
            let (target, have, dest) =
                match pinned::Target::resolve(&template.dest, template.follow_symlink) {
                    Ok(target) => {
                        let have = compare::read(&target)?;
                        let dest = target.path.clone();
                        (Some(target), have, dest)
                    }
                    // A dry run on a machine without the directory: the
                    // commit would create the file (once the directory
                    // exists). Links are still refused above.
                    Err(e) if e.is_not_found() && self.options.noop => {
                        (None, None, template.dest.clone())
                    }
                    Err(e) => return Err(e.into()),
                };
            // Unset attributes keep what confera set before, else what the
            // destination has (as confd does), else 0644 and our own ids.
            let kept = self
                .keep
                .get(&dest)
                .copied()
                .or(have.as_ref().map(Attributes::of));
            let want = FileState {
                content: rendered.text.into_bytes(),
                mode: template.mode.or(kept.map(|k| k.mode)).unwrap_or(0o644),
                uid: template
                    .uid
                    .or(kept.map(|k| k.uid))
                    .unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
                gid: template
                    .gid
                    .or(kept.map(|k| k.gid))
                    .unwrap_or_else(|| nix::unistd::getegid().as_raw()),
            };
            planned.push(Planned {
                template,
                reads: rendered.reads,
                dest,
                target,
                have,
                want,
            });
        }
        Ok(planned)
    }

    fn report_noop(&self, unit: &Unit, planned: &[Planned], differences: &[Difference]) {
        let mut stdout = std::io::stdout().lock();
        for (p, difference) in planned.iter().zip(differences).filter(|(_, d)| d.any()) {
            let mut what = difference.describe();
            if p.target.is_none() {
                what.push_str(" (its directory does not exist yet)");
            }
            tracing::info!(dest = %p.dest.display(), resource = %unit.name, differs = %what, "would change");
            if self.options.diff {
                let diff = if p.template.secrets.all {
                    format!(
                        "--- {0}\n+++ {0}\n(secret: {what} differs, not shown)\n",
                        p.dest.display()
                    )
                } else {
                    let diff = compare::unified_diff(&p.dest, p.have.as_ref(), &p.want);
                    self.masked_diff(&diff, p)
                };
                // stdout carries only what was asked for; a closed pipe is not our error.
                let _ = stdout.write_all(diff.as_bytes());
            }
        }
        let _ = stdout.flush();
    }

    /// A diff with secret values masked: in new and unchanged lines each
    /// secret text is `<redacted>`; an old line whose template line may
    /// print a secret is masked whole (see [`mask`]).
    fn masked_diff(&self, diff: &str, p: &Planned) -> String {
        if !p.template.secrets.any() {
            return diff.to_string();
        }
        let secrets = render::secret_texts(p.template, &p.reads);
        let new = String::from_utf8_lossy(&p.want.content);
        let sources = self.renderer.sources_of(&p.template.src);
        let mask = mask::Mask::new(&sources, &new, &secrets);
        let mut out = String::with_capacity(diff.len());
        for (index, line) in diff.lines().enumerate() {
            // The `---`/`+++` header is the first two lines.
            let is_header = index < 2;
            match line.strip_prefix('-') {
                Some(old) if !is_header && mask.old_line_may_hold_secret(old) => {
                    out.push_str("-<redacted>");
                }
                _ => out.push_str(&render::redact_texts(line, &secrets)),
            }
            out.push('\n');
        }
        out
    }
}

/// Returns the heap's free pages to the system. A render of 20,000 keys
/// builds and frees ~10 MB of small values; glibc returns memory only from
/// the top of a heap, so a few live chunks above them kept a watcher ~8 MB
/// larger than it needs to be. Runs on the render thread after its output
/// is handed on; trimming takes well under a millisecond.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it is thread-safe.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Logs a unit's failure: the resource and what failed, for a person, and
/// the whole error.
pub fn log_unit_error(name: &str, e: &UnitError) {
    let what = e.what();
    tracing::error!(resource = %name, error = %e, "{name}: {what}");
}
