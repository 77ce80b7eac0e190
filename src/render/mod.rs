//! Rendering: Tera templates over a store snapshot. Render never touches the
//! filesystem and never runs a command.

pub mod filters;
