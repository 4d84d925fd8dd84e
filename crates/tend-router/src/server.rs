//! Accepting client connections, idle timeouts and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use crate::pool::Pool;
use crate::{proxy, Shared};

/// Per client connection: what its requests need, and whether it is idle.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) worker: Arc<Worker>,
    pub(crate) peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` gets it.
    pub(crate) forwarded_ip: http::HeaderValue,
    /// Requests started and not yet finished (response fully sent).
    active: AtomicU32,
    epoch: Instant,
    /// When `active` last dropped to zero, in ms since `epoch`.
    idle_since_ms: AtomicU64,
}

impl ConnCtx {
    pub(crate) fn request_started(&self) {
        self.active.fetch_add(1, Relaxed);
    }

    pub(crate) fn request_finished(&self, now: std::time::Instant) {
        let ms = now
            .saturating_duration_since(self.epoch.into_std())
            .as_millis();
        self.idle_since_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Relaxed);
        self.active.fetch_sub(1, Relaxed);
    }

    /// When the connection may be closed for idleness, or `None` while a
    /// request is in progress.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Relaxed) > 0 {
            return None;
        }
        Some(self.epoch + Duration::from_millis(self.idle_since_ms.load(Relaxed)) + idle)
    }
}

/// One router thread: a single-threaded runtime that owns the client
/// connections handed to it and their upstream connections.
pub(crate) struct Worker {
    pub(crate) pool: Pool,
    /// Client connections open on this worker, for balancing new ones.
    open: AtomicUsize,
    /// Every WebSocket (or other upgraded) tunnel holds a receiver, so the
    /// thread keeps running them after `serve` returned.
    pub(crate) tunnels: watch::Sender<()>,
}

/// How long a connection closed for idleness may take to go before it is
/// cut: only one stuck halfway through a request head takes longer.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often a worker closes idle upstream connections that expired or
/// that their instance closed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How many router threads to run: `config.workers`, or else one per two
/// cores (at least one).
///
/// Not one per core, as nginx's `auto` does: tend runs the instances it
/// proxies to (and its control plane) on the same machine, and a proxy
/// thread per core competes with them for every core. Measured on a 2-core
/// machine shared with the load generator and the instance: one thread
/// served ~19% more requests per second than two, with a lower p99 and 13%
/// less CPU per request (two threads spend it on cross-core wake-ups and
/// contended counters).
fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2))
}

type Handoff = mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>;

/// Where a worker gets its client connections.
enum Source {
    /// The only worker accepts them itself: no hand-off per connection.
    Listener(std::net::TcpListener),
    /// From the accepting task, which spreads them over the workers.
    Handoff(mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>),
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Every connection task (and every worker's accepting loop) holds a
    // receiver: `send` asks them to wind down, `closed` tells when the last
    // one is gone.
    let (stop_tx, stop_rx) = watch::channel(());
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let n = worker_count(shared.config.workers);
    // One worker accepts on its own thread; several get connections handed
    // over, to the one with the fewest open.
    let mut listener = Some(listener);
    let mut workers: Vec<(Arc<Worker>, Handoff)> = Vec::with_capacity(n);
    for i in 0..n {
        let worker = Arc::new(Worker {
            // Instances are local: a connect that takes long is a dead
            // instance, better retried elsewhere than waited for until the
            // request timeout.
            pool: Pool::new(shared.config.request_timeout.min(Duration::from_secs(5))),
            open: AtomicUsize::new(0),
            tunnels: watch::Sender::new(()),
        });
        let source = match listener.take_if(|_| n == 1) {
            Some(own) => Source::Listener(own.into_std()?),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                workers.push((worker.clone(), tx));
                Source::Handoff(rx)
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shared, stop, dispatch) = (shared.clone(), stop_rx.clone(), dispatch.clone());
        std::thread::Builder::new()
            .name(format!("tend-router-{i}"))
            .spawn(move || {
                let _log = tracing::dispatcher::set_default(&dispatch);
                runtime.block_on(run_worker(shared, worker, source, stop));
            })?;
    }
    tokio::pin!(shutdown);
    match listener {
        None => shutdown.await,
        Some(listener) => {
            let mut next = 0usize;
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            // The least busy worker; ties go round-robin.
                            next = next.wrapping_add(1);
                            let pick = (0..n)
                                .map(|k| (next + k) % n)
                                .min_by_key(|&k| workers[k].0.open.load(Relaxed))
                                .unwrap_or(0);
                            let Ok(stream) = stream.into_std() else { continue };
                            workers[pick].0.open.fetch_add(1, Relaxed);
                            if workers[pick].1.send((stream, peer)).is_err() {
                                workers[pick].0.open.fetch_sub(1, Relaxed);
                            }
                        }
                        Err(err) => accept_failed(err).await,
                    }
                }
            }
            drop(listener); // refuse new connections from now on
        }
    }
    drop(workers);
    drop(stop_rx);
    let _ = stop_tx.send(());
    stop_tx.closed().await;
    Ok(())
}

/// Out of file descriptors and the like: the listener is fine, pressure is
/// not. Back off instead of spinning.
async fn accept_failed(err: io::Error) {
    tracing::warn!(%err, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn run_worker(
    shared: Arc<Shared>,
    worker: Arc<Worker>,
    source: Source,
    stop: watch::Receiver<()>,
) {
    // Connections spawned here must finish before the runtime goes away;
    // each holds `alive`, so `closed` tells when the last one is done.
    let (alive_tx, alive_rx) = watch::channel(());
    let sweeper = tokio::spawn({
        let worker = worker.clone();
        async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                worker.pool.sweep();
            }
        }
    });
    let spawn = |stream: TcpStream, peer: SocketAddr| {
        worker.open.fetch_add(1, Relaxed);
        tokio::spawn(serve_conn(
            shared.clone(),
            worker.clone(),
            stream,
            peer,
            stop.clone(),
            alive_rx.clone(),
        ));
    };
    match source {
        Source::Listener(listener) => match TcpListener::from_std(listener) {
            Ok(listener) => {
                let mut stopping = stop.clone();
                loop {
                    tokio::select! {
                        _ = stopping.changed() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => spawn(stream, peer),
                            Err(err) => accept_failed(err).await,
                        }
                    }
                }
                // Dropping `listener` refuses new connections from now on.
            }
            Err(err) => tracing::error!(%err, "the router cannot listen"),
        },
        Source::Handoff(mut conns) => {
            while let Some((stream, peer)) = conns.recv().await {
                // Counted as open when handed over; `spawn` counts again.
                worker.open.fetch_sub(1, Relaxed);
                match TcpStream::from_std(stream) {
                    Ok(stream) => spawn(stream, peer),
                    Err(err) => tracing::warn!(%err, "registering a connection failed"),
                }
            }
        }
    }
    drop(alive_rx);
    drop(stop);
    alive_tx.closed().await;
    // `serve` may have returned; established tunnels run to their end.
    worker.tunnels.closed().await;
    sweeper.abort();
    worker.pool.clear();
}

async fn serve_conn(
    shared: Arc<Shared>,
    worker: Arc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
    _alive: watch::Receiver<()>,
) {
    struct Open<'a>(&'a AtomicUsize);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Relaxed);
        }
    }
    let _open = Open(&worker.open);
    // Small responses should leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let idle = shared.config.idle_timeout;
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        worker: worker.clone(),
        peer,
        forwarded_ip: proxy::forwarded_ip(peer.ip()),
        active: AtomicU32::new(0),
        epoch: Instant::now(),
        idle_since_ms: AtomicU64::new(0),
    });
    let svc_ctx = ctx.clone();
    let service = service_fn(move |req| proxy::handle(svc_ctx.clone(), req));
    let conn = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let timer = sleep_until(ctx.epoch + idle);
    tokio::pin!(timer);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(err) = res {
                    tracing::debug!(%peer, %err, "client connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut timer => {
                match ctx.idle_deadline(idle) {
                    // Asked to close, and still without a request: a client
                    // stuck halfway through a request head (which a graceful
                    // shutdown waits for). Cut it.
                    Some(deadline) if closing && deadline <= Instant::now() => return,
                    Some(deadline) if deadline <= Instant::now() => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
                    }
                    Some(deadline) => timer.as_mut().reset(deadline),
                    // Busy: a request ending will set a new idle start,
                    // so look again one timeout from now.
                    None => timer.as_mut().reset(Instant::now() + idle),
                }
            }
        }
    }
}
