//! confera renders daemon configuration files from key-value data.
//!
//! Pipeline: sources → store → per unit: render → compare → stage → check
//! → commit → reload. See ARCHITECTURE.md for the code map and invariants.

pub mod bird;
pub mod check;
pub mod cli;
pub mod command;
pub mod commit;
pub mod compare;
pub mod debounce;
pub mod duration;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod notify_systemd;
pub mod pipeline;
pub mod process;
pub mod reload;
pub mod render;
pub mod resource;
pub mod run;
pub mod settings;
pub mod source;
pub mod stage;
pub mod store;
pub mod watch;

pub use run::{run, shutdown_signal, RunStatus};
