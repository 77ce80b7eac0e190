//! Template filters: confd-style helpers (`json`, `base`, `dir`, `base64_encode`,
//! `base64_decode`, `sort_by_length`) and validation filters that fail the render
//! when a value is not what a routing daemon needs (`ipv4`, `ipv6`, `ip`, `cidr`,
//! `asn`, `port`, `uint`, `bird_ident`, `bird_string`).
//!
//! Filters are pure functions of their input: they never touch the filesystem and
//! never run commands. Only the validation filters (and `hash_to_ipv4`, whose
//! output is an address) mark their output safe for the `bird` output policy;
//! `raw` marks anything. Validation errors name the offending value, except where
//! it may be a secret (`bird_string`, `json`, `base64_decode`), where they name the
//! position of the problem instead, and except a value that is or comes from a
//! secret key's value (a field of a secret JSON document too), which is never shown.

use std::borrow::Cow;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tera::{Error, ErrorKind, Kwargs, State, Tera, TeraResult, Value};

/// Registers confera's filters on a Tera instance.
pub fn register(tera: &mut Tera) {
    tera.register_filter("json", json);
    tera.register_filter("base", base);
    tera.register_filter("dir", dir);
    tera.register_filter("base64_encode", base64_encode);
    tera.register_filter("base64_decode", base64_decode);
    tera.register_filter("sort_by_length", sort_by_length);
    tera.register_filter("ipv4", ipv4);
    tera.register_filter("ipv6", ipv6);
    tera.register_filter("ip", ip);
    tera.register_filter("cidr", cidr);
    tera.register_filter("asn", asn);
    tera.register_filter("port", port);
    tera.register_filter("uint", uint);
    tera.register_filter("bird_ident", bird_ident);
    tera.register_filter("bird_string", bird_string);
    tera.register_filter("hash_to_ipv4", hash_to_ipv4);
    tera.register_filter("raw", super::output::raw);
}

/// Calico's `hashToIPv4`: the first four bytes of the SHA-256 of `name`, as a
/// dotted IPv4 address (a router id derived from the node name).
pub(crate) fn hash_to_ipv4_text(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    Ipv4Addr::new(digest[0], digest[1], digest[2], digest[3]).to_string()
}

/// `hash_to_ipv4`: the filter form of `hashToIPv4(name=...)`.
fn hash_to_ipv4(value: &Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    let name = scalar_text(value, "a node name")?;
    Ok(Value::safe_string(&hash_to_ipv4_text(&name)))
}

// --- confd-style helpers ---------------------------------------------------

/// `json`: parses a JSON document into a template value (maps, arrays, numbers,
/// bools, strings, null).
fn json(text: &str, _: Kwargs, _: &State) -> TeraResult<Value> {
    let parsed: serde_json::Value = serde_json::from_str(text)
        .map_err(|err| Error::message(format!("value is not valid JSON: {err}")))?;
    Value::try_from_serializable(&parsed)
}

/// `base`: the last element of a slash-separated path, like Go's `path.Base`:
/// trailing slashes are ignored, `""` gives `"."` and `"/"` gives `"/"`.
/// A value, not a `String`: a name of up to 21 bytes is stored in the value
/// itself, without an allocation (it runs once per line of a `gets` loop).
fn base(path: &str, _: Kwargs, _: &State) -> Value {
    let trimmed = path.trim_end_matches('/');
    let base = if path.is_empty() {
        "."
    } else if trimmed.is_empty() {
        "/"
    } else {
        trimmed.rsplit_once('/').map_or(trimmed, |(_, last)| last)
    };
    Value::from(base)
}

/// `dir`: everything but the last element of a slash-separated path, cleaned,
/// like Go's `path.Dir`: `"/a/b"` gives `"/a"`, `"/a"` gives `"/"`, `"a"` gives `"."`.
fn dir(path: &str, _: Kwargs, _: &State) -> String {
    let parent = path.rfind('/').map_or("", |slash| &path[..=slash]);
    clean_path(parent)
}

/// Lexical path cleaning, like Go's `path.Clean`: single slashes, no `.`
/// elements, `..` resolved where possible, `"."` for an empty result.
fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            ".." if rooted => {}
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// `base64_encode`: standard alphabet, with padding.
fn base64_encode(text: &str, _: Kwargs, _: &State) -> String {
    BASE64.encode(text)
}

/// `base64_decode`: standard alphabet, with padding; the result must be UTF-8.
fn base64_decode(text: &str, _: Kwargs, _: &State) -> TeraResult<String> {
    let bytes = BASE64
        .decode(text)
        .map_err(|err| Error::message(format!("value is not valid base64: {err}")))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::message("value is valid base64 but does not decode to UTF-8 text"))
}

/// `sort_by_length`: an array of strings, shortest first (in characters), equal
/// lengths in lexical order.
fn sort_by_length(items: &[Value], _: Kwargs, _: &State) -> TeraResult<Vec<Value>> {
    let mut strings = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            item.as_str().ok_or_else(|| {
                Error::message(format!(
                    "sort_by_length expects an array of strings, but item {index} is {}",
                    item.name()
                ))
            })
        })
        .collect::<TeraResult<Vec<&str>>>()?;
    strings.sort_by_key(|s| (s.chars().count(), *s));
    Ok(strings.into_iter().map(Value::from).collect())
}

// --- validation filters ------------------------------------------------------

/// `ipv4`: an IPv4 address in dotted-quad form (no leading zeros).
fn ipv4(value: &Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    address::<Ipv4Addr>(value, "an IPv4 address")
}

/// `ipv6`: an IPv6 address, normalised to its canonical text (RFC 5952).
fn ipv6(value: &Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    address::<Ipv6Addr>(value, "an IPv6 address")
}

/// `ip`: an IPv4 or IPv6 address, normalised to its canonical text.
fn ip(value: &Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    address::<IpAddr>(value, "an IP address")
}

fn address<A: FromStr + Display>(value: &Value, expected: &str) -> TeraResult<Value> {
    let text = token(value, expected)?;
    text.parse::<A>()
        .map(|addr| Value::safe_string(&addr.to_string()))
        .map_err(|_| rejected(value, expected, None))
}

/// `cidr(family=4|6)`: a network prefix `ADDRESS/LENGTH` without host bits set
/// (BIRD refuses `10.0.0.1/24`), normalised to canonical text.
fn cidr(value: &Value, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let family = kwargs.get::<u8>("family")?;
    let expected = match family {
        None => "an IP prefix (like 10.0.0.0/24 or fd00::/64)",
        Some(4) => "an IPv4 prefix (like 10.0.0.0/24)",
        Some(6) => "an IPv6 prefix (like fd00::/64)",
        Some(other) => {
            return Err(Error::message(format!(
                "cidr: family must be 4 or 6, not {other}"
            )))
        }
    };
    let text = token(value, expected)?;
    let (addr, len) = parse_prefix(&text)
        .filter(|(addr, _)| family.is_none_or(|family| family == family_of(*addr)))
        .ok_or_else(|| rejected(value, expected, None))?;
    let net = network(addr, len);
    if net != addr {
        let reason = format!("host bits are set (did you mean {net}/{len}?)");
        return Err(rejected(value, expected, Some(&reason)));
    }
    Ok(Value::safe_string(&format!("{addr}/{len}")))
}

fn parse_prefix(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let max_len = if addr.is_ipv4() { 32 } else { 128 };
    let len = parse_decimal(len).filter(|len| *len <= max_len)?;
    Some((addr, u8::try_from(len).ok()?))
}

fn family_of(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        4
    } else {
        6
    }
}

/// The address with every bit past the first `len` cleared.
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(addr) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(addr) & mask))
        }
        IpAddr::V6(addr) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(addr) & mask))
        }
    }
}

/// `asn`: an AS number 1..=4294967295, as asplain or asdot `X.Y` (both parts
/// 0..=65535); returns the asplain number.
fn asn(value: &Value, _: Kwargs, _: &State) -> TeraResult<u64> {
    const EXPECTED: &str = "an AS number (1..=4294967295, or asdot X.Y)";
    let text = token(value, EXPECTED)?;
    let half = |part: &str| parse_decimal(part).filter(|n| *n <= 0xffff);
    let number = match text.split_once('.') {
        Some((high, low)) => half(high)
            .zip(half(low))
            .map(|(high, low)| high << 16 | low),
        None => parse_decimal(&text),
    };
    number
        .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
        .ok_or_else(|| rejected(value, EXPECTED, None))
}

/// `port`: a TCP/UDP port 1..=65535; returns a number.
fn port(value: &Value, _: Kwargs, _: &State) -> TeraResult<u64> {
    number_in(value, "a port number (1..=65535)", 1..=65535)
}

/// `uint(min=, max=)`: an unsigned integer within the optional inclusive bounds;
/// returns a number.
fn uint(value: &Value, kwargs: Kwargs, _: &State) -> TeraResult<u64> {
    let min = kwargs.get::<u64>("min")?.unwrap_or(0);
    let max = kwargs.get::<u64>("max")?.unwrap_or(u64::MAX);
    if min > max {
        return Err(Error::message(format!(
            "uint: min={min} is greater than max={max}"
        )));
    }
    let expected = match (min, max) {
        (0, u64::MAX) => "an unsigned integer".to_string(),
        (min, u64::MAX) => format!("an unsigned integer >= {min}"),
        (min, max) => format!("an unsigned integer in {min}..={max}"),
    };
    number_in(value, &expected, min..=max)
}

fn number_in(value: &Value, expected: &str, range: RangeInclusive<u64>) -> TeraResult<u64> {
    let text = token(value, expected)?;
    parse_decimal(&text)
        .filter(|n| range.contains(n))
        .ok_or_else(|| rejected(value, expected, None))
}

/// Plain decimal digits (no sign), as a u64; `None` on anything else or overflow.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `bird_ident`: a name BIRD 2 reads as a symbol, for protocols, filters,
/// tables, templates, constants and the like.
fn bird_ident(value: &Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    const EXPECTED: &str = "a BIRD symbol name";
    let name = token(value, EXPECTED)?;
    match bird_symbol_problem(&name) {
        Some(problem) => Err(rejected(value, EXPECTED, Some(problem))),
        None => Ok(Value::safe_string(&name)),
    }
}

/// Why BIRD 2.0's lexer would not read `name` as a symbol, if it would not.
fn bird_symbol_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Some("only ASCII letters, digits and _ are allowed")
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("it starts with a digit")
    } else if name.len() > 64 {
        Some("it is longer than 64 characters")
    } else if is_bird_reserved(name) {
        Some("it is a reserved word in BIRD 2")
    } else if name.len() >= 32 && name.len() % 2 == 0 && name.bytes().all(|b| b.is_ascii_hexdigit())
    {
        Some("BIRD reads an even run of 32 or more hex digits as a byte string")
    } else {
        None
    }
}

fn is_bird_reserved(name: &str) -> bool {
    // Built once: a mesh of thousands of peers asks thousands of times.
    static RESERVED: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    RESERVED
        .get_or_init(|| {
            BIRD_KEYWORDS
                .split_ascii_whitespace()
                .chain(BIRD_CONSTANTS.split_ascii_whitespace())
                .collect()
        })
        .contains(name)
}

/// `bird_string`: the value as a complete BIRD string literal, quotes included.
///
/// BIRD 2.0 string literals have no escape sequences (`"a\"` is the string
/// `a\`, and a newline ends the file with "Unterminated string"), so a value
/// containing `"`, a backslash or a control character is refused rather than
/// escaped. Backslashes are harmless to 2.0.12 but are refused so the literal
/// means the same to any BIRD that does read escapes. The error names the
/// character and its position but not the value, which may be a password.
fn bird_string(value: &Value, _: Kwargs, _: &State) -> TeraResult<Value> {
    let text = scalar_text(value, "a BIRD string")?;
    let refused = text
        .chars()
        .enumerate()
        .find(|(_, c)| matches!(c, '"' | '\\') || c.is_control());
    match refused {
        Some((index, c)) => Err({
            note_rejected(value);
            Error::message(format!(
                "value cannot be a BIRD string: it contains {c:?} at character {}; \
             BIRD 2.0 strings have no escapes, so quotes, backslashes and control \
             characters are refused",
                index + 1
            ))
        }),
        None => Ok(Value::safe_string(&format!("\"{text}\""))),
    }
}

// --- shared input handling ---------------------------------------------------

thread_local! {
    /// The last value a validation filter refused on this thread, so the
    /// render error can name the key it came from (even when the message
    /// does not show the value).
    static REJECTED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn note_rejected(value: &Value) {
    let text = match value.as_str() {
        Some(text) => text.to_string(),
        None => value.to_string(),
    };
    REJECTED.with(|r| *r.borrow_mut() = Some(text));
}

/// Takes the value last refused by a validation filter on this thread.
pub(crate) fn take_rejected() -> Option<String> {
    REJECTED.with(|r| r.borrow_mut().take())
}

/// The text of a scalar input: a string as it is, an integer in decimal.
/// Floats, bools, arrays and maps are refused without echoing them.
fn scalar_text<'v>(value: &'v Value, expected: &str) -> TeraResult<Cow<'v, str>> {
    if let Some(text) = value.as_str() {
        Ok(Cow::Borrowed(text))
    } else if value.as_i128().is_some() || value.as_u128().is_some() {
        Ok(Cow::Owned(value.to_string()))
    } else if value.is_undefined() {
        // This kind makes Tera point at the variable, so the render error
        // can say which one is not defined.
        Err(Error::new(ErrorKind::InvalidArgument {
            expected_type: format!("{expected} as a string or an integer"),
            actual_type: "undefined".to_string(),
        }))
    } else {
        Err(Error::message(format!(
            "expected {expected} as a string or an integer, got {}",
            value.name()
        )))
    }
}

/// A scalar input that must be one token: whitespace or a control character
/// could end a config statement and start another, so both are refused.
fn token<'v>(value: &'v Value, expected: &str) -> TeraResult<Cow<'v, str>> {
    let text = scalar_text(value, expected)?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let reason = "it contains whitespace or a control character";
        return Err(rejected(value, expected, Some(reason)));
    }
    Ok(text)
}

/// The error for a value that is not what a filter expects, for example
/// `"10.0.0.256" is not an IPv4 address`.
fn rejected(value: &Value, expected: &str, reason: Option<&str>) -> Error {
    note_rejected(value);
    let text = match value.as_str() {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(value.to_string()),
    };
    // A value that is, or comes from, a secret key's value is never shown,
    // not even a field of a secret JSON document.
    let secret = super::functions::source_of(&text).is_some_and(|(_, secret)| secret);
    let shown = if secret {
        "the value (from a secret key, not shown)".to_string()
    } else if value.as_str().is_some() {
        format!("{text:?}")
    } else {
        text.into_owned()
    };
    match reason {
        Some(reason) => Error::message(format!("{shown} is not {expected}: {reason}")),
        None => Error::message(format!("{shown} is not {expected}")),
    }
}

// --- BIRD 2.0.12 reserved words ----------------------------------------------
//
// Every word below fails to parse where BIRD 2.0.12 expects a symbol (the name
// of a protocol, constant, filter, function, table, template or local
// variable). The candidates were every identifier-like string in the `bird`
// binary and all their suffixes (the linker merges string tails); each was
// checked with `bird -p` in all of those positions. Words are case-sensitive:
// `filter` is reserved, `Filter` is not. `include` parses as a symbol but is
// also the lexer's include directive, so it is refused too. The predefined
// tables `master4` and `master6` are symbols, not keywords, and are allowed.

/// Keywords of the BIRD 2.0.12 grammar.
const BIRD_KEYWORDS: &str = "\
    accept action add address administrative advertise after aigp algorithm all allow \
    always area as as4 asn attribute attributes auth authentication autonomous aware \
    babel babel_metric base bcast bfd bgp bgp_aggregator bgp_aigp bgp_atomic_aggr \
    bgp_cluster_list bgp_community bgp_ext_community bgp_large_community bgp_local_pref \
    bgp_med bgp_next_hop bgp_origin bgp_originator_id bgp_otc bgp_path bgpmask bgppath \
    bind bird blackhole blake2b256 blake2b512 blake2s128 blake2s256 block bool \
    broadcast bt_assert bt_check_assign bt_test_same bt_test_suite buffer bug by \
    c6742d7ea150240ce66a69b7b4cb9462890f95 capabilities case cease change channels \
    check circuit class client clist cluster code collision commands communities \
    confederation config configuration configure confirm connect connection contains \
    cost cost2 count cryptographic current data data1 data2 dead debug deconfigured \
    default define defined delay delete demand description dest deterministic dev \
    device digits direct disable disabled dnssl do domain dont_fragment down dport drop \
    dscp dst dump dynamic ebgp ec echo eclist ecmp eligible else empty enable enforce \
    entries error eval events exit exp expire export exported extended external false \
    fatal filename filter filtered filters first first_fragment flags flow4 flow6 flush \
    for forget format fragment free from function garbage gateway gc generate generic \
    global graceful gw gw_mpls header hello help hidden high hit hmac hold hop horizon \
    hostname ibgp icmp id idle if ifindex ifname ignore igp igp_metric import in \
    include infinity info instance int interface interfaces internal interpret interval \
    ip ipv4 ipv4_mc ipv4_mpls ipv6 ipv6_mc ipv6_mpls ipv6_sadr is_fragment is_v4 is_v6 \
    iso keep keepalive kernel key keyed krt_advmss krt_cwnd krt_feature_allfrag \
    krt_feature_ecn krt_hoplimit krt_initcwnd krt_initrwnd krt_lock_advmss \
    krt_lock_cwnd krt_lock_hoplimit krt_lock_mtu krt_lock_reordering krt_lock_rto_min \
    krt_lock_rtt krt_lock_rttvar krt_lock_sstresh krt_lock_window krt_metric krt_mtu \
    krt_prefsrc krt_quickack krt_realm krt_reordering krt_rto_min krt_rtt krt_rttvar \
    krt_scope krt_source krt_sstresh krt_window label large last last_fragment \
    last_nonaggregated latency lc lclist learn len length lifetime limit linger link \
    lived lladdr local log long low lsa lsadb lsid mac managed mandatory mask match max \
    maxlen md5 med medium member memory merge messages meticulous metric min missing \
    mode mpls mrt mrtdump ms mtu mult multicast multihop multiplier name nbma neighbor \
    neighbors net netlink netmask networks next ng no noexport nonbroadcast none normal \
    ns nssa of off offset older on onlink only originate ospf ospf_metric1 ospf_metric2 \
    ospf_router_id ospf_tag other out packets pair passive password passwords path \
    paths pe perf period permissive persist pipe plaintext pointomultipoint pointopoint \
    poison poll port preexport prefer preference preferred prefix prepend pri primary \
    print printn priority private prohibit propagate proto protocol protocols ptmp ptp \
    public quad quit ra ra_lifetime ra_preference radv randomize range rd rdnss \
    reachable real receive recursive refresh reject rejected reload remote repeat \
    require reset resources restart restrict retrans retransmit retry return reverse \
    rfc1583compat rfc5838 rip rip_metric rip_tag ro roa4 roa6 roa_check roles route \
    router routes rpki rr rs rt rx rxcost s sadr scan scope sec secondary security self \
    sensitive sessions set setkey sets settle sha1 sha256 sha384 sha512 short show \
    shutdown simple skip sockets soft solicited sorted source split sport src ssh \
    stability stale start startup state states static stats status stderr strict string \
    stub stubnet summary suppression symbols syslog table tag tcp template then \
    threshold tick time timeformat timeout timer to topology trace translator transmit \
    transport trie trigger true ttl tx type undo unicast unknown unreachable unset \
    update us user v2 v3 valid validate version via virtual vpn vpn4 vpn4_mc vpn4_mpls \
    vpn6 vpn6_mc vpn6_mpls vrf wait warn warning watchdog weight where wired wireless \
    yes zero";

/// Predefined enum constants of BIRD 2.0.12 (`RTS_STATIC`, `NET_IP4`, ...).
const BIRD_CONSTANTS: &str = "\
    AF_IPV4 AF_IPV6 NET_FLOW4 NET_FLOW6 NET_IP4 NET_IP6 NET_IP6_SADR NET_ROA4 NET_ROA6 \
    NET_VPN4 NET_VPN6 ORIGIN_EGP ORIGIN_IGP ORIGIN_INCOMPLETE RA_PREF_HIGH RA_PREF_LOW \
    RA_PREF_MEDIUM ROA_INVALID ROA_UNKNOWN ROA_VALID RTD_BLACKHOLE RTD_PROHIBIT \
    RTD_UNICAST RTD_UNREACHABLE RTS_BABEL RTS_BGP RTS_DEVICE RTS_INHERIT RTS_OSPF \
    RTS_OSPF_EXT1 RTS_OSPF_EXT2 RTS_OSPF_IA RTS_PIPE RTS_REDIRECT RTS_RIP RTS_STATIC \
    RTS_STATIC_DEVICE SCOPE_HOST SCOPE_LINK SCOPE_ORGANIZATION SCOPE_SITE \
    SCOPE_UNDEFINED SCOPE_UNIVERSE";

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde_json::json;
    use tera::{Context, ErrorKind};

    /// Renders `template` with the filters registered and `value` bound to `v`;
    /// on failure, the filter's message without Tera's source report.
    fn render(template: &str, value: impl Serialize) -> Result<String, String> {
        let mut tera = Tera::new();
        register(&mut tera);
        tera.add_raw_template("t", template).unwrap();
        let mut context = Context::new();
        context.insert("v", &value);
        tera.render("t", &context).map_err(|err| match err.kind() {
            ErrorKind::RenderingError(report) => report.message().to_string(),
            _ => err.to_string(),
        })
    }

    /// `{{ v | <filter> }}`.
    fn apply(filter: &str, value: impl Serialize) -> Result<String, String> {
        render(&format!("{{{{ v | {filter} }}}}"), value)
    }

    #[track_caller]
    fn assert_rejected(filter: &str, value: impl Serialize, fragment: &str) {
        match apply(filter, value) {
            Ok(out) => panic!("{filter} accepted a bad value and rendered {out:?}"),
            Err(message) => assert!(
                message.contains(fragment),
                "{filter}: {message:?} does not contain {fragment:?}"
            ),
        }
    }

    // json

    #[test]
    fn json_parses_maps_arrays_numbers_and_bools() {
        let doc = r#"{"peers": [{"asn": 65001}, {"asn": 65002}], "enabled": true, "note": null}"#;
        let out = render(
            "{% set d = v | json %}{{ d.peers | length }} {{ d.peers[1].asn + 1 }} {{ d.enabled }}",
            doc,
        );
        assert_eq!(out.unwrap(), "2 65003 true");
    }

    #[test]
    fn json_output_feeds_the_numeric_validators() {
        assert_eq!(render("{{ v | json | asn }}", "65001").unwrap(), "65001");
        assert_eq!(render("{{ v | json | port }}", "179").unwrap(), "179");
    }

    #[test]
    fn json_rejects_invalid_documents_without_echoing_them() {
        let message = apply("json", "{\"password\": secret}").unwrap_err();
        assert!(message.contains("not valid JSON"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }

    // base and dir

    #[test]
    fn base_and_dir_split_paths_like_go_path_package() {
        let cases = [
            // path, base, dir
            ("/a/b", "b", "/a"),
            ("/a", "a", "/"),
            ("/a/b/", "b", "/a/b"),
            ("a/b", "b", "a"),
            ("a", "a", "."),
            ("/", "/", "/"),
            ("", ".", "."),
            ("//a//b", "b", "/a"),
            ("/a/../b/c", "c", "/b"),
        ];
        for (path, base, dir) in cases {
            assert_eq!(apply("base", path).unwrap(), base, "base of {path:?}");
            assert_eq!(apply("dir", path).unwrap(), dir, "dir of {path:?}");
        }
    }

    // base64

    #[test]
    fn base64_round_trips_text() {
        assert_eq!(
            apply("base64_encode", "hello, wörld").unwrap(),
            "aGVsbG8sIHfDtnJsZA=="
        );
        assert_eq!(
            apply("base64_decode", "aGVsbG8sIHfDtnJsZA==").unwrap(),
            "hello, wörld"
        );
        assert_eq!(
            render("{{ v | base64_encode | base64_decode }}", "x\ny").unwrap(),
            "x\ny"
        );
    }

    #[test]
    fn base64_decode_rejects_invalid_input_and_binary_results() {
        assert_rejected("base64_decode", "not base64!", "not valid base64");
        assert_rejected("base64_decode", "aGVsbG8", "not valid base64"); // missing padding
        assert_rejected("base64_decode", "/w==", "does not decode to UTF-8"); // 0xff
    }

    // sort_by_length

    #[test]
    fn sort_by_length_orders_by_length_then_lexically() {
        let out = render(
            r#"{{ v | sort_by_length | join(sep=",") }}"#,
            ["ccc", "bb", "a", "aa", "é"],
        );
        assert_eq!(out.unwrap(), "a,é,aa,bb,ccc");
    }

    #[test]
    fn sort_by_length_rejects_non_strings() {
        assert_rejected("sort_by_length", json!(["a", 1]), "item 1 is u64");
    }

    // addresses

    #[test]
    fn ipv4_accepts_dotted_quads() {
        assert_eq!(apply("ipv4", "10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(apply("ipv4", "0.0.0.0").unwrap(), "0.0.0.0");
    }

    #[test]
    fn ipv4_rejects_everything_else() {
        assert_rejected(
            "ipv4",
            "10.0.0.256",
            r#""10.0.0.256" is not an IPv4 address"#,
        );
        assert_rejected("ipv4", "010.0.0.1", "is not an IPv4 address");
        assert_rejected("ipv4", "10.0.0", "is not an IPv4 address");
        assert_rejected("ipv4", "fd00::1", "is not an IPv4 address");
        assert_rejected("ipv4", "", r#""" is not an IPv4 address"#);
        assert_rejected("ipv4", 167_772_161, "167772161 is not an IPv4 address");
    }

    #[test]
    fn addresses_with_whitespace_are_rejected_not_trimmed() {
        for filter in ["ipv4", "ip"] {
            assert_rejected(filter, " 10.0.0.1", "contains whitespace");
            assert_rejected(filter, "10.0.0.1\n", r#""10.0.0.1\n" is not"#);
        }
        assert_rejected("ipv6", "fd00::1\tx", "contains whitespace");
    }

    #[test]
    fn ipv6_is_normalised_to_canonical_text() {
        assert_eq!(apply("ipv6", "FD00:0:0:0::1").unwrap(), "fd00::1");
        assert_eq!(
            apply("ipv6", "2001:db8:0:0:1:0:0:1").unwrap(),
            "2001:db8::1:0:0:1"
        );
        assert_rejected("ipv6", "10.0.0.1", r#""10.0.0.1" is not an IPv6 address"#);
        assert_rejected("ipv6", "fe80::1%eth0", "is not an IPv6 address");
    }

    #[test]
    fn ip_accepts_either_family() {
        assert_eq!(apply("ip", "192.0.2.1").unwrap(), "192.0.2.1");
        assert_eq!(apply("ip", "FD00::0001").unwrap(), "fd00::1");
        assert_rejected("ip", "example.com", r#""example.com" is not an IP address"#);
    }

    // cidr

    #[test]
    fn cidr_accepts_network_prefixes_and_normalises_them() {
        assert_eq!(apply("cidr", "10.0.0.0/24").unwrap(), "10.0.0.0/24");
        assert_eq!(apply("cidr", "0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert_eq!(apply("cidr", "192.0.2.1/32").unwrap(), "192.0.2.1/32");
        assert_eq!(apply("cidr", "FD00:0:0::/64").unwrap(), "fd00::/64");
        assert_eq!(apply("cidr", "::/0").unwrap(), "::/0");
        assert_eq!(apply("cidr", "10.0.0.0/024").unwrap(), "10.0.0.0/24");
    }

    #[test]
    fn cidr_rejects_host_bits_like_bird_does() {
        assert_rejected(
            "cidr",
            "10.0.0.1/24",
            r#""10.0.0.1/24" is not an IP prefix (like 10.0.0.0/24 or fd00::/64): host bits are set (did you mean 10.0.0.0/24?)"#,
        );
        assert_rejected("cidr", "fd00::1/64", "did you mean fd00::/64?");
    }

    #[test]
    fn cidr_rejects_malformed_prefixes() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "/24",
        ] {
            assert_rejected("cidr", bad, "is not an IP prefix");
        }
        assert_rejected("cidr", "10.0.0.0/24 ", "contains whitespace");
    }

    #[test]
    fn cidr_family_restricts_the_address_family() {
        assert_eq!(apply("cidr(family=4)", "10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(apply("cidr(family=6)", "fd00::/8").unwrap(), "fd00::/8");
        assert_rejected(
            "cidr(family=4)",
            "fd00::/8",
            r#""fd00::/8" is not an IPv4 prefix"#,
        );
        assert_rejected("cidr(family=6)", "10.0.0.0/8", "is not an IPv6 prefix");
        assert_rejected(
            "cidr(family=5)",
            "10.0.0.0/8",
            "family must be 4 or 6, not 5",
        );
    }

    // numbers

    #[test]
    fn asn_accepts_asplain_strings_and_numbers() {
        assert_eq!(apply("asn", "65001").unwrap(), "65001");
        assert_eq!(apply("asn", 65001).unwrap(), "65001");
        assert_eq!(apply("asn", "4294967295").unwrap(), "4294967295");
        assert_eq!(apply("asn", 1).unwrap(), "1");
    }

    #[test]
    fn asn_normalises_asdot_to_asplain() {
        assert_eq!(apply("asn", "1.10").unwrap(), "65546");
        assert_eq!(apply("asn", "0.65001").unwrap(), "65001");
        assert_eq!(apply("asn", "65535.65535").unwrap(), "4294967295");
    }

    #[test]
    fn asn_returns_a_number() {
        assert_eq!(
            render("{% set a = v | asn %}{{ a + 1 }}", "1.0").unwrap(),
            "65537"
        );
    }

    #[test]
    fn asn_rejects_out_of_range_and_malformed_values() {
        let expected = "is not an AS number (1..=4294967295, or asdot X.Y)";
        assert_rejected("asn", "0", &format!(r#""0" {expected}"#));
        assert_rejected("asn", 0, &format!("0 {expected}"));
        assert_rejected("asn", "0.0", expected);
        assert_rejected("asn", "4294967296", expected);
        assert_rejected("asn", "65536.0", expected);
        assert_rejected("asn", "1.2.3", expected);
        assert_rejected("asn", "-1", expected);
        assert_rejected("asn", "+65001", expected);
        assert_rejected("asn", "AS65001", expected);
        assert_rejected("asn", "65001\n", "contains whitespace");
    }

    #[test]
    fn asn_rejects_floats_rather_than_guessing_asdot() {
        assert_rejected("asn", 1.5, "as a string or an integer, got f64");
    }

    #[test]
    fn port_accepts_1_to_65535() {
        assert_eq!(apply("port", "179").unwrap(), "179");
        assert_eq!(apply("port", 65535).unwrap(), "65535");
        assert_eq!(
            render("{% set p = v | port %}{{ p + 1 }}", "179").unwrap(),
            "180"
        );
        let expected = "is not a port number (1..=65535)";
        assert_rejected("port", "0", expected);
        assert_rejected("port", 65536, &format!("65536 {expected}"));
        assert_rejected("port", "http", expected);
        assert_rejected("port", "179 ", "contains whitespace");
    }

    #[test]
    fn uint_checks_optional_bounds() {
        assert_eq!(apply("uint", "0").unwrap(), "0");
        assert_eq!(
            apply("uint", "18446744073709551615").unwrap(),
            "18446744073709551615"
        );
        assert_eq!(apply("uint(min=1, max=10)", 10).unwrap(), "10");
        assert_eq!(apply("uint(min=1, max=10)", "007").unwrap(), "7");
        assert_rejected("uint", "-1", r#""-1" is not an unsigned integer"#);
        assert_rejected("uint", "18446744073709551616", "is not an unsigned integer");
        assert_rejected("uint", "1e3", "is not an unsigned integer");
        assert_rejected(
            "uint(min=1, max=10)",
            11,
            "11 is not an unsigned integer in 1..=10",
        );
        assert_rejected("uint(min=5)", "4", "is not an unsigned integer >= 5");
        assert_rejected("uint(max=5)", "6", "is not an unsigned integer in 0..=5");
        assert_rejected("uint(min=2, max=1)", 1, "min=2 is greater than max=1");
    }

    #[test]
    fn validators_reject_non_scalars_by_type() {
        assert_rejected("port", json!([179]), "got array");
        assert_rejected("ip", true, "got bool");
        assert_rejected("bird_ident", json!({"a": 1}), "got map");
    }

    // bird_ident

    #[test]
    fn bird_ident_accepts_bird_symbols() {
        let longest = "a".repeat(64 - 1);
        for name in [
            "peer_1", "_private", "AS65001", "Filter", "master4", "x", &longest,
        ] {
            assert_eq!(apply("bird_ident", name).unwrap(), name);
        }
    }

    #[test]
    fn bird_ident_rejects_reserved_words() {
        for word in [
            "protocol", "filter", "bgp", "static", "table", "s", "ms", "net", "include",
        ] {
            assert_rejected(
                "bird_ident",
                word,
                &format!("{word:?} is not a BIRD symbol name: it is a reserved word in BIRD 2"),
            );
        }
        assert_rejected("bird_ident", "RTS_STATIC", "reserved word");
    }

    #[test]
    fn bird_ident_rejects_what_the_lexer_reads_otherwise() {
        assert_rejected("bird_ident", "1peer", "starts with a digit");
        assert_rejected("bird_ident", 65001, "starts with a digit");
        assert_rejected("bird_ident", "peer-1", "only ASCII letters, digits and _");
        assert_rejected("bird_ident", "pèer", "only ASCII letters, digits and _");
        assert_rejected("bird_ident", "peer 1", "contains whitespace");
        assert_rejected("bird_ident", "", "it is empty");
        assert_rejected("bird_ident", "a".repeat(65), "longer than 64 characters");
        assert_rejected("bird_ident", "ab".repeat(16), "byte string");
        assert_eq!(apply("bird_ident", "a".repeat(33)).unwrap(), "a".repeat(33));
    }

    #[test]
    fn reserved_word_lists_are_sorted_unique_and_well_formed() {
        fn words(list: &str) -> Vec<&str> {
            let words: Vec<&str> = list.split_ascii_whitespace().collect();
            assert!(
                words.windows(2).all(|pair| pair[0] < pair[1]),
                "not sorted or not unique"
            );
            for word in &words {
                let symbol_shaped = word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !word.starts_with(|c: char| c.is_ascii_digit());
                assert!(symbol_shaped, "{word:?} could never be a symbol anyway");
            }
            words
        }
        assert!(words(BIRD_KEYWORDS)
            .iter()
            .all(|w| !w.bytes().any(|b| b.is_ascii_uppercase())));
        assert!(words(BIRD_CONSTANTS)
            .iter()
            .all(|w| !w.bytes().any(|b| b.is_ascii_lowercase())));
    }

    // bird_string

    #[test]
    fn bird_string_quotes_the_value() {
        assert_eq!(
            apply("bird_string", "peer in Amsterdam").unwrap(),
            r#""peer in Amsterdam""#
        );
        assert_eq!(apply("bird_string", "").unwrap(), r#""""#);
        assert_eq!(
            apply("bird_string", "it's # not /* a comment").unwrap(),
            r#""it's # not /* a comment""#
        );
        assert_eq!(apply("bird_string", "wörld ✓").unwrap(), r#""wörld ✓""#);
        assert_eq!(apply("bird_string", 65001).unwrap(), r#""65001""#);
    }

    #[test]
    fn bird_string_refuses_what_it_cannot_represent() {
        assert_rejected("bird_string", r#"a"b"#, r#"contains '"' at character 2"#);
        assert_rejected("bird_string", r"a\b", r"contains '\\' at character 2");
        assert_rejected("bird_string", "a\nb", r"contains '\n' at character 2");
        assert_rejected("bird_string", "a\tb", r"contains '\t'");
        assert_rejected("bird_string", "a\u{0}b", "contains '\\0'");
    }

    #[test]
    fn bird_string_errors_do_not_echo_the_value() {
        let message = apply("bird_string", "hunter2\"; };").unwrap_err();
        assert!(
            message.contains("BIRD 2.0 strings have no escapes"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    // safety

    #[test]
    fn only_validation_filters_and_raw_mark_their_output_safe() {
        let mut tera = Tera::new();
        register(&mut tera);
        tera.autoescape_on([".html"]);
        tera.add_raw_template(
            "t.html",
            "{{ v | bird_string }} {{ v | base }} {{ v | base64_encode | base64_decode }} {{ v | raw }}",
        )
        .unwrap();
        let mut context = Context::new();
        context.insert("v", "a&b");
        let out = tera.render("t.html", &context).unwrap();
        assert_eq!(out, "\"a&b\" a&amp;b a&amp;b a&b");
    }

    // hash_to_ipv4

    #[test]
    fn hash_to_ipv4_is_the_first_four_bytes_of_sha256() {
        // sha256("") = e3b0c442..., sha256("abc") = ba7816bf...
        assert_eq!(hash_to_ipv4_text(""), "227.176.196.66");
        assert_eq!(hash_to_ipv4_text("abc"), "186.120.22.191");
        assert_eq!(apply("hash_to_ipv4", "node-a").unwrap(), "102.87.15.240");
        assert_eq!(
            apply("hash_to_ipv4", "kube-node-1").unwrap(),
            "34.92.252.97"
        );
    }

    #[test]
    fn an_undefined_input_is_reported_at_the_variable() {
        let mut tera = Tera::new();
        register(&mut tera);
        tera.add_raw_template("t", "{{ nme | bird_ident }}")
            .unwrap();
        let err = tera.render("t", &Context::new()).unwrap_err();
        let ErrorKind::RenderingError(report) = err.kind() else {
            panic!("{err}");
        };
        assert_eq!(report.span().range, 3..6, "the span covers `nme`");
        assert!(
            report.message().contains("but got `undefined`"),
            "{}",
            report.message()
        );
    }
}
