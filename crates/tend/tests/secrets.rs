//! Secrets: set through the CLI, encrypted at rest, injected into instances,
//! redacted from their output, never shown back; tampering detected; the
//! master key rotated without breaking old releases; other teams refused.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::platform::*;
use common::*;
use serde_json::Value;

/// A value found nowhere but in the instance's memory if all goes well.
fn canary() -> String {
    let mut bytes = [0u8; 12];
    let mut file = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut file, &mut bytes).unwrap();
    format!(
        "canary-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Runs the CLI with `input` on its standard input.
fn cli_stdin(p: &Platform, token: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(tend_bin())
        .args(args)
        .env("TEND_URL", &p.server.url)
        .env("TEND_TOKEN", token)
        .env("NO_COLOR", "1")
        .env("HOME", &p.server.data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The environment of the service's running instance process.
fn instance_env(p: &Platform, name: &str) -> Vec<String> {
    let s = p.status(name);
    let pid = pids(&s).into_iter().next().expect("a running instance");
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(path.display().to_string());
                    }
                }
            }
        }
    }
    hits
}

fn service(name: &str, extra: &str, print: &str) -> ServiceDir {
    ServiceDir::new(name, 1, &[("SAMPLE_PRINT_ENV", print)], extra)
}

#[test]
fn a_secret_reaches_the_instance_and_leaks_nowhere() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let secret = canary();
    let svc = service(
        "web",
        "[secrets]\nrequired = [\"API_TOKEN\"]\n",
        "API_TOKEN,GREETING",
    );
    let dir = svc.path().to_str().unwrap();

    // Required and not set: refused before anything is built, naming it.
    let o = p.deploy(&svc);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("requires secrets that are not set: API_TOKEN"),
        "{err}"
    );
    assert!(!p.server.data_dir.join("deployments/1.log").exists());

    // Register, set from stdin (out of shell history), deploy.
    ok(&p.tend(&["apply", dir]));
    let o = cli_stdin(
        &p,
        &p.admin,
        &["secrets", "set", "web", "--stdin", "API_TOKEN"],
        &format!("{secret}\n"),
    );
    let out = ok(&o);
    assert!(out.contains("staged"), "{out}");
    let o = cli_stdin(
        &p,
        &p.admin,
        &["secrets", "set", "web", "--stdin", "GREETING"],
        "hello-not-secret-but-sealed",
    );
    ok(&o);
    let o = p.deploy(&svc);
    assert!(ok(&o).contains("web v1 serves"), "{}", stderr(&o));

    // The instance sees the value (the trailing newline of stdin dropped).
    let env = instance_env(&p, "web");
    assert!(
        env.contains(&format!("API_TOKEN={secret}")),
        "API_TOKEN not in the instance's environment"
    );

    // It prints it; the log store has the redaction, not the value.
    wait_until(
        Duration::from_secs(30),
        "redacted lines in the logs",
        || {
            let logs = ok(&p.tend(&["logs", "web", "-n", "0"]));
            logs.matches("API_TOKEN=[redacted:API_TOKEN]").count() >= 2
        },
    );
    let logs = ok(&p.tend(&["logs", "web", "-n", "0", "-o", "json"]));
    assert!(!logs.contains(&secret), "the log store holds the value");
    assert!(logs.contains("GREETING=[redacted:GREETING]"));
    let found = ok(&p.tend(&["logs", "web", "--contains", &secret[..16]]));
    assert!(!found.contains(&secret));

    // Listing shows names and versions only.
    let listed: Value =
        serde_json::from_str(&ok(&p.tend(&["secrets", "web", "-o", "json"]))).unwrap();
    assert_eq!(listed["version"], 2);
    assert_eq!(listed["secrets"][0]["name"], "API_TOKEN");
    assert_eq!(listed["secrets"][0]["version"], 1);
    assert_eq!(listed["secrets"][0]["set_by"], "admin");
    let table = ok(&p.tend(&["secrets", "web"]));
    assert!(table.contains("API_TOKEN") && !table.contains(&secret));

    // Errors name keys, never values.
    let o = p.tend(&["secrets", "set", "web", &format!("1BAD={secret}")]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains(&secret) && !stdout(&o).contains(&secret));
    let o = p.tend(&["secrets", "set", "web", &secret]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains(&secret), "{}", stderr(&o));
    // Unsetting a required secret is refused.
    let o = p.tend(&["secrets", "unset", "web", "API_TOKEN"]);
    assert!(stderr(&o).contains("required"), "{}", stderr(&o));

    // The audit trail and the timeline carry names only.
    let audit = ok(&p.tend(&["audit", "-o", "json", "-n", "200"]));
    assert!(audit.contains("service.secrets") && audit.contains("set API_TOKEN"));
    assert!(!audit.contains(&secret), "the audit trail holds the value");
    let events = ok(&p.tend(&["events", "web", "-n", "200"]));
    assert!(events.contains("secrets.changed"), "{events}");
    assert!(!events.contains(&secret));

    // Every read endpoint of the API.
    let http = p.server.http();
    let spec: Value = http
        .get(format!("{}/api/v1/openapi.json", p.server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let deployment = serde_json::from_str::<Value>(&ok(&p.tend(&["status", "web", "-o", "json"])))
        .unwrap()["deployment"]["id"]
        .as_i64()
        .unwrap_or(1);
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        if ops.get("get").is_none() || path.contains("watch") || path.contains("follow") {
            continue;
        }
        let url = path
            .replace("{name}", "web")
            .replace("{team}", "payments")
            .replace("{id}", &deployment.to_string())
            .replace("{version}", "1");
        if url.contains('{') {
            continue;
        }
        let resp = http
            .get(format!("{}{url}", p.server.url))
            .bearer_auth(&p.admin)
            .timeout(Duration::from_secs(5))
            .send();
        let Ok(resp) = resp else { continue };
        let body = resp.bytes().unwrap_or_default();
        assert!(
            !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "GET {url} returns the value"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} endpoints checked");

    // Not a byte on disk: database, WAL, key file, log segments, the
    // instance's output files and every file the runtime keeps.
    let hits = files_containing(&p.server.data_dir, secret.as_bytes());
    assert!(hits.is_empty(), "the value is on disk in {hits:?}");
    // The key file exists, readable by its owner only.
    let mode = std::fs::metadata(p.server.data_dir.join("master.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

/// Flips one byte of the stored ciphertext of `name` v`version`.
fn tamper(data_dir: &Path, service: &str, name: &str, version: u32) {
    let db = rusqlite::Connection::open(data_dir.join("state.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let sid: i64 = db
        .query_row("SELECT id FROM services WHERE name = ?1", [service], |r| {
            r.get(0)
        })
        .unwrap();
    let mut ct: Vec<u8> = db
        .query_row(
            "SELECT ciphertext FROM secret_values WHERE service_id = ?1 AND name = ?2 AND version = ?3",
            rusqlite::params![sid, name, version],
            |r| r.get(0),
        )
        .unwrap();
    ct[4] ^= 0x01;
    let n = db
        .execute(
            "UPDATE secret_values SET ciphertext = ?1 WHERE service_id = ?2 AND name = ?3 AND version = ?4",
            rusqlite::params![ct, sid, name, version],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn rotation_keeps_every_release_working_and_tampering_stops_a_start() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = service("web", "", "DB_PASSWORD");
    let dir = svc.path().to_str().unwrap();
    ok(&p.tend(&["apply", dir]));
    ok(&p.tend(&["secrets", "set", "web", "DB_PASSWORD=first-value"]));
    assert!(ok(&p.deploy(&svc)).contains("web v1 serves"));
    // A change is a new release, rolled out.
    let o = p.tend(&["secrets", "set", "web", "DB_PASSWORD=second-value"]);
    assert!(ok(&o).contains("web v2 serves"), "{}", stderr(&o));
    assert!(instance_env(&p, "web").contains(&"DB_PASSWORD=second-value".to_string()));
    let releases = ok(&p.tend(&["releases", "web", "-o", "json"]));
    let releases: Value = serde_json::from_str(&releases).unwrap();
    assert_eq!(releases[0]["secrets_version"], 2);
    assert_eq!(releases[1]["secrets_version"], 1);

    // Rotate: the running instance is untouched, the key file holds one new key.
    let key_before = std::fs::read(p.server.data_dir.join("master.key")).unwrap();
    let pid_before = pids(&p.status("web"));
    let rotated: Value =
        serde_json::from_str(&ok(&p.tend(&["server", "rotate-key", "-o", "json"]))).unwrap();
    assert_eq!(rotated["data_keys"], 2);
    let key_after = std::fs::read(p.server.data_dir.join("master.key")).unwrap();
    assert_ne!(key_before, key_after);
    assert_eq!(pids(&p.status("web")), pid_before);

    // The old release starts with the re-wrapped key, and so does the new one.
    let o = p.tend(&["rollback", "web", "--to", "1"]);
    assert!(ok(&o).contains("serves"), "{}", stderr(&o));
    assert!(instance_env(&p, "web").contains(&"DB_PASSWORD=first-value".to_string()));
    let o = p.tend(&["rollback", "web", "--to", "2"]);
    assert!(ok(&o).contains("serves"), "{}", stderr(&o));
    assert!(instance_env(&p, "web").contains(&"DB_PASSWORD=second-value".to_string()));
    // A server restart reads the rotated key file.
    let mut p = p;
    p.server.restart();
    let o = p.tend(&["restart", "web"]);
    assert!(ok(&o).contains("serves"), "{}", stderr(&o));

    // One flipped byte: the new instance refuses to start and says why.
    tamper(&p.server.data_dir, "web", "DB_PASSWORD", 2);
    let serving = pids(&p.status("web"));
    let o = p.tend(&["restart", "web"]);
    assert!(!o.status.success(), "a tampered release must not roll out");
    let events = ok(&p.tend(&["events", "web", "-n", "200"]));
    assert!(events.contains("instance.refused"), "{events}");
    assert!(
        events.contains("secret `DB_PASSWORD` v2 of web cannot be decrypted"),
        "{events}"
    );
    assert!(!events.contains("second-value"));
    // The instance that was serving still is.
    assert_eq!(pids(&p.status("web")), serving);
}

#[test]
fn other_teams_are_refused_and_audited() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    ok(&p.tend(&["teams", "create", "search"]));
    let created: Value = serde_json::from_str(&ok(&p.tend(&[
        "tokens", "create", "--name", "eve", "--team", "search", "-o", "json",
    ])))
    .unwrap();
    let eve = created["token"].as_str().unwrap().to_string();
    let svc = service("web", "", "");
    ok(&p.tend(&["apply", svc.path().to_str().unwrap()]));
    ok(&p.tend(&["secrets", "set", "web", "K=v", "--no-deploy"]));

    for args in [
        vec!["secrets", "set", "web", "K=stolen"],
        vec!["secrets", "web"],
        vec!["secrets", "unset", "web", "K"],
    ] {
        let o = p.server.cli(&eve, &args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("owned by team `payments`"),
            "{}",
            stderr(&o)
        );
    }
    let audit: Value =
        serde_json::from_str(&ok(&p.tend(&["audit", "-o", "json", "-n", "100"]))).unwrap();
    let denied: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "eve" && e["outcome"] == "denied")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        denied.iter().filter(|a| **a == "service.secrets").count(),
        2,
        "{denied:?}"
    );
    assert!(denied.contains(&"service.secrets.list"), "{denied:?}");
    // Only admins rotate the key.
    let o = p.server.cli(&eve, &["server", "rotate-key"]);
    assert_eq!(o.status.code(), Some(4));
}

#[test]
fn without_a_key_the_server_runs_and_secrets_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such.key");
    let server = TestServer::start_with(&["--master-key-file", missing.to_str().unwrap()]);
    let admin = server.admin_token();
    ok(&server.cli(&admin, &["teams", "create", "payments"]));
    let svc = service("web", "", "");
    ok(&server.cli(&admin, &["apply", svc.path().to_str().unwrap()]));
    let o = server.cli(&admin, &["secrets", "set", "web", "K=v"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no master key") && err.contains("no-such.key"),
        "{err}"
    );
    // The rest of the platform works, and no key file was made up.
    ok(&server.cli(&admin, &["secrets", "web"]));
    assert!(!missing.exists());
}
