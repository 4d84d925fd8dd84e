//! The controller: one reconciler that converges what runs to what the store
//! says should run.
//!
//! Shape of kube-rs reconcilers: `reconcile(service)` is told only *which*
//! service to look at, never why; it reads desired state from the store and
//! observed state from the runtime, acts, and returns. It runs on every wake-up
//! (API changes, instance exits, health transitions) and on a timer, so a missed
//! wake-up only delays convergence. Startup and recovery take the same path: the
//! first reconcile of a service after a restart finds instance records without
//! in-memory state and re-attaches to their processes.
//!
//! Long operations (draining and stopping an instance) run as tasks that wake
//! the service when done; reconcile itself never waits on an instance.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tend_core::model::{Deployment, DeploymentKind, DeploymentState, Instance, InstanceState};
use tend_core::{ServiceName, Timestamp};
use tend_manifest::ServiceSpec;
use tend_runtime::{Handle, InstanceSpec, Runtime, RuntimeError, State};
use tend_store::{InstanceRecord, Store, StoreError};
use tokio::sync::{mpsc, watch};

use crate::artifact::{self, ArtifactError, ArtifactStore};
use crate::health::{self, Health, Verdict};
use crate::pack::{self, PackError};
use tend_core::routing::{Endpoint, Route, RoutingTable};

/// Errors of the deployer. The API maps them to status codes by variant.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The store failed or the thing does not exist.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upload could not be unpacked.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The build or the artifact store failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The service has never been deployed.
    #[error("`{0}` has no release yet: deploy it first with `tend deploy`")]
    NoRelease(String),
    /// There is no older release to go back to.
    #[error("`{0}` has no earlier release to roll back to")]
    NothingToRollBack(String),
    /// The request makes no sense in the current state.
    #[error("{0}")]
    Invalid(String),
}

/// Waits for the traffic of an instance to end before it is signalled. The
/// router implements it with its in-flight counters; the controller calls it
/// after the instance left the routing table.
#[async_trait::async_trait]
pub trait Drainer: Send + Sync + 'static {
    /// Resolves when `instance` has no request in flight, or after `deadline`.
    async fn drained(&self, instance: &str, deadline: Duration);
}

/// Where an instance writes its output; the logs product ingests these files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOutput {
    /// The service.
    pub service: String,
    /// Its owner team.
    pub team: String,
    /// The release the instance runs.
    pub release: u32,
    /// The instance id.
    pub instance: String,
    /// Its standard output file.
    pub stdout: PathBuf,
    /// Its standard error file.
    pub stderr: PathBuf,
}

/// Told about every instance's output files, so they can be ingested.
pub trait OutputSink: Send + Sync + 'static {
    /// The instance's files exist (started, restarted, adopted or found
    /// exited after a restart): ingest them. Called again for the same
    /// instance on every restart; must be idempotent.
    fn watch(&self, output: InstanceOutput);
    /// The instance is gone for good: ingest what is left, then let go.
    fn finish(&self, instance: &str);
}

/// Settings of the deployer.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// The data directory (`artifacts/`, `builds/`, `deployments/` go there).
    pub data_dir: PathBuf,
    /// Releases whose artifacts are kept per service (older ones are collected).
    pub keep_releases: u32,
    /// Longest a build may run.
    pub build_timeout: Duration,
    /// How often every service is reconciled even without a wake-up.
    pub resync: Duration,
    /// How often processes nobody knows are looked for.
    pub orphan_sweep: Duration,
}

impl DeployConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            keep_releases: 10,
            build_timeout: Duration::from_secs(15 * 60),
            resync: Duration::from_millis(500),
            orphan_sweep: Duration::from_secs(5),
        }
    }
}

/// How long a stop of an orphan may take before SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);
/// Instances without a health check are ready once they stayed up this long.
const NO_CHECK_READY_AFTER: Duration = Duration::from_millis(500);
/// Longest restart backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// An instance that ran this long before crashing restarts without backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// Crashes in a row after which an instance is called crash-looping.
const CRASH_LOOP_AFTER: u32 = 3;
/// Log lines of the failing instance shown when a deploy fails.
const FAILURE_LOG_LINES: usize = 50;

/// What the controller knows about an instance beyond the store: the process
/// handle and health results. Lost on restart, rebuilt by observation.
struct Live {
    service: ServiceName,
    handle: Handle,
    port: u16,
    health: Health,
    since: Instant,
    /// Being drained and stopped (or killed for failing its checks).
    stopping: bool,
    /// Why it is being stopped, when not by a user's change (liveness failure).
    kill_reason: Option<String>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Inner {
    store: Arc<Store>,
    runtime: Arc<dyn Runtime>,
    artifacts: ArtifactStore,
    config: DeployConfig,
    http: reqwest::Client,
    wake_tx: mpsc::UnboundedSender<Option<ServiceName>>,
    routes: watch::Sender<RoutingTable>,
    live: Mutex<HashMap<String, Live>>,
    /// When crashed instances may start again.
    backoff: Mutex<HashMap<String, Instant>>,
    /// Health results of instances whose process ended, for failure reports.
    last_checks: Mutex<HashMap<String, Vec<String>>>,
    /// Waits for in-flight requests before an instance is signalled.
    drainer: std::sync::OnceLock<Arc<dyn Drainer>>,
    /// Ingests instances' output.
    output: Option<Arc<dyn OutputSink>>,
    /// Builds in progress (their working copies are not garbage).
    builds: Mutex<HashSet<i64>>,
    /// Decrypts the secrets instances start with.
    secrets: std::sync::OnceLock<Arc<tend_secrets::Vault>>,
}

/// The deployment automation of one machine. Cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Deployer {
    /// Creates the deployer and starts its controller on the current tokio
    /// runtime. The controller first recovers: it re-attaches to running
    /// instances, restarts what should run, and stops orphans.
    pub fn start(
        store: Arc<Store>,
        runtime: Arc<dyn Runtime>,
        config: DeployConfig,
        output: Option<Arc<dyn OutputSink>>,
    ) -> Result<Self, DeployError> {
        let artifacts = ArtifactStore::new(&config.data_dir)?;
        let logs = config.data_dir.join("deployments");
        std::fs::create_dir_all(&logs)
            .map_err(|source| ArtifactError::Io { path: logs, source })?;
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let (routes, _) = watch::channel(RoutingTable::default());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| {
                DeployError::Invalid(format!("cannot build the health-check client: {e}"))
            })?;
        let deployer = Self {
            inner: Arc::new(Inner {
                store,
                runtime,
                artifacts,
                config,
                http,
                wake_tx,
                routes,
                live: Mutex::new(HashMap::new()),
                backoff: Mutex::new(HashMap::new()),
                last_checks: Mutex::new(HashMap::new()),
                drainer: std::sync::OnceLock::new(),
                output,
                builds: Mutex::new(HashSet::new()),
                secrets: std::sync::OnceLock::new(),
            }),
        };
        let d = deployer.clone();
        tokio::spawn(async move { d.run(wake_rx).await });
        Ok(deployer)
    }

    /// The routing table: ready instances of every service.
    pub fn routes(&self) -> watch::Receiver<RoutingTable> {
        self.inner.routes.subscribe()
    }

    /// Sets what waits for in-flight requests to end before an instance is
    /// stopped (the router). Without one, instances are signalled at once.
    pub fn set_drainer(&self, drainer: Arc<dyn Drainer>) {
        let _ = self.inner.drainer.set(drainer);
    }

    /// Sets the vault that decrypts releases' secrets when instances start.
    /// Without one, an instance of a release with secrets refuses to start.
    pub fn set_secrets(&self, vault: Arc<tend_secrets::Vault>) {
        let _ = self.inner.secrets.set(vault);
    }

    /// The decrypted secrets of a release, as environment entries. The error
    /// names the secret and what is wrong, never a value.
    fn release_secrets(
        &self,
        service: &ServiceName,
        release: u32,
    ) -> Result<Vec<(String, tend_secrets::Plaintext)>, String> {
        let stored = self
            .inner
            .store
            .read(|tx| tx.release_secrets(service, release))
            .map_err(|e| format!("cannot read its secrets: {e}"))?;
        if stored.is_empty() {
            return Ok(vec![]);
        }
        let vault = self.inner.secrets.get().ok_or_else(|| {
            "it has secrets, and secrets are unavailable on this server".to_string()
        })?;
        stored
            .iter()
            .map(|s| {
                let at = tend_secrets::SecretRef {
                    service: service.as_str(),
                    name: &s.name,
                    version: s.version,
                };
                vault
                    .open(&at, &s.sealed)
                    .map(|v| (s.name.clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// Asks the controller to look at `service` now.
    pub fn wake(&self, service: &ServiceName) {
        let _ = self.inner.wake_tx.send(Some(service.clone()));
    }

    /// Asks the controller to look at every service now.
    pub fn wake_all(&self) {
        let _ = self.inner.wake_tx.send(None);
    }

    /// The build log of a deployment (one line per build output line).
    pub fn build_log_path(&self, deployment: i64) -> PathBuf {
        self.inner
            .config
            .data_dir
            .join("deployments")
            .join(format!("{deployment}.log"))
    }

    /// A service's instances as the API shows them (with pids of live ones).
    pub fn instances(&self, service: &ServiceName) -> Result<Vec<Instance>, DeployError> {
        let records = self.inner.store.read(|tx| tx.instances(Some(service)))?;
        let live = lock(&self.inner.live);
        Ok(records
            .into_iter()
            .map(|r| {
                let mut i = r.instance;
                i.pid = live.get(&i.id).map(|l| l.handle.pid);
                i
            })
            .collect())
    }

    /// Unpacks and builds an upload for a deployment made by
    /// [`crate::plan::begin_build`], then rolls the new release out. Runs in
    /// the background; progress is in the store and the build log.
    pub fn spawn_build(&self, deployment: Deployment, spec: ServiceSpec, archive: Vec<u8>) {
        let d = self.clone();
        lock(&self.inner.builds).insert(deployment.id);
        tokio::spawn(async move {
            let id = deployment.id;
            let result = d.build(&deployment, &spec, archive).await;
            lock(&d.inner.builds).remove(&id);
            if let Err(e) = result {
                let service = spec.name().clone();
                let log_tail = tail_lines(&d.build_log_path(id), FAILURE_LOG_LINES);
                let mut reason = format!("build failed: {e}");
                if !log_tail.is_empty() {
                    reason.push_str("\nlast lines of the build:\n");
                    for l in log_tail {
                        reason.push_str("  ");
                        reason.push_str(&l);
                        reason.push('\n');
                    }
                }
                let r = d.inner.store.write(|tx| {
                    // A deployment superseded meanwhile keeps its state.
                    if tx.deployment(id)?.state == DeploymentState::Building {
                        tx.advance_deployment(
                            id,
                            DeploymentState::Failed,
                            None,
                            Some(&reason),
                            "build failed",
                        )?;
                        tx.append_event(
                            &service,
                            "deploy.failed",
                            &format!("deployment #{id}: build failed: {e}"),
                            None,
                        )?;
                    }
                    Ok::<_, StoreError>(())
                });
                if let Err(e) = r {
                    tracing::error!(error = %e, deployment = id, "cannot record a failed build");
                }
            }
        });
    }

    async fn build(
        &self,
        deployment: &Deployment,
        spec: &ServiceSpec,
        archive: Vec<u8>,
    ) -> Result<(), DeployError> {
        let service = spec.name().clone();
        let dir = self.inner.artifacts.build_dir(deployment.id)?;
        let log_path = self.build_log_path(deployment.id);
        let unpack_dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            pack::unpack(&archive, &unpack_dir, pack::DEFAULT_MAX_BYTES)
        })
        .await
        .map_err(|e| DeployError::Invalid(format!("unpack task failed: {e}")))??;
        let mut log = BuildLog::create(&log_path)?;
        if let Some(build) = &spec.build {
            log.line(&format!("$ {}", build.command));
            let env: Vec<(String, String)> = spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            artifact::run_build(
                &dir,
                &build.command,
                &env,
                self.inner.config.build_timeout,
                |l| log.line(&l),
            )
            .await?;
        } else {
            log.line("no [build] section: the uploaded files are the release");
        }
        let artifacts = self.inner.artifacts.clone();
        let commit_dir = dir.clone();
        let digest = tokio::task::spawn_blocking(move || artifacts.commit(&commit_dir))
            .await
            .map_err(|e| DeployError::Invalid(format!("commit task failed: {e}")))??;
        log.line(&format!("artifact sha256:{digest}"));
        let spec_json =
            serde_json::to_string(spec).map_err(|e| DeployError::Invalid(e.to_string()))?;
        let actor = deployment.actor.clone();
        let id = deployment.id;
        let started = self.inner.store.write(|tx| {
            if tx.deployment(id)?.state != DeploymentState::Building {
                return Ok::<_, DeployError>(false);
            }
            let release =
                tx.create_release(&service, &spec_json, &digest, "deploy", actor.as_deref())?;
            let desired = tx.desired(&service)?;
            tx.set_desired(
                &service,
                &tend_store::Desired {
                    release: Some(release.version),
                    stopped: false,
                    ..desired
                },
            )?;
            tx.advance_deployment(
                id,
                DeploymentState::RollingOut,
                Some(release.version),
                None,
                &format!("built v{}", release.version),
            )?;
            tx.append_event(
                &service,
                "release.created",
                &format!("v{} built (artifact {})", release.version, &digest[..12]),
                actor.as_deref(),
            )?;
            Ok(true)
        })?;
        if started {
            log.line("rolling out");
            self.wake(&service);
        }
        Ok(())
    }

    async fn run(self, mut wake_rx: mpsc::UnboundedReceiver<Option<ServiceName>>) {
        if let Err(e) = self.recover_builds() {
            tracing::error!(error = %e, "cannot mark interrupted builds");
        }
        self.sweep_orphans().await;
        self.reconcile_all().await;
        let mut resync = tokio::time::interval(self.inner.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(self.inner.config.orphan_sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gc = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                msg = wake_rx.recv() => {
                    let Some(first) = msg else { return };
                    // Coalesce a burst of wake-ups into one pass per service.
                    let mut set = BTreeMap::new();
                    let mut all = first.is_none();
                    if let Some(s) = first { set.insert(s.to_string(), s); }
                    while let Ok(more) = wake_rx.try_recv() {
                        match more {
                            Some(s) => { set.insert(s.to_string(), s); }
                            None => all = true,
                        }
                    }
                    if all {
                        self.reconcile_all().await;
                    } else {
                        for s in set.values() {
                            self.reconcile_logged(s).await;
                        }
                        self.publish_routes();
                    }
                }
                _ = resync.tick() => self.reconcile_all().await,
                _ = sweep.tick() => self.sweep_orphans().await,
                _ = gc.tick() => self.collect_garbage().await,
            }
        }
    }

    /// A build interrupted by a restart cannot resume: its upload is gone.
    fn recover_builds(&self) -> Result<(), StoreError> {
        self.inner.store.write(|tx| {
            for d in tx.active_deployments()? {
                if d.state == DeploymentState::Building {
                    tx.advance_deployment(
                        d.id,
                        DeploymentState::Failed,
                        None,
                        Some("the server restarted during the build; run `tend deploy` again"),
                        "interrupted",
                    )?;
                }
            }
            Ok(())
        })
    }

    async fn reconcile_all(&self) {
        let services = match self.inner.store.read(|tx| tx.service_names()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot list services");
                return;
            }
        };
        for s in &services {
            self.reconcile_logged(s).await;
        }
        // Live state of services that no longer exist is dropped; their
        // processes are orphans now and the sweep stops them.
        let names: HashSet<&str> = services.iter().map(|s| s.as_str()).collect();
        lock(&self.inner.live).retain(|_, l| names.contains(l.service.as_str()));
        self.publish_routes();
    }

    async fn reconcile_logged(&self, service: &ServiceName) {
        if let Err(e) = self.reconcile(service).await {
            tracing::warn!(service = %service, error = %e, "reconcile failed; will retry");
        }
    }

    fn publish_routes(&self) {
        let records = match self.inner.store.read(|tx| {
            let mut out = Vec::new();
            for rec in tx.services(None)? {
                out.push(rec);
            }
            Ok::<_, StoreError>(out)
        }) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read services for the routing table");
                return;
            }
        };
        let live = lock(&self.inner.live);
        let mut table = BTreeMap::new();
        for rec in records {
            let (host, paths) = match serde_json::from_str::<ServiceSpec>(&rec.spec) {
                Ok(spec) => (spec.http.host.clone(), spec.http.paths.clone()),
                Err(_) => (None, vec!["/".to_string()]),
            };
            let mut endpoints: Vec<Endpoint> = live
                .iter()
                .filter(|(_, l)| l.service == rec.name && l.health.ready() && !l.stopping)
                .map(|(id, l)| Endpoint {
                    instance: id.clone(),
                    release: release_of(id).unwrap_or(0),
                    addr: SocketAddr::from(([127, 0, 0, 1], l.port)),
                })
                .collect();
            endpoints.sort_by(|a, b| a.instance.cmp(&b.instance));
            table.insert(
                rec.name.to_string(),
                Route {
                    host,
                    paths,
                    endpoints,
                },
            );
        }
        let table = Arc::new(table);
        self.inner.routes.send_if_modified(|cur| {
            if **cur == *table {
                false
            } else {
                *cur = table.clone();
                true
            }
        });
    }

    /// One pass of the control loop for one service.
    async fn reconcile(&self, service: &ServiceName) -> Result<(), DeployError> {
        let inner = &self.inner;
        let snap = inner.store.read(|tx| -> Result<_, StoreError> {
            let desired = tx.desired(service)?;
            let instances = tx.instances(Some(service))?;
            let deployment = tx
                .active_deployments()?
                .into_iter()
                .find(|d| d.service == service.as_str() && d.state != DeploymentState::Building);
            let mut specs = HashMap::new();
            let mut versions: HashSet<u32> = instances.iter().map(|i| i.instance.release).collect();
            versions.extend(desired.release);
            for v in versions {
                if let Ok(release) = tx.release(service, v) {
                    specs.insert(v, release);
                }
            }
            Ok((desired, instances, deployment, specs))
        });
        let (desired, mut instances, deployment, releases) = match snap {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut specs: HashMap<u32, (String, ServiceSpec)> = HashMap::new();
        for (v, rec) in releases {
            let mut spec: ServiceSpec = serde_json::from_str(&rec.spec).map_err(|e| {
                DeployError::Invalid(format!(
                    "release v{v} of {service} has an unreadable spec: {e}"
                ))
            })?;
            // The environment the release runs with: `[env]`, config vars on
            // top, references resolved (cycles were refused when the vars were set).
            spec.env = tend_core::env::resolve(&spec.env, &rec.config)
                .map_err(|e| DeployError::Invalid(format!("release v{v} of {service}: {e}")))?;
            specs.insert(v, (rec.release.artifact, spec));
        }

        // 1. Observe: adopt what runs without live state, notice exits.
        for rec in &mut instances {
            self.observe(service, rec, &specs).await?;
        }

        let Some(target) = desired.release else {
            // Never deployed: nothing should run.
            for rec in &instances {
                self.stop_instance(rec, &specs);
            }
            return Ok(());
        };
        let Some((artifact, spec)) = specs.get(&target).cloned() else {
            return Err(DeployError::Invalid(format!(
                "{service}: desired release v{target} is missing"
            )));
        };
        let want = if desired.stopped {
            0
        } else {
            desired.scale.unwrap_or(spec.run.instances)
        };

        // 2. Health-derived states into the store (for status and recovery).
        self.sync_states(service, &instances)?;

        // 3. The rollout's verdict.
        let mut failing = false;
        if let Some(d) = &deployment {
            failing = self.judge(service, d, &instances, target, want, &spec)?;
            if failing {
                // The desired release may have changed (rolled back): look again next pass.
                self.wake(service);
                return Ok(());
            }
        }

        // 4. Converge: start new instances, stop old ones, within surge and unavailability.
        let restart_before = deployment
            .as_ref()
            .filter(|d| d.kind == DeploymentKind::Restart && d.release == Some(target))
            .map(|d| d.created_at);
        let is_new = |r: &InstanceRecord| {
            r.instance.release == target && restart_before.is_none_or(|t| r.created_at >= t)
        };
        let active: Vec<&InstanceRecord> = instances
            .iter()
            .filter(|r| r.instance.state != InstanceState::Draining)
            .filter(|r| {
                !lock(&inner.live)
                    .get(&r.instance.id)
                    .is_some_and(|l| l.stopping)
            })
            .collect();
        let (new, old): (Vec<&InstanceRecord>, Vec<&InstanceRecord>) =
            active.iter().partition(|r| is_new(r));
        let is_ready = |r: &InstanceRecord| {
            lock(&inner.live)
                .get(&r.instance.id)
                .is_some_and(|l| l.health.ready())
        };
        let surge = spec.deploy.max_surge;
        let unavailable = spec.deploy.max_unavailable;
        let min_ready = want.saturating_sub(unavailable);

        // Crashed instances of the target release restart after their backoff.
        let now = Instant::now();
        for r in new.iter().filter(|r| {
            r.instance.state == InstanceState::Crashed
                || (r.instance.state == InstanceState::Pending
                    && !lock(&inner.live).contains_key(&r.instance.id))
        }) {
            let due = lock(&inner.backoff)
                .get(&r.instance.id)
                .is_none_or(|t| *t <= now);
            if due && !failing {
                lock(&inner.backoff).remove(&r.instance.id);
                self.start_instance(service, target, &artifact, &spec, Some(r))
                    .await?;
            }
        }

        if !failing && want > 0 {
            let room = (want + surge).saturating_sub(active.len() as u32);
            let missing = want.saturating_sub(new.len() as u32);
            for _ in 0..room.min(missing) {
                self.start_instance(service, target, &artifact, &spec, None)
                    .await?;
            }
        }

        // Old instances that serve nothing can go at once; ready ones only while
        // enough others are ready.
        let ready_total = active.iter().filter(|r| is_ready(r)).count() as u32;
        let mut stoppable = ready_total.saturating_sub(min_ready);
        for r in old.iter().filter(|r| !is_ready(r)) {
            self.stop_instance(r, &specs);
        }
        for r in old.iter().filter(|r| is_ready(r)) {
            if stoppable == 0 {
                break;
            }
            // Keep the old ready one if nothing new is ready to take its place
            // and stopping it would leave fewer ready than asked.
            self.stop_instance(r, &specs);
            stoppable -= 1;
        }
        // Too many of the target release (scale down): unready ones first, then newest.
        if new.len() as u32 > want {
            let mut extra: Vec<&&InstanceRecord> = new.iter().collect();
            extra.sort_by_key(|r| (is_ready(r), std::cmp::Reverse(r.created_at)));
            for r in extra.into_iter().take(new.len() - want as usize) {
                self.stop_instance(r, &specs);
            }
        }
        Ok(())
    }

    /// Tells the output sink about an instance's files.
    fn watch_output(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        release: u32,
        handle: &Handle,
    ) {
        if let Some(sink) = &self.inner.output {
            sink.watch(InstanceOutput {
                service: service.to_string(),
                team: spec.owner().to_string(),
                release,
                instance: handle.instance_id.clone(),
                stdout: handle.stdout_path.clone(),
                stderr: handle.stderr_path.clone(),
            });
        }
    }

    /// Forgets an instance record whose process is gone for good.
    fn forget_instance(&self, id: &str) -> Result<(), StoreError> {
        self.inner.store.write(|tx| tx.delete_instance(id))?;
        self.finish_output(id);
        Ok(())
    }

    fn finish_output(&self, id: &str) {
        if let Some(sink) = &self.inner.output {
            sink.finish(id);
        }
    }

    /// Drops the live state of an instance whose process ended, keeping its
    /// latest health results for a failure report.
    fn forget_live(&self, id: &str) -> Option<Live> {
        let l = lock(&self.inner.live).remove(id)?;
        let mut last = lock(&self.inner.last_checks);
        // Bounded: only the latest few matter.
        if last.len() > 1000 {
            last.clear();
        }
        last.insert(id.to_string(), l.health.report());
        Some(l)
    }

    /// Re-attaches to or notices the exit of one instance.
    async fn observe(
        &self,
        service: &ServiceName,
        rec: &mut InstanceRecord,
        specs: &HashMap<u32, (String, ServiceSpec)>,
    ) -> Result<(), DeployError> {
        let inner = &self.inner;
        let id = rec.instance.id.clone();
        let known = lock(&inner.live)
            .get(&id)
            .map(|l| (l.handle.clone(), l.stopping));
        match known {
            None => {
                let Some(handle_json) = rec.handle.clone() else {
                    if rec.instance.state == InstanceState::Draining {
                        self.forget_instance(&id)?;
                    }
                    return Ok(());
                };
                if matches!(
                    rec.instance.state,
                    InstanceState::Crashed | InstanceState::Pending
                ) {
                    return Ok(());
                }
                let handle: Handle = serde_json::from_str(&handle_json).map_err(|e| {
                    DeployError::Invalid(format!("instance {id}: unreadable handle: {e}"))
                })?;
                match inner.runtime.recover(&handle).await? {
                    State::Running { .. } => {
                        tracing::info!(instance = %id, pid = handle.pid, "adopted a running instance");
                        let mut health = Health::new(Instant::now());
                        if rec.instance.state == InstanceState::Ready {
                            health.assume_ready();
                        }
                        self.track(
                            service,
                            &id,
                            handle.clone(),
                            rec.instance.port,
                            health,
                            specs.get(&rec.instance.release).map(|s| &s.1),
                        );
                        if rec.instance.state == InstanceState::Draining {
                            let grace = specs
                                .get(&rec.instance.release)
                                .map(|s| s.1.run.grace_period)
                                .unwrap_or(Duration::from_secs(10));
                            self.spawn_stop(&id, handle, grace, None);
                        }
                    }
                    State::Exited { code, signal } => {
                        // Its last lines are still in its files.
                        if let Some((_, spec)) = specs.get(&rec.instance.release) {
                            self.watch_output(service, spec, rec.instance.release, &handle);
                        }
                        let _ = inner.runtime.destroy(&handle).await;
                        if rec.instance.state == InstanceState::Draining {
                            self.forget_instance(&id)?;
                        } else {
                            let why = format!(
                                "{} while tend was down",
                                crate::describe_exit(code, signal)
                            );
                            self.record_crash(service, rec, &why, Duration::ZERO)?;
                        }
                    }
                }
            }
            Some((handle, stopping)) => {
                if stopping {
                    return Ok(());
                }
                if let State::Exited { code, signal } = inner.runtime.inspect(&handle).await? {
                    let uptime = self
                        .forget_live(&id)
                        .map(|l| l.since.elapsed())
                        .unwrap_or_default();
                    let _ = inner.runtime.destroy(&handle).await;
                    let why = crate::describe_exit(code, signal);
                    self.record_crash(service, rec, &why, uptime)?;
                }
            }
        }
        Ok(())
    }

    fn record_crash(
        &self,
        service: &ServiceName,
        rec: &mut InstanceRecord,
        why: &str,
        uptime: Duration,
    ) -> Result<(), StoreError> {
        let id = rec.instance.id.clone();
        let restarts = rec.instance.restarts + 1;
        let streak = if uptime >= BACKOFF_RESET_AFTER {
            0
        } else {
            rec.instance.restarts
        };
        let delay = backoff(streak);
        lock(&self.inner.backoff).insert(id.clone(), Instant::now() + delay);
        self.inner.store.write(|tx| {
            tx.instance_crashed(&id, why)?;
            tx.append_event(
                service,
                "instance.crashed",
                &format!(
                    "{id} (v{}) {why}; restart #{restarts} in {}",
                    rec.instance.release,
                    tend_manifest::format_duration(delay)
                ),
                None,
            )?;
            if restarts == CRASH_LOOP_AFTER {
                tx.append_event(
                    service,
                    "instance.crash_looping",
                    &format!("{id} keeps crashing ({restarts} restarts): {why}"),
                    None,
                )?;
            }
            Ok::<_, StoreError>(())
        })?;
        rec.instance.state = InstanceState::Crashed;
        rec.instance.restarts = restarts;
        rec.instance.last_exit = Some(why.to_string());
        Ok(())
    }

    /// Writes health-derived state changes to the store.
    fn sync_states(
        &self,
        service: &ServiceName,
        instances: &[InstanceRecord],
    ) -> Result<(), StoreError> {
        let changes: Vec<(String, InstanceState, Option<String>)> = {
            let live = lock(&self.inner.live);
            instances
                .iter()
                .filter_map(|r| {
                    let l = live.get(&r.instance.id)?;
                    if l.stopping {
                        return None;
                    }
                    let state = if l.health.ready() {
                        InstanceState::Ready
                    } else if matches!(
                        r.instance.state,
                        InstanceState::Ready | InstanceState::Unhealthy
                    ) {
                        InstanceState::Unhealthy
                    } else {
                        InstanceState::Starting
                    };
                    let last = l.health.recent.back().map(|(_, p)| p.detail.clone());
                    (state != r.instance.state).then(|| (r.instance.id.clone(), state, last))
                })
                .collect()
        };
        if changes.is_empty() {
            return Ok(());
        }
        self.inner.store.write(|tx| {
            for (id, state, last) in &changes {
                tx.set_instance_state(id, *state, None)?;
                // Health changes belong in the timeline; "starting" is implied by "started".
                let msg = match state {
                    InstanceState::Ready => format!("{id} is ready"),
                    InstanceState::Unhealthy => format!(
                        "{id} is unhealthy and out of traffic ({})",
                        last.as_deref().unwrap_or("no probe result")
                    ),
                    _ => continue,
                };
                tx.append_event(service, &format!("instance.{}", state.as_str()), &msg, None)?;
            }
            Ok::<_, StoreError>(())
        })
    }

    /// Decides whether the rollout succeeded, goes on, or failed. Returns true
    /// when it failed (and was rolled back or marked failed).
    fn judge(
        &self,
        service: &ServiceName,
        d: &Deployment,
        instances: &[InstanceRecord],
        target: u32,
        want: u32,
        spec: &ServiceSpec,
    ) -> Result<bool, DeployError> {
        if d.release != Some(target) {
            return Ok(false);
        }
        let started_ms = d.created_at.as_millis();
        let now = Timestamp::from_system_time(SystemTime::now());
        let new: Vec<&InstanceRecord> = instances
            .iter()
            .filter(|r| r.instance.release == target && r.created_at.as_millis() >= started_ms)
            .collect();
        // A new instance that crashed, or did not become ready in time, fails the rollout.
        let mut failure: Option<(&InstanceRecord, String)> = None;
        for r in &new {
            if r.instance.state == InstanceState::Crashed {
                failure = Some((
                    r,
                    format!(
                        "instance {} {} during the {}",
                        r.instance.id,
                        r.instance
                            .last_exit
                            .clone()
                            .unwrap_or_else(|| "exited".into()),
                        if d.state == DeploymentState::Verifying {
                            "verification window"
                        } else {
                            "rollout"
                        }
                    ),
                ));
                break;
            }
            let up_for = r
                .instance
                .started_at
                .map(|s| Duration::from_millis((now.as_millis() - s.as_millis()).max(0) as u64))
                .unwrap_or_default();
            if matches!(
                r.instance.state,
                InstanceState::Starting | InstanceState::Unhealthy
            ) && up_for > spec.deploy.healthy_deadline
            {
                failure = Some((
                    r,
                    format!(
                        "instance {} did not become healthy within {}",
                        r.instance.id,
                        tend_manifest::format_duration(spec.deploy.healthy_deadline)
                    ),
                ));
                break;
            }
        }
        if let Some((rec, what)) = failure {
            let report = self.failure_report(rec, &what);
            let rollback_to = d.previous.filter(|p| {
                *p != target && spec.deploy.auto_rollback && d.kind != DeploymentKind::Rollback
            });
            // Stop the failing release's new instances.
            for r in &new {
                if let Some(l) = lock(&self.inner.live).get_mut(&r.instance.id) {
                    l.health = Health::new(l.since);
                }
            }
            self.inner.store.write(|tx| -> Result<(), DeployError> {
                match rollback_to {
                    Some(prev) => {
                        let desired = tx.desired(service)?;
                        tx.set_desired(service, &tend_store::Desired { release: Some(prev), ..desired })?;
                        tx.advance_deployment(d.id, DeploymentState::RolledBack, None, Some(&report), &format!("rolled back to v{prev}"))?;
                        tx.append_event(service, "deploy.rolled_back", &format!("deployment #{} of v{target} failed and was rolled back to v{prev}: {what}", d.id), None)?;
                    }
                    None => {
                        tx.advance_deployment(d.id, DeploymentState::Failed, None, Some(&report), "failed")?;
                        tx.append_event(service, "deploy.failed", &format!("deployment #{} of v{target} failed: {what}", d.id), None)?;
                    }
                }
                Ok(())
            })?;
            if rollback_to.is_some() {
                // The failing instances go now; the previous release comes back up.
                for r in &new {
                    self.stop_instance(r, &HashMap::new());
                }
            }
            return Ok(true);
        }
        let live = lock(&self.inner.live);
        let ready_new = new
            .iter()
            .filter(|r| live.get(&r.instance.id).is_some_and(|l| l.health.ready()))
            .count() as u32;
        let others = instances
            .iter()
            .filter(|r| !new.iter().any(|n| n.instance.id == r.instance.id))
            .count();
        drop(live);
        match d.state {
            DeploymentState::RollingOut
                if ready_new >= want && others == 0 && new.len() as u32 == want =>
            {
                let verify = spec.deploy.verify;
                self.inner.store.write(|tx| {
                    tx.advance_deployment(
                        d.id,
                        DeploymentState::Verifying,
                        None,
                        None,
                        &format!(
                            "{want} instance(s) of v{target} ready; verifying for {}",
                            tend_manifest::format_duration(verify)
                        ),
                    )
                })?;
                // Look again the moment the window closes, not at the next resync.
                let d2 = self.clone();
                let svc = service.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(verify + Duration::from_millis(1)).await;
                    d2.wake(&svc);
                });
            }
            DeploymentState::Verifying => {
                let since = d
                    .steps
                    .last()
                    .map(|s| s.at.as_millis())
                    .unwrap_or(started_ms);
                if now.as_millis() - since >= spec.deploy.verify.as_millis() as i64 {
                    self.inner.store.write(|tx| {
                        tx.advance_deployment(
                            d.id,
                            DeploymentState::Succeeded,
                            None,
                            None,
                            &format!("v{target} serves"),
                        )?;
                        let what = match d.kind {
                            DeploymentKind::Deploy => format!("v{target} deployed"),
                            DeploymentKind::Rollback => format!("rolled back to v{target}"),
                            DeploymentKind::Restart => format!("v{target} restarted"),
                        };
                        tx.append_event(
                            service,
                            "deploy.succeeded",
                            &format!("deployment #{}: {what}", d.id),
                            d.actor.as_deref(),
                        )
                    })?;
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// Why a rollout failed: what happened, the health checks, and the last log
    /// lines of the failing instance.
    fn failure_report(&self, rec: &InstanceRecord, what: &str) -> String {
        let mut out = format!("{what}\n");
        let id = &rec.instance.id;
        let checks = lock(&self.inner.live)
            .get(id)
            .map(|l| l.health.report())
            .or_else(|| lock(&self.inner.last_checks).get(id).cloned())
            .unwrap_or_default();
        if !checks.is_empty() {
            out.push_str("health checks:\n");
            for c in checks {
                out.push_str(&format!("  {c}\n"));
            }
        }
        let handle: Option<Handle> = rec
            .handle
            .as_deref()
            .and_then(|h| serde_json::from_str(h).ok());
        if let Some(h) = handle {
            for (name, path) in [("stdout", &h.stdout_path), ("stderr", &h.stderr_path)] {
                let lines = tail_lines(path, FAILURE_LOG_LINES);
                if !lines.is_empty() {
                    out.push_str(&format!(
                        "last {} {name} lines of {}:\n",
                        lines.len(),
                        rec.instance.id
                    ));
                    for l in lines {
                        out.push_str(&format!("  {l}\n"));
                    }
                }
            }
        }
        out
    }

    /// Starts a new instance, or restarts a crashed one (`existing`).
    async fn start_instance(
        &self,
        service: &ServiceName,
        release: u32,
        artifact: &str,
        spec: &ServiceSpec,
        existing: Option<&InstanceRecord>,
    ) -> Result<(), DeployError> {
        let inner = &self.inner;
        let release_dir = inner.artifacts.path(artifact);
        if !release_dir.is_dir() {
            return Err(DeployError::Invalid(format!(
                "{service} v{release}: its artifact was garbage-collected; deploy a newer release"
            )));
        }
        let port = free_port()?;
        let id = match existing {
            Some(r) => r.instance.id.clone(),
            None => {
                let id = format!("{service}-v{release}-{:04x}", rand::random::<u16>());
                // Intent first: a crash after the spawn leaves a record, never an unknown process.
                inner
                    .store
                    .write(|tx| tx.insert_instance(service, &id, release, port, 0))?;
                id
            }
        };
        let mut env = spec.env.clone();
        let mut redact = Vec::new();
        // Decrypted only now, for this start; a release whose secrets do not
        // decrypt (altered, or the wrong key) does not start at all.
        let secrets = self.release_secrets(service, release);
        if let Ok(list) = &secrets {
            for (k, v) in list {
                env.insert(k.clone(), v.to_string());
                redact.push(k.clone());
            }
        }
        let ispec = InstanceSpec {
            instance_id: id.clone(),
            service: service.to_string(),
            release,
            release_dir,
            command: spec.run.command.clone(),
            env,
            redact,
            port,
            memory_limit: spec.run.memory,
            cpu_limit: spec.run.cpus,
        };
        let started = match secrets {
            Ok(_) => inner.runtime.start(&ispec).await.map_err(|e| e.to_string()),
            Err(why) => {
                let why = format!("refused to start: {why}");
                inner.store.write(|tx| {
                    tx.append_event(
                        service,
                        "instance.refused",
                        &format!("{id} (v{release}) {why}"),
                        None,
                    )
                })?;
                Err(why)
            }
        };
        drop(ispec);
        match started {
            Ok(handle) => {
                let json = serde_json::to_string(&handle)
                    .map_err(|e| DeployError::Invalid(e.to_string()))?;
                inner.store.write(|tx| {
                    tx.instance_started(&id, &json, port)?;
                    let msg = match existing {
                        Some(r) => format!(
                            "{id} (v{release}) restarted on port {port} (restart #{})",
                            r.instance.restarts
                        ),
                        None => format!("{id} (v{release}) started on port {port}"),
                    };
                    tx.append_event(service, "instance.started", &msg, None)
                })?;
                self.track(
                    service,
                    &id,
                    handle,
                    port,
                    Health::new(Instant::now()),
                    Some(spec),
                );
            }
            Err(e) => {
                tracing::warn!(instance = %id, error = %e, "cannot start instance");
                let mut rec = match existing {
                    Some(r) => r.clone(),
                    None => inner
                        .store
                        .read(|tx| tx.instances(Some(service)))?
                        .into_iter()
                        .find(|r| r.instance.id == id)
                        .ok_or_else(|| DeployError::Invalid(format!("instance {id} vanished")))?,
                };
                let why = if e.starts_with("refused to start") {
                    e
                } else {
                    format!("could not start: {e}")
                };
                self.record_crash(service, &mut rec, &why, Duration::ZERO)?;
            }
        }
        Ok(())
    }

    /// Starts watching a running instance: its exit and its health.
    fn track(
        &self,
        service: &ServiceName,
        id: &str,
        handle: Handle,
        port: u16,
        health: Health,
        spec: Option<&ServiceSpec>,
    ) {
        if let Some(spec) = spec {
            self.watch_output(service, spec, release_of(id).unwrap_or(0), &handle);
        }
        let mut tasks = Vec::new();
        // Exit watcher: wakes the service the moment the process ends.
        {
            let d = self.clone();
            let h = handle.clone();
            let svc = service.clone();
            tasks.push(
                tokio::spawn(async move {
                    let _ = d.inner.runtime.wait(&h).await;
                    d.wake(&svc);
                })
                .abort_handle(),
            );
        }
        // Health checker.
        let d = self.clone();
        let svc = service.clone();
        let iid = id.to_string();
        let health_spec = spec.and_then(|s| s.health.clone());
        let grace = spec
            .map(|s| s.run.grace_period)
            .unwrap_or(Duration::from_secs(10));
        let work_dir = handle.work_dir.clone();
        tasks.push(
            tokio::spawn(async move {
                match health_spec {
                    None => {
                        tokio::time::sleep(NO_CHECK_READY_AFTER).await;
                        if let Some(l) = lock(&d.inner.live).get_mut(&iid) {
                            l.health.assume_ready();
                        }
                        d.wake(&svc);
                    }
                    Some(hs) => {
                        // The first probe comes quickly so fast starters serve fast.
                        // Until the first success, probe early and back off
                        // (10 ms, 20 ms, ... up to the interval), so a fast
                        // starter serves within milliseconds of binding.
                        let mut fast = Duration::from_millis(10).min(hs.interval);
                        let mut delay = fast;
                        loop {
                            tokio::time::sleep(delay).await;
                            delay = hs.interval;
                            let r = health::probe(
                                &d.inner.http,
                                &hs.check,
                                port,
                                hs.timeout,
                                &work_dir,
                            )
                            .await;
                            let verdict = {
                                let mut live = lock(&d.inner.live);
                                let Some(l) = live.get_mut(&iid) else { return };
                                if l.stopping {
                                    return;
                                }
                                let before_ready = l.health.ready();
                                let v = l.health.record(&hs, r, Instant::now());
                                if !l.health.ready() && !before_ready {
                                    fast = (fast * 2).min(hs.interval);
                                    delay = fast;
                                }
                                v
                            };
                            match verdict {
                                Verdict::Same => {}
                                Verdict::BecameReady | Verdict::BecameUnready => d.wake(&svc),
                                Verdict::Restart => {
                                    d.liveness_failed(&svc, &iid, &hs, grace);
                                    return;
                                }
                            }
                        }
                    }
                }
            })
            .abort_handle(),
        );
        lock(&self.inner.live).insert(
            id.to_string(),
            Live {
                service: service.clone(),
                handle,
                port,
                health,
                since: Instant::now(),
                stopping: false,
                kill_reason: None,
                tasks,
            },
        );
    }

    /// An instance failed its checks too often: replace it (stop, then the
    /// supervisor restarts it with backoff).
    fn liveness_failed(
        &self,
        service: &ServiceName,
        id: &str,
        hs: &tend_manifest::HealthSection,
        grace: Duration,
    ) {
        let handle = {
            let mut live = lock(&self.inner.live);
            let Some(l) = live.get_mut(id) else { return };
            if l.stopping {
                return;
            }
            let last = l
                .health
                .recent
                .back()
                .map(|(_, r)| r.detail.clone())
                .unwrap_or_default();
            l.stopping = true;
            l.kill_reason = Some(format!(
                "failed {} health checks in a row ({last})",
                hs.unhealthy_threshold
            ));
            l.handle.clone()
        };
        let reason = lock(&self.inner.live)
            .get(id)
            .and_then(|l| l.kill_reason.clone());
        let _ = self.inner.store.write(|tx| {
            tx.append_event(
                service,
                "instance.unhealthy",
                &format!("{id} {}; replacing it", reason.clone().unwrap_or_default()),
                None,
            )
        });
        self.spawn_stop(id, handle, grace, reason);
        self.publish_routes();
    }

    /// Drains and stops an instance (idempotent).
    fn stop_instance(&self, rec: &InstanceRecord, specs: &HashMap<u32, (String, ServiceSpec)>) {
        let id = &rec.instance.id;
        let grace = specs
            .get(&rec.instance.release)
            .map(|s| s.1.run.grace_period)
            .unwrap_or(Duration::from_secs(10));
        let handle = {
            let mut live = lock(&self.inner.live);
            match live.get_mut(id) {
                Some(l) if l.stopping => return,
                Some(l) => {
                    l.stopping = true;
                    Some(l.handle.clone())
                }
                None => None,
            }
        };
        let r = self.inner.store.write(|tx| match handle {
            Some(_) => tx.set_instance_state(id, InstanceState::Draining, None),
            // Not running (crashed, pending): just forget it.
            None => tx.delete_instance(id),
        });
        if let Err(e) = r {
            tracing::error!(instance = %id, error = %e, "cannot record a stop");
        }
        if handle.is_none() {
            self.finish_output(id);
        }
        lock(&self.inner.backoff).remove(id);
        if let Some(h) = handle {
            self.publish_routes();
            self.spawn_stop(id, h, grace, None);
        }
    }

    /// SIGTERM, grace, SIGKILL, clean up; then forget the instance, or record it
    /// as crashed when it was killed for failing its checks.
    fn spawn_stop(&self, id: &str, handle: Handle, grace: Duration, crash_reason: Option<String>) {
        let d = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let rt = &d.inner.runtime;
            // Out of the routing table already; let requests in flight finish,
            // within the grace period, before the signal.
            if let Some(drainer) = d.inner.drainer.get() {
                drainer.drained(&id, grace).await;
            }
            if let Err(e) = rt.stop(&handle, libc::SIGTERM, grace).await {
                tracing::warn!(instance = %id, error = %e, "stop failed; retrying on the next pass");
                if let Some(l) = lock(&d.inner.live).get_mut(&id) {
                    l.stopping = false;
                }
                return;
            }
            if let Err(e) = rt.destroy(&handle).await {
                tracing::warn!(instance = %id, error = %e, "cannot clean up the instance's files");
            }
            let service = d.forget_live(&id).map(|l| l.service.clone());
            let r = d.inner.store.write(|tx| {
                let rec = tx
                    .instances(None)?
                    .into_iter()
                    .find(|r| r.instance.id == id);
                match (&crash_reason, rec) {
                    (Some(reason), Some(rec)) => {
                        tx.instance_crashed(&id, reason)?;
                        let delay = backoff(rec.instance.restarts);
                        lock(&d.inner.backoff).insert(id.clone(), Instant::now() + delay);
                        Ok::<_, StoreError>(Some(rec.service))
                    }
                    (_, rec) => {
                        tx.delete_instance(&id)?;
                        d.finish_output(&id);
                        if let Some(r) = &rec {
                            tx.append_event(
                                &r.service,
                                "instance.stopped",
                                &format!("{id} (v{}) drained and stopped", r.instance.release),
                                None,
                            )?;
                        }
                        Ok(rec.map(|r| r.service))
                    }
                }
            });
            match r {
                Ok(svc) => {
                    if let Some(s) = svc.or(service) {
                        d.wake(&s);
                    }
                }
                Err(e) => {
                    tracing::error!(instance = %id, error = %e, "cannot record a stopped instance")
                }
            }
        });
    }

    /// Stops processes of this runtime that the store does not know (or whose
    /// record points at another process).
    async fn sweep_orphans(&self) {
        let found = match self.inner.runtime.list().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list runtime instances");
                return;
            }
        };
        if found.is_empty() {
            return;
        }
        let known: HashMap<String, Option<u32>> =
            match self.inner.store.read(|tx| tx.instances(None)) {
                Ok(list) => list
                    .into_iter()
                    .map(|r| {
                        let pid = r
                            .handle
                            .as_deref()
                            .and_then(|h| serde_json::from_str::<Handle>(h).ok())
                            .map(|h| h.pid);
                        (r.instance.id, pid)
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read instances for the orphan sweep");
                    return;
                }
            };
        for h in found {
            let ours = match known.get(&h.instance_id) {
                Some(Some(pid)) => *pid == h.pid,
                // A record without a handle: the daemon died between spawn and
                // record. The process is unknown to us; stop it and let the
                // controller start a fresh one.
                Some(None) => false,
                None => false,
            };
            if ours
                || lock(&self.inner.live)
                    .get(&h.instance_id)
                    .is_some_and(|l| l.handle.pid == h.pid)
            {
                continue;
            }
            tracing::warn!(instance = %h.instance_id, pid = h.pid, "stopping an orphan instance");
            let rt = self.inner.runtime.clone();
            let d = self.clone();
            tokio::spawn(async move {
                if rt.stop(&h, libc::SIGTERM, ORPHAN_GRACE).await.is_ok() {
                    let _ = rt.destroy(&h).await;
                }
                d.finish_output(&h.instance_id);
            });
        }
    }

    async fn collect_garbage(&self) {
        let keep = self.inner.config.keep_releases;
        let keep: HashSet<String> = match self.inner.store.read(|tx| tx.artifacts_to_keep(keep)) {
            Ok(k) => k.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read artifacts in use");
                return;
            }
        };
        let builds = lock(&self.inner.builds).clone();
        let artifacts = self.inner.artifacts.clone();
        match tokio::task::spawn_blocking(move || artifacts.gc(&keep, &builds)).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "collected old artifacts"),
            Ok(Err(e)) => tracing::warn!(error = %e, "artifact collection failed"),
            _ => {}
        }
    }
}

fn backoff(streak: u32) -> Duration {
    Duration::from_secs(1u64 << streak.min(9)).min(MAX_BACKOFF)
}

fn release_of(instance_id: &str) -> Option<u32> {
    let rest = instance_id.rsplit_once("-v")?.1;
    rest.split('-').next()?.parse().ok()
}

fn free_port() -> Result<u16, DeployError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| DeployError::Invalid(format!("no free port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| DeployError::Invalid(e.to_string()))?
        .port())
}

/// The last `n` lines of a text file (lossy UTF-8), reading at most 256 KiB.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return vec![];
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return vec![];
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return vec![];
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// The build log of one deployment: appended, line by line.
struct BuildLog {
    file: std::fs::File,
}

impl BuildLog {
    fn create(path: &Path) -> Result<Self, ArtifactError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ArtifactError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self { file })
    }

    fn line(&mut self, l: &str) {
        use std::io::Write;
        let _ = writeln!(self.file, "{l}");
    }
}
