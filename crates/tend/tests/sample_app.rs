//! The sample service (`examples/sample-app`): endpoints, knobs, signals, logs.
//! Every process started here is killed by `SampleApp`'s Drop, even on failure.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tend-sample-app");
const DEADLINE: Duration = Duration::from_secs(15);

/// A running sample app, killed (SIGKILL) and reaped on drop.
struct SampleApp {
    child: Child,
    port: u16,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl SampleApp {
    /// Starts the app with `env` on a free port, without waiting for it.
    fn spawn(env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut child = Command::new(BIN)
            .env_clear()
            .env("PORT", port.to_string())
            .env("TEND_SERVICE", "web")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tend-sample-app");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
        // Drain stderr so the app never blocks on a full pipe.
        let mut err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        SampleApp {
            child,
            port,
            stdout,
        }
    }

    /// Starts the app and waits until it accepts connections.
    fn start(env: &[(&str, &str)]) -> Self {
        let mut app = Self::spawn(env);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", app.port)).is_err() {
            if let Ok(Some(status)) = app.child.try_wait() {
                panic!("sample app exited before listening: {status}");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "sample app did not listen in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        app
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let resp = client().get(self.url(path)).send().expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().expect("body"))
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid")
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "sample app did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lines").clone()
    }

    /// Waits until a stdout line (as JSON) satisfies `pred`, and returns it.
    fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let found = self
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v));
            if let Some(v) = found {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no log line {what}; got:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SampleApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr").port()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn msg_is(v: &Value, msg: &str) -> bool {
    v["msg"] == msg
}

#[test]
fn serves_health_root_and_metrics() {
    let app = SampleApp::start(&[("TEND_RELEASE", "r7")]);
    assert_eq!(app.get("/healthz"), (200, "ok\n".to_string()));

    let (status, body) = app.get("/");
    assert_eq!(status, 200);
    let root: Value = serde_json::from_str(&body).expect("root is JSON");
    assert_eq!(root["service"], "web");
    assert_eq!(root["release"], "r7");
    assert_eq!(root["pid"], app.child.id());

    let (status, metrics) = app.get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        r#"http_requests_total{method="GET",code="200"} 2"#,
        r#"http_request_duration_seconds_bucket{le="+Inf"} 2"#,
        "http_request_duration_seconds_sum ",
        "http_request_duration_seconds_count 2",
        "process_start_time_seconds ",
        "sample_app_leaked_bytes 0",
    ] {
        assert!(
            metrics.contains(needle),
            "missing {needle:?} in:\n{metrics}"
        );
    }
}

#[test]
fn echo_status_and_stream() {
    let app = SampleApp::start(&[]);
    let resp = client()
        .post(app.url("/echo"))
        .body("hello")
        .send()
        .expect("echo");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().expect("body"), "hello");
    assert_eq!(app.get("/status/418").0, 418);
    assert_eq!(app.get("/status/99").0, 400);
    assert_eq!(app.get("/nope").0, 404);
    let (status, body) = app.get("/stream?chunks=3&interval_ms=10");
    assert_eq!(status, 200);
    assert_eq!(body, "chunk 1/3\nchunk 2/3\nchunk 3/3\n");

    let resp = client()
        .post(app.url("/echo"))
        .header("content-type", "text/x-sample")
        .body("typed")
        .send()
        .expect("typed echo");
    assert_eq!(resp.headers()["content-type"], "text/x-sample");
    let resp = client().delete(app.url("/echo")).send().expect("delete");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.text().expect("body"), "method not allowed\n");
    assert_eq!(app.get("/status/204").0, 204);
    assert_eq!(app.get("/work?ms=soon").0, 400);
    assert_eq!(app.get("/stream?chunks=x").0, 400);
    let resp = client()
        .get(app.url("/stream?chunks=1"))
        .send()
        .expect("stream");
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    // A streamed request is logged once its last chunk is written.
    app.wait_log("for GET /stream lasting 20 ms", |v| {
        v["path"] == "/stream" && v["duration_ms"].as_f64().is_some_and(|ms| ms >= 20.0)
    });
}

#[test]
fn log_lines_are_json() {
    let app = SampleApp::start(&[("SAMPLE_LOG_LINES_PER_SEC", "200")]);
    let listening = app.wait_log("listening", |v| msg_is(v, "listening"));
    assert_eq!(listening["port"], app.port);
    app.get("/healthz");
    let request = app.wait_log("for GET /healthz", |v| v["path"] == "/healthz");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["status"], 200);
    assert!(request["duration_ms"].is_number());
    app.wait_log("filler", |v| msg_is(v, "filler"));
    for line in app.lines() {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        for key in ["ts", "level", "msg"] {
            assert!(v[key].is_string(), "{key} missing in {line}");
        }
    }
}

#[test]
fn crash_at_boot_exits_non_zero_quickly() {
    let start = Instant::now();
    let mut app = SampleApp::spawn(&[("SAMPLE_CRASH_AT_BOOT", "1")]);
    assert_eq!(app.wait_exit().code(), Some(1));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    app.wait_log("crash", |v| v["level"] == "error");
}

#[test]
fn bad_configuration_exits_2() {
    for env in [
        &[("PORT", "")][..],
        &[("PORT", "http")],
        &[("SAMPLE_BOOT_DELAY", "3 seconds")],
        &[("SAMPLE_ERROR_RATE", "2")],
    ] {
        let mut app = SampleApp::spawn(env);
        assert_eq!(app.wait_exit().code(), Some(2), "env {env:?}");
        let error = app.wait_log("invalid configuration", |v| v["level"] == "error");
        let var = env[0].0;
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains(var)),
            "{error}"
        );
    }
}

#[test]
fn never_healthy_answers_503() {
    let app = SampleApp::start(&[("SAMPLE_NEVER_HEALTHY", "1")]);
    assert_eq!(app.get("/healthz").0, 503);
    assert_eq!(app.get("/").0, 200);
}

#[test]
fn error_rate_fails_that_fraction() {
    let app = SampleApp::start(&[("SAMPLE_ERROR_RATE", "0.5")]);
    let failures = (0..10).filter(|_| app.get("/work").0 == 500).count();
    assert_eq!(failures, 5);
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let mut app = SampleApp::start(&[]);
    let url = app.url("/work?ms=1500");
    let slow = std::thread::spawn(move || {
        let resp = client().get(url).send().expect("slow request");
        (resp.status().as_u16(), resp.text().expect("body"))
    });
    // Wait until the slow request is being handled (the scrape counts itself).
    let start = Instant::now();
    while !app.get("/metrics").1.contains("http_requests_in_flight 2") {
        assert!(start.elapsed() < DEADLINE, "slow request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    app.signal(libc::SIGTERM);
    let (status, body) = slow.join().expect("slow request thread");
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"slept_ms":1500}"#);
    assert_eq!(app.wait_exit().code(), Some(0));
    app.wait_log("shutting down", |v| msg_is(v, "shutting down"));
}

#[test]
fn ignore_sigterm_keeps_serving_until_sigkill() {
    let mut app = SampleApp::start(&[("SAMPLE_IGNORE_SIGTERM", "1")]);
    app.signal(libc::SIGTERM);
    app.wait_log("SIGTERM ignored", |v| {
        msg_is(v, "SIGTERM received and ignored")
    });
    assert_eq!(app.get("/healthz").0, 200);
    assert!(app.child.try_wait().expect("try_wait").is_none());
    app.signal(libc::SIGKILL);
    assert_eq!(app.wait_exit().signal(), Some(libc::SIGKILL));
}

#[test]
fn second_signal_during_drain_exits_1() {
    let mut app = SampleApp::start(&[]);
    let url = app.url("/work?ms=5000");
    std::thread::spawn(move || client().get(url).send());
    let start = Instant::now();
    while !app.get("/metrics").1.contains("http_requests_in_flight 2") {
        assert!(start.elapsed() < DEADLINE, "slow request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    app.signal(libc::SIGTERM);
    app.wait_log("shutting down", |v| msg_is(v, "shutting down"));
    app.signal(libc::SIGINT);
    assert_eq!(app.wait_exit().code(), Some(1));
}

#[test]
fn sigint_stops_even_when_sigterm_is_ignored() {
    let mut app = SampleApp::start(&[("SAMPLE_IGNORE_SIGTERM", "1")]);
    app.signal(libc::SIGTERM);
    app.wait_log("SIGTERM ignored", |v| {
        msg_is(v, "SIGTERM received and ignored")
    });
    app.signal(libc::SIGINT);
    assert_eq!(app.wait_exit().code(), Some(0));
}

#[test]
fn unhealthy_after_and_crash_after() {
    let mut app = SampleApp::start(&[
        ("SAMPLE_UNHEALTHY_AFTER", "200ms"),
        ("SAMPLE_CRASH_AFTER", "1s"),
    ]);
    app.wait_log("now unhealthy", |v| msg_is(v, "now unhealthy"));
    assert_eq!(app.get("/healthz").0, 503);
    assert_eq!(app.wait_exit().code(), Some(3));
}

#[test]
fn leak_shows_in_metrics() {
    let app = SampleApp::start(&[("SAMPLE_LEAK_MB_PER_SEC", "10")]);
    let start = Instant::now();
    loop {
        let metrics = app.get("/metrics").1;
        let leaked = metrics
            .lines()
            .find_map(|l| l.strip_prefix("sample_app_leaked_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("sample_app_leaked_bytes");
        if leaked >= 2.0 * 1024.0 * 1024.0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "nothing leaked: {leaked}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
