//! Entry points: `--onetime`, polling, watch, and `confera check`. Loads the
//! configuration, connects the source and drives the pipeline.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command};
use crate::error::ConfigError;
use crate::metrics::{self, Health, Metrics};
use crate::notify_systemd::Systemd;
use crate::pipeline::Pipeline;
use crate::render::Renderer;
use crate::resource::{self, Layout, Unit};
use crate::settings::{Mode, Settings};
use crate::source::Source;
use crate::stage;
use crate::watch;

/// How a run ended, when it ended without a configuration error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Success,
    /// At least one unit or reload failed (exit 1).
    Failed,
}

/// The loaded configuration: every unit and the compiled templates.
pub struct Config {
    pub units: Vec<Unit>,
    pub renderer: Renderer,
}

impl Config {
    pub fn load(settings: &Settings) -> Result<Config, ConfigError> {
        let layout = Layout {
            confdir: &settings.confdir,
            prefix: &settings.prefix,
        };
        let units = resource::load_all(&layout)?;
        let renderer = Renderer::load(&layout.templates_dir(), &units)?;
        Ok(Config { units, renderer })
    }

    /// Every prefix any unit reads.
    pub fn prefixes(&self) -> Vec<String> {
        let mut prefixes: Vec<String> = self
            .units
            .iter()
            .flat_map(|u| u.prefixes().map(str::to_string))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes
    }

    /// Removes staging directories that a crashed run left beside the
    /// destinations.
    pub fn remove_stale_stages(&self) {
        for unit in &self.units {
            let mut dirs: Vec<PathBuf> = unit
                .templates
                .iter()
                .map(|t| stage::parent_of(&t.dest))
                .collect();
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                stage::remove_stale(&dir, &unit.name);
            }
        }
    }
}

/// Runs confera until done (`--onetime`, `check`) or until `shutdown`
/// completes.
///
/// `cli` is kept so that SIGHUP in watch mode can resolve the settings again
/// (the settings file may have changed).
pub async fn run(
    cli: &Cli,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunStatus, ConfigError> {
    let config = Config::load(&settings)?;
    if let Some(Command::Check) = cli.command {
        return Ok(check_confdir(&config));
    }
    // Completions and the man page are printed by the binary before settings load.
    if settings.mode == Mode::Onetime {
        return onetime(&settings, &config, &Metrics::new()).await;
    }
    let telemetry = Telemetry::start(&settings).await?;
    let status = match settings.mode {
        Mode::Poll { interval } => poll(&settings, &config, interval, &telemetry, shutdown).await,
        _ => watch::run(cli, settings, config, &telemetry, shutdown).await,
    };
    telemetry.stop().await;
    status
}

/// What a long-running confera reports: metrics, health, systemd readiness.
pub struct Telemetry {
    pub metrics: Metrics,
    pub health: Health,
    pub systemd: Systemd,
    server: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Telemetry {
    /// Starts the metrics and health server when `--metrics-addr` is set.
    pub async fn start(settings: &Settings) -> Result<Telemetry, ConfigError> {
        let metrics = Metrics::new();
        let health = Health::default();
        let server = match settings.metrics_addr {
            Some(addr) => {
                let token = CancellationToken::new();
                let (_bound, task) =
                    metrics::serve(addr, metrics.clone(), health.clone(), token.clone())
                        .await
                        .map_err(|e| ConfigError::Settings(e.to_string()))?;
                Some((token, task))
            }
            None => None,
        };
        Ok(Telemetry {
            metrics,
            health,
            systemd: Systemd::from_env(),
            server,
        })
    }

    /// The first full render is in place: ready for readiness probes and systemd.
    pub fn ready(&self) {
        if !self.health.ready() {
            self.health.set_ready();
            self.systemd.ready();
            tracing::info!("ready: first full render committed");
        }
    }

    async fn stop(self) {
        self.systemd.stopping();
        if let Some((token, task)) = self.server {
            token.cancel();
            let _ = task.await;
        }
    }
}

async fn onetime(
    settings: &Settings,
    config: &Config,
    metrics: &Metrics,
) -> Result<RunStatus, ConfigError> {
    let mut source = Source::connect(settings).await?;
    let store = Arc::new(source.snapshot(&config.prefixes()).await?);
    tracing::info!(
        keys = store.len(),
        revision = store.revision(),
        "snapshot loaded"
    );
    if !settings.options.noop {
        config.remove_stale_stages();
    }
    let pipeline = Pipeline {
        renderer: &config.renderer,
        options: settings.options,
        metrics,
        keep: None,
    };
    let units: Vec<&Unit> = config.units.iter().collect();
    let report = pipeline.run_batch(&units, &store).await;
    Ok(if report.failures() == 0 {
        RunStatus::Success
    } else {
        RunStatus::Failed
    })
}

/// confd's default mode: a full snapshot and render every `interval`.
async fn poll(
    settings: &Settings,
    config: &Config,
    interval: std::time::Duration,
    telemetry: &Telemetry,
    shutdown: impl Future<Output = ()>,
) -> Result<RunStatus, ConfigError> {
    let mut source = Source::connect(settings).await?;
    config.remove_stale_stages();
    let pipeline = Pipeline {
        renderer: &config.renderer,
        options: settings.options,
        metrics: &telemetry.metrics,
        keep: None,
    };
    let units: Vec<&Unit> = config.units.iter().collect();
    tokio::pin!(shutdown);
    loop {
        match source.snapshot(&config.prefixes()).await {
            Ok(store) => {
                telemetry.health.set_healthy();
                telemetry.metrics.keys(store.len());
                let report = pipeline.run_batch(&units, &Arc::new(store)).await;
                if report.failures() == 0 {
                    telemetry.ready();
                }
            }
            Err(e) => {
                telemetry.health.set_unhealthy(e.to_string());
                tracing::error!(error = %e, "snapshot failed; keeping the current files");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut shutdown => return Ok(RunStatus::Success),
        }
    }
}

/// `confera check`: everything parsed and compiled; list what each unit reads.
fn check_confdir(config: &Config) -> RunStatus {
    for unit in &config.units {
        for t in &unit.templates {
            let keys: Vec<String> = t
                .keys
                .iter()
                .map(|k| crate::store::relative_key(&t.prefix, k))
                .collect();
            println!(
                "{}: {} -> {} (prefix {}, keys {})",
                unit.name,
                t.src,
                t.dest.display(),
                t.prefix,
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            );
        }
    }
    RunStatus::Success
}

/// A future that completes on SIGTERM or SIGINT. The handlers are
/// installed now, not at the first poll, so a signal that arrives while the
/// first render runs is not lost to the default action. Call it inside the
/// runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
}
