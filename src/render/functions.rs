//! The confd-style template functions (`getv`, `get`, `gets`, `getvs`,
//! `exists`, `ls`, `lsdir`, `getenv`) and Calico's `hashToIPv4`, plus Go's
//! `printf`.
//!
//! Tera functions are registered once per engine, but each render reads its
//! own store snapshot and may only see its own keys, so a render publishes
//! that scope in a thread-local for the duration of the (synchronous) render.
//! Functions never read outside the resource's keys.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use tera::{Kwargs, State, Tera, TeraResult, Value};

use crate::resource::{Output, Secrets, Template};
use crate::store::{
    glob_base, is_under, join_keys, normalize_key, relative_key, relative_key_str, Store,
};

/// A key a template read, relative to the resource's prefix, with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRead {
    pub key: String,
    /// The absolute key, for secret matching.
    pub absolute: String,
    pub value: String,
}

/// Text a template got from somewhere other than a key's value (a name
/// `ls` listed, an environment variable), so that a refused printed value
/// can say where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// "key `/nodes/x`", "environment variable `NODENAME`".
    pub what: String,
    pub text: String,
}

struct ScopeData {
    store: Arc<Store>,
    prefix: String,
    keys: Vec<String>,
    allow_env: bool,
    output: Output,
    secrets: Secrets,
    dest: PathBuf,
    /// Record every read and origin, for an error message; otherwise only
    /// the reads of secret keys, which redaction needs on every render.
    every_read: bool,
    reads: Vec<KeyRead>,
    origins: Vec<Origin>,
}

/// One entry of `gets` and `get`: `{key, value}`, the key relative to the
/// resource's prefix. Built through serde, which fills Tera's map in place.
#[derive(serde::Serialize)]
struct Entry<'a> {
    key: &'a str,
    value: &'a str,
}

thread_local! {
    static SCOPE: RefCell<Option<ScopeData>> = const { RefCell::new(None) };
    /// What `gets` and `getvs` built, kept until [`free_now`] or the next
    /// render on this thread. Freeing 20,000 entries is a quarter of a
    /// render; a pipeline's render thread frees them after handing on its
    /// output, so that work leaves the path of the change. (Left to the
    /// thread-local destructor, glibc kept the freed memory resident.)
    static LATER: RefCell<Vec<Value>> = const { RefCell::new(Vec::new()) };
}

/// Frees what this thread's last render built (see [`LATER`]).
pub(super) fn free_now() {
    LATER.with(|later| later.borrow_mut().clear());
}

/// `value`, with a copy kept for [`LATER`] (values share their contents).
fn free_later(value: Value) -> Value {
    LATER.with(|later| later.borrow_mut().push(value.clone()));
    value
}

/// Publishes a render's store and keys to the template functions until
/// dropped or finished.
pub(super) struct Scope(());

impl Scope {
    /// `every_read`: record every key read and every other text the
    /// template got (for an error message), not only secret keys' values.
    pub(super) fn enter(store: Arc<Store>, template: &Template, every_read: bool) -> Scope {
        LATER.with(|later| later.borrow_mut().clear());
        SCOPE.with(|s| {
            *s.borrow_mut() = Some(ScopeData {
                store,
                prefix: template.prefix.clone(),
                keys: template.keys.clone(),
                allow_env: template.allow_env,
                output: template.output,
                secrets: template.secrets.clone(),
                dest: template.dest.clone(),
                every_read,
                reads: Vec::new(),
                origins: Vec::new(),
            })
        });
        Scope(())
    }

    /// Ends the scope and returns the keys read and the other texts the
    /// template got.
    pub(super) fn finish(self) -> (Vec<KeyRead>, Vec<Origin>) {
        SCOPE.with(|s| {
            s.borrow_mut()
                .take()
                .map(|d| (d.reads, d.origins))
                .unwrap_or_default()
        })
    }
}

/// The output policy of the render in progress on this thread.
pub(super) fn output_policy() -> Option<Output> {
    SCOPE.with(|s| s.try_borrow().ok()?.as_ref().map(|d| d.output))
}

/// The key of the render in progress whose value `text` is, or is part of
/// (see [`super::derives_from`]), the latest read first, and whether that
/// key is secret. A secret source wins over a plain one: a value that may
/// come from a secret is treated as secret.
pub(super) fn source_of(text: &str) -> Option<(String, bool)> {
    SCOPE.with(|s| {
        let scope = s.try_borrow().ok()?;
        let scope = scope.as_ref()?;
        super::source_in(text, &scope.reads, &scope.secrets)
    })
}

impl Drop for Scope {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().take());
    }
}

fn with_scope<T>(f: impl FnOnce(&mut ScopeData) -> TeraResult<T>) -> TeraResult<T> {
    SCOPE.with(|s| match s.borrow_mut().as_mut() {
        Some(scope) => f(scope),
        None => Err(tera::Error::message(
            "store functions are only available while rendering a resource",
        )),
    })
}

impl ScopeData {
    fn absolute(&self, key: &str) -> String {
        join_keys(&[&self.prefix, key])
    }

    fn relative(&self, absolute: &str) -> String {
        relative_key(&self.prefix, absolute)
    }

    fn in_scope(&self, absolute: &str) -> bool {
        self.keys.iter().any(|k| is_under(absolute, k))
    }

    /// A single key must lie under one of the resource's keys.
    fn check_key(&self, key: &str) -> TeraResult<String> {
        let absolute = self.absolute(key);
        if self.in_scope(&absolute) {
            Ok(absolute)
        } else {
            Err(self.outside(key))
        }
    }

    /// A path may also be an ancestor of the resource's keys (`ls("/")`);
    /// results are then limited to the keys in scope.
    fn check_path(&self, path: &str) -> TeraResult<String> {
        let absolute = self.absolute(path);
        if self.in_scope(&absolute) || self.keys.iter().any(|k| is_under(k, &absolute)) {
            Ok(absolute)
        } else {
            Err(self.outside(path))
        }
    }

    fn outside(&self, key: &str) -> tera::Error {
        tera::Error::message(format!(
            "key `{}` is not under this resource's keys [{}]; add it to `keys` in the resource file",
            normalize_key(key),
            self.keys_shown()
        ))
    }

    fn keys_shown(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|k| self.relative(k)).collect();
        keys.join(", ")
    }

    fn record(&mut self, absolute: &str, value: &str) {
        if !self.every_read && !self.secrets.is_secret(absolute) {
            return;
        }
        let key = self.relative(absolute);
        self.reads.push(KeyRead {
            key,
            absolute: absolute.to_string(),
            value: value.to_string(),
        });
    }

    fn entry(&mut self, absolute: &str, value: &str) -> Value {
        self.record(absolute, value);
        let key = relative_key_str(&self.prefix, absolute);
        Value::from_serializable(&Entry { key, value })
    }

    /// The entries of `store` (this scope's) matching `pattern`, in scope.
    fn glob<'s>(&self, store: &'s Store, pattern: &str) -> TeraResult<Vec<(&'s str, &'s str)>> {
        crate::pattern::validate(pattern).map_err(tera::Error::message)?;
        // The directory the pattern searches decides the scope check.
        self.check_path(glob_base(pattern))?;
        let absolute = self.absolute(pattern);
        let mut entries = store.glob(&absolute);
        entries.retain(|(k, _)| self.in_scope(k));
        Ok(entries)
    }

    fn children(&mut self, path: &str, dirs_only: bool) -> TeraResult<Vec<String>> {
        let absolute = self.check_path(path)?;
        let store = self.store.clone();
        let base = if absolute == "/" {
            String::new()
        } else {
            absolute.clone()
        };
        let names: Vec<String> = store
            .children(&absolute)
            .into_iter()
            .filter(|(_, is_dir)| !dirs_only || *is_dir)
            .map(|(name, _)| name)
            // A child is visible when anything in scope lies at or under it,
            // or when it lies under a key (the path itself is in scope).
            .filter(|name| {
                let child = format!("{base}/{name}");
                self.in_scope(&child) || self.keys.iter().any(|k| is_under(k, &child))
            })
            .collect();
        if self.every_read {
            for name in &names {
                let child = self.relative(&format!("{base}/{name}"));
                self.origins.push(Origin {
                    what: format!("key `{}`", child.escape_debug()),
                    text: name.clone(),
                });
            }
        }
        Ok(names)
    }
}

fn key_arg(kwargs: &Kwargs, name: &str) -> TeraResult<String> {
    kwargs.must_get::<&str>(name).map(str::to_string)
}

fn getv(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let key = key_arg(&kwargs, "key")?;
    let default = kwargs.get::<&str>("default")?.map(str::to_string);
    with_scope(|scope| {
        let absolute = match (scope.check_key(&key), &default) {
            (Ok(absolute), _) => absolute,
            // confd returned the default here, hiding a key that could never
            // be read: say so, and how to read it.
            (Err(_), Some(_)) => {
                return Err(tera::Error::message(format!(
                    "key `{}` is not under this resource's keys [{}], so getv would always return its default; add `{}` (or a prefix of it) to `keys` in the resource file, or drop the getv if the default is what you want",
                    normalize_key(&key),
                    scope.keys_shown(),
                    normalize_key(&key)
                )))
            }
            (Err(e), None) => return Err(e),
        };
        match scope.store.clone().get(&absolute) {
            Some(value) => {
                scope.record(&absolute, value);
                Ok(Value::from(value))
            }
            None => default.map(Value::from).ok_or_else(|| missing(&key)),
        }
    })
}

fn get(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let key = key_arg(&kwargs, "key")?;
    with_scope(|scope| {
        let absolute = scope.check_key(&key)?;
        match scope.store.clone().get(&absolute) {
            Some(value) => Ok(scope.entry(&absolute, value)),
            None => Err(tera::Error::message(format!(
                "key `{}` not found; use exists() or getv() with a default if it is optional",
                normalize_key(&key)
            ))),
        }
    })
}

fn exists(kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    let key = key_arg(&kwargs, "key")?;
    with_scope(|scope| {
        match scope.check_key(&key) {
            Ok(absolute) => Ok(scope.store.get(&absolute).is_some()),
            // As in confd: nothing outside the keys is in the view.
            Err(_) => {
                let key = normalize_key(&key);
                // Once per resource and key, not on every render.
                if crate::logging::first_time(format!("exists {} {key}", scope.dest.display())) {
                    tracing::warn!(
                        key = %key.escape_debug(),
                        dest = %scope.dest.display(),
                        keys = %scope.keys_shown(),
                        "exists() on a key outside the resource's keys is always false; add the key to `keys` in the resource file"
                    );
                }
                Ok(false)
            }
        }
    })
}

fn gets(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let pattern = key_arg(&kwargs, "pattern")?;
    with_scope(|scope| {
        let store = scope.store.clone();
        let entries = scope.glob(&store, &pattern)?;
        let values: Vec<Value> = entries.iter().map(|(k, v)| scope.entry(k, v)).collect();
        Ok(free_later(Value::from(values)))
    })
}

fn getvs(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let pattern = key_arg(&kwargs, "pattern")?;
    with_scope(|scope| {
        let store = scope.store.clone();
        let entries = scope.glob(&store, &pattern)?;
        let values: Vec<Value> = entries
            .iter()
            .map(|(k, v)| {
                scope.record(k, v);
                Value::from(*v)
            })
            .collect();
        Ok(free_later(Value::from(values)))
    })
}

fn ls(kwargs: Kwargs, _: &State) -> TeraResult<Vec<String>> {
    let path = key_arg(&kwargs, "path")?;
    with_scope(|scope| scope.children(&path, false))
}

fn lsdir(kwargs: Kwargs, _: &State) -> TeraResult<Vec<String>> {
    let path = key_arg(&kwargs, "path")?;
    with_scope(|scope| scope.children(&path, true))
}

/// `getenv(name="HOME", default="x")`: only for resources with
/// `allow_env = true`, since the environment may hold anything.
fn getenv(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let name = key_arg(&kwargs, "name")?;
    let default = kwargs.get::<&str>("default")?.map(str::to_string);
    with_scope(|scope| {
        if !scope.allow_env {
            return Err(tera::Error::message(
                "getenv is disabled: set allow_env = true in the resource to read environment variables",
            ));
        }
        // As in confd, a variable that is set but empty gives the default.
        match (std::env::var(&name), default) {
            (Ok(value), Some(default)) if value.is_empty() => Ok(Value::from(default)),
            (Ok(value), _) => {
                if scope.every_read {
                    scope.origins.push(Origin {
                        what: format!("environment variable `{name}`"),
                        text: value.clone(),
                    });
                }
                Ok(Value::from(value))
            }
            (Err(_), Some(default)) => Ok(Value::from(default)),
            (Err(_), None) => Err(tera::Error::message(format!(
                "environment variable `{name}` is not set and getenv has no default"
            ))),
        }
    })
}

/// `hashToIPv4(name="node-a")`: Calico's router id, the first four bytes of
/// the SHA-256 of `name` as a dotted IPv4 address.
fn hash_to_ipv4(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    let name = kwargs.must_get::<&str>("name")?;
    Ok(Value::safe_string(&super::filters::hash_to_ipv4_text(name)))
}

fn missing(key: &str) -> tera::Error {
    tera::Error::message(format!(
        "key `{}` not found; give getv a default (getv(key=\"{}\", default=\"...\")) if it is optional",
        normalize_key(key),
        normalize_key(key)
    ))
}

pub(super) fn register(tera: &mut Tera) {
    tera.register_function("getv", getv);
    tera.register_function("get", get);
    tera.register_function("exists", exists);
    tera.register_function("gets", gets);
    tera.register_function("getvs", getvs);
    tera.register_function("ls", ls);
    tera.register_function("lsdir", lsdir);
    tera.register_function("getenv", getenv);
    tera.register_function("hashToIPv4", hash_to_ipv4);
    tera.register_function("printf", super::printf::printf);
}
