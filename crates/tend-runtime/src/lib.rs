//! The runtime driver interface of tend and its embedded process driver.
//!
//! The shape follows Nomad's task drivers (`plugins/drivers/driver.go`): a driver
//! starts an instance and hands back an opaque-to-the-caller [`Handle`] that the
//! caller persists; after a daemon restart the caller gives the handle back to
//! [`Runtime::recover`] and carries on. Nothing above this trait knows which driver
//! runs, and the same conformance suite (`tests/conformance.rs`) runs every driver.
//!
//! Invariant: the daemon's death never stops or blocks an instance (no pipes, no
//! parent-death signal, a session of its own).
//! Invariant: a driver never modifies a release's files (`InstanceSpec::release_dir`).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod process;
pub mod relay;

pub use process::ProcessRuntime;

/// What to run: one instance of one release of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceSpec {
    /// Unique id of the instance, e.g. "checkout-v3-7f3a"; used as a file name.
    pub instance_id: String,
    /// Name of the service the instance belongs to.
    pub service: String,
    /// Release number (the N of vN).
    pub release: u32,
    /// The immutable release files; the driver must not modify them.
    pub release_dir: PathBuf,
    /// Shell command line, run as `/bin/sh -c COMMAND` in the instance's working copy.
    pub command: String,
    /// The release's environment; the driver adds PORT, TEND_SERVICE, TEND_RELEASE, TEND_INSTANCE.
    pub env: BTreeMap<String, String>,
    /// Names of `env` entries whose values are secrets: the driver keeps those
    /// values out of the output files (see [`relay`]).
    pub redact: Vec<String>,
    /// The port the instance must listen on (passed as `PORT`).
    pub port: u16,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit in CPUs (0.5 = half a core).
    pub cpu_limit: Option<f64>,
}

/// Everything needed to re-attach to an instance; persisted (as JSON) by the caller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Handle {
    /// The instance id from [`InstanceSpec::instance_id`].
    pub instance_id: String,
    /// Pid of the instance's leader process (also its process group id).
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22 (clock ticks since boot): tells a reused pid apart.
    pub start_time: u64,
    /// The instance's private working copy of the release.
    pub work_dir: PathBuf,
    /// File receiving the instance's standard output.
    pub stdout_path: PathBuf,
    /// File receiving the instance's standard error.
    pub stderr_path: PathBuf,
    /// The instance's cgroup directory, when limits are enforced by cgroup v2.
    pub cgroup: Option<PathBuf>,
}

/// Observed state of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The leader process is alive; `stopped` when it is SIGSTOP'd (`/proc` state 'T').
    Running { pid: u32, stopped: bool },
    /// The leader exited; both fields are None when unknown (an adopted process is not our child).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

impl State {
    /// True for [`State::Running`].
    pub fn is_running(&self) -> bool {
        matches!(self, State::Running { .. })
    }
}

/// Resource usage of a running instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// CPU time consumed (user + system), in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
    /// The instance's cgroup v2 accounting, when it runs in one.
    #[serde(default)]
    pub cgroup: Option<CgroupStats>,
}

/// Accounting of an instance's cgroup v2 (what cAdvisor reports per container).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// `memory.current`: memory charged to the cgroup (page cache included), in bytes.
    pub memory_bytes: u64,
    /// `cpu.stat` `usage_usec`, in seconds: includes processes that already exited.
    pub cpu_seconds: f64,
    /// `cpu.stat` `throttled_usec`, in seconds: time held back by `cpu.max`.
    pub cpu_throttled_seconds: f64,
    /// `memory.events` `oom_kill`: processes killed for exceeding `memory.max`.
    pub oom_kills: u64,
}

/// What a driver can do on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Whether [`Runtime::recover`] can re-attach to instances after a daemon restart.
    pub recover: bool,
    /// Whether [`Runtime::stats`] reports usage.
    pub stats: bool,
    /// How [`InstanceSpec::memory_limit`] is enforced.
    pub memory_limit: LimitSupport,
    /// How [`InstanceSpec::cpu_limit`] is enforced.
    pub cpu_limit: LimitSupport,
}

/// The mechanism enforcing a resource limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitSupport {
    /// A cgroup v2 controller (`memory.max`, `cpu.max`).
    Cgroup,
    /// A `setrlimit` limit (memory: `RLIMIT_DATA`).
    Rlimit,
    /// Not enforced: the limit is accepted and ignored.
    None,
}

/// Errors of a runtime driver; each names the instance or the file concerned.
#[derive(thiserror::Error, Debug)]
pub enum RuntimeError {
    /// The instance's process could not be started.
    #[error("instance {instance}: cannot start: {source}")]
    Spawn {
        instance: String,
        #[source]
        source: io::Error,
    },
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No live process for this instance (e.g. `stats` on an exited instance).
    #[error("instance {instance}: no live process")]
    NotFound { instance: String },
    /// The spec cannot be run as given.
    #[error("instance {instance}: invalid spec: {reason}")]
    InvalidSpec { instance: String, reason: String },
    /// The handle does not belong to this driver (wrong root, unsafe id, ...).
    #[error("instance {instance}: invalid handle: {reason}")]
    InvalidHandle { instance: String, reason: String },
    /// `start` of an instance id whose process is still alive.
    #[error("instance {instance}: already running as pid {pid}")]
    AlreadyRunning { instance: String, pid: u32 },
    /// `destroy` of an instance that has not exited yet.
    #[error("instance {instance}: still running as pid {pid}; stop it first")]
    StillRunning { instance: String, pid: u32 },
    /// Sending a signal failed for another reason than the process being gone.
    #[error("instance {instance}: cannot send signal {signal}: {source}")]
    Signal {
        instance: String,
        signal: i32,
        #[source]
        source: io::Error,
    },
}

/// A runtime driver: starts, watches, stops and cleans up instances.
///
/// Dyn-compatible: the deploy controller holds an `Arc<dyn Runtime>`.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short name of the driver, e.g. "process".
    fn name(&self) -> &'static str;
    /// What this driver supports on this machine.
    fn capabilities(&self) -> Capabilities;
    /// Prepares the working copy and starts the instance; returns once the process exists.
    async fn start(&self, spec: &InstanceSpec) -> Result<Handle, RuntimeError>;
    /// Re-attaches after a daemon restart. Idempotent. `Exited` if the pid is gone or its start_time differs (pid reused).
    async fn recover(&self, handle: &Handle) -> Result<State, RuntimeError>;
    /// Current state, without blocking.
    async fn inspect(&self, handle: &Handle) -> Result<State, RuntimeError>;
    /// Resolves when the instance exits (children: real exit status; adopted: poll /proc, status unknown).
    async fn wait(&self, handle: &Handle) -> Result<State, RuntimeError>;
    /// Sends `signal` to the instance's process group, waits up to `grace`, then SIGKILLs the group; returns the final state.
    ///
    /// Idempotent on an exited instance. Works on a SIGSTOP'd process (SIGCONT follows the signal).
    async fn stop(
        &self,
        handle: &Handle,
        signal: i32,
        grace: Duration,
    ) -> Result<State, RuntimeError>;
    /// After exit: removes the working copy and cgroup; keeps the stdout/stderr files.
    async fn destroy(&self, handle: &Handle) -> Result<(), RuntimeError>;
    /// Resource usage of a running instance.
    async fn stats(&self, handle: &Handle) -> Result<Stats, RuntimeError>;
    /// Every live instance this driver started on this machine, so the controller can stop orphans.
    async fn list(&self) -> Result<Vec<Handle>, RuntimeError>;
}
