//! Deployment automation end to end: the real server, the real CLI and the
//! sample service as real processes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::platform::*;
use common::*;
use serde_json::Value;

#[test]
fn rolling_deploy_keeps_enough_ready_instances() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 2, &[], "");
    let o = p.deploy(&svc);
    assert!(ok(&o).contains("web v1 serves"), "{}", stdout(&o));
    let s = p.status("web");
    assert_eq!(ready_count(&s), 2);
    assert_eq!(serving_releases(&s), BTreeSet::from(["1".to_string()]));

    // v2: sample the instance table throughout the rollout.
    svc.write("web", 2, &[("SAMPLE_BOOT_DELAY", "300ms")], "");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let url = p.server.url.clone();
        let admin = p.admin.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut min_ready = usize::MAX;
            let mut samples = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let s: Value = http
                    .get(format!("{url}/api/v1/services/web/status"))
                    .bearer_auth(&admin)
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                min_ready = min_ready.min(ready_count(&s));
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (min_ready, samples)
        })
    };
    let o = p.deploy(&svc);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (min_ready, samples) = sampler.join().unwrap();
    assert!(ok(&o).contains("web v2 serves"), "{}", stdout(&o));
    assert!(samples > 5, "sampled the rollout ({samples} samples)");
    assert!(
        min_ready >= 2,
        "ready instances dropped to {min_ready} during the rollout (max_unavailable = 0)"
    );
    let s = p.status("web");
    assert_eq!(serving_releases(&s), BTreeSet::from(["2".to_string()]));
    assert_eq!(instances(&s).len(), 2);
    // Old processes are gone.
    wait_until(Duration::from_secs(30), "only v2 processes", || {
        runtime_processes(&p.server.data_dir).len() == 2
    });
    let releases = ok(&p.tend(&["releases", "web"]));
    assert!(
        releases.contains("v2") && releases.contains("current") && releases.contains("v1"),
        "{releases}"
    );
}

fn assert_rolled_back(p: &Platform, o: &std::process::Output, expect_in_output: &[&str]) {
    assert_eq!(o.status.code(), Some(1), "deploy must fail: {}", stderr(o));
    let err = stderr(o);
    assert!(err.contains("rolled back"), "{err}");
    for e in expect_in_output {
        assert!(err.contains(e), "expected {e:?} in:\n{err}");
    }
    let s = p.wait_status("web", "v1 serving again", |s| {
        s["release"] == 1 && ready_count(s) == 2 && instances(s).len() == 2
    });
    assert_eq!(serving_releases(&s), BTreeSet::from(["1".to_string()]));
    wait_until(Duration::from_secs(30), "failed instances gone", || {
        runtime_processes(&p.server.data_dir).len() == 2
    });
}

#[test]
fn a_release_that_crashes_at_boot_is_rolled_back_with_its_logs() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));
    let v1_pids = pids(&p.status("web"));
    svc.write("web", 2, &[("SAMPLE_CRASH_AT_BOOT", "1")], "");
    let o = p.deploy(&svc);
    assert_rolled_back(&p, &o, &["exit code 1", "crashing at boot"]);
    assert_eq!(pids(&p.status("web")), v1_pids, "v1 kept serving untouched");
}

#[test]
fn a_release_that_never_becomes_healthy_is_rolled_back() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));
    svc.write("web", 2, &[("SAMPLE_NEVER_HEALTHY", "1")], "");
    let o = p.deploy(&svc);
    assert_rolled_back(&p, &o, &["health checks", "HTTP 503", "listening"]);
}

#[test]
fn a_release_that_crash_loops_after_three_seconds_is_rolled_back() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));
    svc.write(
        "web",
        2,
        &[("SAMPLE_CRASH_AFTER", "3s")],
        "verify = \"8s\"\n",
    );
    let text = std::fs::read_to_string(svc.path().join("tend.toml"))
        .unwrap()
        .replace("verify = \"1s\"\n", "");
    std::fs::write(svc.path().join("tend.toml"), text).unwrap();
    let o = p.deploy(&svc);
    assert_rolled_back(&p, &o, &["exit code 3"]);
}

#[test]
fn the_daemon_dies_and_its_services_do_not() {
    let mut p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));
    let before = p.status("web");
    p.server.kill9();
    // Still serving with the daemon dead.
    assert_eq!(serving_releases(&before), BTreeSet::from(["1".to_string()]));
    let dir = p.server.data_dir.clone();
    p.server.restart();
    let after = p.wait_status("web", "adopted instances ready", |s| ready_count(s) == 2);
    assert_eq!(pids(&after), pids(&before), "the same processes, adopted");
    let restarts: Vec<u64> = instances(&after)
        .iter()
        .map(|i| i["restarts"].as_u64().unwrap())
        .collect();
    assert_eq!(restarts, vec![0, 0]);
    assert_eq!(runtime_processes(&dir).len(), 2, "no duplicate started");
}

#[test]
fn killing_the_daemon_mid_rollout_converges_to_one_release() {
    let mut p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));
    let dir = p.server.data_dir.clone();
    for round in 0..6u64 {
        svc.write(
            "web",
            2,
            &[
                ("SAMPLE_BOOT_DELAY", "200ms"),
                ("ROUND", &round.to_string()),
            ],
            "",
        );
        let child = std::process::Command::new(tend_bin())
            .args(["deploy", svc.path().to_str().unwrap(), "--detach"])
            .env("TEND_URL", &p.server.url)
            .env("TEND_TOKEN", &p.admin)
            .env("XDG_CONFIG_HOME", svc.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(child.success());
        // A pseudo-random point in the rollout.
        std::thread::sleep(Duration::from_millis((round * 137) % 700));
        p.server.restart();
        let s = p.wait_status("web", "convergence", |s| {
            let insts = instances(s);
            insts.len() == 2
                && ready_count(s) == 2
                && insts.iter().all(|i| i["release"] == s["release"])
        });
        let procs = runtime_processes(&dir);
        let expected: BTreeSet<String> = instances(&s)
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        wait_until(
            Duration::from_secs(30),
            "no orphan or duplicate process",
            || {
                let procs = runtime_processes(&dir);
                procs.len() == 2
                    && procs
                        .iter()
                        .map(|(_, i)| i.clone())
                        .collect::<BTreeSet<_>>()
                        == expected
            },
        );
        let _ = procs;
        assert_eq!(serving_releases(&s).len(), 1, "exactly one release serves");
    }
}

#[test]
fn supervision_restarts_replaces_and_kills() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 1, &[("SAMPLE_IGNORE_SIGTERM", "1")], "");
    ok(&p.deploy(&svc));
    let s = p.status("web");
    let pid = *pids(&s).iter().next().unwrap() as i32;

    // Killed from outside: restarted (after a backoff), restart counted.
    unsafe { libc::killpg(pid, libc::SIGKILL) };
    let s = p.wait_status("web", "restart after kill", |s| {
        ready_count(s) == 1 && instances(s)[0]["restarts"] == 1 && !pids(s).contains(&(pid as u64))
    });
    let events = ok(&p.tend(&["events", "web"]));
    assert!(
        events.contains("instance.crashed") && events.contains("killed by signal 9"),
        "{events}"
    );

    // Hung (SIGSTOP): fails its checks and is replaced; it ignores SIGTERM, so
    // the kill comes at the end of the grace period.
    let pid = *pids(&s).iter().next().unwrap() as i32;
    unsafe { libc::killpg(pid, libc::SIGSTOP) };
    let t0 = Instant::now();
    p.wait_status("web", "hung instance replaced", |s| {
        ready_count(s) == 1 && !pids(s).contains(&(pid as u64)) && pids(s).len() == 1
    });
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "hung process is gone"
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    let events = ok(&p.tend(&["events", "web"]));
    assert!(events.contains("health checks in a row"), "{events}");
}

#[test]
fn sigterm_ignoring_instances_are_killed_after_the_grace_period() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 1, &[("SAMPLE_IGNORE_SIGTERM", "1")], "");
    ok(&p.deploy(&svc));
    let pid = *pids(&p.status("web")).iter().next().unwrap();
    let t0 = Instant::now();
    ok(&p.tend(&["stop", "web"]));
    wait_until(Duration::from_secs(30), "instance gone", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "killed only after the 3s grace period ({took:?})"
    );
}

#[test]
fn scale_rollback_restart_stop_start() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let mut svc = ServiceDir::new("web", 1, &[], "");
    ok(&p.deploy(&svc));
    svc.write("web", 1, &[("V", "2")], "");
    ok(&p.deploy(&svc));

    ok(&p.tend(&["scale", "web", "3"]));
    p.wait_status("web", "scaled up", |s| {
        ready_count(s) == 3 && instances(s).len() == 3
    });
    ok(&p.tend(&["scale", "web", "1"]));
    p.wait_status("web", "scaled down", |s| {
        instances(s).len() == 1 && ready_count(s) == 1
    });

    let o = p.tend(&["rollback", "web"]);
    assert!(ok(&o).contains("web v1 serves"), "{}", stdout(&o));
    let s = p.status("web");
    assert_eq!(serving_releases(&s), BTreeSet::from(["1".to_string()]));
    let o = p.tend(&["rollback", "web", "--to", "v2"]);
    assert!(ok(&o).contains("web v2 serves"));
    let o = p.tend(&["rollback", "web", "--to", "v9"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));

    let before = pids(&p.status("web"));
    ok(&p.tend(&["restart", "web"]));
    let after = p.wait_status("web", "restarted", |s| {
        ready_count(s) == 1 && instances(s).len() == 1
    });
    assert!(pids(&after).is_disjoint(&before), "every instance replaced");

    ok(&p.tend(&["stop", "web"]));
    p.wait_status("web", "stopped", |s| instances(s).is_empty());
    wait_until(Duration::from_secs(30), "no process", || {
        runtime_processes(&p.server.data_dir).is_empty()
    });
    ok(&p.tend(&["start", "web"]));
    p.wait_status("web", "started", |s| ready_count(s) == 1);

    // Re-deploying an existing release builds nothing.
    let o = p.tend(&["deploy", svc.path().to_str().unwrap(), "--release", "v1"]);
    assert!(ok(&o).contains("web v1 serves"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("packing"));
}

#[test]
fn other_teams_are_refused_every_operating_command() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    ok(&p.tend(&["teams", "create", "search"]));
    let bob = ok(&p.tend(&["tokens", "create", "--name", "bob", "--team", "search"]))
        .trim()
        .to_string();
    let svc = ServiceDir::new("web", 1, &[], "");
    ok(&p.deploy(&svc));
    let path = svc.path().to_str().unwrap().to_string();
    for args in [
        vec!["deploy", path.as_str()],
        vec!["deploy", path.as_str(), "--release", "v1"],
        vec!["rollback", "web", "--to", "v1"],
        vec!["scale", "web", "3"],
        vec!["restart", "web"],
        vec!["stop", "web"],
        vec!["start", "web"],
    ] {
        let o = p.server.cli(&bob, &args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("owned by team `payments`"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // Reads are allowed.
    ok(&p.server.cli(&bob, &["status", "web"]));
    ok(&p.server.cli(&bob, &["releases", "web"]));
    let audit = ok(&p.tend(&["audit", "-n", "200", "-o", "json"]));
    let entries: Vec<Value> = serde_json::from_str(&audit).unwrap();
    let denied = entries
        .iter()
        .filter(|e| e["actor"] == "bob" && e["outcome"] == "denied")
        .count();
    assert_eq!(denied, 7, "every refusal audited");
}

#[test]
fn deleting_a_service_stops_its_instances() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 2, &[], "");
    ok(&p.deploy(&svc));
    assert_eq!(runtime_processes(&p.server.data_dir).len(), 2);
    ok(&p.tend(&["services", "delete", "web"]));
    // Its processes are now orphans: the controller's sweep stops them.
    wait_until(
        Duration::from_secs(60),
        "instances of the deleted service stopped",
        || runtime_processes(&p.server.data_dir).is_empty(),
    );
}

#[test]
fn builds_stream_their_output_and_a_failed_build_changes_nothing() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 1, &[], "");
    // A build step: the release runs what the build made.
    let manifest = std::fs::read_to_string(svc.path().join("tend.toml")).unwrap();
    let with_build = manifest.replace(
        "[run]\ncommand = \"./app\"",
        "[build]\ncommand = \"echo compiling-the-thing && cp app built-app\"\n\n[run]\ncommand = \"./built-app\"",
    );
    std::fs::write(svc.path().join("tend.toml"), &with_build).unwrap();
    std::fs::write(svc.path().join(".gitignore"), "built-app\n").unwrap();
    let o = p.deploy(&svc);
    assert!(ok(&o).contains("web v1 serves"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("compiling-the-thing"),
        "build output streamed: {}",
        stderr(&o)
    );
    let before = pids(&p.status("web"));

    std::fs::write(
        svc.path().join("tend.toml"),
        with_build.replace(
            "echo compiling-the-thing && cp app built-app",
            "echo about-to-fail >&2; exit 7",
        ),
    )
    .unwrap();
    let o = p.deploy(&svc);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("build failed")
            && err.contains("exit code 7")
            && err.contains("about-to-fail"),
        "{err}"
    );
    let s = p.status("web");
    assert_eq!(s["release"], 1, "no new release");
    assert_eq!(pids(&s), before, "v1 untouched");
    let releases = ok(&p.tend(&["releases", "web"]));
    assert!(!releases.contains("v2"), "{releases}");
}
