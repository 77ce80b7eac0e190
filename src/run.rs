//! Entry points: `--onetime`, polling, watch, and `confera check`. Loads the
//! configuration, connects the source and drives the pipeline.

use std::future::Future;
use std::sync::Arc;

use crate::audit;
use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::ConfigError;
use crate::pipeline::Pipeline;
use crate::resource::Unit;
use crate::settings::{Mode, Settings};
use crate::source::Source;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Telemetry;
use crate::watch;
use crate::RunStatus;

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
        return Ok(audit::audit(&config));
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
