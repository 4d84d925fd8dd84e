//! The shapes of tend's HTTP API (`/api/v1`), shared by the server and the
//! client so the two cannot drift apart. Plain data; no I/O.

use serde::{Deserialize, Serialize};
use tend_core::model::ChannelKind;
use tend_core::{ServiceName, TeamName, Timestamp, TokenName};
use tend_manifest::ServiceSpec;
use utoipa::ToSchema;

pub use tend_core::model::{AuditEntry, Channel, Event, Outcome, Team, TokenInfo};

/// The prefix of every API path.
pub const API_PREFIX: &str = "/api/v1";

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and people (`message`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `invalid_manifest`, `payload_too_large`,
    /// `unsupported_media_type`, `method_not_allowed`, `unavailable`, `internal`.
    pub code: String,
    /// One or more lines for people.
    pub message: String,
    /// Structured details, e.g. the problems of an invalid manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// `GET /api/v1/whoami`: the caller as the server sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The token's name.
    pub name: TokenName,
    /// Whether it is an admin.
    pub admin: bool,
    /// Its teams.
    pub teams: Vec<TeamName>,
}

/// `POST /api/v1/teams`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// The new team's name (a DNS label).
    pub name: TeamName,
}

/// `POST /api/v1/teams/{team}/channels`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddChannel {
    /// Name of the channel within the team.
    pub name: TokenName,
    /// Kind of endpoint.
    pub kind: ChannelKind,
    /// URL (webhook, slack), routing key (pagerduty) or address (email).
    pub target: String,
    /// The team member this channel reaches (for the `oncall` escalation
    /// target); omitted for a channel of the whole team.
    #[serde(default)]
    pub member: Option<TokenName>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Name for people (`alice`, `ci-payments`), unique among active tokens.
    pub name: TokenName,
    /// Teams the token acts for.
    #[serde(default)]
    pub teams: Vec<TeamName>,
    /// Whether the token is a platform admin.
    #[serde(default)]
    pub admin: bool,
    /// Lifetime such as `30d` or `12h`; no expiry when absent.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// The answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The secret (`tend_...`). Store it now: the server keeps only a hash.
    pub token: String,
    /// What the server knows about it.
    pub info: TokenInfo,
}

/// `POST /api/v1/services`: register or update a service from its manifest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The text of `tend.toml`.
    pub manifest: String,
    /// The file name to cite in diagnostics (default `tend.toml`).
    #[serde(default)]
    pub file_name: Option<String>,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplyOutcome {
    /// The service is new.
    Created,
    /// Its spec changed.
    Updated,
    /// Nothing changed.
    Unchanged,
}

/// The answer to an apply.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApplyResponse {
    /// What the apply did.
    pub outcome: ApplyOutcome,
    /// The service as now stored.
    pub service: Service,
}

/// A service in the catalog, with its full current spec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Service {
    /// The service's name.
    pub name: ServiceName,
    /// The owning team.
    pub owner: TeamName,
    /// One line for people.
    pub description: String,
    /// Link or path to the runbook.
    pub runbook: Option<String>,
    /// Incremented by every apply that changed the spec.
    pub generation: i64,
    /// First apply.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// The validated spec.
    pub spec: ServiceSpec,
    /// The `tend.toml` text last applied.
    pub manifest: String,
}

/// A service in a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceSummary {
    /// The service's name.
    pub name: ServiceName,
    /// The owning team.
    pub owner: TeamName,
    /// One line for people.
    pub description: String,
    /// Incremented by every apply that changed the spec.
    pub generation: i64,
    /// Last change.
    pub updated_at: Timestamp,
    /// The release that should run (`None` before the first deploy).
    pub release: Option<u32>,
    /// Instances ready to take traffic.
    pub ready_instances: u32,
    /// Instances that should run.
    pub desired_instances: u32,
}

pub use tend_core::model::{
    Deployment, DeploymentKind, DeploymentState, DeploymentStep, Instance, InstanceState, Release,
};

/// `POST /api/v1/services/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to go back to; the one before the current when absent.
    #[serde(default)]
    pub to: Option<u32>,
}

/// `POST /api/v1/services/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// How many instances to run.
    pub instances: u32,
}

/// `GET /api/v1/services/{name}/status`: what runs and how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceStatus {
    /// The service.
    pub name: ServiceName,
    /// The owning team.
    pub owner: TeamName,
    /// The release that should run (`None` before the first deploy).
    pub release: Option<u32>,
    /// How many instances should run.
    pub desired_instances: u32,
    /// How many are ready.
    pub ready_instances: u32,
    /// Stopped by `tend stop`.
    pub stopped: bool,
    /// Every instance.
    pub instances: Vec<Instance>,
    /// The latest deployment.
    pub deployment: Option<Deployment>,
    /// Where the router serves the service.
    pub urls: Vec<String>,
}

/// One line of `GET /api/v1/deployments/{id}/watch` (newline-delimited JSON).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// A line of build output.
    Log {
        /// The line.
        line: String,
    },
    /// The deployment moved on.
    Step {
        /// The step.
        step: DeploymentStep,
    },
    /// The deployment is over; the last line of the stream.
    End {
        /// Its final record.
        deployment: Deployment,
    },
}

/// One line of `GET /api/v1/services/{name}/logs` (newline-delimited JSON).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// When tend received the line.
    pub time: Timestamp,
    /// The service.
    pub service: String,
    /// Release of the instance that wrote it (absent for some platform lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u32>,
    /// Instance that wrote it (absent for some platform lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `stdout`, `stderr` or `platform` (tend's own lines: deploys, crashes, health).
    pub stream: String,
    /// Level, when the line is JSON with a level, or a platform line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// The JSON `msg`/`message` of the line, else the whole line.
    pub message: String,
    /// The line as written.
    pub raw: String,
    /// Order within the service's stored lines.
    pub seq: u64,
}

/// An item of the logs stream: a line, or how many lines a slow reader missed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LogItem {
    /// A line.
    Line(LogEntry),
    /// Lines skipped because the reader was too slow (follow only).
    Lagged {
        /// How many.
        lagged: u64,
    },
}

/// `GET /api/v1/services/{name}/config`: the service's config vars.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigView {
    /// Incremented by every change; 0 before the first.
    pub version: u32,
    /// Names and values (they override the manifest's `[env]`).
    pub vars: std::collections::BTreeMap<String, String>,
    /// When they last changed.
    pub updated_at: Option<Timestamp>,
    /// Who changed them last.
    pub updated_by: Option<String>,
}

/// `POST /api/v1/services/{name}/config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    /// Vars to add or replace.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Vars to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// Roll the change out as a new release now (default); false stages it for the next deploy.
    #[serde(default = "yes")]
    pub deploy: bool,
}

fn yes() -> bool {
    true
}

/// The answer to a config change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigChanged {
    /// The new config version.
    pub version: u32,
    /// The deployment rolling it out, unless staged.
    pub deployment: Option<Deployment>,
}

/// One secret of a service as the API shows it: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    /// The environment variable it becomes.
    pub name: String,
    /// Version of this name's value (1 for the first value set).
    pub version: u32,
    /// Who set this value.
    pub set_by: Option<String>,
    /// When.
    pub set_at: Timestamp,
}

/// `GET /api/v1/services/{name}/secrets`: names and versions, no values.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretsView {
    /// Version of the service's set of secrets; incremented by every change, 0 before the first.
    pub version: u32,
    /// The secrets, by name.
    pub secrets: Vec<SecretInfo>,
    /// When the set last changed.
    pub updated_at: Option<Timestamp>,
    /// Who changed it last.
    pub updated_by: Option<String>,
}

/// `POST /api/v1/services/{name}/secrets`.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsChange {
    /// Secrets to add or replace: name and value. Values are encrypted at once and never shown again.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Secrets to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// Roll the change out as a new release now (default); false stages it for the next deploy.
    #[serde(default = "yes")]
    pub deploy: bool,
}

/// Values stay out of debug output and so out of every log.
impl std::fmt::Debug for SecretsChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsChange")
            .field("set", &self.set.keys().collect::<Vec<_>>())
            .field("unset", &self.unset)
            .field("deploy", &self.deploy)
            .finish()
    }
}

/// The answer to a secrets change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretsChanged {
    /// The new version of the service's set of secrets.
    pub version: u32,
    /// The deployment rolling it out, unless staged.
    pub deployment: Option<Deployment>,
}

/// The answer to `POST /api/v1/secrets/rotate-key`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyRotated {
    /// Id of the new master key.
    pub master_key_id: String,
    /// Data keys re-wrapped under it.
    pub data_keys: u32,
}

// ---- alerting: incidents, on-call, escalation ------------------------------

pub use tend_core::incident::{
    Delivery, EscalationLevel, EscalationPolicy, EscalationTarget, Handoff, Incident,
    IncidentAlert, IncidentContext, IncidentState, OnCall, OncallOverride, Rotation, TimelineEntry,
};

/// `GET /api/v1/incidents/{id}`: an incident with everything known about it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncidentDetail {
    /// The incident and its alerts.
    pub incident: Incident,
    /// What changed before, recent errors, runbook, rollback command.
    pub context: IncidentContext,
    /// What happened to it, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// Every notification sent about it and how its delivery went.
    pub deliveries: Vec<Delivery>,
}

/// `PUT /api/v1/teams/{team}/rotation`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRotation {
    /// Members in turn order (token names; the first is on call first).
    pub members: Vec<TokenName>,
    /// `daily` or `weekly`.
    pub handoff: Handoff,
    /// Local time of the hand-off, `HH:MM` (default `09:00`).
    #[serde(default)]
    pub handoff_time: Option<String>,
    /// The team's offset from UTC, `+HH:MM` or `-HH:MM` (default `+00:00`);
    /// hand-offs then come every 24 h or 7 days exactly.
    #[serde(default)]
    pub utc_offset: Option<String>,
    /// The team's time zone, an IANA name such as `Europe/Paris` (instead of
    /// `utc_offset`): hand-offs keep their local time across daylight saving.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// `POST /api/v1/teams/{team}/overrides`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddOverride {
    /// Who takes the duty.
    pub member: TokenName,
    /// From (default: now).
    #[serde(default)]
    pub starts_at: Option<Timestamp>,
    /// Until.
    pub ends_at: Timestamp,
}

/// One level of `PUT /api/v1/teams/{team}/escalation`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetEscalationLevel {
    /// Wait after the previous level (or the opening), e.g. `"30m"`.
    pub after: String,
    /// `oncall`, `team`, `channel:NAME` or `team:NAME`.
    pub notify: Vec<String>,
}

/// `PUT /api/v1/teams/{team}/escalation`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetEscalation {
    /// Levels in order.
    pub levels: Vec<SetEscalationLevel>,
    /// Times the whole policy repeats after its last level.
    #[serde(default)]
    pub repeat: u32,
}
