//! tend against a real Prometheus (Debian package `prometheus`, started here
//! on loopback): the same samples in both, the same answers to a table of
//! PromQL expressions; `promtool` reads tend's `/metrics` and queries its API.
//!
//! The same data gets into both by remote write: tend scrapes the sample-app
//! services and sends every sample it stores to Prometheus's remote-write
//! receiver, so both hold identical samples with identical timestamps and a
//! query over the same range must give the same result (up to float
//! rounding), not merely a similar one.
//!
//! This test fails (it does not skip) when Prometheus is not installed: CI
//! installs the package.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::platform::*;
use common::*;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn require(bin: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: this test needs a real Prometheus. \
         Install the Debian package: apt-get install -y prometheus"
    );
}

/// A Prometheus with the remote-write receiver on, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Prometheus {
    fn start() -> Prometheus {
        require(PROMETHEUS);
        let dir = tempfile::tempdir().expect("tempdir");
        // No scrape jobs: everything it holds comes from tend by remote write.
        std::fs::write(dir.path().join("prometheus.yml"), "global: {}\n").expect("config");
        // The port is free when picked but may be taken before Prometheus binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(PROMETHEUS)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-remote-write-receiver")
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn prometheus");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            let ready = loop {
                if child.try_wait().ok().flatten().is_some() {
                    break false;
                }
                let up = reqwest::blocking::get(format!("{url}/-/ready"))
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if up {
                    break true;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("prometheus did not become ready within 60s");
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if ready {
                return Prometheus {
                    child,
                    url,
                    _dir: dir,
                };
            }
        }
        panic!("prometheus could not bind a port in 5 attempts");
    }
}

/// `GET {base}{path}` with `params` on a Prometheus API; returns `data`.
fn api(
    http: &reqwest::blocking::Client,
    base: &str,
    token: Option<&str>,
    path: &str,
    params: &[(&str, String)],
) -> Value {
    let mut req = http.get(format!("{base}{path}")).query(params);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().expect("request");
    let status = resp.status();
    let body: Value = resp.json().expect("JSON");
    assert!(
        status.is_success() && body["status"] == "success",
        "{base}{path} {params:?}: {status} {body}"
    );
    body["data"].clone()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// How two answers are compared.
#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    /// Same series (label sets) with the same points.
    Exact,
    /// Same values at every step, whichever series they belong to: for
    /// topk/bottomk, whose choice among equal values is arbitrary.
    ValuesPerStep,
}

fn close(a: &str, b: &str) -> bool {
    let (x, y) = (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap());
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
}

/// `{labels → [(t, value)]}` of a vector, matrix or scalar answer.
fn points(data: &Value) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let pair = |p: &Value| {
        (
            format!("{:.3}", p[0].as_f64().unwrap()),
            p[1].as_str().unwrap().to_string(),
        )
    };
    match data["resultType"].as_str().unwrap() {
        "scalar" | "string" => {
            out.insert("scalar".into(), vec![pair(&data["result"])]);
        }
        "vector" => {
            for s in data["result"].as_array().unwrap() {
                out.insert(s["metric"].to_string(), vec![pair(&s["value"])]);
            }
        }
        _ => {
            for s in data["result"].as_array().unwrap() {
                let pts = s["values"].as_array().unwrap().iter().map(pair).collect();
                out.insert(s["metric"].to_string(), pts);
            }
        }
    }
    out
}

/// Why two answers differ, if they do.
fn difference(ours: &Value, theirs: &Value, cmp: Cmp) -> Option<String> {
    if ours["resultType"] != theirs["resultType"] {
        return Some(format!(
            "result types {} vs {}",
            ours["resultType"], theirs["resultType"]
        ));
    }
    let (a, b) = (points(ours), points(theirs));
    match cmp {
        Cmp::Exact => {
            let (ka, kb): (BTreeSet<_>, BTreeSet<_>) = (a.keys().collect(), b.keys().collect());
            if ka != kb {
                return Some(format!("series differ:\n tend: {ka:?}\n prom: {kb:?}"));
            }
            for (k, pa) in &a {
                let pb = &b[k];
                let ta: Vec<_> = pa.iter().map(|p| &p.0).collect();
                let tb: Vec<_> = pb.iter().map(|p| &p.0).collect();
                if ta != tb {
                    return Some(format!(
                        "{k}: timestamps differ\n tend: {ta:?}\n prom: {tb:?}"
                    ));
                }
                for (x, y) in pa.iter().zip(pb) {
                    if !close(&x.1, &y.1) {
                        return Some(format!("{k} at {}: tend {} vs prom {}", x.0, x.1, y.1));
                    }
                }
            }
        }
        Cmp::ValuesPerStep => {
            let by_step = |m: &BTreeMap<String, Vec<(String, String)>>| {
                let mut s: BTreeMap<String, Vec<f64>> = BTreeMap::new();
                for pts in m.values() {
                    for (t, v) in pts {
                        s.entry(t.clone()).or_default().push(v.parse().unwrap());
                    }
                }
                for v in s.values_mut() {
                    v.sort_by(f64::total_cmp);
                }
                s
            };
            let (sa, sb) = (by_step(&a), by_step(&b));
            let same = sa.len() == sb.len()
                && sa.iter().zip(&sb).all(|((ta, va), (tb, vb))| {
                    ta == tb
                        && va.len() == vb.len()
                        && va
                            .iter()
                            .zip(vb)
                            .all(|(x, y)| close(&x.to_string(), &y.to_string()))
                });
            if !same {
                return Some(format!(
                    "values per step differ:\n tend: {sa:?}\n prom: {sb:?}"
                ));
            }
        }
    }
    None
}

/// The expressions both must agree on, and how to compare them.
const EXPRESSIONS: &[(&str, Cmp)] = &[
    // Selectors with every matcher type, offset, staleness.
    (r#"up"#, Cmp::Exact),
    (
        r#"http_requests_total{service="web", code!="500", method=~"G.*", instance!~"nomatch.*"}"#,
        Cmp::Exact,
    ),
    (r#"process_resident_memory_bytes offset 10s"#, Cmp::Exact),
    // Counters.
    (r#"rate(http_requests_total[10s])"#, Cmp::Exact),
    (r#"irate(http_requests_total[10s])"#, Cmp::Exact),
    (r#"increase(tend_http_requests_total[30s])"#, Cmp::Exact),
    (r#"delta(process_resident_memory_bytes[30s])"#, Cmp::Exact),
    (r#"resets(http_requests_total[30s])"#, Cmp::Exact),
    (r#"changes(tend_instance_ready[30s])"#, Cmp::Exact),
    (
        r#"sum by (service, code) (rate(http_requests_total[30s] offset 5s))"#,
        Cmp::Exact,
    ),
    // Histograms.
    (
        r#"histogram_quantile(0.9, sum by (le, service) (rate(http_request_duration_seconds_bucket[30s])))"#,
        Cmp::Exact,
    ),
    (
        r#"histogram_quantile(0.5, rate(tend_http_request_duration_seconds_bucket[30s]))"#,
        Cmp::Exact,
    ),
    (
        r#"histogram_quantile(0.99, sum without (instance, release) (rate(tend_http_request_duration_seconds_bucket[10s])))"#,
        Cmp::Exact,
    ),
    // *_over_time.
    (
        r#"avg_over_time(process_resident_memory_bytes[30s])"#,
        Cmp::Exact,
    ),
    (r#"min_over_time(scrape_duration_seconds[10s])"#, Cmp::Exact),
    (r#"max_over_time(http_requests_in_flight[10s])"#, Cmp::Exact),
    (r#"sum_over_time(tend_instance_ready[10s])"#, Cmp::Exact),
    (r#"count_over_time(up[10s])"#, Cmp::Exact),
    (
        r#"quantile_over_time(0.9, scrape_duration_seconds[30s])"#,
        Cmp::Exact,
    ),
    (r#"stddev_over_time(process_open_fds[30s])"#, Cmp::Exact),
    (r#"last_over_time(process_threads[10s])"#, Cmp::Exact),
    // Aggregations.
    (
        r#"sum by (service) (rate(http_requests_total[30s]))"#,
        Cmp::Exact,
    ),
    (
        r#"avg without (instance, release) (process_threads)"#,
        Cmp::Exact,
    ),
    (r#"count by (service) (up)"#, Cmp::Exact),
    (
        r#"max by (service) (process_resident_memory_bytes)"#,
        Cmp::Exact,
    ),
    (r#"min(scrape_duration_seconds)"#, Cmp::Exact),
    (
        r#"quantile by (service) (0.5, process_resident_memory_bytes)"#,
        Cmp::Exact,
    ),
    (
        r#"topk(2, rate(http_requests_total[30s]))"#,
        Cmp::ValuesPerStep,
    ),
    (
        r#"bottomk(1, process_resident_memory_bytes)"#,
        Cmp::ValuesPerStep,
    ),
    // Arithmetic, comparison, vector matching.
    (
        r#"sum by (service) (rate(http_requests_total{code=~"5.."}[30s])) / sum by (service) (rate(http_requests_total[30s]))"#,
        Cmp::Exact,
    ),
    (r#"process_resident_memory_bytes > bool 3e7"#, Cmp::Exact),
    (r#"rate(http_requests_total[30s]) > 0.5"#, Cmp::Exact),
    (r#"up == 1"#, Cmp::Exact),
    (r#"2 * process_cpu_seconds_total - 1"#, Cmp::Exact),
    (
        r#"rate(http_requests_total[30s]) * on (service, instance) group_left (job) tend_instance_ready"#,
        Cmp::Exact,
    ),
    (
        r#"sum by (service, instance) (rate(http_requests_total[30s])) / on (service, instance) group_right tend_instance_running"#,
        Cmp::Exact,
    ),
    (
        r#"up and on (instance) (tend_instance_ready == 1)"#,
        Cmp::Exact,
    ),
    (
        r#"http_requests_total unless http_requests_total{code="200"}"#,
        Cmp::Exact,
    ),
    (r#"up or vector(0)"#, Cmp::Exact),
    // Functions.
    (
        r#"label_replace(up, "host", "$1", "instance", "(.*)-v1-.*")"#,
        Cmp::Exact,
    ),
    (r#"absent(nonexistent_metric{service="web"})"#, Cmp::Exact),
    (r#"absent(up{service="web"})"#, Cmp::Exact),
    (
        r#"clamp(rate(http_requests_total[30s]), 0.5, 2)"#,
        Cmp::Exact,
    ),
    (r#"clamp_max(process_threads, 3)"#, Cmp::Exact),
    (r#"clamp_min(process_open_fds, 20)"#, Cmp::Exact),
    (
        r#"abs(delta(process_resident_memory_bytes[10s]))"#,
        Cmp::Exact,
    ),
    (r#"ceil(rate(http_requests_total[10s]))"#, Cmp::Exact),
    (r#"floor(rate(http_requests_total[10s]))"#, Cmp::Exact),
    (r#"round(rate(http_requests_total[10s]), 0.1)"#, Cmp::Exact),
    (
        r#"time() - process_start_time_seconds{job="runtime"} > 0"#,
        Cmp::Exact,
    ),
    (r#"scalar(sum(up)) * vector(2)"#, Cmp::Exact),
    (r#"vector(1) + 1"#, Cmp::Exact),
    (r#"sum(up) + scalar(count(process_threads))"#, Cmp::Exact),
];

/// Every range (and the 5 min lookback) the expressions look back over, in ms,
/// with their offsets folded in.
const LOOKBACKS_MS: &[i64] = &[
    0, 5_000, 10_000, 15_000, 20_000, 30_000, 35_000, 40_000, 300_000, 310_000,
];

/// An evaluation grid `start + k * step` (ms) such that no range boundary
/// `t - lookback` falls on a sample: Prometheus 2 includes a sample at the
/// left edge of a range, Prometheus 3 (whose semantics tend follows) does
/// not; nowhere else do they differ on these expressions.
fn grid_avoiding(samples: &BTreeSet<i64>, start: i64, step: i64, steps: i64) -> i64 {
    (0..step)
        .map(|o| start + o)
        .find(|s| {
            (0..=steps).all(|k| {
                LOOKBACKS_MS
                    .iter()
                    .all(|lb| !samples.contains(&(s + k * step - lb)))
            })
        })
        .expect("an offset whose range edges miss every sample")
}

#[test]
fn tend_and_prometheus_agree_on_the_same_samples() {
    require(PROMTOOL);
    let prom = Prometheus::start();
    let server = TestServer::start_with(&[
        "--metrics-remote-write-url",
        &format!("{}/api/v1/write", prom.url),
    ]);
    let admin = server.admin_token();
    ok(&server.cli(&admin, &["teams", "create", "payments"]));
    let p = Platform { server, admin };
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let metrics = "[metrics]\npath = \"/metrics\"\n";
    let web = ServiceDir::new("web", 2, &[], metrics);
    let api_svc = ServiceDir::new("api", 1, &[("SAMPLE_ERROR_RATE", "0.25")], metrics);
    ok(&p.deploy(&web));
    ok(&p.deploy(&api_svc));

    // Traffic of every kind while both collect: fast, slow, failing.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, router) = (stop.clone(), p.server.router_url.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (host, path) = match i % 4 {
                    0 => ("web.localhost", "/".to_string()),
                    1 => ("web.localhost", format!("/work?ms={}", i % 40)),
                    2 => ("api.localhost", "/".to_string()),
                    _ => ("web.localhost", "/status/404".to_string()),
                };
                let _ = http
                    .get(format!("{router}{path}"))
                    .header("host", host)
                    .send();
                i += 1;
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    let t_begin = now_secs();
    let http = reqwest::blocking::Client::new();
    let tend = |path: &str, params: &[(&str, String)]| {
        api(&http, &p.server.url, Some(&p.admin), path, params)
    };
    let prometheus =
        |path: &str, params: &[(&str, String)]| api(&http, &prom.url, None, path, params);
    // Every sample time per series, to place the grid.
    let raw_times = |at_ms: i64| -> Vec<Vec<i64>> {
        let raw = tend(
            "/api/v1/query",
            &[
                ("query", r#"{__name__=~".+"}[5m]"#.into()),
                ("time", format!("{:.3}", at_ms as f64 / 1000.0)),
            ],
        );
        raw["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| (v[0].as_f64().unwrap() * 1000.0).round() as i64)
                    .collect()
            })
            .collect()
    };
    let (step, steps) = (2_000i64, 10i64);
    // Prometheus 2 and 3 extrapolate `rate` differently when a series
    // starts inside the range (the order of the zero-point and the
    // half-interval rules changed); tend follows 3. So the grid starts
    // once every series has existed for longer than the longest range
    // plus offset (35 s): there, both versions agree.
    wait_until(
        Duration::from_secs(180),
        "every series older than 36s",
        || {
            let now_ms = (now_secs() * 1000.0) as i64;
            let series = raw_times(now_ms);
            let latest_start = series.iter().filter_map(|s| s.first()).max().copied();
            now_secs() - t_begin > 20.0
                && tend("/api/v1/query", &[("query", "count(up == 1)".into())])["result"][0]
                    ["value"][1]
                    == "3"
                && latest_start.is_some_and(|t| now_ms - 3_000 - (steps + 1) * step > t + 36_000)
        },
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();

    // The window both are compared over ends a little in the past, once
    // Prometheus has received everything up to it.
    let end_ms = (now_secs() * 1000.0) as i64 - 2_000;
    wait_until(Duration::from_secs(30), "remote write caught up", || {
        let d = prometheus("/api/v1/query", &[("query", "min(timestamp(up))".into())]);
        d["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|t| t * 1000.0 > end_ms as f64 + 500.0)
    });
    let series = prometheus(
        "/api/v1/series",
        &[("match[]", r#"up{service="web"}"#.into())],
    );
    assert_eq!(
        series.as_array().unwrap().len(),
        2,
        "remote-written series are queryable: {series}"
    );

    let times: BTreeSet<i64> = raw_times(end_ms).into_iter().flatten().collect();
    assert!(times.len() > 50, "samples collected: {}", times.len());
    let start = grid_avoiding(&times, end_ms - steps * step - step, step, steps);
    let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);

    let mut failures = Vec::new();
    let mut nonempty = 0;
    for (expr, cmp) in EXPRESSIONS {
        let instant = [
            ("query", expr.to_string()),
            ("time", secs(start + steps * step)),
        ];
        let range = [
            ("query", expr.to_string()),
            ("start", secs(start)),
            ("end", secs(start + steps * step)),
            ("step", format!("{}s", step / 1000)),
        ];
        for (path, params) in [
            ("/api/v1/query", &instant[..]),
            ("/api/v1/query_range", &range[..]),
        ] {
            let ours = tend(path, params);
            let theirs = prometheus(path, params);
            if theirs["result"].as_array().is_some_and(|a| !a.is_empty()) {
                nonempty += 1;
            }
            if let Some(why) = difference(&ours, &theirs, *cmp) {
                failures.push(format!("{path} {expr}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} answers differ from Prometheus's:\n{}",
        failures.len(),
        EXPRESSIONS.len() * 2,
        failures.join("\n\n")
    );
    // The table must exercise real data, not agree on emptiness.
    assert!(
        nonempty >= EXPRESSIONS.len() * 2 - 4,
        "only {nonempty} answers had data"
    );

    // promtool lints tend's own /metrics...
    let text = http
        .get(format!("{}/metrics", p.server.url))
        .bearer_auth(&p.admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("tend_remote_write_samples_sent_total"),
        "{text}"
    );
    let mut lint = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        lint.stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // ...and queries tend as a Prometheus. promtool has no bearer-token flag:
    // the token goes as the basic-auth password, which tend accepts too.
    let authed = p
        .server
        .url
        .replacen("http://", &format!("http://promtool:{}@", p.admin), 1);
    let out = Command::new(PROMTOOL)
        .args(["query", "instant", &authed, r#"up{service="web"}"#])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed.matches("up{").count(), 2, "{printed}");
    let out = Command::new(PROMTOOL)
        .args([
            "query",
            "range",
            &format!("--start={}", secs(end_ms - 20_000)),
            &format!("--end={}", secs(end_ms)),
            "--step=5s",
            &authed,
            r#"sum by (service) (rate(http_requests_total[10s]))"#,
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains(r#"service="web""#) && printed.contains(" @["),
        "{printed}"
    );
    let out = Command::new(PROMTOOL)
        .args(["query", "instant", &p.server.url, "up"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "without the token promtool is refused"
    );
}
