//! Rendering: Tera templates over a store snapshot, with the resource's
//! output policy applied to every printed value.
//!
//! Render never touches the filesystem after loading the templates, never
//! runs a command, and never reads a key outside the resource's `keys`.
//! Template engine errors come back as values; they never reach a file.

pub mod filters;
mod functions;
mod output;
mod printf;
mod syntax;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tera::{Context, ErrorKind, Tera};

use crate::error::{ConfigError, UnitError};
use crate::resource::{Template, Unit};
use crate::store::Store;

pub use functions::KeyRead;

/// Compiled templates with confera's functions and filters registered.
/// Compiling once and rendering many times keeps a render cheap.
pub struct Renderer {
    tera: Tera,
    /// Every template's name and source, for messages and the traced engine.
    sources: Vec<(String, String)>,
    /// The same templates with print markers, built when a printed value is
    /// first refused, to find the line that printed it.
    traced: OnceLock<Option<Tera>>,
}

/// The name of the marker function of the traced engine.
const PRINT_MARKER: &str = "__confera_print_at";

/// A Tera engine with confera's functions and filters, and the output
/// policy as its escape function.
fn engine() -> Tera {
    let mut tera = Tera::new();
    // Config files are not HTML: "escaping" is the render's output policy,
    // applied to every printed value that no validation filter marked safe.
    tera.autoescape_on([""]);
    tera.set_escape_fn(output::escape);
    filters::register(&mut tera);
    functions::register(&mut tera);
    output::register(&mut tera);
    tera
}

/// The output of one render and the keys it read, in order of reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub reads: Vec<KeyRead>,
}

impl Renderer {
    /// Compiles every file under `dir`, so that templates may include each
    /// other, and checks that every unit's `src` is among them.
    pub fn load(dir: &Path, units: &[Unit]) -> Result<Renderer, ConfigError> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        let mut tera = engine();
        let mut sources = Vec::with_capacity(files.len());
        for (name, path) in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::Io { path, source })?;
            sources.push((name, text));
        }
        tera.add_raw_templates(sources.clone())
            .map_err(|e| template_config_error(e, "templates", &sources))?;
        for unit in units {
            for t in &unit.templates {
                if !tera.contains_template(&t.src) {
                    return Err(ConfigError::field(
                        &unit.path,
                        "src",
                        format!("template `{}` not found in {}", t.src, dir.display()),
                    ));
                }
            }
        }
        Ok(Renderer {
            tera,
            sources,
            traced: OnceLock::new(),
        })
    }

    /// Like [`Renderer::render`], but stops as soon as the output passes
    /// `max_output` bytes or `cancel` is set (a time limit ran out), so an
    /// abandoned render ends and its memory stays bounded.
    ///
    /// A render records only the reads of secret keys (what redaction
    /// needs); one that fails is rendered again recording every read, so
    /// that its message can name the key a value came from. Renders are
    /// pure over the store, so the second fails where the first did.
    pub fn render_limited(
        &self,
        template: &Template,
        store: &Arc<Store>,
        max_output: usize,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Rendered, UnitError> {
        let first = match self.attempt(template, store, max_output, cancel, false)? {
            Ok(rendered) => return Ok(rendered),
            Err(failed) => failed,
        };
        let (e, reads, origins) = match self.attempt(template, store, max_output, cancel, true)? {
            Err(failed) => failed,
            // Not repeatable after all (the environment changed): the
            // first error, without the keys.
            Ok(_) => first,
        };
        Err(self.render_error(e, template, store, &reads, &origins))
    }

    /// One render: the output, or the engine's error with what the render
    /// recorded; `Err` when it hit a limit.
    fn attempt(
        &self,
        template: &Template,
        store: &Arc<Store>,
        max_output: usize,
        cancel: &std::sync::atomic::AtomicBool,
        every_read: bool,
    ) -> Result<Result<Rendered, Failed>, UnitError> {
        filters::take_rejected();
        output::take_refusal();
        let guard = functions::Scope::enter(store.clone(), template, every_read);
        let mut out = LimitedWriter {
            buf: Vec::new(),
            max: max_output,
            cancel,
            stopped: None,
        };
        let result = self
            .tera
            .render_to(&template.src, &Context::new(), &mut out);
        let (reads, origins) = guard.finish();
        if let Some(limit) = out.stopped {
            return Err(UnitError::RenderLimit {
                template: template.src.clone(),
                limit,
            });
        }
        Ok(match result {
            // Tera writes only the UTF-8 of its strings.
            Ok(()) => Ok(Rendered {
                text: String::from_utf8(out.buf)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                reads,
            }),
            Err(e) => Err((e, reads, origins)),
        })
    }

    /// Renders one template against `store`, strictly: a missing key, one
    /// outside the template's keys, or a printed value the output policy
    /// refuses fails the render.
    pub fn render(&self, template: &Template, store: &Arc<Store>) -> Result<Rendered, UnitError> {
        let never = std::sync::atomic::AtomicBool::new(false);
        self.render_limited(template, store, usize::MAX, &never)
    }

    fn render_error(
        &self,
        e: tera::Error,
        t: &Template,
        store: &Arc<Store>,
        reads: &[KeyRead],
        origins: &[functions::Origin],
    ) -> UnitError {
        let refusal = output::take_refusal();
        let rejected = filters::take_rejected();
        let mut at = locate(&e, &t.src);
        let message = match refusal {
            Some(refusal) => {
                // The escape function has no position; a traced render has.
                if at.line.is_none() {
                    if let Some((template, line)) = self.trace_print(t, store) {
                        at.template = template;
                        at.line = Some(line);
                    }
                }
                output::refusal_message(&refusal, reads, origins)
            }
            None => {
                let mut message = explain(&at, &self.sources);
                // A validation filter refused a value; name the key it came from.
                if let Some(value) = rejected {
                    if let Some(read) = reads.iter().rev().find(|r| r.value == value) {
                        message.push_str(&format!(" (value of key `{}`)", read.key));
                    } else if let Some((key, secret)) = source_in(&value, reads, &t.secrets) {
                        let secret = if secret { "secret " } else { "" };
                        message.push_str(&format!(" (from {secret}key `{key}`)"));
                    }
                }
                message
            }
        };
        UnitError::Render {
            template: at.template,
            line: at.line,
            message: redact(&message, t, reads),
        }
    }

    /// The sources of template `src` and of every template it includes,
    /// imports or extends (found by name in its text), for telling which
    /// lines print values.
    pub fn sources_of(&self, src: &str) -> Vec<&str> {
        let mut names = vec![src.to_string()];
        let mut found = Vec::new();
        while let Some(name) = names.pop() {
            let Some((_, text)) = self.sources.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            if found.contains(&text.as_str()) {
                continue;
            }
            found.push(text.as_str());
            for word in ["include", "import", "extends"] {
                for (at, _) in text.match_indices(word) {
                    let rest = text[at + word.len()..].trim_start();
                    let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'')
                    else {
                        continue;
                    };
                    if let Some(end) = rest[1..].find(quote) {
                        names.push(rest[1..1 + end].to_string());
                    }
                }
            }
        }
        found
    }

    /// Renders `t` again with print markers and returns the template and
    /// line of the print that was refused.
    fn trace_print(&self, t: &Template, store: &Arc<Store>) -> Option<(String, usize)> {
        let traced = self.traced.get_or_init(|| self.traced_engine()).as_ref()?;
        output::take_last_print();
        let guard = functions::Scope::enter(store.clone(), t, true);
        let result = traced.render(&t.src, &Context::new());
        drop(guard);
        let refused = output::take_refusal().is_some();
        let last = output::take_last_print();
        filters::take_rejected();
        if result.is_ok() || !refused {
            return None;
        }
        let (index, line) = last?;
        Some((self.sources.get(index)?.0.clone(), line))
    }

    fn traced_engine(&self) -> Option<Tera> {
        let mut tera = engine();
        tera.register_function(PRINT_MARKER, output::print_at);
        let marked = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, (name, text))| (name, syntax::with_print_markers(text, PRINT_MARKER, i)));
        tera.add_raw_templates(marked).ok()?;
        Some(tera)
    }
}

/// Frees the values this thread's last render built, which renders keep
/// so that the caller can free them after handing on the output.
pub fn free_render_values() {
    functions::free_now();
}

/// A failed render: the engine's error, the reads and other texts recorded.
type Failed = (tera::Error, Vec<KeyRead>, Vec<functions::Origin>);

/// An output buffer that refuses to grow past `max` bytes or after `cancel`.
struct LimitedWriter<'c> {
    buf: Vec<u8>,
    max: usize,
    cancel: &'c std::sync::atomic::AtomicBool,
    stopped: Option<String>,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            self.stopped = Some("time limit".to_string());
        } else if self.buf.len() + bytes.len() > self.max {
            self.stopped = Some(format!("output size limit of {} bytes", self.max));
        } else {
            self.buf.extend_from_slice(bytes);
            return Ok(bytes.len());
        }
        Err(std::io::Error::other("render limit reached"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn collect_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), ConfigError> {
    let io = |path: &Path, source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        // Editors leave swap and backup files beside templates; skip hidden ones.
        if name
            .as_deref()
            .is_some_and(|n| n.starts_with('.') || n.ends_with('~'))
        {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((rel.to_string_lossy().into_owned(), path));
        }
    }
    Ok(())
}

/// Where a Tera error happened and what it says.
struct Located {
    template: String,
    line: Option<usize>,
    message: String,
    /// The byte range in the template's source, when Tera gave one.
    span: Option<Range<usize>>,
}

/// The template, line and message of a Tera error.
fn locate(e: &tera::Error, fallback: &str) -> Located {
    match e.kind() {
        ErrorKind::SyntaxError(report) | ErrorKind::RenderingError(report) => Located {
            template: report.filename().to_string(),
            line: Some(report.span().start_line),
            message: report.message().to_string(),
            span: Some(report.span().range.clone()),
        },
        _ => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            // Reference errors (unknown filter, function or include) come as a
            // report in plain text: "error: ...", then "--> name:line:col".
            match parse_report(&message) {
                Some((template, line, message)) => Located {
                    template,
                    line: Some(line),
                    message,
                    span: None,
                },
                None => Located {
                    template: fallback.to_string(),
                    line: None,
                    message,
                    span: None,
                },
            }
        }
    }
}

/// Tera's message, made more helpful where the template source tells more:
/// the name of an undefined variable a filter got, the block a missing end
/// tag leaves open, and the Tera form of confd syntax.
fn explain(at: &Located, sources: &[(String, String)]) -> String {
    let mut message = at.message.clone();
    let Some(source) = sources
        .iter()
        .find(|(name, _)| *name == at.template)
        .map(|(_, text)| text.as_str())
    else {
        return message;
    };
    if let Some(span) = &at.span {
        let expected = message
            .strip_prefix("Invalid type for the value, expected `")
            .and_then(|rest| rest.strip_suffix("` but got `undefined`"));
        if let (Some(expected), Some(text)) = (expected, source.get(span.clone())) {
            message = format!(
                "`{}` is not defined (a filter expected {expected} here)",
                text.trim()
            );
        }
    }
    if message.starts_with("Unexpected end of input") || message.starts_with("Unknown tag") {
        if let Some(block) = syntax::unclosed_block(source) {
            message = format!("{message}: {block}");
        }
    }
    let offset = at.span.as_ref().map(|s| s.start);
    if let Some(hint) = offset.and_then(|o| syntax::go_template_hint(source, o)) {
        message = format!("{message}; {hint}");
    }
    message
}

/// Fields of secret JSON values shorter than this are not searched for in
/// messages: replacing every `1` or `on` would garble them. Validation
/// filters never show a value derived from a secret, whatever its length.
const MIN_SECRET_FIELD: usize = 4;

/// Replaces every secret value read by the template, and every field of a
/// secret JSON value (see [`secret_texts`]), with `<redacted>`.
pub fn redact(text: &str, t: &Template, reads: &[KeyRead]) -> String {
    if !t.secrets.any() {
        return text.to_string();
    }
    redact_texts(text, &secret_texts(t, reads))
}

/// Replaces each of `secrets` (as it is, or quoted Rust-style) with
/// `<redacted>`.
pub fn redact_texts(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for value in secrets {
        out = out.replace(value.as_str(), "<redacted>");
        // Messages quote values Rust-style, escaping quotes and backslashes.
        let escaped = value.escape_debug().to_string();
        if escaped != *value {
            out = out.replace(&escaped, "<redacted>");
        }
    }
    out
}

/// The texts a render's secret values can show up as in its output or a
/// message, longest first: each whole secret value and, for a value that is
/// a JSON document, each string and number in it (at least
/// [`MIN_SECRET_FIELD`] long), plus the canonical form of those that are IP
/// addresses (what `ip`, `ipv4` and `ipv6` print).
pub fn secret_texts(t: &Template, reads: &[KeyRead]) -> Vec<String> {
    let mut texts: Vec<String> = Vec::new();
    for read in reads {
        if read.value.is_empty() || !t.secrets.is_secret(&read.absolute) {
            continue;
        }
        texts.push(read.value.clone());
        for field in json_fields(&read.value) {
            if let Ok(ip) = field.parse::<std::net::IpAddr>() {
                texts.push(ip.to_string());
            }
            if field.chars().count() >= MIN_SECRET_FIELD {
                texts.push(field);
            }
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    texts.sort_by_key(|v| std::cmp::Reverse(v.len()));
    texts.dedup();
    texts
}

/// The strings and numbers in a JSON document (object or array); nothing
/// for any other text.
fn json_fields(value: &str) -> Vec<String> {
    let trimmed = value.trim_start();
    if !trimmed.starts_with(['{', '[']) {
        return Vec::new();
    }
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(value) else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    let mut stack = vec![&doc];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) if !s.is_empty() => fields.push(s.clone()),
            serde_json::Value::Number(n) => fields.push(n.to_string()),
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    fields
}

/// Whether `text` is `value`, part of it, or part of a field of it when
/// `value` is a JSON document (whose text escapes what the field holds).
pub(crate) fn derives_from(text: &str, value: &str) -> bool {
    if text.is_empty() || value.is_empty() {
        return false;
    }
    value.contains(text) || json_fields(value).iter().any(|f| f.contains(text))
}

/// The key among `reads` that `text` derives from (see [`derives_from`]),
/// the latest read first, and whether it is secret. A secret source wins:
/// a value that may come from a secret is treated as one.
pub(crate) fn source_in(
    text: &str,
    reads: &[KeyRead],
    secrets: &crate::resource::Secrets,
) -> Option<(String, bool)> {
    let mut plain = None;
    for read in reads.iter().rev() {
        if !derives_from(text, &read.value) {
            continue;
        }
        if secrets.is_secret(&read.absolute) {
            return Some((read.key.clone(), true));
        }
        plain.get_or_insert_with(|| read.key.clone());
    }
    plain.map(|key| (key, false))
}

/// Finds the first `error: MESSAGE` and `--> NAME:LINE:COL` lines of a
/// Tera report.
fn parse_report(report: &str) -> Option<(String, usize, String)> {
    let text = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))?
        .to_string();
    let location = report.lines().find_map(|l| l.trim().strip_prefix("--> "))?;
    let mut parts = location.rsplitn(3, ':');
    let _col = parts.next()?;
    let line = parts.next()?.parse().ok()?;
    let name = parts.next()?.to_string();
    Some((name, line, text))
}

pub(crate) fn template_config_error(
    e: tera::Error,
    fallback: &str,
    sources: &[(String, String)],
) -> ConfigError {
    let at = locate(&e, fallback);
    ConfigError::Template {
        message: explain(&at, sources),
        template: at.template,
        line: at.line,
    }
}

#[cfg(test)]
mod tests;
