//! The server's API, driven over raw HTTP and through the real CLI.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const CHECKOUT: &str = r#"
[service]
name = "checkout"
owner = "payments"
description = "Takes orders"

[run]
command = "./app"
"#;

fn manifest(name: &str, owner: &str) -> String {
    format!("[service]\nname = \"{name}\"\nowner = \"{owner}\"\n\n[run]\ncommand = \"./app\"\n")
}

struct Setup {
    server: TestServer,
    admin: String,
    alice: String,
    bob: String,
}

/// A server with teams `payments` (alice) and `storefront` (bob).
fn setup() -> Setup {
    let server = TestServer::start();
    let admin = server.admin_token();
    ok(&server.cli(&admin, &["teams", "create", "payments"]));
    ok(&server.cli(&admin, &["teams", "create", "storefront"]));
    let alice = ok(&server.cli(
        &admin,
        &["tokens", "create", "--name", "alice", "--team", "payments"],
    ))
    .trim()
    .to_string();
    let bob = ok(&server.cli(
        &admin,
        &["tokens", "create", "--name", "bob", "--team", "storefront"],
    ))
    .trim()
    .to_string();
    assert!(alice.starts_with("tend_") && bob.starts_with("tend_"));
    Setup {
        server,
        admin,
        alice,
        bob,
    }
}

fn apply_raw(s: &TestServer, token: &str, manifest: &str) -> (u16, Value) {
    let r = s
        .http()
        .post(format!("{}/api/v1/services", s.url))
        .bearer_auth(token)
        .json(&json!({ "manifest": manifest }))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn audit(s: &TestServer, token: &str) -> Vec<Value> {
    let r = s
        .http()
        .get(format!("{}/api/v1/audit?limit=1000", s.url))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Vec<Value>>().unwrap()
}

#[test]
fn first_start_prints_admin_token_once_and_saves_it_0600() {
    let mut server = TestServer::start();
    let token = server.admin_token();
    assert!(
        token.starts_with("tend_") && token.len() >= 5 + 43,
        "{token}"
    );
    wait_until(Duration::from_secs(10), "admin token on stdout", || {
        server.stdout().contains(&format!("admin token: {token}"))
    });
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.data_dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // SIGTERM stops it cleanly.
    assert!(server.terminate().success());
    let dir = server.data_dir.clone();
    let mut again = TestServer::start_in(&dir);
    assert_eq!(again.admin_token(), token, "the token file is kept");
    let who = ok(&again.cli(&token, &["whoami", "-o", "json"]));
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["name"], "admin");
    assert_eq!(who["admin"], true);
    again.kill9();
    assert!(
        !again.stdout().contains("admin token"),
        "printed again: {}",
        again.stdout()
    );
}

#[test]
fn team_and_token_lifecycle() {
    let Setup {
        server,
        admin,
        alice,
        ..
    } = setup();
    let teams: Value =
        serde_json::from_str(&ok(&server.cli(&admin, &["teams", "-o", "json"]))).unwrap();
    let names: Vec<&str> = teams
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["payments", "storefront"]);
    let team: Value = serde_json::from_str(&ok(
        &server.cli(&admin, &["teams", "show", "payments", "-o", "json"])
    ))
    .unwrap();
    assert_eq!(team["members"], json!(["alice"]));

    // Members may not create teams or tokens.
    let o = server.cli(&alice, &["teams", "create", "rogue"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("only a platform admin"),
        "{}",
        stderr(&o)
    );
    let o = server.cli(
        &alice,
        &["tokens", "create", "--name", "mallory", "--admin"],
    );
    assert_eq!(o.status.code(), Some(4));

    // Channels: members manage their own team's.
    ok(&server.cli(
        &alice,
        &[
            "teams",
            "add-channel",
            "payments",
            "pager",
            "--kind",
            "pagerduty",
            "--target",
            "routing-key-123",
        ],
    ));
    let bob_view: Value = serde_json::from_str(&ok(
        &server.cli(&admin, &["teams", "show", "payments", "-o", "json"])
    ))
    .unwrap();
    assert_eq!(bob_view["channels"][0]["target"], "routing-key-123");

    // Revoke: the token stops working at once, with 401 and exit code 4.
    ok(&server.cli(&admin, &["tokens", "revoke", "alice"]));
    let o = server.cli(&alice, &["services"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    let r = server
        .http()
        .get(format!("{}/api/v1/services", server.url))
        .bearer_auth(&alice)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    // A team that owns nothing can be deleted; unknown teams are 404 (exit 5).
    ok(&server.cli(&admin, &["teams", "delete", "storefront"]));
    let o = server.cli(&admin, &["teams", "show", "storefront"]);
    assert_eq!(o.status.code(), Some(5));
}

#[test]
fn expired_tokens_are_refused() {
    let Setup { server, admin, .. } = setup();
    let t = ok(&server.cli(
        &admin,
        &[
            "tokens",
            "create",
            "--name",
            "shortlived",
            "--team",
            "payments",
            "--expires-in",
            "1s",
        ],
    ));
    let t = t.trim();
    wait_until(Duration::from_secs(20), "token to expire", || {
        let r = server
            .http()
            .get(format!("{}/api/v1/whoami", server.url))
            .bearer_auth(t)
            .send()
            .unwrap();
        r.status() == 401
    });
    let o = server.cli(t, &["whoami"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("expired"), "{}", stderr(&o));
}

#[test]
fn members_change_only_their_teams_services_and_denials_are_audited() {
    let Setup {
        server,
        admin,
        alice,
        bob,
    } = setup();
    let (status, body) = apply_raw(&server, &alice, CHECKOUT);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["outcome"], "created");
    let (status, body) = apply_raw(&server, &alice, CHECKOUT);
    assert_eq!(status, 200);
    assert_eq!(body["outcome"], "unchanged");

    // Bob (storefront) cannot apply a payments service, nor take checkout over.
    let (status, body) = apply_raw(&server, &bob, &manifest("refunds", "payments"));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("owned by team `payments`"),
        "{body}"
    );
    let (status, _) = apply_raw(&server, &bob, &manifest("checkout", "storefront"));
    assert_eq!(status, 403);
    let r = server
        .http()
        .delete(format!("{}/api/v1/services/checkout", server.url))
        .bearer_auth(&bob)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let o = server.cli(&bob, &["services", "delete", "checkout"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stderr(&o).contains("owned by team `payments`"),
        "{}",
        stderr(&o)
    );

    // But Bob reads the catalog.
    let list: Value =
        serde_json::from_str(&ok(&server.cli(&bob, &["services", "-o", "json"]))).unwrap();
    assert_eq!(list[0]["name"], "checkout");
    assert_eq!(list[0]["owner"], "payments");
    let show: Value = serde_json::from_str(&ok(
        &server.cli(&bob, &["services", "show", "checkout", "-o", "json"])
    ))
    .unwrap();
    assert_eq!(show["spec"]["run"]["command"], "./app");

    // The refusals are in the audit trail, with who and from where.
    let entries = audit(&server, &admin);
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["outcome"] == "denied" && e["actor"] == "bob")
        .collect();
    assert!(
        denied
            .iter()
            .any(|e| e["action"] == "service.apply" && e["target"] == "service/refunds"),
        "{entries:#?}"
    );
    assert!(denied
        .iter()
        .any(|e| e["action"] == "service.delete" && e["target"] == "service/checkout"));
    assert!(denied
        .iter()
        .all(|e| e["client"].as_str().unwrap().starts_with("127.0.0.1:")));
    assert!(entries.iter().any(|e| e["outcome"] == "allowed"
        && e["actor"] == "alice"
        && e["action"] == "service.apply"));

    // Members see their teams' part of the trail only.
    let alices = audit(&server, &alice);
    assert!(!alices.is_empty());
    assert!(
        alices.iter().all(|e| e["team"] == "payments"),
        "{alices:#?}"
    );

    // The owner may delete; the timeline keeps the story.
    ok(&server.cli(&alice, &["services", "delete", "checkout"]));
    let events = ok(&server.cli(&alice, &["events", "checkout"]));
    assert!(
        events.contains("service.created") && events.contains("service.deleted"),
        "{events}"
    );
}

#[test]
fn moving_a_service_needs_both_teams() {
    let Setup {
        server,
        admin,
        alice,
        ..
    } = setup();
    assert_eq!(apply_raw(&server, &alice, CHECKOUT).0, 201);
    // Alice is not in storefront: she may not hand checkout over to it.
    let (status, body) = apply_raw(&server, &alice, &manifest("checkout", "storefront"));
    assert_eq!(status, 403, "{body}");
    // A token in both teams may.
    let both = ok(&server.cli(
        &admin,
        &[
            "tokens",
            "create",
            "--name",
            "carol",
            "--team",
            "payments",
            "--team",
            "storefront",
        ],
    ));
    let (status, body) = apply_raw(&server, both.trim(), &manifest("checkout", "storefront"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"]["owner"], "storefront");
    assert_eq!(body["service"]["generation"], 2);
}

#[test]
fn bad_requests_get_json_4xx() {
    let Setup { server, admin, .. } = setup();
    let http = server.http();
    let url = |p: &str| format!("{}{p}", server.url);
    let check = |r: reqwest::blocking::Response, status: u16, code: &str| {
        assert_eq!(r.status().as_u16(), status);
        let body: Value = r.json().expect("JSON error body");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    };
    // No token, unknown token.
    check(
        http.get(url("/api/v1/services")).send().unwrap(),
        401,
        "unauthorized",
    );
    check(
        http.get(url("/api/v1/services"))
            .bearer_auth("tend_nope")
            .send()
            .unwrap(),
        401,
        "unauthorized",
    );
    // Malformed JSON, wrong types, unknown fields, missing content type.
    let post = |body: &str| {
        http.post(url("/api/v1/teams"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    check(post("{not json"), 400, "bad_request");
    check(post(r#"{"name": 42}"#), 400, "bad_request");
    check(post(r#"{"name": "Bad Name"}"#), 400, "bad_request");
    check(post(r#"{"name": "ok", "extra": 1}"#), 400, "bad_request");
    check(
        http.post(url("/api/v1/teams"))
            .bearer_auth(&admin)
            .body("{}")
            .send()
            .unwrap(),
        415,
        "unsupported_media_type",
    );
    // Oversized body (on its own connection: the server closes it after a 413
    // without reading the rest of the body).
    let big = format!(r#"{{"manifest": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    check(
        server
            .http()
            .post(url("/api/v1/services"))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .unwrap(),
        413,
        "payload_too_large",
    );
    // Unknown things and routes; wrong method.
    check(
        http.get(url("/api/v1/services/nope"))
            .bearer_auth(&admin)
            .send()
            .unwrap(),
        404,
        "not_found",
    );
    check(
        http.get(url("/api/v1/services/Not_A_Name"))
            .bearer_auth(&admin)
            .send()
            .unwrap(),
        400,
        "bad_request",
    );
    check(
        http.get(url("/api/v1/nothing-here"))
            .bearer_auth(&admin)
            .send()
            .unwrap(),
        404,
        "not_found",
    );
    check(
        http.put(url("/api/v1/teams"))
            .bearer_auth(&admin)
            .send()
            .unwrap(),
        405,
        "method_not_allowed",
    );
    check(
        http.get(url("/api/v1/audit?limit=lots"))
            .bearer_auth(&admin)
            .send()
            .unwrap(),
        400,
        "bad_request",
    );
    // Conflicts.
    check(post(r#"{"name": "payments"}"#), 409, "conflict");
    // An invalid manifest: 422 with the same diagnostics as `tend validate`.
    let (status, body) = apply_raw(&server, &admin, "[service]\nname = \"checkout\"\nowner = \"payments\"\n[run]\ninstance = 2\ncommand = \"x\"\n");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_manifest");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("tend.toml:5:1"), "{msg}");
    assert!(msg.contains("instances"), "{msg}");
    assert_eq!(body["error"]["details"]["problems"][0]["line"], 5, "{body}");
    // Apply for a team that does not exist.
    let (status, body) = apply_raw(&server, &admin, &manifest("svc", "ghosts"));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tend teams create ghosts"));
    // The server is still fine.
    assert!(http
        .get(url("/healthz"))
        .send()
        .unwrap()
        .status()
        .is_success());
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let Setup {
        mut server,
        admin,
        alice,
        ..
    } = setup();
    let (status, _) = apply_raw(&server, &alice, CHECKOUT);
    assert_eq!(status, 201);
    let revoked = ok(&server.cli(
        &admin,
        &["tokens", "create", "--name", "temp", "--team", "payments"],
    ));
    ok(&server.cli(&admin, &["tokens", "revoke", "temp"]));
    server.kill9();
    let dir = server.data_dir.clone();
    let again = TestServer::start_in(&dir);
    let show: Value = serde_json::from_str(&ok(
        &again.cli(&alice, &["services", "show", "checkout", "-o", "json"])
    ))
    .unwrap();
    assert_eq!(show["owner"], "payments");
    let o = again.cli(revoked.trim(), &["whoami"]);
    assert_eq!(o.status.code(), Some(4), "revocation survived the crash");
    let entries = audit(&again, &admin);
    assert!(entries
        .iter()
        .any(|e| e["action"] == "token.revoke" && e["target"] == "token/temp"));
}

#[test]
fn openapi_is_served_and_matches_the_committed_copy() {
    let server = TestServer::start();
    let served: Value = server
        .http()
        .get(format!("{}/api/v1/openapi.json", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let path = repo_root().join("docs/api/openapi.json");
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &pretty).unwrap();
    }
    let committed =
        std::fs::read_to_string(&path).expect("docs/api/openapi.json (run with UPDATE_OPENAPI=1)");
    assert!(
        committed == pretty,
        "docs/api/openapi.json is stale: rerun this test with UPDATE_OPENAPI=1"
    );

    // Every documented operation is routed (not the 404 fallback, not 405).
    let admin = server.admin_token();
    let http = server.http();
    for (path, ops) in served["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{team}", "nope")
                .replace("{name}", "nope")
                .replace("{channel}", "nope");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http
                .request(m, format!("{}{concrete}", server.url))
                .bearer_auth(&admin)
                .json(&json!({}))
                .send()
                .unwrap();
            assert_ne!(r.status(), 405, "{method} {path}");
            if r.status() == 404 {
                let body: Value = r.json().unwrap();
                assert!(
                    !body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("no such endpoint"),
                    "{method} {path} is not routed"
                );
            }
        }
    }
}
