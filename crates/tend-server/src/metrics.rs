//! Wiring of the metrics product: what is collected into the time-series
//! store, with no setup by the teams.
//!
//! Every scrape interval: each ready instance's own `/metrics` (Prometheus
//! text or OpenMetrics; `up` and `scrape_duration_seconds` recorded like
//! Prometheus does), and the router's traffic metrics. Every series gets the
//! `service`, `team`, `release` and `instance` labels of where it came from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tend_core::routing::RoutingTable;
use tend_metrics::{exposition, Labels, Tsdb};
use tend_store::Store;

/// Longest a scrape of one instance may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `labels` with the target's identity labels set (they win over the
/// target's own labels of the same names, as they say where it came from).
fn with_target(labels: &Labels, target: &[(&str, &str)]) -> Labels {
    let mut out = labels.clone();
    for (k, v) in target {
        out = out.with(k, v);
    }
    out
}

/// Starts the collector: scrapes every `interval` until the process ends.
pub(crate) fn spawn_collector(
    tsdb: Tsdb,
    store: Arc<Store>,
    routes: tokio::sync::watch::Receiver<RoutingTable>,
    router: tend_router::Router,
    interval: Duration,
) {
    tokio::spawn(async move {
        let http = match reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .no_proxy()
            .build()
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "metrics collector disabled: no HTTP client");
                return;
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let table = routes.borrow().clone();
            let s = store.clone();
            let owners: HashMap<String, String> =
                match tokio::task::spawn_blocking(move || s.read(|tx| tx.services(None))).await {
                    Ok(Ok(list)) => list
                        .into_iter()
                        .map(|r| (r.name.to_string(), r.owner.to_string()))
                        .collect(),
                    _ => continue,
                };
            let mut batch: Vec<(Labels, i64, f64)> = Vec::new();
            let mut scrapes = tokio::task::JoinSet::new();
            for (service, route) in table.iter() {
                let team = owners.get(service).cloned().unwrap_or_default();
                for ep in &route.endpoints {
                    let http = http.clone();
                    let (service, team, instance, release, addr) = (
                        service.clone(),
                        team.clone(),
                        ep.instance.clone(),
                        ep.release.to_string(),
                        ep.addr,
                    );
                    scrapes.spawn(async move {
                        let t0 = Instant::now();
                        let ts = now_ms();
                        let result = async {
                            let resp = http
                                .get(format!("http://{addr}/metrics"))
                                .send()
                                .await
                                .ok()?;
                            if !resp.status().is_success() {
                                return None;
                            }
                            let ct = resp
                                .headers()
                                .get(reqwest::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let text = resp.text().await.ok()?;
                            exposition::parse(&text, ct.as_deref(), ts).ok()
                        }
                        .await;
                        let target = [
                            ("service", service.as_str()),
                            ("team", team.as_str()),
                            ("release", release.as_str()),
                            ("instance", instance.as_str()),
                        ];
                        let mut out: Vec<(Labels, i64, f64)> = result
                            .as_deref()
                            .unwrap_or_default()
                            .iter()
                            .map(|(l, t, v)| (with_target(l, &target), *t, *v))
                            .collect();
                        let base = Labels::from_pairs(&target);
                        out.push((
                            base.with("__name__", "up"),
                            ts,
                            if result.is_some() { 1.0 } else { 0.0 },
                        ));
                        out.push((
                            base.with("__name__", "scrape_duration_seconds"),
                            ts,
                            t0.elapsed().as_secs_f64(),
                        ));
                        out
                    });
                }
            }
            while let Some(r) = scrapes.join_next().await {
                if let Ok(samples) = r {
                    batch.extend(samples);
                }
            }
            // The router's traffic metrics, per service and instance.
            let mut text = String::new();
            router.render_prometheus(&mut text);
            let ts = now_ms();
            if let Ok(samples) = exposition::parse(&text, None, ts) {
                for (l, t, v) in samples {
                    let team = l.get("service").and_then(|s| owners.get(s)).cloned();
                    let l = match team {
                        Some(team) => l.with("team", &team),
                        None => l,
                    };
                    batch.push((l, t, v));
                }
            }
            let db = tsdb.clone();
            match tokio::task::spawn_blocking(move || db.append(&batch)).await {
                Ok(Ok(st)) if st.rejected > 0 => {
                    tracing::warn!(
                        rejected = st.rejected,
                        "series over the per-service cardinality limit were dropped"
                    )
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot store scraped samples"),
                _ => {}
            }
        }
    });
}

/// The platform's own metrics in the Prometheus text format, for
/// `GET /metrics`: the router's traffic, the log store's and the TSDB's.
pub(crate) fn render_platform(
    router: &tend_router::Router,
    logs: &tend_logs::Logs,
    tsdb: &Tsdb,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    router.render_prometheus(&mut out);
    let l = logs.stats();
    let t = tsdb.stats();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "tend_logs_lines_ingested_total",
        "counter",
        "Log lines stored.",
        l.lines_ingested as f64,
    );
    metric(
        "tend_logs_bytes_ingested_total",
        "counter",
        "Bytes of log lines stored.",
        l.bytes_ingested as f64,
    );
    metric(
        "tend_logs_lines_dropped_total",
        "counter",
        "Log lines dropped by rate limits.",
        l.lines_dropped as f64,
    );
    metric(
        "tend_logs_store_bytes",
        "gauge",
        "Bytes of the log store on disk.",
        l.store_bytes as f64,
    );
    metric(
        "tend_logs_watched_files",
        "gauge",
        "Capture files being ingested.",
        l.watched_files as f64,
    );
    metric(
        "tend_tsdb_head_series",
        "gauge",
        "Series in the TSDB head.",
        t.head_series as f64,
    );
    metric(
        "tend_tsdb_samples",
        "gauge",
        "Samples stored.",
        t.samples as f64,
    );
    metric(
        "tend_tsdb_disk_bytes",
        "gauge",
        "Bytes of TSDB blocks and WAL on disk.",
        (t.disk_bytes + t.wal_bytes) as f64,
    );
    let _ = writeln!(
        out,
        "# HELP tend_build_info The running tend.\n# TYPE tend_build_info gauge\ntend_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}
