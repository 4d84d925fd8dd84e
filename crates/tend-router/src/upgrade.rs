//! HTTP/1.1 upgrades (WebSocket and the like): once the instance answers
//! `101 Switching Protocols`, both connections are taken over from hyper and
//! bytes are copied both ways until either side closes.

use http::header::{CONNECTION, UPGRADE};
use http::HeaderMap;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

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

/// Joins the client's and the instance's upgraded connections in a task of
/// its own. `exchange` lives as long as the tunnel, so the instance counts as
/// busy (and is not reported drained) while a WebSocket is open.
pub(crate) fn tunnel(client: OnUpgrade, instance: OnUpgrade, exchange: Exchange) {
    tokio::spawn(async move {
        let _exchange = exchange;
        let (client, instance) = match tokio::try_join!(client, instance) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(%err, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut instance = TokioIo::new(instance);
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut instance).await {
            tracing::debug!(%err, "upgraded connection ended with an error");
        }
    });
}
