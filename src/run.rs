//! Entry points: `--onetime`, polling, watch, and `confera check`. Loads the
//! configuration, connects the source and drives the pipeline.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cli::Command;
use crate::error::ConfigError;
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
pub async fn run(
    command: Option<Command>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunStatus, ConfigError> {
    let config = Config::load(&settings)?;
    if let Some(Command::Check) = command {
        return Ok(check_confdir(&config));
    }
    // Completions and the man page are printed by the binary before settings load.
    match settings.mode {
        Mode::Onetime => onetime(&settings, &config).await,
        Mode::Poll { interval } => poll(&settings, &config, interval, shutdown).await,
        Mode::Watch { .. } => watch::run(settings, config, shutdown).await,
    }
}

async fn onetime(settings: &Settings, config: &Config) -> Result<RunStatus, ConfigError> {
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
    shutdown: impl Future<Output = ()>,
) -> Result<RunStatus, ConfigError> {
    let mut source = Source::connect(settings).await?;
    config.remove_stale_stages();
    let pipeline = Pipeline {
        renderer: &config.renderer,
        options: settings.options,
    };
    let units: Vec<&Unit> = config.units.iter().collect();
    tokio::pin!(shutdown);
    loop {
        match source.snapshot(&config.prefixes()).await {
            Ok(store) => {
                pipeline.run_batch(&units, &Arc::new(store)).await;
            }
            Err(e) => tracing::error!(error = %e, "snapshot failed; keeping the current files"),
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
                .map(|k| resource::relative_key(t, k))
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

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}
