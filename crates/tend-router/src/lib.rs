//! tend's built-in HTTP reverse proxy: the path every user request takes to
//! a service's instances.
//!
//! The deploy controller publishes which instances are ready as a
//! [`RoutingTable`] on a `watch` channel; [`Router`] follows it and sends
//! each request to an instance of the service its `Host` (and path) names.
//!
//! # Choices, and why
//!
//! - **hyper 1 + hyper-util, not axum.** The data path has one handler and no
//!   extractors; axum's router, tower layers and boxed bodies would add
//!   allocations and indirection to every request for nothing. The server is
//!   `hyper_util::server::conn::auto`, so one port speaks HTTP/1.1 and
//!   HTTP/2 with prior knowledge (h2c).
//! - **Threads of its own, nothing shared on the request path.** The router
//!   runs its connections on threads of its own (one per two cores by
//!   default: its instances run on the same machine), each a single-threaded
//!   runtime with its own pool of instance connections, like nginx's worker
//!   processes, rather than on the process's runtime. A client connection
//!   and the instance connection serving it live on the same thread, in the
//!   same task: no cross-thread wake-up, no lock. A single thread accepts
//!   its connections itself; with several, new connections go to the one
//!   with the fewest.
//! - **Our own HTTP/1.1 client** ([`client`]): a request head is written in
//!   one call, the response head is parsed in place (header values share the
//!   read buffer), and the response body is read from the instance's socket
//!   by the body hyper sends to the client. hyper's client would add a
//!   connection task, channels and a oneshot per request; the legacy pool a
//!   lock and a task per checkout. Keep-alive connections are pooled per
//!   instance and thread ([`pool`]), so steady traffic pays no connect.
//! - **Lock-free table.** A task watching the channel builds a [`Lookup`]
//!   (host → path prefixes → service → instances, with instance
//!   addresses and pre-allocated counters) and publishes it through an
//!   `ArcSwap`. A request does one wait-free load and a hash lookup on its
//!   host, lower-cased in a stack buffer; nothing is rebuilt per request.
//! - **Power of two choices** on per-instance in-flight counters
//!   ([`balance`]): near-optimal spreading with no coordination.
//! - **Streaming, no buffering.** Bodies stream through both ways as they
//!   come; uploads are capped by `Content-Length` (413 up front) and by
//!   `http_body_util::Limited` for chunked ones.
//! - **Retry only what provably was not sent.** A connect error means the
//!   instance never saw the request, so it is retried once on another
//!   instance; nothing of the request is consumed before the connection
//!   stands, so nothing needs buffering for that. A pooled connection the
//!   instance closed is noticed before use, not after. Anything else is
//!   answered 502 (or 504 on timeout): retrying a request the instance may
//!   have acted on could run it twice.
//! - **Zero-downtime draining.** Counters count a request from the choice of
//!   its instance to the last byte of its response (to the end of a
//!   WebSocket tunnel), so [`Router::drained`] can tell the deploy controller
//!   when an instance that left the table can be stopped.
//! - **Metrics on atomics.** Per-instance counters and histograms are created
//!   when the table changes; a request only does relaxed atomic adds.
//!
//! [`Lookup`]: table::Lookup
//! [`client`]: crate::client
//! [`pool`]: crate::pool

#![warn(missing_docs)]

mod balance;
mod client;
mod fxhash;
mod metrics;
mod pool;
mod proxy;
mod server;
mod table;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tend_core::routing::RoutingTable;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub use metrics::{InstanceMetrics, LatencyHistogram, MetricsSnapshot, RequestCount, StatusClass};

/// How often [`Router::drained`] looks at an instance's counter.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Settings of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Address to listen on (`127.0.0.1:7080` by default: loopback unless
    /// told otherwise).
    pub listen: SocketAddr,
    /// Longest wait for an instance's response headers, connect and retry
    /// included; past it the client gets a 504. Bodies may stream longer.
    pub request_timeout: Duration,
    /// A client connection with no request in progress for this long is
    /// closed (HTTP/2 gets a GOAWAY).
    pub idle_timeout: Duration,
    /// Largest request body accepted, in bytes; larger ones get a 413.
    pub max_body: u64,
    /// Log every request at info level on target `tend_router::access`.
    pub access_log: bool,
    /// Router threads, each with a runtime of its own; 0 (the default)
    /// means one per two cores, at least one: the instances the router
    /// serves run on the same machine and need cores too.
    pub workers: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_body: 100 * 1024 * 1024,
            access_log: false,
            workers: 0,
        }
    }
}

impl RouterConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        RouterConfig {
            listen,
            ..RouterConfig::default()
        }
    }
}

/// The reverse proxy. Cheap to clone: clones share one listener, one table,
/// one connection pool and one set of counters.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

/// What every connection and request of one router shares.
pub(crate) struct Shared {
    pub(crate) config: RouterConfig,
    local_addr: SocketAddr,
    /// Taken by `serve`, so a router is served once.
    listener: Mutex<Option<TcpListener>>,
    pub(crate) tables: table::Tables,
    pub(crate) http: auto::Builder<TokioExecutor>,
    /// The table-watching task; stopped when the last `Router` goes away.
    watcher: OnceLock<AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.get() {
            watcher.abort();
        }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("local_addr", &self.shared.local_addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Binds the listening socket and starts following `table`.
    ///
    /// Requests are not accepted before [`Router::serve`]; binding first
    /// lets the caller learn the port (`listen` may use port 0).
    pub async fn bind(
        config: RouterConfig,
        mut table: watch::Receiver<RoutingTable>,
    ) -> std::io::Result<Router> {
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;

        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // No header timer: it would cost a timer per request. The idle
            // timer of each connection (see `server`) closes connections
            // that sit without a complete request, half-sent heads included.
            .header_read_timeout(None);
        http.http2().timer(TokioTimer::new());

        let initial = table.borrow_and_update().clone();
        let shared = Arc::new(Shared {
            tables: table::Tables::new(&initial),
            config,
            local_addr,
            listener: Mutex::new(Some(listener)),
            http,
            watcher: OnceLock::new(),
        });
        let task = tokio::spawn(follow_table(Arc::downgrade(&shared), table));
        let _ = shared.watcher.set(task.abort_handle());
        Ok(Router { shared })
    }

    /// The address the router listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Accepts and proxies connections until `shutdown` resolves, then stops
    /// accepting, lets every connection finish the requests it has in flight
    /// (HTTP/2 clients get a GOAWAY) and returns once they are closed.
    ///
    /// Connections are served on the router's own threads
    /// ([`RouterConfig::workers`]); the caller's runtime only accepts. Log
    /// events of those threads go to the `tracing` dispatcher that is current
    /// when this is called.
    ///
    /// Established WebSocket tunnels are not waited for (they run on until
    /// they close). A router is served once; a second call fails.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| std::io::Error::other("this router is already being served"))?;
        server::serve(self.shared, listener, shutdown).await
    }

    /// Requests in flight on `instance` (0 for an unknown instance).
    pub fn in_flight(&self, instance: &str) -> u64 {
        self.shared
            .tables
            .instance(instance)
            .map_or(0, |s| s.in_flight())
    }

    /// Resolves when `instance` is out of the routing table and has no
    /// request in flight, or once `deadline` has passed.
    ///
    /// The controller removes the instance from the table, awaits this, then
    /// stops it. Table updates are applied by a background task, so this also
    /// waits for the router to have applied the removal; and it sees the
    /// instance idle twice, one poll apart, so a request that picked the
    /// instance just before the removal is counted before we answer.
    pub async fn drained(&self, instance: &str, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        let Some(stats) = self.shared.tables.instance(instance) else {
            return; // never routed, or long gone: nothing can be in flight
        };
        let mut idle_once = false;
        loop {
            let idle = !stats.is_routable() && stats.in_flight() == 0;
            if idle && idle_once {
                return;
            }
            idle_once = idle;
            let now = tokio::time::Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep_until(until.min(now + DRAIN_POLL)).await;
        }
    }

    /// The current counters of every service and instance.
    pub fn metrics(&self) -> MetricsSnapshot {
        metrics::snapshot(&self.shared.tables.report())
    }

    /// Appends the counters to `out` in the Prometheus text exposition
    /// format 0.0.4: `tend_http_requests_total{service,instance,method,code}`,
    /// `tend_http_requests_in_flight{service,instance}` and the
    /// `tend_http_request_duration_seconds{service,instance}` histogram.
    pub fn render_prometheus(&self, out: &mut String) {
        metrics::render(&self.shared.tables.report(), out);
    }
}

/// Rebuilds the lookup structure on every table change, until the sender or
/// the router goes away (then the last table stays in force).
async fn follow_table(shared: Weak<Shared>, mut table: watch::Receiver<RoutingTable>) {
    while table.changed().await.is_ok() {
        let next = table.borrow_and_update().clone();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.tables.apply(&next);
        tracing::debug!(services = next.len(), "routing table applied");
    }
}
