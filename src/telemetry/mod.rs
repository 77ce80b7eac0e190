//! What a long-running confera reports about itself: Prometheus metrics,
//! health and readiness over HTTP, and systemd notifications.

pub mod metrics;
pub mod systemd;

use tokio_util::sync::CancellationToken;

use crate::error::ConfigError;
use crate::settings::Settings;
use metrics::{Health, Metrics};
use systemd::Systemd;

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

    pub async fn stop(self) {
        self.systemd.stopping();
        if let Some((token, task)) = self.server {
            token.cancel();
            let _ = task.await;
        }
    }
}
