//! Entry points: `--onetime`, polling, watch, and `confera check`. Loads the
//! configuration, connects the source and drives the pipeline.

use std::future::Future;
use std::sync::Arc;

use crate::audit;
use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::ConfigError;
use crate::exec;
use crate::pipeline::rejected::Rejections;
use crate::pipeline::{BatchReport, Pipeline, RenderLimits};
use crate::resource::Unit;
use crate::settings::{Mode, Settings};
use crate::source::Source;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::Telemetry;
use crate::watch;
use crate::watch::owed::Owed;
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
    if let Some(Command::Status { json }) = cli.command {
        return crate::telemetry::status::query(settings.metrics_addr, json).await;
    }
    // A one-shot connects while the templates compile: each takes
    // milliseconds and neither needs the other.
    let connecting = (settings.mode == Mode::Onetime && cli.command.is_none()).then(|| {
        let settings = settings.clone();
        tokio::spawn(async move { Source::connect(&settings).await })
    });
    let config = match Config::load(&settings) {
        Ok(config) => config,
        Err(e) => {
            connecting.inspect(tokio::task::JoinHandle::abort);
            return Err(e);
        }
    };
    if let Some(Command::Check) = cli.command {
        return Ok(audit::audit(&config));
    }
    raise_descriptor_limit();
    // Completions and the man page are printed by the binary before settings load.
    if let Some(connecting) = connecting {
        let metrics = Metrics::new();
        exec::reaper::start(&metrics);
        let source = connecting.await.expect("connecting does not panic")?;
        return onetime(&settings, &config, &metrics, source).await;
    }
    if let Some(spec) = &settings.exec {
        spec.check_program().map_err(ConfigError::Settings)?;
    }
    let telemetry = Telemetry::start(&settings).await?;
    telemetry.declare(settings.backend.label(), &config.units);
    exec::reaper::start(&telemetry.metrics);
    // One stop for the loop and the exec child: a signal, or the child
    // exiting under `on_exit = "exit"`.
    let stop = watch::cancelled_by(shutdown);
    let supervisor = settings
        .exec
        .clone()
        .map(|spec| exec::Supervisor::spawn(spec, &telemetry, stop.clone()));
    let starter = supervisor.as_ref().map(exec::Supervisor::starter);
    let loop_stop = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let status = match settings.mode {
        Mode::Poll { interval } => {
            poll(&settings, &config, interval, &telemetry, loop_stop, starter).await
        }
        _ => watch::run(cli, settings, config, &telemetry, loop_stop, starter).await,
    };
    // confera returns only once its child is gone.
    let status = match supervisor {
        Some(supervisor) => with_child_status(status, supervisor.finish().await),
        None => status,
    };
    telemetry.stop().await;
    status
}

/// Exec mode: confera exits with its child's status once a child ran.
fn with_child_status(
    status: Result<RunStatus, ConfigError>,
    child: Option<std::process::ExitStatus>,
) -> Result<RunStatus, ConfigError> {
    match (status, child) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(child)) => Ok(RunStatus::Child(exec::shell_code(child))),
        (Ok(status), None) => Ok(status),
    }
}

/// Raises the soft limit on open files to the hard one: systemd's default
/// soft limit of 1024 is small for a daemon that stages many files while
/// serving metrics.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(error = %e, soft, hard, "cannot raise the open files limit");
            }
        }
        _ => {}
    }
}

fn pipeline(settings: &Settings, config: &Config, metrics: &Metrics) -> Pipeline {
    let mut pipeline = Pipeline::new(config.renderer.clone(), settings.options, metrics.clone());
    pipeline.limits = RenderLimits {
        timeout: settings.limits.render_timeout,
        max_output: settings.limits.max_output,
    };
    pipeline.rejections = rejections(settings);
    pipeline.daemon_files = config.daemon_files.clone();
    pipeline
}

/// Where rejected file sets are kept: `<state-dir>/rejected`, except under
/// `--noop`, which writes nothing.
pub fn rejections(settings: &Settings) -> Rejections {
    Rejections::new((!settings.options.noop).then_some(settings.state_dir.as_path()))
}

async fn onetime(
    settings: &Settings,
    config: &Config,
    metrics: &Metrics,
    mut source: Source,
) -> Result<RunStatus, ConfigError> {
    let store = Arc::new(source.snapshot(&config.prefixes()).await?);
    tracing::info!(
        keys = store.len(),
        revision = store.revision(),
        "snapshot loaded"
    );
    if !settings.options.noop {
        config.remove_stale_stages();
    }
    let pipeline = pipeline(settings, config, metrics);
    let mut owed = owed_reloads(settings, config);
    let units: Vec<&Unit> = config.units.iter().collect();
    let report = pipeline.run_batch(&units, &store).await;
    let failed_owed = pay_owed(&pipeline, &mut owed, &report, None).await;
    Ok(if report.failures() > 0 || failed_owed > 0 {
        RunStatus::Failed
    } else if settings.options.exit_code && report.would_change() > 0 {
        RunStatus::WouldChange
    } else {
        RunStatus::Success
    })
}

/// The record of reloads a previous run owed; none (and nothing recorded)
/// when this run reloads nothing (`--noop`, `--sync-only`).
pub fn owed_reloads(settings: &Settings, config: &Config) -> Owed {
    Owed::load(
        &settings.state_dir,
        &settings.confdir,
        &config.units,
        settings.options.reloads(),
    )
}

/// Records the batch's reloads in the owed record, then retries every
/// reload still owed that the batch did not run. Returns how many failed.
async fn pay_owed(
    pipeline: &Pipeline,
    owed: &mut Owed,
    report: &BatchReport,
    telemetry: Option<&Telemetry>,
) -> usize {
    let pending = |units: &[String], pending: bool, error: Option<String>| {
        if let Some(t) = telemetry {
            for unit in units {
                t.status.reload_pending(unit, pending, error.clone());
            }
        }
    };
    for key in &report.reloaded {
        owed.paid(key);
    }
    for (key, units, e) in &report.failed_reloads {
        // A configuration rolled back after BIRD rejected it is owed nothing.
        let units = e.still_owed(units);
        if !units.is_empty() {
            owed.owe(key, &units);
            pending(&units, true, Some(format!("reload failed: {e}")));
        }
    }
    if !pipeline.reloads() {
        return report.failed_reloads.len();
    }
    let mut failed = report.failed_reloads.len();
    for (key, units) in owed.all() {
        if report.failed_reloads.iter().any(|(k, _, _)| *k == key) {
            continue;
        }
        for unit in units.iter() {
            tracing::info!(resource = %unit, resources = %units.join(","), "retrying an owed reload");
        }
        match pipeline.reload(&key, &units).await {
            Ok(()) => {
                owed.paid(&key);
                pending(&units, false, None);
            }
            Err(e) => {
                failed += 1;
                pending(&units, true, Some(format!("reload failed: {e}")));
            }
        }
    }
    failed
}

/// confd's default mode: a full snapshot and render every `interval`. A
/// reload that failed is owed, and retried at every poll until it works,
/// even when the files no longer change. In exec mode the child starts
/// after the first batch, which must succeed for every resource.
async fn poll(
    settings: &Settings,
    config: &Config,
    interval: std::time::Duration,
    telemetry: &Telemetry,
    shutdown: impl Future<Output = ()>,
    mut exec: Option<exec::Starter>,
) -> Result<RunStatus, ConfigError> {
    let mut source = Source::connect(settings).await?;
    config.remove_stale_stages();
    tracing::info!(
        interval_s = interval.as_secs(),
        "polling every {}s",
        interval.as_secs()
    );
    let pipeline = pipeline(settings, config, &telemetry.metrics);
    let mut owed = owed_reloads(settings, config);
    let units: Vec<&Unit> = config.units.iter().collect();
    tokio::pin!(shutdown);
    loop {
        match source.snapshot(&config.prefixes()).await {
            Ok(store) => {
                telemetry.status.link_up();
                telemetry.metrics.keys(store.len());
                for unit in &units {
                    telemetry.status.started(&unit.name);
                }
                let revision = store.revision();
                let report = pipeline.run_batch(&units, &Arc::new(store)).await;
                pay_owed(&pipeline, &mut owed, &report, Some(telemetry)).await;
                for (name, result) in &report.units {
                    let result = result.as_ref().map(drop).map_err(ToString::to_string);
                    telemetry.status.finished(name, revision, result);
                }
                // Ready once the first batch was attempted; failures show per resource.
                telemetry.ready();
                if let Some(starter) = exec.take() {
                    let failed: Vec<&str> = report
                        .units
                        .iter()
                        .filter(|(_, r)| r.is_err())
                        .map(|(name, _)| name.as_str())
                        .collect();
                    if !failed.is_empty() {
                        tracing::error!(resources = %failed.join(","), "the first render failed; the exec child is not started");
                        return Ok(RunStatus::Failed);
                    }
                    starter.start();
                }
            }
            Err(e) => {
                telemetry.status.link_down(e.to_string());
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
