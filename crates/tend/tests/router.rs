//! Users' traffic through tend's router while the platform changes what runs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::platform::*;
use common::*;
use serde_json::Value;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn get(p: &Platform, host: &str, path: &str) -> reqwest::blocking::Response {
    client()
        .get(format!("{}{path}", p.server.router_url))
        .header("host", host)
        .send()
        .unwrap()
}

#[test]
fn routes_by_host_with_clear_404_and_503() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 2, &[], "[http]\nhost = \"shop.example.com\"\n");
    ok(&p.deploy(&svc));
    for host in ["web.localhost", "WEB.localhost:7080", "shop.example.com"] {
        let r = get(&p, host, "/");
        assert_eq!(r.status(), 200, "{host}");
        let rid = r.headers().get("x-request-id").cloned();
        let body: Value = r.json().unwrap();
        assert_eq!(body["service"], "web");
        assert_eq!(body["release"], "1");
        assert!(rid.is_some(), "X-Request-Id on the response");
    }
    let status = p.status("web");
    let urls: Vec<&str> = status["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        urls.iter().any(|u| u.starts_with("http://web.localhost:")),
        "{urls:?}"
    );

    let r = get(&p, "nope.localhost", "/");
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("nope.localhost"));

    ok(&p.tend(&["stop", "web"]));
    p.wait_status("web", "stopped", |s| instances(s).is_empty());
    let r = get(&p, "web.localhost", "/");
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert!(r.text().unwrap().contains("web"));
}

#[test]
fn a_slow_request_in_flight_during_a_deploy_completes() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 1, &[], "");
    ok(&p.deploy(&svc));
    let url = format!("{}/work?ms=2500", p.server.router_url);
    let slow = std::thread::spawn(move || {
        let r = client()
            .get(url)
            .header("host", "web.localhost")
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().ok())
    });
    // The request is in flight when the deploy starts.
    wait_until(Duration::from_secs(10), "slow request in flight", || {
        let m = client()
            .get(format!("{}/metrics", p.server.router_url))
            .header("host", "web.localhost")
            .send();
        m.map(|r| {
            r.text()
                .unwrap_or_default()
                .contains("http_requests_in_flight 2")
        })
        .unwrap_or(false)
    });
    svc.write("web", 1, &[("V", "2")], "");
    ok(&p.deploy(&svc));
    let (status, _) = slow.join().unwrap();
    assert_eq!(
        status, 200,
        "the request in flight on the old instance completed"
    );
    let body: Value = get(&p, "web.localhost", "/").json().unwrap();
    assert_eq!(body["release"], "2");
}

/// Steady load through the router while the service is deployed, scaled,
/// restarted and rolled back: no request may fail.
#[test]
fn zero_downtime_under_load() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));

    let stop = Arc::new(AtomicBool::new(false));
    let okays = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = vec![];
    for _ in 0..4 {
        let (stop, okays, failures) = (stop.clone(), okays.clone(), failures.clone());
        let url = format!("{}/", p.server.router_url);
        load.push(std::thread::spawn(move || {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                match c.get(&url).header("host", "web.localhost").send() {
                    Ok(r) if r.status().is_success() => {
                        okays.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.lock().unwrap().push(format!(
                        "HTTP {}: {}",
                        r.status(),
                        r.text().unwrap_or_default()
                    )),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
                // About 50 requests/s per thread.
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    for v in 2..=4 {
        svc.write("web", 2, &[("V", &v.to_string())], "");
        ok(&p.deploy(&svc));
    }
    ok(&p.tend(&["scale", "web", "4"]));
    p.wait_status("web", "scaled up", |s| {
        ready_count(s) == 4 && instances(s).len() == 4
    });
    ok(&p.tend(&["scale", "web", "2"]));
    p.wait_status("web", "scaled down", |s| instances(s).len() == 2);
    ok(&p.tend(&["restart", "web"]));
    ok(&p.tend(&["rollback", "web"]));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let n = okays.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        n + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(n > 200, "load ran ({n} requests)");
}
