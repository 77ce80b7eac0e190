//! Fuzzing entry points: each feeds arbitrary bytes to one of confera's
//! parsers exactly as a run does (a conf.d file, a data file, a template
//! compiled and rendered against a small store). They report nothing and must
//! never panic or hang; errors are the expected answer to bad input.
//!
//! Used by `fuzz/` (cargo-fuzz) and `tests/fuzz_smoke.rs`. Not part of the
//! stable API. Writes only inside its own scratch directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::render::{self, Renderer};
use crate::resource::{self, Layout, Secrets, Template};
use crate::store::Store;

/// The data-file formats the file source reads, by extension.
pub const DATA_EXTENSIONS: [&str; 3] = ["yaml", "json", "toml"];

/// A private directory under the system temp dir for the files the entry
/// points need (data files and templates are read from disk); removed on
/// Drop. One per fuzzing thread.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new() -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "confera-fuzz-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        fs::create_dir(dir.join("templates"))?;
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Parses `data` as the text of `conf.d/fuzz.toml`.
    pub fn resource(&self, data: &[u8]) {
        resource(data)
    }

    /// Loads `data` as a data file with extension `ext` (one of
    /// [`DATA_EXTENSIONS`]) through the file source; every key it yields
    /// must be normalised.
    pub fn data_file(&self, ext: &str, data: &[u8]) {
        let path = self.dir.join(format!("data.{ext}"));
        if fs::write(&path, data).is_err() {
            return;
        }
        let mut store = Store::new();
        if crate::source::file::load_into(&path, &mut store).is_ok() {
            for (key, _) in store.iter() {
                assert_eq!(
                    key,
                    crate::store::normalize_key(key),
                    "the file source stored a key that is not normalised"
                );
            }
        }
    }

    /// Compiles `data` as the only template and, when it compiles, renders
    /// it against [`sample_store`] with secret keys set, redacting the
    /// output as a diff would.
    pub fn template(&self, data: &[u8]) {
        let templates = self.dir.join("templates");
        let path = templates.join("fuzz.tera");
        if fs::write(&path, data).is_err() {
            return;
        }
        let Ok(renderer) = Renderer::load(&templates, &[]) else {
            return;
        };
        let template = sample_template(&self.dir);
        let store = Arc::new(sample_store());
        if let Ok(rendered) = renderer.render(&template, &store) {
            let _ = render::redact(&rendered.text, &template, &rendered.reads);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Parses `data` as a conf.d file (`/etc/confera/conf.d/fuzz.toml`, global
/// prefix `/fuzz`). Touches no file.
pub fn resource(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let layout = Layout {
        exec: false,
        confdir: Path::new("/etc/confera"),
        prefix: "/fuzz",
    };
    let _ = resource::parse(&layout, Path::new("/etc/confera/conf.d/fuzz.toml"), text);
}

/// The store templates are rendered against: a few peers, nested keys, a
/// secret, and values that the validation filters accept or reject.
pub fn sample_store() -> Store {
    [
        ("/app/name", "confera"),
        ("/app/port", "8080"),
        ("/app/list/0", "a"),
        ("/app/list/1", "bb"),
        ("/bgp/asn", "65001"),
        ("/bgp/peers/a/ip", "192.0.2.1"),
        ("/bgp/peers/a/asn", "65002"),
        ("/bgp/peers/b/ip", "2001:db8::1"),
        ("/bgp/peers/b/asn", "4294967296"),
        ("/bgp/passwords/a", "s3cr\"et"),
        ("/net/cidr", "10.0.0.0/8"),
        ("/json", r#"{"a": [1, {"b": null}], "c": "d"}"#),
        ("/b64", "aGVsbG8="),
        ("/empty", ""),
    ]
    .into_iter()
    .collect()
}

/// A template resource over the whole sample store, with `/bgp/passwords/*`
/// secret and no access to the environment.
pub fn sample_template(scratch: &Path) -> Template {
    Template {
        src: "fuzz.tera".into(),
        dest: scratch.join("out.conf"),
        prefix: "/".into(),
        keys: vec!["/".into()],
        mode: None,
        uid: None,
        gid: None,
        secrets: Secrets {
            all: false,
            patterns: vec!["/bgp/passwords/*".into()],
        },
        allow_env: false,
        output: crate::resource::Output::Plain,
        follow_symlink: false,
    }
}
