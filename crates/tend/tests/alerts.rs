//! Alerting end to end: the real server and the sample app misbehaving,
//! notifications caught by HTTP receivers running in the test.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::platform::*;
use common::receiver::Receiver;
use common::*;
use serde_json::Value;

/// Requests to a service through the router from a background thread, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(router_url: &str, host: &str, per_second: u32) -> Self {
        Self::start_path(router_url, host, "/", per_second)
    }

    /// At most `per_second` requests to `path`, one at a time.
    fn start_path(router_url: &str, host: &str, path: &str, per_second: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, url, host) = (
            stop.clone(),
            format!("{router_url}{path}"),
            host.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let gap = Duration::from_secs(1) / per_second;
            while !s.load(Ordering::SeqCst) {
                let _ = http.get(&url).header("host", &host).send();
                std::thread::sleep(gap);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn platform(extra: &[&str]) -> Platform {
    // Evaluate every 500 ms so the test waits seconds, not minutes.
    let mut args = vec!["--alert-interval", "500ms"];
    args.extend_from_slice(extra);
    let server = TestServer::start_with(&args);
    let admin = server.admin_token();
    ok(&server.cli(&admin, &["teams", "create", "payments"]));
    Platform { server, admin }
}

fn incident_json(p: &Platform, id: i64) -> Value {
    serde_json::from_str(&ok(&p.tend(&[
        "incidents",
        "show",
        &id.to_string(),
        "-o",
        "json",
    ])))
    .unwrap()
}

fn open_incidents(p: &Platform, team: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&ok(&p.tend(&["incidents", "--team", team, "-o", "json"]))).unwrap();
    v.as_array().cloned().unwrap_or_default()
}

fn labels(body: &Value) -> &Value {
    &body["commonLabels"]
}

#[test]
fn errors_under_load_page_the_owner_with_context_escalate_and_resolve() {
    let p = platform(&[]);
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let first = Receiver::start(0);
    let second = Receiver::start(0);
    let flaky = Receiver::start(2);
    let other_team = Receiver::start(0);
    p.add_channel("payments", "first", "--webhook", &first.url, &[]);
    p.add_channel("payments", "second", "--webhook", &second.url, &[]);
    p.add_channel("payments", "flaky", "--webhook", &flaky.url, &[]);
    ok(&p.tend(&["teams", "create", "search"]));
    p.add_channel("search", "webhook", "--webhook", &other_team.url, &[]);
    let out = ok(&p.tend(&[
        "oncall",
        "escalation",
        "payments",
        "--level",
        "0s=channel:first,channel:flaky",
        "--level",
        "4s=channel:second",
    ]));
    assert!(out.contains("channel:second"), "{out}");

    let svc = ServiceDir::new(
        "web",
        1,
        &[],
        "\n[alert_defaults]\nerror_for = \"2s\"\nerror_min_rps = 1\n",
    );
    ok(&p.deploy(&svc));
    let _load = Load::start(&p.server.router_url, "web.localhost", 25);
    // Healthy traffic first: no incident from a few requests or from none.
    std::thread::sleep(Duration::from_secs(3));
    assert!(open_incidents(&p, "payments").is_empty());

    // The change that breaks it: every request now answers 500.
    ok(&p.tend(&["config", "set", "web", "SAMPLE_ERROR_RATE=1"]));
    p.wait_status("web", "release 2 serving", |s| {
        s["release"] == 2 && ready_count(s) == 1 && instances(s).iter().all(|i| i["release"] == 2)
    });
    let broken_at = Instant::now();

    let (at, body) = first.wait_for("the page at level 1", Duration::from_secs(60), |v| {
        v["status"] == "firing" && labels(v)["alertname"] == "high-error-rate"
    });
    let took = at.duration_since(broken_at);
    eprintln!("alert delivered {took:?} after the service started failing");
    // `for` (2 s) + a couple of scrapes and evaluations, on a busy machine.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // Alertmanager webhook v4, labelled with the service and its team.
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "payments/first");
    assert_eq!(labels(&body)["service"], "web");
    assert_eq!(labels(&body)["team"], "payments");
    assert_eq!(labels(&body)["severity"], "page");
    assert_eq!(body["groupLabels"]["service"], "web");
    let alert = &body["alerts"][0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);
    let changed = alert["annotations"]["what_changed"].as_str().unwrap();
    assert!(changed.contains("config.changed"), "{changed}");
    assert!(changed.contains("SAMPLE_ERROR_RATE"), "{changed}");
    assert_eq!(alert["annotations"]["rollback"], "tend rollback web");
    let id: i64 = alert["annotations"]["incident"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The 503-answering receiver got it after retries.
    flaky.wait_for("the retried delivery", Duration::from_secs(20), |v| {
        v["status"] == "firing"
    });
    assert!(flaky.hits.load(Ordering::SeqCst) >= 3);

    // Nobody acknowledges: level 2 gets it after its 4 s.
    let (at2, body2) = second.wait_for("escalation to level 2", Duration::from_secs(30), |v| {
        v["status"] == "firing"
    });
    let gap = at2.duration_since(at);
    assert!(
        gap >= Duration::from_millis(3500),
        "escalated after {gap:?}"
    );
    assert_eq!(body2["receiver"], "payments/second");

    let d = incident_json(&p, id);
    assert_eq!(d["incident"]["team"], "payments");
    assert_eq!(d["incident"]["state"], "triggered");
    let kinds: Vec<&str> = d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"opened") && kinds.contains(&"escalated"),
        "{kinds:?}"
    );
    let flaky_log = d["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["channel"] == "flaky")
        .unwrap()
        .clone();
    assert_eq!(flaky_log["status"], "delivered");
    assert_eq!(flaky_log["attempts"], 3);
    // The human view shows the context.
    let shown = ok(&p.tend(&["incidents", "show", &id.to_string()]));
    assert!(
        shown.contains("what changed") && shown.contains("config.changed"),
        "{shown}"
    );
    assert!(shown.contains("tend rollback web"), "{shown}");
    let listed = ok(&p.tend(&["incidents"]));
    assert!(listed.contains("high-error-rate"), "{listed}");

    // The service recovers: the incident resolves by itself and says so.
    ok(&p.tend(&["config", "set", "web", "SAMPLE_ERROR_RATE=0"]));
    first.wait_for("the resolved notification", Duration::from_secs(90), |v| {
        v["status"] == "resolved" && v["alerts"][0]["status"] == "resolved"
    });
    let d = incident_json(&p, id);
    assert_eq!(d["incident"]["state"], "resolved");
    assert!(d["incident"]["resolved_by"].is_null());
    let ev = ok(&p.tend(&["events", "web"]));
    assert!(
        ev.contains("incident.opened") && ev.contains("incident.resolved"),
        "{ev}"
    );

    // Another team's channel heard nothing.
    assert_eq!(other_team.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn crash_loops_and_failed_deploys_alert_without_rules_and_ack_stops_escalation() {
    // PagerDuty's Events API, played by a local receiver.
    let pd = Receiver::start(0);
    let p = platform(&["--pagerduty-url", &pd.url]);
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let first = Receiver::start(0);
    let second = Receiver::start(0);
    p.add_channel("payments", "pager", "--pagerduty", "R0UTINGKEY", &[]);
    p.add_channel("payments", "first", "--webhook", &first.url, &[]);
    p.add_channel("payments", "second", "--webhook", &second.url, &[]);
    ok(&p.tend(&[
        "oncall",
        "escalation",
        "payments",
        "--level",
        "0s=channel:first,channel:pager",
        "--level",
        "3s=channel:second",
    ]));
    // A member on call: named in the page.
    ok(&p.tend(&["tokens", "create", "--name", "alice", "--team", "payments"]));
    ok(&p.tend(&[
        "oncall",
        "rotation",
        "payments",
        "--members",
        "alice",
        "--handoff",
        "daily",
    ]));
    let oc = ok(&p.tend(&["oncall", "payments"]));
    assert!(oc.contains("on call:  alice"), "{oc}");

    // Crashes 1.5 s after it starts listening, after the rollout verified it.
    // Also a log-based rule: the app logs "crashing" as it exits.
    let crashy = ServiceDir::new(
        "crashy",
        1,
        &[("SAMPLE_CRASH_AFTER", "1500ms")],
        "\n[[alerts]]\nname = \"crash-lines\"\nlogs = 'crashing'\nwindow = \"1m\"\nthreshold = 2\nseverity = \"info\"\n",
    );
    let _ = p.deploy(&crashy);
    let (_, body) = first.wait_for("the crash-loop page", Duration::from_secs(90), |v| {
        v["alerts"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["labels"]["alertname"] == "crash-looping")
        })
    });
    assert_eq!(labels(&body)["service"], "crashy");
    assert_eq!(body["alerts"][0]["annotations"]["oncall"], "alice");
    let id: i64 = body["alerts"][0]["annotations"]["incident"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // Acknowledged at once: the second level never hears of it.
    let out = ok(&p.tend(&["ack", &id.to_string()]));
    assert!(out.contains("acknowledged"), "{out}");
    let again = p.tend(&["ack", &id.to_string()]);
    assert!(!again.status.success());
    // (Level 2 is due 3 s after level 1; give it twice that.) The `info` log
    // alert may have reached every channel before the page: not paging, fine.
    std::thread::sleep(Duration::from_secs(6));
    let paged = |v: &Value| {
        v["alerts"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["labels"]["alertname"] == "crash-looping")
        })
    };
    assert!(
        second.bodies().iter().all(|(_, v)| !paged(v)),
        "escalated despite the ack: {:#?}",
        second.bodies()
    );
    // PagerDuty was triggered, then told of the ack, under one dedup key.
    let (_, trigger) = pd.wait_for("the PagerDuty trigger", Duration::from_secs(10), |v| {
        v["event_action"] == "trigger" && v["payload"]["source"] == "crashy"
    });
    assert_eq!(trigger["routing_key"], "R0UTINGKEY");
    assert_eq!(trigger["payload"]["severity"], "critical");
    let (_, acked) = pd.wait_for("the PagerDuty acknowledge", Duration::from_secs(10), |v| {
        v["event_action"] == "acknowledge"
    });
    assert_eq!(acked["dedup_key"], trigger["dedup_key"]);
    // The log rule joins the same incident (one per service).
    wait_until(Duration::from_secs(30), "the log-based alert", || {
        incident_json(&p, id)["incident"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "crash-lines")
    });
    let d = incident_json(&p, id);
    assert_eq!(d["incident"]["state"], "acknowledged");
    assert_eq!(d["incident"]["acked_by"], "admin");
    let audit = ok(&p.tend(&["audit", "-o", "json"]));
    assert!(audit.contains("incident.ack"), "{audit}");
    ok(&p.tend(&["stop", "crashy"]));

    // A release that never becomes healthy is rolled back: `deploy-failed`
    // (a ticket: the team's channels, no escalation).
    let mut web = ServiceDir::new("web", 1, &[], "");
    ok(&p.deploy(&web));
    web.write("web", 1, &[("SAMPLE_NEVER_HEALTHY", "1")], "");
    let _ = p.deploy(&web);
    let (_, body) = first.wait_for("the failed-deploy ticket", Duration::from_secs(60), |v| {
        labels(v)["service"] == "web" && labels(v)["alertname"] == "deploy-failed"
    });
    assert_eq!(labels(&body)["severity"], "ticket");
    second.wait_for(
        "the ticket on the other channel too",
        Duration::from_secs(10),
        |v| labels(v)["service"] == "web",
    );
    let changed = body["alerts"][0]["annotations"]["what_changed"]
        .as_str()
        .unwrap();
    assert!(
        changed.contains("rolled_back") || changed.contains("deploy.failed"),
        "{changed}"
    );

    // Only the owning team (or an admin) may resolve it.
    ok(&p.tend(&["teams", "create", "search"]));
    let outsider = ok(&p.tend(&[
        "tokens", "create", "--name", "bob", "--team", "search", "-o", "json",
    ]));
    let outsider: Value = serde_json::from_str(&outsider).unwrap();
    let bob = outsider["token"].as_str().unwrap();
    let web_incident = open_incidents(&p, "payments")
        .into_iter()
        .find(|i| i["service"] == "web")
        .unwrap();
    let wid = web_incident["id"].as_i64().unwrap().to_string();
    let denied = p.server.cli(bob, &["resolve", &wid]);
    assert_eq!(denied.status.code(), Some(4), "{}", stderr(&denied));
    ok(&p.tend(&["resolve", &wid]));
    let (_, body) = first.wait_for("the resolved ticket", Duration::from_secs(10), |v| {
        labels(v)["service"] == "web" && v["status"] == "resolved"
    });
    assert_eq!(body["alerts"][0]["status"], "resolved");
}

#[test]
fn bad_promql_is_a_manifest_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tend.toml"),
        "[service]\nname = \"web\"\nowner = \"payments\"\n[run]\ncommand = \"./web\"\n\n[[alerts]]\nname = \"x\"\nexpr = 'sum(rate(http_requests_total[5m])'\n",
    )
    .unwrap();
    let o = cli_with(&["validate", dir.path().to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("invalid PromQL"), "{err}");
    assert!(err.contains("tend.toml:9:8"), "{err}");
}

/// A manifest for the sample app with a `[run]` and `[health]` of the test's choosing.
fn custom_service(name: &str, run: &str, health: &str, alert_defaults: &str) -> ServiceDir {
    let svc = ServiceDir::new(name, 1, &[], "");
    std::fs::write(
        svc.path().join("tend.toml"),
        format!(
            "[service]\nname = \"{name}\"\nowner = \"payments\"\n\n\
             [run]\ncommand = \"./app\"\ngrace_period = \"1s\"\n{run}\n\
             [health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 3\nstart_period = \"1s\"\n{health}\n\
             [deploy]\nverify = \"1s\"\nhealthy_deadline = \"10s\"\n\n\
             [alert_defaults]\n{alert_defaults}\n"
        ),
    )
    .unwrap();
    svc
}

fn alertname(v: &Value) -> &str {
    labels(v)["alertname"].as_str().unwrap_or("")
}

#[test]
fn slowness_memory_and_unready_instances_alert_without_rules() {
    let p = platform(&[]);
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let hook = Receiver::start(0);
    p.add_channel("payments", "webhook", "--webhook", &hook.url, &[]);
    let flags = tempfile::tempdir().unwrap();
    let down = flags.path().join("down");

    // Three services, each with windows short enough for a test.
    let slow = custom_service(
        "slow",
        "",
        "http = \"/healthz\"",
        "latency_window = \"10s\"\nlatency_baseline = \"30s\"\nlatency_for = \"0s\"",
    );
    let leaky = custom_service(
        "leaky",
        "memory = \"512MiB\"",
        "http = \"/healthz\"",
        "memory_ratio = 0.15\nmemory_for = \"1s\"\n\n[env]\nSAMPLE_LEAK_MB_PER_SEC = \"8\"",
    );
    let flag = custom_service(
        "flag",
        "",
        &format!("exec = \"test ! -e {}\"", down.display()),
        "not_ready_for = \"2s\"",
    );
    for svc in [&slow, &leaky, &flag] {
        ok(&p.deploy(svc));
    }
    let fast = Load::start(&p.server.router_url, "slow.localhost", 20);
    let deployed = Instant::now();

    // `memory-near-limit`: 8 MiB/s passes 15 % of 512 MiB (77 MiB) in ~10 s.
    let (_, body) = hook.wait_for("memory-near-limit", Duration::from_secs(60), |v| {
        alertname(v) == "memory-near-limit" && v["status"] == "firing"
    });
    assert_eq!(labels(&body)["service"], "leaky");
    assert_eq!(labels(&body)["team"], "payments");
    assert_eq!(labels(&body)["severity"], "ticket");
    let value: f64 = body["alerts"][0]["annotations"]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {body:#}"));
    assert!(value > 0.15 * 512.0 * 1024.0 * 1024.0, "{value}");
    ok(&p.tend(&["stop", "leaky"]));

    // `instances-not-ready`: the check fails from now on; the instance is
    // replaced, and the new one never becomes ready either.
    std::fs::write(&down, "").unwrap();
    let broke = Instant::now();
    let (at, body) = hook.wait_for("instances-not-ready", Duration::from_secs(60), |v| {
        alertname(v) == "instances-not-ready" && v["status"] == "firing"
    });
    assert_eq!(labels(&body)["service"], "flag");
    assert_eq!(labels(&body)["severity"], "page");
    assert!(
        at.duration_since(broke) >= Duration::from_secs(2),
        "paged {:?} after the check started failing, before not_ready_for",
        at.duration_since(broke)
    );
    // Healthy again: it resolves.
    std::fs::remove_file(&down).unwrap();
    hook.wait_for(
        "instances-not-ready resolved",
        Duration::from_secs(60),
        |v| alertname(v) == "instances-not-ready" && v["status"] == "resolved",
    );

    // `high-latency`: 30 s of fast answers make the baseline, then every
    // request takes 300 ms.
    let baseline_until = deployed + Duration::from_secs(35);
    if let Some(left) = baseline_until.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    assert!(
        hook.bodies()
            .iter()
            .all(|(_, v)| alertname(v) != "high-latency"),
        "high-latency before the service slowed down: {:#?}",
        hook.bodies()
    );
    drop(fast);
    let _slow_load = Load::start_path(&p.server.router_url, "slow.localhost", "/work?ms=300", 20);
    let (_, body) = hook.wait_for("high-latency", Duration::from_secs(60), |v| {
        alertname(v) == "high-latency" && v["status"] == "firing"
    });
    assert_eq!(labels(&body)["service"], "slow");
    assert_eq!(labels(&body)["severity"], "ticket");
    let p99: f64 = body["alerts"][0]["annotations"]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {body:#}"));
    assert!((0.25..=0.5).contains(&p99), "p99 {p99}");
}

#[test]
fn rotations_hand_off_at_local_time_in_a_named_time_zone() {
    let p = platform(&[]);
    for who in ["alice", "bob"] {
        ok(&p.tend(&["tokens", "create", "--name", who, "--team", "payments"]));
    }
    let out = ok(&p.tend(&[
        "oncall",
        "rotation",
        "payments",
        "--members",
        "alice,bob",
        "--handoff",
        "daily",
        "--at",
        "09:00",
        "--time-zone",
        "Europe/Paris",
    ]));
    assert!(out.contains("(Europe/Paris)"), "{out}");
    let all: Value =
        serde_json::from_str(&ok(&p.tend(&["oncall", "payments", "-o", "json"]))).unwrap();
    let oc = &all[0];
    assert_eq!(oc["rotation"]["time_zone"], "Europe/Paris");
    assert_eq!(oc["member"], "alice");
    // 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer.
    let until = oc["until"].as_str().unwrap();
    assert!(
        until.contains("T08:00:00") || until.contains("T07:00:00"),
        "{until}"
    );

    // A zone that does not exist, or a zone and an offset at once: 400s that say so.
    let bad = p.tend(&[
        "oncall",
        "rotation",
        "payments",
        "--members",
        "alice",
        "--time-zone",
        "Mars/Olympus",
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("IANA name"), "{}", stderr(&bad));
    let both = p
        .server
        .http()
        .put(format!("{}/api/v1/teams/payments/rotation", p.server.url))
        .bearer_auth(&p.admin)
        .json(&serde_json::json!({
            "members": ["alice"], "handoff": "daily",
            "time_zone": "Europe/Paris", "utc_offset": "+01:00"
        }))
        .send()
        .unwrap();
    assert_eq!(both.status(), 400);
    assert!(both.text().unwrap().contains("not both"));
}

#[test]
fn a_page_reaches_the_on_call_members_own_channel_first() {
    let p = platform(&[]);
    let _cleanup = KillInstances(p.server.data_dir.clone());
    for who in ["alice", "bob"] {
        ok(&p.tend(&["tokens", "create", "--name", who, "--team", "payments"]));
    }
    let (alice, bob, shared) = (Receiver::start(0), Receiver::start(0), Receiver::start(0));
    p.add_channel(
        "payments",
        "alice-hook",
        "--webhook",
        &alice.url,
        &["--member", "alice"],
    );
    p.add_channel(
        "payments",
        "bob-hook",
        "--webhook",
        &bob.url,
        &["--member", "bob"],
    );
    p.add_channel("payments", "shared", "--webhook", &shared.url, &[]);
    let listed = ok(&p.tend(&["teams", "channels", "list", "payments"]));
    assert!(
        listed.contains("alice") && listed.contains("(team)"),
        "{listed}"
    );
    let stranger = p.tend(&[
        "teams",
        "channels",
        "add",
        "payments",
        "--webhook",
        &shared.url,
        "--member",
        "carol",
    ]);
    assert!(!stranger.status.success());
    assert!(
        stderr(&stranger).contains("not a member of team `payments`"),
        "{}",
        stderr(&stranger)
    );
    // alice is on call (the first shift starts at the latest hand-off).
    ok(&p.tend(&[
        "oncall",
        "rotation",
        "payments",
        "--members",
        "alice,bob",
        "--handoff",
        "daily",
    ]));
    ok(&p.tend(&[
        "oncall",
        "escalation",
        "payments",
        "--level",
        "0s=oncall",
        "--level",
        "3s=team",
    ]));

    let crashy = ServiceDir::new("crashy", 1, &[("SAMPLE_CRASH_AFTER", "1500ms")], "");
    let _ = p.deploy(&crashy);
    let paged = |v: &Value| v["status"] == "firing" && alertname(v) == "crash-looping";
    let (at, body) = alice.wait_for("alice's page", Duration::from_secs(90), paged);
    assert_eq!(body["receiver"], "payments/alice-hook");
    assert_eq!(body["alerts"][0]["annotations"]["oncall"], "alice");
    assert!(
        bob.bodies().iter().all(|(_, v)| !paged(v))
            && shared.bodies().iter().all(|(_, v)| !paged(v)),
        "level 1 reached more than the on-call member"
    );
    // Nobody acks: level 2 is the whole team, bob and the shared channel included.
    let (at2, _) = shared.wait_for("the team level", Duration::from_secs(30), paged);
    bob.wait_for("bob at the team level", Duration::from_secs(10), paged);
    assert!(
        at2.duration_since(at) >= Duration::from_millis(2500),
        "{:?}",
        at2.duration_since(at)
    );
    ok(&p.tend(&["stop", "crashy"]));
}
