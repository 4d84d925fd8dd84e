//! HTTP/1.1 upgrades (WebSocket and the like): once the instance answers
//! `101 Switching Protocols`, the client's connection is taken over from
//! hyper, the instance's leaves the router's client, and bytes are copied
//! both ways until either side closes.

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::HeaderMap;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::client;
use crate::proxy::Exchange;

/// Whether the request asks for a protocol upgrade: `Connection: upgrade`
/// plus an `Upgrade` header.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether a `Connection` header lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Joins the client's upgraded connection and the instance's in a task of
/// its own (the instance's first `leftover` bytes, sent right after its
/// `101`, go first). `exchange` lives as long as the tunnel, so the
/// instance counts as busy (and is not reported drained) while a WebSocket
/// is open.
pub(crate) fn tunnel(
    client: OnUpgrade,
    instance: TcpStream,
    leftover: Bytes,
    exchange: Exchange,
    open: tokio::sync::watch::Receiver<()>,
) {
    tokio::spawn(async move {
        let _exchange = exchange;
        let _open = open;
        let client = match client.await {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(%err, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        if let Err(err) = client::tunnel(&mut client, instance, leftover).await {
            tracing::debug!(%err, "upgraded connection ended with an error");
        }
    });
}
