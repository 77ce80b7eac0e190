//! The bad-input corpus: every directory `tests/corpus/<category>/<case>/` is
//! a confdir (`conf.d/`, `templates/`, optionally a `data.*` file) that must
//! fail in the way its `case.toml` states, without touching the destination.
//!
//! Each case is copied into a temp dir, where `out/x.conf` holds the sentinel
//! "OLD". confera runs with `--confdir <copy> --onetime`, plus `--backend file
//! --file <copy>/data.*` when the case has a data file, plus the case's own
//! `args`. Then: the exit code is `exit`, stderr contains every `stderr`
//! fragment and none of `stderr_hides`, nothing panicked, `out/x.conf` still
//! says "OLD" and `out/` holds nothing else. `{confdir}` in args and
//! fragments stands for the copy's path.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::support::cmd::{run, Run};

const SENTINEL: &str = "OLD\n";
const CATEGORIES: [&str; 4] = ["resources", "templates", "data", "values"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    args: Vec<String>,
    exit: i32,
    stderr: Vec<String>,
    #[serde(default)]
    stderr_hides: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every case directory, as `category/case`, sorted.
fn cases() -> Vec<String> {
    let mut cases = Vec::new();
    for category in sorted_entries(&corpus_dir()) {
        let name = file_name(&category);
        assert!(
            CATEGORIES.contains(&name.as_str()),
            "unexpected corpus category {name:?}: expected one of {CATEGORIES:?}"
        );
        for case in sorted_entries(&category) {
            cases.push(format!("{name}/{}", file_name(&case)));
        }
    }
    cases
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    entries
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in sorted_entries(from) {
        let target = to.join(entry.file_name().unwrap());
        if entry.is_dir() {
            copy_dir(&entry, &target);
        } else {
            fs::copy(&entry, &target).unwrap_or_else(|e| panic!("copy {}: {e}", entry.display()));
        }
    }
}

/// A case copied into a temp dir with the sentinel destination in place.
struct Prepared {
    dir: tempfile::TempDir,
    expect: Expect,
}

impl Prepared {
    fn new(case: &str) -> Prepared {
        let source = corpus_dir().join(case);
        let text = fs::read_to_string(source.join("case.toml"))
            .unwrap_or_else(|e| panic!("{case}/case.toml: {e}"));
        let expect: Expect =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{case}/case.toml: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("confera-corpus-")
            .tempdir()
            .expect("create a temp dir for a corpus case");
        copy_dir(&source, dir.path());
        // Git keeps no empty directories.
        for sub in ["conf.d", "templates", "out"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("out/x.conf"), SENTINEL).unwrap();
        Prepared { dir, expect }
    }

    fn confdir(&self) -> &str {
        self.dir.path().to_str().expect("temp dir paths are UTF-8")
    }

    fn substitute(&self, text: &str) -> String {
        text.replace("{confdir}", self.confdir())
    }

    fn run(&self) -> Run {
        let mut args: Vec<String> = vec![
            "--confdir".into(),
            self.confdir().into(),
            "--onetime".into(),
        ];
        let data = sorted_entries(self.dir.path())
            .into_iter()
            .find(|p| p.is_file() && file_name(p).starts_with("data"));
        if let Some(data) = data {
            args.extend(["--backend".into(), "file".into(), "--file".into()]);
            args.push(data.display().to_string());
        }
        args.extend(self.expect.args.iter().map(|a| self.substitute(a)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    }

    /// What the run did wrong, one line each; empty when it met every expectation.
    fn mismatches(&self, run: &Run) -> Vec<String> {
        let mut wrong = Vec::new();
        if run.code != self.expect.exit {
            wrong.push(format!(
                "exit code {} (want {})",
                run.code, self.expect.exit
            ));
        }
        for fragment in &self.expect.stderr {
            let fragment = self.substitute(fragment);
            if !run.stderr.contains(&fragment) {
                wrong.push(format!("stderr lacks {fragment:?}"));
            }
        }
        for hidden in &self.expect.stderr_hides {
            if run.stderr.contains(hidden.as_str()) {
                wrong.push(format!("stderr shows {hidden:?}"));
            }
        }
        if run.stderr.contains("panicked") {
            wrong.push("confera panicked".into());
        }
        let out = self.dir.path().join("out");
        match fs::read_to_string(out.join("x.conf")) {
            Ok(text) if text == SENTINEL => {}
            Ok(text) => wrong.push(format!("out/x.conf was overwritten with {text:?}")),
            Err(e) => wrong.push(format!("out/x.conf: {e}")),
        }
        let others: Vec<String> = sorted_entries(&out)
            .iter()
            .map(|p| file_name(p))
            .filter(|n| n != "x.conf")
            .collect();
        if !others.is_empty() {
            wrong.push(format!("out/ also holds {others:?}"));
        }
        wrong
    }
}

#[test]
fn every_bad_input_in_the_corpus_fails_as_stated_and_leaves_the_destination_alone() {
    let cases = cases();
    for category in CATEGORIES {
        assert!(
            cases.iter().any(|c| c.starts_with(&format!("{category}/"))),
            "no cases in tests/corpus/{category}"
        );
    }
    assert!(cases.len() >= 30, "only {} corpus cases", cases.len());

    // Two at a time: each case is one short confera process.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let prepared = Prepared::new(case);
                let run = prepared.run();
                let wrong = prepared.mismatches(&run);
                if !wrong.is_empty() {
                    let stderr = run.stderr.replace(prepared.confdir(), "{confdir}");
                    failures.lock().unwrap().push(format!(
                        "{case}:\n  - {}\n  stderr: {}",
                        wrong.join("\n  - "),
                        stderr.trim_end().replace('\n', "\n          ")
                    ));
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    println!("corpus: {} cases passed", cases.len() - failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases did not fail as stated:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The corpus' sentinel is the real destination: the same set-up with a
/// valid value replaces it, so "still says OLD" means something.
#[test]
fn the_corpus_sentinel_is_overwritten_when_the_input_is_valid() {
    let prepared = Prepared::new("values/ipv4-octet-too-big");
    fs::write(
        prepared.dir.path().join("data.yaml"),
        "app:\n  v: 10.0.0.1\n",
    )
    .unwrap();

    let run = prepared.run();

    run.assert_success();
    let written = fs::read_to_string(prepared.dir.path().join("out/x.conf")).unwrap();
    assert_eq!(written, "v = 10.0.0.1\n");
}
