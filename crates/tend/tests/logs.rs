//! Logs end to end: the sample app's output through the real server and CLI.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::platform::*;
use common::*;
use serde_json::Value;

fn lines(p: &Platform, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["logs", "-o", "json"];
    all.extend_from_slice(args);
    let out = ok(&p.tend(&all));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn request(p: &Platform, path: &str) {
    let r = reqwest::blocking::Client::new()
        .get(format!("{}{path}", p.server.router_url))
        .header("host", "web.localhost")
        .send()
        .unwrap();
    assert!(
        r.status().is_success() || r.status().as_u16() == 404,
        "{}",
        r.status()
    );
}

#[test]
fn lines_arrive_quickly_with_labels_and_filters_work() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));
    let t0 = Instant::now();
    request(&p, "/marker-one");
    let deadline = t0 + Duration::from_secs(5);
    let found = loop {
        let l = lines(&p, &["web", "--contains", "marker-one"]);
        if !l.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "the line never arrived");
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} (the goal is one second; three allow for a busy machine)"
    );
    assert_eq!(found.len(), 1);
    let l = &found[0];
    assert_eq!(l["service"], "web");
    assert_eq!(l["release"], 1);
    assert_eq!(l["stream"], "stdout");
    assert_eq!(l["level"], "info");
    assert_eq!(l["message"], "request");
    assert!(l["instance"].as_str().unwrap().starts_with("web-v1-"));

    // Filters return exactly what they should.
    let regex = lines(
        &p,
        &["web", "--grep", r#""path":"/marker-o[n]e""#, "-n", "0"],
    );
    assert_eq!(regex.len(), 1, "{regex:?}");
    // tend's own events reach the log store through a tailer of their own,
    // so the deploy's last event may still be on its way.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let platform = lines(&p, &["web", "--stream", "platform", "-n", "0"]);
        if platform
            .iter()
            .any(|l| l["message"].as_str().unwrap().contains("deploy.succeeded"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{platform:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lines(&p, &["web", "--release", "v2"]).is_empty());
    assert!(
        lines(&p, &["web", "--until", "1h"]).is_empty(),
        "nothing is older than an hour"
    );
    assert!(!lines(&p, &["web", "--since", "1m", "--contains", "marker-one"]).is_empty());
    assert!(lines(&p, &["web", "--level", "error", "--stream", "stdout"]).is_empty());
    let two = lines(&p, &["web", "-n", "2"]);
    assert_eq!(two.len(), 2);
    assert!(
        two[0]["seq"].as_u64() < two[1]["seq"].as_u64(),
        "time order"
    );
    // Human output and bad input.
    let text = ok(&p.tend(&["logs", "web", "--contains", "marker-one"]));
    assert!(
        text.contains("marker-one") && text.contains("web-v1-"),
        "{text}"
    );
    let o = p.tend(&["logs", "web", "--grep", "("]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid regular expression"),
        "{}",
        stderr(&o)
    );
    let o = p.tend(&["logs", "nope"]);
    assert_eq!(o.status.code(), Some(5));
}

#[test]
fn follow_streams_across_a_deploy_and_failed_releases_keep_their_lines() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 1, &[("SAMPLE_LOG_LINES_PER_SEC", "20")], "");
    ok(&p.deploy(&svc));
    let mut follower = Command::new(tend_bin())
        .args(["logs", "web", "-f", "-n", "0", "-o", "json"])
        .env("TEND_URL", &p.server.url)
        .env("TEND_TOKEN", &p.admin)
        .env("XDG_CONFIG_HOME", svc.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    svc.write(
        "web",
        1,
        &[("SAMPLE_LOG_LINES_PER_SEC", "20"), ("V", "2")],
        "",
    );
    ok(&p.deploy(&svc));
    let mut releases = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !(releases.contains_key(&1) && releases.contains_key(&2)) {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
            if v["stream"] == "stdout" {
                *releases.entry(v["release"].as_u64().unwrap()).or_insert(0) += 1;
            }
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        releases.contains_key(&1) && releases.contains_key(&2),
        "followed both releases: {releases:?}"
    );

    // A release that crashes at boot is rolled back; its lines stay.
    svc.write("web", 1, &[("SAMPLE_CRASH_AT_BOOT", "1")], "");
    let o = p.deploy(&svc);
    assert_eq!(o.status.code(), Some(1));
    wait_until(
        Duration::from_secs(10),
        "the failed release's last lines",
        || {
            let l = lines(&p, &["web", "--release", "v3", "-n", "0"]);
            l.iter().any(|l| l["message"] == "crashing at boot")
        },
    );
    wait_until(
        Duration::from_secs(10),
        "the rollback as an error line of the platform",
        || {
            let platform = lines(
                &p,
                &["web", "--stream", "platform", "--level", "error", "-n", "0"],
            );
            platform
                .iter()
                .any(|l| l["message"].as_str().unwrap().contains("rolled_back"))
        },
    );
}

#[test]
fn a_daemon_killed_during_heavy_output_loses_and_duplicates_nothing() {
    let mut p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 1, &[("SAMPLE_LOG_LINES_PER_SEC", "3000")], "");
    ok(&p.deploy(&svc));
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        p.server.restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    ok(&p.tend(&["stop", "web"]));
    p.wait_status("web", "stopped", |s| instances(s).is_empty());
    // Everything the instance wrote is in, exactly once.
    let mut last_count = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let seqs = loop {
        let l = lines(&p, &["web", "--contains", "\"filler\"", "-n", "0"]);
        let seqs: Vec<u64> = l
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l["raw"].as_str()?).ok()?["seq"].as_u64())
            .collect();
        if seqs.len() == last_count && !seqs.is_empty() {
            break seqs;
        }
        last_count = seqs.len();
        assert!(Instant::now() < deadline, "ingestion did not settle");
        std::thread::sleep(Duration::from_millis(1500));
    };
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "no duplicates");
    let first = sorted[0];
    let last = *sorted.last().unwrap();
    assert_eq!(
        first, 1,
        "the first line (the sample app counts from 1) is there"
    );
    assert_eq!(
        sorted.len() as u64,
        last - first + 1,
        "no gap: {} lines, last seq {last}",
        sorted.len()
    );
    assert!(sorted.len() > 3000, "heavy output ({} lines)", sorted.len());
}
