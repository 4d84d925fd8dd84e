//! The CLI's conventions: flags anywhere, config from login, exit codes,
//! `-o json`, NO_COLOR, completions, validate, and the demo.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

#[test]
fn validate_exit_codes_and_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let good = repo_root().join("examples/services/checkout");
    let o = cli_with(&["validate", good.to_str().unwrap()], &[]);
    assert!(ok(&o).contains("valid manifest for service `checkout`"));

    let bad = dir.path().join("tend.toml");
    std::fs::write(
        &bad,
        "[service]\nname = \"web\"\nowner = \"web\"\n\n[run]\ncommand = \"./web\"\ninstance = 2\n",
    )
    .unwrap();
    // A directory or the file itself.
    for arg in [dir.path(), bad.as_path()] {
        let o = cli_with(&["validate", arg.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(err.contains("tend.toml:7:1"), "{err}");
        assert!(err.contains("instance = 2"), "the line is shown: {err}");
        assert!(err.contains('^'), "a caret points at it: {err}");
        assert!(err.contains("did you mean `instances`?"), "{err}");
        assert!(
            !err.contains('\u{1b}'),
            "NO_COLOR means no escape codes: {err}"
        );
    }
    let o = cli_with(
        &["validate", dir.path().join("nope").to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

#[test]
fn flags_before_or_after_the_subcommand_and_json_output() {
    let server = TestServer::start();
    let token = server.admin_token();
    let before = cli_with(
        &[
            "--url",
            &server.url,
            "--token",
            &token,
            "-o",
            "json",
            "teams",
        ],
        &[],
    );
    let after = cli_with(
        &[
            "teams",
            "list",
            "--url",
            &server.url,
            "--token",
            &token,
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(ok(&before), ok(&after));
    let v: Value = serde_json::from_str(&stdout(&before)).expect("-o json prints JSON");
    assert!(v.as_array().unwrap().is_empty());
}

#[test]
fn login_saves_url_and_token_0600_and_later_commands_use_them() {
    let server = TestServer::start();
    let token = server.admin_token();
    let cfg = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(tend_bin());
        cmd.args(args)
            .env_remove("TEND_URL")
            .env_remove("TEND_TOKEN")
            .env("XDG_CONFIG_HOME", cfg.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    };
    // A wrong token is refused and nothing is saved.
    let o = run(&["login", "--url", &server.url], Some("tend_wrong\n"));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(!cfg.path().join("tend/config.toml").exists());
    // The token from stdin keeps it out of shell history.
    let o = run(
        &["login", "--url", &server.url],
        Some(&format!("{token}\n")),
    );
    assert!(ok(&o).contains("as `admin`"));
    let path = cfg.path().join("tend/config.toml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let o = run(&["whoami", "-o", "json"], None);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["name"], "admin");
}

#[test]
fn errors_are_one_line_with_meaningful_exit_codes() {
    // Nothing listens on port 1: unreachable is exit code 3.
    let o = cli_with(
        &[
            "services",
            "--url",
            "http://127.0.0.1:1",
            "--token",
            "tend_x",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).starts_with("error: cannot reach the tend server"),
        "{}",
        stderr(&o)
    );
    // No token at all.
    let o = cli_with(&["services", "--url", "http://127.0.0.1:1"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tend login"), "{}", stderr(&o));
    // Usage errors are clap's exit code 2.
    let o = cli_with(&["tokens", "create"], &[]);
    assert_eq!(o.status.code(), Some(2));
    // Bad names are caught before any request, with a suggestion.
    let o = cli_with(
        &[
            "teams",
            "create",
            "Pay Ments",
            "--url",
            "http://127.0.0.1:1",
            "--token",
            "t",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("try `pay-ments`"), "{}", stderr(&o));
}

#[test]
fn completions_and_help() {
    let o = cli_with(&["completions", "bash"], &[]);
    assert!(ok(&o).contains("_tend()"), "bash completion function");
    let o = cli_with(&["--help"], &[]);
    let help = ok(&o);
    for cmd in [
        "server",
        "demo",
        "login",
        "validate",
        "apply",
        "services",
        "teams",
        "tokens",
        "audit",
        "completions",
    ] {
        assert!(help.contains(cmd), "--help lists {cmd}");
    }
    assert!(help.contains("Exit codes"));
}

#[test]
fn apply_through_the_cli_shows_server_diagnostics_and_results() {
    let server = TestServer::start();
    let admin = server.admin_token();
    ok(&server.cli(&admin, &["teams", "create", "payments"]));
    let checkout = repo_root().join("examples/services/checkout");
    let o = server.cli(&admin, &["apply", checkout.to_str().unwrap()]);
    assert!(
        ok(&o).contains("service/checkout created"),
        "{}",
        stdout(&o)
    );
    let o = server.cli(&admin, &["apply", checkout.to_str().unwrap(), "-o", "json"]);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["outcome"], "unchanged");
    // The owner team must exist.
    let catalog = repo_root().join("examples/services/catalog");
    let o = server.cli(&admin, &["apply", catalog.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("tend teams create storefront"));
}

#[test]
fn demo_loads_the_examples_through_the_api() {
    let data = tempfile::tempdir().unwrap();
    let o = cli_with(
        &[
            "demo",
            "--exit",
            "--listen",
            "127.0.0.1:0",
            "--router-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--examples",
            repo_root().join("examples").to_str().unwrap(),
        ],
        &[],
    );
    let out = ok(&o);
    assert!(out.contains("tend demo is running"), "{out}");
    assert!(out.contains("alice:") && out.contains("bob:"), "{out}");
    // The state it left behind has the teams and services, applied by admin.
    let server = TestServer::start_in(data.path());
    let admin = server.admin_token();
    let v: Value =
        serde_json::from_str(&ok(&server.cli(&admin, &["services", "-o", "json"]))).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["catalog", "checkout", "ledger"]);
    let audit = ok(&server.cli(&admin, &["audit", "-n", "100"]));
    assert!(audit.contains("service.deploy"), "{audit}");
    // Each team has someone on call.
    let oncall = ok(&server.cli(&admin, &["oncall", "payments"]));
    assert!(oncall.contains("on call:  alice"), "{oncall}");
    assert!(
        out.contains("deployed checkout") && out.contains("succeeded"),
        "{out}"
    );
    assert!(out.contains("http://checkout.localhost:"), "{out}");
}
