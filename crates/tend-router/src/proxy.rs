//! The request path: route, pick an instance, forward, stream back.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    RETRY_AFTER, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, X_CONTENT_TYPE_OPTIONS,
};
use http::uri::{Authority, PathAndQuery};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::client::{self, Answer, InstanceBody};
use crate::metrics::{self, Stats};
use crate::server::{ConnCtx, Worker};
use crate::table::{normalize_host, Miss, MAX_HOST};
use crate::{balance, upgrade, Shared};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus
/// the old `Proxy-*` and `Keep-Alive` ones. The next hop gets its own.
/// `Connection` must stay first (see [`strip_hop_by_hop`]).
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Status recorded for a request whose client went away before it was
/// answered (nginx's convention), so such requests are not silently lost.
const CLIENT_CLOSED: u16 = 499;

/// Serves one client request. Never fails: every problem is an HTTP answer.
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let shared: &Shared = &ctx.shared;
    let method = metrics::method_index(req.method());
    let request_id = request_id(req.headers());

    // Lower-cased into a stack buffer: routing allocates nothing.
    let mut host_buf = [0u8; MAX_HOST];
    let host = raw_host(&req).and_then(|raw| normalize_host(raw, &mut host_buf));
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    // The lookup guard must not live across an await; take what we need.
    let routed = {
        let lookup = shared.tables.load();
        match host.map_or(Err(Miss::Host), |h| lookup.find(h, pq.path())) {
            Err(miss) => Routed::Miss(miss),
            Ok(service) if service.backends.is_empty() => Routed::NoInstance(service.local.clone()),
            // `size_hint` is exact when Content-Length is given (HTTP/1 and 2).
            Ok(service) if req.body().size_hint().lower() > shared.config.max_body => {
                Routed::TooLarge(service.local.clone())
            }
            Ok(service) => match balance::pick(&service.backends, None) {
                Some(i) => {
                    let backend = &service.backends[i];
                    Routed::To(backend.stats.clone(), backend.addr)
                }
                None => Routed::NoInstance(service.local.clone()),
            },
        }
    };

    let mut exchange = Exchange::new(
        match &routed {
            Routed::Miss(_) => shared.tables.unknown.clone(),
            Routed::NoInstance(s) | Routed::TooLarge(s) | Routed::To(s, _) => s.clone(),
        },
        ctx.clone(),
        start,
        method,
    );
    if shared.config.access_log {
        exchange.log = Some(Box::new(AccessInfo {
            client: ctx.peer.ip(),
            method: req.method().clone(),
            host: host.map_or_else(|| lossy_host(&req), Box::from),
            path: pq.clone(),
            request_id: request_id.clone(),
        }));
    }

    let addr = match routed {
        Routed::Miss(miss) => {
            let shown = host.map_or_else(|| lossy_host(&req), Box::from);
            let text = match miss {
                Miss::Host => format!(
                    "no service for host `{shown}`; services are reached at <service>.localhost or their [http] host\n"
                ),
                Miss::Path => format!(
                    "no service for path `{}` on host `{shown}`; no [http] paths prefix of the services on this host matches\n",
                    pq.path()
                ),
            };
            return Ok(plain(StatusCode::NOT_FOUND, text, &request_id, exchange));
        }
        Routed::NoInstance(stats) => {
            let text = format!(
                "no instance of service `{}` is ready; try again shortly\n",
                stats.service
            );
            let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, text, &request_id, exchange);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(resp);
        }
        Routed::TooLarge(_) => {
            return Ok(too_large(shared, &request_id, exchange));
        }
        Routed::To(_, addr) => addr,
    };

    let upgrading = req.version() == Version::HTTP_11 && upgrade::is_upgrade_request(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    prepare_request_headers(
        &mut headers,
        parts.uri.authority(),
        &ctx.forwarded_ip,
        &request_id,
        upgrading,
    );
    let body = UpstreamBody::new(body, shared.config.max_body);
    let upstream_req = upstream_request(parts.method, pq.clone(), headers, body);

    let timeout = shared.config.request_timeout;
    // Counted from the request's start, which saves reading the clock again.
    let deadline = tokio::time::Instant::from_std(start) + timeout;
    let outcome = tokio::time::timeout_at(
        deadline,
        send(&ctx, &mut exchange, host, &pq, addr, upstream_req),
    )
    .await;

    let answer = match outcome {
        Ok(Ok(answer)) => answer,
        Ok(Err(Failure::TooLarge)) => return Ok(too_large(shared, &request_id, exchange)),
        Ok(Err(Failure::Connect(addr, err))) => {
            let text = format!(
                "could not connect to any instance of service `{}` (last tried `{}`): connecting to {addr} failed: {err}\n",
                exchange.stats.service, exchange.stats.instance,
            );
            return Ok(plain(StatusCode::BAD_GATEWAY, text, &request_id, exchange));
        }
        Ok(Err(Failure::Upstream(err))) => {
            let text = format!(
                "instance `{}` of service `{}` failed before answering: {}\n",
                exchange.stats.instance,
                exchange.stats.service,
                chain(&err)
            );
            return Ok(plain(StatusCode::BAD_GATEWAY, text, &request_id, exchange));
        }
        Err(_elapsed) => {
            let text = format!(
                "instance `{}` of service `{}` did not answer within {:?}\n",
                exchange.stats.instance, exchange.stats.service, timeout
            );
            return Ok(plain(
                StatusCode::GATEWAY_TIMEOUT,
                text,
                &request_id,
                exchange,
            ));
        }
    };

    let (mut parts, kind) = match answer {
        Answer::Response(parts, body) => (parts, Kind::Upstream(body)),
        Answer::Upgraded(parts, io, leftover) => {
            if let Some(client_upgrade) = client_upgrade {
                let mut parts = parts;
                exchange.status = parts.status.as_u16();
                strip_hop_by_hop(&mut parts.headers, true);
                parts.headers.insert(X_REQUEST_ID, request_id);
                // Count the exchange now; the tunnel keeps it "in flight".
                exchange.finish();
                let open = ctx.worker.tunnels.subscribe();
                upgrade::tunnel(client_upgrade, io, leftover, exchange, open);
                return Ok(Response::from_parts(parts, ResponseBody::empty()));
            }
            // The client asked for no upgrade: it gets the answer, and the
            // connection is closed.
            (parts, Kind::Static(None))
        }
    };
    exchange.status = parts.status.as_u16();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers, switching);
    parts.headers.insert(X_REQUEST_ID, request_id);
    Ok(Response::from_parts(
        parts,
        ResponseBody {
            kind,
            exchange: Some(exchange),
            worker: Some(ctx.worker.clone()),
        },
    ))
}

enum Routed {
    Miss(Miss),
    NoInstance(Arc<Stats>),
    TooLarge(Arc<Stats>),
    To(Arc<Stats>, SocketAddr),
}

enum Failure {
    /// No instance accepted the connection (after the retry); the address
    /// tried last and why.
    Connect(SocketAddr, std::io::Error),
    /// The body went over `max_body` while streaming.
    TooLarge,
    /// Anything else: the instance may have seen the request, so no retry.
    Upstream(client::Error),
}

/// Sends `req` to the instance at `addr`, on a pooled connection or a new
/// one. When connecting fails (nothing was sent), once more to another
/// instance of the same service, chosen from the current table.
async fn send(
    ctx: &ConnCtx,
    exchange: &mut Exchange,
    host: Option<&str>,
    pq: &PathAndQuery,
    mut addr: SocketAddr,
    mut req: Request<UpstreamBody>,
) -> Result<Answer, Failure> {
    let pool = &ctx.worker.pool;
    let conn = match pool.checkout(addr, exchange.start) {
        Some(conn) => conn,
        // Boxed: connecting is the rare path, and its future is large.
        None => match Box::pin(pool.connect(addr)).await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(
                    service = %exchange.stats.service,
                    instance = %exchange.stats.instance,
                    %addr,
                    %err,
                    "connect to instance failed; retrying once"
                );
                let (next, stats) = {
                    let lookup = ctx.shared.tables.load();
                    let Some(service) = host.and_then(|h| lookup.find(h, pq.path()).ok()) else {
                        return Err(Failure::Connect(addr, err));
                    };
                    let failed = service
                        .backends
                        .iter()
                        .position(|b| Arc::ptr_eq(&b.stats, &exchange.stats));
                    let Some(i) = balance::pick(&service.backends, failed) else {
                        return Err(Failure::Connect(addr, err));
                    };
                    let b = &service.backends[i];
                    (b.addr, b.stats.clone())
                };
                exchange.switch(stats);
                addr = next;
                match pool.checkout(addr, exchange.start) {
                    Some(conn) => conn,
                    None => Box::pin(pool.connect(addr))
                        .await
                        .map_err(|err| Failure::Connect(addr, err))?,
                }
            }
        },
    };
    if req.method() == Method::CONNECT {
        // CONNECT names its target in authority form.
        if let Ok(uri) = Uri::try_from(addr.to_string()) {
            *req.uri_mut() = uri;
        }
    }
    client::send(conn, req).await.map_err(classify)
}

fn classify(err: client::Error) -> Failure {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return Failure::TooLarge;
        }
        source = e.source();
    }
    Failure::Upstream(err)
}

/// An error and its causes on one line, for a 502 body a developer can act on.
fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

fn upstream_request(
    method: Method,
    pq: PathAndQuery,
    headers: HeaderMap,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    // A fresh request rather than the client's parts: the server side's
    // extensions mean nothing to the client side. Origin form: the
    // instance is no proxy.
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = Uri::from(pq);
    // Instances speak HTTP/1.1, whatever the client spoke to us.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// The host the client asked for: the URI authority (HTTP/2 `:authority`,
/// HTTP/1.1 absolute form), else the `Host` header.
fn raw_host<B>(req: &Request<B>) -> Option<&[u8]> {
    req.uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(HOST).map(HeaderValue::as_bytes))
}

fn lossy_host<B>(req: &Request<B>) -> Box<str> {
    match raw_host(req) {
        Some(raw) => String::from_utf8_lossy(raw).into(),
        None => "(none)".into(),
    }
}

/// The client's `X-Request-Id` when it sent a usable one, else a random
/// 128-bit id in hex.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID) {
        if !id.is_empty() && id.len() <= 200 {
            return id.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n: u128 = rand::random();
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
}

/// Whether a name this long may be in [`HOP_BY_HOP`]: rules out most
/// headers without a comparison.
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16 | 17 | 18 | 19)
}

/// Removes hop-by-hop headers, and those the `Connection` header names. For
/// an upgrade the `Upgrade` header and `Connection: upgrade` are kept, as the
/// next hop must see them to switch protocols.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds which kinds are there (usually none,
    // or `Connection` alone): cheaper than removing every kind by hash.
    let mut present = 0u16;
    for name in headers.keys() {
        if !hop_by_hop_length(name.as_str().len()) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present & 1 != 0 {
        // `Connection` (index 0) may name more headers to drop. Rare path
        // (custom tokens); the Vec allocates only if one is found.
        let mut named = Vec::new();
        for value in headers.get_all(CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                let standard = [&b"keep-alive"[..], b"close", b"upgrade", b""]
                    .iter()
                    .any(|s| token.eq_ignore_ascii_case(s));
                if standard {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    // A client must not make us drop framing or routing.
                    if name != HOST && name != CONTENT_LENGTH {
                        named.push(name);
                    }
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0 || (upgrade && (name == CONNECTION || name == UPGRADE)) {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn prepare_request_headers(
    headers: &mut HeaderMap,
    authority: Option<&Authority>,
    client: &HeaderValue,
    request_id: &HeaderValue,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    // Room for what follows at once, rather than growing step by step.
    headers.reserve(5);
    // HTTP/2 has no Host header and an absolute-form URI overrides it: the
    // instance gets the host we routed on.
    if let Some(authority) = authority {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(HOST, host);
        }
    }
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    append_forwarded_for(headers, client);
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// The client's address as `X-Forwarded-For` writes it (IPv4-mapped IPv6
/// addresses as IPv4); made once per connection.
pub(crate) fn forwarded_ip(client: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 64];
    let len = {
        let mut w = &mut buf[..];
        // 64 bytes hold any IP's text form; a failure would leave it empty.
        let _ = write!(w, "{}", client.to_canonical());
        64 - w.len()
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("unknown"))
}

/// `X-Forwarded-For: <what the client sent>, <client ip>`.
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    if !headers.contains_key(X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, client.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for v in headers.get_all(X_FORWARDED_FOR) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

fn too_large(
    shared: &Shared,
    request_id: &HeaderValue,
    exchange: Exchange,
) -> Response<ResponseBody> {
    let text = format!(
        "request body too large: the limit is {} bytes\n",
        shared.config.max_body
    );
    plain(StatusCode::PAYLOAD_TOO_LARGE, text, request_id, exchange)
}

/// A plain-text answer from the router itself.
fn plain(
    status: StatusCode,
    text: String,
    request_id: &HeaderValue,
    mut exchange: Exchange,
) -> Response<ResponseBody> {
    exchange.status = status.as_u16();
    let mut resp = Response::new(ResponseBody {
        kind: Kind::Static(Some(Bytes::from(text))),
        exchange: Some(exchange),
        worker: None,
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_REQUEST_ID, request_id.clone());
    resp
}

/// What the access log says about a request; only built when it is on.
struct AccessInfo {
    client: IpAddr,
    method: Method,
    host: Box<str>,
    path: PathAndQuery,
    request_id: HeaderValue,
}

/// One request from the choice of its instance to the end of its response.
///
/// While it lives the instance counts the request in flight; when it ends
/// (response body finished, client gone, or tunnel closed) it records the
/// status and duration. Ending on drop means no path can forget to count.
pub(crate) struct Exchange {
    stats: Arc<Stats>,
    ctx: Arc<ConnCtx>,
    start: Instant,
    method: u8,
    status: u16,
    /// When it was counted, once it was.
    ended: Option<Instant>,
    log: Option<Box<AccessInfo>>,
}

impl Exchange {
    fn new(stats: Arc<Stats>, ctx: Arc<ConnCtx>, start: Instant, method: u8) -> Exchange {
        stats.enter();
        ctx.request_started();
        Exchange {
            stats,
            ctx,
            start,
            method,
            status: CLIENT_CLOSED,
            ended: None,
            log: None,
        }
    }

    /// Moves the request to another instance (a retry).
    fn switch(&mut self, stats: Arc<Stats>) {
        stats.enter();
        let old = std::mem::replace(&mut self.stats, stats);
        old.leave();
    }

    /// Records status and duration now (once).
    fn finish(&mut self) -> Instant {
        if let Some(at) = self.ended {
            return at;
        }
        let now = Instant::now();
        self.ended = Some(now);
        let elapsed = now.saturating_duration_since(self.start);
        self.stats.record(self.method, self.status, elapsed);
        if let Some(log) = &self.log {
            access_log(log, &self.stats, self.status, elapsed);
        }
        now
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let now = self.finish();
        self.stats.leave();
        self.ctx.request_finished(now);
    }
}

fn access_log(log: &AccessInfo, stats: &Stats, status: u16, elapsed: Duration) {
    tracing::info!(
        target: "tend_router::access",
        client = %log.client,
        method = %log.method,
        host = %log.host,
        path = %log.path,
        status,
        service = %stats.service,
        instance = %stats.instance,
        duration_ms = elapsed.as_secs_f64() * 1e3,
        request_id = log.request_id.to_str().unwrap_or("-"),
        "request"
    );
}

/// The body sent to the client: the instance's, streamed as it comes, or
/// the router's own text. It carries the [`Exchange`], which ends when the
/// last frame is out (or the client goes away and hyper drops the body).
/// The instance's body reads from the instance's connection, which goes
/// back to the pool once the body is complete.
pub(crate) struct ResponseBody {
    kind: Kind,
    exchange: Option<Exchange>,
    /// Whose pool a reusable connection goes back to.
    worker: Option<Arc<Worker>>,
}

enum Kind {
    Upstream(InstanceBody),
    Static(Option<Bytes>),
}

impl ResponseBody {
    fn empty() -> ResponseBody {
        ResponseBody {
            kind: Kind::Static(None),
            exchange: None,
            worker: None,
        }
    }

    /// Gives the connection back once the instance's body is complete.
    fn release(&mut self, now: Option<Instant>) {
        if let (Kind::Upstream(body), Some(worker)) = (&mut self.kind, &self.worker) {
            body.complete_if_empty();
            if let Some(conn) = body.take_reusable() {
                worker.pool.checkin(conn, now.unwrap_or_else(Instant::now));
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Bodies hyper never polls (HEAD, 204, 304, `Content-Length: 0`)
        // end here; a body dropped half read closes its connection.
        let now = self.exchange.take().map(|mut e| e.finish());
        self.release(now);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = client::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, client::Error>>> {
        let this = &mut *self;
        let frame = match &mut this.kind {
            Kind::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
            Kind::Static(data) => data.take().map(|d| Ok(Frame::data(d))),
        };
        // The instance is done with this request once its last frame is
        // handed over: count it now rather than whenever hyper drops us.
        if !matches!(frame, Some(Ok(_))) || this.is_end_stream() {
            let now = this.exchange.take().map(|mut e| e.finish());
            this.release(now);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Static(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Static(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// The body sent to an instance: the client's, streamed and size-limited.
pub(crate) struct UpstreamBody {
    body: Option<Limited<Incoming>>,
}

impl UpstreamBody {
    fn new(body: Incoming, max: u64) -> UpstreamBody {
        if body.is_end_stream() {
            return UpstreamBody { body: None };
        }
        UpstreamBody {
            body: Some(Limited::new(
                body,
                usize::try_from(max).unwrap_or(usize::MAX),
            )),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.body {
            None => Poll::Ready(None),
            Some(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_lengths_cover_every_name() {
        for name in HOP_BY_HOP.iter() {
            assert!(hop_by_hop_length(name.as_str().len()), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, host"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(HOST, HeaderValue::from_static("a.localhost"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-kept"]);
    }

    #[test]
    fn upgrade_headers_stay_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade::is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(
            &mut h,
            &forwarded_ip("::ffff:10.0.0.1".parse().expect("ip")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append_forwarded_for(&mut h, &forwarded_ip("::1".parse().expect("ip")));
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, ::1");
    }

    #[test]
    fn request_ids_are_kept_or_random_hex() {
        let mut h = HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(request_id(&h), "abc");
    }
}
