//! Metrics with no setup: scraped from every instance and the router, queried
//! with PromQL through the Prometheus-compatible API and `tend query`.

mod common;

use std::time::Duration;

use common::platform::*;
use common::*;
use serde_json::Value;

/// The manifest section that makes tend scrape the sample app's endpoint.
const METRICS: &str = "[metrics]\npath = \"/metrics\"\n";

fn query(p: &Platform, expr: &str) -> Value {
    let o = p.tend(&["query", expr, "-o", "json"]);
    serde_json::from_str(&ok(&o)).unwrap()
}

#[test]
fn instances_and_the_router_are_measured_and_queryable() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 2, &[], METRICS);
    ok(&p.deploy(&svc));
    let http = reqwest::blocking::Client::new();
    for _ in 0..20 {
        let r = http
            .get(format!("{}/", p.server.router_url))
            .header("host", "web.localhost")
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
    wait_until(Duration::from_secs(30), "both instances scraped", || {
        let v = query(&p, r#"up{service="web"} == 1"#);
        v["result"].as_array().map(|a| a.len()) == Some(2)
    });
    // The service's own metrics, labelled with where they came from.
    let v = query(&p, r#"http_requests_total{service="web"}"#);
    let first = &v["result"][0]["metric"];
    assert_eq!(first["team"], "payments");
    assert_eq!(first["release"], "1");
    assert!(first["instance"].as_str().unwrap().starts_with("web-v1-"));
    // The router's traffic metrics.
    wait_until(Duration::from_secs(30), "router traffic counted", || {
        let v = query(&p, r#"sum(tend_http_requests_total{service="web"})"#);
        v["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|n| n >= 20.0)
    });
    // Range queries and the table output.
    let o = p.tend(&[
        "query",
        "--range",
        "1m",
        "--step",
        "5s",
        r#"up{service="web"}"#,
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["resultType"], "matrix");
    let table = ok(&p.tend(&["query", r#"count(up{service="web"})"#]));
    assert!(table.contains('2'), "{table}");

    // The Prometheus API's envelope and errors.
    let r = http
        .get(format!("{}/api/v1/query", p.server.url))
        .query(&[("query", "sum(")])
        .bearer_auth(&p.admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().unwrap();
    assert_eq!(body["status"], "error");
    assert_eq!(body["errorType"], "bad_data");
    let r = http
        .post(format!("{}/api/v1/query", p.server.url))
        .form(&[("query", "up")])
        .bearer_auth(&p.admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{}/api/v1/label/service/values", p.server.url))
        .bearer_auth(&p.admin)
        .send()
        .unwrap();
    let body: Value = r.json().unwrap();
    assert!(
        body["data"].as_array().unwrap().iter().any(|v| v == "web"),
        "{body}"
    );
    let r = http
        .get(format!("{}/api/v1/series", p.server.url))
        .query(&[("match[]", r#"up{service="web"}"#)])
        .bearer_auth(&p.admin)
        .send()
        .unwrap();
    let body: Value = r.json().unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    let r = http
        .get(format!("{}/api/v1/query?query=up", p.server.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "authenticated like every endpoint");
    // The platform's own metrics, in the exposition format.
    let r = http
        .get(format!("{}/metrics", p.server.url))
        .bearer_auth(&p.admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().unwrap();
    for name in [
        "tend_http_requests_total",
        "tend_logs_lines_ingested_total",
        "tend_tsdb_samples",
        "tend_build_info",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} in:\n{text}"
        );
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "a sample line: {line}");
    }
    let o = p.tend(&["query", "rate("]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!stderr(&o).is_empty());
}

/// The value of a one-sample instant query, if it returned one.
fn scalar(p: &Platform, expr: &str) -> Option<f64> {
    query(p, expr)["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
}

#[test]
fn resource_usage_restarts_and_golden_signals_without_a_metrics_endpoint() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    // No [metrics]: the endpoint is not scraped, the resources are measured anyway.
    let svc = ServiceDir::new("quiet", 2, &[], "");
    ok(&p.deploy(&svc));
    let http = reqwest::blocking::Client::new();
    for _ in 0..10 {
        let r = http
            .get(format!("{}/", p.server.router_url))
            .header("host", "quiet.localhost")
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
    let sel = r#"{service="quiet",job="runtime"}"#;
    wait_until(Duration::from_secs(30), "both instances measured", || {
        scalar(
            &p,
            &format!("count(process_resident_memory_bytes{sel} > 1e6)"),
        ) == Some(2.0)
            && scalar(&p, &format!("sum(tend_instance_ready{sel})")) == Some(2.0)
    });
    assert!(scalar(&p, &format!("min(process_open_fds{sel})")).unwrap() >= 3.0);
    assert!(scalar(&p, &format!("min(process_threads{sel})")).unwrap() >= 1.0);
    // An idle instance may not have used a clock tick yet: present, not necessarily positive.
    assert_eq!(
        scalar(&p, &format!("count(process_cpu_seconds_total{sel} >= 0)")),
        Some(2.0)
    );
    assert_eq!(
        scalar(&p, &format!("sum(tend_instance_restarts_total{sel})")),
        Some(0.0)
    );
    let m = &query(&p, &format!("process_resident_memory_bytes{sel}"))["result"][0]["metric"];
    assert_eq!(m["team"], "payments");
    assert_eq!(m["release"], "1");
    assert!(
        query(&p, r#"up{service="quiet"}"#)["result"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a service without [metrics] is not scraped"
    );

    // A crash is counted, and the crashed process's series go stale at once.
    let status = p.status("quiet");
    let victim = instances(&status)[0].clone();
    let (id, pid) = (
        victim["id"].as_str().unwrap().to_string(),
        victim["pid"].as_u64().unwrap(),
    );
    // SAFETY: a process of this test's own service.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until(Duration::from_secs(60), "the restart counted", || {
        scalar(&p, &format!("sum(tend_instance_restarts_total{sel})")) == Some(1.0)
            && scalar(&p, &format!("sum(tend_instance_ready{sel})")) == Some(2.0)
    });
    let restarted = scalar(
        &p,
        &format!(r#"process_start_time_seconds{{instance="{id}",job="runtime"}}"#),
    );
    assert!(restarted.is_some(), "the restarted instance keeps its id");

    // The golden signals, as JSON and as a table: traffic counted after the
    // first scrape, so that its rate is positive.
    for _ in 0..20 {
        let r = http
            .get(format!("{}/", p.server.router_url))
            .header("host", "quiet.localhost")
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
    wait_until(Duration::from_secs(30), "the traffic measured", || {
        scalar(
            &p,
            r#"sum(rate(tend_http_requests_total{service="quiet"}[1m]))"#,
        )
        .is_some_and(|r| r > 0.0)
    });
    let o = p.tend(&["metrics", "quiet", "--since", "2m", "-o", "json"]);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    let signal = |name: &str| {
        v["signals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {v:#}"))
            .clone()
    };
    assert!(signal("requests")["now"].as_f64().unwrap() > 0.0, "{v:#}");
    assert_eq!(signal("errors")["now"].as_f64(), Some(0.0), "{v:#}");
    assert!(
        signal("latency p99")["now"].as_f64().unwrap() > 0.0,
        "{v:#}"
    );
    assert!(signal("memory")["now"].as_f64().unwrap() > 1e6, "{v:#}");
    assert_eq!(signal("restarts")["now"].as_f64(), Some(1.0), "{v:#}");
    assert_eq!(signal("ready")["now"].as_f64(), Some(2.0), "{v:#}");
    assert!(signal("cpu")["query"]
        .as_str()
        .unwrap()
        .contains("process_cpu_seconds_total"));
    assert!(signal("memory")["points"].as_array().unwrap().len() >= 40);
    let table = ok(&p.tend(&["metrics", "quiet", "--since", "2m"]));
    for word in ["SIGNAL", "requests", "latency p99", "memory", "MiB"] {
        assert!(table.contains(word), "{word} in:\n{table}");
    }
    assert!(table.chars().any(|c| ('▁'..='█').contains(&c)), "{table}");
    let o = p.tend(&["metrics", "nosuch"]);
    assert_eq!(o.status.code(), Some(5), "not found");
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
}
