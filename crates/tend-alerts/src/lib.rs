//! tend's alerting: every service's rules (its own `[[alerts]]` plus the
//! default alerts) evaluated every few seconds against tend's own metrics,
//! logs and events with Prometheus' semantics ([`eval`]); firing alerts
//! grouped into one incident per service for its owning team, with the
//! context to act ([`tend_store`] keeps them); notifications through the
//! team's channels ([`notify`]), paging along the team's escalation policy
//! until someone acknowledges.
//!
//! The [`engine`] is one task: evaluate, record, announce, escalate, and
//! hand queued notifications to delivery tasks. Everything it must say is
//! queued in the store first (an outbox), so a restart loses nothing.

#![warn(missing_docs)]

pub mod email;
pub mod engine;
pub mod eval;
pub mod forward;
pub mod notify;
pub mod rules;

pub use email::SmtpConfig;
pub use engine::{spawn, AlertConfig, LiveSamples};

/// Errors of rule preparation and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// A rule cannot be used (its expression or pattern does not parse).
    #[error("invalid rule: {0}")]
    Rule(String),
    /// A setting is unusable (the SMTP relay's URL or sender).
    #[error("{0}")]
    Config(String),
    /// A query failed.
    #[error("query: {0}")]
    Query(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] tend_store::StoreError),
}
