//! tend's deployment automation.
//!
//! A [`Deployer`] owns the path from an uploaded directory to instances serving
//! traffic: it builds the upload into an immutable, numbered release
//! ([`artifact`]), and its controller ([`controller`]) converges what runs on this
//! machine to what the store says should run — rolling deploys with health
//! checks ([`health`]), automatic rollback, restarts with backoff, adoption of
//! running instances after a daemon restart, and orphan clean-up. It publishes
//! the ready instances of every service as a [`tend_core::routing::RoutingTable`].
//!
//! Invariant: desired state lives only in the store; the controller's memory
//! holds observations (health results, backoff timers) that it can lose at any
//! moment and rebuild.

pub mod artifact;
pub mod controller;
pub mod health;
pub mod pack;
pub mod plan;

pub use controller::{DeployConfig, DeployError, Deployer, Drainer, InstanceOutput, OutputSink};

/// Says how a process ended, for people: `exit code 1`, `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}{}", signal_name(s)),
        (None, None) => "exited (status unknown: the process was adopted after a restart)".into(),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGINT => " (SIGINT)",
        _ => "",
    }
}
