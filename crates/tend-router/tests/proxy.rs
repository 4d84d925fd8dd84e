//! The router against real sockets: hyper backends on ephemeral ports, real
//! clients (HTTP/1.1, HTTP/2 prior knowledge, WebSocket). Every wait polls a
//! condition against a deadline.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tend_core::routing::{Endpoint, Route, RoutingTable};
use tend_router::{Router, RouterConfig, StatusClass};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

type TBody = UnsyncBoxBody<Bytes, Infallible>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TBody>> + Send>>
        + Send
        + Sync,
>;

fn full(text: impl Into<Bytes>) -> TBody {
    Full::new(text.into()).boxed_unsync()
}

/// A body fed from a channel, one frame per message.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> TBody {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// Answers with its name, the path and every request header, one per line.
fn echo(name: &'static str) -> Handler {
    handler(move |req: Request<Incoming>| async move {
        let mut text = format!("backend={name}\npath={}\n", req.uri().path());
        for (k, v) in req.headers() {
            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
        }
        Response::new(full(text))
    })
}

struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn backend(handler: Handler) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, SeqCst);
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend { addr, connections }
}

/// An address nobody listens on: connecting is refused.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

fn route(host: Option<&str>, paths: &[&str], endpoints: &[(&str, SocketAddr)]) -> Route {
    Route {
        host: host.map(str::to_string),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        endpoints: endpoints
            .iter()
            .map(|(id, addr)| Endpoint {
                instance: id.to_string(),
                release: 1,
                addr: *addr,
            })
            .collect(),
    }
}

fn table(routes: Vec<(&str, Route)>) -> RoutingTable {
    Arc::new(
        routes
            .into_iter()
            .map(|(name, r)| (name.to_string(), r))
            .collect::<BTreeMap<_, _>>(),
    )
}

struct TestRouter {
    router: Router,
    addr: SocketAddr,
    table: watch::Sender<RoutingTable>,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
}

async fn start_with(mut config: RouterConfig, t: RoutingTable) -> TestRouter {
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let (tx, rx) = watch::channel(t);
    let router = Router::bind(config, rx).await.expect("bind router");
    let addr = router.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(router.clone().serve(async move {
        let _ = stopped.await;
    }));
    TestRouter {
        router,
        addr,
        table: tx,
        stop: Some(stop),
        served,
    }
}

async fn start(t: RoutingTable) -> TestRouter {
    start_with(RouterConfig::default(), t).await
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `cond` every 10 ms until it holds, failing after the deadline.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < until,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(
    addr: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let resp = within("response", client().request(req))
        .await
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = within("body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    send(addr, Method::GET, host, path, &[], "").await
}

/// A raw HTTP/1.1 connection to `addr`, driven in the background.
async fn h1_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_prefix() {
    let web = backend(echo("web")).await;
    let api = backend(echo("api")).await;
    let admin = backend(echo("admin")).await;
    let site = backend(echo("site")).await;
    let r = start(table(vec![
        ("web", route(None, &[], &[("web-1", web.addr)])),
        (
            "api",
            route(Some("shop.test"), &["/api"], &[("api-1", api.addr)]),
        ),
        (
            "admin",
            route(
                Some("shop.test"),
                &["/api/admin"],
                &[("admin-1", admin.addr)],
            ),
        ),
        (
            "site",
            route(Some("Shop.Test"), &[], &[("site-1", site.addr)]),
        ),
    ]))
    .await;

    for (host, path, want) in [
        ("web.localhost", "/x", "web"),
        ("WEB.Localhost:7080", "/", "web"),
        ("shop.test", "/", "site"),
        ("shop.test:80", "/api", "api"),
        ("shop.test", "/api/orders?id=1", "api"),
        ("shop.test", "/api/admin/users", "admin"),
        ("shop.test", "/apix", "site"),
        ("api.localhost", "/anything", "api"),
    ] {
        let a = get(r.addr, host, path).await;
        assert_eq!(a.status, StatusCode::OK, "{host}{path}: {}", a.body);
        assert!(
            a.body.starts_with(&format!("backend={want}\n")),
            "{host}{path} went to {}",
            a.body
        );
    }
    let a = get(r.addr, "shop.test", "/api/orders?id=1").await;
    assert!(a.body.contains("path=/api/orders\n"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_and_no_ready_instance_is_503() {
    let r = start(table(vec![("idle", route(None, &[], &[]))])).await;

    let a = get(r.addr, "nope.localhost:7080", "/").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.body,
        "no service for host `nope.localhost`; services are reached at <service>.localhost or their [http] host\n"
    );
    assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(a.headers["x-request-id"].len(), 32);

    let a = get(r.addr, "idle.localhost", "/").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(
        a.body.contains("no instance of service `idle` is ready"),
        "{}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_pooled_instance_connections() {
    let web = backend(echo("web")).await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;

    let mut conn = h1_conn(r.addr).await;
    for i in 0..5 {
        // The previous exchange must be wound up before the next one.
        within("connection ready", conn.ready())
            .await
            .expect("ready");
        let req = Request::get(format!("/n/{i}"))
            .header("host", "web.localhost")
            .body(full(""))
            .expect("request");
        let resp = within("response", conn.send_request(req))
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(&format!("path=/n/{i}")));
    }
    assert_eq!(
        web.connections.load(SeqCst),
        1,
        "the router should reuse its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_work() {
    let web = backend(echo("web")).await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;

    let io = TokioIo::new(TcpStream::connect(r.addr).await.expect("connect"));
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::get(format!("http://web.localhost/h2/{i}"))
            .body(full(""))
            .expect("request");
        let resp = within("h2 response", h2.send_request(req))
            .await
            .expect("h2 send");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(&format!("path=/h2/{i}")), "{body}");
        assert!(body.contains("host: web.localhost\n"), "{body}");
        assert!(body.contains("x-forwarded-host: web.localhost\n"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ws_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let r = start(table(vec![(
        "chat",
        route(None, &[], &[("chat-1", ws_addr)]),
    )]))
    .await;

    let mut req = format!("ws://{}/socket", r.addr)
        .into_client_request()
        .expect("ws request");
    req.headers_mut()
        .insert("host", "chat.localhost".parse().expect("host"));
    let (mut ws, resp) = within("ws connect", tokio_tungstenite::connect_async(req))
        .await
        .expect("ws handshake through the router");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().contains_key("x-request-id"));
    for text in ["hello", "world"] {
        ws.send(Message::text(text)).await.expect("ws send");
        let got = within("ws echo", ws.next())
            .await
            .expect("open")
            .expect("frame");
        assert_eq!(got, Message::text(text));
    }
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("ws send");
    let got = within("ws echo", ws.next())
        .await
        .expect("open")
        .expect("frame");
    assert_eq!(got, Message::binary(vec![1u8, 2, 3]));
    // The open tunnel counts as in flight (an instance with a live
    // WebSocket is not drained).
    assert_eq!(r.router.in_flight("chat-1"), 1);
    ws.close(None).await.expect("close");
    // Finish the closing handshake, then hang up.
    while let Some(Ok(_)) = within("ws close", ws.next()).await {}
    drop(ws);
    let router = r.router.clone();
    eventually("tunnel closed", || {
        let router = router.clone();
        async move { router.in_flight("chat-1") == 0 }
    })
    .await;
    let m = r.router.metrics();
    let chat = m.get("chat", "chat-1").expect("chat metrics");
    assert_eq!(chat.requests("GET", StatusClass::Informational), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_chunks_stream_as_they_come() {
    let release = Arc::new(Notify::new());
    let rel = release.clone();
    let slow = backend(handler(move |_req| {
        let rel = rel.clone();
        async move {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first;")).await;
                rel.notified().await;
                let _ = tx.send(Bytes::from_static(b"last")).await;
            });
            Response::new(channel_body(rx))
        }
    }))
    .await;
    let r = start(table(vec![("s", route(None, &[], &[("s-1", slow.addr)]))])).await;

    let req = Request::get(format!("http://{}/", r.addr))
        .header("host", "s.localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = within("headers", client().request(req))
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The backend holds "last" until we have seen "first;".
    let first = within("first chunk", body.frame())
        .await
        .expect("a frame")
        .expect("ok")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"first;");
    release.notify_one();
    let rest = within("rest", body.collect())
        .await
        .expect("rest")
        .to_bytes();
    assert_eq!(&rest[..], b"last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_to_the_instance() {
    let (got_first_tx, mut got_first) = mpsc::channel::<Bytes>(1);
    let upload = backend(handler(move |req: Request<Incoming>| {
        let got_first_tx = got_first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            let mut told = false;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    all.extend_from_slice(&data);
                    if !told {
                        told = true;
                        let _ = got_first_tx.send(data).await;
                    }
                }
            }
            Response::new(full(all))
        }
    }))
    .await;
    let r = start(table(vec![(
        "up",
        route(None, &[], &[("up-1", upload.addr)]),
    )]))
    .await;

    let (tx, rx) = mpsc::channel(4);
    let mut conn = h1_conn(r.addr).await;
    let req = Request::post("/upload")
        .header("host", "up.localhost")
        .body(channel_body(rx))
        .expect("request");
    let pending = tokio::spawn(async move { conn.send_request(req).await });
    tx.send(Bytes::from_static(b"part one;"))
        .await
        .expect("send part");
    // The instance sees the first part while the client still holds the rest.
    let first = within("first part at the instance", got_first.recv())
        .await
        .expect("first part");
    assert_eq!(&first[..], b"part one;");
    tx.send(Bytes::from_static(b"part two"))
        .await
        .expect("send part");
    drop(tx);
    let resp = within("response", pending)
        .await
        .expect("join")
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"part one;part two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_ids() {
    let web = backend(echo("web")).await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;

    let a = send(
        r.addr,
        Method::GET,
        "web.localhost:7080",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-request-id", "keep-me-42"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("x-forwarded-proto", "https"),
        ],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{}",
        a.body
    );
    assert!(a.body.contains("x-forwarded-proto: http\n"), "{}", a.body);
    assert!(
        a.body.contains("x-forwarded-host: web.localhost:7080\n"),
        "{}",
        a.body
    );
    assert!(a.body.contains("host: web.localhost:7080\n"), "{}", a.body);
    assert!(a.body.contains("x-request-id: keep-me-42\n"), "{}", a.body);
    assert!(
        !a.body.contains("x-hop"),
        "hop-by-hop header forwarded: {}",
        a.body
    );
    assert_eq!(a.headers["x-request-id"], "keep-me-42");

    let a = get(r.addr, "web.localhost", "/").await;
    let id = a.headers["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(
        a.body.contains(&format!("x-request-id: {id}\n")),
        "{}",
        a.body
    );
    assert!(
        a.body.contains("x-forwarded-for: 127.0.0.1\n"),
        "{}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_on_another_instance() {
    let live = backend(echo("live")).await;
    let dead = dead_addr().await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("dead-1", dead), ("live-1", live.addr)]),
    )]))
    .await;

    for i in 0..30 {
        // Bodies too: the retry must resend the (untouched) upload.
        let a = send(
            r.addr,
            Method::POST,
            "web.localhost",
            &format!("/{i}"),
            &[],
            "payload",
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {}", a.body);
        assert!(a.body.starts_with("backend=live\n"));
    }
    assert_eq!(r.router.in_flight("dead-1"), 0);
    assert_eq!(r.router.in_flight("live-1"), 0);

    // Alone and dead: retried on itself, then a 502 that says why.
    r.table
        .send(table(vec![("web", route(None, &[], &[("dead-1", dead)]))]))
        .expect("publish");
    let addr = r.addr;
    eventually("table without the live instance", || async move {
        get(addr, "web.localhost", "/").await.status == StatusCode::BAD_GATEWAY
    })
    .await;
    let a = get(r.addr, "web.localhost", "/").await;
    assert!(
        a.body
            .contains("could not connect to any instance of service `web`"),
        "{}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_instance_finishes_its_requests_and_drains() {
    let release = Arc::new(Notify::new());
    let rel = release.clone();
    let slow = backend(handler(move |_req| {
        let rel = rel.clone();
        async move {
            rel.notified().await;
            Response::new(full("slow done"))
        }
    }))
    .await;
    let fast = backend(echo("fast")).await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("slow-1", slow.addr)]),
    )]))
    .await;

    let addr = r.addr;
    let in_flight = tokio::spawn(async move { get(addr, "web.localhost", "/slow").await });
    let router = r.router.clone();
    eventually("request in flight", || {
        let router = router.clone();
        async move { router.in_flight("slow-1") == 1 }
    })
    .await;

    // The deploy controller replaces the instance, then waits for it.
    r.table
        .send(table(vec![(
            "web",
            route(None, &[], &[("fast-1", fast.addr)]),
        )]))
        .expect("publish");
    eventually("new table in force", || async move {
        get(addr, "web.localhost", "/")
            .await
            .body
            .starts_with("backend=fast\n")
    })
    .await;
    let router = r.router.clone();
    let mut drained = tokio::spawn(async move { router.drained("slow-1", DEADLINE).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut drained)
            .await
            .is_err(),
        "drained() resolved while a request was in flight"
    );

    release.notify_one();
    let a = within("slow request", in_flight).await.expect("join");
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "slow done");
    within("drained", drained).await.expect("join");
    assert_eq!(r.router.in_flight("slow-1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_gives_up_at_the_deadline() {
    let never = backend(handler(|_req| async {
        std::future::pending::<()>().await;
        Response::new(full(""))
    }))
    .await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("stuck-1", never.addr)]),
    )]))
    .await;
    let addr = r.addr;
    let _stuck = tokio::spawn(async move { get(addr, "web.localhost", "/").await });
    let router = r.router.clone();
    eventually("request in flight", || {
        let router = router.clone();
        async move { router.in_flight("stuck-1") == 1 }
    })
    .await;
    r.table.send(table(vec![])).expect("publish");
    let started = tokio::time::Instant::now();
    within(
        "drained deadline",
        r.router.drained("stuck-1", Duration::from_millis(200)),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.router.in_flight("stuck-1"), 1);
    // Unknown instances have nothing in flight.
    within("unknown", r.router.drained("never-existed", DEADLINE)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_updates_are_picked_up() {
    let one = backend(echo("one")).await;
    let two = backend(echo("two")).await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("one-1", one.addr)]),
    )]))
    .await;
    assert!(get(r.addr, "web.localhost", "/")
        .await
        .body
        .starts_with("backend=one\n"));
    assert_eq!(
        get(r.addr, "new.localhost", "/").await.status,
        StatusCode::NOT_FOUND
    );

    r.table
        .send(table(vec![
            ("web", route(None, &[], &[("two-1", two.addr)])),
            ("new", route(None, &[], &[("one-2", one.addr)])),
        ]))
        .expect("publish");
    let addr = r.addr;
    eventually("update applied", || async move {
        get(addr, "web.localhost", "/")
            .await
            .body
            .starts_with("backend=two\n")
    })
    .await;
    assert!(get(r.addr, "new.localhost", "/")
        .await
        .body
        .starts_with("backend=one\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_bodies_are_413() {
    let sink = backend(handler(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => Response::new(full(format!("got {}", b.to_bytes().len()))),
            Err(_) => Response::new(full("broken upload")),
        }
    }))
    .await;
    let config = RouterConfig {
        max_body: 1024,
        ..RouterConfig::default()
    };
    let r = start_with(
        config,
        table(vec![("up", route(None, &[], &[("up-1", sink.addr)]))]),
    )
    .await;

    // Within the limit.
    let a = send(r.addr, Method::POST, "up.localhost", "/", &[], "small").await;
    assert_eq!(a.body, "got 5");

    // Content-Length over the limit: refused before reaching the instance.
    let big: &'static str = Box::leak("x".repeat(2048).into_boxed_str());
    let before = sink.connections.load(SeqCst);
    let a = send(r.addr, Method::POST, "up.localhost", "/", &[], big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.body.contains("limit is 1024 bytes"), "{}", a.body);
    assert_eq!(sink.connections.load(SeqCst), before);

    // Chunked, no length: cut while streaming.
    let (tx, rx) = mpsc::channel(8);
    let mut conn = h1_conn(r.addr).await;
    let req = Request::post("/")
        .header("host", "up.localhost")
        .body(channel_body(rx))
        .expect("request");
    let pending = tokio::spawn(async move { conn.send_request(req).await });
    for _ in 0..4 {
        if tx.send(Bytes::from(vec![b'y'; 512])).await.is_err() {
            break;
        }
    }
    drop(tx);
    let resp = within("chunked 413", pending)
        .await
        .expect("join")
        .expect("send");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_instances_get_504() {
    let never = backend(handler(|_req| async {
        std::future::pending::<()>().await;
        Response::new(full(""))
    }))
    .await;
    let config = RouterConfig {
        request_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    };
    let r = start_with(
        config,
        table(vec![("web", route(None, &[], &[("web-1", never.addr)]))]),
    )
    .await;
    let a = get(r.addr, "web.localhost", "/").await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        a.body
            .contains("instance `web-1` of service `web` did not answer within 200ms"),
        "{}",
        a.body
    );
    assert_eq!(r.router.in_flight("web-1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_by_status_class_and_render_prometheus() {
    let web = backend(handler(|req: Request<Incoming>| async move {
        let status = if req.uri().path() == "/fail" {
            500
        } else {
            200
        };
        let mut resp = Response::new(full("x"));
        *resp.status_mut() = StatusCode::from_u16(status).expect("status");
        resp
    }))
    .await;
    let r = start(table(vec![
        ("web", route(None, &[], &[("web-1", web.addr)])),
        ("idle", route(None, &[], &[])),
    ]))
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(r.addr, "web.localhost", "/").await.status,
            StatusCode::OK
        );
    }
    send(r.addr, Method::POST, "web.localhost", "/fail", &[], "").await;
    get(r.addr, "nope.localhost", "/").await;
    get(r.addr, "idle.localhost", "/").await;

    // Counted when the response body is done, just after the client has it.
    let router = r.router.clone();
    eventually("counts", || {
        let m = router.metrics();
        async move { m.get("web", "web-1").is_some_and(|w| w.total() == 4) }
    })
    .await;
    let m = r.router.metrics();
    let w = m.get("web", "web-1").expect("web-1");
    assert_eq!(w.requests("GET", StatusClass::Success), 3);
    assert_eq!(w.requests("POST", StatusClass::ServerError), 1);
    assert_eq!(w.latency.count, 4);
    assert_eq!(w.in_flight, 0);
    assert!(w.latency.sum_seconds > 0.0);
    assert_eq!(
        m.get("-", "-")
            .expect("unknown")
            .requests_in(StatusClass::ClientError),
        1
    );
    assert_eq!(
        m.get("idle", "-")
            .expect("idle")
            .requests_in(StatusClass::ServerError),
        1
    );

    let mut text = String::new();
    r.router.render_prometheus(&mut text);
    check_exposition(&text);
    for line in [
        "tend_http_requests_total{service=\"web\",instance=\"web-1\",method=\"GET\",code=\"2xx\"} 3",
        "tend_http_requests_total{service=\"web\",instance=\"web-1\",method=\"POST\",code=\"5xx\"} 1",
        "tend_http_requests_total{service=\"-\",instance=\"-\",method=\"GET\",code=\"4xx\"} 1",
        "tend_http_requests_total{service=\"idle\",instance=\"-\",method=\"GET\",code=\"5xx\"} 1",
        "tend_http_requests_in_flight{service=\"web\",instance=\"web-1\"} 0",
        "tend_http_request_duration_seconds_bucket{service=\"web\",instance=\"web-1\",le=\"+Inf\"} 4",
        "tend_http_request_duration_seconds_count{service=\"web\",instance=\"web-1\"} 4",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
}

/// Checks the text exposition format 0.0.4 line by line: HELP and TYPE
/// before their family's samples, `name{labels} value` samples with quoted
/// labels and a float value, cumulative buckets ending in `+Inf` = `_count`.
fn check_exposition(text: &str) {
    assert!(text.ends_with('\n'));
    let mut family = String::new();
    let mut typed = std::collections::HashSet::new();
    let mut last_bucket: Option<(String, f64)> = None;
    let mut inf: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let kind = words.next().expect("kind");
            let name = words.next().expect("name");
            match kind {
                "HELP" => assert!(words.next().is_some_and(|h| !h.is_empty())),
                "TYPE" => {
                    let t = words.next().expect("type");
                    assert!(["counter", "gauge", "histogram"].contains(&t), "{line}");
                    assert!(typed.insert(name.to_string()), "family typed twice: {line}");
                    family = name.to_string();
                }
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = series.split_once('{').expect("labels");
        let labels = labels.strip_suffix('}').expect("closing brace");
        assert!(
            name == family
                || [
                    &format!("{family}_bucket"),
                    &format!("{family}_sum"),
                    &format!("{family}_count")
                ]
                .contains(&&name.to_string()),
            "sample `{name}` outside its family `{family}`"
        );
        let mut keys = Vec::new();
        let mut le = None;
        for pair in labels.split(',') {
            let (k, v) = pair.split_once('=').expect("label pair");
            assert!(
                k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(
                v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                "{line}"
            );
            if k == "le" {
                le = Some(v.trim_matches('"').to_string());
            } else {
                keys.push(pair.to_string());
            }
        }
        let key = keys.join(",");
        if name.ends_with("_bucket") {
            let le = le.expect("bucket has le");
            if let Some((prev_key, prev)) = &last_bucket {
                if *prev_key == key {
                    assert!(value >= *prev, "buckets not cumulative: {line}");
                }
            }
            last_bucket = Some((key.clone(), value));
            if le == "+Inf" {
                inf.insert(key, value);
            } else {
                le.parse::<f64>().expect("numeric le");
            }
        } else if name.ends_with("_count") {
            assert_eq!(inf.get(&key), Some(&value), "+Inf bucket != _count: {line}");
        }
    }
    for f in [
        "tend_http_requests_total",
        "tend_http_requests_in_flight",
        "tend_http_request_duration_seconds",
    ] {
        assert!(typed.contains(f), "no TYPE for {f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let release = Arc::new(Notify::new());
    let rel = release.clone();
    let slow = backend(handler(move |_req| {
        let rel = rel.clone();
        async move {
            rel.notified().await;
            Response::new(full("finished"))
        }
    }))
    .await;
    let mut r = start(table(vec![(
        "web",
        route(None, &[], &[("slow-1", slow.addr)]),
    )]))
    .await;
    let addr = r.addr;
    let in_flight = tokio::spawn(async move { get(addr, "web.localhost", "/").await });
    let router = r.router.clone();
    eventually("request in flight", || {
        let router = router.clone();
        async move { router.in_flight("slow-1") == 1 }
    })
    .await;

    r.stop.take().expect("stop").send(()).expect("stop");
    // New connections are refused once the listener is closed...
    eventually("listener closed", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !r.served.is_finished(),
        "serve returned with a request in flight"
    );
    // ...while the request in flight completes.
    release.notify_one();
    let a = within("in-flight request", in_flight).await.expect("join");
    assert_eq!(a.body, "finished");
    within("serve returns", &mut r.served)
        .await
        .expect("join")
        .expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed() {
    let web = backend(echo("web")).await;
    let config = RouterConfig {
        idle_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    };
    let r = start_with(
        config,
        table(vec![("web", route(None, &[], &[("web-1", web.addr)]))]),
    )
    .await;

    let mut raw = TcpStream::connect(r.addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut raw,
        b"GET / HTTP/1.1\r\nhost: web.localhost\r\ncontent-length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    // Read the response, then wait for the router to close the idle connection.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = within("idle close", async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed);
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_body_get_has_no_body_at_the_instance() {
    // A GET through the router must not turn into a chunked request.
    let seen = backend(handler(|req: Request<Incoming>| async move {
        let te = req.headers().contains_key("transfer-encoding");
        let len = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => usize::MAX,
        };
        Response::new(full(format!("te={te} len={len}")))
    }))
    .await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", seen.addr)]),
    )]))
    .await;
    let mut conn = h1_conn(r.addr).await;
    let req = Request::get("/")
        .header("host", "web.localhost")
        .body(Empty::new().boxed_unsync())
        .expect("request");
    let resp = within("response", conn.send_request(req))
        .await
        .expect("send");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"te=false len=0");
}

/// Collects what the fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Single-threaded runtime: the subscriber set for this thread sees the
// router's tasks too.
#[tokio::test]
async fn access_log_is_opt_in() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let web = backend(echo("web")).await;
    let quiet = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;
    get(quiet.addr, "web.localhost", "/quiet").await;
    let config = RouterConfig {
        access_log: true,
        ..RouterConfig::default()
    };
    let loud = start_with(
        config,
        table(vec![("web", route(None, &[], &[("web-1", web.addr)]))]),
    )
    .await;
    get(loud.addr, "web.localhost", "/loud?x=1").await;
    get(loud.addr, "gone.localhost", "/").await;

    let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(!text.contains("/quiet"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("/loud?x=1"))
        .expect("access line");
    for part in [
        "tend_router::access",
        "status=200",
        "service=web",
        "instance=web-1",
        "method=GET",
        "host=web.localhost",
    ] {
        assert!(line.contains(part), "`{part}` missing in {line}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("host=gone.localhost") && l.contains("status=404")),
        "{text}"
    );
}

// ------------------------------------------- instances speaking raw HTTP/1.1

/// An instance that runs `serve` on every connection it accepts, counting
/// them.
async fn raw_backend<F, Fut>(serve: F) -> Backend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    Backend { addr, connections }
}

/// Reads one request head (requests here have no body); `None` at EOF.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) {
    tokio::io::AsyncWriteExt::write_all(stream, bytes)
        .await
        .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_instance_closed_is_not_used() {
    // One request per connection, then the instance closes it (without
    // saying so): the router must not send the next request into it.
    let (closed_tx, mut closed) = mpsc::unbounded_channel::<()>();
    let web = raw_backend(move |mut s| {
        let closed_tx = closed_tx.clone();
        async move {
            if read_head(&mut s).await.is_some() {
                write(&mut s, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            }
            drop(s);
            let _ = closed_tx.send(());
        }
    })
    .await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;
    let mut conn = h1_conn(r.addr).await;
    for i in 0..3 {
        within("connection ready", conn.ready())
            .await
            .expect("ready");
        let req = Request::get(format!("/{i}"))
            .header("host", "web.localhost")
            .body(full(""))
            .expect("request");
        let resp = within("response", conn.send_request(req))
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        within("instance closed", closed.recv()).await;
    }
    assert_eq!(web.connections.load(SeqCst), 3);
}

/// An instance answering every request on a connection from a script of
/// raw responses, in turn.
async fn scripted(responses: &'static [&'static [u8]]) -> Backend {
    raw_backend(move |mut s| async move {
        for response in responses {
            if read_head(&mut s).await.is_none() {
                return;
            }
            write(&mut s, response).await;
        }
        // Keep the connection open for the router's pool.
        let _ = read_head(&mut s).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framings_are_followed_and_the_connection_reused() {
    let web = scripted(&[
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
        // HEAD: a length, no body.
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ])
    .await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;
    let mut conn = h1_conn(r.addr).await;
    let expect: [(Method, StatusCode, &str); 6] = [
        (Method::GET, StatusCode::OK, "hello world"),
        (Method::HEAD, StatusCode::OK, ""),
        (Method::GET, StatusCode::NO_CONTENT, ""),
        (Method::GET, StatusCode::OK, "done"),
        (Method::GET, StatusCode::NOT_MODIFIED, ""),
        (Method::GET, StatusCode::OK, ""),
    ];
    for (i, (method, status, text)) in expect.into_iter().enumerate() {
        within("connection ready", conn.ready())
            .await
            .expect("ready");
        let req = Request::builder()
            .method(method)
            .uri(format!("/{i}"))
            .header("host", "web.localhost")
            .body(full(""))
            .expect("request");
        let resp = within("response", conn.send_request(req))
            .await
            .expect("send");
        assert_eq!(resp.status(), status, "exchange {i}");
        let body = within("body", resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(String::from_utf8_lossy(&body), text, "exchange {i}");
    }
    assert_eq!(
        web.connections.load(SeqCst),
        1,
        "every exchange should reuse the one instance connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_trailers_reach_http2_clients() {
    let web = scripted(&[
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n",
    ])
    .await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;
    let io = TokioIo::new(TcpStream::connect(r.addr).await.expect("connect"));
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://web.localhost/")
        .body(full(""))
        .expect("request");
    let resp = within("h2 response", h2.send_request(req))
        .await
        .expect("h2 send");
    let collected = within("body", resp.into_body().collect())
        .await
        .expect("body");
    assert_eq!(collected.trailers().expect("trailers")["x-checksum"], "42");
    assert_eq!(&collected.to_bytes()[..], b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_until_close_are_passed_on_whole() {
    let web = raw_backend(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            write(
                &mut s,
                b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it, ",
            )
            .await;
            write(&mut s, b"until the end").await;
        }
    })
    .await;
    let r = start(table(vec![(
        "web",
        route(None, &[], &[("web-1", web.addr)]),
    )]))
    .await;
    for _ in 0..2 {
        let a = get(r.addr, "web.localhost", "/").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "all of it, until the end");
    }
    assert_eq!(web.connections.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_may_answer_before_the_upload_is_done() {
    let web = raw_backend(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            write(
                &mut s,
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
            )
            .await;
            // Linger without reading the body, as a server refusing it would.
            let _ = tokio::time::timeout(DEADLINE, std::future::pending::<()>()).await;
        }
    })
    .await;
    let r = start(table(vec![("up", route(None, &[], &[("up-1", web.addr)]))])).await;
    let (tx, rx) = mpsc::channel(1);
    let mut conn = h1_conn(r.addr).await;
    let req = Request::post("/")
        .header("host", "up.localhost")
        .body(channel_body(rx))
        .expect("request");
    let pending = tokio::spawn(async move { conn.send_request(req).await });
    tx.send(Bytes::from_static(b"first part"))
        .await
        .expect("send part");
    // The rest never comes; the answer does.
    let resp = within("early answer", pending)
        .await
        .expect("join")
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_passes_bytes_sent_with_the_101() {
    let web = raw_backend(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            write(
                &mut s,
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nhello;",
            )
            .await;
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                write(&mut s, &buf[..n]).await;
            }
        }
    })
    .await;
    let r = start(table(vec![("ws", route(None, &[], &[("ws-1", web.addr)]))])).await;
    let mut raw = TcpStream::connect(r.addr).await.expect("connect");
    write(
        &mut raw,
        b"GET / HTTP/1.1\r\nhost: ws.localhost\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    within("101 and the first bytes", async {
        while !seen.ends_with(b"hello;") {
            let n = raw.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    write(&mut raw, b"ping").await;
    let mut echo = [0u8; 4];
    within("echo", raw.read_exact(&mut echo))
        .await
        .expect("echo");
    assert_eq!(&echo, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_cut_after_the_idle_timeout() {
    let web = backend(echo("web")).await;
    let config = RouterConfig {
        idle_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    };
    let r = start_with(
        config,
        table(vec![("web", route(None, &[], &[("web-1", web.addr)]))]),
    )
    .await;
    let mut raw = TcpStream::connect(r.addr).await.expect("connect");
    write(&mut raw, b"GET / HTTP/1.1\r\nhost: web.loc").await;
    let mut buf = [0u8; 64];
    let n = within("cut", raw.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_router_threads_share_the_connections() {
    let web = backend(echo("web")).await;
    let config = RouterConfig {
        workers: 3,
        ..RouterConfig::default()
    };
    let mut r = start_with(
        config,
        table(vec![("web", route(None, &[], &[("web-1", web.addr)]))]),
    )
    .await;
    // Connections open at once, each used for several requests.
    let mut tasks = Vec::new();
    for c in 0..6 {
        let addr = r.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = h1_conn(addr).await;
            for i in 0..5 {
                within("connection ready", conn.ready())
                    .await
                    .expect("ready");
                let req = Request::get(format!("/{c}/{i}"))
                    .header("host", "web.localhost")
                    .body(full(""))
                    .expect("request");
                let resp = within("response", conn.send_request(req))
                    .await
                    .expect("send");
                assert_eq!(resp.status(), StatusCode::OK);
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert!(String::from_utf8_lossy(&body).contains(&format!("path=/{c}/{i}")));
            }
        }));
    }
    for t in tasks {
        within("client", t).await.expect("join");
    }
    let m = r.router.metrics();
    assert_eq!(
        m.get("web", "web-1")
            .expect("web-1")
            .requests("GET", StatusClass::Success),
        30
    );
    // Every thread's connections wind down on shutdown.
    r.stop.take().expect("stop").send(()).expect("stop");
    within("serve returns", &mut r.served)
        .await
        .expect("join")
        .expect("serve");
}
