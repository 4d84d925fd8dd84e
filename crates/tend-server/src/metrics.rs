//! Wiring of the metrics product: what is collected into the time-series
//! store, with no setup by the teams.
//!
//! Every scrape interval:
//! - each instance's resource usage, read by the runtime from `/proc` (and its
//!   cgroup v2 where it has one), named like Prometheus's process collector
//!   and cAdvisor (`process_cpu_seconds_total`, `container_memory_usage_bytes`,
//!   ...), with its restarts and whether it runs and is ready. These carry
//!   `job="runtime"`, so they never collide with the `process_*` series a
//!   service's own client library exports;
//! - the own metrics endpoint (manifest `[metrics] path`, Prometheus text or
//!   OpenMetrics) of each ready instance of a service that has one, at the
//!   service's `[metrics] interval` (rounded up to whole ticks); `up` and
//!   `scrape_duration_seconds` are recorded like Prometheus does;
//! - the router's traffic metrics ([`RouterSampler`], also taken right before
//!   every alert evaluation).
//!
//! Every series gets the `service`, `team`, `release` and `instance` labels of
//! where it came from. As in Prometheus, a series that a target stops
//! reporting (or a target that goes away or fails its scrape) gets a stale
//! marker, so queries stop seeing it at once instead of for the 5 min lookback.
//! Each batch goes to the TSDB and, when configured, to the remote-write queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tend_core::model::InstanceState;
use tend_core::routing::RoutingTable;
use tend_manifest::{MetricsSection, ServiceSpec};
use tend_metrics::remote_write::RemoteWriter;
use tend_metrics::{exposition, Labels, Tsdb, STALE_NAN_BITS};
use tend_runtime::{Handle, Runtime};
use tend_store::Store;

/// Longest a scrape of one instance may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The value of the `job` label on series the platform measures itself.
const RUNTIME_JOB: &str = "runtime";

type Sample = (Labels, i64, f64);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the collector needs from the rest of the server.
pub(crate) struct CollectorDeps {
    pub tsdb: Tsdb,
    pub store: Arc<Store>,
    pub routes: tokio::sync::watch::Receiver<RoutingTable>,
    pub router: Arc<RouterSampler>,
    pub runtime: Arc<dyn Runtime>,
    pub interval: Duration,
    pub remote_write: Option<RemoteWriter>,
}

/// Who a set of series came from, for staleness: an instance's endpoint or
/// an instance's resource usage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    Scrape(String),
    Runtime(String),
}

/// What one store read tells the collector.
struct Snapshot {
    owners: HashMap<String, String>,
    instances: Vec<tend_store::InstanceRecord>,
    /// `[metrics]` of the releases asked for that were not cached yet.
    specs: Vec<((String, u32), Option<MetricsSection>)>,
}

struct Collector {
    deps: CollectorDeps,
    http: reqwest::Client,
    /// `[metrics]` per (service, release): releases are immutable.
    specs: HashMap<(String, u32), Option<MetricsSection>>,
    /// When each instance's endpoint was last scraped.
    last_scrape: HashMap<String, Instant>,
    /// The series each source reported last time.
    seen: HashMap<Source, HashSet<Labels>>,
    /// Per scraped instance: raw series text → labels, so known series are
    /// not re-parsed every scrape (as Prometheus's scrape cache).
    caches: HashMap<String, Arc<std::sync::Mutex<exposition::ScrapeCache>>>,
}

/// Starts the collector: collects every `interval` until the process ends.
pub(crate) fn spawn_collector(deps: CollectorDeps) {
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
        let mut c = Collector {
            deps,
            http,
            specs: HashMap::new(),
            last_scrape: HashMap::new(),
            seen: HashMap::new(),
            caches: HashMap::new(),
        };
        let mut tick = tokio::time::interval(c.deps.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            c.collect().await;
        }
    });
}

impl Collector {
    async fn collect(&mut self) {
        let table = self.deps.routes.borrow().clone();
        let wanted: Vec<(String, u32)> = table
            .iter()
            .flat_map(|(svc, route)| {
                route
                    .endpoints
                    .iter()
                    .map(move |ep| (svc.clone(), ep.release))
            })
            .filter(|k| !self.specs.contains_key(k))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let store = self.deps.store.clone();
        let snap = match tokio::task::spawn_blocking(move || read_snapshot(&store, wanted)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics collector cannot read the store");
                return;
            }
            Err(_) => return,
        };
        self.specs.extend(snap.specs);
        // Unless the alerting engine took the router's counters less than
        // half an interval ago: one sample per interval is enough.
        let (router, fresh) = (self.deps.router.clone(), self.deps.interval / 2);
        let _ = tokio::task::spawn_blocking(move || router.sample(now_ms(), fresh)).await;
        let mut batch: Vec<Sample> = Vec::new();
        let mut reported: HashMap<Source, HashSet<Labels>> = HashMap::new();

        // Each instance's resource usage.
        let mut stats = tokio::task::JoinSet::new();
        for rec in &snap.instances {
            let Some(handle) = rec
                .handle
                .as_deref()
                .and_then(|h| serde_json::from_str::<Handle>(h).ok())
            else {
                continue;
            };
            if matches!(
                rec.instance.state,
                InstanceState::Pending | InstanceState::Crashed
            ) {
                continue;
            }
            let runtime = self.deps.runtime.clone();
            let service = rec.service.to_string();
            let team = snap.owners.get(&service).cloned().unwrap_or_default();
            let inst = rec.instance.clone();
            stats.spawn(async move {
                let ts = now_ms();
                let st = runtime.stats(&handle).await.ok();
                let release = inst.release.to_string();
                let base = Labels::from_pairs(&[
                    ("service", &service),
                    ("team", &team),
                    ("release", &release),
                    ("instance", &inst.id),
                    ("job", RUNTIME_JOB),
                ]);
                let mut out = Vec::new();
                let mut put = |name: &str, v: f64| out.push((base.with("__name__", name), ts, v));
                put("tend_instance_running", f64::from(u8::from(st.is_some())));
                put(
                    "tend_instance_ready",
                    f64::from(u8::from(inst.state == InstanceState::Ready)),
                );
                put("tend_instance_restarts_total", f64::from(inst.restarts));
                if let Some(started) = inst.started_at {
                    put(
                        "process_start_time_seconds",
                        started.as_millis() as f64 / 1e3,
                    );
                }
                if let Some(st) = st {
                    put("process_cpu_seconds_total", st.cpu_seconds);
                    put("process_resident_memory_bytes", st.rss_bytes as f64);
                    put("process_open_fds", st.open_fds as f64);
                    put("process_threads", st.threads as f64);
                    if let Some(cg) = st.cgroup {
                        put("container_memory_usage_bytes", cg.memory_bytes as f64);
                        put("container_cpu_usage_seconds_total", cg.cpu_seconds);
                        put(
                            "container_cpu_cfs_throttled_seconds_total",
                            cg.cpu_throttled_seconds,
                        );
                        put("container_oom_events_total", cg.oom_kills as f64);
                    }
                }
                (Source::Runtime(inst.id.clone()), out)
            });
        }

        // The own endpoints of services that declare one.
        let mut scrapes = tokio::task::JoinSet::new();
        let mut live_targets = HashSet::new();
        for (service, route) in table.iter() {
            let team = snap.owners.get(service).cloned().unwrap_or_default();
            for ep in &route.endpoints {
                let key = (service.clone(), ep.release);
                let Some(Some(m)) = self.specs.get(&key) else {
                    continue;
                };
                live_targets.insert(ep.instance.clone());
                let every = m.interval.unwrap_or(self.deps.interval);
                // Half a tick of slack: ticks are not exactly `interval` apart.
                let due = self
                    .last_scrape
                    .get(&ep.instance)
                    .is_none_or(|t| t.elapsed() + self.deps.interval / 2 >= every);
                if !due {
                    // Not scraped this time: its series are not stale.
                    if let Some(prev) = self.seen.get(&Source::Scrape(ep.instance.clone())) {
                        reported.insert(Source::Scrape(ep.instance.clone()), prev.clone());
                    }
                    continue;
                }
                self.last_scrape.insert(ep.instance.clone(), Instant::now());
                let url = format!("http://{}{}", ep.addr, m.path);
                let (http, team, instance, release, service) = (
                    self.http.clone(),
                    team.clone(),
                    ep.instance.clone(),
                    ep.release.to_string(),
                    service.clone(),
                );
                let cache = self.caches.entry(instance.clone()).or_default().clone();
                scrapes.spawn(async move {
                    let target = [
                        ("service", &*service),
                        ("team", &*team),
                        ("release", &*release),
                        ("instance", &*instance),
                    ];
                    let out = scrape(&http, &url, &target, &cache).await;
                    (Source::Scrape(instance), out)
                });
            }
        }
        self.last_scrape.retain(|k, _| live_targets.contains(k));
        self.caches.retain(|k, _| live_targets.contains(k));

        for joined in [stats.join_all().await, scrapes.join_all().await] {
            for (source, samples) in joined {
                reported.insert(source, samples.iter().map(|s| s.0.clone()).collect());
                batch.extend(samples);
            }
        }

        // Stale markers for what was reported last time and not now.
        let ts = now_ms();
        let stale = f64::from_bits(STALE_NAN_BITS);
        for (source, before) in &self.seen {
            let now = reported.get(source);
            for l in before {
                if now.is_none_or(|n| !n.contains(l)) {
                    batch.push((l.clone(), ts, stale));
                }
            }
        }
        self.seen = reported;

        if let Some(rw) = &self.deps.remote_write {
            rw.push(&batch);
        }
        let db = self.deps.tsdb.clone();
        match tokio::task::spawn_blocking(move || db.append(&batch)).await {
            Ok(Ok(st)) if st.rejected > 0 => {
                tracing::warn!(
                    rejected = st.rejected,
                    "series over the per-service cardinality limit were dropped"
                )
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot store collected samples"),
            _ => {}
        }
    }
}

/// Takes the router's traffic metrics (per service and instance) into the
/// TSDB. They live in this process, so taking them costs no request: the
/// alerting engine takes them right before every evaluation, so traffic
/// alerts see the instant they evaluate, and the collector every scrape
/// interval when the engine has not just done so.
pub(crate) struct RouterSampler {
    router: tend_router::Router,
    store: Arc<Store>,
    tsdb: Tsdb,
    remote_write: Option<RemoteWriter>,
    /// Held for a whole sample, so two samples never interleave their appends.
    last: std::sync::Mutex<RouterSeries>,
}

/// What the last router sample reported.
#[derive(Default)]
struct RouterSeries {
    at_ms: i64,
    seen: HashSet<Labels>,
}

impl RouterSampler {
    pub(crate) fn new(
        router: tend_router::Router,
        store: Arc<Store>,
        tsdb: Tsdb,
        remote_write: Option<RemoteWriter>,
    ) -> Self {
        Self {
            router,
            store,
            tsdb,
            remote_write,
            last: Default::default(),
        }
    }

    /// Appends the router's counters stamped `at_ms` (or just after the last
    /// sample, which a caller's clock may not have passed yet), with stale
    /// markers for series gone since the last sample; nothing if the last
    /// sample is less than `fresh` old. Blocking.
    pub(crate) fn sample(&self, at_ms: i64, fresh: Duration) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if at_ms - last.at_ms < fresh.as_millis() as i64 {
            return;
        }
        let owners: HashMap<String, String> = match self.store.read(|tx| tx.services(None)) {
            Ok(services) => services
                .into_iter()
                .map(|r| (r.name.to_string(), r.owner.to_string()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "router metrics not taken: cannot read owners");
                return;
            }
        };
        let ts = at_ms.max(last.at_ms + 1);
        let mut text = String::new();
        self.router.render_prometheus(&mut text);
        let Ok(samples) = exposition::parse(&text, None, ts) else {
            return;
        };
        let mut batch = Vec::with_capacity(samples.len());
        let mut seen = HashSet::with_capacity(samples.len());
        for (l, t, v) in samples {
            let l = match l.get("service").and_then(|s| owners.get(s)) {
                Some(team) => l.with("team", team),
                None => l,
            };
            seen.insert(l.clone());
            batch.push((l, t, v));
        }
        let stale = f64::from_bits(STALE_NAN_BITS);
        for l in last.seen.difference(&seen) {
            batch.push((l.clone(), ts, stale));
        }
        *last = RouterSeries { at_ms: ts, seen };
        if let Some(rw) = &self.remote_write {
            rw.push(&batch);
        }
        if let Err(e) = self.tsdb.append(&batch) {
            tracing::warn!(error = %e, "cannot store the router's metrics");
        }
    }
}

impl tend_alerts::LiveSamples for RouterSampler {
    fn sample(&self, at_ms: i64) {
        RouterSampler::sample(self, at_ms, Duration::ZERO)
    }
}

/// Owners, instance records and the `[metrics]` of releases not cached yet.
fn read_snapshot(
    store: &Store,
    wanted: Vec<(String, u32)>,
) -> Result<Snapshot, tend_store::StoreError> {
    store.read(|tx| {
        let owners = tx
            .services(None)?
            .into_iter()
            .map(|r| (r.name.to_string(), r.owner.to_string()))
            .collect();
        let instances = tx.instances(None)?;
        let mut specs = Vec::new();
        for (service, release) in wanted {
            let Ok(name) = tend_core::ServiceName::parse(&service) else {
                continue;
            };
            let metrics = match tx.release(&name, release) {
                Ok(r) => serde_json::from_str::<ServiceSpec>(&r.spec)
                    .ok()
                    .and_then(|s| s.metrics),
                Err(tend_store::StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            specs.push(((service, release), metrics));
        }
        Ok(Snapshot {
            owners,
            instances,
            specs,
        })
    })
}

/// Scrapes one instance's endpoint; always returns `up` and `scrape_duration_seconds`.
async fn scrape(
    http: &reqwest::Client,
    url: &str,
    target: &[(&str, &str)],
    cache: &std::sync::Mutex<exposition::ScrapeCache>,
) -> Vec<Sample> {
    let t0 = Instant::now();
    let ts = now_ms();
    // The target's labels win over the service's own of the same names: they
    // say where the series came from.
    let base = Labels::from_pairs(target);
    let mut out: Vec<Sample> = Vec::new();
    let result = async {
        let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.map_err(|e| e.to_string())?;
        // Parsed and labelled in one pass (`parse` + `merged`, cached).
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        let parsed = cache.parse(&text, ct.as_deref(), ts, &base, &mut out);
        drop(cache);
        parsed.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = &result {
        tracing::debug!(%url, error = %e, "scrape failed");
    }
    out.push((
        base.with("__name__", "up"),
        ts,
        if result.is_ok() { 1.0 } else { 0.0 },
    ));
    out.push((
        base.with("__name__", "scrape_duration_seconds"),
        ts,
        t0.elapsed().as_secs_f64(),
    ));
    out
}

/// The platform's own metrics in the Prometheus text format, for
/// `GET /metrics`: the router's traffic, the log store's and the TSDB's.
pub(crate) fn render_platform(
    router: &tend_router::Router,
    logs: &tend_logs::Logs,
    tsdb: &Tsdb,
    remote_write: Option<&RemoteWriter>,
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
    if let Some(rw) = remote_write {
        let st = rw.stats();
        metric(
            "tend_remote_write_samples_sent_total",
            "counter",
            "Samples the remote-write receiver accepted.",
            st.sent as f64,
        );
        metric(
            "tend_remote_write_samples_dropped_total",
            "counter",
            "Samples dropped by remote write: queue full or refused by the receiver.",
            st.dropped as f64,
        );
        metric(
            "tend_remote_write_retries_total",
            "counter",
            "Remote-write requests that failed and were retried.",
            st.retries as f64,
        );
        metric(
            "tend_remote_write_samples_pending",
            "gauge",
            "Samples waiting to be sent by remote write.",
            st.pending as f64,
        );
    }
    let _ = writeln!(
        out,
        "# HELP tend_build_info The running tend.\n# TYPE tend_build_info gauge\ntend_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}
