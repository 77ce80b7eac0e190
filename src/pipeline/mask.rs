//! Masking the diff of a resource with secret keys. A new line shows each
//! secret text (see `render::secret_texts`) as `<redacted>`. An old line is
//! harder: its secret values came from older data and are not known, so it
//! is shown only when it cannot hold one, judged by the template line that
//! would print it: a template line's literal text around its `{{ }}` gives
//! a shape, and a shape is clean only if every new line of that shape holds
//! no secret. An old line with no clean shape, or of a shape never printed
//! in the new render, is masked whole.
//!
//! It only reads the diff and the template sources; it never reads a file.

use std::collections::HashSet;

/// The literal text a template line prints around its values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    prefix: String,
    suffix: String,
    /// Literal text between two prints, in order (only on lines without
    /// `{% %}` tags, whose text may not be printed at all).
    middles: Vec<String>,
}

impl Shape {
    fn specificity(&self) -> usize {
        self.prefix.len() + self.suffix.len() + self.middles.iter().map(String::len).sum::<usize>()
    }

    fn matches(&self, line: &str) -> bool {
        let line = line.trim();
        let (prefix, suffix) = (self.prefix.as_str(), self.suffix.as_str());
        if line.len() < prefix.len() + suffix.len()
            || !line.starts_with(prefix)
            || !line.ends_with(suffix)
        {
            return false;
        }
        let mut rest = &line[prefix.len()..line.len() - suffix.len()];
        for middle in &self.middles {
            match rest.find(middle.as_str()) {
                Some(at) => rest = &rest[at + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

/// What the templates can print, and which shapes printed secrets in the
/// new render.
pub struct Mask<'s> {
    shapes: Vec<Shape>,
    /// Per shape: seen holding a secret, seen clean.
    seen: Vec<(bool, bool)>,
    /// Template lines without any tag, trimmed: printed as they are.
    literals: HashSet<String>,
    /// New lines holding no secret text.
    clean_new: HashSet<String>,
    secrets: &'s [String],
}

impl<'s> Mask<'s> {
    /// Learns the shapes of `sources` (the template and what it includes)
    /// and which of them the new content printed a secret text into.
    pub fn new(sources: &[&str], new: &str, secrets: &'s [String]) -> Mask<'s> {
        let mut shapes = Vec::new();
        let mut literals = HashSet::new();
        for source in sources {
            for line in source.lines() {
                match parse_line(line) {
                    Parsed::Literal(text) => {
                        literals.insert(text);
                    }
                    Parsed::Shape(shape) => {
                        if !shapes.contains(&shape) {
                            shapes.push(shape);
                        }
                    }
                    Parsed::Nothing => {}
                }
            }
        }
        let mut mask = Mask {
            seen: vec![(false, false); shapes.len()],
            shapes,
            literals,
            clean_new: HashSet::new(),
            secrets,
        };
        for line in new.lines() {
            let secret = mask.holds_known_secret(line);
            if !secret {
                mask.clean_new.insert(line.trim().to_string());
            }
            for index in mask.best(line) {
                let seen = &mut mask.seen[index];
                if secret {
                    seen.0 = true;
                } else {
                    seen.1 = true;
                }
            }
        }
        mask
    }

    fn holds_known_secret(&self, line: &str) -> bool {
        self.secrets.iter().any(|s| line.contains(s.as_str()))
    }

    /// The most specific shapes that match `line`.
    fn best(&self, line: &str) -> Vec<usize> {
        let matching: Vec<usize> = (0..self.shapes.len())
            .filter(|&i| self.shapes[i].matches(line))
            .collect();
        let Some(top) = matching.iter().map(|&i| self.shapes[i].specificity()).max() else {
            return Vec::new();
        };
        matching
            .into_iter()
            .filter(|&i| self.shapes[i].specificity() == top)
            .collect()
    }

    /// Whether an old line may hold a secret (and is to be masked whole).
    pub fn old_line_may_hold_secret(&self, line: &str) -> bool {
        let trimmed = line.trim();
        if self.holds_known_secret(line) {
            return true;
        }
        if trimmed.is_empty() || self.literals.contains(trimmed) || self.clean_new.contains(trimmed)
        {
            return false;
        }
        let best = self.best(line);
        best.is_empty()
            || best.iter().any(|&i| {
                let (secret, clean) = self.seen[i];
                secret || !clean
            })
    }
}

enum Parsed {
    /// A line of template text only.
    Literal(String),
    /// A line that prints values.
    Shape(Shape),
    /// A line that prints nothing of its own (tags, comments) or that
    /// continues a tag from an earlier line.
    Nothing,
}

/// Splits a template line into its literal text and its tags.
fn parse_line(line: &str) -> Parsed {
    let openers = ["{{", "{%", "{#"];
    let has_tag = openers.iter().any(|o| line.contains(o));
    let closes_earlier = ["}}", "%}", "#}"].iter().any(|c| {
        line.find(c)
            .is_some_and(|at| openers.iter().all(|o| line.find(o).is_none_or(|o| o > at)))
    });
    if closes_earlier {
        return Parsed::Nothing;
    }
    if !has_tag {
        let text = line.trim();
        return if text.is_empty() {
            Parsed::Nothing
        } else {
            Parsed::Literal(text.to_string())
        };
    }
    if !line.contains("{{") {
        return Parsed::Nothing;
    }
    // Literal pieces between tags, with whether a control tag sits on the line.
    let mut pieces: Vec<String> = Vec::new();
    let mut control = false;
    let mut rest = line;
    let mut open_to_end = false;
    loop {
        let next = openers
            .iter()
            .filter_map(|o| rest.find(o).map(|at| (at, *o)))
            .min();
        let Some((at, opener)) = next else {
            pieces.push(rest.to_string());
            break;
        };
        let mut piece = rest[..at].to_string();
        let after = &rest[at + 2..];
        if after.starts_with('-') {
            piece = piece.trim_end().to_string();
        }
        pieces.push(piece);
        control |= opener == "{%";
        let closer = match opener {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        match after.find(closer) {
            Some(end) => {
                let trims = after[..end].ends_with('-');
                rest = &after[end + 2..];
                if trims {
                    rest = rest.trim_start();
                }
            }
            None => {
                open_to_end = true;
                break;
            }
        }
    }
    let prefix = pieces.first().cloned().unwrap_or_default();
    let suffix = if open_to_end {
        String::new()
    } else {
        pieces.last().cloned().unwrap_or_default()
    };
    let middles = if control || pieces.len() < 3 {
        Vec::new()
    } else {
        let end = if open_to_end {
            pieces.len()
        } else {
            pieces.len() - 1
        };
        pieces[1..end]
            .iter()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect()
    };
    Parsed::Shape(Shape {
        prefix: prefix.trim_start().to_string(),
        suffix: suffix.trim_end().to_string(),
        middles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"protocol bgp {{ name }} {
  neighbor {{ ip }} as {{ asn }};
{%- if password %}
  password {{ password | bird_string }};
{%- endif %}
  description {{ d | bird_string }};
}
"#;

    #[test]
    fn an_old_line_is_masked_only_when_its_template_line_printed_a_secret() {
        let new = "protocol bgp p1 {\n  neighbor 10.0.0.2 as 65001;\n  password \"new-secret\";\n  description \"x\";\n}\n";
        let secrets = vec!["new-secret".to_string()];
        let mask = Mask::new(&[TEMPLATE], new, &secrets);
        assert!(mask.old_line_may_hold_secret("  password \"old-secret\";"));
        assert!(!mask.old_line_may_hold_secret("  neighbor 10.0.0.9 as 65002;"));
        assert!(!mask.old_line_may_hold_secret("}"));
        assert!(!mask.old_line_may_hold_secret("protocol bgp p9 {"));
        // Text no template line prints (a value spanning lines) is masked.
        assert!(mask.old_line_may_hold_secret("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"));
    }

    #[test]
    fn a_shape_the_new_render_never_printed_is_masked() {
        let new = "protocol bgp p1 {\n  neighbor 10.0.0.2 as 65001;\n  description \"x\";\n}\n";
        let mask = Mask::new(&[TEMPLATE], new, &[]);
        assert!(mask.old_line_may_hold_secret("  password \"old-secret\";"));
        assert!(!mask.old_line_may_hold_secret("  description \"y\";"));
    }
}
