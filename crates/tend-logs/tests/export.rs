//! Export to a Loki push API, against a real HTTP receiver on an ephemeral port.
//! Waits poll a condition against a deadline; there are no bare sleeps for conditions.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tend_logs::{ExportConfig, Grep, Level, LogConfig, LogStats, Logs, Query, Source, Stream};

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn source(root: &Path, service: &str, release: u32, instance: &str) -> Source {
    let d = root.join("instances").join(instance);
    fs::create_dir_all(&d).unwrap();
    for f in ["stdout.log", "stderr.log"] {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(f))
            .unwrap();
    }
    Source {
        service: service.into(),
        team: "payments".into(),
        release,
        instance: instance.into(),
        stdout: d.join("stdout.log"),
        stderr: d.join("stderr.log"),
    }
}

fn append(path: &Path, data: impl AsRef<[u8]>) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data.as_ref()).unwrap();
}

/// A Loki stand-in: records every push body and answers with `respond(n)` for
/// the n-th request (0-based).
struct Receiver {
    addr: SocketAddr,
    /// (status answered, body) of every request, in arrival order.
    requests: Arc<Mutex<Vec<(u16, Value)>>>,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(respond: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Receiver {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Receiver::on(l, respond)
    }

    fn on(
        listener: std::net::TcpListener,
        respond: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let respond = Arc::new(respond);
        let recorded = requests.clone();
        let app = axum::Router::new().route(
            "/loki/api/v1/push",
            post(move |body: Bytes| {
                let (recorded, count, respond) = (recorded.clone(), count.clone(), respond.clone());
                async move {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = respond(n);
                    let v: Value = serde_json::from_slice(&body).expect("push body is JSON");
                    recorded.lock().unwrap().push((status, v));
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
        Receiver {
            addr,
            requests,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<(u16, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

/// A pushed line with its labels and metadata.
#[derive(Debug, Clone)]
struct Pushed {
    labels: BTreeMap<String, String>,
    ns: u64,
    line: String,
    meta: BTreeMap<String, String>,
}

/// Checks the shape of a push body and flattens it.
fn parse_push(body: &Value) -> Vec<Pushed> {
    let mut out = Vec::new();
    let streams = body["streams"].as_array().expect("streams array");
    assert!(!streams.is_empty());
    for s in streams {
        let labels: BTreeMap<String, String> = s["stream"]
            .as_object()
            .expect("stream labels")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("label is a string").to_owned()))
            .collect();
        assert!(
            !labels.contains_key("instance"),
            "instance must not be a label: {labels:?}"
        );
        let values = s["values"].as_array().expect("values array");
        assert!(!values.is_empty());
        let mut prev = 0u64;
        for v in values {
            let v = v.as_array().expect("value is an array");
            assert_eq!(v.len(), 3, "value is [ns, line, metadata]: {v:?}");
            let ns_str = v[0].as_str().expect("ns as a string");
            let ns: u64 = ns_str.parse().expect("ns is an integer");
            assert!(ns >= prev, "timestamps decrease within a stream");
            prev = ns;
            let meta = v[2]
                .as_object()
                .expect("structured metadata object")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("metadata string").to_owned()))
                .collect();
            out.push(Pushed {
                labels: labels.clone(),
                ns,
                line: v[1].as_str().expect("line").to_owned(),
                meta,
            });
        }
    }
    out
}

fn config(root: &Path, export: ExportConfig) -> LogConfig {
    let mut c = LogConfig::new(root.join("logs"));
    c.export = Some(export);
    c
}

fn stats(logs: &Logs) -> LogStats {
    logs.stats()
}

#[test]
fn lines_arrive_exactly_once_after_a_503() {
    let rx = Receiver::start(|n| if n == 0 { 503 } else { 204 });
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(
        dir.path(),
        ExportConfig {
            batch_lines: 50,
            batch_wait: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..ExportConfig::loki(rx.url())
        },
    ))
    .unwrap();
    let s = source(dir.path(), "web", 3, "web-v3-aaaa");
    logs.watch(s.clone());
    let t0 = SystemTime::now();
    let mut want: Vec<String> = Vec::new();
    let mut out = String::new();
    for i in 0..300 {
        let l = if i % 10 == 0 {
            format!(r#"{{"level":"error","msg":"boom {i:04}"}}"#)
        } else {
            format!("plain line {i:04}")
        };
        out.push_str(&l);
        out.push('\n');
        want.push(l);
    }
    append(&s.stdout, &out);
    let mut err = String::new();
    for i in 0..20 {
        let l = format!("stderr line {i:02}");
        err.push_str(&l);
        err.push('\n');
        want.push(l);
    }
    append(&s.stderr, &err);
    logs.platform(
        "web",
        Some(3),
        Some("web-v3-aaaa"),
        Level::Info,
        "deployed v3",
    );
    want.push("deployed v3".into());
    let total = want.len() as u64;

    let st = wait_for("every line sent", Duration::from_secs(20), || {
        let st = stats(&logs);
        (st.export_sent >= total).then_some(st)
    });
    assert_eq!(st.export_sent, total);
    assert_eq!(st.export_dropped, 0);
    assert!(st.export_retries >= 1, "{st:?}");

    let reqs = rx.requests();
    assert_eq!(reqs[0].0, 503, "the first push was refused");
    assert!(reqs[1..].iter().all(|r| r.0 == 204));
    // The refused batch came again: every line was accepted exactly once.
    let refused: Vec<String> = parse_push(&reqs[0].1).into_iter().map(|p| p.line).collect();
    let accepted: Vec<Pushed> = reqs[1..].iter().flat_map(|r| parse_push(&r.1)).collect();
    let mut got: Vec<String> = accepted.iter().map(|p| p.line.clone()).collect();
    for l in &refused {
        assert!(got.contains(l), "refused line {l:?} was not retried");
    }
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "every line exactly once");

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let start = t0
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for p in &accepted {
        assert!(
            p.ns >= start - 1_000_000_000 && p.ns <= now,
            "timestamp {} not of this test",
            p.ns
        );
        assert_eq!(p.labels["service"], "web");
        assert_eq!(p.labels["team"], "payments");
        assert_eq!(p.labels["release"], "v3");
        assert_eq!(p.meta["instance"], "web-v3-aaaa");
        let stream = &p.labels["stream"];
        if p.line.starts_with("plain") || p.line.starts_with('{') {
            assert_eq!(stream, "stdout");
        } else if p.line.starts_with("stderr") {
            assert_eq!(stream, "stderr");
        } else {
            assert_eq!(stream, "platform");
            assert_eq!(p.meta["level"], "info");
        }
        if p.line.starts_with('{') {
            assert_eq!(p.meta["level"], "error", "{p:?}");
        } else if p.line.starts_with("plain") {
            assert!(!p.meta.contains_key("level"));
        }
    }
}

#[test]
fn a_rejected_batch_is_dropped_not_retried() {
    let rx = Receiver::start(|_| 400);
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(
        dir.path(),
        ExportConfig {
            batch_lines: 10,
            batch_wait: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..ExportConfig::loki(rx.url())
        },
    ))
    .unwrap();
    let s = source(dir.path(), "api", 1, "api-v1-bbbb");
    logs.watch(s.clone());
    let out: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
    append(&s.stdout, out);
    let st = wait_for("every line dropped", Duration::from_secs(10), || {
        let st = stats(&logs);
        (st.export_dropped >= 100).then_some(st)
    });
    assert_eq!(st.export_dropped, 100);
    assert_eq!(st.export_sent, 0);
    assert_eq!(st.export_retries, 0);
    // Each line was offered once: no retry of a rejected batch.
    let offered = |rx: &Receiver| -> usize {
        rx.requests()
            .iter()
            .map(|r| parse_push(&r.1).len())
            .sum::<usize>()
    };
    assert_eq!(offered(&rx), 100);
    // Still so a while later (more than a few backoff periods).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(offered(&rx), 100);
    assert_eq!(stats(&logs).export_retries, 0);
    // The store itself has every line.
    assert_eq!(logs.query(&Query::new("api")).unwrap().len(), 100);
}

#[test]
fn receiver_down_drops_the_oldest_and_never_delays_ingestion() {
    // A port nothing listens on (for now).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (buffer, batch) = (50u64, 10u64);
    let logs = Logs::open(config(
        dir.path(),
        ExportConfig {
            batch_lines: batch as usize,
            batch_wait: Duration::from_millis(50),
            buffer_lines: buffer as usize,
            max_backoff: Duration::from_millis(200),
            ..ExportConfig::loki(format!("http://{addr}"))
        },
    ))
    .unwrap();
    let s = source(dir.path(), "db", 2, "db-v2-cccc");
    logs.watch(s.clone());
    for chunk in 0..10 {
        let out: String = (0..100)
            .map(|i| format!("line {:04}\n", chunk * 100 + i))
            .collect();
        append(&s.stdout, out);
    }
    // Every line but the newest `buffer` is dropped: the evicted ones, and the
    // batch that was in flight when they were (older still) at its next failed
    // attempt. Until then it would be sent if the receiver came back.
    let st = wait_for("the oldest lines dropped", Duration::from_secs(10), || {
        let st = stats(&logs);
        (st.lines_ingested >= 1000 && st.export_dropped >= 1000 - buffer).then_some(st)
    });
    assert_eq!(st.export_sent, 0);
    assert!(st.export_retries >= 1, "{st:?}");

    // Ingestion is not held up by the exporter: a new line is queryable at once.
    let t0 = Instant::now();
    append(&s.stdout, "fresh line\n");
    let fresh = Query {
        grep: Some(Grep::Substring("fresh line".into())),
        ..Query::new("db")
    };
    wait_for("the fresh line", Duration::from_secs(1), || {
        (logs.query(&fresh).unwrap().len() == 1).then_some(())
    });
    assert!(t0.elapsed() < Duration::from_secs(1));

    // The drop is told in the service's own log.
    let notice = Query {
        stream: Some(Stream::Platform),
        grep: Some(Grep::Substring("log export:".into())),
        ..Query::new("db")
    };
    let n = wait_for("the drop notice", Duration::from_secs(5), || {
        logs.query(&notice).unwrap().into_iter().next()
    });
    let dropped: u64 = n
        .raw
        .strip_prefix("log export: ")
        .and_then(|r| r.strip_suffix(" lines dropped (buffer full)"))
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("unexpected notice {:?}", n.raw));
    // The first notice comes at the first drop; later ones at most once a minute.
    assert!(
        dropped > 0 && dropped <= stats(&logs).export_dropped,
        "{}",
        n.raw
    );
    assert_eq!(n.level, Some(Level::Warn));

    // The receiver comes up: what waited arrives, and it is the newest lines.
    let rx = Receiver::on(std::net::TcpListener::bind(addr).unwrap(), |_| 204);
    let st = wait_for("everything accounted", Duration::from_secs(10), || {
        let st = stats(&logs);
        (st.export_sent > 0 && st.export_sent + st.export_dropped == st.lines_ingested)
            .then_some(st)
    });
    let got: Vec<String> = rx
        .requests()
        .iter()
        .flat_map(|r| parse_push(&r.1))
        .filter(|p| p.labels["stream"] == "stdout")
        .map(|p| p.line)
        .collect();
    assert!(got.contains(&"fresh line".to_owned()), "{got:?}");
    let mut nums: Vec<u32> = got
        .iter()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    nums.sort_unstable();
    assert!(
        !nums.is_empty() && nums.len() as u64 <= buffer + batch,
        "{nums:?}"
    );
    assert_eq!(
        *nums.last().unwrap(),
        999,
        "the newest lines survive: {nums:?}"
    );
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "a contiguous run of the newest lines: {nums:?}"
    );
    assert!(st.export_dropped >= 1000 - buffer - batch);

    // Shutdown with lines waiting does not hang.
    let t0 = Instant::now();
    drop(logs);
    assert!(t0.elapsed() < Duration::from_secs(6));
}
