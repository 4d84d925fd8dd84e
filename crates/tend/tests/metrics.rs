//! Metrics with no setup: scraped from every instance and the router, queried
//! with PromQL through the Prometheus-compatible API and `tend query`.

mod common;

use std::time::Duration;

use common::platform::*;
use common::*;
use serde_json::Value;

fn query(p: &Platform, expr: &str) -> Value {
    let o = p.tend(&["query", expr, "-o", "json"]);
    serde_json::from_str(&ok(&o)).unwrap()
}

#[test]
fn instances_and_the_router_are_measured_and_queryable() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 2, &[], "");
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
