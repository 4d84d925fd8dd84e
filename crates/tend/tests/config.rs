//! Config vars: every change a release, rolled out and rolled back like a deploy.

mod common;

use common::platform::*;
use common::*;
use serde_json::Value;

/// The environment of the service's running instance process.
fn instance_env(p: &Platform, name: &str) -> Vec<String> {
    let s = p.status(name);
    let pid = pids(&s).into_iter().next().expect("a running instance");
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn config_changes_are_releases_and_bad_ones_roll_back() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 1, &[("DB_HOST", "localhost")], "");
    ok(&p.deploy(&svc));

    // Set with a reference: a new release, rolled out, the instance sees it resolved.
    let o = p.tend(&[
        "config",
        "set",
        "web",
        "DB_HOST=db.internal",
        "DATABASE_URL=postgres://${DB_HOST}/app",
    ]);
    assert!(ok(&o).contains("web v2 serves"), "{}", stderr(&o));
    let env = instance_env(&p, "web");
    assert!(
        env.contains(&"DATABASE_URL=postgres://db.internal/app".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&"DB_HOST=db.internal".to_string()));
    let listed: Value =
        serde_json::from_str(&ok(&p.tend(&["config", "web", "-o", "json"]))).unwrap();
    assert_eq!(listed["version"], 1);
    assert_eq!(listed["vars"]["DB_HOST"], "db.internal");
    let releases = ok(&p.tend(&["releases", "web"]));
    assert!(
        releases.contains("config v1: set DATABASE_URL, DB_HOST"),
        "{releases}"
    );
    assert!(
        !releases.contains("db.internal"),
        "values stay out of the release list: {releases}"
    );
    let events = ok(&p.tend(&["events", "web"]));
    assert!(
        events.contains("config.changed") && !events.contains("db.internal"),
        "{events}"
    );

    // A value that breaks the service: rolled back, the old config serves.
    let o = p.tend(&["config", "set", "web", "SAMPLE_CRASH_AT_BOOT=1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("rolled back"), "{}", stderr(&o));
    let s = p.wait_status("web", "v2 serving again", |s| {
        s["release"] == 2 && ready_count(s) == 1
    });
    assert_eq!(instances(&s).len(), 1);
    assert!(!instance_env(&p, "web")
        .iter()
        .any(|v| v.starts_with("SAMPLE_CRASH_AT_BOOT")));

    // Unset; staged changes wait for the next deploy.
    ok(&p.tend(&["config", "unset", "web", "SAMPLE_CRASH_AT_BOOT"]));
    let o = p.tend(&["config", "set", "web", "STAGED=yes", "--no-deploy"]);
    assert!(ok(&o).contains("staged"), "{}", stdout(&o));
    assert!(!instance_env(&p, "web").contains(&"STAGED=yes".to_string()));
    ok(&p.deploy(&svc));
    assert!(instance_env(&p, "web").contains(&"STAGED=yes".to_string()));
}

#[test]
fn bad_config_is_refused_and_other_teams_are_kept_out() {
    let p = Platform::start();
    let _cleanup = KillInstances(p.server.data_dir.clone());
    let svc = ServiceDir::new("web", 1, &[], "");
    ok(&p.deploy(&svc));
    let o = p.tend(&["config", "set", "web", "A=${B}", "B=x${A}"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("loop"), "{}", stderr(&o));
    let o = p.tend(&["config", "set", "web", "PORT=1"]);
    assert!(stderr(&o).contains("set by the platform"), "{}", stderr(&o));
    let o = p.tend(&["config", "set", "web", "1BAD=x"]);
    assert!(
        stderr(&o).contains("not a valid variable name"),
        "{}",
        stderr(&o)
    );
    let o = p.tend(&["config", "unset", "web", "NOPE"]);
    assert!(stderr(&o).contains("not set"), "{}", stderr(&o));
    let dotenv = svc.path().join(".env");
    std::fs::write(&dotenv, "# comment\nexport ONE=1\nTWO=\"two words\"\n").unwrap();
    ok(&p.tend(&[
        "config",
        "set",
        "web",
        "--from-file",
        dotenv.to_str().unwrap(),
    ]));
    let listed: Value =
        serde_json::from_str(&ok(&p.tend(&["config", "web", "-o", "json"]))).unwrap();
    assert_eq!(listed["vars"]["TWO"], "two words");

    ok(&p.tend(&["teams", "create", "search"]));
    let bob = ok(&p.tend(&["tokens", "create", "--name", "bob", "--team", "search"]))
        .trim()
        .to_string();
    for args in [
        vec!["config", "web"],
        vec!["config", "set", "web", "X=1"],
        vec!["config", "unset", "web", "ONE"],
    ] {
        let o = p.server.cli(&bob, &args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", stderr(&o));
    }
}
