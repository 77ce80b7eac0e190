//! `printf(format=..., args=[...])`: Go's `fmt.Sprintf` verbs, flags, widths
//! and precisions, for confd templates that format numbers and padding.
//! Where Go would print `%!d(string=x)` into the output, this fails the
//! render with an error that names the verb. Pure: no I/O.

use tera::{Kwargs, State, TeraResult, Value};

/// The template function.
pub(super) fn printf(kwargs: Kwargs, _: &State) -> TeraResult<String> {
    let format = kwargs.must_get::<&str>("format")?;
    let args = kwargs.get::<Vec<Value>>("args")?.unwrap_or_default();
    sprintf(format, &args).map_err(|e| tera::Error::message(format!("printf: {e}")))
}

#[derive(Default, Clone, Copy)]
struct Spec {
    minus: bool,
    plus: bool,
    space: bool,
    zero: bool,
    sharp: bool,
    width: Option<usize>,
    precision: Option<usize>,
}

/// Takes the next argument for a verb (or a `*` width).
type Take<'a> = dyn FnMut(&str) -> Result<(usize, Value), String> + 'a;

const VERBS: &str = "v, s, q, d, b, o, O, x, X, c, U, e, E, f, F, g, G, t and %%";

/// Formats `args` as Go's `fmt.Sprintf(format, args...)` would, or says
/// which verb could not format which argument.
pub(crate) fn sprintf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::with_capacity(format.len() + 16);
    let mut next = 0;
    let mut take = |verb: &str| -> Result<(usize, Value), String> {
        let index = next;
        next += 1;
        args.get(index)
            .map(|a| (index + 1, a.clone()))
            .ok_or_else(|| {
                format!(
                    "`{verb}` has no argument: the format needs more than the {} given in args",
                    args.len()
                )
            })
    };
    let mut chars = format.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&(_, flag)) = chars.peek() {
            match flag {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                ' ' => spec.space = true,
                '0' => spec.zero = true,
                '#' => spec.sharp = true,
                _ => break,
            }
            chars.next();
        }
        let number = |chars: &mut std::iter::Peekable<std::str::CharIndices>,
                      take: &mut Take|
         -> Result<Option<usize>, String> {
            if chars.peek().is_some_and(|&(_, c)| c == '*') {
                chars.next();
                let (n, arg) = take("*")?;
                return arg
                    .as_i128()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        format!(
                            "`*` needs a non-negative integer width, got {} (argument {n})",
                            describe(&arg)
                        )
                    });
            }
            let mut digits = String::new();
            while let Some(&(_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            Ok((!digits.is_empty()).then(|| digits.parse().unwrap_or(usize::MAX)))
        };
        spec.width = number(&mut chars, &mut take)?;
        if chars.peek().is_some_and(|&(_, c)| c == '.') {
            chars.next();
            spec.precision = Some(number(&mut chars, &mut take)?.unwrap_or(0));
        }
        let Some((end, verb)) = chars.next() else {
            return Err(format!(
                "`{}` at the end of the format has no verb",
                &format[start..]
            ));
        };
        let shown = &format[start..end + verb.len_utf8()];
        if verb == '%' {
            out.push('%');
            continue;
        }
        if verb == '[' {
            return Err(format!(
                "`{shown}`: argument indexes (%[n]d) are not supported"
            ));
        }
        if !"vsqdboOxXcUeEfFgGt".contains(verb) {
            return Err(format!("`{shown}` is not a verb printf knows ({VERBS})"));
        }
        let (n, arg) = take(shown)?;
        let text = format_one(verb, spec, &arg).map_err(|need| {
            format!(
                "`{shown}` needs {need}, got {} (argument {n})",
                describe(&arg)
            )
        })?;
        pad(&mut out, &text, spec, numeric(verb, &arg));
    }
    if next < args.len() {
        return Err(format!(
            "{} arguments given but the format uses {next}",
            args.len()
        ));
    }
    Ok(out)
}

fn describe(value: &Value) -> String {
    match value.as_str() {
        Some(s) => format!("string {s:?}"),
        None => format!("{} {value}", value.name()),
    }
}

/// Whether zero padding goes after the sign (numbers) or in front (text).
fn numeric(verb: char, arg: &Value) -> bool {
    arg.is_number() && !matches!(verb, 'c' | 'q' | 'U')
}

fn pad(out: &mut String, text: &str, spec: Spec, numeric: bool) {
    let len = text.chars().count();
    let fill = spec.width.unwrap_or(0).saturating_sub(len);
    if fill == 0 {
        out.push_str(text);
    } else if spec.minus {
        out.push_str(text);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if spec.zero {
        // Zeros go after a sign or a 0x prefix; Go pads text with zeros too.
        let split = if numeric {
            let signed = text.starts_with(['+', '-', ' ']) as usize;
            let rest = &text[signed..];
            let prefix = ["0x", "0X", "0b", "0o"]
                .iter()
                .find(|p| rest.starts_with(**p))
                .map_or(0, |p| p.len());
            signed + prefix
        } else {
            0
        };
        out.push_str(&text[..split]);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(&text[split..]);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(text);
    }
}

/// One verb applied to one argument; on a mismatch, what the verb needs.
fn format_one(verb: char, spec: Spec, arg: &Value) -> Result<String, &'static str> {
    if let Some(i) = arg.as_i128() {
        return match verb {
            'v' | 'd' => Ok(integer(i, 10, spec, "")),
            'b' => Ok(integer(i, 2, spec, if spec.sharp { "0b" } else { "" })),
            'o' => Ok(integer(i, 8, spec, if spec.sharp { "0" } else { "" })),
            'O' => Ok(integer(i, 8, spec, "0o")),
            'x' => Ok(integer(i, 16, spec, if spec.sharp { "0x" } else { "" })),
            'X' => Ok(integer(i, 16, spec, if spec.sharp { "0X" } else { "" }).to_uppercase()),
            'c' => char_of(i).map(String::from).ok_or("a Unicode code point"),
            'q' => char_of(i)
                .map(|c| format!("'{}'", quote_char(c, '\'')))
                .ok_or("a Unicode code point"),
            'U' => Ok(format!("U+{i:04X}")),
            'e' | 'E' | 'f' | 'F' | 'g' | 'G' => Ok(float(i as f64, verb, spec)),
            _ => Err(needs(verb)),
        };
    }
    if let Some(f) = arg.as_f64() {
        return match verb {
            'v' | 'e' | 'E' | 'f' | 'F' | 'g' | 'G' => {
                Ok(float(f, if verb == 'v' { 'g' } else { verb }, spec))
            }
            _ => Err(needs(verb)),
        };
    }
    if let Some(b) = arg.as_bool() {
        return match verb {
            'v' | 't' => Ok(b.to_string()),
            _ => Err(needs(verb)),
        };
    }
    if let Some(s) = arg.as_str() {
        return match verb {
            'v' | 's' => Ok(truncate(s, spec.precision)),
            'q' => Ok(quote(truncate(s, spec.precision).as_str())),
            'x' | 'X' => {
                let hex: String = truncate(s, spec.precision)
                    .bytes()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Ok(if verb == 'X' { hex.to_uppercase() } else { hex })
            }
            _ => Err(needs(verb)),
        };
    }
    if arg.is_none() && verb == 'v' {
        return Ok("<nil>".to_string());
    }
    if let Some(items) = arg.as_array() {
        if matches!(verb, 'v' | 's' | 'd') {
            let parts = items
                .iter()
                .map(|item| format_one(verb, Spec::default(), item))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(format!("[{}]", parts.join(" ")));
        }
    }
    if let Some(map) = arg.as_map() {
        if verb == 'v' {
            let mut parts: Vec<(String, String)> = map
                .iter()
                .map(|(k, v)| Ok((k.to_string(), format_one('v', Spec::default(), v)?)))
                .collect::<Result<_, &'static str>>()?;
            parts.sort();
            let parts: Vec<String> = parts.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            return Ok(format!("map[{}]", parts.join(" ")));
        }
    }
    Err(needs(verb))
}

fn needs(verb: char) -> &'static str {
    match verb {
        'd' | 'b' | 'o' | 'O' | 'c' | 'U' => {
            "an integer (a value from the store is a string: convert it with `| int`)"
        }
        'x' | 'X' => "an integer or a string",
        'e' | 'E' | 'f' | 'F' | 'g' | 'G' => {
            "a number (a value from the store is a string: convert it with `| float`)"
        }
        's' | 'q' => "a string (use %v or %d for numbers)",
        't' => "a boolean",
        _ => "a value it can print",
    }
}

fn char_of(i: i128) -> Option<char> {
    u32::try_from(i).ok().and_then(char::from_u32)
}

fn truncate(s: &str, precision: Option<usize>) -> String {
    match precision {
        Some(p) => s.chars().take(p).collect(),
        None => s.to_string(),
    }
}

/// An integer in `base`, with Go's sign flags, precision (minimum digits)
/// and alternate-form prefix.
fn integer(i: i128, base: u32, spec: Spec, prefix: &str) -> String {
    let magnitude = i.unsigned_abs();
    let mut digits = match base {
        2 => format!("{magnitude:b}"),
        8 => format!("{magnitude:o}"),
        16 => format!("{magnitude:x}"),
        _ => magnitude.to_string(),
    };
    if let Some(p) = spec.precision {
        if p == 0 && magnitude == 0 {
            digits.clear();
        } else if digits.len() < p {
            digits = format!("{}{digits}", "0".repeat(p - digits.len()));
        }
    }
    format!("{}{prefix}{digits}", sign(i < 0, spec))
}

fn sign(negative: bool, spec: Spec) -> &'static str {
    if negative {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    }
}

/// `%e`, `%f` and `%g` as Go's strconv formats them (`%v` is `%g` with the
/// shortest representation).
fn float(f: f64, verb: char, spec: Spec) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    let s = sign(f.is_sign_negative(), spec);
    if f.is_infinite() {
        return format!("{}Inf", if s.is_empty() { "+" } else { s });
    }
    let a = f.abs();
    let upper = verb.is_ascii_uppercase();
    let body = match verb.to_ascii_lowercase() {
        'e' => exponent(a, spec.precision.unwrap_or(6)),
        'f' => format!("{a:.*}", spec.precision.unwrap_or(6)),
        _ => general(a, spec.precision),
    };
    let body = if upper { body.to_uppercase() } else { body };
    format!("{s}{body}")
}

/// `d.ddde+XX`, Go style (sign and at least two exponent digits).
fn exponent(a: f64, decimals: usize) -> String {
    let rust = format!("{a:.decimals$e}");
    go_exponent(&rust)
}

fn go_exponent(rust: &str) -> String {
    let (mantissa, exp) = rust.split_once('e').unwrap_or((rust, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

/// Go's `%g`: the decimal digits (shortest, or rounded to `precision`
/// significant digits, trailing zeros dropped), as `%e` when the exponent is
/// below -4 or at least the precision (6 for the shortest form), else `%f`.
fn general(a: f64, precision: Option<usize>) -> String {
    let rust = match precision {
        None => format!("{a:e}"),
        Some(p) => format!("{a:.*e}", p.max(1) - 1),
    };
    let (mantissa, exp) = rust.split_once('e').unwrap_or((&rust, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let nd = digits.len() as i32;
    let dp = exp + 1;
    let shortest = precision.is_none();
    let mut prec = precision.map_or(nd, |p| p.max(1) as i32);
    let mut eprec = prec;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    if shortest {
        eprec = 6;
    }
    if exp < -4 || exp >= eprec {
        if prec > nd {
            prec = nd;
        }
        let (first, rest) = digits.split_at(1);
        let rest = &rest[..(prec as usize - 1).min(rest.len())];
        let mantissa = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        return go_exponent(&format!("{mantissa}e{exp}"));
    }
    if prec > dp {
        prec = nd;
    }
    let decimals = (prec - dp).max(0) as usize;
    format!("{a:.decimals$}")
}

/// A Go double-quoted string literal (`strconv.Quote`).
fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        out.push_str(&quote_char(c, '"'));
    }
    out.push('"');
    out
}

fn quote_char(c: char, quote: char) -> String {
    match c {
        '\x07' => "\\a".into(),
        '\x08' => "\\b".into(),
        '\x0c' => "\\f".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        '\x0b' => "\\v".into(),
        '\\' => "\\\\".into(),
        c if c == quote => format!("\\{c}"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => format!("\\x{:02x}", c as u32),
        c if c.is_control() => format!("\\u{:04x}", c as u32),
        c => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn go(format: &str, args: serde_json::Value) -> Result<String, String> {
        let args: Vec<Value> = args
            .as_array()
            .unwrap()
            .iter()
            .map(Value::from_serializable)
            .collect();
        sprintf(format, &args)
    }

    #[test]
    fn integers_take_width_padding_sign_and_base() {
        let cases = [
            ("%d", json!([42]), "42"),
            ("%05d", json!([42]), "00042"),
            ("%05d", json!([-42]), "-0042"),
            ("%-5d|", json!([42]), "42   |"),
            ("%5d", json!([42]), "   42"),
            ("%+d", json!([42]), "+42"),
            ("% d", json!([42]), " 42"),
            ("%.3d", json!([7]), "007"),
            ("%x", json!([255]), "ff"),
            ("%X", json!([255]), "FF"),
            ("%#x", json!([255]), "0xff"),
            ("%08b", json!([5]), "00000101"),
            ("%o", json!([8]), "10"),
            ("%#o", json!([8]), "010"),
            ("%O", json!([8]), "0o10"),
            ("%x", json!([-255]), "-ff"),
            ("%c", json!([65]), "A"),
            ("%q", json!([65]), "'A'"),
            ("%U", json!([65]), "U+0041"),
            ("%v", json!([4200000001u64]), "4200000001"),
            ("%*d", json!([4, 7]), "   7"),
            ("%d%%", json!([50]), "50%"),
        ];
        for (format, args, want) in cases {
            assert_eq!(go(format, args.clone()).unwrap(), want, "{format} {args}");
        }
    }

    #[test]
    fn floats_format_like_go_strconv() {
        let cases = [
            ("%f", json!([1.23456]), "1.234560"),
            ("%.2f", json!([1.23456]), "1.23"),
            ("%.0f", json!([2.5]), "2"),
            ("%.0f", json!([3.5]), "4"),
            ("%8.3f", json!([1.23456]), "   1.235"),
            ("%08.3f", json!([-1.23456]), "-001.235"),
            ("%e", json!([1234.5678]), "1.234568e+03"),
            ("%E", json!([0.000123]), "1.230000E-04"),
            ("%g", json!([1234.5678]), "1234.5678"),
            ("%g", json!([0.00001234]), "1.234e-05"),
            ("%g", json!([100000.0]), "100000"),
            ("%g", json!([1000000.0]), "1e+06"),
            ("%v", json!([1e20]), "1e+20"),
            ("%v", json!([123456789.0]), "1.23456789e+08"),
            ("%v", json!([0.5]), "0.5"),
            ("%.3g", json!([1.23456]), "1.23"),
            ("%.3g", json!([100.0]), "100"),
            ("%.2g", json!([1234.0]), "1.2e+03"),
            ("%f", json!([42]), "42.000000"),
            ("%+.1f", json!([2.0]), "+2.0"),
        ];
        for (format, args, want) in cases {
            assert_eq!(go(format, args.clone()).unwrap(), want, "{format} {args}");
        }
    }

    #[test]
    fn strings_bools_and_lists() {
        let cases = [
            ("%s", json!(["peer"]), "peer"),
            ("%-8s|", json!(["peer"]), "peer    |"),
            ("%8s|", json!(["peer"]), "    peer|"),
            ("%.2s", json!(["peer"]), "pe"),
            ("%q", json!(["a\"b\n"]), "\"a\\\"b\\n\""),
            ("%x", json!(["hi"]), "6869"),
            ("%s-%s", json!(["a", "b"]), "a-b"),
            ("%v %t", json!([true, false]), "true false"),
            ("%v", json!([["a", 1]]), "[a 1]"),
            ("%v", json!([{"b": 1, "a": "x"}]), "map[a:x b:1]"),
            ("%v", json!([null]), "<nil>"),
            ("no verbs", json!([]), "no verbs"),
        ];
        for (format, args, want) in cases {
            assert_eq!(go(format, args.clone()).unwrap(), want, "{format} {args}");
        }
    }

    #[test]
    fn errors_name_the_verb_and_the_argument() {
        let cases = [
            ("%05d", json!(["42"]), "`%05d` needs an integer (a value from the store is a string: convert it with `| int`), got string \"42\" (argument 1)"),
            ("%s %d", json!(["a"]), "`%d` has no argument: the format needs more than the 1 given in args"),
            ("%s", json!(["a", "b"]), "2 arguments given but the format uses 1"),
            ("%y", json!([1]), "`%y` is not a verb printf knows"),
            ("%.1f", json!(["1.5"]), "`%.1f` needs a number"),
            ("%s", json!([5]), "`%s` needs a string (use %v or %d for numbers), got u64 5"),
            ("%t", json!(["true"]), "`%t` needs a boolean"),
            ("100%", json!([]), "`%` at the end of the format has no verb"),
            ("%[1]d", json!([1]), "argument indexes"),
        ];
        for (format, args, fragment) in cases {
            let err = go(format, args.clone()).unwrap_err();
            assert!(err.contains(fragment), "{format} {args}: {err}");
        }
    }
}
