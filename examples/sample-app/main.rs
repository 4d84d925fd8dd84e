//! tend-sample-app: a small HTTP service (axum) that misbehaves on demand.
//!
//! `tend demo` deploys it and the integration tests run it, so it must be
//! predictable: everything it does is switched on by environment variables.
//! Built as a second binary of the `tend` package
//! (`cargo build -p tend --bin tend-sample-app`).
//!
//! Endpoints (on 127.0.0.1:$PORT; HEAD works wherever GET does):
//!   GET  /                 JSON: service, release, instance, pid, uptime_seconds
//!   GET  /healthz          200 "ok", or 503 "unhealthy" (see the knobs)
//!   GET  /metrics          Prometheus text format 0.0.4
//!   GET  /work?ms=N        sleeps N ms, then answers (slow requests, drains)
//!   GET|POST /echo         answers the request body with its content type
//!   GET  /status/{code}    answers that status (200..=599, else 400)
//!   GET  /stream?chunks=N&interval_ms=M
//!                          N lines ("chunk i/N"), M ms apart, chunked encoding
//!
//! Environment:
//!   PORT                        required, 1..=65535
//!   TEND_SERVICE, TEND_RELEASE, TEND_INSTANCE   echoed by `GET /`
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
//!   SAMPLE_PRINT_ENV=A,B        print `A=<value>` of each named variable on
//!                               stdout and stderr once listening (tests of
//!                               secret redaction)
//! Flags accept 1/true/yes and 0/false/no. Durations are `<n>ms`, `<n>s` or
//! `<n>m`. A bad value is reported naming the variable, and the process exits 2.
//!
//! Logs: one JSON object per line on stdout — lifecycle events and one line
//! per request (`method`, `path`, `status`, `duration_ms`, measured to the last
//! byte of the body). Lines at level "error" are copied to stderr.
//!
//! SIGTERM or SIGINT shut down gracefully: stop accepting, close idle
//! connections, let in-flight requests finish (up to 30 s), exit 0. A second
//! signal during the drain exits 1 at once. Exit codes: 0 graceful stop,
//! 1 SAMPLE_CRASH_AT_BOOT or cannot listen, 2 bad configuration,
//! 3 SAMPLE_CRASH_AFTER.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::sleep;

const MAX_BODY: usize = 8 << 20;
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

/// `log!(level, msg, {"field": value, ..})`: see `emit`.
macro_rules! log {
    ($level:expr, $msg:expr, $fields:tt) => {
        emit($level, $msg, json!($fields))
    };
}

/// Writes `{"ts":..,"level":..,"msg":..,<fields>}` as one line on stdout
/// (and stderr for errors). Write errors are ignored: logging must not crash.
fn emit(level: &str, msg: &str, fields: Value) {
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
    /// Whether this request should fail (SAMPLE_ERROR_RATE). Request n fails
    /// when floor(n * rate) steps up, so exactly `rate` of them fail.
    fn inject_error(&self) -> bool {
        let (rate, n) = (
            self.cfg.error_rate,
            self.error_candidates.fetch_add(1, Relaxed) as f64,
        );
        rate > 0.0 && ((n + 1.0) * rate).floor() > (n * rate).floor()
    }

    fn metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, method: &Method, status: u16, elapsed: Duration) {
        // Bounds the label's values, whatever clients send.
        let known = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
        let method = known
            .into_iter()
            .find(|m| *m == method.as_str())
            .unwrap_or("OTHER");
        let mut m = self.metrics();
        *m.requests.entry((method, status)).or_default() += 1;
        let secs = elapsed.as_secs_f64();
        for (bucket, le) in m.buckets.iter_mut().zip(BUCKETS) {
            *bucket += u64::from(secs <= le);
        }
        m.sum_secs += secs;
        m.count += 1;
    }

    fn render_metrics(&self) -> String {
        let m = self.metrics();
        let mut out = String::from(
            "# HELP http_requests_total HTTP requests answered, by method and status code.\n\
             # TYPE http_requests_total counter\n",
        );
        for ((method, code), n) in &m.requests {
            let _ = writeln!(
                out,
                r#"http_requests_total{{method="{method}",code="{code}"}} {n}"#
            );
        }
        out +=
            "# HELP http_request_duration_seconds Time from request read to last byte written.\n\
                # TYPE http_request_duration_seconds histogram\n";
        let buckets = m.buckets.iter().zip(BUCKETS.map(|le| le.to_string()));
        for (n, le) in buckets.chain([(&m.count, "+Inf".into())]) {
            let _ = writeln!(
                out,
                r#"http_request_duration_seconds_bucket{{le="{le}"}} {n}"#
            );
        }
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

// ---------------------------------------------------------------- HTTP

type AppState = State<Arc<App>>;
type Params = Query<Vec<(String, String)>>;

fn router(app: Arc<App>) -> Router {
    let text = |status, body: &'static str| move || async move { (status, body) };
    Router::new()
        .route("/", get(root))
        .route("/work", get(work))
        .route_layer(from_fn_with_state(app.clone(), inject_errors))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/echo", get(echo).post(echo))
        .route("/status/{*code}", get(status))
        .route("/stream", get(stream))
        .method_not_allowed_fallback(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"))
        .fallback(text(StatusCode::NOT_FOUND, "not found\n"))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Logs, times and counts one request when dropped (after its body is sent).
struct Done {
    app: Arc<App>,
    method: Method,
    path: String,
    started: Instant,
    status: u16,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.app.in_flight.fetch_sub(1, Relaxed);
        let elapsed = self.started.elapsed();
        self.app.record(&self.method, self.status, elapsed);
        let ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let (method, path, status) = (self.method.as_str(), &self.path, self.status);
        log!("info", "request", {
            "method": method, "path": path, "status": status, "duration_ms": ms
        });
    }
}

/// Request log, metrics and in-flight gauge. The handler runs in its own task
/// so it finishes (and is logged) even if the client goes away; a streamed
/// body carries the `Done` guard until its last chunk is written.
async fn observe(State(app): AppState, req: Request, next: Next) -> Response {
    app.in_flight.fetch_add(1, Relaxed);
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut done = Done {
        app,
        method,
        path,
        started: Instant::now(),
        status: 500,
    };
    let handled = tokio::spawn(async move {
        let resp = next.run(req).await;
        done.status = resp.status().as_u16();
        (resp, done)
    });
    let Ok((resp, done)) = handled.await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if resp.body().size_hint().exact().is_some() {
        return resp;
    }
    resp.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _done = &done;
            chunk
        }))
    })
}

/// SAMPLE_ERROR_RATE, for the routes it wraps: turns some 200s into 500s.
async fn inject_errors(State(app): AppState, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() != StatusCode::OK || !app.inject_error() {
        return resp;
    }
    let error = json!({"error": "injected failure (SAMPLE_ERROR_RATE)"});
    (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response()
}

/// A whole-number query parameter (`default` when absent), or a 400.
fn param(Query(params): &Params, key: &str, default: u64) -> Result<u64, (StatusCode, String)> {
    let Some((_, v)) = params.iter().find(|(k, _)| k == key) else {
        return Ok(default);
    };
    let why = format!("{key} must be a whole number\n");
    v.parse().map_err(|_| (StatusCode::BAD_REQUEST, why))
}

async fn root(State(app): AppState) -> Json<Value> {
    let c = &app.cfg;
    Json(json!({
        "service": c.service, "release": c.release, "instance": c.instance,
        "pid": std::process::id(), "uptime_seconds": app.started.elapsed().as_secs_f64(),
    }))
}

async fn healthz(State(app): AppState) -> (StatusCode, &'static str) {
    if app.healthy.load(Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
    }
}

async fn metrics(State(app): AppState) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.render_metrics(),
    )
}

async fn work(params: Params) -> Result<Json<Value>, (StatusCode, String)> {
    let ms = param(&params, "ms", 0)?;
    sleep(Duration::from_millis(ms)).await;
    Ok(Json(json!({"slept_ms": ms})))
}

async fn echo(headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let octets = HeaderValue::from_static("application/octet-stream");
    let content_type = headers.get(CONTENT_TYPE).cloned().unwrap_or(octets);
    ([(CONTENT_TYPE, content_type)], body)
}

async fn status(Path(code): Path<String>) -> Response {
    let valid = code.parse().ok().filter(|c| (200..=599).contains(c));
    let Some(Ok(status)) = valid.map(StatusCode::from_u16) else {
        let why = "status must be a number from 200 to 599\n";
        return (StatusCode::BAD_REQUEST, why).into_response();
    };
    let reason = status.canonical_reason().unwrap_or("Status");
    (status, format!("{} {reason}\n", status.as_u16())).into_response()
}

async fn stream(params: Params) -> Result<impl IntoResponse, (StatusCode, String)> {
    let count = param(&params, "chunks", 5)?;
    let interval = Duration::from_millis(param(&params, "interval_ms", 100)?);
    let lines = futures_util::stream::unfold(1, move |i| async move {
        if i > 1 && i <= count {
            sleep(interval).await;
        }
        (i <= count).then(|| (Ok::<_, Infallible>(format!("chunk {i}/{count}\n")), i + 1))
    });
    let body = Body::from_stream(lines);
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], body))
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
            log!("error", "invalid configuration", {"error": error});
            return 2;
        }
    };
    if cfg.crash_at_boot {
        log!("error", "crashing at boot", {"knob": "SAMPLE_CRASH_AT_BOOT", "exit_code": 1});
        return 1;
    }
    // Handlers first: from here on, SIGTERM never kills us by default.
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            log!("error", "cannot install signal handlers", {"error": e.to_string()});
            return 1;
        }
    };
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(watch_signals(term, int, cfg.ignore_sigterm, stop_tx));

    if let Some(delay) = cfg.boot_delay {
        let delay_ms = delay.as_millis() as u64;
        log!("info", "delaying boot", {"knob": "SAMPLE_BOOT_DELAY", "delay_ms": delay_ms});
        tokio::select! {
            _ = sleep(delay) => {}
            _ = stopped(stop.clone()) => return 0,
        }
    }
    let listener = match TcpListener::bind(("127.0.0.1", cfg.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            log!("error", "cannot listen", {"port": cfg.port, "error": e.to_string()});
            return 1;
        }
    };
    let pid = std::process::id();
    log!("info", "listening", {"port": cfg.port, "pid": pid, "log_level": cfg.log_level});
    if let Ok(names) = std::env::var("SAMPLE_PRINT_ENV") {
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let value = std::env::var(name).unwrap_or_default();
            println!("{name}={value}");
            eprintln!("{name}={value}");
        }
    }

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
    let server =
        axum::serve(listener, router(app.clone())).with_graceful_shutdown(stopped(stop.clone()));
    let drained = tokio::select! {
        served = server => match served {
            Ok(()) => true,
            Err(e) => {
                log!("error", "server failed", {"error": e.to_string()});
                return 1;
            }
        },
        () = async { stopped(stop).await; sleep(DRAIN_TIMEOUT).await } => false,
    };
    log!("info", "stopped", {"in_flight": app.in_flight.load(Relaxed), "drained": drained});
    0
}

/// Resolves once a signal asked us to stop.
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await; // no sender: no stop, ever
    }
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
            log!("warn", "SIGTERM received and ignored", {"knob": "SAMPLE_IGNORE_SIGTERM"});
        } else if stopping {
            let msg = "second signal while draining, exiting now";
            log!("error", msg, {"signal": name, "exit_code": 1});
            std::process::exit(1);
        } else {
            log!("info", "shutting down", {"signal": name});
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
            log!("error", "crashing", {"knob": "SAMPLE_CRASH_AFTER", "exit_code": 3});
            std::process::exit(3);
        });
    }
    if let Some(after) = cfg.unhealthy_after.filter(|_| !cfg.never_healthy) {
        let app = app.clone();
        tokio::spawn(async move {
            sleep(after).await;
            app.healthy.store(false, Relaxed);
            log!("warn", "now unhealthy", {"knob": "SAMPLE_UNHEALTHY_AFTER"});
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
            let (start, mut emitted) = (Instant::now(), 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            loop {
                tick.tick().await;
                while emitted < (start.elapsed().as_secs_f64() * rate) as u64 {
                    emitted += 1;
                    log!("info", "filler", {"knob": "SAMPLE_LOG_LINES_PER_SEC", "seq": emitted});
                }
            }
        });
    }
}
