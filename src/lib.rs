//! confera renders daemon configuration files from key-value data.
//!
//! Pipeline: sources → store → per unit: render → compare → stage → check
//! → commit → reload. See ARCHITECTURE.md for the code map and invariants.

pub mod audit;
pub mod cli;
pub mod command;
pub mod config;
pub mod duration;
pub mod error;
pub mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod pattern;
pub mod pipeline;
pub mod reload;
pub mod render;
pub mod resource;
pub mod run;
pub mod settings;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod watch;

pub use run::{run, shutdown_signal};

/// How a run ended, when it ended without a configuration error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Success,
    /// At least one unit or reload failed (exit 1).
    Failed,
    /// `--onetime --noop --exit-code`: nothing failed, and some file would
    /// change (exit 3).
    WouldChange,
    /// Exec mode: the child's exit status, as a shell gives it (128 + N
    /// when signal N ended it); confera exits with it.
    Child(u8),
}
