//! Settings: the command line, `CONFERA_*` variables, the settings file and
//! the defaults, resolved in that order of precedence into one [`Settings`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{Backend, Cli, LogFormat};
use crate::duration::Wait;
use crate::error::ConfigError;
use crate::pipeline::Options;

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
            .field("options", &self.options)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("metrics_addr", &self.metrics_addr)
            .field("limits", &self.limits)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The settings file, `confera.toml`. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub confdir: Option<PathBuf>,
    pub backend: Option<Backend>,
    pub nodes: Option<Vec<String>>,
    pub files: Option<Vec<PathBuf>>,
    pub prefix: Option<String>,
    pub onetime: Option<bool>,
    pub watch: Option<bool>,
    pub interval: Option<u64>,
    pub wait: Option<String>,
    pub noop: Option<bool>,
    pub sync_only: Option<bool>,
    pub keep_stage_file: Option<bool>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub client_ca_keys: Option<PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub render_timeout: Option<String>,
    pub max_output: Option<u64>,
    pub stuck_after: Option<String>,
    pub state_dir: Option<PathBuf>,
}

impl FileSettings {
    /// Reads the file named by `--config-file`, or `<confdir>/confera.toml`
    /// when it exists.
    pub fn load(explicit: Option<&Path>, confdir: &Path) -> Result<FileSettings, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let p = confdir.join("confera.toml");
                if !p.exists() {
                    return Ok(FileSettings::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let mut settings: FileSettings =
            toml::from_str(&text).map_err(|e| ConfigError::Resource {
                path: path.clone(),
                message: e.to_string().trim_end().to_string(),
            })?;
        settings.resolve_paths(&crate::pipeline::stage::parent_of(&path));
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
}

impl Settings {
    /// Flags and environment (already merged by clap) over the file over the defaults.
    pub fn resolve(cli: &Cli, file: FileSettings) -> Result<Settings, ConfigError> {
        let s = &cli.source;
        let m = &cli.mode;
        let o = &cli.output;
        let wait = match (&m.wait, &file.wait) {
            (Some(w), _) => *w,
            (None, Some(text)) => text
                .parse()
                .map_err(|e| ConfigError::Settings(format!("settings file: wait: {e}")))?,
            (None, None) => Wait::default(),
        };
        let interval = m.interval.or(file.interval);
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
                interval: Duration::from_secs(interval.unwrap_or(DEFAULT_INTERVAL).max(1)),
            }
        };
        let options = Options {
            noop: o.noop || file.noop.unwrap_or(false),
            diff: o.diff,
            sync_only: o.sync_only || file.sync_only.unwrap_or(false),
            keep_stage: o.keep_stage_file || file.keep_stage_file.unwrap_or(false),
        };
        if options.diff && !options.noop {
            return Err(ConfigError::Settings("--diff goes with --noop".into()));
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
        let backend = s.backend.or(file.backend).unwrap_or(Backend::Etcd);
        if backend == Backend::File && files.is_empty() {
            return Err(ConfigError::Settings(
                "the file backend needs at least one --file".into(),
            ));
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
        Ok(Settings {
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
            options,
            log_level: cli
                .logging
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: cli
                .logging
                .log_format
                .or(file.log_format)
                .unwrap_or_default(),
            username: s.username.clone().or(file.username),
            password: s.password.clone().or(file.password),
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
    use clap::Parser;

    fn resolve(args: &[&str], file: &str) -> Result<Settings, ConfigError> {
        let mut argv = vec!["confera"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        Settings::resolve(&cli, toml::from_str(file).unwrap())
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        // (flags, file, expected prefix, expected backend)
        let table = [
            (&[][..], "", "", Backend::Etcd),
            (
                &[][..],
                "prefix = \"/f\"\nbackend = \"env\"",
                "/f",
                Backend::Env,
            ),
            (
                &["--prefix", "/cli"][..],
                "prefix = \"/f\"",
                "/cli",
                Backend::Etcd,
            ),
            (
                &["--backend", "env"][..],
                "backend = \"etcd\"",
                "",
                Backend::Env,
            ),
        ];
        for (args, file, prefix, backend) in table {
            let s = resolve(args, file).unwrap();
            assert_eq!(
                (s.prefix.as_str(), s.backend),
                (prefix, backend),
                "{args:?} / {file}"
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
        let e = toml::from_str::<FileSettings>("bakend = \"etcd\"").unwrap_err();
        assert!(e.to_string().contains("bakend"), "{e}");
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let s = resolve(&["--password", "hunter2"], "").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
