//! The command line: clap definitions, confd's single-dash spelling of them
//! (translated before clap parses), and the subcommands that need no
//! settings. Every flag is optional here, so that `settings` can layer
//! flags over environment, file and defaults; this module never reads the
//! settings file or the backend.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::duration::Wait;

mod confd;

/// Render daemon configuration files from etcd, data files or the
/// environment with Tera templates; commit atomically, check, and reload the
/// daemon only when the output changed.
#[derive(Debug, Parser)]
#[command(name = "confera", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub mode: ModeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub logging: LogArgs,
    /// Where each setting given to clap came from (flag or environment),
    /// by argument id; filled by [`Cli::try_parse_args`].
    #[arg(skip)]
    pub given: BTreeMap<String, Given>,
}

/// How a setting reached the command line parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given {
    /// On the command line, as this flag (`--node`).
    Flag(String),
    /// From this environment variable (`CONFERA_NODE`).
    Env(String),
}

impl std::fmt::Display for Given {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Given::Flag(flag) => write!(f, "{flag} (command line)"),
            Given::Env(var) => write!(f, "{var} (environment)"),
        }
    }
}

impl Cli {
    /// Parses a command line (program name first) and the `CONFERA_*`
    /// environment. confd's spellings (`-onetime`, `-backend etcdv3`) are
    /// translated first, so a confd command line works as it is.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args = confd::translate(args.into_iter().map(Into::into)).map_err(|message| {
            Cli::command().error(clap::error::ErrorKind::UnknownArgument, message)
        })?;
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.given = given(&matches);
        Ok(cli)
    }

    /// [`Cli::try_parse_args`], printing clap's message and exiting (2 for
    /// a usage error, 0 for `--help` and `--version`) when it fails.
    pub fn parse_args<I, T>(args: I) -> Cli
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Cli::try_parse_args(args).unwrap_or_else(|e| e.exit())
    }

    /// Where the setting with this argument id (`node`, `backend`, ...) came
    /// from, if clap got it from a flag or the environment.
    pub fn given(&self, id: &str) -> Option<Given> {
        self.given.get(id).cloned().or_else(|| {
            // Built without try_parse_args (a test): name the flag.
            let flag = Cli::command()
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_long().map(|l| format!("--{l}")))?;
            Some(Given::Flag(flag))
        })
    }
}

/// The origin of every argument clap took from the command line or the
/// environment (not defaults).
fn given(matches: &ArgMatches) -> BTreeMap<String, Given> {
    let cmd = Cli::command();
    let mut given = BTreeMap::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let origin = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => arg.get_long().map(|l| Given::Flag(format!("--{l}"))),
            Some(ValueSource::EnvVariable) => arg
                .get_env()
                .map(|v| Given::Env(v.to_string_lossy().into_owned())),
            _ => None,
        };
        if let Some(origin) = origin {
            given.insert(id.to_string(), origin);
        }
    }
    given
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a confdir without a backend: parse every resource, compile
    /// every template, and list the keys each resource may read.
    Check,
    /// Ask a running confera (at --metrics-addr) how each resource is doing;
    /// exit 0 when healthy, 1 when not, 2 when it cannot be reached
    Status {
        /// Print the /status JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
    /// Print the keys the file backend makes of data files, KEY=VALUE per line
    Flatten {
        /// Separate keys and values with NUL bytes, for scripts (scripts/load-etcd)
        #[arg(short = '0', long)]
        null: bool,
        /// Data files (YAML, JSON or TOML), merged in order as with --file
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Source")]
pub struct SourceArgs {
    /// Directory holding conf.d/ and templates/ [default: /etc/confera]
    #[arg(long, global = true, env = "CONFERA_CONFDIR", value_name = "DIR")]
    pub confdir: Option<PathBuf>,
    /// Settings file [default: <confdir>/confera.toml, if present]
    #[arg(long, global = true, env = "CONFERA_CONFIG_FILE", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Where keys come from [default: etcd]
    #[arg(long, env = "CONFERA_BACKEND", value_enum)]
    pub backend: Option<Backend>,
    /// etcd endpoint; repeat for several [default: http://127.0.0.1:2379]
    #[arg(long, env = "CONFERA_NODE", value_name = "URL", value_delimiter = ',')]
    pub node: Vec<String>,
    /// Data file (YAML, JSON or TOML) for the file backend; repeat to merge in order
    #[arg(long, env = "CONFERA_FILE", value_name = "PATH", value_delimiter = ',')]
    pub file: Vec<PathBuf>,
    /// Key prefix joined in front of every resource's prefix
    #[arg(long, global = true, env = "CONFERA_PREFIX", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// etcd user name
    #[arg(long, env = "CONFERA_USERNAME", value_name = "USER")]
    pub username: Option<String>,
    /// etcd password (prefer CONFERA_PASSWORD or the settings file)
    #[arg(
        long,
        env = "CONFERA_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Client certificate (PEM) for TLS to etcd
    #[arg(
        long,
        env = "CONFERA_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for TLS to etcd
    #[arg(
        long,
        env = "CONFERA_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// CA certificate(s) (PEM) that sign etcd's server certificate
    #[arg(long, env = "CONFERA_CLIENT_CA_KEYS", value_name = "FILE")]
    pub client_ca_keys: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Etcd,
    /// The same as etcd: confd's name for the v3 API.
    Etcdv3,
    File,
    Env,
}

impl Backend {
    pub fn is_etcd(self) -> bool {
        matches!(self, Backend::Etcd | Backend::Etcdv3)
    }

    /// The `backend` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Etcd | Backend::Etcdv3 => "etcd",
            Backend::File => "file",
            Backend::Env => "env",
        }
    }
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Mode")]
pub struct ModeArgs {
    /// Process every resource once and exit (0 ok, 1 a resource failed, 2 bad configuration)
    #[arg(long, env = "CONFERA_ONETIME", conflicts_with = "watch")]
    pub onetime: bool,
    /// Watch the backend and re-render what each change touches
    #[arg(long, env = "CONFERA_WATCH")]
    pub watch: bool,
    /// Poll every SECONDS [default: 600]; with --watch, resync fully at that period (off unless given)
    #[arg(
        long,
        env = "CONFERA_INTERVAL",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=crate::duration::MAX_SECS)
    )]
    pub interval: Option<u64>,
    /// Coalescing in watch mode: a resource renders at most about once per MIN; a change waits at most MAX [default: 50ms:1s]
    #[arg(long, env = "CONFERA_WAIT", value_name = "MIN[:MAX]")]
    pub wait: Option<Wait>,
    /// How a change waits: leading renders an isolated change at once and coalesces what follows within MIN; trailing waits for MIN of quiet first, as consul-template [default: leading]
    #[arg(long, env = "CONFERA_WAIT_MODE", value_name = "MODE", value_enum)]
    pub wait_mode: Option<crate::watch::debounce::WaitMode>,
    /// A render running longer is abandoned and its resource marked failed until its inputs change [default: 10s]
    #[arg(long, env = "CONFERA_RENDER_TIMEOUT", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub render_timeout: Option<std::time::Duration>,
    /// A render whose output grows past BYTES is abandoned [default: 67108864 (64 MiB)]
    #[arg(long, env = "CONFERA_MAX_OUTPUT", value_name = "BYTES")]
    pub max_output: Option<u64>,
    /// A resource whose work runs longer than this is reported stuck in /status and /healthz [default: 60s]
    #[arg(long, env = "CONFERA_STUCK_AFTER", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub stuck_after: Option<std::time::Duration>,
    /// Where confera keeps owed reloads and refused configurations [default: $STATE_DIRECTORY or /var/lib/confera]
    #[arg(long, env = "CONFERA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run COMMAND (split like a shell would, run without one) as confera's child once every resource rendered, stop it with confera; reload_signal without pid_file signals it; more in confera.toml's [exec]
    #[arg(long, env = "CONFERA_EXEC", value_name = "COMMAND")]
    pub exec: Option<String>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Render and compare only: write nothing, run no command, send no signal
    #[arg(long, env = "CONFERA_NOOP")]
    pub noop: bool,
    /// With --noop, print a unified diff of every change on stdout
    #[arg(long, env = "CONFERA_DIFF")]
    pub diff: bool,
    /// With --onetime --noop: exit 3 if any file would change, 0 if none would
    #[arg(long, env = "CONFERA_EXIT_CODE")]
    pub exit_code: bool,
    /// Write files but skip check and reload
    #[arg(long, env = "CONFERA_SYNC_ONLY")]
    pub sync_only: bool,
    /// Keep staging directories for inspection
    #[arg(long, env = "CONFERA_KEEP_STAGE_FILE")]
    pub keep_stage_file: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// trace, debug, info, warn (or warning), error (panic, fatal), or a filter [default: info]
    #[arg(
        long,
        global = true,
        env = "CONFERA_LOG_LEVEL",
        value_name = "LEVEL",
        value_parser = crate::logging::parse_level
    )]
    pub log_level: Option<String>,
    /// Log line format on stderr [default: text]
    #[arg(long, env = "CONFERA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9100)
    #[arg(
        long,
        global = true,
        env = "CONFERA_METRICS_ADDR",
        value_name = "HOST:PORT"
    )]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Handles `completions`, `man` and `flatten`, which need no settings: the
/// exit code when the command line asked for one of them.
pub fn generate(cli: &Cli) -> Option<std::process::ExitCode> {
    let command = cli.command.as_ref()?;
    match print_generated(command) {
        Ok(true) => Some(std::process::ExitCode::SUCCESS),
        Ok(false) => None,
        Err(e) => {
            crate::logging::fatal(LogFormat::Text, &e);
            // A data file `flatten` cannot read is bad input; anything else
            // is stdout failing.
            let code = if e.kind() == std::io::ErrorKind::InvalidInput {
                2
            } else {
                1
            };
            Some(std::process::ExitCode::from(code))
        }
    }
}

/// Prints what `completions`, `man` and `flatten` make; false for other
/// commands.
fn print_generated(command: &Command) -> std::io::Result<bool> {
    let mut cmd = Cli::command();
    // Generated into memory first: clap_complete panics on a closed pipe.
    let mut text = Vec::new();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "confera", &mut text)
        }
        Command::Man => clap_mangen::Man::new(cmd).render(&mut text)?,
        Command::Flatten { null, files } => flatten(files, *null, &mut text)?,
        Command::Check | Command::Status { .. } => return Ok(false),
    }
    write_stdout(&text)?;
    Ok(true)
}

/// The keys and values of data files as the file backend reads them.
fn flatten(files: &[PathBuf], null: bool, out: &mut Vec<u8>) -> std::io::Result<()> {
    let store = crate::source::file::load(files)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    for (key, value) in store.iter() {
        if null {
            out.extend_from_slice(format!("{key}\0{value}\0").as_bytes());
        } else {
            out.extend_from_slice(format!("{key}={value}\n").as_bytes());
        }
    }
    Ok(())
}

/// `println!` that never panics: a line of what the user asked for, on
/// stdout, through [`write_stdout`]; a failed write is dropped.
pub fn print_line(line: std::fmt::Arguments) {
    let _ = write_stdout(format!("{line}\n").as_bytes());
}

/// Writes what the user asked for to stdout. A reader that has gone away
/// (a closed pipe, `| head`) is not an error: the rest is not wanted.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Unit tests that parse a command line hold this lock, so that a test
/// setting `CONFERA_*` variables never leaks them into another's parse.
#[cfg(test)]
pub(crate) static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Parses `confera ARGS` with `CONFERA_*` set to `env` (and no other) for
/// the duration of the parse.
#[cfg(test)]
pub(crate) fn parse_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, clap::Error> {
    let _lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let ours: Vec<_> = std::env::vars_os()
        .filter(|(k, _)| k.as_encoded_bytes().starts_with(b"CONFERA_"))
        .collect();
    for (k, _) in &ours {
        std::env::remove_var(k);
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let cli = Cli::try_parse_args(std::iter::once("confera").chain(args.iter().copied()));
    for (k, _) in env {
        std::env::remove_var(k);
    }
    for (k, v) in ours {
        std::env::set_var(k, v);
    }
    cli
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_with_env(args, &[])
    }

    #[test]
    fn cli_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn nodes_may_be_repeated_or_comma_separated() {
        let cli = parse(&["--node", "http://a:1", "--node", "http://b:2,http://c:3"]).unwrap();
        assert_eq!(cli.source.node, ["http://a:1", "http://b:2", "http://c:3"]);
    }

    #[test]
    fn onetime_and_watch_exclude_each_other() {
        assert!(parse(&["--onetime", "--watch"]).is_err());
    }

    #[test]
    fn the_parser_records_whether_a_setting_came_from_a_flag_or_the_environment() {
        let cli = parse_with_env(&["--node", "http://a:1"], &[("CONFERA_PREFIX", "/p")]).unwrap();
        assert_eq!(cli.given("node"), Some(Given::Flag("--node".into())));
        assert_eq!(
            cli.given("prefix"),
            Some(Given::Env("CONFERA_PREFIX".into()))
        );
        assert_eq!(cli.given.get("backend"), None);
        assert_eq!(cli.given.get("onetime"), None, "a default is not given");
    }

    #[test]
    fn interval_is_between_one_second_and_a_year() {
        let e = parse(&["--interval", "18446744073709551615"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--interval"), "{e}");
        assert!(parse(&["--interval", "0"]).is_err());
        assert_eq!(
            parse(&["--interval", "31536000"]).unwrap().mode.interval,
            Some(31_536_000)
        );
        assert!(parse(&["--interval", "31536001"]).is_err());
    }

    #[test]
    fn a_wait_beyond_a_year_is_a_usage_error_naming_the_flag() {
        let e = parse(&["--wait", "1s:18446744073709551615"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.contains("--wait") && text.contains("365 days"),
            "{text}"
        );
    }

    #[test]
    fn log_levels_are_checked_when_parsing() {
        let cli = parse(&["--log-level", "warning"]).unwrap();
        assert_eq!(cli.logging.log_level.as_deref(), Some("warn"));
        let e = parse(&["--log-level", "warnign"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .contains("trace, debug, info, warn (or warning), error"),
            "{e}"
        );
        let e = parse_with_env(&[], &[("CONFERA_LOG_LEVEL", "loud")]).unwrap_err();
        assert!(e.to_string().contains("`loud`"), "{e}");
    }
}
