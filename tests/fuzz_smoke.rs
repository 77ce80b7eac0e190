//! Fuzz smoke: the fuzzing entry points of `confera::fuzzing` (conf.d
//! resources, data files, templates) fed random text, grammar-built inputs and
//! mutations of the seed files in `fuzz/seeds/`, for a bounded time per target:
//! `CONFERA_FUZZ_SECS` seconds (default 2). No input may panic, and none may
//! take longer than [`SLOW_INPUT`]; a watchdog aborts the run, printing the
//! input, if one hangs for [`HANG`]. The inputs come from a fixed seed unless
//! `CONFERA_FUZZ_SEED` is set (a number, or `random`); a finding prints the
//! seed that reproduces it.
//!
//! `scripts/fuzz` runs these longer, and cargo-fuzz (nightly) on the same
//! entry points when it is installed.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confera::fuzzing::{Scratch, DATA_EXTENSIONS};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// The default run replays the same inputs; `CONFERA_FUZZ_SEED=random` (as
/// `scripts/fuzz` sets) or a number picks others.
const DEFAULT_SEED: u64 = 0xC0FE_4A00;
/// One input taking this long is a finding (reported, test fails).
const SLOW_INPUT: Duration = Duration::from_secs(5);
/// One input taking this long is a hang: the watchdog aborts the process.
const HANG: Duration = Duration::from_secs(30);

#[test]
fn resource_parsing_survives_arbitrary_input() {
    let scratch = Scratch::new().unwrap();
    let strategy = prop_oneof![
        2 => any::<Vec<u8>>(),
        2 => ".{0,300}".prop_map(String::into_bytes),
        4 => resource_toml().prop_map(String::into_bytes),
        4 => mutated(seeds("resource"), RESOURCE_TOKENS),
    ];
    drive("resource", strategy, |data| scratch.resource(data));
}

#[test]
fn data_file_parsing_survives_arbitrary_input() {
    let scratch = Scratch::new().unwrap();
    let ext = 0..DATA_EXTENSIONS.len();
    let text = prop_oneof![
        2 => any::<Vec<u8>>(),
        2 => ".{0,300}".prop_map(String::into_bytes),
        2 => nested_data().prop_map(String::into_bytes),
    ];
    // A seed's first byte picks its format, as in the cargo-fuzz target; the
    // selector byte is kept out of reach of the edits.
    let seeded = prop::sample::select(seeds("data_file")).prop_flat_map(|seed| {
        let (selector, text) = seed.split_first().expect("a non-empty seed");
        let format = usize::from(*selector) % DATA_EXTENSIONS.len();
        (Just(format), mutated(vec![text.to_vec()], DATA_TOKENS))
    });
    let strategy = prop_oneof![
        6 => (ext, text),
        4 => seeded,
    ];
    drive("data_file", strategy, |(ext, data)| {
        scratch.data_file(DATA_EXTENSIONS[*ext], data)
    });
}

#[test]
fn template_compilation_and_rendering_survive_arbitrary_input() {
    let scratch = Scratch::new().unwrap();
    let strategy = prop_oneof![
        1 => any::<Vec<u8>>(),
        2 => ".{0,200}".prop_map(String::into_bytes),
        5 => template_text().prop_map(String::into_bytes),
        4 => mutated(seeds("template"), TEMPLATE_TOKENS),
    ];
    drive("template", strategy, |data| scratch.template(data));
}

// --- the driver --------------------------------------------------------------

fn budget() -> Duration {
    let secs = std::env::var("CONFERA_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// Feeds values of STRATEGY to F until the time budget is spent. Panics,
/// naming the input, when F panics or is slow; aborts on a hang.
fn drive<S>(target: &str, strategy: S, f: impl Fn(&S::Value))
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let seed = std::env::var("CONFERA_FUZZ_SEED")
        .ok()
        .and_then(|s| match s.as_str() {
            "random" => Some(rand_seed()),
            _ => s.parse::<u64>().ok(),
        })
        .unwrap_or(DEFAULT_SEED);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let current: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
    let watchdog = spawn_watchdog(target.to_string(), current.clone());
    let budget = budget();
    let start = Instant::now();
    let mut inputs = 0u64;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < budget {
        let value = strategy
            .new_tree(&mut runner)
            .expect("generate an input")
            .current();
        let shown = || format!("{value:?}");
        *current.lock().unwrap() = Some((Instant::now(), shown()));
        let began = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| f(&value)));
        let took = began.elapsed();
        *current.lock().unwrap() = None;
        if let Err(cause) = outcome {
            panic!(
                "{target}: input panicked after {inputs} inputs in {:.1}s (seed {seed}): {}\ninput: {}",
                start.elapsed().as_secs_f64(),
                panic_message(&cause),
                shown()
            );
        }
        assert!(
            took < SLOW_INPUT,
            "{target}: one input took {took:?} (seed {seed})\ninput: {}",
            shown()
        );
        slowest = slowest.max(took);
        inputs += 1;
    }
    drop(watchdog);
    eprintln!(
        "fuzz_smoke: target={target} inputs={inputs} secs={:.1} slowest_ms={} seed={seed}",
        start.elapsed().as_secs_f64(),
        slowest.as_millis()
    );
}

/// Aborts the process, printing the input, when one input runs past [`HANG`].
/// Stops when the returned guard is dropped.
fn spawn_watchdog(target: String, current: Arc<Mutex<Option<(Instant, String)>>>) -> Watchdog {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some((since, input)) = current.lock().unwrap().as_ref() {
                if since.elapsed() > HANG {
                    eprintln!("{target}: input hangs (> {HANG:?}), aborting\ninput: {input}");
                    std::process::abort();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    Watchdog(stop)
}

struct Watchdog(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

fn panic_message(cause: &Box<dyn std::any::Any + Send>) -> String {
    cause
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| cause.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

// --- seeds and mutation --------------------------------------------------------

/// The files of `fuzz/seeds/TARGET`, shared with cargo-fuzz.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Duplicate { at: usize, len: usize, to: usize },
    Byte { at: usize, byte: u8 },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), any::<usize>()).prop_map(|(at, token)| Edit::Insert { at, token }),
        (any::<usize>(), 1usize..200, any::<usize>()).prop_map(|(at, len, to)| Edit::Duplicate {
            at,
            len,
            to
        }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Byte { at, byte }),
    ]
}

/// A seed with 1..12 edits applied, inserting tokens from TOKENS.
fn mutated(seeds: Vec<Vec<u8>>, tokens: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 1..12),
    )
        .prop_map(move |(mut data, edits)| {
            for e in edits {
                apply(&mut data, &e, tokens);
            }
            data
        })
        .boxed()
}

fn apply(data: &mut Vec<u8>, edit: &Edit, tokens: &[&str]) {
    let n = data.len();
    let pos = |at: usize| if n == 0 { 0 } else { at % (n + 1) };
    match *edit {
        Edit::Delete { at, len } if n > 0 => {
            let start = at % n;
            let end = (start + len).min(n);
            data.drain(start..end);
        }
        Edit::Insert { at, token } => {
            let at = pos(at);
            let token = tokens[token % tokens.len()].as_bytes();
            data.splice(at..at, token.iter().copied());
        }
        Edit::Duplicate { at, len, to } if n > 0 => {
            let start = at % n;
            let slice = data[start..(start + len).min(n)].to_vec();
            let to = pos(to);
            data.splice(to..to, slice);
        }
        Edit::Byte { at, byte } if n > 0 => data[at % n] = byte,
        _ => {}
    }
}

const RESOURCE_TOKENS: &[&str] = &[
    "[template]\n",
    "[[template]]\n",
    "src = \"a.tera\"\n",
    "dest = \"/tmp/x\"\n",
    "keys = [\"/a\", \"b/\"]\n",
    "prefix = \"/p\"\n",
    "mode = \"0644\"\n",
    "mode = \"99999\"\n",
    "owner = \"root\"\n",
    "group = \"nogroup\"\n",
    "uid = 4294967295\n",
    "gid = -1\n",
    "check_cmd = \"x {{src}}\"\n",
    "reload_signal = \"SIGHUP\"\n",
    "reload_signal = \"SIGKILL\"\n",
    "pid_file = \"/run/x.pid\"\n",
    "process_name = \"bird\"\n",
    "bird_socket = \"/run/b.ctl\"\n",
    "bird_check = true\n",
    "bird_configure = \"file\"\n",
    "wait = \"10ms:1s\"\n",
    "wait = \"5s:1ms\"\n",
    "check_timeout = \"18446744073709551615s\"\n",
    "reload_timeout = \"1h\"\n",
    "drift = \"warn\"\n",
    "secret = true\n",
    "secret_keys = [\"/x/*\"]\n",
    "allow_env = true\n",
    "template = 1\n",
    "\"",
    "'",
    "=",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "\\u0000",
    "1979-05-27T07:32:00Z",
    "inf",
    "nan",
];

const DATA_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "'",
    "- ",
    "? ",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "!tag ",
    "<<: *a\n",
    "---\n",
    "...\n",
    "~",
    "null",
    "true",
    "1e400",
    "-0",
    "0x1F",
    "9223372036854775808",
    "\n  ",
    "\t",
    "#",
    "=",
    "[[x]]\n",
    "[x.y]\n",
    "a.b = 1\n",
    "\"\"\"",
    "'''",
    "\\u0000",
    "\\",
    "|\n  ",
    ">-\n  ",
    "%YAML 1.2\n",
];

const TEMPLATE_TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{%-",
    "-%}",
    "(",
    ")",
    "[",
    "]",
    "|",
    ",",
    "=",
    "\"",
    ".",
    "~",
    "+",
    "*",
    "/",
    "%",
    " and ",
    " or ",
    " not ",
    " in ",
    " is ",
    "getv(key=\"/app/name\")",
    "getv(key=\"/bgp/passwords/a\")",
    "getv(key=\"/nope\", default=\"d\")",
    "gets(pattern=\"/bgp/peers/*/ip\")",
    "getvs(pattern=\"*\")",
    "get(key=\"/json\")",
    "exists(key=\"\")",
    "ls(path=\"/\")",
    "lsdir(path=\"/bgp\")",
    "getenv(name=\"HOME\")",
    "range(end=5)",
    "| json",
    "| base",
    "| dir",
    "| base64_encode",
    "| base64_decode",
    "| sort_by_length",
    "| ipv4",
    "| ipv6",
    "| ip",
    "| cidr",
    "| cidr(family=4)",
    "| asn",
    "| port",
    "| uint(min=3, max=1)",
    "| bird_ident",
    "| bird_string",
    "| split(pat=\"/\")",
    "| join(sep=\",\")",
    "| length",
    "| first",
    "| int",
    "| safe",
    "{% for x in gets(pattern=\"/bgp/peers/*/asn\") %}",
    "{% endfor %}",
    "{% if exists(key=\"/app\") %}",
    "{% elif true %}",
    "{% else %}",
    "{% endif %}",
    "{% set v = 1 %}",
    "{% macro m(a) %}{{ a }}{% endmacro %}",
    "{{ self::m(a=1) }}",
    "{% raw %}",
    "{% endraw %}",
    "{% include \"fuzz.tera\" %}",
    "{% block b %}",
    "{% endblock %}",
    "{% filter upper %}",
    "{% endfilter %}",
    "{% break %}",
    "{% continue %}",
    "loop.index",
    "__tera_context",
];

// --- grammar-built inputs ------------------------------------------------------

fn toml_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z/{}.*:0-9 ]{0,16}",
        ".{0,16}",
        Just("{{src}}".to_string()),
        Just("0o7777".to_string()),
        Just("SIGUSR2".to_string()),
        Just("100ms:2s".to_string()),
    ]
    .prop_map(|s| format!("{:?}", s).replace("\\'", "'"))
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => toml_string(),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => prop::collection::vec(toml_string(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => Just("{ a = 1 }".to_string()),
    ]
}

const RESOURCE_FIELDS: &[&str] = &[
    "src",
    "dest",
    "keys",
    "prefix",
    "mode",
    "uid",
    "gid",
    "owner",
    "group",
    "check_cmd",
    "reload_cmd",
    "reload_signal",
    "pid_file",
    "process_name",
    "bird_socket",
    "check_timeout",
    "reload_timeout",
    "wait",
    "drift",
    "bird_check",
    "bird_configure",
    "secret",
    "secret_keys",
    "allow_env",
    "unknown_field",
];

fn fields() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(RESOURCE_FIELDS), toml_value()), 0..10).prop_map(
        |pairs| {
            pairs
                .into_iter()
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect::<String>()
        },
    )
}

/// A conf.d file: shared fields, then one `[template]` or several
/// `[[template]]` tables with random fields (unknown ones and duplicates
/// included).
fn resource_toml() -> impl Strategy<Value = String> {
    (
        fields(),
        any::<bool>(),
        prop::collection::vec(fields(), 1..4),
    )
        .prop_map(|(shared, single, tables)| {
            let mut out = shared;
            if single {
                out.push_str("[template]\n");
                out.push_str(&tables[0]);
            } else {
                for t in tables {
                    out.push_str("[[template]]\n");
                    out.push_str(&t);
                }
            }
            out
        })
}

/// Deeply nested or wide documents in any of the three formats.
fn nested_data() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..3000).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
        (1usize..3000).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        (1usize..3000).prop_map(|n| format!("a = {}1{}", "[".repeat(n), "]".repeat(n))),
        (1usize..3000).prop_map(|n| format!("a = {}1{}", "{b = ".repeat(n), "}".repeat(n))),
        (1usize..300).prop_map(|n| (0..n)
            .map(|i| format!("{}- {i}\n", "  ".repeat(i)))
            .collect()),
        (1usize..2000).prop_map(|n| format!("{}x", "- ".repeat(n))),
        (1usize..10).prop_map(|n| {
            // The "billion laughs": each alias refers to the previous one ten times.
            let mut out = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..n {
                let prev = format!("*a{}", i - 1);
                out.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
            }
            out
        }),
    ]
}

/// A template built from text, expressions and blocks over confera's
/// functions and filters.
fn template_text() -> impl Strategy<Value = String> {
    let call = prop::sample::select(vec![
        "getv(key=\"/app/name\")",
        "getv(key=\"/app/port\")",
        "getv(key=\"/bgp/asn\")",
        "getv(key=\"/bgp/passwords/a\")",
        "getv(key=\"/bgp/peers/b/asn\")",
        "getv(key=\"/net/cidr\")",
        "getv(key=\"/json\")",
        "getv(key=\"/b64\")",
        "getv(key=\"/empty\")",
        "getv(key=\"/missing\", default=\"d\")",
        "getv(key=\"/missing\")",
        "getv(key=\"../etc\")",
        "get(key=\"/app/name\").value",
        "exists(key=\"/app\")",
        "gets(pattern=\"/bgp/peers/*/ip\")",
        "getvs(pattern=\"/app/list/*\")",
        "getvs(pattern=\"/*/*/*\")",
        "ls(path=\"/\")",
        "lsdir(path=\"/bgp/peers\")",
        "getenv(name=\"PATH\")",
        "range(end=4)",
        "\"10.0.0.1\"",
        "42",
        "[1, \"a\"]",
    ]);
    let filter = prop::sample::select(vec![
        "",
        "| json",
        "| base",
        "| dir",
        "| base64_encode",
        "| base64_decode",
        "| sort_by_length",
        "| ipv4",
        "| ipv6",
        "| ip",
        "| cidr",
        "| cidr(family=6)",
        "| cidr(family=5)",
        "| asn",
        "| port",
        "| uint(min=1, max=10)",
        "| bird_ident",
        "| bird_string",
        "| split(pat=\".\")",
        "| join(sep=\",\")",
        "| length",
        "| upper",
        "| first",
        "| last",
        "| int",
        "| str",
    ]);
    let expr = (call, prop::collection::vec(filter, 0..3))
        .prop_map(|(c, fs)| format!("{c} {}", fs.join(" ")));
    let piece = prop_oneof![
        3 => "[a-z ;\n]{0,10}",
        4 => expr.clone().prop_map(|e| format!("{{{{ {e} }}}}")),
        1 => expr.clone().prop_map(|e| format!("{{% for x in {e} %}}{{{{ x }}}}{{% endfor %}}")),
        1 => expr.clone().prop_map(|e| format!("{{% if {e} %}}y{{% else %}}n{{% endif %}}")),
        1 => expr.prop_map(|e| format!("{{% set v = {e} %}}{{{{ v }}}}")),
        1 => Just("{# comment #}".to_string()),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|ps| ps.concat())
}
