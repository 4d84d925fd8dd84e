//! The command line: every command, flag and its help.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tend_core::model::ChannelKind;

const AFTER_HELP: &str = "\
Getting started:
  tend demo                        start a platform with example teams and services
  tend server                      run the platform (API on 127.0.0.1:7070)
  tend login --url URL --token T   remember where the server is and who you are
  tend validate                    check ./tend.toml
  tend apply                       register or update the service in ./tend.toml

Server and token come from --url/--token, then TEND_URL/TEND_TOKEN, then `tend login`.
Exit codes: 0 ok, 1 error, 2 usage, 3 server unreachable, 4 not authorised, 5 not found.";

/// tend: self-service operations. Deploy, configure, watch and repair your own
/// services, with no ticket to anyone.
#[derive(Debug, Parser)]
#[command(name = "tend", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts, before or after the subcommand.
#[derive(Debug, Args)]
pub struct Global {
    /// URL of the tend server [default: from `tend login`, else http://127.0.0.1:7070]
    #[arg(long, global = true, env = "TEND_URL", value_name = "URL")]
    pub url: Option<String>,
    /// API token [default: from `tend login`]
    #[arg(
        long,
        global = true,
        env = "TEND_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Output format of read commands
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How read commands print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the tend server (API, and later the router and the products)
    Server(ServerArgs),
    /// Start a server with the example teams and services, and show where to look
    Demo(DemoArgs),
    /// Check and save the server URL and token (--url, --token, or the token on stdin)
    Login,
    /// Show who the token is: name, admin role and teams
    Whoami,
    /// Check a tend.toml and print every problem with file:line:col
    Validate(PathArg),
    /// Register or update the service described by a tend.toml
    Apply(PathArg),
    /// Build and roll out a service (or roll out an existing release with --release)
    Deploy(DeployArgs),
    /// Show a service: release, instances with state, health, restarts, uptime, URLs
    Status(NameArg),
    /// List a service's releases with who made them and when
    Releases(NameArg),
    /// Roll a service back to the previous release (or --to vN)
    Rollback(RollbackArgs),
    /// Set how many instances of a service run
    Scale(ScaleArgs),
    /// Replace every instance of a service, batch by batch, without downtime
    Restart(WaitArgs),
    /// Drain and stop every instance of a service
    Stop(NameArg),
    /// Start a stopped service again
    Start(NameArg),
    /// List services, or show and delete one
    #[command(alias = "service", alias = "svc")]
    Services(ServicesArgs),
    /// Show a service's config vars, or set and unset them (each change is a new release)
    Config(ConfigArgs),
    /// List a service's secrets (names and versions, never values), or set and unset them
    #[command(alias = "secret")]
    Secrets(SecretsArgs),
    /// Show a service's timeline: what changed and what happened
    Events(EventsArgs),
    /// Show a service's output: every instance, every release, tend's own events between
    Logs(LogsArgs),
    /// Manage teams (admins) and their notification channels (members)
    #[command(alias = "team")]
    Teams(TeamsArgs),
    /// Manage API tokens (admins)
    #[command(alias = "token")]
    Tokens(TokensArgs),
    /// Read the audit trail: who did what, when, from where
    Audit(AuditArgs),
    /// Run a PromQL query over every service's metrics (instant, or --range)
    Query(QueryArgs),
    /// List incidents of your teams, or show one with what changed before it
    #[command(alias = "incident")]
    Incidents(crate::commands::incidents::IncidentsArgs),
    /// Acknowledge an incident: stops its escalation
    Ack(crate::commands::incidents::IncidentArg),
    /// Resolve an incident by hand
    Resolve(crate::commands::incidents::IncidentArg),
    /// Who is on call; set rotations, overrides and escalation policies
    Oncall(crate::commands::oncall::OncallArgs),
    /// Show a service's golden signals: traffic, errors, latency, CPU, memory, restarts
    Metrics(MetricsArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Directory for the state database and everything the platform keeps
    #[arg(
        long,
        env = "TEND_DATA_DIR",
        default_value = "./tend-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Address of the API and dashboard
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Address of the router that serves your services' traffic
    #[arg(long, default_value = "127.0.0.1:7080", value_name = "ADDR")]
    pub router_listen: SocketAddr,
    /// Releases per service whose artifacts are kept (older ones are deleted)
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub keep_releases: u32,
    /// Longest a build may run, e.g. 15m
    #[arg(long, default_value = "15m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub build_timeout: std::time::Duration,
    /// How often instances' resource usage, the router's traffic and the [metrics] endpoints of services are collected
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub scrape_interval: std::time::Duration,
    /// Also send every collected sample to this Prometheus remote-write endpoint, e.g. http://prometheus:9090/api/v1/write
    #[arg(long, value_name = "URL")]
    pub metrics_remote_write_url: Option<String>,
    /// Bearer token for --metrics-remote-write-url
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TEND_METRICS_REMOTE_WRITE_TOKEN",
        hide_env_values = true
    )]
    pub metrics_remote_write_token: Option<String>,
    /// Also push every log line to this Loki (base URL; /loki/api/v1/push is appended)
    #[arg(long, value_name = "URL")]
    pub logs_loki_url: Option<String>,
    /// How often every alert rule is evaluated
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub alert_interval: std::time::Duration,
    /// Send PagerDuty events here instead of PagerDuty's Events API v2 (a proxy or a test receiver)
    #[arg(long, value_name = "URL", hide = true)]
    pub pagerduty_url: Option<String>,
    /// SMTP relay for e-mail channels: smtp://host:port (plain; add ?tls=required for STARTTLS) or smtps://host:465
    #[arg(long, value_name = "URL")]
    pub smtp_url: Option<String>,
    /// Sender of e-mail notifications, e.g. 'tend <tend@example.com>'
    #[arg(long, value_name = "ADDRESS", default_value = "tend <tend@localhost>")]
    pub smtp_from: String,
    /// SMTP AUTH user name for --smtp-url
    #[arg(long, value_name = "USER", env = "TEND_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// SMTP AUTH password (from the environment only)
    #[arg(long, env = "TEND_SMTP_PASSWORD", hide_env_values = true, hide = true)]
    pub smtp_password: Option<String>,
    /// Also send every alert to this Alertmanager (POST /api/v2/alerts at each evaluation), e.g. http://alertmanager:9093
    #[arg(long, value_name = "URL")]
    pub alertmanager_url: Option<String>,
    /// The master key of secrets [default: <data-dir>/master.key, created at first start]
    #[arg(long, env = "TEND_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Rotate the master key of secrets (admin): every data key is re-wrapped
    /// under a new key; releases and instances keep working
    RotateKey,
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Values never come back: `tend secrets NAME` shows names, versions, who set them and when.
Prefer --stdin so values stay out of your shell history.

Examples:
  tend secrets checkout                                 list
  tend secrets set checkout --stdin DATABASE_URL < db-url.txt
  printf '%s' \"$TOKEN\" | tend secrets set checkout --stdin API_TOKEN
  tend secrets set checkout STRIPE_KEY=sk_test_123 --no-deploy
  tend secrets unset checkout STRIPE_KEY"
)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub command: Option<SecretsCommand>,
    /// Service name (to list its secrets)
    pub name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set secrets (KEY=VALUE ..., or one KEY with --stdin); rolled out as a new release
    Set {
        /// Service name
        name: String,
        /// KEY=VALUE pairs, or one KEY when the value comes from --stdin
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Read the value of the one KEY given from standard input (a trailing newline is dropped)
        #[arg(long)]
        stdin: bool,
        /// Stage the change for the next deploy instead of rolling it out now
        #[arg(long)]
        no_deploy: bool,
    },
    /// Remove secrets; rolled out as a new release
    Unset {
        /// Service name
        name: String,
        /// Names to remove
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        /// Stage the change for the next deploy instead of rolling it out now
        #[arg(long)]
        no_deploy: bool,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's state [default: a new temporary directory]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Address of the router
    #[arg(long, default_value = "127.0.0.1:7080", value_name = "ADDR")]
    pub router_listen: SocketAddr,
    /// Where the example teams and services are [default: ./examples, else the source tree's]
    #[arg(long, value_name = "DIR")]
    pub examples: Option<PathBuf>,
    /// Set up, print the tour, and exit instead of serving until Ctrl-C
    #[arg(long)]
    pub exit: bool,
}

#[derive(Debug, Args)]
pub struct PathArg {
    /// A tend.toml, or the directory that holds one
    #[arg(default_value = ".", value_name = "PATH")]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A tend.toml, or the directory that holds one (the directory is uploaded)
    #[arg(default_value = ".", value_name = "PATH")]
    pub path: PathBuf,
    /// Roll out this existing release (v3 or 3) instead of building
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub release: Option<u32>,
    /// Return once the deployment is accepted instead of following it
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Service name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Service name
    pub name: String,
    /// Return at once instead of following the rollout
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Service name
    pub name: String,
    /// The release to go back to (v3 or 3) [default: the one before the current]
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub to: Option<u32>,
    /// Return at once instead of following the rollout
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Service name
    pub name: String,
    /// Number of instances
    pub instances: u32,
}

/// Parses `v3` or `3`.
fn parse_version(s: &str) -> Result<u32, String> {
    s.trim_start_matches(['v', 'V'])
        .parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            format!("`{s}` is not a release: use v1, v2, ... (see `tend releases NAME`)")
        })
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(subcommand)]
    pub command: Option<ServicesCommand>,
    /// Only the services of this team
    #[arg(long, value_name = "TEAM")]
    pub owner: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// List services (the default)
    List,
    /// Show one service: owner, spec, manifest
    Show {
        /// Service name
        name: String,
    },
    /// Remove a service from the catalog
    Delete {
        /// Service name
        name: String,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tend logs checkout -f                      follow, across restarts and deploys
  tend logs checkout --since 1h --level error
  tend logs checkout --release v3 --grep 'timeout|refused'
  tend logs checkout -n 1000 -o json | jq .message")]
pub struct LogsArgs {
    /// Service name
    pub name: String,
    /// Keep streaming new lines (like `kubectl logs -f`)
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines after this: a duration (1h, 15m) or a time (2026-11-29T10:00:00Z)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only lines before this: a duration or a time
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only lines of this release (v3 or 3)
    #[arg(long, value_name = "VERSION")]
    pub release: Option<String>,
    /// Only lines of this instance
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Only stdout, stderr or platform (tend's own lines)
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,
    /// Only lines at this level or worse (debug, info, warn, error, fatal)
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Only lines matching this regular expression
    #[arg(short = 'g', long, value_name = "REGEX", conflicts_with = "contains")]
    pub grep: Option<String>,
    /// Only lines containing this text
    #[arg(long, value_name = "TEXT")]
    pub contains: Option<String>,
    /// How many of the latest stored lines (0 for all)
    #[arg(short = 'n', long, default_value_t = 100)]
    pub lines: usize,
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  tend config checkout                               list
  tend config set checkout LOG_LEVEL=debug DB_HOST=db.internal
  tend config set checkout 'DATABASE_URL=postgres://${DB_HOST}/app'
  tend config set checkout --from-file .env --no-deploy
  tend config unset checkout LOG_LEVEL"
)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: Option<ConfigCommand>,
    /// Service name (to list its vars)
    pub name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Set vars (KEY=VALUE ...); rolled out as a new release
    Set {
        /// Service name
        name: String,
        /// KEY=VALUE pairs
        #[arg(value_name = "KEY=VALUE")]
        pairs: Vec<String>,
        /// Read KEY=VALUE lines from a .env file
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Stage the change for the next deploy instead of rolling it out now
        #[arg(long)]
        no_deploy: bool,
    },
    /// Remove vars; rolled out as a new release
    Unset {
        /// Service name
        name: String,
        /// Names to remove
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
        /// Stage the change for the next deploy instead of rolling it out now
        #[arg(long)]
        no_deploy: bool,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Service name
    pub name: String,
    /// Number of latest events
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct TeamsArgs {
    #[command(subcommand)]
    pub command: Option<TeamsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum TeamsCommand {
    /// List teams (the default)
    List,
    /// Create a team (admin)
    Create {
        /// Team name (a DNS label: lowercase letters, digits, `-`)
        name: String,
    },
    /// Show a team: members, channels, services
    Show {
        /// Team name
        name: String,
    },
    /// Delete a team (admin); refused while it owns services
    Delete {
        /// Team name
        name: String,
    },
    /// Add a notification channel to a team
    AddChannel {
        /// Team name
        team: String,
        /// Channel name
        name: String,
        /// Kind of channel
        #[arg(long, value_enum)]
        kind: ChannelKindArg,
        /// URL, routing key or address
        #[arg(long)]
        target: String,
    },
    /// Add, list and remove a team's notification channels
    #[command(alias = "channel")]
    Channels(crate::commands::channels::ChannelsArgs),
    /// Remove a team's notification channel
    RemoveChannel {
        /// Team name
        team: String,
        /// Channel name
        name: String,
    },
}

/// Channel kinds on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ChannelKindArg {
    Webhook,
    Slack,
    Pagerduty,
    Email,
}

impl From<ChannelKindArg> for ChannelKind {
    fn from(k: ChannelKindArg) -> Self {
        match k {
            ChannelKindArg::Webhook => Self::Webhook,
            ChannelKindArg::Slack => Self::Slack,
            ChannelKindArg::Pagerduty => Self::Pagerduty,
            ChannelKindArg::Email => Self::Email,
        }
    }
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub command: Option<TokensCommand>,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List tokens (the default)
    List {
        /// Include revoked tokens
        #[arg(long)]
        all: bool,
    },
    /// Create a token and print its secret once (admin)
    Create {
        /// Name for people (alice, ci-payments)
        #[arg(long)]
        name: String,
        /// A team the token acts for (repeatable)
        #[arg(long = "team", value_name = "TEAM")]
        teams: Vec<String>,
        /// Make it a platform admin
        #[arg(long)]
        admin: bool,
        /// Lifetime, e.g. 30d or 12h [default: no expiry]
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Revoke a token; it stops working at once
    Revoke {
        /// Token name
        name: String,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tend query 'up'
  tend query 'sum by (service) (rate(tend_http_requests_total[5m]))'
  tend query --range 1h --step 1m 'histogram_quantile(0.99, sum by (le) (rate(tend_http_request_duration_seconds_bucket[5m])))'")]
pub struct QueryArgs {
    /// The PromQL expression
    pub expr: String,
    /// Evaluate over this much time up to now (e.g. 1h) instead of at one instant
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub range: Option<std::time::Duration>,
    /// Resolution of a range query
    #[arg(long, default_value = "1m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub step: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Each row is a PromQL query over the collected metrics (see `-o json` for the \
queries): request rate, 5xx ratio and p50/p99 latency as seen by the router, the instances' CPU \
(cores) and resident memory, restarts, and ready instances. The sparkline spans --since, oldest \
on the left; a gap means no data.

Examples:
  tend metrics checkout
  tend metrics checkout --since 1h
  tend metrics checkout -o json | jq '.signals[] | {name, now}'"
)]
pub struct MetricsArgs {
    /// Service name
    pub name: String,
    /// How far back the sparklines go, e.g. 15m, 1h, 1d
    #[arg(long, default_value = "15m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: std::time::Duration,
    /// Points per sparkline
    #[arg(long, default_value_t = 40, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=500))]
    pub width: u32,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries about this team's things
    #[arg(long)]
    pub team: Option<String>,
    /// Number of latest entries
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: u32,
}
