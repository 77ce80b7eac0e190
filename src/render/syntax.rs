//! A light reading of template sources for better messages: where the tags
//! are, which block a missing end tag leaves open, confd (Go template)
//! syntax left in a template, and print markers for finding the line of a
//! refused value.
//!
//! Tera compiles and renders; nothing here decides what a template means.
//! A template this reader misreads only gets a less helpful message.

/// What a tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `{{ ... }}`
    Print,
    /// `{% ... %}`
    Block,
    /// `{# ... #}`
    Comment,
}

/// One tag of a template source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag {
    pub kind: Kind,
    /// Byte range of the whole tag, delimiters included.
    pub start: usize,
    pub end: usize,
    /// 1-based line of the tag's start.
    pub line: usize,
    /// The text between the delimiters, without `-` trim markers, trimmed.
    pub body: String,
}

/// The tags of `source`, in order. Text inside `{% raw %}` is skipped; an
/// unterminated tag ends the list (Tera reports it).
pub(crate) fn tags(source: &str) -> Vec<Tag> {
    let bytes = source.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    let mut in_raw = false;
    while let Some(offset) = source[i..].find('{') {
        let start = i + offset;
        let kind = match bytes.get(start + 1) {
            Some(b'{') => Kind::Print,
            Some(b'%') => Kind::Block,
            Some(b'#') => Kind::Comment,
            _ => {
                i = start + 1;
                continue;
            }
        };
        let close = match kind {
            Kind::Print => "}}",
            Kind::Block => "%}",
            Kind::Comment => "#}",
        };
        let Some(end) = tag_end(source, start + 2, close, kind != Kind::Comment) else {
            break;
        };
        let inner = &source[start + 2..end - 2];
        let body = inner.strip_prefix('-').unwrap_or(inner).trim_end();
        let body = body.strip_suffix('-').unwrap_or(body).trim().to_string();
        i = end;
        if in_raw {
            in_raw = !(kind == Kind::Block && body == "endraw");
            continue;
        }
        if kind == Kind::Block && body == "raw" {
            in_raw = true;
        }
        let line = 1 + source[..start].matches('\n').count();
        tags.push(Tag {
            kind,
            start,
            end,
            line,
            body,
        });
    }
    tags
}

/// The index after `close`, skipping string literals when `strings`.
fn tag_end(source: &str, from: usize, close: &str, strings: bool) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut chars = source[from..].char_indices();
    while let Some((offset, c)) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if strings && matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if source[from + offset..].starts_with(close) => {
                return Some(from + offset + close.len())
            }
            None => {}
        }
    }
    None
}

/// The first word of a tag body.
fn keyword(body: &str) -> &str {
    body.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("")
}

/// Which block a misplaced or missing end tag leaves open, as a sentence:
/// "`{% for x in xs %}` on line 3 is never closed: add `{% endfor %}`".
pub(crate) fn unclosed_block(source: &str) -> Option<String> {
    let mut open: Vec<(&'static str, Tag)> = Vec::new();
    for tag in tags(source).into_iter().filter(|t| t.kind == Kind::Block) {
        let word = keyword(&tag.body);
        let opens = match word {
            "for" => Some("for"),
            "if" => Some("if"),
            "filter" => Some("filter"),
            "block" => Some("block"),
            "component" => Some("component"),
            // `{% set x %}...{% endset %}` captures; `{% set x = 1 %}` does not.
            "set" | "set_global" if !tag.body.contains('=') => Some("set"),
            _ => None,
        };
        if let Some(kind) = opens {
            open.push((kind, tag));
            continue;
        }
        let Some(closes) = word.strip_prefix("end") else {
            continue;
        };
        match open.pop() {
            Some((kind, _)) if kind == closes => {}
            Some((kind, opener)) => {
                return Some(format!(
                    "`{{% {} %}}` on line {} is not closed before `{{% {} %}}` on line {}: add `{{% end{kind} %}}` first",
                    opener.body, opener.line, tag.body, tag.line
                ))
            }
            None => {
                return Some(format!(
                    "`{{% {} %}}` on line {} closes a block that was never opened",
                    tag.body, tag.line
                ))
            }
        }
    }
    open.pop().map(|(kind, opener)| {
        format!(
            "`{{% {} %}}` on line {} is never closed: add `{{% end{kind} %}}`",
            opener.body, opener.line
        )
    })
}

/// A hint when the tag at byte `offset` of `source` is confd's Go template
/// syntax, with the Tera form.
pub(crate) fn go_template_hint(source: &str, offset: usize) -> Option<String> {
    let tag = tags(source)
        .into_iter()
        .find(|t| t.start <= offset && offset < t.end.max(t.start + 1))?;
    if tag.kind == Kind::Comment {
        return None;
    }
    let body = tag.body.as_str();
    let shown = format!("{{{{{body}}}}}");
    let tera = if body.starts_with("/*") {
        "a comment is `{# ... #}`".to_string()
    } else if body.starts_with('.') {
        "there is no `.`: name the loop variable, `{% for kv in gets(pattern=\"/p/*\") %}{{ kv.key }}={{ kv.value }}{% endfor %}`".to_string()
    } else if body.starts_with('$') {
        "variables have no `$`: `{% set x = getv(key=\"/k\") %}` then `{{ x }}`".to_string()
    } else {
        match keyword(body) {
            "range" => "loops are `{% for v in getvs(pattern=\"/p/*\") %}...{% endfor %}`".to_string(),
            "end" => "blocks end with `{% endfor %}` or `{% endif %}`".to_string(),
            "if" => "conditions are `{% if exists(key=\"/k\") %}...{% else %}...{% endif %}`".to_string(),
            "else" => "`{% else %}` (and `{% elif ... %}`)".to_string(),
            "with" => "`{% set v = getv(key=\"/k\", default=\"\") %}{% if v %}...{% endif %}`".to_string(),
            "define" | "template" | "block" => "a `define` is a component, `{% component name(arg) %}...{% endcomponent %}`, called as `{{ <name arg=\"x\" /> }}`; a whole file is `{% include \"file.tera\" %}`".to_string(),
            name => go_call(name, body)?,
        }
    };
    Some(format!(
        "`{shown}` is confd (Go template) syntax; in Tera, {tera} (see docs/migrating-from-confd.md)"
    ))
}

/// The Tera form of a Go-style call `name "a" "b"` of a confd function.
fn go_call(name: &str, body: &str) -> Option<String> {
    let rest = body[name.len()..].trim_start();
    if name.is_empty() || rest.len() == body.len() - name.len() || rest.is_empty() {
        return None;
    }
    if !rest.starts_with(['"', '$', '.', '(', '`']) {
        return None;
    }
    let params: &[&str] = match name {
        "getv" | "getenv" => {
            if name == "getv" {
                &["key", "default"]
            } else {
                &["name", "default"]
            }
        }
        "get" | "exists" => &["key"],
        "gets" | "getvs" => &["pattern"],
        "ls" | "lsdir" => &["path"],
        "hashToIPv4" => &["name"],
        _ => {
            return Some(format!(
                "functions take named arguments in parentheses: `{name}(...)`"
            ))
        }
    };
    let args: Vec<&str> = rest.split('"').skip(1).step_by(2).collect();
    let literal_only = rest.split('"').step_by(2).all(|s| s.trim().is_empty());
    if !literal_only || args.is_empty() || args.len() > params.len() {
        return Some(format!(
            "functions take named arguments in parentheses: `{name}({}=...)`",
            params[0]
        ));
    }
    let named: Vec<String> = params
        .iter()
        .zip(&args)
        .map(|(p, a)| format!("{p}=\"{a}\""))
        .collect();
    Some(format!("write `{{{{ {name}({}) }}}}`", named.join(", ")))
}

/// `source` with a call of `marker(t=TEMPLATE, l=LINE)` printed before each
/// print tag, so that a render of it tells which print ran last. Lines stay
/// where they were.
pub(crate) fn with_print_markers(source: &str, marker: &str, template: usize) -> String {
    let mut out = String::with_capacity(source.len() * 2);
    let mut copied = 0;
    for tag in tags(source).into_iter().filter(|t| t.kind == Kind::Print) {
        out.push_str(&source[copied..tag.start]);
        out.push_str(&format!("{{{{ {marker}(t={template}, l={}) }}}}", tag.line));
        copied = tag.start;
    }
    out.push_str(&source[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_found_with_lines_skipping_strings_comments_and_raw() {
        let source =
            "a {{ x }}\n{% set y = \"%}\" %}{# {{ no }} #}\n{% raw %}{{ z }}{% endraw %}{{- w -}}";
        let tags = tags(source);
        let bodies: Vec<(&str, usize)> = tags.iter().map(|t| (t.body.as_str(), t.line)).collect();
        assert_eq!(
            bodies,
            [
                ("x", 1),
                ("set y = \"%}\"", 2),
                ("{{ no }}", 2),
                ("raw", 3),
                ("w", 3)
            ]
        );
    }

    #[test]
    fn an_unclosed_block_is_named_with_its_line() {
        let source = "{% for x in xs %}\n{% if x %}\n{{ x }}\n{% endif %}\n";
        assert_eq!(
            unclosed_block(source).unwrap(),
            "`{% for x in xs %}` on line 1 is never closed: add `{% endfor %}`"
        );
        let source = "{% for x in xs %}\n{% if x %}\n{% endfor %}";
        assert_eq!(
            unclosed_block(source).unwrap(),
            "`{% if x %}` on line 2 is not closed before `{% endfor %}` on line 3: add `{% endif %}` first"
        );
        assert_eq!(
            unclosed_block("{% set a = 1 %}{% set b %}x{% endset %}"),
            None
        );
        assert_eq!(
            unclosed_block("{% endif %}").unwrap(),
            "`{% endif %}` on line 1 closes a block that was never opened"
        );
    }

    #[test]
    fn go_template_syntax_gets_the_tera_form() {
        let hint = |s: &str| go_template_hint(s, s.find("{{").unwrap() + 3).unwrap();
        assert!(hint(r#"x {{getv "/k"}}"#).contains(r#"write `{{ getv(key="/k") }}`"#));
        assert!(hint(r#"{{ getv "/k" "d" }}"#).contains(r#"getv(key="/k", default="d")"#));
        assert!(hint(r#"{{range getvs "/p/*"}}"#).contains("{% for v in"));
        assert!(hint("{{end}}").contains("{% endfor %}"));
        assert!(hint("{{.Key}}").contains("kv.key"));
        assert!(hint("{{$x := 1}}").contains("{% set x ="));
        assert!(hint("{{/* c */}}").contains("{# ... #}"));
        assert!(hint(r#"{{template "x" .}}"#).contains("{% component"));
        assert!(hint(r#"{{range $i, $v := ls "/p"}}"#)
            .starts_with("`{{range $i, $v := ls \"/p\"}}` is confd"));
        assert_eq!(go_template_hint("{{ x | upper }}", 3), None);
        assert_eq!(go_template_hint("{{ missing }}", 3), None);
    }

    #[test]
    fn print_markers_keep_lines_and_text() {
        let out = with_print_markers("a\n{{ x }}\n{%- if y %}{{- z }}{% endif %}", "m", 0);
        assert_eq!(
            out,
            "a\n{{ m(t=0, l=2) }}{{ x }}\n{%- if y %}{{ m(t=0, l=3) }}{{- z }}{% endif %}"
        );
    }
}
