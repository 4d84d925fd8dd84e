//! The alerting loop: every interval, evaluate every service's rules,
//! record what fired and resolved as incidents, announce state changes,
//! run escalation, and deliver the queued notifications.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tend_core::incident::{
    on_call, EscalationTarget, Incident, IncidentContext, IncidentFilter, IncidentState,
};
use tend_core::model::{Channel, ChannelKind, Event, InstanceState};
use tend_core::{ServiceName, TeamName, Timestamp};
use tend_manifest::{ServiceSpec, Severity};
use tend_metrics::Tsdb;
use tend_store::{AlertUpsert, NewNotification, OutboxItem, Store, StoreError, Tx};

use crate::eval::{Change, RuleState};
use crate::notify::{self, Notice, NotifyEvent, RetryPolicy};
use crate::rules::{service_rules, Condition, Rule};
use crate::AlertError;

/// How far back an incident's "what changed" looks.
const CONTEXT_WINDOW: Duration = Duration::from_secs(30 * 60);
/// Error lines attached to an incident.
const CONTEXT_LOG_LINES: usize = 10;
/// Events attached to an incident.
const CONTEXT_EVENTS: usize = 30;
/// Deliveries running at once.
const MAX_DELIVERIES: usize = 16;

/// Settings of the alerting engine.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Time between two evaluations of every rule.
    pub interval: Duration,
    /// The API's base URL, for links in notifications.
    pub external_url: String,
    /// Where PagerDuty events go (PagerDuty's Events API v2 unless changed).
    pub pagerduty_url: String,
    /// Retries of a delivery.
    pub retry: RetryPolicy,
    /// Timeout of one delivery attempt.
    pub request_timeout: Duration,
    /// The SMTP relay of e-mail channels, if any.
    pub smtp: Option<crate::email::SmtpConfig>,
    /// An Alertmanager every alert is forwarded to as well (its base URL).
    pub alertmanager_url: Option<String>,
}

impl AlertConfig {
    /// Defaults: evaluate every 5 s.
    pub fn new(external_url: impl Into<String>) -> Self {
        Self {
            interval: Duration::from_secs(5),
            external_url: external_url.into(),
            pagerduty_url: notify::PAGERDUTY_EVENTS_URL.to_string(),
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(10),
            smtp: None,
            alertmanager_url: None,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What one evaluation reads from the store.
struct Snapshot {
    services: Vec<(ServiceSpec, bool)>,
    instances: HashMap<String, Vec<(String, InstanceState)>>,
    events: HashMap<String, Vec<Event>>,
}

fn snapshot(store: &Store) -> Result<Snapshot, StoreError> {
    store.read(|tx| {
        let mut services = Vec::new();
        let mut events = HashMap::new();
        for rec in tx.services(None)? {
            let Ok(spec) = serde_json::from_str::<ServiceSpec>(&rec.spec) else {
                tracing::warn!(service = %rec.name, "alerts skip a service whose spec cannot be read");
                continue;
            };
            let stopped = tx.desired(&rec.name).map(|d| d.stopped).unwrap_or(false);
            events.insert(rec.name.to_string(), tx.events(&rec.name, 200)?);
            services.push((spec, stopped));
        }
        let mut instances: HashMap<String, Vec<(String, InstanceState)>> = HashMap::new();
        for i in tx.instances(None)? {
            instances
                .entry(i.service.to_string())
                .or_default()
                .push((i.instance.id.clone(), i.instance.state));
        }
        Ok(Snapshot {
            services,
            instances,
            events,
        })
    })
}

/// Samples the engine brings up to the instant of each evaluation before it
/// evaluates: counters kept in this process (the router's), which would
/// otherwise reach the TSDB only at the next scrape, up to a whole scrape
/// interval after the traffic that should alert.
pub trait LiveSamples: Send + Sync {
    /// Appends the current values, stamped `at_ms`, to the TSDB (blocking).
    fn sample(&self, at_ms: i64);
}

/// Starts the engine on the current tokio runtime.
pub fn spawn(
    store: Arc<Store>,
    tsdb: Tsdb,
    logs: tend_logs::Logs,
    cfg: AlertConfig,
    live: Option<Arc<dyn LiveSamples>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = match reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .no_proxy()
            .build()
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "alerting disabled: no HTTP client");
                return;
            }
        };
        // Checked before the server starts (`Mailer::new`); a failure here
        // leaves e-mail deliveries failing with the reason.
        let mailer = cfg
            .smtp
            .as_ref()
            .map(|c| crate::email::Mailer::new(c, cfg.request_timeout).map_err(|e| e.to_string()));
        let mut engine = Engine {
            mailer: mailer.map(Arc::new),
            resolved: crate::forward::Resolved::default(),
            forwarding: Arc::new(tokio::sync::Semaphore::new(1)),
            store,
            tsdb,
            logs,
            cfg,
            http,
            live,
            states: HashMap::new(),
            deliveries: Arc::new(tokio::sync::Semaphore::new(MAX_DELIVERIES)),
            first_eval: None,
        };
        engine.restore().await;
        let mut tick = tokio::time::interval(engine.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = engine.tick().await {
                tracing::warn!(error = %e, "alert evaluation failed");
            }
        }
    })
}

struct Engine {
    store: Arc<Store>,
    tsdb: Tsdb,
    logs: tend_logs::Logs,
    cfg: AlertConfig,
    http: reqwest::Client,
    live: Option<Arc<dyn LiveSamples>>,
    /// Alert state per rule key (`service/rule`).
    states: HashMap<String, RuleState>,
    deliveries: Arc<tokio::sync::Semaphore>,
    /// Time of the first evaluation (ms): evaluations are on its grid.
    first_eval: Option<i64>,
    /// The SMTP transport, or why there is none; `None` without `smtp`.
    mailer: Option<Arc<Result<crate::email::Mailer, String>>>,
    /// Recently resolved alerts, still sent to the Alertmanager.
    resolved: crate::forward::Resolved,
    /// One forwarding request at a time: a slow Alertmanager skips ticks.
    forwarding: Arc<tokio::sync::Semaphore>,
}

impl Engine {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, AlertError> + Send + 'static,
    ) -> Result<T, AlertError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| AlertError::Query(format!("task failed: {e}")))?
    }

    /// Picks up where a previous run stopped: alerts still firing in open
    /// incidents are firing again (so they resolve when their condition is
    /// gone), and deliveries cut off midway are queued again.
    async fn restore(&mut self) {
        let open = self
            .blocking(|s| {
                Ok(s.write(|tx| {
                    tx.requeue_interrupted_notifications()?;
                    tx.incidents(&IncidentFilter {
                        limit: 10_000,
                        ..Default::default()
                    })
                })?)
            })
            .await;
        let Ok(open) = open else { return };
        for inc in open {
            for a in inc.alerts.into_iter().filter(|a| a.status == "firing") {
                let key = format!("{}/{}", inc.service, a.name);
                self.states.entry(key).or_default().restore_firing(
                    a.labels,
                    a.annotations,
                    a.value,
                    a.starts_at.as_millis(),
                );
            }
        }
    }

    async fn tick(&mut self) -> Result<(), AlertError> {
        // Like Prometheus, evaluate at instants on a fixed grid (the first
        // evaluation plus whole intervals), so a late-running tick does not
        // make `for` come out one interval longer.
        let step = (self.cfg.interval.as_millis() as i64).max(1);
        let wall = now_ms();
        let first = *self.first_eval.get_or_insert(wall);
        let now = first + ((wall - first) as f64 / step as f64).round() as i64 * step;
        if let Some(live) = self.live.clone() {
            let _ = tokio::task::spawn_blocking(move || live.sample(now)).await;
        }
        let snap = self.blocking(|s| Ok(snapshot(s)?)).await?;
        let mut rules = Vec::new();
        for (spec, stopped) in &snap.services {
            match service_rules(spec) {
                Ok(r) => rules.extend(r.into_iter().map(|r| (r, *stopped))),
                Err(e) => tracing::warn!(service = %spec.name(), error = %e, "alert rules skipped"),
            }
        }
        let keys: HashSet<String> = rules.iter().map(|(r, _)| r.key()).collect();
        let mut changes: Vec<(Rule, Change)> = Vec::new();
        let mut alerts_series = Vec::new();
        for (rule, stopped) in rules {
            let result = match self.condition(&rule, stopped, &snap, now).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(rule = %rule.key(), error = %e, "alert rule evaluation failed");
                    continue;
                }
            };
            let state = self.states.entry(rule.key()).or_default();
            for c in state.apply(&rule, result, now) {
                changes.push((rule.clone(), c));
            }
            for a in state.alerts() {
                let mut l = tend_metrics::Labels::empty().with("__name__", "ALERTS");
                for (k, v) in &a.labels {
                    l = l.with(k, v);
                }
                alerts_series.push((l.with("alertstate", a.state.as_str()), now, 1.0));
            }
        }
        // Rules that no longer exist (service deleted, rule removed): their
        // firing alerts resolve.
        let gone: Vec<String> = self
            .states
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        let mut resolved_orphans = Vec::new();
        for k in gone {
            if let Some(state) = self.states.remove(&k) {
                for a in state.alerts() {
                    if a.state == crate::eval::AlertState::Firing {
                        resolved_orphans.push(a.clone());
                    }
                }
            }
        }
        if self.cfg.alertmanager_url.is_some() {
            for (_, c) in &changes {
                if let Change::Resolved(a) = c {
                    self.resolved.add(a.clone(), now);
                }
            }
            for a in &resolved_orphans {
                self.resolved.add(a.clone(), now);
            }
            self.forward(now);
        }
        if !alerts_series.is_empty() {
            let db = self.tsdb.clone();
            let _ = tokio::task::spawn_blocking(move || db.append(&alerts_series)).await;
        }
        self.record(changes, resolved_orphans).await?;
        let cfg = self.cfg.clone();
        self.blocking(move |s| {
            s.write(|tx| announce(tx, &cfg))?;
            s.write(|tx| escalate(tx, &cfg))?;
            Ok(())
        })
        .await?;
        self.deliver().await
    }

    /// The condition's result: (labels, value) per element.
    async fn condition(
        &self,
        rule: &Rule,
        stopped: bool,
        snap: &Snapshot,
        now: i64,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>, AlertError> {
        match &rule.condition {
            Condition::PromQl(expr) => {
                let db = self.tsdb.clone();
                let expr = expr.clone();
                let value = tokio::task::spawn_blocking(move || {
                    tend_metrics::promql::instant(
                        &db,
                        &expr,
                        now,
                        &tend_metrics::promql::EvalOptions {
                            timeout: Duration::from_secs(10),
                            ..Default::default()
                        },
                    )
                })
                .await
                .map_err(|e| AlertError::Query(e.to_string()))?
                .map_err(|e| AlertError::Query(e.to_string()))?;
                match value {
                    tend_metrics::promql::Value::Vector(samples) => Ok(samples
                        .into_iter()
                        .map(|s| {
                            let labels = s
                                .labels
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect();
                            (labels, s.v)
                        })
                        .collect()),
                    _ => Err(AlertError::Query(
                        "an alerting expression must return an instant vector".into(),
                    )),
                }
            }
            Condition::Logs {
                pattern,
                window,
                threshold,
            } => {
                let logs = self.logs.clone();
                let q = tend_logs::Query {
                    service: rule.service.to_string(),
                    since: Some(
                        UNIX_EPOCH + Duration::from_millis(now as u64).saturating_sub(*window),
                    ),
                    grep: Some(tend_logs::Grep::Regex(pattern.clone())),
                    ..Default::default()
                };
                let n = tokio::task::spawn_blocking(move || logs.query(&q).map(|l| l.len()))
                    .await
                    .map_err(|e| AlertError::Query(e.to_string()))?
                    .map_err(|e| AlertError::Query(e.to_string()))?;
                Ok(if n >= *threshold as usize {
                    vec![(BTreeMap::new(), n as f64)]
                } else {
                    vec![]
                })
            }
            Condition::Events {
                kinds,
                window,
                threshold,
            } => {
                let since = now - window.as_millis() as i64;
                let n = snap
                    .events
                    .get(rule.service.as_str())
                    .map(|evs| {
                        evs.iter()
                            .filter(|e| {
                                e.time.as_millis() > since && kinds.contains(&e.kind.as_str())
                            })
                            .count()
                    })
                    .unwrap_or(0);
                Ok(if n >= *threshold as usize {
                    vec![(BTreeMap::new(), n as f64)]
                } else {
                    vec![]
                })
            }
            Condition::InstancesNotReady => {
                if stopped {
                    return Ok(vec![]);
                }
                // One element for the service, not one per instance: an
                // instance that fails its checks is replaced by a new one
                // (a new id, starting), and the gap must not start over.
                let not_ready = snap
                    .instances
                    .get(rule.service.as_str())
                    .map(|list| {
                        list.iter()
                            .filter(|(_, s)| {
                                !matches!(s, InstanceState::Ready | InstanceState::Draining)
                            })
                            .count()
                    })
                    .unwrap_or(0);
                Ok(if not_ready > 0 {
                    vec![(BTreeMap::new(), not_ready as f64)]
                } else {
                    vec![]
                })
            }
        }
    }

    /// Writes fired and resolved alerts into incidents.
    async fn record(
        &self,
        changes: Vec<(Rule, Change)>,
        orphans: Vec<crate::eval::Alert>,
    ) -> Result<(), AlertError> {
        let mut fired: Vec<(Rule, crate::eval::Alert)> = Vec::new();
        let mut resolved: Vec<(String, String)> = Vec::new();
        for (rule, c) in changes {
            match c {
                Change::Fired(a) => fired.push((rule, a)),
                Change::Resolved(a) => resolved.push((rule.service.to_string(), a.fingerprint)),
                Change::Pending(_) | Change::StillFiring(_) => {}
            }
        }
        for a in orphans {
            if let Some(s) = a.labels.get("service") {
                resolved.push((s.clone(), a.fingerprint.clone()));
            }
        }
        if fired.is_empty() && resolved.is_empty() {
            return Ok(());
        }
        let logs = self.logs.clone();
        self.blocking(move |s| {
            for (rule, a) in fired {
                // The context is gathered only when the alert opens an incident.
                let open = s.read(|tx| tx.open_incident(rule.service.as_str()))?;
                let ctx = match open {
                    Some(_) => IncidentContext::default(),
                    None => context(s, &logs, &rule)?,
                };
                let upsert = AlertUpsert {
                    fingerprint: a.fingerprint.clone(),
                    name: rule.name.clone(),
                    severity: rule.severity.as_str().to_string(),
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    value: a.value,
                    starts_at: Timestamp::from_millis(a.fired_at.unwrap_or(a.active_at)),
                };
                s.write(|tx| tx.record_firing(&rule.service, &rule.team, &upsert, || ctx))?;
            }
            for (service, fp) in resolved {
                let Ok(service) = ServiceName::parse(&service) else {
                    continue;
                };
                s.write(|tx| tx.record_resolved(&service, &fp))?;
            }
            Ok(())
        })
        .await
    }

    /// Sends every firing and recently resolved alert to the Alertmanager,
    /// in the background.
    fn forward(&mut self, now: i64) {
        let Some(base) = &self.cfg.alertmanager_url else {
            return;
        };
        let firing: Vec<&crate::eval::Alert> = self
            .states
            .values()
            .flat_map(|s| s.alerts())
            .filter(|a| a.state == crate::eval::AlertState::Firing)
            .collect();
        let resolved = self.resolved.current(now, &firing);
        if firing.is_empty() && resolved.is_empty() {
            return;
        }
        let body = crate::forward::body(
            &firing,
            &resolved,
            now,
            self.cfg.interval,
            &self.cfg.external_url,
        )
        .to_string();
        let Ok(permit) = self.forwarding.clone().try_acquire_owned() else {
            return;
        };
        let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        let http = self.http.clone();
        tokio::spawn(async move {
            let a = notify::post_once(&http, &url, &body).await;
            if let Some(e) = a.error {
                tracing::warn!(url = %url, error = %e, "forwarding alerts to Alertmanager failed");
            }
            drop(permit);
        });
    }

    /// Hands queued notifications to delivery tasks.
    async fn deliver(&self) -> Result<(), AlertError> {
        let free = self.deliveries.available_permits() as u32;
        if free == 0 {
            return Ok(());
        }
        let items = self
            .blocking(move |s| Ok(s.write(|tx| tx.claim_notifications(free))?))
            .await?;
        for item in items {
            let Ok(permit) = self.deliveries.clone().acquire_owned().await else {
                return Ok(());
            };
            let http = self.http.clone();
            let store = self.store.clone();
            let cfg = self.cfg.clone();
            let mailer = self.mailer.clone();
            tokio::spawn(async move {
                deliver_one(&http, mailer.as_deref(), &store, &cfg, item).await;
                drop(permit);
            });
        }
        Ok(())
    }
}

/// The context of a new incident: what changed, recent errors, runbook, rollback.
fn context(
    store: &Store,
    logs: &tend_logs::Logs,
    rule: &Rule,
) -> Result<IncidentContext, AlertError> {
    let since = now_ms() - CONTEXT_WINDOW.as_millis() as i64;
    let changes: Vec<Event> = store.read(|tx| tx.events(&rule.service, 200))?;
    let mut changes: Vec<Event> = changes
        .into_iter()
        .filter(|e| e.time.as_millis() >= since && !e.kind.starts_with("incident."))
        .collect();
    if changes.len() > CONTEXT_EVENTS {
        changes.drain(..changes.len() - CONTEXT_EVENTS);
    }
    let q = tend_logs::Query {
        service: rule.service.to_string(),
        since: Some(SystemTime::now() - CONTEXT_WINDOW),
        min_level: Some(tend_logs::Level::Error),
        limit: CONTEXT_LOG_LINES,
        ..Default::default()
    };
    let error_logs = logs
        .query(&q)
        .map(|lines| lines.into_iter().map(|l| l.raw).collect())
        .unwrap_or_default();
    Ok(IncidentContext {
        changes,
        error_logs,
        runbook: rule.runbook.clone(),
        rollback: format!("tend rollback {}", rule.service),
    })
}

/// Channels to notify, with the team each belongs to.
type Recipients = Vec<(TeamName, Channel)>;

/// The channels targets name, and the targets that name nothing. `oncall`
/// is the owning team's member on call now, if anyone.
fn resolve_targets(
    tx: &Tx<'_>,
    owner: &TeamName,
    targets: &[EscalationTarget],
    oncall: Option<&str>,
) -> Result<(Recipients, Vec<String>), StoreError> {
    let mut out: Vec<(TeamName, Channel)> = Vec::new();
    let mut missing = Vec::new();
    let push = |team: &TeamName, c: Channel, out: &mut Vec<(TeamName, Channel)>| {
        if !out.iter().any(|(t, x)| t == team && x.name == c.name) {
            out.push((team.clone(), c));
        }
    };
    for t in targets {
        match t {
            EscalationTarget::Team => {
                for c in tx.team(owner)?.channels {
                    push(owner, c, &mut out);
                }
            }
            EscalationTarget::Oncall => {
                let channels = tx.team(owner)?.channels;
                let own: Vec<Channel> = channels
                    .iter()
                    .filter(
                        |c| matches!((&c.member, oncall), (Some(m), Some(o)) if m.as_str() == o),
                    )
                    .cloned()
                    .collect();
                if own.is_empty() {
                    // Nobody to reach personally: the page must still land.
                    missing.push(match oncall {
                        Some(m) => {
                            format!("a channel of `{m}` (on call; told the team's shared channels)")
                        }
                        None => "someone on call (no rotation; told the team's shared channels)"
                            .to_string(),
                    });
                    channels
                        .into_iter()
                        .filter(|c| c.member.is_none())
                        .for_each(|c| push(owner, c, &mut out));
                } else {
                    own.into_iter().for_each(|c| push(owner, c, &mut out));
                }
            }
            EscalationTarget::Channel { name } => {
                match tx
                    .team(owner)?
                    .channels
                    .into_iter()
                    .find(|c| &c.name == name)
                {
                    Some(c) => push(owner, c, &mut out),
                    None => missing.push(format!("channel `{name}` of team `{owner}`")),
                }
            }
            EscalationTarget::OtherTeam { name } => match tx.team(name) {
                Ok(team) => team
                    .channels
                    .into_iter()
                    .for_each(|c| push(name, c, &mut out)),
                Err(StoreError::NotFound { .. }) => missing.push(format!("team `{name}`")),
                Err(e) => return Err(e),
            },
        }
    }
    Ok((out, missing))
}

/// Queues `event` about `inc` to each channel; returns "team/channel (kind)" of each.
fn enqueue(
    tx: &mut Tx<'_>,
    cfg: &AlertConfig,
    inc: &Incident,
    event: NotifyEvent,
    channels: &[(TeamName, Channel)],
    oncall: Option<String>,
    actor: Option<String>,
) -> Result<Vec<String>, StoreError> {
    let ctx = tx.incident_context(inc.id)?;
    let mut told = Vec::new();
    for (team, c) in channels {
        let notice = Notice {
            incident: inc,
            context: &ctx,
            event,
            receiver: format!("{team}/{}", c.name),
            oncall: oncall.clone(),
            actor: actor.clone(),
            external_url: &cfg.external_url,
        };
        let Some(body) = notify::payload(c.kind, &c.target, &notice) else {
            continue;
        };
        tx.enqueue_notification(&NewNotification {
            incident_id: inc.id,
            team: team.to_string(),
            channel: c.name.to_string(),
            kind: c.kind.as_str().to_string(),
            target: c.target.clone(),
            event: event.as_str().to_string(),
            payload: body.to_string(),
        })?;
        told.push(format!("{team}/{} ({})", c.name, c.kind.as_str()));
    }
    Ok(told)
}

fn oncall_now(tx: &Tx<'_>, team: &TeamName) -> Result<Option<String>, StoreError> {
    let rotation = tx.rotation(team)?;
    let overrides = tx.overrides(team)?;
    let oc = on_call(
        team,
        rotation.as_ref(),
        &overrides,
        tx.escalation_policy(team)?,
        tx.now(),
    );
    Ok(oc.member.map(|m| m.to_string()))
}

/// Tells channels about incidents whose state they have not heard of:
/// a new `page` incident starts escalation; `ticket`/`info` go to the
/// team's shared channels except paging ones (no one is woken for them);
/// acks and resolutions go to every channel that was told of the incident.
fn announce(tx: &mut Tx<'_>, cfg: &AlertConfig) -> Result<(), StoreError> {
    for change in tx.unannounced_incidents()? {
        let inc = change.incident;
        match (inc.state, change.notified) {
            (IncidentState::Triggered, None) => {
                if inc.severity == Severity::Page.as_str() {
                    let policy = tx.escalation_policy(&inc.team)?;
                    let first = policy.levels.first().map(|l| l.delay_secs).unwrap_or(0);
                    let due = inc.opened_at.saturating_add(Duration::from_secs(first));
                    tx.set_escalation(inc.id, 0, 0, Some(due))?;
                } else {
                    let channels: Vec<(TeamName, Channel)> = tx
                        .team(&inc.team)?
                        .channels
                        .into_iter()
                        .filter(|c| c.kind != ChannelKind::Pagerduty && c.member.is_none())
                        .map(|c| (inc.team.clone(), c))
                        .collect();
                    let oncall = oncall_now(tx, &inc.team)?;
                    let told =
                        enqueue(tx, cfg, &inc, NotifyEvent::Trigger, &channels, oncall, None)?;
                    let detail = if told.is_empty() {
                        format!(
                            "{} incident: team `{}` has no channel to notify",
                            inc.severity, inc.team
                        )
                    } else {
                        format!(
                            "{} incident, not paging: notified {}",
                            inc.severity,
                            told.join(", ")
                        )
                    };
                    tx.append_timeline(inc.id, "notified", None, &detail)?;
                }
            }
            (IncidentState::Acknowledged | IncidentState::Resolved, notified)
                if notified.is_some() =>
            {
                let event = if inc.state == IncidentState::Resolved {
                    NotifyEvent::Resolve
                } else {
                    NotifyEvent::Acknowledge
                };
                {
                    let told_before = tx.triggered_channels(inc.id)?;
                    let mut channels = Vec::new();
                    for (team, name) in told_before {
                        let Ok(team) = TeamName::parse(&team) else {
                            continue;
                        };
                        if let Ok(t) = tx.team(&team) {
                            if let Some(c) =
                                t.channels.into_iter().find(|c| c.name.as_str() == name)
                            {
                                channels.push((team, c));
                            }
                        }
                    }
                    let actor = match event {
                        NotifyEvent::Acknowledge => inc.acked_by.clone(),
                        _ => inc.resolved_by.clone(),
                    };
                    let told = enqueue(tx, cfg, &inc, event, &channels, None, actor)?;
                    if !told.is_empty() {
                        tx.append_timeline(
                            inc.id,
                            "notified",
                            None,
                            &format!("told {} that it is {}", told.join(", "), inc.state.as_str()),
                        )?;
                    }
                }
            }
            _ => {}
        }
        tx.mark_announced(inc.id, inc.state)?;
    }
    Ok(())
}

/// Notifies the next level of every triggered `page` incident that is due.
fn escalate(tx: &mut Tx<'_>, cfg: &AlertConfig) -> Result<(), StoreError> {
    for (inc, reached, round) in tx.due_escalations()? {
        let policy = tx.escalation_policy(&inc.team)?;
        let step = if reached == 0 {
            (!policy.levels.is_empty()).then_some((0usize, round))
        } else {
            policy.next(reached as usize - 1, round)
        };
        let Some((level, round)) = step else {
            tx.set_escalation(inc.id, reached, round, None)?;
            continue;
        };
        let targets = policy.levels[level].targets.clone();
        let oncall = oncall_now(tx, &inc.team)?;
        let (channels, missing) = resolve_targets(tx, &inc.team, &targets, oncall.as_deref())?;
        let told = enqueue(
            tx,
            cfg,
            &inc,
            NotifyEvent::Trigger,
            &channels,
            oncall.clone(),
            None,
        )?;
        let who = match &oncall {
            Some(m) => format!("on call: {m}; "),
            None => String::new(),
        };
        let mut detail = format!(
            "level {} ({}): {who}notified {}",
            level + 1,
            targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if told.is_empty() {
                "nobody".to_string()
            } else {
                told.join(", ")
            }
        );
        if !missing.is_empty() {
            detail.push_str(&format!("; not found: {}", missing.join(", ")));
        }
        let kind = if reached == 0 && round == 0 {
            "notified"
        } else {
            "escalated"
        };
        tx.append_timeline(inc.id, kind, None, &detail)?;
        let next = policy.next(level, round).map(|(l, _)| {
            tx.now()
                .saturating_add(Duration::from_secs(policy.levels[l].delay_secs))
        });
        tx.set_escalation(inc.id, level as u32 + 1, round, next)?;
    }
    Ok(())
}

/// Delivers one notification, retrying with backoff, logging each attempt.
async fn deliver_one(
    http: &reqwest::Client,
    mailer: Option<&Result<crate::email::Mailer, String>>,
    store: &Arc<Store>,
    cfg: &AlertConfig,
    item: OutboxItem,
) {
    let kind = ChannelKind::parse(&item.kind);
    let url = match kind {
        Some(ChannelKind::Pagerduty) => Some(cfg.pagerduty_url.clone()),
        Some(ChannelKind::Webhook | ChannelKind::Slack) => Some(item.target.clone()),
        Some(ChannelKind::Email) | None => None,
    };
    let mut attempt_no = item.attempts;
    loop {
        let fail = |error: String| notify::Attempt {
            status: None,
            error: Some(error),
            retryable: false,
        };
        let attempt = match (&url, kind) {
            (Some(url), _) => notify::post_once(http, url, &item.payload).await,
            (None, Some(ChannelKind::Email)) => match mailer {
                Some(Ok(m)) => m.send_once(&item.target, &item.payload).await,
                Some(Err(e)) => fail(e.clone()),
                None => fail(
                    "e-mail channels need an SMTP relay: start the server with --smtp-url".into(),
                ),
            },
            (None, _) => fail(format!(
                "{} channels cannot be delivered by this tend",
                item.kind
            )),
        };
        attempt_no += 1;
        let done =
            attempt.error.is_none() || !attempt.retryable || attempt_no >= cfg.retry.attempts;
        let failed = done && attempt.error.is_some();
        let s = store.clone();
        let (id, incident, channel) = (item.id, item.incident_id, item.channel.clone());
        let a = attempt.clone();
        let _ = tokio::task::spawn_blocking(move || {
            s.write(|tx| {
                tx.record_attempt(id, a.status, a.error.as_deref(), done)?;
                if failed {
                    tx.append_timeline(
                        incident,
                        "delivery.failed",
                        None,
                        &format!(
                            "notification #{id} to {channel} failed after {attempt_no} attempt(s): {}",
                            a.error.as_deref().unwrap_or("")
                        ),
                    )?;
                    // Nobody heard of it: the next level should.
                    tx.hurry_escalation(incident)?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await;
        if done {
            return;
        }
        tokio::time::sleep(notify::backoff(&cfg.retry, attempt_no)).await;
    }
}
