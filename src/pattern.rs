//! Key patterns as confd matches them: Go's `path.Match` (`*`, `?`,
//! `[...]` classes with `^` negation and ranges, `\` escapes), over whole
//! keys. Pure functions; never touches the store or a backend.
//!
//! Kept by hand: the glob crates (`glob`, `globset`, `wildmatch`) differ
//! from Go on what a migrating template relies on (`[^...]` negation,
//! backslash escapes, `**`, `{a,b}`), and Go's rules fit in a page.

use std::fmt;

/// Why a pattern is malformed (Go's `ErrBadPattern`, with the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern {
    pub pattern: String,
    pub reason: &'static str,
}

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad pattern `{}`: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for BadPattern {}

/// The characters that make a pattern more than a literal key.
const META: &[char] = &['*', '?', '[', '\\'];

/// The literal start of `pattern`: everything before its first
/// metacharacter. Every matching key starts with it.
pub fn literal_prefix(pattern: &str) -> &str {
    &pattern[..pattern.find(META).unwrap_or(pattern.len())]
}

/// Checks that `pattern` is well formed, as Go does before matching.
pub fn validate(pattern: &str) -> Result<(), BadPattern> {
    let bad = |reason| BadPattern {
        pattern: pattern.to_string(),
        reason,
    };
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if i + 1 >= chars.len() {
                    return Err(bad("it ends with a lone `\\`"));
                }
                i += 2;
            }
            '[' => i = parse_class(&chars, i + 1).map_err(bad)?.1,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether `name` matches `pattern` in full, as Go's `path.Match`: `*` is
/// any run of characters other than `/`, `?` one character other than
/// `/`, `[a-z]`/`[^a-z]` one character in (or not in) the class, `\c` the
/// character `c`. A malformed pattern matches nothing; call [`validate`]
/// to report it.
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    match_from(&pattern, &name).unwrap_or(false)
}

/// A pattern prepared for matching many names, as a `gets` over a prefix
/// does: the pattern is decoded once and the name buffer reused, and the
/// common lone `*` (`/peers/*`) is a scan for `/`.
pub struct Matcher {
    pattern: Vec<char>,
    any_segment: bool,
    name: Vec<char>,
}

impl Matcher {
    pub fn new(pattern: &str) -> Matcher {
        Matcher {
            pattern: pattern.chars().collect(),
            any_segment: pattern == "*",
            name: Vec::new(),
        }
    }

    /// [`matches`] of this pattern and `name`.
    pub fn matches(&mut self, name: &str) -> bool {
        if self.any_segment {
            return !name.contains('/');
        }
        self.name.clear();
        self.name.extend(name.chars());
        match_from(&self.pattern, &self.name).unwrap_or(false)
    }
}

/// Backtracking over `*` only; everything else consumes exactly one
/// character, so the single backtrack point of the classic wildcard
/// algorithm suffices (a `*` never crosses `/`, so a new `*` resets it).
fn match_from(pattern: &[char], name: &[char]) -> Result<bool, &'static str> {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
            continue;
        }
        if n == name.len() {
            if p == pattern.len() {
                return Ok(true);
            }
        } else if p < pattern.len() {
            let (ok, next) = match_one(pattern, p, name[n])?;
            if ok {
                p = next;
                n += 1;
                continue;
            }
        }
        // Let the last `*` take one more character, if it may.
        match star {
            Some((sp, sn)) if sn < name.len() && name[sn] != '/' => {
                star = Some((sp, sn + 1));
                p = sp + 1;
                n = sn + 1;
            }
            _ => return Ok(false),
        }
    }
}

/// Whether the pattern item at `p` (not `*`) matches `c`, and where the
/// next item starts.
fn match_one(pattern: &[char], p: usize, c: char) -> Result<(bool, usize), &'static str> {
    match pattern[p] {
        '?' => Ok((c != '/', p + 1)),
        '[' => {
            let ((negated, ranges), next) = parse_class(pattern, p + 1)?;
            let inside = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
            Ok((inside != negated, next))
        }
        '\\' => match pattern.get(p + 1) {
            Some(&literal) => Ok((literal == c, p + 2)),
            None => Err("it ends with a lone `\\`"),
        },
        literal => Ok((literal == c, p + 1)),
    }
}

type Class = (bool, Vec<(char, char)>);

/// Parses a class whose body starts at `i` (after `[`): whether it is
/// negated, its ranges, and the index after its `]`.
fn parse_class(chars: &[char], mut i: usize) -> Result<(Class, usize), &'static str> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        match chars.get(i) {
            None => return Err("a `[` class is not closed with `]`"),
            Some(']') if !ranges.is_empty() => return Ok(((negated, ranges), i + 1)),
            _ => {}
        }
        let (lo, next) = class_char(chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            let (end, next) = class_char(chars, i + 1)?;
            hi = end;
            i = next;
        }
        ranges.push((lo, hi));
    }
}

/// One (possibly escaped) character of a class.
fn class_char(chars: &[char], i: usize) -> Result<(char, usize), &'static str> {
    match chars.get(i) {
        None => Err("a `[` class is not closed with `]`"),
        Some('-') | Some(']') => Err("a `[` class has a `-` or `]` where a character belongs"),
        Some('\\') => match chars.get(i + 1) {
            Some(&c) => Ok((c, i + 2)),
            None => Err("it ends with a lone `\\`"),
        },
        Some(&c) => Ok((c, i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases from Go's `path.Match` documentation and behaviour.
    #[test]
    fn matches_like_go_path_match() {
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("*x", "xxx", true),
            ("/peers/*", "/peers/a", true),
            ("/peers/*", "/peers/a/b", false),
            ("/peers/node-?", "/peers/node-1", true),
            ("/peers/node-?", "/peers/node-10", false),
            ("/peers/node-[0-9]*", "/peers/node-10", true),
            ("/peers/node-[^0-9]*", "/peers/node-10", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(validate(pattern), Ok(()), "{pattern}");
            assert_eq!(matches(pattern, name), want, "{pattern:?} vs {name:?}");
            assert_eq!(Matcher::new(pattern).matches(name), want, "{pattern:?}");
        }
        let mut star = Matcher::new("*");
        for (name, want) in [("", true), ("a", true), ("a/b", false), ("☺", true)] {
            assert_eq!(star.matches(name), want, "{name:?}");
            assert_eq!(matches("*", name), want, "{name:?}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused_with_a_reason() {
        for (pattern, reason) in [
            ("[]a]", "where a character belongs"),
            ("[-]", "where a character belongs"),
            ("[x-]", "where a character belongs"),
            ("[a-b-c]", "where a character belongs"),
            ("[", "not closed"),
            ("[^", "not closed"),
            ("[^bc", "not closed"),
            ("a[", "not closed"),
            ("\\", "lone"),
            ("[\\", "lone"),
        ] {
            let err = validate(pattern).unwrap_err();
            assert!(err.reason.contains(reason), "{pattern:?}: {err}");
            assert!(err.to_string().contains(pattern), "{err}");
            assert!(!matches(pattern, "a"), "{pattern:?} matched");
        }
    }

    #[test]
    fn the_literal_prefix_ends_at_the_first_metacharacter() {
        assert_eq!(literal_prefix("/peers/*/asn"), "/peers/");
        assert_eq!(literal_prefix("/peers/node-?"), "/peers/node-");
        assert_eq!(literal_prefix("/p[ab]"), "/p");
        assert_eq!(literal_prefix("/a\\*"), "/a");
        assert_eq!(literal_prefix("/plain"), "/plain");
    }
}
