//! Template resources: parsing `<confdir>/conf.d/*.toml` into [`Unit`]s.
//!
//! A unit is one conf.d file and describes one daemon: one template (confd's
//! single `[template]` table) or a set of them (`[[template]]`) that share
//! their check and reload settings and are committed together. Parsing never
//! touches a backend and never writes a file.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::duration::{parse_duration, Wait};
use crate::error::ConfigError;
use crate::pipeline::pinned::{identity, Identity};
use crate::reload::process;
use crate::store::{glob_base, is_under, join_keys};

const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// One conf.d file: the templates of one daemon and how to check and reload it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The conf.d file's stem, used in logs and stage file names.
    pub name: String,
    pub path: PathBuf,
    pub templates: Vec<Template>,
    pub check_cmd: Option<String>,
    pub check_timeout: Duration,
    pub reload: Reload,
    pub wait: Option<Wait>,
    /// How a change waits (else `--wait-mode`).
    pub wait_mode: Option<crate::watch::debounce::WaitMode>,
    pub drift: Drift,
    /// Also check with BIRD's own parser: `configure check "<staged>"` over
    /// `bird_socket`.
    pub bird_check: bool,
    /// This resource's render time limit (else `--render-timeout`).
    pub render_timeout: Option<Duration>,
    /// This resource's render output limit in bytes (else `--max-output`).
    pub max_output: Option<u64>,
    /// What to do with committed files the daemon rejects (`bird_socket`'s
    /// 8002 answer); `None` without `bird_socket`.
    pub on_reject: Option<OnReject>,
}

/// What to do when the daemon itself rejects a committed configuration
/// (`on_reject`; only BIRD's control socket says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReject {
    /// Put back the files the commit replaced (remove those it created),
    /// and do not try the same configuration again until the resource's
    /// data or templates change.
    #[default]
    Rollback,
    /// Leave the rejected files in place; the reload stays owed and is
    /// retried with backoff.
    Keep,
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The template's name inside the templates directory (`bird.conf.tera`).
    pub src: String,
    pub dest: PathBuf,
    /// The effective prefix (global `--prefix` joined with the resource's).
    pub prefix: String,
    /// Absolute store prefixes this template may read (prefix joined with each key).
    pub keys: Vec<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub secrets: Secrets,
    /// Whether the template may read environment variables (`getenv`).
    pub allow_env: bool,
    /// How every value the template prints is checked.
    pub output: Output,
    /// Follow a symbolic link at `dest` (only one root or confera's user
    /// owns, in a directory nobody else can write); refused otherwise.
    pub follow_symlink: bool,
}

/// The output policy of a resource (`output = "bird" | "plain"`): what a
/// value printed by the template may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// A printed value that could change a BIRD config's structure (control
    /// characters, `;`, `{`, `}`, `"`, `#`, comment markers, whitespace at
    /// either end) fails the render, unless it passed a validation filter or
    /// `raw`. The default for resources that check or reload BIRD.
    Bird,
    /// Values are printed as they are. The default for other resources.
    #[default]
    Plain,
}

/// The placeholder Calico writes in `prefix` and `keys` for this node's name.
pub const NODENAME_PLACEHOLDER: &str = "//NODENAME";

/// Which values of a template are secret: never logged, never shown in a
/// diff or an error message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Secrets {
    /// The whole output is secret.
    pub all: bool,
    /// Absolute keys, or key patterns as in `gets` (Go's `path.Match`),
    /// whose values are secret, with everything under them.
    pub patterns: Vec<String>,
}

impl Secrets {
    pub fn is_secret(&self, absolute_key: &str) -> bool {
        self.all
            || self
                .patterns
                .iter()
                .any(|p| is_under(absolute_key, p) || matches_pattern(p, absolute_key))
    }

    pub fn any(&self) -> bool {
        self.all || !self.patterns.is_empty()
    }
}

/// How a daemon is told to re-read its configuration. Two units with equal
/// `Reload`s are reloaded once per batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Reload {
    pub cmd: Option<String>,
    pub signal: Option<Signal>,
    pub pid_file: Option<PathBuf>,
    pub process_name: Option<String>,
    pub bird_socket: Option<PathBuf>,
    pub bird_configure: BirdConfigure,
    pub timeout: Duration,
}

/// Which `configure` command a BIRD socket reload sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BirdConfigure {
    /// `configure`: re-read the file BIRD was started with.
    #[default]
    Plain,
    /// `configure soft`: apply without restarting changed protocols.
    Soft,
    /// `configure "<dest of the first template>"`.
    File,
}

impl Reload {
    pub fn is_none(&self) -> bool {
        self.cmd.is_none() && self.signal.is_none() && self.bird_socket.is_none()
    }
}

/// What to do when a destination is changed by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Drift {
    #[default]
    Restore,
    Warn,
    Ignore,
}

impl Unit {
    /// Every absolute prefix the unit reads.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.templates
            .iter()
            .flat_map(|t| t.keys.iter().map(String::as_str))
    }
}

/// Where to find things, and the global prefix.
#[derive(Debug, Clone)]
pub struct Layout<'a> {
    pub confdir: &'a Path,
    pub prefix: &'a str,
    /// Exec mode: `reload_signal` alone signals confera's child.
    pub exec: bool,
}

impl Layout<'_> {
    pub fn templates_dir(&self) -> PathBuf {
        self.confdir.join("templates")
    }

    pub fn confd_dir(&self) -> PathBuf {
        self.confdir.join("conf.d")
    }
}

/// Reads every `conf.d/*.toml` in sorted order.
pub fn load_all(layout: &Layout) -> Result<Vec<Unit>, ConfigError> {
    let dir = layout.confd_dir();
    let entries = fs::read_dir(&dir).map_err(|source| ConfigError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(ConfigError::NoResources { dir });
    }
    let units: Vec<Unit> = paths
        .iter()
        .map(|p| load(layout, p))
        .collect::<Result<_, _>>()?;
    // Two units writing one file would overwrite each other forever, however
    // each spells it: compare the directory's device and inode plus the name.
    let mut owners: std::collections::HashMap<Identity, (&Path, &Path)> =
        std::collections::HashMap::new();
    for unit in &units {
        for t in &unit.templates {
            let id = identity(&t.dest, t.follow_symlink);
            if let Some((other, other_dest)) = owners.insert(id, (&unit.path, &t.dest)) {
                let same = if other_dest == t.dest {
                    String::new()
                } else {
                    format!(" (as {})", other_dest.display())
                };
                return Err(ConfigError::field(
                    &unit.path,
                    "dest",
                    format!(
                        "{} is also written by {}{same}; a destination belongs to one resource",
                        t.dest.display(),
                        other.display()
                    ),
                ));
            }
        }
    }
    Ok(units)
}

/// Parses one conf.d file.
pub fn load(layout: &Layout, path: &Path) -> Result<Unit, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(layout, path, &text)
}

/// Parses the text of a conf.d file named `path`, with `//NODENAME`
/// resolved from the `NODENAME` environment variable.
pub fn parse(layout: &Layout, path: &Path, text: &str) -> Result<Unit, ConfigError> {
    let nodename = std::env::var("NODENAME").ok();
    parse_with_nodename(layout, path, text, nodename.as_deref())
}

/// [`parse`] with the node name given (`None` or empty: unset).
pub fn parse_with_nodename(
    layout: &Layout,
    path: &Path,
    text: &str,
    nodename: Option<&str>,
) -> Result<Unit, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Resource {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    };
    // Peek at the shape first so the real parse keeps toml's line numbers.
    let table: toml::Table = toml::from_str(text).map_err(syntax)?;
    let (shared, raw_templates) = match table.get("template") {
        Some(toml::Value::Array(_)) => {
            let mut raw: RawFile<Vec<RawTemplate>> = toml::from_str(text).map_err(syntax)?;
            (raw.take_shared(), raw.template)
        }
        Some(_) => {
            let mut raw: RawFile<RawTemplate> = toml::from_str(text).map_err(syntax)?;
            (raw.take_shared(), vec![raw.template])
        }
        None => {
            return Err(ConfigError::field(
                path,
                "template",
                "missing: add a [template] table (or [[template]] entries)",
            ))
        }
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if raw_templates.is_empty() {
        return Err(ConfigError::field(path, "template", "no templates listed"));
    }
    let nodename = nodename.filter(|n| !n.is_empty());
    let ctx = Ctx {
        layout,
        path,
        nodename,
    };
    let multi = raw_templates.len() > 1;
    let mut shared = shared;
    let mut templates = Vec::with_capacity(raw_templates.len());
    for mut raw in raw_templates {
        let own_shared = raw.take_shared();
        if multi {
            if let Some(field) = own_shared.first_set() {
                return Err(ConfigError::field(
                    path,
                    field,
                    "check and reload settings of a template set belong at the top level of the file, shared by all its templates",
                ));
            }
        }
        shared = shared.merge(own_shared, path)?;
        templates.push(ctx.template(raw)?);
    }
    ctx.unit(name, shared, templates)
}

struct Ctx<'a> {
    layout: &'a Layout<'a>,
    path: &'a Path,
    nodename: Option<&'a str>,
}

impl Ctx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::field(self.path, field, message)
    }

    fn template(&self, raw: RawTemplate) -> Result<Template, ConfigError> {
        let src = raw.src.ok_or_else(|| self.err("src", "missing"))?;
        let dest = raw.dest.ok_or_else(|| self.err("dest", "missing"))?;
        if src.trim().is_empty() {
            return Err(self.err("src", "is empty"));
        }
        if dest.as_os_str().is_empty() {
            return Err(self.err("dest", "is empty"));
        }
        let dest = if dest.is_absolute() {
            dest
        } else {
            self.layout.confdir.join(dest)
        };
        let own_prefix = self.with_nodename("prefix", raw.prefix.as_deref().unwrap_or(""))?;
        let prefix = join_keys(&[self.layout.prefix, &own_prefix]);
        let mut keys: Vec<String> = raw
            .keys
            .unwrap_or_default()
            .iter()
            .map(|k| Ok(join_keys(&[&prefix, &self.with_nodename("keys", k)?])))
            .collect::<Result<_, ConfigError>>()?;
        keys.sort();
        keys.dedup();
        let mode = raw.mode.as_deref().map(parse_mode).transpose();
        let mode = mode.map_err(|m| self.err("mode", m))?;
        let uid = match (raw.uid, raw.owner.as_ref()) {
            (Some(_), Some(_)) => {
                return Err(self.err("owner", "set either uid or owner, not both"))
            }
            (Some(id), None) => Some(id),
            (None, Some(owner)) => Some(resolve_user(owner).map_err(|m| self.err("owner", m))?),
            (None, None) => None,
        };
        let gid = match (raw.gid, raw.group.as_ref()) {
            (Some(_), Some(_)) => {
                return Err(self.err("group", "set either gid or group, not both"))
            }
            (Some(id), None) => Some(id),
            (None, Some(group)) => Some(resolve_group(group).map_err(|m| self.err("group", m))?),
            (None, None) => None,
        };
        Ok(Template {
            src,
            dest,
            prefix,
            keys,
            mode,
            uid,
            gid,
            secrets: Secrets::default(),
            allow_env: false,
            output: Output::default(),
            follow_symlink: raw.follow_symlink.unwrap_or(false),
        })
    }

    /// Calico's convention: the first `//NODENAME` in a prefix or key is `/`
    /// and this node's name, replaced before prefixes are joined.
    fn with_nodename(&self, field: &str, text: &str) -> Result<String, ConfigError> {
        if !text.contains(NODENAME_PLACEHOLDER) {
            return Ok(text.to_string());
        }
        let Some(name) = self.nodename else {
            return Err(self.err(
                field,
                format!(
                    "`{text}` uses {NODENAME_PLACEHOLDER}, but the NODENAME environment variable is unset or empty; set NODENAME to this node's name (as Calico does)"
                ),
            ));
        };
        // A name is one key segment: a `/` would reach another node's keys.
        if name.contains('/') || name.chars().any(char::is_control) {
            return Err(self.err(
                field,
                format!(
                    "`{text}` uses {NODENAME_PLACEHOLDER}, but NODENAME={:?} is not a node name (no `/` or control characters)",
                    name
                ),
            ));
        }
        Ok(text.replacen(NODENAME_PLACEHOLDER, &format!("/{name}"), 1))
    }

    fn unit(
        &self,
        name: String,
        shared: RawShared,
        mut templates: Vec<Template>,
    ) -> Result<Unit, ConfigError> {
        let secret_all = shared.secret.unwrap_or(false);
        let allow_env = shared.allow_env.unwrap_or(false);
        let output = shared.output.unwrap_or(if reloads_bird(&shared) {
            Output::Bird
        } else {
            Output::Plain
        });
        for pattern in shared.secret_keys.iter().flatten() {
            crate::pattern::validate(pattern)
                .map_err(|e| self.err("secret_keys", e.to_string()))?;
        }
        for t in &mut templates {
            t.output = output;
            // A set shares its secret keys; each member keeps those it can read.
            let patterns = shared.secret_keys.iter().flatten();
            let patterns = patterns.map(|k| join_keys(&[&t.prefix, k]));
            t.secrets = Secrets {
                all: secret_all,
                patterns: patterns.filter(|p| overlaps(p, &t.keys)).collect(),
            };
            t.allow_env = allow_env;
            // Secret output is not for other users' eyes unless asked for.
            if t.secrets.any() && t.mode.is_none() {
                t.mode = Some(0o600);
            }
        }
        if shared.on_reject.is_some() && shared.bird_socket.is_none() {
            return Err(self.err(
                "on_reject",
                "needs bird_socket: only BIRD's control socket tells a rejected configuration from a failed reload",
            ));
        }
        let on_reject = shared
            .bird_socket
            .is_some()
            .then(|| shared.on_reject.unwrap_or_default());
        let bird_check = shared.bird_check.unwrap_or(false);
        if bird_check && shared.bird_socket.is_none() {
            return Err(self.err("bird_check", "needs bird_socket to reach the running BIRD"));
        }
        let duration = |field: &str, value: Option<String>, default: Duration| match value {
            Some(text) => parse_duration(&text).map_err(|m| self.err(field, m)),
            None => Ok(default),
        };
        let signal = shared
            .reload_signal
            .as_deref()
            .map(process::parse_signal)
            .transpose()
            .map_err(|e| self.err("reload_signal", e.to_string()))?;
        let targets_a_process = shared.pid_file.is_some() || shared.process_name.is_some();
        // A pid file or process name without a signal means confd-style SIGHUP.
        let signal = signal.or(targets_a_process.then_some(Signal::SIGHUP));
        if signal.is_some() && !targets_a_process && !self.layout.exec {
            return Err(self.err(
                "reload_signal",
                "needs pid_file or process_name to know which process to signal (or --exec, to signal confera's child)",
            ));
        }
        if bird_check && self.layout.exec {
            return Err(self.err(
                "bird_check",
                "asks the running BIRD, but in exec mode BIRD starts only after the first render: check with check_cmd = \"bird -p -c {{src}}\" instead",
            ));
        }
        let wait = shared
            .wait
            .as_deref()
            .map(str::parse::<Wait>)
            .transpose()
            .map_err(|m| self.err("wait", m))?;
        let mut seen = std::collections::HashSet::new();
        for t in &templates {
            if !seen.insert(&t.dest) {
                return Err(self.err("dest", format!("{} is listed twice", t.dest.display())));
            }
        }
        Ok(Unit {
            name,
            path: self.path.to_path_buf(),
            templates,
            check_cmd: shared.check_cmd.filter(|c| !c.trim().is_empty()),
            check_timeout: duration("check_timeout", shared.check_timeout, DEFAULT_CHECK_TIMEOUT)?,
            reload: Reload {
                cmd: shared.reload_cmd.filter(|c| !c.trim().is_empty()),
                signal,
                pid_file: shared.pid_file,
                process_name: shared.process_name,
                bird_socket: shared.bird_socket,
                bird_configure: shared.bird_configure.unwrap_or_default(),
                timeout: duration(
                    "reload_timeout",
                    shared.reload_timeout,
                    DEFAULT_RELOAD_TIMEOUT,
                )?,
            },
            wait,
            wait_mode: shared.wait_mode,
            drift: shared.drift.unwrap_or_default(),
            bird_check,
            render_timeout: shared
                .render_timeout
                .map(|t| parse_duration(&t).map_err(|m| self.err("render_timeout", m)))
                .transpose()?,
            max_output: shared.max_output,
            on_reject,
        })
    }
}

/// Whether the resource checks or reloads BIRD: then its output is a BIRD
/// config, and values printed into it are checked unless it says otherwise.
fn reloads_bird(shared: &RawShared) -> bool {
    let runs_bird = |cmd: &Option<String>| {
        cmd.as_deref().is_some_and(|cmd| {
            cmd.split(|c: char| c.is_whitespace() || ";&|()`'\"".contains(c))
                .filter_map(|word| word.rsplit('/').next())
                .any(|program| matches!(program, "bird" | "bird6" | "birdc" | "birdc6" | "birdcl"))
        })
    };
    shared.bird_socket.is_some()
        || runs_bird(&shared.check_cmd)
        || runs_bird(&shared.reload_cmd)
        || matches!(shared.process_name.as_deref(), Some("bird" | "bird6"))
}

/// Whether `key` matches the secret key pattern `pattern`. Every match
/// starts with the pattern's literal prefix: most reads are decided on it.
fn matches_pattern(pattern: &str, key: &str) -> bool {
    key.starts_with(crate::pattern::literal_prefix(pattern))
        && crate::store::glob_match(pattern, key)
}

/// Whether a secret key pattern can match anything under `keys`.
fn overlaps(pattern: &str, keys: &[String]) -> bool {
    let base = if crate::pattern::literal_prefix(pattern) != pattern {
        glob_base(pattern)
    } else {
        pattern
    };
    keys.iter().any(|k| is_under(k, base) || is_under(base, k))
}

/// Parses an octal mode string such as `0644`, `644` or `0o644`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("`{text}` is not an octal file mode such as \"0644\""))?;
    if mode > 0o7777 {
        return Err(format!("`{text}` is larger than 07777"));
    }
    Ok(mode)
}

fn resolve_user(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("no user named `{name}` exists on this host")),
        Err(e) => Err(format!("looking up user `{name}`: {e}")),
    }
}

fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named `{name}` exists on this host")),
        Err(e) => Err(format!("looking up group `{name}`: {e}")),
    }
}

/// Declares the raw TOML structs from ONE list of the shared settings:
/// `RawShared` (the settings gathered from a file), `RawFile<T>` (the top
/// level: `T` is one template or a list) and `RawTemplate` (a `[template]`
/// table, which as in confd may hold the shared settings too). The shared
/// fields are spelled out in each struct, so that `deny_unknown_fields` sees
/// the whole table (serde's `flatten` would disable it).
macro_rules! raw_structs {
    (
        shared { $($field:ident : $fty:ty),* $(,)? }
        template { $($own:ident : $oty:ty),* $(,)? }
    ) => {
        /// The shared settings, gathered from the top level and the template tables.
        #[derive(Default, PartialEq, Debug)]
        struct RawShared {
            $($field: Option<$fty>,)*
        }

        /// The whole file. `T` is one template or a list of them.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawFile<T> {
            template: T,
            $($field: Option<$fty>,)*
        }

        /// One `[template]` table: its own fields plus the shared settings.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawTemplate {
            $($own: Option<$oty>,)*
            $($field: Option<$fty>,)*
        }

        impl<T> RawFile<T> {
            fn take_shared(&mut self) -> RawShared {
                RawShared { $($field: self.$field.take(),)* }
            }
        }

        impl RawTemplate {
            fn take_shared(&mut self) -> RawShared {
                RawShared { $($field: self.$field.take(),)* }
            }
        }

        impl RawShared {
            /// Takes every setting `other` has; one set in both is an error.
            fn merge(mut self, other: RawShared, path: &Path) -> Result<RawShared, ConfigError> {
                $(
                    if self.$field.is_some() && other.$field.is_some() {
                        return Err(ConfigError::field(
                            path,
                            stringify!($field),
                            "is set both at the top level and inside [template]",
                        ));
                    }
                    if other.$field.is_some() {
                        self.$field = other.$field;
                    }
                )*
                Ok(self)
            }

            /// The name of the first setting present, for error messages.
            fn first_set(&self) -> Option<&'static str> {
                $( if self.$field.is_some() { return Some(stringify!($field)); } )*
                None
            }
        }
    };
}

raw_structs! {
    shared {
        check_cmd: String,
        reload_cmd: String,
        reload_signal: String,
        pid_file: PathBuf,
        process_name: String,
        bird_socket: PathBuf,
        check_timeout: String,
        reload_timeout: String,
        wait: String,
        wait_mode: crate::watch::debounce::WaitMode,
        drift: Drift,
        bird_check: bool,
        render_timeout: String,
        max_output: u64,
        bird_configure: BirdConfigure,
        secret: bool,
        secret_keys: Vec<String>,
        allow_env: bool,
        output: Output,
        on_reject: OnReject,
    }
    template {
        src: String,
        dest: PathBuf,
        keys: Vec<String>,
        prefix: String,
        mode: String,
        uid: u32,
        gid: u32,
        owner: String,
        group: String,
        follow_symlink: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Unit, String> {
        let layout = Layout {
            exec: false,
            confdir: Path::new("/etc/confera"),
            prefix: "/global",
        };
        parse(&layout, Path::new("/etc/confera/conf.d/bird.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn in_exec_mode_reload_signal_alone_signals_the_child_and_bird_check_is_refused() {
        let layout = Layout {
            exec: true,
            confdir: Path::new("/etc/confera"),
            prefix: "",
        };
        let path = Path::new("/etc/confera/conf.d/bird.toml");
        let text = "reload_signal = \"HUP\"\n[template]\nsrc = \"a\"\ndest = \"/x\"\n";
        let unit = parse(&layout, path, text).unwrap();
        assert_eq!(unit.reload.signal, Some(Signal::SIGHUP));
        assert_eq!(
            (unit.reload.pid_file, unit.reload.process_name),
            (None, None)
        );
        let text = "bird_socket = \"/run/bird.ctl\"\nbird_check = true\n[template]\nsrc = \"a\"\ndest = \"/x\"\n";
        let e = parse(&layout, path, text).unwrap_err().to_string();
        assert!(
            e.contains("field `bird_check`") && e.contains("bird -p -c"),
            "{e}"
        );
    }

    #[test]
    fn a_confd_style_template_table_parses() {
        let unit = parse_text(
            r#"
            [template]
            src = "bird.conf.tera"
            dest = "out/bird.conf"
            keys = ["/bgp", "nodes/"]
            prefix = "/fabric"
            mode = "644"
            uid = 0
            check_cmd = "bird -p -c {{src}}"
            reload_cmd = "birdc configure"
            "#,
        )
        .unwrap();
        assert_eq!(unit.name, "bird");
        let t = &unit.templates[0];
        assert_eq!(
            t.dest,
            Path::new("/etc/confera/out/bird.conf"),
            "relative dest resolves against the confdir"
        );
        assert_eq!(t.prefix, "/global/fabric");
        assert_eq!(t.keys, ["/global/fabric/bgp", "/global/fabric/nodes"]);
        assert_eq!((t.mode, t.uid), (Some(0o644), Some(0)));
        assert_eq!(unit.check_cmd.as_deref(), Some("bird -p -c {{src}}"));
        assert_eq!(unit.reload.cmd.as_deref(), Some("birdc configure"));
        assert_eq!(unit.reload.signal, None);
    }

    #[test]
    fn a_template_set_shares_top_level_check_and_reload() {
        let unit = parse_text(
            r#"
            check_cmd = "bird -p -c {{src}}"
            pid_file = "/run/bird.pid"
            wait = "100ms:2s"
            wait_mode = "trailing"
            [[template]]
            src = "bird.conf.tera"
            dest = "/etc/bird/bird.conf"
            [[template]]
            src = "filters.conf.tera"
            dest = "/etc/bird/filters.conf"
            keys = ["/policy"]
            "#,
        )
        .unwrap();
        assert_eq!(unit.templates.len(), 2);
        assert_eq!(
            unit.reload.signal,
            Some(Signal::SIGHUP),
            "a pid file alone means SIGHUP"
        );
        assert_eq!(
            unit.reload.pid_file.as_deref(),
            Some(Path::new("/run/bird.pid"))
        );
        assert_eq!(unit.wait.unwrap().max, Duration::from_secs(2));
        assert_eq!(
            unit.wait_mode,
            Some(crate::watch::debounce::WaitMode::Trailing)
        );
    }

    #[test]
    fn bad_resources_name_the_file_and_the_field() {
        let cases = [
            ("[template]\ndest = \"/x\"\n", "field `src`"),
            ("[template]\nsrc = \"a\"\n", "field `dest`"),
            ("[template]\nsrc = \"a\"\ndest = \"/x\"\nmode = \"0999\"\n", "field `mode`"),
            ("[template]\nsrc = \"a\"\ndest = \"/x\"\nreload_signal = \"SIGNOPE\"\npid_file = \"/p\"\n", "field `reload_signal`"),
            ("[template]\nsrc = \"a\"\ndest = \"/x\"\nsrcc = \"b\"\n", "unknown field `srcc`"),
            ("[template]\nsrc = \"a\"\ndest = \"/x\"\nowner = \"no-such-user-here\"\n", "field `owner`"),
            ("[template\n", "TOML parse error"),
            ("check_cmd = \"x\"\n", "field `template`"),
            (
                "[[template]]\nsrc = \"a\"\ndest = \"/x\"\ncheck_cmd = \"c\"\n[[template]]\nsrc = \"b\"\ndest = \"/y\"\n",
                "belong at the top level",
            ),
            ("reload_signal = \"HUP\"\n[template]\nsrc = \"a\"\ndest = \"/x\"\n", "needs pid_file or process_name"),
        ];
        for (text, fragment) in cases {
            let e = parse_text(text).unwrap_err();
            assert!(e.contains("/etc/confera/conf.d/bird.toml"), "{e}");
            assert!(
                e.contains(fragment),
                "{text:?}: expected {fragment:?} in {e}"
            );
        }
    }

    #[test]
    fn modes_are_octal_with_or_without_a_leading_zero() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("rw-r--r--").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn owners_resolve_by_name_or_id() {
        assert_eq!(resolve_user("root"), Ok(0));
        assert_eq!(resolve_user("1234"), Ok(1234));
        assert_eq!(resolve_group("root"), Ok(0));
    }

    fn parse_as(text: &str, nodename: Option<&str>) -> Result<Unit, String> {
        let layout = Layout {
            exec: false,
            confdir: Path::new("/etc/confera"),
            prefix: "",
        };
        let path = Path::new("/etc/confera/conf.d/calico.toml");
        parse_with_nodename(&layout, path, text, nodename).map_err(|e| e.to_string())
    }

    #[test]
    fn resources_that_check_or_reload_bird_default_to_the_bird_output_policy() {
        let head = "[template]\nsrc = \"a\"\ndest = \"/x\"\n";
        for (settings, want) in [
            ("", Output::Plain),
            ("bird_socket = \"/run/bird/bird.ctl\"\n", Output::Bird),
            ("check_cmd = \"bird -p -c {{src}}\"\n", Output::Bird),
            (
                "check_cmd = \"/usr/sbin/bird -p -c {{src}}\"\n",
                Output::Bird,
            ),
            ("reload_cmd = \"birdc configure\"\n", Output::Bird),
            ("process_name = \"bird\"\n", Output::Bird),
            ("check_cmd = \"nginx -t -c {{src}}\"\n", Output::Plain),
            ("check_cmd = \"birdwatcher --check\"\n", Output::Plain),
            (
                "bird_socket = \"/b.ctl\"\noutput = \"plain\"\n",
                Output::Plain,
            ),
            ("output = \"bird\"\n", Output::Bird),
        ] {
            let unit = parse_as(&format!("{head}{settings}"), None).unwrap();
            assert_eq!(unit.templates[0].output, want, "{settings}");
        }
        let e = parse_as(&format!("{head}output = \"html\"\n"), None).unwrap_err();
        assert!(e.contains("unknown variant `html`"), "{e}");
    }

    #[test]
    fn nodename_in_prefix_and_keys_is_replaced_once_before_joining() {
        let unit = parse_as(
            r#"[template]
src = "bird.cfg.tera"
dest = "/etc/bird/bird.conf"
prefix = "/calico/bgp/v1"
keys = ["/host//NODENAME", "/global", "/x//NODENAME//NODENAME"]
"#,
            Some("node-a"),
        )
        .unwrap();
        assert_eq!(
            unit.templates[0].keys,
            [
                "/calico/bgp/v1/global",
                "/calico/bgp/v1/host/node-a",
                "/calico/bgp/v1/x/node-a/NODENAME",
            ]
        );
        let unit = parse_as(
            "[template]\nsrc = \"a\"\ndest = \"/x\"\nprefix = \"/calico/ipam/v2/host//NODENAME\"\nkeys = [\"/ipv4\"]\n",
            Some("node-b"),
        )
        .unwrap();
        assert_eq!(unit.templates[0].prefix, "/calico/ipam/v2/host/node-b");
        assert_eq!(unit.templates[0].keys, ["/calico/ipam/v2/host/node-b/ipv4"]);
    }

    #[test]
    fn nodename_unset_empty_or_with_a_slash_is_an_error_naming_file_and_field() {
        let keys = "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/host//NODENAME\"]\n";
        let prefix = "[template]\nsrc = \"a\"\ndest = \"/x\"\nprefix = \"/h//NODENAME\"\n";
        for (text, nodename, field, fragment) in [
            (
                keys,
                None,
                "keys",
                "NODENAME environment variable is unset or empty",
            ),
            (
                keys,
                Some(""),
                "keys",
                "NODENAME environment variable is unset or empty",
            ),
            (
                prefix,
                None,
                "prefix",
                "NODENAME environment variable is unset or empty",
            ),
            (
                keys,
                Some("a/b"),
                "keys",
                "NODENAME=\"a/b\" is not a node name",
            ),
        ] {
            let e = parse_as(text, nodename).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "/etc/confera/conf.d/calico.toml: field `{field}`: "
                )),
                "{e}"
            );
            assert!(e.contains(fragment), "{e}");
        }
        // Without the placeholder, NODENAME does not matter.
        assert!(parse_as(
            "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/h\"]\n",
            None
        )
        .is_ok());
    }
}
