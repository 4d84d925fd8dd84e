//! tend's control-plane server: the HTTP API under `/api/v1`.
//!
//! Every request is authenticated by a bearer token ([`auth`]), authorised by
//! team membership or the admin role, and — when it changes something — audited
//! in the same store transaction as the change ([`audit`]). This crate is the only
//! one that knows HTTP on the control-plane side.

mod alerts;
pub mod auth;
pub mod db;
pub mod error;
mod extract;
mod logs;
mod metrics;
mod openapi;
mod routes;
mod ui;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tend_store::{NewToken, Store};
use tokio::net::TcpListener;

pub use openapi::openapi_json;
pub use tend_alerts::SmtpConfig;
pub use tend_metrics::remote_write::RemoteWriteConfig;

/// Name of the file, in the data directory, that holds the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Largest request body accepted, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the state lives.
    pub data_dir: PathBuf,
    /// Address of the API.
    pub listen: SocketAddr,
    /// Address of the router (served by the router product).
    pub router_listen: SocketAddr,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Releases per service whose artifacts are kept.
    pub keep_releases: u32,
    /// Longest a build may run.
    pub build_timeout: std::time::Duration,
    /// How often instances' metrics are collected.
    pub scrape_interval: std::time::Duration,
    /// Where to push every log line as well (Loki's base URL), if anywhere.
    pub logs_loki_url: Option<String>,
    /// The master key file of secrets; `None`: `<data_dir>/master.key`,
    /// created at first start. A given file is never created.
    pub master_key_file: Option<PathBuf>,
    /// Where to send every collected sample as well (Prometheus remote write), if anywhere.
    pub metrics_remote_write: Option<RemoteWriteConfig>,
    /// How often every alert rule is evaluated.
    pub alert_interval: std::time::Duration,
    /// Where PagerDuty events go instead of PagerDuty's Events API (tests, proxies).
    pub pagerduty_url: Option<String>,
    /// The SMTP relay of e-mail channels, if any.
    pub smtp: Option<SmtpConfig>,
    /// An Alertmanager that gets every alert as well (base URL), if any.
    pub alertmanager_url: Option<String>,
}

impl ServerConfig {
    /// Defaults for a data directory and addresses.
    pub fn new(data_dir: PathBuf, listen: SocketAddr, router_listen: SocketAddr) -> Self {
        Self {
            data_dir,
            listen,
            router_listen,
            body_limit: DEFAULT_BODY_LIMIT,
            keep_releases: 10,
            build_timeout: std::time::Duration::from_secs(15 * 60),
            scrape_interval: std::time::Duration::from_secs(10),
            logs_loki_url: None,
            master_key_file: None,
            metrics_remote_write: None,
            alert_interval: std::time::Duration::from_secs(5),
            pagerduty_url: None,
            smtp: None,
            alertmanager_url: None,
        }
    }
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] tend_store::StoreError),
    /// The API address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The router's address could not be bound.
    #[error("cannot listen on {addr} (router): {source}")]
    RouterBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The time-series store could not be opened.
    #[error("cannot open the metrics store: {0}")]
    Metrics(String),
    /// The log store could not be opened.
    #[error("cannot open the log store: {0}")]
    Logs(String),
    /// The runtime or the deployer could not start.
    #[error("cannot start deployment automation: {0}")]
    Deploy(String),
    /// The admin token file could not be written.
    #[error("cannot write {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// State shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    /// The control-plane store.
    pub store: Arc<Store>,
    /// Deployment automation: builds, rollouts, supervision.
    pub deployer: tend_deploy::Deployer,
    /// Where the router listens (for the URLs shown in status).
    pub router_addr: SocketAddr,
    /// Every instance's output, stored and searchable.
    pub logs: tend_logs::Logs,
    /// Metrics of every service and of the platform.
    pub tsdb: tend_metrics::Tsdb,
    /// The router (its traffic metrics).
    pub router: tend_router::Router,
    /// The master key that seals and opens secrets (or why there is none).
    pub secrets: Arc<tend_secrets::Vault>,
    /// The export of collected samples, when configured.
    pub remote_write: Option<tend_metrics::remote_write::RemoteWriter>,
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: TcpListener,
    router: tend_router::Router,
    state: AppState,
    body_limit: usize,
    /// The admin token created by this start, if this was the first start.
    pub bootstrap_token: Option<String>,
}

impl Server {
    /// Opens the store, creates the first admin token if there is none, and binds
    /// the API address.
    pub async fn bind(config: &ServerConfig) -> Result<Self, StartError> {
        let data_dir = config.data_dir.clone();
        let (store, bootstrap_token) =
            tokio::task::spawn_blocking(move || -> Result<_, StartError> {
                let store = Store::open(&data_dir)?;
                let token = bootstrap_admin(&store, &data_dir)?;
                Ok((store, token))
            })
            .await
            .map_err(|e| StartError::Store(tend_store::StoreError::Corrupt(e.to_string())))??;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let store = Arc::new(store);
        let logs_dir = config.data_dir.join("logs");
        let logs = tokio::task::spawn_blocking(move || {
            tend_logs::Logs::open(tend_logs::LogConfig::new(logs_dir))
        })
        .await
        .map_err(|e| StartError::Logs(e.to_string()))?
        .map_err(|e| StartError::Logs(e.to_string()))?;
        let secrets = Arc::new(match &config.master_key_file {
            Some(path) => tend_secrets::Vault::load(path, false),
            None => tend_secrets::Vault::load(&config.data_dir.join(tend_secrets::KEY_FILE), true),
        });
        if let Err(why) = secrets.status() {
            // The platform runs; only secret operations are refused, saying why.
            tracing::warn!("{why}");
        }
        let mut process_runtime =
            tend_runtime::ProcessRuntime::new(config.data_dir.join("instances"))
                .map_err(|e| StartError::Deploy(e.to_string()))?;
        // The output relay of instances with secrets is this very binary.
        if let Ok(exe) = std::env::current_exe() {
            process_runtime = process_runtime
                .with_output_relay(exe, vec![tend_runtime::relay::RELAY_ARG.to_string()]);
        }
        let runtime: Arc<dyn tend_runtime::Runtime> = Arc::new(process_runtime);
        let deployer = tend_deploy::Deployer::start(
            store.clone(),
            runtime.clone(),
            tend_deploy::DeployConfig {
                keep_releases: config.keep_releases,
                build_timeout: config.build_timeout,
                ..tend_deploy::DeployConfig::new(config.data_dir.clone())
            },
            Some(Arc::new(logs::LogsSink(logs.clone()))),
        )
        .map_err(|e| StartError::Deploy(e.to_string()))?;
        deployer.set_secrets(secrets.clone());
        logs::spawn_event_tailer(store.clone(), logs.clone());
        let router = tend_router::Router::bind(
            tend_router::RouterConfig::new(config.router_listen),
            deployer.routes(),
        )
        .await
        .map_err(|source| StartError::RouterBind {
            addr: config.router_listen,
            source,
        })?;
        deployer.set_drainer(Arc::new(RouterDrainer(router.clone())));
        let metrics_dir = config.data_dir.join("metrics");
        let tsdb = tokio::task::spawn_blocking(move || {
            tend_metrics::Tsdb::open(tend_metrics::TsdbConfig::new(metrics_dir))
        })
        .await
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .map_err(|e| StartError::Metrics(e.to_string()))?;
        let remote_write = match &config.metrics_remote_write {
            Some(cfg) => Some(
                tend_metrics::remote_write::RemoteWriter::start(cfg.clone())
                    .map_err(|e| StartError::Metrics(e.to_string()))?,
            ),
            None => None,
        };
        let router_sampler = Arc::new(metrics::RouterSampler::new(
            router.clone(),
            store.clone(),
            tsdb.clone(),
            remote_write.clone(),
        ));
        metrics::spawn_collector(metrics::CollectorDeps {
            tsdb: tsdb.clone(),
            store: store.clone(),
            routes: deployer.routes(),
            router: router_sampler.clone(),
            runtime,
            interval: config.scrape_interval,
            remote_write: remote_write.clone(),
        });
        let api_addr = listener.local_addr().unwrap_or(config.listen);
        alerts::spawn_engine(
            config,
            api_addr,
            store.clone(),
            tsdb.clone(),
            logs.clone(),
            router_sampler,
        );
        Ok(Self {
            listener,
            router: router.clone(),
            state: AppState {
                store,
                deployer,
                router_addr: router.local_addr(),
                logs,
                tsdb,
                router: router.clone(),
                remote_write,
                secrets,
            },
            body_limit: config.body_limit,
            bootstrap_token,
        })
    }

    /// The address the API listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address the router listens on.
    pub fn router_addr(&self) -> SocketAddr {
        self.router.local_addr()
    }

    /// Serves the API and the router until `shutdown` completes, then
    /// finishes in-flight requests. Instances keep running.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let router = tokio::spawn(self.router.serve(stopped(stop_rx.clone())));
        let logs = self.state.logs.clone();
        let app = ui::mount(
            routes::router(self.state.clone(), self.body_limit),
            self.state,
        );
        let api = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopped(stop_rx))
        .await;
        let router = router
            .await
            .map_err(|e| std::io::Error::other(format!("router task failed: {e}")))?;
        // Write what the logs hold in memory; instances keep writing to their
        // files and the next start picks up from the checkpoint.
        let _ = tokio::task::spawn_blocking(move || logs.shutdown()).await;
        api.and(router)
    }
}

/// Lets the deploy controller wait for an instance's requests to finish.
struct RouterDrainer(tend_router::Router);

#[async_trait::async_trait]
impl tend_deploy::Drainer for RouterDrainer {
    async fn drained(&self, instance: &str, deadline: std::time::Duration) {
        self.0.drained(instance, deadline).await
    }
}

/// Creates the first admin token on a fresh store, writing it to
/// `<data_dir>/admin.token` (mode 0600). Returns it so the caller can print it
/// once; later starts return `None`.
fn bootstrap_admin(store: &Store, data_dir: &Path) -> Result<Option<String>, StartError> {
    const BOOTSTRAPPED: &str = "bootstrapped_admin";
    let token = auth::generate_token();
    let hash = auth::hash_token(&token);
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    // Write the file before committing: if we crash in between, the next start
    // simply makes a new token and overwrites it.
    let created = store.write(|tx| -> Result<bool, StartError> {
        if tx.meta(BOOTSTRAPPED)?.is_some() {
            return Ok(false);
        }
        write_secret_file(&path, &token).map_err(|source| StartError::TokenFile {
            path: path.clone(),
            source,
        })?;
        tx.create_token(&NewToken {
            name: tend_core::TokenName::parse("admin").expect("`admin` is a valid name"),
            hash,
            admin: true,
            teams: vec![],
            created_by: None,
            expires_at: None,
        })?;
        tx.set_meta(BOOTSTRAPPED, "1")?;
        Ok(true)
    })?;
    Ok(created.then_some(token))
}

fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    // The mode only applies at creation; tighten an existing file too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}
