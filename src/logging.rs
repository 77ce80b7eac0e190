//! Logging setup: tracing to stderr, as text for people or JSON for machines.
//! stdout stays free for what the user asked for (diffs).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. `level` is a level name or a full
/// tracing filter directive.
pub fn init(level: &str, format: LogFormat) {
    // A bare level applies to confera; dependencies (h2, tonic) stay at warn.
    let directive = match level {
        "error" | "warn" | "info" | "debug" | "trace" => format!("warn,confera={level}"),
        other => other.to_string(),
    };
    let filter =
        EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("warn,confera=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
