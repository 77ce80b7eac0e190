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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::error::{CheckFailure, ReloadFailure, UnitError};
use crate::reload;
use crate::render::{self, KeyRead, Renderer};
use crate::resource::{Reload, Template, Unit};
use crate::store::Store;
use crate::telemetry::metrics::Metrics;
use compare::FileState;
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
    /// state as it now is.
    Committed {
        written: Vec<PathBuf>,
        files: Vec<Committed>,
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
}

/// A destination (the file a commit writes, see `pinned::Target`) and the
/// state a render gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub dest: PathBuf,
    pub state: FileState,
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
            state: self.want.clone(),
        }
    }
}

/// The result of one batch.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Units processed, with their outcome or error, in batch order.
    pub units: Vec<(String, Result<Outcome, UnitError>)>,
    /// Reload actions that failed, with the units that wanted them.
    pub failed_reloads: Vec<(Reload, Vec<String>, ReloadFailure)>,
    /// Reload actions that succeeded.
    pub reloaded: Vec<Reload>,
}

impl BatchReport {
    pub fn failures(&self) -> usize {
        self.units.iter().filter(|(_, r)| r.is_err()).count() + self.failed_reloads.len()
    }
}

pub struct Pipeline<'a> {
    pub renderer: &'a Renderer,
    pub options: Options,
    pub metrics: &'a Metrics,
    /// Attributes to keep where a template sets none, by destination; else
    /// the destination's current ones are kept.
    pub keep: Option<&'a KeepAttributes<'a>>,
}

/// Looks up the attributes to keep for a destination.
pub type KeepAttributes<'a> = dyn Fn(&Path) -> Option<Attributes> + 'a;

/// A file's mode and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attributes {
    pub fn of(state: &FileState) -> Attributes {
        Attributes {
            mode: state.mode,
            uid: state.uid,
            gid: state.gid,
        }
    }
}

impl Pipeline<'_> {
    /// Processes `units` against one store snapshot, then reloads.
    pub async fn run_batch(&self, units: &[&Unit], store: &Arc<Store>) -> BatchReport {
        let mut report = BatchReport::default();
        let mut reloads: Vec<(Reload, PathBuf, Vec<String>)> = Vec::new();
        for unit in units {
            let span = tracing::info_span!("resource", resource = %unit.name);
            let result = self.process(unit, store).instrument(span).await;
            if result.is_ok() {
                self.metrics.unit_success(&unit.name);
            }
            match &result {
                Ok(Outcome::Committed { .. }) if self.reloads() && !unit.reload.is_none() => {
                    match reloads.iter_mut().find(|(r, _, _)| *r == unit.reload) {
                        Some((_, _, names)) => names.push(unit.name.clone()),
                        None => reloads.push((
                            unit.reload.clone(),
                            unit.templates[0].dest.clone(),
                            vec![unit.name.clone()],
                        )),
                    }
                }
                Err(e) => tracing::error!(resource = %unit.name, error = %e, "unit failed"),
                _ => {}
            }
            report.units.push((unit.name.clone(), result));
        }
        for (action, dest, names) in reloads {
            let span = tracing::info_span!("reload", resources = %names.join(","));
            let result = reload::reload(&action, &dest).instrument(span).await;
            for name in &names {
                self.metrics
                    .reload(name, reload::method(&action), result.is_ok());
            }
            match result {
                Ok(()) => report.reloaded.push(action),
                Err(e) => {
                    tracing::error!(resources = %names.join(","), error = %e, "reload failed");
                    report.failed_reloads.push((action, names, e));
                }
            }
        }
        report
    }

    fn reloads(&self) -> bool {
        !self.options.noop && !self.options.sync_only
    }

    /// Renders, compares, stages, checks and commits one unit.
    pub async fn process(&self, unit: &Unit, store: &Arc<Store>) -> Result<Outcome, UnitError> {
        let started = Instant::now();
        let planned = self.plan(unit, store);
        self.metrics
            .render(&unit.name, planned.is_ok(), started.elapsed());
        let planned = planned?;
        let changed: Vec<bool> = planned
            .iter()
            .map(|p| compare::difference(p.have.as_ref(), &p.want).any())
            .collect();
        let files: Vec<Committed> = planned.iter().map(Planned::as_committed).collect();
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
        Ok(Outcome::Committed { written, files })
    }

    /// Renders every member and works out what it should look like.
    fn plan<'u>(&self, unit: &'u Unit, store: &Arc<Store>) -> Result<Vec<Planned<'u>>, UnitError> {
        let mut planned = Vec::with_capacity(unit.templates.len());
        for template in &unit.templates {
            let rendered = self.renderer.render(template, store)?;
            // Never through a link an unprivileged user could have planted.
            let target = pinned::Target::resolve(&template.dest, template.follow_symlink)?;
            let have = compare::read(&target)?;
            let dest = target.path.clone();
            // Unset attributes keep what confera set before, else what the
            // destination has (as confd does), else 0644 and our own ids.
            let kept = self
                .keep
                .and_then(|keep| keep(&dest))
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
