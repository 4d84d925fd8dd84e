//! Keep-alive connections to instances, one pool per router thread.
//!
//! A connection serves one exchange at a time, driven by the task of the
//! client connection it serves (see [`client`](crate::client)), and comes
//! back here once the exchange completed cleanly. An idle connection has
//! no task: a checkout asks the reactor whether the instance closed it
//! meanwhile (no system call unless something arrived), and a sweeper
//! closes the ones that expired or were closed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::client::Conn;
use crate::fxhash::FxBuildHasher;

/// How long idle upstream connections stay pooled. Shorter than most
/// servers' keep-alive timeouts, so we rarely reuse a connection the
/// instance is closing.
pub(crate) const UPSTREAM_IDLE: Duration = Duration::from_secs(20);

/// Idle connections kept per instance and thread; more are closed.
const MAX_IDLE_PER_INSTANCE: usize = 256;

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The keep-alive connections of one router thread, by instance address.
pub(crate) struct Pool {
    /// Only ever locked by the owning thread: uncontended.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, FxBuildHasher>>,
    connect_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
        }
    }

    /// An idle connection to `addr` that is still usable, if any.
    pub(crate) fn checkout(&self, addr: SocketAddr, now: Instant) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        // Most recently used first: it is the least likely to be closing.
        while let Some(entry) = list.pop() {
            if now.saturating_duration_since(entry.since) < UPSTREAM_IDLE
                && entry.conn.is_idle_usable()
            {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Opens a connection to `addr`. Errors are connect errors: nothing of
    /// any request was sent.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> io::Result<Conn> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(stream) => stream?,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("timed out after {:?}", self.connect_timeout),
                    ))
                }
            };
        // Small requests should leave at once, not wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(Conn::new(addr, stream))
    }

    /// Takes back a connection whose exchange completed cleanly.
    pub(crate) fn checkin(&self, conn: Conn, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(conn.addr).or_default();
        if list.len() < MAX_IDLE_PER_INSTANCE {
            list.push(Idle { conn, since: now });
        }
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Closes idle connections that expired or that instances closed.
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|e| {
                now.saturating_duration_since(e.since) < UPSTREAM_IDLE && e.conn.is_idle_usable()
            });
            !list.is_empty()
        });
    }
}
