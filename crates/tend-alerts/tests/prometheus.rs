//! tend's rule evaluation next to a real Prometheus: both scrape the same
//! target every second and evaluate the same rules (generated from one
//! `tend.toml`) every second; the pending/firing transitions must agree, in
//! order and within the slack of one scrape plus one evaluation.
//!
//! Needs `prometheus` (Debian's package installs /usr/bin/prometheus); set
//! PROMETHEUS_BIN to use another. Without it the test says so and passes.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tend_alerts::eval::{Change, RuleState};
use tend_alerts::rules::{service_rules, Rule};
use tend_metrics::{Tsdb, TsdbConfig};

/// The gauge's value over time (seconds from the start, value); held until the next step.
const SCHEDULE: &[(f64, f64)] = &[
    (0.0, 0.0),
    (3.0, 1.0),  // holds 7 s: `slow` goes pending, then fires after its 3 s
    (10.0, 0.0), // both resolve (`held` 3 s later)
    (16.0, 1.0), // a 1.5 s blip: `slow` is pending and never fires; `held` fires
    (17.5, 0.0),
];
const RUN_FOR: Duration = Duration::from_secs(26);

const MANIFEST: &str = r#"
[service]
name = "demo"
owner = "team"
[run]
command = "./demo"
[alert_defaults]
disable = ["crash-looping", "instances-not-ready", "deploy-failed", "high-error-rate", "high-latency", "memory-near-limit"]

[[alerts]]
name = "slow"
expr = "demo_gauge > 0.5"
for = "3s"

[[alerts]]
name = "held"
expr = "demo_gauge > 0.5"
keep_firing_for = "3s"
"#;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn value_at(t: f64) -> f64 {
    SCHEDULE
        .iter()
        .rev()
        .find(|(at, _)| *at <= t)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (seconds from start, rule, new state) with state `pending`, `firing` or `inactive`.
type Transitions = Vec<(f64, String, &'static str)>;

fn sequence(t: &Transitions, rule: &str) -> Vec<&'static str> {
    t.iter()
        .filter(|(_, r, _)| r == rule)
        .map(|(_, _, s)| *s)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_agree_with_prometheus() {
    let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "/usr/bin/prometheus".into());
    if !std::path::Path::new(&bin).exists() {
        eprintln!("SKIPPED: no Prometheus at {bin}");
        return;
    }
    let spec = tend_manifest::parse(MANIFEST, "tend.toml").unwrap();
    let rules: Vec<Rule> = service_rules(&spec).unwrap();
    assert_eq!(rules.len(), 2);

    // The target both scrape.
    let value = Arc::new(AtomicU64::new(0f64.to_bits()));
    let v = value.clone();
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let v = f64::from_bits(v.load(Ordering::SeqCst));
            async move { format!("# TYPE demo_gauge gauge\ndemo_gauge {v}\n") }
        }),
    );
    tokio::spawn(async move { axum::serve(target, app).await });

    // Prometheus with the same rules, written from the manifest.
    let dir = tempfile::tempdir().unwrap();
    let mut rule_yaml = String::from("groups:\n- name: demo\n  interval: 1s\n  rules:\n");
    for a in &spec.alerts {
        rule_yaml.push_str(&format!(
            "  - alert: {}\n    expr: '{}'\n    for: {}s\n    keep_firing_for: {}s\n",
            a.name,
            a.expr,
            a.for_.as_secs(),
            a.keep_firing_for.as_secs()
        ));
    }
    std::fs::write(dir.path().join("rules.yml"), rule_yaml).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
             scrape_configs:\n- job_name: demo\n  static_configs:\n  - targets: ['{target_addr}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(&bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prom = Kill(child);
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/-/ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(&ready)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Let Prometheus scrape the target and run its rule group once before
    // the clock starts, so its start-up is not counted as lag.
    let up = format!("http://127.0.0.1:{port}/api/v1/query?query=up");
    loop {
        let v: serde_json::Value = http.get(&up).send().await.unwrap().json().await.unwrap();
        if v["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the target"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // tend: its TSDB, its evaluator, scraping the same target every second.
    let db = Tsdb::open(TsdbConfig::new(dir.path().join("tend"))).unwrap();
    let start = Instant::now();
    let since = |t: Instant| t.duration_since(start).as_secs_f64();
    let mut ours: Transitions = Vec::new();
    let mut theirs: Transitions = Vec::new();
    let mut states: Vec<RuleState> = rules.iter().map(|_| RuleState::default()).collect();
    let mut prom_last: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut next_tend = start;
    let mut first_eval: Option<i64> = None;
    while start.elapsed() < RUN_FOR {
        value.store(
            value_at(start.elapsed().as_secs_f64()).to_bits(),
            Ordering::SeqCst,
        );
        let now = Instant::now();
        if now >= next_tend {
            next_tend += Duration::from_secs(1);
            // Evaluation instants on a 1 s grid, as the engine (and Prometheus) use.
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let first = *first_eval.get_or_insert(wall);
            let ms = first + ((wall - first) as f64 / 1000.0).round() as i64 * 1000;
            let text = http
                .get(format!("http://{target_addr}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let samples: Vec<_> = tend_metrics::exposition::parse(&text, None, ms)
                .unwrap()
                .into_iter()
                .map(|(l, t, v)| (l.with("service", "demo"), t, v))
                .collect();
            db.append(&samples).unwrap();
            for (rule, state) in rules.iter().zip(states.iter_mut()) {
                let tend_alerts::rules::Condition::PromQl(expr) = &rule.condition else {
                    unreachable!()
                };
                let result = match tend_metrics::promql::instant(&db, expr, ms, &Default::default())
                    .unwrap()
                {
                    tend_metrics::promql::Value::Vector(v) => v
                        .into_iter()
                        .map(|s| {
                            (
                                s.labels
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                                    .collect(),
                                s.v,
                            )
                        })
                        .collect(),
                    other => panic!("{other:?}"),
                };
                for c in state.apply(rule, result, ms) {
                    let s = match c {
                        Change::Pending(_) => "pending",
                        Change::Fired(_) => "firing",
                        Change::Resolved(_) => "inactive",
                        Change::StillFiring(_) => continue,
                    };
                    ours.push((since(now), rule.name.clone(), s));
                }
                // A pending alert that goes away is inactive again, silently.
                if !state.alerts().any(|_| true)
                    && ours
                        .iter()
                        .rev()
                        .find(|(_, r, _)| *r == rule.name)
                        .is_some_and(|(_, _, s)| *s == "pending")
                {
                    ours.push((since(now), rule.name.clone(), "inactive"));
                }
            }
        }
        // Prometheus' view of its alerts.
        let v: serde_json::Value = http
            .get(format!("http://127.0.0.1:{port}/api/v1/alerts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut current: BTreeMap<String, &'static str> = BTreeMap::new();
        for a in v["data"]["alerts"].as_array().unwrap() {
            let state = if a["state"] == "firing" {
                "firing"
            } else {
                "pending"
            };
            current.insert(
                a["labels"]["alertname"].as_str().unwrap().to_string(),
                state,
            );
        }
        for r in &rules {
            let was = prom_last.get(&r.name).copied().unwrap_or("inactive");
            let is = current.get(&r.name).copied().unwrap_or("inactive");
            if was != is {
                theirs.push((since(Instant::now()), r.name.clone(), is));
            }
        }
        prom_last = current;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("tend:       {ours:?}");
    eprintln!("prometheus: {theirs:?}");
    assert_eq!(
        sequence(&ours, "slow"),
        ["pending", "firing", "inactive", "pending", "inactive"]
    );
    assert_eq!(
        sequence(&ours, "held"),
        ["firing", "inactive", "firing", "inactive"]
    );
    for rule in ["slow", "held"] {
        assert_eq!(sequence(&ours, rule), sequence(&theirs, rule), "{rule}");
        let a: Vec<f64> = ours
            .iter()
            .filter(|(_, r, _)| r == rule)
            .map(|(t, _, _)| *t)
            .collect();
        let b: Vec<f64> = theirs
            .iter()
            .filter(|(_, r, _)| r == rule)
            .map(|(t, _, _)| *t)
            .collect();
        for (x, y) in a.iter().zip(&b) {
            // Each side may see a change up to one scrape plus one evaluation late.
            assert!(
                (x - y).abs() <= 2.5,
                "{rule}: tend at {x:.1}s, Prometheus at {y:.1}s"
            );
        }
    }
}
