//! The per-unit pipeline, render → compare → stage → check → commit, and the
//! batch around it: every affected unit is committed first, then each
//! distinct reload action runs once.
//!
//! Invariants kept here: nothing is written or reloaded when no output
//! changed; a failed render or check leaves every destination untouched;
//! one failing unit never stops the others.

pub mod check;
pub mod commit;
pub mod compare;
pub mod pinned;
pub mod stage;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::error::{CheckFailure, ReloadFailure, UnitError};
use crate::reload;
use crate::render::{self, KeyRead, Rendered, Renderer};
use crate::resource::{Reload, Template, Unit};
use crate::store::Store;
use crate::telemetry::metrics::Metrics;
use compare::{FileState, Fingerprint};
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
    target: pinned::Target,
    have: Option<FileState>,
    want: FileState,
}

/// A check failure whose message names the destinations instead of their
/// staged copies, which are gone by the time anyone reads it.
/// A checker may quote the file it rejects, so the message is redacted
/// like a diff.
fn check_error(stage: &Stage, failure: &CheckFailure, planned: &[Planned]) -> UnitError {
    let mut message = failure.to_string();
    for p in planned {
        message = render::redact(&message, p.template, &p.reads);
    }
    for file in stage.files() {
        message = message.replace(
            &file.staged.display().to_string(),
            &file.dest.display().to_string(),
        );
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

/// Redacts secret values from a diff. The old file's secret values are not
/// known (they were rendered from older data), so with secret keys every
/// removed line is hidden.
fn redact_diff(diff: &str, p: &Planned) -> String {
    let diff = render::redact(diff, p.template, &p.reads);
    if !p.template.secrets.any() {
        return diff;
    }
    diff.lines()
        .map(|line| {
            if line.starts_with('-') && !line.starts_with("---") {
                "-<redacted>\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

impl Planned<'_> {
    fn as_committed(&self) -> Committed {
        Committed {
            dest: self.dest.clone(),
            state: Fingerprint::of(&self.want),
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
                (Err(e), _) => tracing::error!(resource = %unit.name, error = %e, "unit failed"),
            }
            report.units.push((unit.name.clone(), result));
        }
        for (key, names) in reloads {
            match self.reload(&key, &names).await {
                Ok(()) => report.reloaded.push(key),
                Err(e) => report.failed_reloads.push((key, names, e)),
            }
        }
        report
    }

    /// Runs one reload for `names`, counts it, and on success records each
    /// unit's last success (a unit has succeeded once its daemon took it).
    pub async fn reload(&self, key: &ReloadKey, names: &[String]) -> Result<(), ReloadFailure> {
        let span = tracing::info_span!("reload", resources = %names.join(","));
        let result = reload::reload(&key.action, &key.dest)
            .instrument(span)
            .await;
        for name in names {
            self.metrics
                .reload(name, reload::method(&key.action), result.is_ok());
            if result.is_ok() {
                self.metrics.unit_success(name);
            }
        }
        if let Err(e) = &result {
            tracing::error!(resources = %names.join(","), error = %e, "reload failed");
        }
        result
    }

    /// Whether this run reloads anything at all.
    pub fn reloads(&self) -> bool {
        !self.options.noop && !self.options.sync_only
    }

    /// Renders, compares, stages, checks and commits one unit.
    pub async fn process(&self, unit: &Unit, store: &Arc<Store>) -> Result<Outcome, UnitError> {
        let started = Instant::now();
        let planned = match self.render(unit, store).await {
            Ok(rendered) => self.plan(unit, rendered),
            Err(e) => Err(e),
        };
        self.metrics
            .render(&unit.name, planned.is_ok(), started.elapsed());
        let planned = planned?;
        let changed: Vec<bool> = planned
            .iter()
            .map(|p| compare::difference(p.have.as_ref(), &p.want).any())
            .collect();
        let files: Vec<Committed> = planned.iter().map(Planned::as_committed).collect();
        let reload = planned.iter().any(|p| {
            let d = compare::difference(p.have.as_ref(), &p.want);
            d.missing || d.content
        });
        if !changed.contains(&true) {
            tracing::debug!("unchanged");
            return Ok(Outcome::Unchanged { files });
        }
        if self.options.noop {
            self.report_noop(&planned, &changed);
            return Ok(Outcome::WouldChange);
        }
        let members = planned
            .iter()
            .map(|p| (p.target.clone(), p.want.clone()))
            .collect();
        let stage = Stage::create(&unit.name, members, self.options.keep_stage)?;
        if !self.options.sync_only {
            if let Err(failure) = check::check(unit, &stage).await {
                self.metrics.check_failure(&unit.name);
                return Err(check_error(&stage, &failure, &planned));
            }
        }
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
                method = ?method,
                duration_ms = started.elapsed().as_millis() as u64,
                "committed"
            );
            written.push(file.dest.clone());
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
            let target = pinned::Target::resolve(&template.dest, template.follow_symlink)?;
            let have = compare::read(&target)?;
            let dest = target.path.clone();
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

    fn report_noop(&self, planned: &[Planned], changed: &[bool]) {
        let mut stdout = std::io::stdout().lock();
        for (p, _) in planned.iter().zip(changed).filter(|(_, c)| **c) {
            let what = compare::difference(p.have.as_ref(), &p.want).describe();
            tracing::info!(dest = %p.dest.display(), differs = %what, "would change");
            if self.options.diff {
                let diff = if p.template.secrets.all {
                    format!(
                        "--- {0}\n+++ {0}\n(secret: {what} differs, not shown)\n",
                        p.dest.display()
                    )
                } else {
                    let diff = compare::unified_diff(&p.dest, p.have.as_ref(), &p.want);
                    redact_diff(&diff, p)
                };
                // stdout carries only what was asked for; a closed pipe is not our error.
                let _ = stdout.write_all(diff.as_bytes());
            }
        }
        let _ = stdout.flush();
    }
}
