//! Valid manifests: what they parse to, defaults, loading from disk, JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use tend_core::{ServiceName, TeamName};
use tend_manifest::*;

/// The example from DESIGN.md, verbatim.
const DESIGN_EXAMPLE: &str = r#"[service]
name  = "checkout"
owner = "payments"                 # the team paged for it
description = "Takes orders"
runbook = "docs/runbook.md"

[build]
command = "cargo build --release"

[run]
command   = "./target/release/checkout"   # gets $PORT
instances = 2

[health]
http = "/healthz"                  # or tcp = true, or exec = "..."
interval = "2s"

[http]
host = "checkout.localhost"        # the router sends this host here

[deploy]
strategy = "rolling"               # max_surge = 1, max_unavailable = 0
auto_rollback = true

[env]
LOG_LEVEL = "info"

[[alerts]]
name = "slow-checkout"
expr = 'histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[5m])) > 0.5'
for  = "2m"
severity = "page"
"#;

const MINIMAL: &str =
    "[service]\nname = \"web\"\nowner = \"team-a\"\n\n[run]\ncommand = \"./web\"\n";

fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).expect("valid service name")
}

fn team(s: &str) -> TeamName {
    TeamName::parse(s).expect("valid team name")
}

fn design_spec() -> ServiceSpec {
    ServiceSpec {
        service: ServiceSection {
            name: name("checkout"),
            owner: team("payments"),
            description: "Takes orders".into(),
            runbook: Some("docs/runbook.md".into()),
        },
        build: Some(BuildSection {
            command: "cargo build --release".into(),
        }),
        run: RunSection {
            command: "./target/release/checkout".into(),
            instances: 2,
            grace_period: Duration::from_secs(10),
            memory: None,
            cpus: None,
        },
        health: Some(HealthSection {
            check: HealthCheck::Http {
                path: "/healthz".into(),
            },
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            start_period: Duration::from_secs(30),
        }),
        http: HttpSection {
            host: Some("checkout.localhost".into()),
            paths: vec!["/".into()],
        },
        deploy: DeploySection {
            strategy: DeployStrategy::Rolling,
            max_surge: 1,
            max_unavailable: 0,
            auto_rollback: true,
            healthy_deadline: Duration::from_secs(60),
            verify: Duration::from_secs(10),
        },
        env: BTreeMap::from([("LOG_LEVEL".to_string(), "info".to_string())]),
        alerts: vec![AlertRule {
            name: "slow-checkout".into(),
            expr: "histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[5m])) > 0.5"
                .into(),
            for_: Duration::from_secs(120),
            keep_firing_for: Duration::ZERO,
            severity: Severity::Page,
            summary: None,
            description: None,
            labels: BTreeMap::new(),
            logs: None,
        }],
        metrics: None,
        alert_defaults: AlertDefaults::default(),
        secrets: SecretsSection::default(),
    }
}

#[test]
fn design_example_parses_to_the_expected_spec() {
    let spec = parse(DESIGN_EXAMPLE, "tend.toml").expect("the design example is valid");
    assert_eq!(spec, design_spec());
    assert_eq!(spec.name().as_str(), "checkout");
    assert_eq!(spec.owner().as_str(), "payments");
}

#[test]
fn absent_sections_get_defaults() {
    let spec = parse(MINIMAL, "tend.toml").expect("minimal manifest is valid");
    assert_eq!(
        spec,
        ServiceSpec {
            service: ServiceSection {
                name: name("web"),
                owner: team("team-a"),
                description: String::new(),
                runbook: None,
            },
            build: None,
            run: RunSection {
                command: "./web".into(),
                instances: DEFAULT_INSTANCES,
                grace_period: DEFAULT_GRACE_PERIOD,
                memory: None,
                cpus: None,
            },
            health: None,
            http: HttpSection {
                host: None,
                paths: vec!["/".into()],
            },
            deploy: DeploySection::default(),
            env: BTreeMap::new(),
            alerts: vec![],
            metrics: None,
            alert_defaults: AlertDefaults::default(),
            secrets: SecretsSection::default(),
        }
    );
}

#[test]
fn every_field_can_be_set() {
    let source = r#"
[service]
name = "api"
owner = "core"

[run]
command = "bin/api --port $PORT"
instances = 0
grace_period = "1m30s"
memory = "1.5GiB"
cpus = 2

[health]
exec = "bin/check"
interval = "500ms"
timeout = "250ms"
healthy_threshold = 2
unhealthy_threshold = 5
start_period = "0s"

[http]
host = "api.example.com"
paths = ["/api", "/v2"]

[deploy]
max_surge = 0
max_unavailable = 1
auto_rollback = false
healthy_deadline = "2m"
verify = "5s"

[env]
TEXT = "a b"
COUNT = 3
RATIO = 1.0
ENABLED = true

[[alerts]]
name = "errors"
expr = 'rate(errors_total[5m]) > 1'
keep_firing_for = "10m"
summary = "Errors"
description = "Too many errors"
labels = { tier = "backend" }

[[alerts]]
name = "info-only"
expr = "up == 0"
severity = "info"

[alerts.labels]
region = "eu"
"#;
    let spec = parse(source, "tend.toml").expect("valid");
    assert_eq!(spec.run.instances, 0);
    assert_eq!(spec.run.grace_period, Duration::from_secs(90));
    assert_eq!(spec.run.memory, Some(3 << 29));
    assert_eq!(spec.run.cpus, Some(2.0));
    let health = spec.health.expect("health");
    assert_eq!(
        health.check,
        HealthCheck::Exec {
            command: "bin/check".into()
        }
    );
    assert_eq!(health.interval, Duration::from_millis(500));
    assert_eq!(health.timeout, Duration::from_millis(250));
    assert_eq!(
        (health.healthy_threshold, health.unhealthy_threshold),
        (2, 5)
    );
    assert_eq!(health.start_period, Duration::ZERO);
    assert_eq!(spec.http.host.as_deref(), Some("api.example.com"));
    assert_eq!(spec.http.paths, ["/api", "/v2"]);
    assert_eq!(
        spec.deploy,
        DeploySection {
            strategy: DeployStrategy::Rolling,
            max_surge: 0,
            max_unavailable: 1,
            auto_rollback: false,
            healthy_deadline: Duration::from_secs(120),
            verify: Duration::from_secs(5),
        }
    );
    // Values are stringified; the map is sorted by key.
    let env: Vec<(&str, &str)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("COUNT", "3"),
            ("ENABLED", "true"),
            ("RATIO", "1.0"),
            ("TEXT", "a b")
        ]
    );
    assert_eq!(spec.alerts.len(), 2);
    let errors = &spec.alerts[0];
    assert_eq!(errors.severity, Severity::Ticket);
    assert_eq!(errors.for_, Duration::ZERO);
    assert_eq!(errors.keep_firing_for, Duration::from_secs(600));
    assert_eq!(errors.summary.as_deref(), Some("Errors"));
    assert_eq!(errors.description.as_deref(), Some("Too many errors"));
    assert_eq!(errors.labels["tier"], "backend");
    assert_eq!(spec.alerts[1].severity, Severity::Info);
    assert_eq!(spec.alerts[1].labels["region"], "eu");
}

#[test]
fn inline_tables_and_dotted_keys_are_accepted() {
    let source = r#"
service = { name = "web", owner = "team-a" }
run.command = "./web"
run.instances = 3
health = { tcp = true }
alerts = [{ name = "down", expr = "up == 0" }]
"#;
    let spec = parse(source, "tend.toml").expect("valid");
    assert_eq!(spec.name().as_str(), "web");
    assert_eq!(spec.run.instances, 3);
    assert_eq!(spec.health.map(|h| h.check), Some(HealthCheck::Tcp));
    assert_eq!(spec.alerts[0].name, "down");
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let spec = parse(&format!("\u{feff}{MINIMAL}"), "tend.toml").expect("valid");
    assert_eq!(spec.name().as_str(), "web");
    let err = parse("\u{feff}[servic]\n", "tend.toml").expect_err("invalid");
    assert_eq!((err.problems()[0].line, err.problems()[0].column), (1, 1));
    let unknown = err.problems().last().expect("problems");
    assert_eq!(unknown.message, "unknown section [servic]");
    // The BOM takes 3 bytes but no column: `servic` starts at column 2.
    assert_eq!((unknown.line, unknown.column), (1, 2));
}

#[test]
fn spec_json_round_trips_and_is_readable() {
    let spec = parse(DESIGN_EXAMPLE, "tend.toml").expect("valid");
    let json = serde_json::to_value(&spec).expect("serialize");
    assert_eq!(json["run"]["grace_period"], "10s");
    assert_eq!(
        json["health"]["check"],
        serde_json::json!({"kind": "http", "path": "/healthz"})
    );
    assert_eq!(json["alerts"][0]["for"], "2m");
    assert_eq!(json["alerts"][0]["severity"], "page");
    assert_eq!(json["deploy"]["strategy"], "rolling");
    let back: ServiceSpec = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, spec);

    let mut spec = spec;
    spec.run.memory = Some(256 << 20);
    spec.run.grace_period = Duration::from_millis(5_400_500);
    let json = serde_json::to_string(&spec).expect("serialize");
    assert!(json.contains("\"memory\":268435456"), "{json}");
    assert_eq!(
        serde_json::from_str::<ServiceSpec>(&json).expect("deserialize"),
        spec
    );
}

#[test]
fn spec_json_rejects_invalid_names_and_durations() {
    let mut json = serde_json::to_value(parse(MINIMAL, "tend.toml").expect("valid")).expect("json");
    json["run"]["grace_period"] = "10".into();
    assert!(serde_json::from_value::<ServiceSpec>(json.clone()).is_err());
    json["run"]["grace_period"] = "10s".into();
    json["service"]["name"] = "Not Valid".into();
    assert!(serde_json::from_value::<ServiceSpec>(json).is_err());
}

#[test]
fn load_reads_a_file_or_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tend.toml");
    std::fs::write(&file, MINIMAL).expect("write");

    let from_dir = load(dir.path()).expect("load dir");
    assert_eq!(from_dir.path, file);
    assert_eq!(from_dir.source, MINIMAL);
    assert_eq!(from_dir.spec.name().as_str(), "web");

    let from_file = load(&file).expect("load file");
    assert_eq!(from_file, from_dir);
    assert_eq!(resolve_path(dir.path()).expect("resolve"), file);
    assert_eq!(resolve_path(&file).expect("resolve"), file);
}

#[test]
fn load_errors_say_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    match load(dir.path()) {
        Err(e @ LoadError::NoManifest { .. }) => {
            assert_eq!(
                e.to_string(),
                format!("no tend.toml in {}", dir.path().display())
            );
        }
        other => panic!("expected NoManifest, got {other:?}"),
    }
    let missing = dir.path().join("nope.toml");
    assert!(matches!(load(&missing), Err(LoadError::NotFound { path }) if path == missing));

    let file = dir.path().join("tend.toml");
    std::fs::write(&file, b"\xff\xfe").expect("write");
    assert!(matches!(load(&file), Err(LoadError::Io { path, .. }) if path == file));

    std::fs::write(&file, "[run]\ninstance = 1\n").expect("write");
    match load(dir.path()) {
        Err(LoadError::Invalid(e)) => {
            assert_eq!(e.file_name(), file.display().to_string());
            assert_eq!(e.source_text(), "[run]\ninstance = 1\n");
            // Missing [service], missing `command`, unknown `instance`.
            assert_eq!(e.problems().len(), 3, "{}", e.render(false));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn oversized_manifests_are_refused_early() {
    let source = format!("{MINIMAL}#{}\n", "x".repeat(MAX_MANIFEST_BYTES));
    let err = parse(&source, "tend.toml").expect_err("too large");
    assert_eq!(err.problems().len(), 1);
    assert!(err.problems()[0].message.contains("at most"), "{err}");
}

/// docs/manifest.md, whose examples must stay valid.
const DOCS: &str = include_str!("../../../docs/manifest.md");

#[test]
fn every_toml_example_in_the_docs_is_valid() {
    let blocks: Vec<&str> = DOCS
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(blocks.len() >= 2, "docs lost their examples");
    for block in blocks {
        if let Err(e) = parse(block, "docs/manifest.md") {
            panic!("{}", e.render(false));
        }
    }
}

#[test]
fn openapi_schema_describes_durations_as_strings() {
    use utoipa::PartialSchema;
    let schema = serde_json::to_value(RunSection::schema()).expect("schema serializes");
    assert_eq!(
        schema["properties"]["grace_period"]["type"], "string",
        "{schema}"
    );
    assert_eq!(
        schema["properties"]["grace_period"]["example"], "10s",
        "{schema}"
    );
    let report = serde_json::to_value(ManifestReport::schema()).expect("schema serializes");
    assert!(report["properties"]["problems"].is_object(), "{report}");
}

#[test]
fn metrics_section_says_where_to_scrape() {
    let src = format!("{MINIMAL}\n[metrics]\npath = \"/metrics\"\ninterval = \"30s\"\n");
    let spec = parse(&src, "tend.toml").expect("valid");
    assert_eq!(
        spec.metrics,
        Some(MetricsSection {
            path: "/metrics".into(),
            interval: Some(Duration::from_secs(30)),
        })
    );
    // Stored specs written before the section existed still read.
    let mut json = serde_json::to_value(&spec).expect("json");
    json.as_object_mut().expect("object").remove("metrics");
    let old: ServiceSpec = serde_json::from_value(json).expect("old spec");
    assert_eq!(old.metrics, None);
    for (bad, says) in [
        ("[metrics]\ninterval = \"10s\"\n", "needs a `path`"),
        ("[metrics]\npath = \"metrics\"\n", "must start with `/`"),
        (
            "[metrics]\npath = \"/m\"\ninterval = \"100ms\"\n",
            "between 1s and 1h",
        ),
        (
            "[metrics]\npath = \"/m\"\nscrape_interval = \"5s\"\n",
            "interval",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}\n{bad}"), "tend.toml").expect_err(bad);
        assert!(
            err.to_string().contains(says) || format!("{err:?}").contains(says),
            "{bad}: {err:?}"
        );
    }
}
