//! tend-sample-app: a small HTTP service that misbehaves on demand.
//!
//! `tend demo` deploys it and the integration tests run it, so it must be
//! predictable: everything it does is switched on by environment variables.
//! It is built as a second binary of the `tend` package
//! (`cargo build -p tend --bin tend-sample-app`).
//!
//! Endpoints (on 127.0.0.1:$PORT):
//!   GET  /                 JSON: service, release, instance, pid, uptime_seconds
//!   GET  /healthz          200 "ok", or 503 "unhealthy" (see the knobs)
//!   GET  /metrics          Prometheus text format 0.0.4
//!   GET  /work?ms=N        sleeps N ms, then answers (slow requests, drains)
//!   GET|POST /echo         answers the request body with its content type
//!   GET  /status/{code}    answers that status (200..=599)
//!   GET  /stream?chunks=N&interval_ms=M
//!                          N lines ("chunk i/N"), M ms apart, chunked encoding
//! HEAD works wherever GET does.
//!
//! Environment:
//!   PORT                        required, 1..=65535
//!   TEND_SERVICE, TEND_RELEASE, TEND_INSTANCE
//!                               set by tend; echoed by `GET /`
//!   SAMPLE_CRASH_AT_BOOT=1      log an error and exit 1 before listening
//!   SAMPLE_BOOT_DELAY=<dur>     wait that long before listening
//!   SAMPLE_NEVER_HEALTHY=1      serve normally, but /healthz is always 503
//!   SAMPLE_UNHEALTHY_AFTER=<dur>  /healthz turns 503 that long after listening
//!   SAMPLE_CRASH_AFTER=<dur>    log an error and exit 3 that long after listening
//!   SAMPLE_IGNORE_SIGTERM=1     log each SIGTERM and keep serving (SIGINT
//!                               still stops it; SIGKILL is the way out)
//!   SAMPLE_ERROR_RATE=<0..1>    that fraction of `/` and `/work` requests get a
//!                               500; deterministic (0.25 = every 4th request)
//!   SAMPLE_LEAK_MB_PER_SEC=<n>  allocate, touch and keep n MiB per second
//!                               (in 100 ms steps); see sample_app_leaked_bytes
//!   SAMPLE_LOG_LINES_PER_SEC=<n>  emit n filler log lines per second
//!   SAMPLE_LOG_LEVEL            only echoed in the "listening" line
//! Flags accept 1/true/yes and 0/false/no. Durations are `<n>ms`, `<n>s` or
//! `<n>m` (e.g. `500ms`, `3s`, `2m`). A bad value is reported naming the
//! variable, and the process exits 2.
//!
//! Logs: one JSON object per line on stdout — lifecycle events and one line
//! per request (`method`, `path`, `status`, `duration_ms`). Lines at level
//! "error" are copied to stderr.
//!
//! SIGTERM or SIGINT shut down gracefully: stop accepting, close idle
//! connections, let in-flight requests finish (up to 30 s), exit 0. A second
//! signal during the drain exits 1 at once.
//!
//! Exit codes: 0 graceful stop, 1 SAMPLE_CRASH_AT_BOOT or cannot listen,
//! 2 bad configuration, 3 SAMPLE_CRASH_AFTER.
//!
//! The HTTP/1.1 server below is hand-written on tokio so the example needs no
//! dependency beyond those of `tend`. It handles keep-alive, Content-Length and
//! chunked request bodies, and chunked responses — enough for tests and demos,
//! not a general-purpose server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

const MAX_BODY: usize = 8 << 20;
const MAX_LINE: u64 = 8 << 10;
const MAX_HEADERS: usize = 100;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// ----------------------------------------------------------------- config

struct Config {
    port: u16,
    service: Option<String>,
    release: Option<String>,
    instance: Option<String>,
    crash_at_boot: bool,
    boot_delay: Option<Duration>,
    never_healthy: bool,
    unhealthy_after: Option<Duration>,
    crash_after: Option<Duration>,
    ignore_sigterm: bool,
    error_rate: f64,
    leak_mb_per_sec: f64,
    log_lines_per_sec: f64,
    log_level: Option<String>,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let port = env("PORT")?
            .ok_or("PORT is not set; it must be a TCP port (1-65535)")?
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("PORT must be a TCP port (1-65535)")?;
        Ok(Config {
            port,
            service: env("TEND_SERVICE")?,
            release: env("TEND_RELEASE")?,
            instance: env("TEND_INSTANCE")?,
            crash_at_boot: flag("SAMPLE_CRASH_AT_BOOT")?,
            boot_delay: duration("SAMPLE_BOOT_DELAY")?,
            never_healthy: flag("SAMPLE_NEVER_HEALTHY")?,
            unhealthy_after: duration("SAMPLE_UNHEALTHY_AFTER")?,
            crash_after: duration("SAMPLE_CRASH_AFTER")?,
            ignore_sigterm: flag("SAMPLE_IGNORE_SIGTERM")?,
            error_rate: number("SAMPLE_ERROR_RATE", 1.0)?,
            leak_mb_per_sec: number("SAMPLE_LEAK_MB_PER_SEC", 1024.0)?,
            log_lines_per_sec: number("SAMPLE_LOG_LINES_PER_SEC", 100_000.0)?,
            log_level: env("SAMPLE_LOG_LEVEL")?,
        })
    }
}

/// The variable's value; unset and empty are both `None`.
fn env(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

fn flag(name: &str) -> Result<bool, String> {
    match env(name)?.as_deref().map(str::trim) {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(v) => Err(format!("{name}={v:?}: expected 1/true/yes or 0/false/no")),
    }
}

fn duration(name: &str) -> Result<Option<Duration>, String> {
    env(name)?
        .map(|v| parse_duration(&v).map_err(|e| format!("{name}={v:?}: {e}")))
        .transpose()
}

fn number(name: &str, max: f64) -> Result<f64, String> {
    let Some(v) = env(name)? else { return Ok(0.0) };
    match v.trim().parse::<f64>() {
        Ok(n) if (0.0..=max).contains(&n) => Ok(n),
        _ => Err(format!("{name}={v:?}: expected a number from 0 to {max}")),
    }
}

/// `<n>ms`, `<n>s` or `<n>m`, with `n` a whole number.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err("expected a duration like 500ms, 3s or 2m".into());
    };
    let n: u64 = n
        .parse()
        .map_err(|_| "expected a whole number before the unit (500ms, 3s, 2m)")?;
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| "duration too large".into())
}

// ---------------------------------------------------------------- logging

/// Writes `{"ts":..,"level":..,"msg":..,<fields>}` as one line on stdout
/// (and stderr for errors). Write errors are ignored: logging must not crash.
fn log(level: &str, msg: &str, fields: Value) {
    let ts = humantime::format_rfc3339_millis(SystemTime::now());
    let mut line = format!(
        r#"{{"ts":"{ts}","level":"{level}","msg":{}"#,
        Value::from(msg)
    );
    if let Value::Object(fields) = fields {
        for (k, v) in fields {
            let _ = write!(line, ",{}:{v}", Value::from(k));
        }
    }
    line.push('}');
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    if level == "error" {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

// ------------------------------------------------------- state and metrics

struct App {
    cfg: Config,
    started: Instant,
    start_unix_secs: f64,
    healthy: AtomicBool,
    error_candidates: AtomicU64,
    in_flight: AtomicU64,
    leaked_bytes: AtomicU64,
    metrics: Mutex<Metrics>,
}

#[derive(Default)]
struct Metrics {
    requests: BTreeMap<(&'static str, u16), u64>,
    buckets: [u64; BUCKETS.len()], // cumulative, like the exposition format
    sum_secs: f64,
    count: u64,
}

impl App {
    /// Whether this `/` or `/work` request should fail (SAMPLE_ERROR_RATE).
    /// Request n fails when floor(n * rate) steps up, so exactly `rate` fail.
    fn inject_error(&self) -> bool {
        let rate = self.cfg.error_rate;
        let n = self.error_candidates.fetch_add(1, Relaxed) as f64;
        rate > 0.0 && ((n + 1.0) * rate).floor() > (n * rate).floor()
    }

    fn record(&self, method: &str, status: u16, elapsed: Duration) {
        let mut m = self
            .metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *m.requests
            .entry((method_label(method), status))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        for (bucket, le) in m.buckets.iter_mut().zip(BUCKETS) {
            if secs <= le {
                *bucket += 1;
            }
        }
        m.sum_secs += secs;
        m.count += 1;
    }

    fn render_metrics(&self) -> String {
        let m = self
            .metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        out += "# HELP http_requests_total HTTP requests answered, by method and status code.\n";
        out += "# TYPE http_requests_total counter\n";
        for ((method, code), n) in &m.requests {
            let _ = writeln!(
                out,
                r#"http_requests_total{{method="{method}",code="{code}"}} {n}"#
            );
        }
        out +=
            "# HELP http_request_duration_seconds Time from request read to last byte written.\n";
        out += "# TYPE http_request_duration_seconds histogram\n";
        for (n, le) in m.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                r#"http_request_duration_seconds_bucket{{le="{le}"}} {n}"#
            );
        }
        let _ = writeln!(
            out,
            r#"http_request_duration_seconds_bucket{{le="+Inf"}} {}"#,
            m.count
        );
        let _ = writeln!(out, "http_request_duration_seconds_sum {}", m.sum_secs);
        let _ = writeln!(out, "http_request_duration_seconds_count {}", m.count);
        let gauges = [
            (
                "http_requests_in_flight",
                "Requests being handled, this scrape included.",
                self.in_flight.load(Relaxed) as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch.",
                self.start_unix_secs,
            ),
            (
                "sample_app_leaked_bytes",
                "Bytes kept forever because of SAMPLE_LEAK_MB_PER_SEC.",
                self.leaked_bytes.load(Relaxed) as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        }
        out
    }
}

/// Bounds the label's values, whatever clients send.
fn method_label(method: &str) -> &'static str {
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("OTHER")
}

// ---------------------------------------------------------------- handlers

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
    http10: bool,
    keep_alive: bool,
}

enum Body {
    Full(Vec<u8>),
    Lines { count: u64, interval: Duration },
}

struct Response {
    status: u16,
    content_type: String,
    body: Body,
}

fn text(status: u16, body: impl Into<String>) -> Response {
    let body = Body::Full(body.into().into_bytes());
    Response {
        status,
        content_type: "text/plain; charset=utf-8".into(),
        body,
    }
}

fn json_response(status: u16, value: Value) -> Response {
    let body = Body::Full(value.to_string().into_bytes());
    Response {
        status,
        content_type: "application/json".into(),
        body,
    }
}

impl Request {
    /// A numeric query parameter (`default` when absent).
    fn query_u64(&self, key: &str, default: u64) -> Result<u64, Response> {
        match self.query.iter().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| text(400, format!("{key} must be a whole number\n"))),
        }
    }
}

async fn handle(app: &App, req: &Request) -> Response {
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    let path = req.path.as_str();
    let result = match path {
        "/" if get => Ok(root(app)),
        "/healthz" if get => Ok(if app.healthy.load(Relaxed) {
            text(200, "ok\n")
        } else {
            text(503, "unhealthy\n")
        }),
        "/metrics" if get => Ok(Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8".into(),
            body: Body::Full(app.render_metrics().into_bytes()),
        }),
        "/work" if get => work(app, req).await,
        "/echo" if get || req.method == "POST" => Ok(Response {
            status: 200,
            content_type: req
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            body: Body::Full(req.body.clone()),
        }),
        "/stream" if get => req.query_u64("chunks", 5).and_then(|count| {
            let interval = Duration::from_millis(req.query_u64("interval_ms", 100)?);
            Ok(Response {
                status: 200,
                content_type: "text/plain; charset=utf-8".into(),
                body: Body::Lines { count, interval },
            })
        }),
        p if get && p.starts_with("/status/") => match p["/status/".len()..].parse::<u16>() {
            Ok(code @ 200..=599) => Ok(text(code, format!("{code} {}\n", reason(code)))),
            _ => Ok(text(400, "status must be a number from 200 to 599\n")),
        },
        "/" | "/healthz" | "/metrics" | "/work" | "/echo" | "/stream" => {
            Ok(text(405, "method not allowed\n"))
        }
        p if p.starts_with("/status/") => Ok(text(405, "method not allowed\n")),
        _ => Ok(text(404, "not found\n")),
    };
    result.unwrap_or_else(|bad_request| bad_request)
}

fn root(app: &App) -> Response {
    if app.inject_error() {
        return json_response(
            500,
            json!({"error": "injected failure (SAMPLE_ERROR_RATE)"}),
        );
    }
    let c = &app.cfg;
    json_response(
        200,
        json!({
            "service": c.service, "release": c.release, "instance": c.instance,
            "pid": std::process::id(), "uptime_seconds": app.started.elapsed().as_secs_f64(),
        }),
    )
}

async fn work(app: &App, req: &Request) -> Result<Response, Response> {
    let ms = req.query_u64("ms", 0)?;
    sleep(Duration::from_millis(ms)).await;
    if app.inject_error() {
        return Ok(json_response(
            500,
            json!({"error": "injected failure (SAMPLE_ERROR_RATE)"}),
        ));
    }
    Ok(json_response(200, json!({"slept_ms": ms})))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

// ------------------------------------------------------------ HTTP/1.1 wire

/// A status to answer and why, for requests that cannot be read.
type ReadError = (u16, String);

/// One header or request line, without its CRLF; `None` at end of stream.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| (400, e.to_string()))?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Err((400, "line too long or truncated".into()));
    }
    let line = String::from_utf8(buf).map_err(|_| (400, "line is not UTF-8".to_string()))?;
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

async fn read_request<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Request>, ReadError> {
    let Some(line) = read_line(r).await? else {
        return Ok(None);
    };
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [method, target, version] = parts[..] else {
        return Err((400, format!("malformed request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((400, format!("unsupported version {version:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)
            .await?
            .ok_or((400, "connection closed in headers".to_string()))?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or((400, format!("malformed header {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        if headers.len() > MAX_HEADERS {
            return Err((400, "too many headers".into()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let http10 = version == "HTTP/1.0";
    let connection = header("connection").unwrap_or_default();
    let keep_alive = if http10 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };

    let body = if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        read_chunked(r).await?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| (400, "bad content-length".to_string()))?;
        if len > MAX_BODY {
            return Err((413, "body too large".into()));
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)
            .await
            .map_err(|e| (400, e.to_string()))?;
        body
    } else {
        Vec::new()
    };

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone());
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        content_type,
        body,
        http10,
        keep_alive,
    }))
}

async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)
            .await?
            .ok_or((400, "connection closed in body".to_string()))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| (400, format!("bad chunk size {size:?}")))?;
        if size == 0 {
            // Skip any trailers, up to the blank line.
            while read_line(r).await?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err((413, "body too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])
            .await
            .map_err(|e| (400, e.to_string()))?;
        read_line(r).await?; // the CRLF after the chunk's data
    }
}

async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    head_only: bool,
    chunked: bool,
    keep_alive: bool,
    resp: Response,
) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\nconnection: {connection}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type
    );
    match resp.body {
        Body::Full(body) => {
            let bodiless = matches!(resp.status, 204 | 304);
            if !bodiless {
                let _ = write!(head, "content-length: {}\r\n", body.len());
            }
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(b"\r\n");
            if !head_only && !bodiless {
                bytes.extend_from_slice(&body);
            }
            w.write_all(&bytes).await?;
        }
        Body::Lines { count, interval } => {
            // HTTP/1.0 clients get a body delimited by closing the connection.
            head += if chunked {
                "transfer-encoding: chunked\r\n\r\n"
            } else {
                "\r\n"
            };
            w.write_all(head.as_bytes()).await?;
            w.flush().await?;
            for i in (1..=count).take_while(|_| !head_only) {
                if i > 1 {
                    sleep(interval).await;
                }
                let line = format!("chunk {i}/{count}\n");
                let frame = if chunked {
                    format!("{:x}\r\n{line}\r\n", line.len())
                } else {
                    line
                };
                w.write_all(frame.as_bytes()).await?;
                w.flush().await?;
            }
            if chunked {
                w.write_all(b"0\r\n\r\n").await?;
            }
        }
    }
    w.flush().await
}

/// Serves one connection's requests until it closes, fails or we stop.
async fn serve_conn(stream: TcpStream, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        // Between requests, an idle connection is closed as soon as we stop.
        tokio::select! {
            ready = r.fill_buf() => if !matches!(ready, Ok(b) if !b.is_empty()) { return },
            Ok(_) = stop.wait_for(|stop| *stop) => return,
        }
        let started = Instant::now();
        let req = match read_request(&mut r).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err((status, why)) => {
                log(
                    "warn",
                    "bad request",
                    json!({"status": status, "error": why}),
                );
                let _ = write_response(
                    &mut w,
                    false,
                    false,
                    false,
                    text(status, format!("{why}\n")),
                )
                .await;
                return;
            }
        };
        app.in_flight.fetch_add(1, Relaxed);
        let resp = handle(&app, &req).await;
        let status = resp.status;
        let streaming = matches!(resp.body, Body::Lines { .. });
        let keep_alive = req.keep_alive && !*stop.borrow() && !(req.http10 && streaming);
        let written =
            write_response(&mut w, req.method == "HEAD", !req.http10, keep_alive, resp).await;
        app.in_flight.fetch_sub(1, Relaxed);
        let elapsed = started.elapsed();
        app.record(&req.method, status, elapsed);
        let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        log(
            "info",
            "request",
            json!({"method": req.method, "path": req.path, "status": status, "duration_ms": duration_ms}),
        );
        if written.is_err() || !keep_alive {
            return;
        }
    }
}

// --------------------------------------------------------------- lifecycle

#[tokio::main]
async fn main() {
    std::process::exit(run().await);
}

async fn run() -> i32 {
    let cfg = match Config::from_env() {
        Ok(cfg) => cfg,
        Err(error) => {
            log("error", "invalid configuration", json!({"error": error}));
            return 2;
        }
    };
    if cfg.crash_at_boot {
        log(
            "error",
            "crashing at boot",
            json!({"knob": "SAMPLE_CRASH_AT_BOOT", "exit_code": 1}),
        );
        return 1;
    }
    // Handlers first: from here on, SIGTERM never kills us by default.
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            log(
                "error",
                "cannot install signal handlers",
                json!({"error": e.to_string()}),
            );
            return 1;
        }
    };
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(watch_signals(term, int, cfg.ignore_sigterm, stop_tx));

    if let Some(delay) = cfg.boot_delay {
        log(
            "info",
            "delaying boot",
            json!({"knob": "SAMPLE_BOOT_DELAY", "delay_ms": delay.as_millis() as u64}),
        );
        tokio::select! {
            _ = sleep(delay) => {}
            Ok(_) = stop.wait_for(|stop| *stop) => return 0,
        }
    }
    let listener = match TcpListener::bind(("127.0.0.1", cfg.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            log(
                "error",
                "cannot listen",
                json!({"port": cfg.port, "error": e.to_string()}),
            );
            return 1;
        }
    };
    log(
        "info",
        "listening",
        json!({"port": cfg.port, "pid": std::process::id(), "log_level": cfg.log_level}),
    );

    let start_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let app = Arc::new(App {
        healthy: AtomicBool::new(!cfg.never_healthy),
        cfg,
        started: Instant::now(),
        start_unix_secs,
        error_candidates: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        leaked_bytes: AtomicU64::new(0),
        metrics: Mutex::default(),
    });
    spawn_misbehaviour(&app);
    serve(listener, app, stop).await;
    0
}

/// Accepts connections until told to stop, then drains them.
async fn serve(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let conn_stop = stop.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Ok(_) = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { conns.spawn(serve_conn(stream, app.clone(), conn_stop.clone())); }
                Err(e) => {
                    log("error", "accept failed", json!({"error": e.to_string()}));
                    sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let open = conns.len();
    let drained = timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    log(
        "info",
        "stopped",
        json!({"open_connections": open, "drained": drained}),
    );
}

async fn watch_signals(
    mut term: Signal,
    mut int: Signal,
    ignore_sigterm: bool,
    stop: watch::Sender<bool>,
) {
    let mut stopping = false;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if name == "SIGTERM" && ignore_sigterm {
            log(
                "warn",
                "SIGTERM received and ignored",
                json!({"knob": "SAMPLE_IGNORE_SIGTERM"}),
            );
        } else if stopping {
            log(
                "error",
                "second signal while draining, exiting now",
                json!({"signal": name, "exit_code": 1}),
            );
            std::process::exit(1);
        } else {
            log("info", "shutting down", json!({"signal": name}));
            stopping = true;
            let _ = stop.send(true);
        }
    }
}

/// Starts the timers and loops behind the SAMPLE_* knobs.
fn spawn_misbehaviour(app: &Arc<App>) {
    let cfg = &app.cfg;
    if let Some(after) = cfg.crash_after {
        tokio::spawn(async move {
            sleep(after).await;
            log(
                "error",
                "crashing",
                json!({"knob": "SAMPLE_CRASH_AFTER", "exit_code": 3}),
            );
            std::process::exit(3);
        });
    }
    if let Some(after) = cfg.unhealthy_after.filter(|_| !cfg.never_healthy) {
        let app = app.clone();
        tokio::spawn(async move {
            sleep(after).await;
            app.healthy.store(false, Relaxed);
            log(
                "warn",
                "now unhealthy",
                json!({"knob": "SAMPLE_UNHEALTHY_AFTER"}),
            );
        });
    }
    if cfg.leak_mb_per_sec > 0.0 {
        let app = app.clone();
        tokio::spawn(async move {
            let step = (app.cfg.leak_mb_per_sec * 1024.0 * 1024.0 / 10.0) as usize;
            let mut kept: Vec<Vec<u8>> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                kept.push(vec![0xA5; step]); // a non-zero fill touches every page
                app.leaked_bytes.fetch_add(step as u64, Relaxed);
            }
        });
    }
    if cfg.log_lines_per_sec > 0.0 {
        let rate = cfg.log_lines_per_sec;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut emitted: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                while emitted < due {
                    emitted += 1;
                    log(
                        "info",
                        "filler",
                        json!({"knob": "SAMPLE_LOG_LINES_PER_SEC", "seq": emitted}),
                    );
                }
            }
        });
    }
}
