//! confera renders daemon configuration files from key-value data.
//!
//! Pipeline: sources → store → per resource: render → stage → compare → check
//! → commit → reload. See ARCHITECTURE.md for the code map and invariants.

pub mod bird;
pub mod command;
pub mod error;
pub mod render;
pub mod source;
pub mod store;
