//! What a long-running confera reports about itself: Prometheus metrics,
//! health, readiness and per-resource status over HTTP, and systemd
//! notifications. It reports; it never decides what the pipeline does.

pub mod metrics;
pub mod status;
pub mod systemd;

use tokio_util::sync::CancellationToken;

use crate::error::ConfigError;
use crate::settings::Settings;
use metrics::Metrics;
use status::Status;
use systemd::Systemd;

/// What a long-running confera reports: metrics, status, systemd readiness.
pub struct Telemetry {
    pub metrics: Metrics,
    pub status: Status,
    pub systemd: Systemd,
    server: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// `--noop`: a dry run is never "ready" for anything; say nothing.
    noop: bool,
}

impl Telemetry {
    /// Starts the metrics, health and status server when `--metrics-addr` is set.
    pub async fn start(settings: &Settings) -> Result<Telemetry, ConfigError> {
        let metrics = Metrics::new();
        let status = Status::new(metrics.clone(), settings.limits.stuck_after);
        let server = match settings.metrics_addr {
            Some(addr) => {
                let token = CancellationToken::new();
                let (_bound, task) =
                    metrics::serve(addr, metrics.clone(), status.clone(), token.clone())
                        .await
                        .map_err(|e| ConfigError::Settings(e.to_string()))?;
                Some((token, task))
            }
            None => None,
        };
        Ok(Telemetry {
            metrics,
            status,
            systemd: Systemd::from_env(),
            server,
            noop: settings.options.noop,
        })
    }

    /// Creates every series of `units` and the backend at zero.
    pub fn declare(&self, backend: &str, units: &[crate::resource::Unit]) {
        let resources: Vec<(&str, Option<&str>)> = units
            .iter()
            .map(|u| {
                let method = (!u.reload.is_none()).then(|| crate::reload::method(&u.reload));
                (u.name.as_str(), method)
            })
            .collect();
        self.metrics.declare(backend, &resources);
    }

    /// The first batch was attempted (whatever its outcome; failures show
    /// per resource): ready for readiness probes and systemd.
    pub fn ready(&self) {
        if self.status.set_ready() {
            self.systemd.ready();
            if !self.noop {
                tracing::info!("ready: first batch attempted");
            }
        }
    }

    pub async fn stop(self) {
        self.systemd.stopping();
        if let Some((token, task)) = self.server {
            token.cancel();
            let _ = task.await;
        }
    }
}
