//! Logging: the accepted log levels, and tracing to stderr as text for people
//! or JSON for machines. stdout stays free for what the user asked for
//! (diffs). A log line that cannot be written (stderr closed, a pipe whose
//! reader is gone) is dropped: logging never panics and never stops a commit.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The level names `--log-level` accepts, as listed in errors and help.
pub const LEVEL_NAMES: &str =
    "trace, debug, info, warn (or warning), error (confd's panic and fatal mean error)";

/// Checks a `--log-level` value and returns its canonical form: a level name
/// (`trace`, `debug`, `info`, `warn`, `error`), or a tracing filter of
/// `target=level` directives whose levels are such names (`warn,confera=debug`;
/// without a bare level, `warn` is the default for other targets).
/// confd's names are accepted: `warning` is `warn`, `panic` and `fatal` are
/// `error`. Anything else is an error listing the accepted names, so that a
/// typo can never silence the log.
pub fn parse_level(text: &str) -> Result<String, String> {
    let text = text.trim();
    let refuse = || {
        format!("`{text}` is not a log level: use {LEVEL_NAMES}, or a filter such as `warn,confera=debug`")
    };
    if !text.contains([',', '=']) {
        return level_name(text).map(str::to_string).ok_or_else(refuse);
    }
    let mut directives = Vec::new();
    for part in text.split(',').map(str::trim) {
        let directive = match part.split_once('=') {
            None => level_name(part).map(str::to_string),
            Some((target, level)) => {
                let target = target.trim();
                let valid_target = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'));
                level_name(level.trim())
                    .filter(|_| valid_target)
                    .map(|level| format!("{target}={level}"))
            }
        };
        directives.push(directive.ok_or_else(refuse)?);
    }
    // Targets refine a default level, never replace it: without one, a
    // filter naming only `h2` would silence confera's own errors.
    if !directives.iter().any(|d| !d.contains('=')) {
        directives.insert(0, "warn".to_string());
    }
    let filter = directives.join(",");
    EnvFilter::try_new(&filter).map_err(|_| refuse())?;
    Ok(filter)
}

/// A level name in canonical form.
fn level_name(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "panic" | "fatal" => "error",
        _ => return None,
    })
}

/// Installs the global subscriber (once; later calls do nothing). `level`
/// is what [`parse_level`] returned.
pub fn init(level: &str, format: LogFormat) {
    // A bare level applies to confera; dependencies (h2, tonic) stay at warn.
    let directive = match level_name(level) {
        Some(level) => format!("warn,confera={level}"),
        None => level.to_string(),
    };
    let filter =
        EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("warn,confera=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr {
            indent: format == LogFormat::Text,
        })
        // Its own report of a failed write would go to the same closed stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Reports the error that ends the run with exit 2: in text, one
/// `confera: ...` message as a command-line tool prints it; in JSON, one
/// error event like every other line, so a log shipper parses it too.
pub fn fatal(format: LogFormat, error: &dyn std::fmt::Display) {
    match format {
        LogFormat::Text => {
            let _ = writeln!(std::io::stderr().lock(), "confera: {error}");
        }
        LogFormat::Json => {
            init("error", LogFormat::Json);
            tracing::error!(error = %error, "configuration error; exiting");
        }
    }
}

/// Where log lines go: stderr, one write per event. Text events that span
/// several lines (a TOML error with its caret block, a checker's output) get
/// their continuation lines indented, so they read as part of the event and
/// keep their own alignment.
struct Stderr {
    indent: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr {
            indent: self.indent,
        }
    }
}

impl Write for Stderr {
    fn write(&mut self, event: &[u8]) -> std::io::Result<usize> {
        let text = if self.indent {
            indent_continuations(event)
        } else {
            Cow::Borrowed(event)
        };
        // A closed stderr drops the line; the run goes on.
        let _ = std::io::stderr().lock().write_all(&text);
        Ok(event.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The indentation of an event's continuation lines.
const CONTINUATION: &[u8] = b"    ";

/// Indents every line of `event` after the first (the final newline ends
/// the event and is kept as it is).
fn indent_continuations(event: &[u8]) -> Cow<'_, [u8]> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    if !body.contains(&b'\n') {
        return Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 64);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
            out.extend_from_slice(CONTINUATION);
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(&event[body.len()..]);
    Cow::Owned(out)
}

/// True the first time `fact` is seen by this process (bounded: after
/// 4,096 distinct facts the memory starts over, so a fact may repeat).
pub fn first_time(fact: String) -> bool {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(std::collections::HashSet::new);
    if seen.len() >= 4096 {
        seen.clear();
    }
    seen.insert(fact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confd_and_tracing_level_names_are_accepted_in_any_case() {
        for (given, canonical) in [
            ("trace", "trace"),
            ("debug", "debug"),
            ("info", "info"),
            ("warn", "warn"),
            ("warning", "warn"),
            ("WARNING", "warn"),
            ("error", "error"),
            ("panic", "error"),
            ("fatal", "error"),
            (" Info ", "info"),
        ] {
            assert_eq!(parse_level(given).as_deref(), Ok(canonical), "{given}");
        }
    }

    #[test]
    fn unknown_levels_are_refused_listing_the_accepted_names() {
        for typo in ["warnign", "verbose", "", "off", "5"] {
            let e = parse_level(typo).unwrap_err();
            assert!(e.contains(&format!("`{typo}`")), "{e}");
            assert!(
                e.contains("trace, debug, info, warn (or warning), error"),
                "{e}"
            );
        }
    }

    #[test]
    fn filters_are_accepted_when_every_level_in_them_is_a_known_name() {
        assert_eq!(
            parse_level("warning,confera=debug").as_deref(),
            Ok("warn,confera=debug")
        );
        assert_eq!(
            parse_level("confera::watch=trace, h2=fatal").as_deref(),
            Ok("warn,confera::watch=trace,h2=error")
        );
        for bad in [
            "confera=warnign",
            "warnign,confera=debug",
            "=debug",
            "a b=info",
        ] {
            assert!(parse_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn continuation_lines_of_a_text_event_are_indented_and_keep_their_alignment() {
        let event = b"ERROR rejected error=x.toml: TOML parse error at line 2\n  |\n2 | a = \n  |    ^\nexpected a value\n";
        let out = indent_continuations(event);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "ERROR rejected error=x.toml: TOML parse error at line 2\n      |\n    2 | a = \n      |    ^\n    expected a value\n"
        );
        let one_line = b"INFO committed dest=/x\n";
        assert!(matches!(indent_continuations(one_line), Cow::Borrowed(_)));
    }
}
