//! The typed, validated form of a `tend.toml`.
//!
//! Every value here has already been checked by the parser, so consumers (the
//! server, the runtime, the deploy controller) never re-validate. Durations
//! serialize as humantime strings (`"10s"`) so the JSON stays readable; sizes
//! serialize as integer bytes so nobody has to parse units twice.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tend_core::{ServiceName, TeamName};
use utoipa::ToSchema;

use crate::duration::{serde_duration, serde_opt_duration};

/// Default `[run] instances`.
pub const DEFAULT_INSTANCES: u32 = 1;
/// Most instances one service may ask for.
pub const MAX_INSTANCES: u32 = 100;
/// Default `[run] grace_period`: time between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Default `[health] interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default `[health] timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `[health] healthy_threshold`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
/// Default `[health] unhealthy_threshold`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default `[health] start_period`.
pub const DEFAULT_START_PERIOD: Duration = Duration::from_secs(30);
/// Default `[deploy] max_surge`.
pub const DEFAULT_MAX_SURGE: u32 = 1;
/// Default `[deploy] max_unavailable`.
pub const DEFAULT_MAX_UNAVAILABLE: u32 = 0;
/// Default `[deploy] verify`.
pub const DEFAULT_VERIFY: Duration = Duration::from_secs(10);
/// Default `[deploy] healthy_deadline`.
pub const DEFAULT_HEALTHY_DEADLINE: Duration = Duration::from_secs(60);

/// Shortest `[metrics] interval`.
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `[metrics] interval`.
pub const MAX_METRICS_INTERVAL: Duration = Duration::from_secs(3600);

/// A whole, valid `tend.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSpec {
    /// `[service]`: identity and ownership.
    pub service: ServiceSection,
    /// `[build]`: how to build, if the service needs building.
    pub build: Option<BuildSection>,
    /// `[run]`: how to start an instance.
    pub run: RunSection,
    /// `[health]`: how to tell an instance is healthy; `None` means "running is healthy".
    pub health: Option<HealthSection>,
    /// `[http]`: how the router reaches the service (defaults when absent).
    pub http: HttpSection,
    /// `[deploy]`: how a new release replaces the old one (defaults when absent).
    pub deploy: DeploySection,
    /// `[env]`: environment variables given to every instance.
    pub env: BTreeMap<String, String>,
    /// `[[alerts]]`: the service's own alert rules.
    pub alerts: Vec<AlertRule>,
    /// `[metrics]`: where to scrape the service's own metrics; `None`: not scraped.
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// `[alert_defaults]`: thresholds of the alerts every service gets without a rule.
    #[serde(default)]
    pub alert_defaults: AlertDefaults,
    /// `[secrets]`: the secrets a deploy needs (values are set with `tend secrets`).
    #[serde(default)]
    pub secrets: SecretsSection,
}

/// `[secrets]`: which secrets the service cannot run without.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretsSection {
    /// Names that must be set (`tend secrets set`) before a deploy builds.
    #[serde(default)]
    pub required: Vec<String>,
}

impl ServiceSpec {
    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.service.name
    }

    /// The team that owns (and is paged for) the service.
    pub fn owner(&self) -> &TeamName {
        &self.service.owner
    }
}

/// `[service]`: who the service is and who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSection {
    /// The service's name, a DNS label unique on the platform.
    pub name: ServiceName,
    /// The owning team, paged for the service.
    pub owner: TeamName,
    /// A one-line description for people.
    #[serde(default)]
    pub description: String,
    /// Where the runbook lives: a URL or a path in the repository.
    pub runbook: Option<String>,
}

/// `[build]`: how to turn the source into something runnable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildSection {
    /// Shell command run in the service's directory.
    pub command: String,
}

/// `[run]`: how to start one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunSection {
    /// Shell command that starts an instance; it must listen on `$PORT`.
    pub command: String,
    /// How many instances to run (0 to 100).
    pub instances: u32,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "10s")]
    pub grace_period: Duration,
    /// Memory limit in bytes, if any.
    pub memory: Option<u64>,
    /// CPU limit in cores (e.g. 0.5), if any.
    pub cpus: Option<f64>,
}

/// `[health]`: the health check of each instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthSection {
    /// What to probe.
    pub check: HealthCheck,
    /// Time between two probes.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "2s")]
    pub interval: Duration,
    /// How long one probe may take before it counts as failed.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "1s")]
    pub timeout: Duration,
    /// Consecutive successes that make an instance healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make an instance unhealthy.
    pub unhealthy_threshold: u32,
    /// Time after start during which failures do not count.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "30s")]
    pub start_period: Duration,
}

/// The one probe a `[health]` section defines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthCheck {
    /// `GET http://127.0.0.1:$PORT{path}` must answer 2xx or 3xx.
    Http {
        /// Request path, starting with `/`.
        path: String,
    },
    /// A TCP connection to `$PORT` must succeed.
    Tcp,
    /// A command run next to the instance must exit 0.
    Exec {
        /// Shell command.
        command: String,
    },
}

/// `[http]`: how the router sends traffic to the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HttpSection {
    /// Host name routed to the service; `None` means `<service>.localhost`.
    pub host: Option<String>,
    /// Path prefixes routed to the service.
    pub paths: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            host: None,
            paths: vec!["/".to_string()],
        }
    }
}

/// `[deploy]`: how a release is rolled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploySection {
    /// Rollout strategy.
    pub strategy: DeployStrategy,
    /// Extra instances that may run above `instances` during a rollout.
    pub max_surge: u32,
    /// Instances that may be missing below `instances` during a rollout.
    pub max_unavailable: u32,
    /// Roll back by itself when the new release does not become healthy.
    pub auto_rollback: bool,
    /// How long a new instance has to become healthy.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "60s")]
    pub healthy_deadline: Duration,
    /// How long every new instance must keep running after the rollout before
    /// the deployment succeeds; a crash in this window rolls back.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "10s")]
    pub verify: Duration,
}

impl Default for DeploySection {
    fn default() -> Self {
        Self {
            strategy: DeployStrategy::Rolling,
            max_surge: DEFAULT_MAX_SURGE,
            max_unavailable: DEFAULT_MAX_UNAVAILABLE,
            auto_rollback: true,
            healthy_deadline: DEFAULT_HEALTHY_DEADLINE,
            verify: DEFAULT_VERIFY,
        }
    }
}

/// How a new release replaces the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployStrategy {
    /// Replace instances a few at a time, keeping capacity.
    #[default]
    Rolling,
}

/// `[metrics]`: the service serves Prometheus metrics, scrape them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricsSection {
    /// Path of each instance's metrics endpoint (Prometheus text or OpenMetrics).
    pub path: String,
    /// Time between two scrapes; `None`: the server's `--scrape-interval`.
    #[serde(default, with = "serde_opt_duration")]
    #[schema(value_type = Option<String>, example = "10s")]
    pub interval: Option<Duration>,
}

/// One `[[alerts]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlertRule {
    /// Rule name, a DNS label unique within the manifest.
    pub name: String,
    /// PromQL expression; the rule fires while it returns samples.
    pub expr: String,
    /// How long `expr` must hold before the alert fires.
    #[serde(rename = "for", with = "serde_duration")]
    #[schema(value_type = String, example = "2m")]
    pub for_: Duration,
    /// How long the alert keeps firing after `expr` stops holding.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "0s")]
    pub keep_firing_for: Duration,
    /// How loudly to notify the owning team.
    pub severity: Severity,
    /// One-line summary for the notification.
    pub summary: Option<String>,
    /// Longer description for the incident.
    pub description: Option<String>,
    /// Extra labels attached to the alert.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A log-based condition instead of `expr` (then `expr` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogCondition>,
}

/// A log-based alert condition: at least `threshold` lines matching `pattern`
/// within the last `window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogCondition {
    /// Regular expression matched anywhere in each raw line.
    pub pattern: String,
    /// How far back lines are counted.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "5m")]
    pub window: Duration,
    /// Matching lines in the window that make the condition hold.
    pub threshold: u32,
}

/// Default `[[alerts]] window` of a log-based rule.
pub const DEFAULT_LOG_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Names of the alerts every service gets without writing a rule, as
/// `[alert_defaults] disable` accepts them.
pub const DEFAULT_ALERT_NAMES: [&str; 6] = [
    "crash-looping",
    "instances-not-ready",
    "deploy-failed",
    "high-error-rate",
    "high-latency",
    "memory-near-limit",
];

/// `[alert_defaults]`: the thresholds of the default alerts, and which are off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct AlertDefaults {
    /// Default alerts turned off, by name (see [`DEFAULT_ALERT_NAMES`]).
    pub disable: Vec<String>,
    /// Crashes within `crash_window` that mean the service is crash looping.
    pub crash_restarts: u32,
    /// The window crashes are counted in.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "5m")]
    pub crash_window: Duration,
    /// How long an instance may stay not ready before it alerts.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "2m")]
    pub not_ready_for: Duration,
    /// Share of 5xx answers (0 to 1) above which the service alerts.
    pub error_ratio: f64,
    /// Requests per second the service must get for the error ratio to count.
    pub error_min_rps: f64,
    /// How long the error ratio must stay high before it alerts.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "10s")]
    pub error_for: Duration,
    /// p99 latency this many times its own baseline (the hour before) alerts.
    pub latency_factor: f64,
    /// How long p99 latency must stay high before it alerts.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "5m")]
    pub latency_for: Duration,
    /// The window p99 latency is measured over.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "5m")]
    pub latency_window: Duration,
    /// The window of the baseline p99, just before `latency_window`.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "1h")]
    pub latency_baseline: Duration,
    /// Memory use, as a share of the `[run] memory` limit, that alerts.
    pub memory_ratio: f64,
    /// How long memory use must stay high before it alerts.
    #[serde(with = "serde_duration")]
    #[schema(value_type = String, example = "1m")]
    pub memory_for: Duration,
}

impl Default for AlertDefaults {
    fn default() -> Self {
        Self {
            disable: Vec::new(),
            crash_restarts: 3,
            crash_window: Duration::from_secs(5 * 60),
            not_ready_for: Duration::from_secs(2 * 60),
            error_ratio: 0.05,
            // At least a request per second: one failed request in a minute
            // stays under 5 %, so a single error never pages.
            error_min_rps: 1.0,
            // The ratio is over a minute already; holding it longer only
            // delays the page.
            error_for: Duration::ZERO,
            latency_factor: 3.0,
            latency_for: Duration::from_secs(5 * 60),
            latency_window: Duration::from_secs(5 * 60),
            latency_baseline: Duration::from_secs(60 * 60),
            memory_ratio: 0.9,
            memory_for: Duration::from_secs(60),
        }
    }
}

impl AlertDefaults {
    /// Whether the default alert `name` is on.
    pub fn enabled(&self, name: &str) -> bool {
        !self.disable.iter().any(|d| d == name)
    }
}

/// How urgent an alert is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Wake someone up now.
    Page,
    /// Open an incident to handle in working hours.
    #[default]
    Ticket,
    /// Record only.
    Info,
}

impl Severity {
    /// Every severity, in the order the docs list them.
    pub const ALL: [Severity; 3] = [Severity::Page, Severity::Ticket, Severity::Info];

    /// The name used in `tend.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
