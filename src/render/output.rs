//! The output policy: every value a template prints passes Tera's escape
//! function, which applies the resource's policy (`output = "bird"` or
//! `"plain"`). Under `bird`, a value that could change the structure of a
//! BIRD config fails the render, unless a validation filter or `raw`
//! marked it safe.
//!
//! The escape function is a plain `fn` without context, so the policy of
//! the render in progress comes from the render scope (a thread-local), and
//! a refusal is noted here for the render error to name the key. This
//! module never lets a refused value through to the output.

use std::cell::RefCell;
use std::io::Write;

use tera::{Kwargs, State, StringInput, Tera, TeraResult, Value};

use super::functions::Origin;
use super::KeyRead;
use crate::resource::Output;

thread_local! {
    /// The refusal of the render in progress on this thread, if any.
    static REFUSED: RefCell<Option<Refusal>> = const { RefCell::new(None) };
    /// The template index and line of the last print a traced render ran.
    static LAST_PRINT: RefCell<Option<(usize, usize)>> = const { RefCell::new(None) };
}

/// A printed value the policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The printed text.
    pub text: String,
    /// What in it is refused (a character or `/*`), to find where it came from.
    pub fragment: String,
    /// The problem, for the message: "a newline at character 7".
    pub problem: String,
}

/// Tera's escape function for every template: the policy of the render in
/// progress decides (no render in progress: printed as it is).
pub(crate) fn escape(text: &str, out: &mut dyn Write) -> std::io::Result<()> {
    if super::functions::output_policy() == Some(Output::Bird) {
        if let Some(refusal) = bird_refusal(text) {
            let message = refusal.problem.clone();
            REFUSED.with(|r| *r.borrow_mut() = Some(refusal));
            return Err(std::io::Error::other(message));
        }
    }
    out.write_all(text.as_bytes())
}

/// Takes the refusal noted during the render on this thread.
pub(crate) fn take_refusal() -> Option<Refusal> {
    REFUSED.with(|r| r.borrow_mut().take())
}

/// The message for a refused value: what is wrong with it, where it came
/// from, and the two ways out. The value itself is not shown (it may be a
/// secret; its key and the position of the problem are enough).
pub(crate) fn refusal_message(r: &Refusal, reads: &[KeyRead], origins: &[Origin]) -> String {
    let from = origin_of(r, reads, origins)
        .map(|what| format!(" (from {what})"))
        .unwrap_or_default();
    format!(
        "refused to print a value that contains {}{from}: in a BIRD config it could change the structure (output = \"bird\"); pass it through a validation filter (bird_ident, bird_string, ipv4, ipv6, cidr, asn, ...) or, if the template means to print it as it is, mark it with `| raw`",
        r.problem
    )
}

/// Where the refused text came from: the latest key value or other text
/// that is part of it and holds the refused fragment; else the latest that
/// holds the fragment (a value transformed on the way, such as JSON).
fn origin_of(r: &Refusal, reads: &[KeyRead], origins: &[Origin]) -> Option<String> {
    let candidates: Vec<(String, &str)> = reads
        .iter()
        .map(|read| {
            (
                format!("key `{}`", read.key.escape_debug()),
                read.value.as_str(),
            )
        })
        .chain(origins.iter().map(|o| (o.what.clone(), o.text.as_str())))
        .filter(|(_, text)| !text.is_empty() && text.contains(r.fragment.as_str()))
        .collect();
    let within = candidates
        .iter()
        .rev()
        .find(|(_, text)| r.text.contains(*text));
    within
        .or_else(|| candidates.last())
        .map(|(what, _)| what.clone())
}

/// The marker function of a traced render: notes the line of the print
/// that follows it and prints nothing.
pub(crate) fn print_at(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let template = kwargs.must_get::<usize>("t")?;
    let line = kwargs.must_get::<usize>("l")?;
    LAST_PRINT.with(|p| *p.borrow_mut() = Some((template, line)));
    Ok(Value::safe_string(""))
}

/// Takes the last print a traced render noted on this thread.
pub(crate) fn take_last_print() -> Option<(usize, usize)> {
    LAST_PRINT.with(|p| p.borrow_mut().take())
}

/// `raw`: prints the value as it is under any policy. For text the template
/// means to print unchecked (a value validated some other way, or a
/// fragment of config kept in the store on purpose).
pub(crate) fn raw(value: &Value, _: Kwargs, _: &State) -> Value {
    match value.as_str() {
        Some(text) => Value::safe_string(text),
        None => value.clone(),
    }
}

/// Registers `join` and `replace` in place of Tera's, which call the escape
/// function on the separator or replacement alone (a literal `", "` would
/// be refused for its trailing space). These call it never: the result is
/// marked safe when every part is, and a literal part counts as safe when
/// it holds nothing structural; otherwise the whole result is checked when
/// printed.
pub(crate) fn register(tera: &mut Tera) {
    tera.register_filter("join", join);
    tera.register_filter("replace", replace);
}

/// Whether a piece of text inside a larger value may be trusted as safe.
fn safe_part(part: &StringInput) -> bool {
    part.is_safe() || bird_problem(part.as_str(), false).is_none()
}

fn join(items: &[Value], kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let sep = kwargs.get::<StringInput>("sep")?;
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item.as_str() {
            Some(text) => text.to_string(),
            None if item.is_undefined() => String::new(),
            None => item.to_string(),
        })
        .collect();
    let joined = parts.join(sep.as_ref().map_or("", |s| s.as_str()));
    let safe = items
        .iter()
        .all(|item| item.is_safe() || item.is_undefined())
        && sep.as_ref().is_none_or(safe_part);
    Ok(if safe {
        Value::safe_string(&joined)
    } else {
        Value::from(joined)
    })
}

fn replace(value: StringInput, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let from = kwargs.must_get::<&str>("from")?;
    let to = kwargs.must_get::<StringInput>("to")?;
    let replaced = value.as_str().replace(from, to.as_str());
    Ok(if value.is_safe() && safe_part(&to) {
        Value::safe_string(&replaced)
    } else {
        Value::from(replaced)
    })
}

/// Why `text`, printed into a BIRD config, could change its structure: a
/// control character (a newline ends a statement or a `#` comment), `;`,
/// `{`, `}`, `"`, `#`, a comment marker (`/*`, `*/`), or whitespace at
/// either end.
pub(crate) fn bird_refusal(text: &str) -> Option<Refusal> {
    if plainly_safe(text) {
        return None;
    }
    bird_problem(text, true)
}

/// Whether `text` is ASCII with nothing [`bird_problem`] refuses: most
/// printed values, decided byte by byte without decoding characters.
fn plainly_safe(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.first() == Some(&b' ') || bytes.last() == Some(&b' ') {
        return false;
    }
    let mut previous = 0u8;
    for &b in bytes {
        match b {
            // Control characters (every ASCII whitespace but the space),
            // non-ASCII (decoded by the full check), and the structure.
            0..=0x1f | 0x7f..=0xff | b';' | b'{' | b'}' | b'"' | b'#' => return false,
            b'*' if previous == b'/' => return false,
            b'/' if previous == b'*' => return false,
            _ => previous = b,
        }
    }
    true
}

/// [`bird_refusal`]; `edges` says whether `text` is a whole printed value,
/// whose leading or trailing whitespace counts.
fn bird_problem(text: &str, edges: bool) -> Option<Refusal> {
    let refusal = |index: usize, fragment: &str, what: String| Refusal {
        text: text.to_string(),
        fragment: fragment.to_string(),
        problem: format!("{what} at character {}", index + 1),
    };
    let count = text.chars().count();
    let chars: Vec<char> = text.chars().collect();
    for (index, &c) in chars.iter().enumerate() {
        let what = match c {
            '\n' => Some("a newline".to_string()),
            c if c.is_control() => Some(format!("the control character {c:?}")),
            ';' | '{' | '}' | '"' | '#' => Some(format!("`{c}`")),
            '/' if chars.get(index + 1) == Some(&'*') => {
                return Some(refusal(index, "/*", "`/*`".to_string()))
            }
            '*' if chars.get(index + 1) == Some(&'/') => {
                return Some(refusal(index, "*/", "`*/`".to_string()))
            }
            c if edges && c.is_whitespace() && (index == 0 || index + 1 == count) => {
                let side = if index == 0 { "leading" } else { "trailing" };
                Some(format!("{side} whitespace {c:?}"))
            }
            _ => None,
        };
        if let Some(what) = what {
            return Some(refusal(index, &c.to_string(), what));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_refuses_what_could_change_a_config_s_structure() {
        for (text, problem) in [
            ("a\nprotocol bgp x {", "a newline at character 2"),
            ("a\rb", "the control character '\\r' at character 2"),
            ("a\tb", "the control character '\\t' at character 2"),
            ("x; import all", "`;` at character 2"),
            ("x {", "`{` at character 3"),
            ("}", "`}` at character 1"),
            ("a\"b", "`\"` at character 2"),
            ("a # b", "`#` at character 3"),
            ("a /* b", "`/*` at character 3"),
            ("a */ b", "`*/` at character 3"),
            (" a", "leading whitespace ' ' at character 1"),
            ("a ", "trailing whitespace ' ' at character 2"),
            ("a\u{a0}", "trailing whitespace '\\u{a0}' at character 2"),
        ] {
            let refusal = bird_refusal(text).unwrap_or_else(|| panic!("{text:?} passed"));
            assert_eq!(refusal.problem, problem, "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_byte_check_passes_only_what_the_full_check_passes(text in "[ -~\\t\\n\u{a0}☺]{0,12}") {
            if plainly_safe(&text) {
                proptest::prop_assert_eq!(bird_problem(&text, true), None);
            }
        }
    }

    #[test]
    fn bird_lets_ordinary_values_through() {
        for text in [
            "",
            "node-a",
            "10.0.0.1",
            "fd00::1/64",
            "Peers of node-a only (/peers/node/node-a)",
            "a * b / c",
            "it's",
            "/nodes/node-a/ip4",
        ] {
            assert_eq!(bird_refusal(text), None, "{text:?}");
        }
    }
}
