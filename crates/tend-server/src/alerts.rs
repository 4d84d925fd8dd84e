//! Wiring of the alerting product: the engine evaluates every service's
//! rules against the TSDB, the logs and the store, and delivers the
//! notifications queued in the store (see `tend_alerts`).

use std::net::SocketAddr;
use std::sync::Arc;

use tend_store::Store;

use crate::ServerConfig;

/// Starts the alerting engine for a server whose API is at `api`.
pub(crate) fn spawn_engine(
    config: &ServerConfig,
    api: SocketAddr,
    store: Arc<Store>,
    tsdb: tend_metrics::Tsdb,
    logs: tend_logs::Logs,
    live: Arc<dyn tend_alerts::LiveSamples>,
) {
    let mut cfg = tend_alerts::AlertConfig::new(format!("http://{api}"));
    cfg.interval = config.alert_interval;
    if let Some(url) = &config.pagerduty_url {
        cfg.pagerduty_url = url.clone();
    }
    cfg.smtp = config.smtp.clone();
    cfg.alertmanager_url = config.alertmanager_url.clone();
    tend_alerts::spawn(store, tsdb, logs, cfg, Some(live));
}
