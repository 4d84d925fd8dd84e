//! Records of the control plane, as stored and as shown through the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{TeamName, Timestamp, TokenName};

/// A team: owns services, holds members (tokens) and notification channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Team {
    /// The team's name.
    pub name: TeamName,
    /// When the team was created.
    pub created_at: Timestamp,
    /// Active tokens that belong to the team.
    pub members: Vec<TokenName>,
    /// Where the team's notifications go.
    pub channels: Vec<Channel>,
    /// Names of the services the team owns.
    pub services: Vec<String>,
}

/// Kinds of notification channel a team can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// An HTTP POST of a JSON body (Alertmanager webhook format).
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// PagerDuty Events API v2 (target is the routing key).
    Pagerduty,
    /// An email address.
    Email,
}

impl ChannelKind {
    /// The lowercase name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Slack => "slack",
            Self::Pagerduty => "pagerduty",
            Self::Email => "email",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "webhook" => Self::Webhook,
            "slack" => Self::Slack,
            "pagerduty" => Self::Pagerduty,
            "email" => Self::Email,
            _ => return None,
        })
    }
}

/// One notification channel of a team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Channel {
    /// Name of the channel within its team (`ops-slack`).
    pub name: TokenName,
    /// What kind of endpoint `target` is.
    pub kind: ChannelKind,
    /// URL, routing key or address, depending on `kind`.
    pub target: String,
    /// The team member this channel reaches (their own pager or mailbox),
    /// for escalation's `oncall` target; `None` for the team's shared channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<TokenName>,
}

/// What the platform knows about a token; never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// The token's name (unique among active tokens).
    pub name: TokenName,
    /// Whether the token has the admin role.
    pub admin: bool,
    /// Teams the token is a member of.
    pub teams: Vec<TeamName>,
    /// When it was created.
    pub created_at: Timestamp,
    /// Name of the token that created it, if any.
    pub created_by: Option<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// When it last authenticated a request (updated at most once a minute).
    pub last_used_at: Option<Timestamp>,
}

/// The authenticated caller of an API request, with what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Row id of the token in the store.
    pub token_id: i64,
    /// Name of the token.
    pub name: TokenName,
    /// Whether the token is an admin.
    pub admin: bool,
    /// Teams the token belongs to.
    pub teams: Vec<TeamName>,
}

impl Principal {
    /// Whether the caller is a member of `team` (admins are members of every team).
    pub fn acts_for(&self, team: &TeamName) -> bool {
        self.admin || self.teams.contains(team)
    }
}

/// Whether an audited request was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Authorised and done.
    Allowed,
    /// Refused for lack of rights or credentials.
    Denied,
    /// Authorised but not done (invalid input, conflict, ...).
    Failed,
}

impl Outcome {
    /// The lowercase name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "allowed" => Self::Allowed,
            "denied" => Self::Denied,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// One audit entry: who did what to what, when, from where, and the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Monotonic id.
    pub id: i64,
    /// When the request was handled.
    pub time: Timestamp,
    /// Name of the token that made the request; `None` when unauthenticated.
    pub actor: Option<String>,
    /// What was attempted (`service.apply`, `team.delete`, ...).
    pub action: String,
    /// What it was attempted on (`service/checkout`, `team/payments`).
    pub target: String,
    /// The team that owns the target, when there is one.
    pub team: Option<TeamName>,
    /// Whether it was done.
    pub outcome: Outcome,
    /// The client's address.
    pub client: Option<String>,
    /// Why it was denied or failed, or a short summary of the change.
    pub detail: Option<String>,
}

/// An audit entry before the store gives it an id and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// See [`AuditEntry::actor`].
    pub actor: Option<String>,
    /// See [`AuditEntry::action`].
    pub action: String,
    /// See [`AuditEntry::target`].
    pub target: String,
    /// See [`AuditEntry::team`].
    pub team: Option<TeamName>,
    /// See [`AuditEntry::outcome`].
    pub outcome: Outcome,
    /// See [`AuditEntry::client`].
    pub client: Option<String>,
    /// See [`AuditEntry::detail`].
    pub detail: Option<String>,
}

/// One entry of a service's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Monotonic id.
    pub id: i64,
    /// When it happened.
    pub time: Timestamp,
    /// The service it is about.
    pub service: String,
    /// Kind of event (`service.created`, `service.updated`, `deploy.started`, ...).
    pub kind: String,
    /// One line for people.
    pub message: String,
    /// Who caused it, when a person or robot did.
    pub actor: Option<String>,
}

/// An immutable, numbered release of a service: an artifact plus the spec it runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    /// The release number: 1, 2, ... per service (shown as `v1`, `v2`).
    pub version: u32,
    /// Content address (SHA-256) of the built files.
    pub artifact: String,
    /// Version of the service's config vars it runs with (0: none set).
    pub config_version: u32,
    /// Version of the service's secrets it runs with (0: none set).
    #[serde(default)]
    pub secrets_version: u32,
    /// What made it (`deploy`, `config: set A, B`, ...).
    pub description: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// Who made it.
    pub created_by: Option<String>,
}

/// What a deployment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// Build (or reuse) a release and roll it out.
    Deploy,
    /// Roll an older release out again.
    Rollback,
    /// Replace every instance of the current release, one batch at a time.
    Restart,
}

/// Where a deployment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Unpacking and running the build command.
    Building,
    /// Starting new instances and draining old ones.
    RollingOut,
    /// All new instances serve; watching them for the verification window.
    Verifying,
    /// The new release serves.
    Succeeded,
    /// Nothing changed: the build failed or the release could not start.
    Failed,
    /// The new release was unhealthy; the previous one serves again.
    RolledBack,
    /// Another deployment of the same service took over.
    Superseded,
}

impl DeploymentState {
    /// Whether the deployment is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Superseded
        )
    }
}

/// One timestamped step of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentStep {
    /// When the step happened.
    pub at: Timestamp,
    /// The state entered, or a milestone inside it.
    pub step: String,
    /// Details for people.
    pub detail: String,
}

/// The rollout of one release, with its persisted steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    /// Unique id.
    pub id: i64,
    /// The service.
    pub service: String,
    /// What it does.
    pub kind: DeploymentKind,
    /// The release rolled out (unknown while building).
    pub release: Option<u32>,
    /// The release that served before.
    pub previous: Option<u32>,
    /// Where it is.
    pub state: DeploymentState,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
    /// What happened, in order.
    pub steps: Vec<DeploymentStep>,
    /// Who started it.
    pub actor: Option<String>,
    /// When it started.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Recorded, process not started yet (or waiting out a restart backoff).
    Pending,
    /// Running, not yet healthy.
    Starting,
    /// Healthy: receives traffic.
    Ready,
    /// Was ready, now failing its health check: out of traffic.
    Unhealthy,
    /// Leaving: out of traffic, finishing requests, then stopped.
    Draining,
    /// Exited unexpectedly; restarts after a backoff.
    Crashed,
}

impl InstanceState {
    /// The snake_case name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Unhealthy => "unhealthy",
            Self::Draining => "draining",
            Self::Crashed => "crashed",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "starting" => Self::Starting,
            "ready" => Self::Ready,
            "unhealthy" => Self::Unhealthy,
            "draining" => Self::Draining,
            "crashed" => Self::Crashed,
            _ => return None,
        })
    }
}

/// One running (or about to run) copy of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// Unique id (`checkout-v3-7f3a`).
    pub id: String,
    /// Release it runs.
    pub release: u32,
    /// Port it listens on (its `$PORT`).
    pub port: u16,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Process id, when running.
    pub pid: Option<u32>,
    /// Restarts after crashes or failed health checks.
    pub restarts: u32,
    /// When the current process started.
    pub started_at: Option<Timestamp>,
    /// How the last process ended, if it did.
    pub last_exit: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_act_for_every_team_members_for_theirs() {
        let payments = TeamName::parse("payments").unwrap();
        let search = TeamName::parse("search").unwrap();
        let member = Principal {
            token_id: 1,
            name: TokenName::parse("alice").unwrap(),
            admin: false,
            teams: vec![payments.clone()],
        };
        assert!(member.acts_for(&payments));
        assert!(!member.acts_for(&search));
        let admin = Principal {
            admin: true,
            teams: vec![],
            ..member
        };
        assert!(admin.acts_for(&search));
    }

    #[test]
    fn enums_round_trip_their_names() {
        for k in [
            ChannelKind::Webhook,
            ChannelKind::Slack,
            ChannelKind::Pagerduty,
            ChannelKind::Email,
        ] {
            assert_eq!(ChannelKind::parse(k.as_str()), Some(k));
        }
        for o in [Outcome::Allowed, Outcome::Denied, Outcome::Failed] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}
