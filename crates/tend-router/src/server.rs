//! Accepting client connections, idle timeouts and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::{proxy, Shared};

/// Per client connection: what its requests need, and whether it is idle.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SocketAddr,
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

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Every connection task holds a receiver: `send` asks them to wind down,
    // `closed` tells when the last one is gone.
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_conn(shared.clone(), stream, peer, stop_rx.clone()));
                }
                Err(err) => {
                    // Out of file descriptors and the like: the listener is
                    // fine, pressure is not. Back off instead of spinning.
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener); // refuse new connections from now on
    drop(stop_rx);
    let _ = stop_tx.send(());
    stop_tx.closed().await;
    Ok(())
}

async fn serve_conn(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
) {
    // Small responses should leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let idle = shared.config.idle_timeout;
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        peer,
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
            () = &mut timer, if !closing => {
                match ctx.idle_deadline(idle) {
                    Some(deadline) if deadline <= Instant::now() => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
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
