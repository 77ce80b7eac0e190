//! The two tiers of errors. A [`ConfigError`] is found before rendering and
//! ends the run (exit 2). A [`UnitError`] belongs to one unit: it is logged
//! and counted, and the other units go on (exit 1 in `--onetime`).
//!
//! Variants carry the path, key or line they are about; lower layers add
//! context and never print.

use std::path::PathBuf;

use thiserror::Error;

use crate::command::CommandError;
use crate::reload::bird::BirdError;
use crate::reload::process::ProcessError;

/// A problem with the configuration or the backend found before rendering.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{dir}: no template resources (*.toml) found", dir = .dir.display())]
    NoResources { dir: PathBuf },

    #[error("{path}: {message}", path = .path.display())]
    Resource { path: PathBuf, message: String },

    #[error("{path}: field `{field}`: {message}", path = .path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error("template {template}{at}: {message}", at = line_suffix(*.line))]
    Template {
        template: String,
        line: Option<usize>,
        message: String,
    },

    #[error("{0}")]
    Settings(String),

    #[error(transparent)]
    Source(#[from] SourceError),
}

impl ConfigError {
    pub fn field(path: &std::path::Path, field: &str, message: impl Into<String>) -> Self {
        ConfigError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A backend that cannot give a snapshot.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("etcd at {endpoints}: {message}")]
    Etcd { endpoints: String, message: String },

    #[error("data file {path}: {message}", path = .path.display())]
    DataFile { path: PathBuf, message: String },
}

/// A failure of one unit; the others go on.
#[derive(Debug, Error)]
pub enum UnitError {
    #[error("render {template}{at}: {message}", at = line_suffix(*.line))]
    Render {
        template: String,
        line: Option<usize>,
        message: String,
    },

    /// A destination that cannot be reached without following a link an
    /// unprivileged user could have planted, or that is not a regular file.
    #[error("destination {0}")]
    Destination(#[from] crate::pipeline::pinned::PathError),

    /// A render stopped at its time or output size limit; the resource
    /// stays failed until its inputs or templates change.
    #[error("render {template}: abandoned at its {limit}")]
    RenderLimit { template: String, limit: String },

    #[error("staging {path}: {source}", path = .path.display())]
    Stage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The check's message names destinations, not the deleted staging copies.
    #[error("check failed, nothing written to {dests}: {message}")]
    Check { dests: String, message: String },

    #[error("committing {path}: {source}", path = .path.display())]
    Commit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("reload failed: {0}")]
    Reload(#[from] ReloadFailure),

    /// The render is the file set BIRD rejected last, which was rolled
    /// back: it is not committed again until the inputs change.
    #[error("not committed: BIRD rejected this same configuration and it was rolled back{kept}; it is not tried again until the resource's data or templates change")]
    StillRejected { kept: String },
}

impl UnitError {
    /// What failed, for a person: `render failed`, `check failed`, ...
    pub fn what(&self) -> &'static str {
        match self {
            UnitError::Render { .. } => "render failed",
            UnitError::RenderLimit { .. } => "render abandoned at its limit",
            UnitError::Destination(_) => "destination refused",
            UnitError::Stage { .. } => "staging failed",
            UnitError::Check { .. } => "check failed",
            UnitError::Commit { .. } => "commit failed",
            UnitError::Reload(_) => "reload failed",
            UnitError::StillRejected { .. } => "configuration still rejected by BIRD",
        }
    }
}

/// Why a check did not pass.
#[derive(Debug, Error)]
pub enum CheckFailure {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Bird(#[from] BirdError),
}

/// Why a reload did not happen or did not take.
#[derive(Debug, Error)]
pub enum ReloadFailure {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Bird(#[from] BirdError),
    /// BIRD answered that it cannot use the committed configuration (8002);
    /// what was done about it per resource (`on_reject`).
    #[error("{}{}", .0.error, .0.detail)]
    Rejected(Box<Rejection>),
}

/// A committed configuration the daemon rejected, and what was done.
#[derive(Debug)]
pub struct Rejection {
    pub error: BirdError,
    /// The rejected lines, and per resource what was done, appended to
    /// BIRD's message.
    pub detail: String,
    /// Resources whose previous files were put back: nothing is owed.
    pub rolled_back: Vec<String>,
    /// Destinations put back, with their state now (`None`: removed again).
    pub restored: Vec<(PathBuf, Option<crate::pipeline::compare::Fingerprint>)>,
}

impl ReloadFailure {
    /// Of `units`, those whose reload is still owed after this failure:
    /// all of them, except after a rejection those rolled back.
    pub fn still_owed(&self, units: &[String]) -> Vec<String> {
        match self {
            ReloadFailure::Rejected(r) => units
                .iter()
                .filter(|u| !r.rolled_back.contains(u))
                .cloned()
                .collect(),
            _ => units.to_vec(),
        }
    }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}
