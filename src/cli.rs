//! The command line: clap definitions only. Every flag is optional here, so
//! that `settings` can layer flags over environment, file and defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::Wait;

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
    #[arg(long, env = "CONFERA_INTERVAL", value_name = "SECONDS")]
    pub interval: Option<u64>,
    /// Debounce in watch mode: render after MIN of quiet, at most MAX after the first change [default: 50ms:1s]
    #[arg(long, env = "CONFERA_WAIT", value_name = "MIN[:MAX]")]
    pub wait: Option<Wait>,
    /// A render running longer is abandoned and its resource marked failed until its inputs change [default: 10s]
    #[arg(long, env = "CONFERA_RENDER_TIMEOUT", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub render_timeout: Option<std::time::Duration>,
    /// A render whose output grows past BYTES is abandoned [default: 67108864 (64 MiB)]
    #[arg(long, env = "CONFERA_MAX_OUTPUT", value_name = "BYTES")]
    pub max_output: Option<u64>,
    /// A resource whose work runs longer than this is reported stuck in /status and /healthz [default: 60s]
    #[arg(long, env = "CONFERA_STUCK_AFTER", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub stuck_after: Option<std::time::Duration>,
    /// Where confera keeps the reloads it still owes across restarts [default: $STATE_DIRECTORY or /var/lib/confera]
    #[arg(long, env = "CONFERA_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    /// error, warn, info, debug or trace (or a tracing filter) [default: info]
    #[arg(long, global = true, env = "CONFERA_LOG_LEVEL", value_name = "LEVEL")]
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

/// Handles `completions` and `man`, which need no settings: the exit code
/// when the command line asked for one of them.
pub fn generate(cli: &Cli) -> Option<std::process::ExitCode> {
    let command = cli.command.as_ref()?;
    match print_generated(command) {
        Ok(true) => Some(std::process::ExitCode::SUCCESS),
        Ok(false) => None,
        Err(e) => {
            eprintln!("confera: {e}");
            Some(std::process::ExitCode::from(1))
        }
    }
}

/// Prints what `completions` and `man` generate; false for other commands.
fn print_generated(command: &Command) -> std::io::Result<bool> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut cmd = Cli::command();
    // Generated into memory first: clap_complete panics on a closed pipe.
    let mut text = Vec::new();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "confera", &mut text)
        }
        Command::Man => clap_mangen::Man::new(cmd).render(&mut text)?,
        Command::Check | Command::Status { .. } => return Ok(false),
    }
    match std::io::stdout().lock().write_all(&text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn nodes_may_be_repeated_or_comma_separated() {
        let cli = Cli::try_parse_from([
            "confera",
            "--node",
            "http://a:1",
            "--node",
            "http://b:2,http://c:3",
        ])
        .unwrap();
        assert_eq!(cli.source.node, ["http://a:1", "http://b:2", "http://c:3"]);
    }

    #[test]
    fn onetime_and_watch_exclude_each_other() {
        assert!(Cli::try_parse_from(["confera", "--onetime", "--watch"]).is_err());
    }
}
