//! What the pages show, gathered from the store, the deployer and the metrics
//! store in as few queries as possible (one read transaction, one PromQL
//! query per signal for every service at once): pages stay fast with many
//! services.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tend_core::model::{Instance, InstanceState};
use tend_core::{ServiceName, TeamName};
use tend_manifest::ServiceSpec;
use tend_metrics::promql::{self, EvalOptions};
use tend_metrics::Tsdb;
use tend_store::Tx;

use crate::error::ApiError;

/// Points of one series: (time ms, value).
pub type Points = Vec<(i64, f64)>;

/// Router request counter (per service, instance, method and status class).
const REQUESTS: &str = "tend_http_requests_total";
/// Router latency histogram buckets.
const LATENCY: &str = "tend_http_request_duration_seconds_bucket";
/// Instance CPU seconds, as the platform's runtime collector records them
/// (`job="runtime"` keeps a service's own `process_*` series apart).
const CPU: &str = r#"process_cpu_seconds_total{job="runtime"}"#;
/// Instance resident memory in bytes, from the same collector.
const MEMORY: &str = r#"process_resident_memory_bytes{job="runtime"}"#;

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a service is doing, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Every desired instance is ready.
    Healthy,
    /// Some are ready, not all.
    Degraded,
    /// None is ready though some should be.
    Down,
    /// A deployment is in progress.
    Deploying,
    /// Stopped on purpose.
    Stopped,
    /// Never deployed.
    NotDeployed,
}

impl Health {
    /// The word shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
            Health::Deploying => "deploying",
            Health::Stopped => "stopped",
            Health::NotDeployed => "not deployed",
        }
    }
}

/// One row of the catalog.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    /// Name.
    pub name: ServiceName,
    /// Owner team.
    pub owner: TeamName,
    /// One line about it.
    pub description: String,
    /// Release it should run.
    pub release: Option<u32>,
    /// Ready instances.
    pub ready: u32,
    /// Instances it should have.
    pub desired: u32,
    /// In a word.
    pub health: Health,
}

fn health(
    ready: u32,
    desired: u32,
    stopped: bool,
    release: Option<u32>,
    deploying: bool,
) -> Health {
    if release.is_none() && !deploying {
        Health::NotDeployed
    } else if stopped {
        Health::Stopped
    } else if deploying {
        Health::Deploying
    } else if ready >= desired {
        Health::Healthy
    } else if ready > 0 {
        Health::Degraded
    } else {
        Health::Down
    }
}

/// The number of instances a service should have.
fn desired_count(tx: &Tx<'_>, name: &ServiceName) -> Result<(tend_store::Desired, u32), ApiError> {
    let desired = tx.desired(name)?;
    let spec_instances = match desired.release {
        Some(v) => serde_json::from_str::<ServiceSpec>(&tx.release(name, v)?.spec)
            .map(|s| s.run.instances)
            .unwrap_or(0),
        None => 0,
    };
    let n = if desired.stopped {
        0
    } else {
        desired.scale.unwrap_or(spec_instances)
    };
    Ok((desired, n))
}

/// Every service (or one team's) as catalog rows, in one read transaction.
pub fn catalog(tx: &Tx<'_>, team: Option<&TeamName>) -> Result<Vec<ServiceRow>, ApiError> {
    let mut ready: HashMap<String, u32> = HashMap::new();
    for i in tx.instances(None)? {
        if i.instance.state == InstanceState::Ready {
            *ready.entry(i.service.to_string()).or_default() += 1;
        }
    }
    let deploying: HashSet<String> = tx
        .active_deployments()?
        .into_iter()
        .map(|d| d.service)
        .collect();
    let mut rows = Vec::new();
    for r in tx.services(team)? {
        let (desired, n) = desired_count(tx, &r.name)?;
        let ready = ready.get(r.name.as_str()).copied().unwrap_or(0);
        rows.push(ServiceRow {
            health: health(
                ready,
                n,
                desired.stopped,
                desired.release,
                deploying.contains(r.name.as_str()),
            ),
            release: desired.release,
            ready,
            desired: n,
            name: r.name,
            owner: r.owner,
            description: r.description,
        });
    }
    Ok(rows)
}

/// Everything the service page shows from the store.
#[derive(Debug)]
pub struct ServiceDetail {
    /// The catalog row.
    pub row: ServiceRow,
    /// Its runbook, if the manifest names one.
    pub runbook: Option<String>,
    /// Extra host it is served on, if any.
    pub host: Option<String>,
    /// Releases, newest first, each with the state of its latest deployment.
    pub releases: Vec<(tend_core::model::Release, Option<String>)>,
    /// The latest deployment.
    pub deployment: Option<tend_core::model::Deployment>,
    /// Events, newest first.
    pub events: Vec<tend_core::model::Event>,
    /// Config var names, when the viewer may see them (owner team or admin).
    pub config_names: Option<Vec<String>>,
    /// Secret names (never values), under the same rule.
    pub secret_names: Option<Vec<String>>,
}

/// Reads a service's page from the store. `may_see_config`: the viewer acts
/// for the owner (the API shows config to the owner team only).
pub fn service_detail(
    tx: &Tx<'_>,
    name: &ServiceName,
    may_see_config: impl FnOnce(&TeamName) -> bool,
) -> Result<ServiceDetail, ApiError> {
    let rec = tx.service(name)?;
    let (desired, n) = desired_count(tx, name)?;
    let ready = tx
        .instances(Some(name))?
        .iter()
        .filter(|i| i.instance.state == InstanceState::Ready)
        .count() as u32;
    let deployments = tx.deployments(name, 50)?;
    let deploying = deployments.first().is_some_and(|d| !d.state.is_terminal());
    let mut last_state: BTreeMap<u32, String> = BTreeMap::new();
    // Newest first: the first deployment seen for a release is its latest.
    for d in &deployments {
        if let Some(v) = d.release {
            last_state
                .entry(v)
                .or_insert_with(|| format!("{:?}", d.state).to_lowercase());
        }
    }
    let releases = tx
        .releases(name)?
        .into_iter()
        .map(|r| {
            let s = last_state.get(&r.version).cloned();
            (r, s)
        })
        .collect();
    let spec: Option<ServiceSpec> = serde_json::from_str(&rec.spec).ok();
    let (config_names, secret_names) = if may_see_config(&rec.owner) {
        (
            Some(tx.config(name)?.vars.into_keys().collect()),
            Some(
                tx.secrets(name)?
                    .secrets
                    .into_iter()
                    .map(|s| s.name)
                    .collect(),
            ),
        )
    } else {
        (None, None)
    };
    Ok(ServiceDetail {
        runbook: spec.as_ref().and_then(|s| s.service.runbook.clone()),
        host: spec.as_ref().and_then(|s| s.http.host.clone()),
        row: ServiceRow {
            health: health(ready, n, desired.stopped, desired.release, deploying),
            release: desired.release,
            ready,
            desired: n,
            name: rec.name,
            owner: rec.owner,
            description: rec.description,
        },
        releases,
        deployment: deployments.into_iter().next(),
        events: tx.events(name, 40)?,
        config_names,
        secret_names,
    })
}

/// The golden signals of every service over the last `window`: request
/// rate, error ratio and p99 latency, by service name.
#[derive(Debug, Default)]
pub struct Golden {
    /// Requests per second.
    pub rate: HashMap<String, Points>,
    /// Fraction of 5xx answers.
    pub errors: HashMap<String, Points>,
    /// 99th percentile latency, seconds.
    pub p99: HashMap<String, Points>,
}

/// A range query's series by the value of `label`; a failed query is logged
/// and shows as no data (a page must not fail because a chart cannot be drawn).
fn by_label(
    db: &Tsdb,
    expr: &str,
    label: &str,
    t0: i64,
    t1: i64,
    step: i64,
) -> BTreeMap<String, Points> {
    let opts = EvalOptions {
        timeout: Duration::from_secs(5),
        ..EvalOptions::default()
    };
    match promql::range(db, expr, t0, t1, step, &opts) {
        Ok(m) => m
            .into_iter()
            .map(|s| (s.labels.get(label).unwrap_or("").to_string(), s.samples))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, expr, "dashboard query failed");
            BTreeMap::new()
        }
    }
}

/// `num / den` at the timestamps both have (a missing numerator is 0).
fn ratio(num: Option<&Points>, den: &Points) -> Points {
    let num: HashMap<i64, f64> = num.map(|n| n.iter().copied().collect()).unwrap_or_default();
    den.iter()
        .map(|&(t, d)| {
            let n = num.get(&t).copied().unwrap_or(0.0);
            (t, if d > 0.0 { n / d } else { f64::NAN })
        })
        .collect()
}

/// A rate window that spans at least a few scrapes and a step.
fn rate_window(step_ms: i64) -> String {
    format!("{}s", (step_ms / 1000).max(60))
}

/// Golden signals of every service from `t0` to `t1`.
pub fn golden(db: &Tsdb, t0: i64, t1: i64, step: i64) -> Golden {
    let w = rate_window(step);
    let rate = by_label(
        db,
        &format!("sum by (service) (rate({REQUESTS}[{w}]))"),
        "service",
        t0,
        t1,
        step,
    );
    let errs = by_label(
        db,
        &format!(r#"sum by (service) (rate({REQUESTS}{{code="5xx"}}[{w}]))"#),
        "service",
        t0,
        t1,
        step,
    );
    let p99 = by_label(
        db,
        &format!("histogram_quantile(0.99, sum by (service, le) (rate({LATENCY}[{w}])))"),
        "service",
        t0,
        t1,
        step,
    );
    Golden {
        errors: rate
            .iter()
            .map(|(s, den)| (s.clone(), ratio(errs.get(s), den)))
            .collect(),
        rate: rate.into_iter().collect(),
        p99: p99.into_iter().collect(),
    }
}

/// The charts of one service's page.
#[derive(Debug, Default)]
pub struct ServiceCharts {
    /// Requests per second by status class.
    pub requests: BTreeMap<String, Points>,
    /// Error ratio.
    pub errors: Points,
    /// Latency percentiles: (name, points).
    pub latency: Vec<(String, Points)>,
    /// CPU cores by instance.
    pub cpu: BTreeMap<String, Points>,
    /// Memory bytes by instance.
    pub memory: BTreeMap<String, Points>,
}

/// One service's charts from `t0` to `t1`.
pub fn service_charts(
    db: &Tsdb,
    service: &ServiceName,
    t0: i64,
    t1: i64,
    step: i64,
) -> ServiceCharts {
    let w = rate_window(step);
    // Service names are DNS labels: nothing in them needs quoting.
    let sel = format!(r#"service="{service}""#);
    let requests = by_label(
        db,
        &format!("sum by (code) (rate({REQUESTS}{{{sel}}}[{w}]))"),
        "code",
        t0,
        t1,
        step,
    );
    let total = by_label(
        db,
        &format!("sum(rate({REQUESTS}{{{sel}}}[{w}]))"),
        "",
        t0,
        t1,
        step,
    );
    let errors = total
        .values()
        .next()
        .map(|den| ratio(requests.get("5xx"), den))
        .unwrap_or_default();
    let latency = [("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")]
        .iter()
        .filter_map(|(name, q)| {
            by_label(
                db,
                &format!("histogram_quantile({q}, sum by (le) (rate({LATENCY}{{{sel}}}[{w}])))"),
                "",
                t0,
                t1,
                step,
            )
            .into_values()
            .next()
            .map(|p| (name.to_string(), p))
        })
        .collect();
    let cpu_sel = CPU.replace('}', &format!(",{sel}}}"));
    let mem_sel = MEMORY.replace('}', &format!(",{sel}}}"));
    ServiceCharts {
        cpu: by_label(
            db,
            &format!("sum by (instance) (rate({cpu_sel}[{w}]))"),
            "instance",
            t0,
            t1,
            step,
        ),
        memory: by_label(
            db,
            &format!("sum by (instance) ({mem_sel})"),
            "instance",
            t0,
            t1,
            step,
        ),
        requests,
        errors,
        latency,
    }
}

/// The latest value of each instance's CPU and memory, for the instances table.
pub fn instance_usage(db: &Tsdb, service: &ServiceName) -> HashMap<String, (f64, f64)> {
    let t1 = now_ms();
    let t0 = t1 - 60_000;
    let sel = format!(r#"service="{service}""#);
    let cpu_sel = CPU.replace('}', &format!(",{sel}}}"));
    let mem_sel = MEMORY.replace('}', &format!(",{sel}}}"));
    let last = |m: BTreeMap<String, Points>| -> HashMap<String, f64> {
        m.into_iter()
            .filter_map(|(k, p)| p.iter().rev().find(|x| x.1.is_finite()).map(|x| (k, x.1)))
            .collect()
    };
    let cpu = last(by_label(
        db,
        &format!("sum by (instance) (rate({cpu_sel}[1m]))"),
        "instance",
        t0,
        t1,
        15_000,
    ));
    let mem = last(by_label(
        db,
        &format!("sum by (instance) ({mem_sel})"),
        "instance",
        t0,
        t1,
        15_000,
    ));
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for (k, v) in cpu {
        out.entry(k).or_insert((f64::NAN, f64::NAN)).0 = v;
    }
    for (k, v) in mem {
        out.entry(k).or_insert((f64::NAN, f64::NAN)).1 = v;
    }
    out
}

/// How long an instance has run, short (`3m`, `2h 5m`, `4d 1h`).
pub fn uptime(i: &Instance, now_ms: i64) -> String {
    let Some(start) = i.started_at else {
        return "–".into();
    };
    if !matches!(
        i.state,
        InstanceState::Ready
            | InstanceState::Starting
            | InstanceState::Unhealthy
            | InstanceState::Draining
    ) {
        return "–".into();
    }
    ago((now_ms - start.as_millis()).max(0) / 1000)
}

/// Seconds as a short duration.
pub fn ago(s: i64) -> String {
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_treats_a_missing_numerator_as_zero() {
        let den = vec![(1, 10.0), (2, 0.0), (3, 4.0)];
        let num = vec![(3, 1.0)];
        let r = ratio(Some(&num), &den);
        assert_eq!(r[0], (1, 0.0));
        assert!(r[1].1.is_nan());
        assert_eq!(r[2], (3, 0.25));
    }

    #[test]
    fn health_in_a_word() {
        assert_eq!(health(2, 2, false, Some(1), false), Health::Healthy);
        assert_eq!(health(1, 2, false, Some(1), false), Health::Degraded);
        assert_eq!(health(0, 2, false, Some(1), false), Health::Down);
        assert_eq!(health(0, 0, true, Some(1), false), Health::Stopped);
        assert_eq!(health(0, 0, false, None, false), Health::NotDeployed);
        assert_eq!(health(1, 2, false, Some(1), true), Health::Deploying);
    }

    /// 50 services × 2 instances with half an hour of router metrics every
    /// 10 s (the default scrape interval): the catalog's three queries and a
    /// service's charts must leave room in the 100 ms page budget.
    #[test]
    fn golden_signals_of_fifty_services_are_quick() {
        use tend_metrics::{Labels, TsdbConfig};
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(TsdbConfig::new(dir.path())).unwrap();
        let t1 = now_ms();
        let t0 = t1 - 30 * 60_000;
        let les = [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
        ];
        let mut batch = Vec::new();
        for step in 0..180i64 {
            let t = t0 + step * 10_000;
            for s in 0..50 {
                for i in 0..2 {
                    let (svc, inst) = (format!("svc-{s}"), format!("svc-{s}-v1-{i}"));
                    let base = Labels::from_pairs(&[("service", &svc), ("instance", &inst)]);
                    let n = (step * 10 + s) as f64;
                    for (code, f) in [("2xx", 1.0), ("5xx", 0.05)] {
                        batch.push((
                            base.with("__name__", REQUESTS)
                                .with("method", "GET")
                                .with("code", code),
                            t,
                            n * f,
                        ));
                    }
                    for (k, le) in les.iter().enumerate() {
                        batch.push((
                            base.with("__name__", LATENCY).with("le", le),
                            t,
                            n * (k + 1) as f64 / les.len() as f64,
                        ));
                    }
                }
            }
            db.append(&batch).unwrap();
            batch.clear();
        }
        let started = std::time::Instant::now();
        let g = golden(&db, t0, t1, 30_000);
        let catalog = started.elapsed();
        assert_eq!(g.rate.len(), 50);
        assert_eq!(g.p99.len(), 50);
        let e = last_finite(&g.errors["svc-3"]);
        assert!((e - 0.05 / 1.05).abs() < 1e-6, "{e}");
        let started = std::time::Instant::now();
        let c = service_charts(&db, &ServiceName::parse("svc-3").unwrap(), t0, t1, 15_000);
        let service = started.elapsed();
        assert_eq!(c.latency.len(), 3);
        eprintln!("golden signals of 50 services: {catalog:?}; one service's charts: {service:?}");
        // Debug builds are several times slower than release; the bound is
        // for them on a busy machine.
        assert!(
            catalog < std::time::Duration::from_millis(400),
            "{catalog:?}"
        );
    }

    fn last_finite(p: &Points) -> f64 {
        p.iter()
            .rev()
            .find(|x| x.1.is_finite())
            .map(|x| x.1)
            .unwrap()
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(ago(42), "42s");
        assert_eq!(ago(125), "2m 5s");
        assert_eq!(ago(7500), "2h 5m");
        assert_eq!(ago(90_000), "1d 1h");
    }
}
