//! Settings: the command line, `CONFERA_*` variables, the settings file
//! (`confera.toml`, or confd's `confd.toml` as it is) and the defaults,
//! resolved in that order of precedence into one [`Settings`]. Every value
//! is checked here (ranges, levels, which backend a setting belongs to), so
//! a bad one ends the run before anything starts, naming where it came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::cli::{Backend, Cli, Given, LogFormat};
use crate::duration::{Wait, MAX_SECS};
use crate::error::ConfigError;
use crate::pipeline::Options;
use crate::watch::debounce::WaitMode;

pub const DEFAULT_CONFDIR: &str = "/etc/confera";
pub const DEFAULT_NODE: &str = "http://127.0.0.1:2379";
pub const DEFAULT_INTERVAL: u64 = 600;

/// How the run proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Onetime,
    /// Watch the backend; optionally resync fully every `resync`.
    Watch {
        resync: Option<Duration>,
    },
    /// Re-read everything every `interval`, confd's default mode.
    Poll {
        interval: Duration,
    },
}

/// Everything a run needs to know, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub confdir: PathBuf,
    pub backend: Backend,
    pub nodes: Vec<String>,
    pub files: Vec<PathBuf>,
    pub prefix: String,
    pub mode: Mode,
    pub wait: Wait,
    /// How a change waits for its render (watch mode).
    pub wait_mode: WaitMode,
    pub options: Options,
    pub log_level: String,
    pub log_format: LogFormat,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<Tls>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub limits: Limits,
    /// Where the owed-reload record lives.
    pub state_dir: PathBuf,
    /// Exec mode: the daemon confera runs as its child.
    pub exec: Option<crate::exec::Spec>,
}

/// What one resource's work may take in watch mode (a resource may set
/// its own `render_timeout` and `max_output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub render_timeout: Duration,
    pub max_output: u64,
    /// Work running longer than this shows as stuck in health and status.
    pub stuck_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            render_timeout: Duration::from_secs(10),
            max_output: 64 * 1024 * 1024,
            stuck_after: Duration::from_secs(60),
        }
    }
}

/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`) or `/var/lib/confera`.
fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| {
            // systemd joins several directories with ':'; the first is ours.
            let first = dirs.to_string_lossy().split(':').next()?.to_string();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/confera"))
}

/// TLS to etcd: a CA to trust and optionally a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    // By hand, so the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("confdir", &self.confdir)
            .field("backend", &self.backend)
            .field("nodes", &self.nodes)
            .field("files", &self.files)
            .field("prefix", &self.prefix)
            .field("mode", &self.mode)
            .field("wait", &self.wait)
            .field("wait_mode", &self.wait_mode)
            .field("options", &self.options)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("metrics_addr", &self.metrics_addr)
            .field("limits", &self.limits)
            .field("state_dir", &self.state_dir)
            .field("exec", &self.exec)
            .finish_non_exhaustive()
    }
}

/// The settings file: `confera.toml`, or confd's `confd.toml` as it is.
///
/// One format serves both: confd's spellings (`log-level`, `sync-only`,
/// `client_cakeys`, `file`) are accepted beside confera's, and confd's
/// `basic_auth` and `scheme` are understood. Unknown keys are errors, and a
/// confd key confera does not support is refused with the reason
/// ([`UNSUPPORTED_CONFD_KEYS`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub confdir: Option<PathBuf>,
    pub backend: Option<Backend>,
    pub nodes: Option<Vec<String>>,
    #[serde(alias = "file", default, deserialize_with = "one_or_many")]
    pub files: Option<Vec<PathBuf>>,
    pub prefix: Option<String>,
    pub onetime: Option<bool>,
    pub watch: Option<bool>,
    pub interval: Option<u64>,
    pub wait: Option<String>,
    pub wait_mode: Option<WaitMode>,
    pub noop: Option<bool>,
    #[serde(alias = "sync-only")]
    pub sync_only: Option<bool>,
    #[serde(alias = "keepstagefile")]
    pub keep_stage_file: Option<bool>,
    #[serde(alias = "log-level")]
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// confd's switch for sending username and password; confera sends them
    /// whenever they are given, so only `false` with credentials matters.
    pub basic_auth: Option<bool>,
    /// confd's scheme for nodes found by DNS SRV: without SRV (which
    /// confera does not look up) it meant nothing in confd either.
    pub scheme: Option<Scheme>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(alias = "client_cakeys")]
    pub client_ca_keys: Option<PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub render_timeout: Option<String>,
    pub max_output: Option<u64>,
    pub stuck_after: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// Exec mode: a command line, or an `[exec]` table ([`ExecTable`]).
    pub exec: Option<toml::Value>,
    /// The file this came from (none for defaults).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// The top-level keys as the file spells them, to name them in errors.
    #[serde(skip)]
    pub keys: Vec<String>,
}

/// The `[exec]` table of confera.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecTable {
    /// A command line (split like a shell would) or the argument list.
    pub command: Option<toml::Value>,
    pub kill_signal: Option<String>,
    pub kill_timeout: Option<String>,
    pub on_exit: Option<crate::exec::OnExit>,
    /// `MIN[:MAX]`: the first restart delay, doubling up to MAX.
    pub restart_backoff: Option<String>,
    pub prefix: Option<String>,
}

/// The exec spec from `--exec` (a command line) and the file's `exec`
/// (a command line or an `[exec]` table): the flag's command wins, the
/// table's other settings apply to it.
fn resolve_exec(
    flag: Option<&str>,
    file: &FileSettings,
) -> Result<Option<crate::exec::Spec>, ConfigError> {
    use crate::exec::Spec;
    let split = |origin: String, line: &str| -> Result<Vec<String>, ConfigError> {
        match shlex::split(line) {
            Some(argv) if !argv.is_empty() => Ok(argv),
            Some(_) => Err(ConfigError::Settings(format!(
                "{origin}: the command is empty"
            ))),
            None => Err(ConfigError::Settings(format!(
                "{origin}: cannot split `{line}` into words: a quote is not closed"
            ))),
        }
    };
    let table = match &file.exec {
        None => None,
        Some(toml::Value::String(line)) => Some(ExecTable {
            command: Some(toml::Value::String(line.clone())),
            ..ExecTable::default()
        }),
        Some(value @ toml::Value::Table(_)) => Some(
            ExecTable::deserialize(value.clone()).map_err(|e| file.error("exec", e.message()))?,
        ),
        Some(_) => return Err(file.error("exec", "must be a command line or an [exec] table")),
    };
    let argv = match (flag, table.as_ref().and_then(|t| t.command.as_ref())) {
        (Some(line), _) => split("--exec".to_owned(), line)?,
        (None, Some(toml::Value::String(line))) => split(file.origin("exec").to_string(), line)?,
        (None, Some(toml::Value::Array(words))) => {
            let argv: Option<Vec<String>> = words
                .iter()
                .map(|w| w.as_str().map(str::to_owned))
                .collect();
            match argv {
                Some(argv) if !argv.is_empty() => argv,
                _ => {
                    return Err(file.error("exec", "`command` must be a non-empty list of strings"))
                }
            }
        }
        (None, Some(_)) => {
            return Err(file.error(
                "exec",
                "`command` must be a command line or a list of strings",
            ))
        }
        (None, None) if table.is_some() => {
            return Err(file.error("exec", "the [exec] table needs `command` (or give --exec)"))
        }
        (None, None) => return Ok(None),
    };
    let mut spec = Spec::new(argv);
    let Some(table) = table else {
        return Ok(Some(spec));
    };
    if let Some(name) = &table.kill_signal {
        spec.kill_signal = crate::reload::process::parse_signal(name)
            .map_err(|e| file.error("exec", format!("kill_signal: {e}")))?;
    }
    if let Some(text) = &table.kill_timeout {
        spec.kill_timeout = crate::duration::parse_duration(text)
            .map_err(|e| file.error("exec", format!("kill_timeout: {e}")))?;
    }
    spec.on_exit = table.on_exit.unwrap_or_default();
    if let Some(text) = &table.restart_backoff {
        let wait: Wait = text
            .parse()
            .map_err(|e| file.error("exec", format!("restart_backoff: {e}")))?;
        if wait.min.is_zero() {
            return Err(file.error(
                "exec",
                "restart_backoff: the first delay must be above zero, or a child that fails at once restarts in a busy loop",
            ));
        }
        (spec.backoff_min, spec.backoff_max) = (wait.min, wait.max);
    }
    spec.prefix = table.prefix.filter(|p| !p.is_empty());
    Ok(Some(spec))
}

/// confd's `scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

/// confd's settings confera does not support, with the reason given in the
/// error. An empty value (`""`, `false`, `[]`) means "not set" in confd and
/// is accepted.
pub const UNSUPPORTED_CONFD_KEYS: &[(&[&str], &str)] = &[
    (
        &["srv_domain", "srv_record"],
        "confera does not look etcd up in DNS SRV records: list the endpoints in `nodes`",
    ),
    (
        &["client_insecure"],
        "confera always verifies etcd's certificate: give the CA in `client_cakeys`",
    ),
    (
        &[
            "auth_token",
            "auth_type",
            "app_id",
            "user_id",
            "role_id",
            "secret_id",
            "path",
        ],
        "it belongs to confd's Vault and consul backends, which confera does not have",
    ),
    (
        &["table"],
        "it belongs to confd's DynamoDB backend, which confera does not have",
    ),
    (
        &["separator"],
        "it belongs to confd's Redis backend, which confera does not have",
    ),
    (
        &["filter"],
        "confera reads the data files named in `file`, not a directory filtered by a glob",
    ),
    (
        &["secret_keyring"],
        "confera decrypts nothing: mark secret values with secret_keys in the resource instead",
    ),
];

/// confd's `file` is one path or a list of paths.
fn one_or_many<'de, D>(deserializer: D) -> Result<Option<Vec<PathBuf>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(Some(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    }))
}

impl FileSettings {
    /// Reads the file named by `--config-file`; without one,
    /// `<confdir>/confera.toml` or, for a confd set-up, `<confdir>/confd.toml`
    /// (both at once is an error: which one counts would be a guess).
    pub fn load(explicit: Option<&Path>, confdir: &Path) -> Result<FileSettings, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let ours = confdir.join("confera.toml");
                let confd = confdir.join("confd.toml");
                match (ours.exists(), confd.exists()) {
                    (true, true) => {
                        return Err(ConfigError::Settings(format!(
                            "{} and {} both exist: keep one, or name it with --config-file",
                            ours.display(),
                            confd.display()
                        )))
                    }
                    (true, false) => ours,
                    (false, true) => confd,
                    (false, false) => return Ok(FileSettings::default()),
                }
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let mut settings = FileSettings::parse(&text, &path)?;
        settings.resolve_paths(&crate::pipeline::stage::parent_of(&path));
        Ok(settings)
    }

    /// Parses a settings file's text; errors name `path` and the key.
    pub fn parse(text: &str, path: &Path) -> Result<FileSettings, ConfigError> {
        let syntax = |e: toml::de::Error| ConfigError::Resource {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        let entries: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
            toml::from_str(text).map_err(syntax)?;
        // confd's unsupported keys: an error when set; left unset, blanked
        // out (FileSettings would call them unknown), each key and value
        // turned to spaces with newlines kept, so that a later error names
        // the line and column it has in the file.
        let mut blanked: Option<Vec<u8>> = None;
        for (key, value) in &entries {
            let name = key.get_ref().as_str();
            let Some((_, why)) = UNSUPPORTED_CONFD_KEYS
                .iter()
                .find(|(keys, _)| keys.contains(&name))
            else {
                continue;
            };
            let set = match value.get_ref() {
                toml::Value::String(s) => !s.is_empty(),
                toml::Value::Boolean(b) => *b,
                toml::Value::Array(a) => !a.is_empty(),
                _ => true,
            };
            if set {
                return Err(ConfigError::field(
                    path,
                    name,
                    format!("confd's `{name}` is not supported by confera: {why}"),
                ));
            }
            let bytes = blanked.get_or_insert_with(|| text.as_bytes().to_vec());
            for byte in &mut bytes[key.span().start..value.span().end] {
                if *byte != b'\n' {
                    *byte = b' ';
                }
            }
        }
        let text = match blanked {
            // Only whole characters became spaces: still UTF-8.
            Some(bytes) => Cow::Owned(String::from_utf8(bytes).expect("blanked text is UTF-8")),
            None => Cow::Borrowed(text),
        };
        let mut settings: FileSettings = toml::from_str(&text).map_err(syntax)?;
        settings.path = Some(path.to_path_buf());
        settings.keys = entries.keys().map(|k| k.get_ref().clone()).collect();
        Ok(settings)
    }

    /// Relative paths in the file mean paths next to the file, wherever
    /// confera is started from.
    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let singles = [
            &mut self.confdir,
            &mut self.client_cert,
            &mut self.client_key,
            &mut self.client_ca_keys,
            &mut self.state_dir,
        ];
        singles.into_iter().flatten().for_each(join);
        self.files.iter_mut().flatten().for_each(join);
    }

    /// Where the setting `key` (confera's spelling) came from, as the file
    /// spells it: `` `log-level` in /etc/confd/confd.toml ``.
    fn origin(&self, key: &str) -> Origin {
        let spellings: &[&str] = match key {
            "files" => &["files", "file"],
            "sync_only" => &["sync_only", "sync-only"],
            "keep_stage_file" => &["keep_stage_file", "keepstagefile"],
            "log_level" => &["log_level", "log-level"],
            "client_ca_keys" => &["client_ca_keys", "client_cakeys"],
            _ => &[],
        };
        let spelled = spellings
            .iter()
            .find(|s| self.keys.iter().any(|k| k == *s))
            .map_or(key, |s| *s);
        Origin::File {
            key: spelled.to_string(),
            path: self.path.clone().unwrap_or_default(),
        }
    }

    /// An error about the setting `key` of this file.
    fn error(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Settings(format!("{}: {message}", self.origin(key)))
    }
}

/// Where a setting came from, to name it in errors: "--node (command
/// line)", "CONFERA_NODE (environment)", "`nodes` in /etc/confera/confera.toml".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Given(Given),
    File { key: String, path: PathBuf },
}

impl Origin {
    /// Flags outrank the environment, which outranks the file.
    fn rank(&self) -> u8 {
        match self {
            Origin::Given(Given::Flag(_)) => 3,
            Origin::Given(Given::Env(_)) => 2,
            Origin::File { .. } => 1,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Given(given) => given.fmt(f),
            Origin::File { key, path } => write!(f, "`{key}` in {}", path.display()),
        }
    }
}

/// Which backend the settings select, checking that no backend-specific
/// setting is given for another backend.
///
/// The rule: a backend setting selects its backend (`--node`, `--username`,
/// `--password`, `--client-*` select etcd; `--file` selects the file
/// backend). The place with the highest precedence (command line, then
/// environment, then settings file) that says anything about the backend
/// decides: its `backend` if it names one, else the backend its settings
/// select. There, a setting for another backend is an error naming both and
/// where each came from. A place of lower precedence is overridden whole,
/// like any setting: `--node` on the command line selects etcd even when the
/// settings file says `backend = "file"` and lists `files`.
fn select_backend(cli: &Cli, file: &FileSettings) -> Result<Backend, ConfigError> {
    let s = &cli.source;
    let from_cli = |id: &str, set: bool| set.then(|| cli.given(id).map(Origin::Given)).flatten();
    let etcd_settings = [
        from_cli("node", !s.node.is_empty()),
        from_cli("username", s.username.is_some()),
        from_cli("password", s.password.is_some()),
        from_cli("client_cert", s.client_cert.is_some()),
        from_cli("client_key", s.client_key.is_some()),
        from_cli("client_ca_keys", s.client_ca_keys.is_some()),
        file.nodes.is_some().then(|| file.origin("nodes")),
        file.username.is_some().then(|| file.origin("username")),
        file.password.is_some().then(|| file.origin("password")),
        (file.basic_auth == Some(true)).then(|| file.origin("basic_auth")),
        file.client_cert
            .is_some()
            .then(|| file.origin("client_cert")),
        file.client_key.is_some().then(|| file.origin("client_key")),
        file.client_ca_keys
            .is_some()
            .then(|| file.origin("client_ca_keys")),
    ];
    let file_settings = [
        from_cli("file", !s.file.is_empty()),
        file.files.is_some().then(|| file.origin("files")),
    ];
    let backends = [
        s.backend
            .and_then(|b| Some((b, Origin::Given(cli.given("backend")?)))),
        file.backend.map(|b| (b, file.origin("backend"))),
    ];
    for rank in [3, 2, 1] {
        let at = |o: &&Origin| o.rank() == rank;
        let etcd = etcd_settings.iter().flatten().find(at);
        let data = file_settings.iter().flatten().find(at);
        let named = backends.iter().flatten().find(|(_, o)| o.rank() == rank);
        match (named, etcd, data) {
            (Some((b, named)), Some(etcd), _) if !b.is_etcd() => {
                return Err(ConfigError::Settings(format!(
                    "{etcd} is an etcd setting, but {named} selects the {} backend: remove one of them",
                    b.label()
                )))
            }
            (Some((b, named)), _, Some(data)) if *b != Backend::File => {
                return Err(ConfigError::Settings(format!(
                    "{data} is a setting of the file backend, but {named} selects the {} backend: remove one of them",
                    b.label()
                )))
            }
            (Some((b, _)), _, _) => return Ok(*b),
            (None, Some(etcd), Some(data)) => {
                return Err(ConfigError::Settings(format!(
                    "{etcd} is an etcd setting and {data} a setting of the file backend: \
                     choose the backend with --backend"
                )))
            }
            (None, Some(_), None) => return Ok(Backend::Etcd),
            (None, None, Some(_)) => return Ok(Backend::File),
            (None, None, None) => {}
        }
    }
    Ok(Backend::Etcd)
}

impl Settings {
    /// Flags and environment (already merged by clap) over the file over the defaults.
    pub fn resolve(cli: &Cli, file: FileSettings) -> Result<Settings, ConfigError> {
        let s = &cli.source;
        let m = &cli.mode;
        let o = &cli.output;
        let backend = select_backend(cli, &file)?;
        let exec = resolve_exec(m.exec.as_deref(), &file)?;
        let wait = match (&m.wait, &file.wait) {
            (Some(w), _) => *w,
            (None, Some(text)) => text.parse().map_err(|e| file.error("wait", e))?,
            (None, None) => Wait::default(),
        };
        let interval = match (m.interval, file.interval) {
            (Some(i), _) => Some(i),
            (None, Some(i)) if (1..=MAX_SECS).contains(&i) => Some(i),
            (None, Some(i)) => {
                return Err(file.error(
                    "interval",
                    format!("{i} is out of range: 1 to {MAX_SECS} seconds (365 days)"),
                ))
            }
            (None, None) => None,
        };
        let log_level = match (&cli.logging.log_level, &file.log_level) {
            // clap has checked the flag's value already.
            (Some(level), _) => level.clone(),
            (None, Some(text)) => {
                crate::logging::parse_level(text).map_err(|e| file.error("log_level", e))?
            }
            (None, None) => "info".into(),
        };
        if file.basic_auth == Some(false) && (file.username.is_some() || file.password.is_some()) {
            return Err(file.error(
                "basic_auth",
                "false, but the file also sets username or password, which confd then \
                 did not send: remove them, or set basic_auth = true",
            ));
        }
        let watch = m.watch || file.watch.unwrap_or(false);
        let onetime = m.onetime || file.onetime.unwrap_or(false);
        let mode = if onetime {
            if watch {
                return Err(ConfigError::Settings(
                    "--onetime and --watch exclude each other".into(),
                ));
            }
            Mode::Onetime
        } else if watch {
            Mode::Watch {
                resync: interval.map(Duration::from_secs),
            }
        } else {
            Mode::Poll {
                interval: Duration::from_secs(interval.unwrap_or(DEFAULT_INTERVAL)),
            }
        };
        let options = Options {
            noop: o.noop || file.noop.unwrap_or(false),
            diff: o.diff,
            sync_only: o.sync_only || file.sync_only.unwrap_or(false),
            keep_stage: o.keep_stage_file || file.keep_stage_file.unwrap_or(false),
            exit_code: o.exit_code,
        };
        if options.diff && !options.noop {
            return Err(ConfigError::Settings("--diff goes with --noop".into()));
        }
        if options.exit_code && !(options.noop && mode == Mode::Onetime) {
            return Err(ConfigError::Settings(
                "--exit-code goes with --onetime --noop (exit 3 when some file would change)"
                    .into(),
            ));
        }
        let confdir = s
            .confdir
            .clone()
            .or(file.confdir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFDIR));
        // Absolute, so relative destinations and logs name real paths.
        let confdir = std::path::absolute(&confdir).unwrap_or(confdir);
        let nodes = if !s.node.is_empty() {
            s.node.clone()
        } else {
            file.nodes.unwrap_or_else(|| vec![DEFAULT_NODE.to_string()])
        };
        let files = if !s.file.is_empty() {
            s.file.clone()
        } else {
            file.files.unwrap_or_default()
        };
        if backend == Backend::File && files.is_empty() {
            return Err(ConfigError::Settings(
                "the file backend needs at least one --file".into(),
            ));
        }
        let username = s.username.clone().or(file.username);
        let password = s.password.clone().or(file.password);
        if backend.is_etcd() && username.is_some() != password.is_some() {
            let (given, missing) = if username.is_some() {
                (
                    "a user name",
                    "--password (or CONFERA_PASSWORD, or `password` in the settings file)",
                )
            } else {
                (
                    "a password",
                    "--username (or CONFERA_USERNAME, or `username` in the settings file)",
                )
            };
            return Err(ConfigError::Settings(format!(
                "etcd authentication has {given} but no {missing}"
            )));
        }
        let tls = Tls {
            ca: s.client_ca_keys.clone().or(file.client_ca_keys),
            cert: s.client_cert.clone().or(file.client_cert),
            key: s.client_key.clone().or(file.client_key),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::Settings(
                "--client-cert and --client-key go together".into(),
            ));
        }
        let tls = (tls.ca.is_some() || tls.cert.is_some()).then_some(tls);
        let file_duration = |name: &str, text: Option<String>| {
            text.map(|t| crate::duration::parse_duration(&t))
                .transpose()
                .map_err(|e| ConfigError::Settings(format!("settings file: {name}: {e}")))
        };
        let defaults = Limits::default();
        let limits = Limits {
            render_timeout: m
                .render_timeout
                .or(file_duration("render_timeout", file.render_timeout)?)
                .unwrap_or(defaults.render_timeout),
            max_output: m
                .max_output
                .or(file.max_output)
                .unwrap_or(defaults.max_output),
            stuck_after: m
                .stuck_after
                .or(file_duration("stuck_after", file.stuck_after)?)
                .unwrap_or(defaults.stuck_after),
        };
        if exec.is_some() {
            if mode == Mode::Onetime {
                return Err(ConfigError::Settings(
                    "--exec runs a daemon beside watch or polling mode; it cannot go with --onetime"
                        .into(),
                ));
            }
            if options.noop {
                return Err(ConfigError::Settings(
                    "--exec cannot go with --noop: the child would start on files confera never wrote"
                        .into(),
                ));
            }
        }
        Ok(Settings {
            exec,
            limits,
            state_dir: m
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            tls,
            metrics_addr: cli.logging.metrics_addr.or(file.metrics_addr),
            confdir,
            backend,
            nodes,
            files,
            prefix: s.prefix.clone().or(file.prefix).unwrap_or_default(),
            mode,
            wait,
            wait_mode: m.wait_mode.or(file.wait_mode).unwrap_or_default(),
            options,
            log_level,
            log_format: cli
                .logging
                .log_format
                .or(file.log_format)
                .unwrap_or_default(),
            username,
            password,
        })
    }

    /// Parses the command line (with the environment) and the settings file.
    pub fn from_cli(cli: &Cli) -> Result<Settings, ConfigError> {
        let confdir = cli
            .source
            .confdir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFDIR));
        let file = FileSettings::load(cli.source.config_file.as_deref(), &confdir)?;
        Settings::resolve(cli, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_with_env;

    const FILE: &str = "/etc/confera/confera.toml";

    fn file(text: &str) -> FileSettings {
        FileSettings::parse(text, Path::new(FILE)).unwrap()
    }

    fn resolve_env(
        args: &[&str],
        env: &[(&str, &str)],
        text: &str,
    ) -> Result<Settings, ConfigError> {
        let cli = parse_with_env(args, env).unwrap();
        Settings::resolve(&cli, file(text))
    }

    fn resolve(args: &[&str], text: &str) -> Result<Settings, ConfigError> {
        resolve_env(args, &[], text)
    }

    fn error(args: &[&str], env: &[(&str, &str)], text: &str) -> String {
        resolve_env(args, env, text).unwrap_err().to_string()
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file_which_wins_over_defaults() {
        // (flags, environment, file, expected prefix, backend, log level)
        type Row<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a str)],
            &'a str,
            &'a str,
            Backend,
            &'a str,
        );
        let table: &[Row] = &[
            (&[], &[], "", "", Backend::Etcd, "info"),
            (
                &[],
                &[],
                "prefix = \"/f\"\nbackend = \"env\"\nlog_level = \"debug\"",
                "/f",
                Backend::Env,
                "debug",
            ),
            // confd's spellings in the file count the same.
            (
                &[],
                &[],
                "log-level = \"warning\"",
                "",
                Backend::Etcd,
                "warn",
            ),
            (
                &[],
                &[("CONFERA_PREFIX", "/e"), ("CONFERA_LOG_LEVEL", "fatal")],
                "prefix = \"/f\"\nlog-level = \"debug\"",
                "/e",
                Backend::Etcd,
                "error",
            ),
            (
                &["--prefix", "/cli", "--log-level", "trace"],
                &[("CONFERA_PREFIX", "/e"), ("CONFERA_LOG_LEVEL", "debug")],
                "prefix = \"/f\"",
                "/cli",
                Backend::Etcd,
                "trace",
            ),
            (
                &["--backend", "env"],
                &[],
                "backend = \"etcd\"",
                "",
                Backend::Env,
                "info",
            ),
            (
                &[],
                &[("CONFERA_BACKEND", "env")],
                "backend = \"etcd\"",
                "",
                Backend::Env,
                "info",
            ),
            (
                &["--backend", "etcdv3"],
                &[("CONFERA_BACKEND", "env")],
                "backend = \"env\"",
                "",
                Backend::Etcdv3,
                "info",
            ),
        ];
        for (args, env, text, prefix, backend, level) in table {
            let s = resolve_env(args, env, text).unwrap();
            assert_eq!(
                (s.prefix.as_str(), s.backend, s.log_level.as_str()),
                (*prefix, *backend, *level),
                "{args:?} / {env:?} / {text}"
            );
        }
    }

    #[test]
    fn the_mode_follows_confd() {
        assert_eq!(resolve(&["--onetime"], "").unwrap().mode, Mode::Onetime);
        assert_eq!(
            resolve(&[], "").unwrap().mode,
            Mode::Poll {
                interval: Duration::from_secs(600)
            }
        );
        assert_eq!(
            resolve(&["--watch", "--interval", "30"], "").unwrap().mode,
            Mode::Watch {
                resync: Some(Duration::from_secs(30))
            }
        );
    }

    #[test]
    fn relative_paths_in_the_settings_file_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("confera.toml"),
            "backend = \"file\"\nfiles = [\"examples/data.yaml\", \"/abs.yaml\"]\n",
        )
        .unwrap();
        let file = FileSettings::load(None, dir.path()).unwrap();
        assert_eq!(
            file.files.unwrap(),
            [
                dir.path().join("examples/data.yaml"),
                PathBuf::from("/abs.yaml")
            ]
        );
    }

    #[test]
    fn unknown_keys_in_the_settings_file_are_errors() {
        let e = FileSettings::parse("bakend = \"etcd\"", Path::new(FILE)).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("bakend") && e.contains(FILE), "{e}");
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let s = resolve(&["--username", "u", "--password", "hunter2"], "").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    // --- confd.toml --------------------------------------------------------

    const CONFD_TOML: &str = r#"
backend = "etcdv3"
confdir = "/etc/confd"
log-level = "warning"
interval = 60
nodes = ["10.0.0.1:2379", "10.0.0.2:2379"]
noop = false
watch = true
sync-only = true
prefix = "/production"
scheme = "https"
basic_auth = true
username = "confd"
password = "secret"
client_cert = "/etc/confd/client.crt"
client_key = "/etc/confd/client.key"
client_cakeys = "/etc/confd/ca.crt"
srv_domain = ""
auth_token = ""
client_insecure = false
"#;

    #[test]
    fn a_confd_toml_is_read_as_it_is() {
        let s = resolve(&[], CONFD_TOML).unwrap();
        assert_eq!(s.backend, Backend::Etcdv3);
        assert_eq!(s.confdir, PathBuf::from("/etc/confd"));
        assert_eq!(s.log_level, "warn");
        assert_eq!(
            s.mode,
            Mode::Watch {
                resync: Some(Duration::from_secs(60))
            }
        );
        assert_eq!(s.nodes, ["10.0.0.1:2379", "10.0.0.2:2379"]);
        assert!(s.options.sync_only && !s.options.noop);
        assert_eq!(s.prefix, "/production");
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("confd"), Some("secret"))
        );
        assert_eq!(
            s.tls,
            Some(Tls {
                ca: Some("/etc/confd/ca.crt".into()),
                cert: Some("/etc/confd/client.crt".into()),
                key: Some("/etc/confd/client.key".into()),
            })
        );
    }

    #[test]
    fn confds_file_key_takes_one_path_or_a_list() {
        let s = resolve(&[], "backend = \"file\"\nfile = \"/data/a.yaml\"").unwrap();
        assert_eq!(s.files, [PathBuf::from("/data/a.yaml")]);
        let s = resolve(&[], "backend = \"file\"\nfile = [\"/a.yaml\", \"/b.yaml\"]").unwrap();
        assert_eq!(
            s.files,
            [PathBuf::from("/a.yaml"), PathBuf::from("/b.yaml")]
        );
    }

    #[test]
    fn confd_keys_confera_does_not_support_are_refused_naming_the_key_the_file_and_why() {
        for (text, key, why) in [
            ("srv_domain = \"example.com\"", "srv_domain", "`nodes`"),
            ("srv_record = \"_etcd._tcp.x\"", "srv_record", "`nodes`"),
            ("client_insecure = true", "client_insecure", "client_cakeys"),
            ("auth_type = \"app-id\"", "auth_type", "Vault"),
            ("table = \"t\"", "table", "DynamoDB"),
            ("filter = \"*.yaml\"", "filter", "glob"),
            (
                "secret_keyring = \"/k\"",
                "secret_keyring",
                "decrypts nothing",
            ),
        ] {
            let e = FileSettings::parse(text, Path::new("/etc/confd/confd.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/etc/confd/confd.toml")
                    && e.contains(&format!("confd's `{key}` is not supported"))
                    && e.contains(why),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn scheme_is_http_or_https() {
        let e = FileSettings::parse("scheme = \"ftp\"", Path::new(FILE)).unwrap_err();
        assert!(e.to_string().contains("scheme"), "{e}");
    }

    #[test]
    fn basic_auth_false_with_credentials_is_refused_rather_than_guessed() {
        let e = error(
            &[],
            &[],
            "basic_auth = false\nusername = \"u\"\npassword = \"p\"",
        );
        assert!(
            e.contains("`basic_auth` in") && e.contains("basic_auth = true"),
            "{e}"
        );
    }

    #[test]
    fn one_setting_spelt_both_ways_is_refused() {
        let e = FileSettings::parse(
            "log-level = \"info\"\nlog_level = \"debug\"",
            Path::new(FILE),
        )
        .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }

    #[test]
    fn the_default_settings_file_is_confera_toml_else_confd_toml_never_both() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileSettings::load(None, dir.path()).unwrap().path.is_none());
        std::fs::write(dir.path().join("confd.toml"), "log-level = \"debug\"").unwrap();
        let f = FileSettings::load(None, dir.path()).unwrap();
        assert_eq!(f.log_level.as_deref(), Some("debug"));
        std::fs::write(dir.path().join("confera.toml"), "").unwrap();
        let e = FileSettings::load(None, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("confera.toml") && e.contains("confd.toml") && e.contains("--config-file"),
            "{e}"
        );
    }

    #[test]
    fn the_wait_mode_is_leading_unless_a_flag_the_environment_or_the_file_says_trailing() {
        let mode = |args: &[&str], env: &[(&str, &str)], text: &str| {
            resolve_env(args, env, text).unwrap().wait_mode
        };
        assert_eq!(mode(&[], &[], ""), WaitMode::Leading);
        assert_eq!(
            mode(&[], &[], "wait_mode = \"trailing\""),
            WaitMode::Trailing
        );
        let env = [("CONFERA_WAIT_MODE", "trailing")];
        assert_eq!(mode(&[], &env, ""), WaitMode::Trailing);
        let flag = ["--wait-mode", "leading"];
        assert_eq!(
            mode(&flag, &env, "wait_mode = \"trailing\""),
            WaitMode::Leading
        );
        let e = FileSettings::parse("wait_mode = \"quiet\"", Path::new(FILE)).unwrap_err();
        assert!(e.to_string().contains("wait_mode"), "{e}");
    }

    // --- bad values ----------------------------------------------------------

    #[test]
    fn bad_values_in_the_file_name_the_key_and_the_file() {
        let e = error(&[], &[], "log-level = \"warnign\"");
        assert!(
            e.contains(&format!("`log-level` in {FILE}")) && e.contains("`warnign`"),
            "{e}"
        );
        let e = FileSettings::parse("interval = 18446744073709551615", Path::new(FILE));
        let e = e.unwrap_err().to_string();
        assert!(e.contains(FILE) && e.contains("interval ="), "{e}");
        let e = error(&[], &[], "interval = 0");
        assert!(
            e.contains(&format!("`interval` in {FILE}: 0 is out of range")),
            "{e}"
        );
        let e = error(&[], &[], "wait = \"1s:18446744073709551615s\"");
        assert!(
            e.contains(&format!("`wait` in {FILE}")) && e.contains("365 days"),
            "{e}"
        );
    }

    #[test]
    fn a_user_name_without_a_password_is_an_error() {
        let e = error(&["--username", "u"], &[], "");
        assert!(e.contains("user name but no --password"), "{e}");
        let e = error(&[], &[("CONFERA_PASSWORD", "p")], "");
        assert!(e.contains("password but no --username"), "{e}");
    }

    // --- which backend ------------------------------------------------------

    #[test]
    fn an_etcd_flag_selects_etcd_over_a_backend_from_the_file_or_environment() {
        let text = "backend = \"file\"\nfiles = [\"/data.yaml\"]";
        let s = resolve(&["--node", "http://10.0.0.1:2379"], text).unwrap();
        assert_eq!(
            (s.backend, s.nodes.as_slice()),
            (Backend::Etcd, &["http://10.0.0.1:2379".to_string()][..])
        );
        let s = resolve_env(
            &["--username", "u", "--password", "p"],
            &[("CONFERA_BACKEND", "env")],
            "",
        )
        .unwrap();
        assert_eq!(s.backend, Backend::Etcd);
        let s = resolve_env(&[], &[("CONFERA_NODE", "http://x:1")], text).unwrap();
        assert_eq!(s.backend, Backend::Etcd);
        // --file likewise selects the file backend.
        let s = resolve(&["--file", "/d.yaml"], "nodes = [\"http://x:1\"]").unwrap();
        assert_eq!(s.backend, Backend::File);
    }

    #[test]
    fn an_etcd_setting_beside_a_backend_that_is_not_etcd_is_an_error_naming_both_and_where() {
        let e = error(
            &[
                "--backend",
                "file",
                "--file",
                "/d.yaml",
                "--node",
                "http://x:1",
            ],
            &[],
            "",
        );
        assert_eq!(
            e,
            "--node (command line) is an etcd setting, but --backend (command line) selects \
             the file backend: remove one of them"
        );
        let e = error(
            &[],
            &[
                ("CONFERA_BACKEND", "env"),
                ("CONFERA_CLIENT_CA_KEYS", "/ca"),
            ],
            "",
        );
        assert!(
            e.starts_with("CONFERA_CLIENT_CA_KEYS (environment) is an etcd setting, but CONFERA_BACKEND (environment) selects the env backend"),
            "{e}"
        );
        let e = error(
            &[],
            &[],
            "backend = \"file\"\nfile = \"/d.yaml\"\nnodes = [\"http://x:1\"]",
        );
        assert!(
            e.starts_with(&format!("`nodes` in {FILE} is an etcd setting, but `backend` in {FILE} selects the file backend")),
            "{e}"
        );
        let e = error(&["--backend", "etcd", "--file", "/d.yaml"], &[], "");
        assert!(e.starts_with("--file (command line) is a setting of the file backend, but --backend (command line) selects the etcd backend"), "{e}");
        let e = error(&["--node", "http://x:1", "--file", "/d.yaml"], &[], "");
        assert!(e.contains("choose the backend with --backend"), "{e}");
    }

    // --- exec mode ----------------------------------------------------------

    #[test]
    fn exec_takes_a_command_line_from_the_flag_or_the_file_and_options_from_the_table() {
        use crate::exec::{OnExit, Spec};
        let s = resolve(&["--watch", "--exec", "bird -f -c '/etc/my bird.conf'"], "").unwrap();
        assert_eq!(
            s.exec,
            Some(Spec::new(vec![
                "bird".into(),
                "-f".into(),
                "-c".into(),
                "/etc/my bird.conf".into()
            ]))
        );
        let s = resolve(&["--watch"], "exec = \"bird -f\"").unwrap();
        assert_eq!(s.exec.unwrap().argv, ["bird", "-f"]);
        let table = "[exec]\ncommand = [\"bird\", \"-f\"]\nkill_signal = \"INT\"\n\
                     kill_timeout = \"2s\"\non_exit = \"exit\"\nrestart_backoff = \"200ms:5s\"\n\
                     prefix = \"[bird] \"\n";
        let spec = resolve(&["--watch"], table).unwrap().exec.unwrap();
        assert_eq!(spec.argv, ["bird", "-f"]);
        assert_eq!(spec.kill_signal, nix::sys::signal::Signal::SIGINT);
        assert_eq!(spec.kill_timeout, Duration::from_secs(2));
        assert_eq!(spec.on_exit, OnExit::Exit);
        assert_eq!(
            (spec.backoff_min, spec.backoff_max),
            (Duration::from_millis(200), Duration::from_secs(5))
        );
        assert_eq!(spec.prefix.as_deref(), Some("[bird] "));
        // The flag's command, the table's options.
        let spec = resolve(&["--watch", "--exec", "sleep 1"], table)
            .unwrap()
            .exec
            .unwrap();
        assert_eq!(
            (spec.argv[0].as_str(), spec.on_exit),
            ("sleep", OnExit::Exit)
        );
        assert_eq!(resolve(&["--watch"], "").unwrap().exec, None);
    }

    #[test]
    fn bad_exec_settings_are_refused_naming_the_setting() {
        for (args, text, expected) in [
            (
                &["--onetime", "--exec", "bird"][..],
                "",
                "cannot go with --onetime",
            ),
            (
                &["--watch", "--noop", "--exec", "bird"][..],
                "",
                "cannot go with --noop",
            ),
            (
                &["--watch", "--exec", "bird -c 'x"][..],
                "",
                "--exec: cannot split",
            ),
            (
                &["--watch", "--exec", "  "][..],
                "",
                "--exec: the command is empty",
            ),
            (
                &["--watch"][..],
                "[exec]\nprefix = \"x\"\n",
                "needs `command`",
            ),
            (
                &["--watch"][..],
                "[exec]\ncommand = \"b\"\nkill_signal = \"SIGNOPE\"\n",
                "kill_signal: unknown signal",
            ),
            (
                &["--watch"][..],
                "[exec]\ncommand = \"b\"\non_exit = \"retry\"\n",
                "`exec` in",
            ),
            (
                &["--watch"][..],
                "[exec]\ncommand = \"b\"\nrestart_backoff = \"0s\"\n",
                "above zero",
            ),
            (
                &["--watch"][..],
                "[exec]\ncommand = \"b\"\nkill = 1\n",
                "unknown field `kill`",
            ),
            (
                &["--watch"][..],
                "exec = 3\n",
                "a command line or an [exec] table",
            ),
        ] {
            let e = error(args, &[], text);
            assert!(e.contains(expected), "{args:?} {text:?}: {e}");
        }
    }

    #[test]
    fn settings_of_a_lower_place_for_another_backend_are_overridden_with_its_backend() {
        // The file describes etcd; the command line chooses the file backend.
        let s = resolve(
            &["--backend", "file", "--file", "/d.yaml"],
            "backend = \"etcd\"\nnodes = [\"http://x:1\"]\nusername = \"u\"\npassword = \"p\"",
        )
        .unwrap();
        assert_eq!(s.backend, Backend::File);
    }
}
