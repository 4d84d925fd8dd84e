//! Broken manifests and the diagnostics they must produce.
//!
//! Each case checks the exact line:column of every problem (so a wrong span
//! fails loudly) and snapshots the plain rendering (so wording changes are
//! reviewed). Snapshots live in tests/snapshots/.

use miette::{GraphicalReportHandler, GraphicalTheme};
use tend_manifest::{parse, ManifestError};

/// A valid manifest that the cases below break in one place each.
const BASE: &str = r#"[service]
name = "checkout"
owner = "payments"

[run]
command = "./server"
"#;

struct Case {
    /// Snapshot name.
    name: &'static str,
    /// The manifest.
    source: String,
    /// `(line, column)` of every expected problem, in source order.
    at: &'static [(usize, usize)],
}

fn case(name: &'static str, source: impl Into<String>, at: &'static [(usize, usize)]) -> Case {
    Case {
        name,
        source: source.into(),
        at,
    }
}

/// BASE followed by `extra` (so line 7 is the first line of `extra`).
fn base_plus(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "bad_toml_syntax",
            "[service]\nname = \"checkout\"\nowner = payments\n",
            &[(3, 9)],
        ),
        case(
            "bad_toml_unclosed_header",
            "[service\nname = \"checkout\"\n",
            &[(1, 9)],
        ),
        case(
            "bad_toml_duplicate_key",
            base_plus("instances = 1\ninstances = 2\n"),
            &[(8, 1)],
        ),
        case(
            "unknown_key_with_suggestion",
            format!("# checkout service\n\n{BASE}\ninstance = 2\n"),
            &[(10, 1)],
        ),
        case(
            "unknown_key_without_suggestion",
            base_plus("banana = 1\n"),
            &[(7, 1)],
        ),
        case(
            "key_in_wrong_section",
            base_plus("interval = \"2s\"\n"),
            &[(7, 1)],
        ),
        case(
            "unknown_section",
            base_plus("\n[healthcheck]\nhttp = \"/healthz\"\n"),
            &[(8, 2)],
        ),
        case(
            "unknown_section_without_suggestion",
            base_plus("\n[database]\nurl = \"postgres://\"\n"),
            &[(8, 2)],
        ),
        case(
            "top_level_key_belongs_in_section",
            format!("instances = 2\n{BASE}"),
            &[(1, 1)],
        ),
        case(
            "wrong_type_quoted_integer",
            base_plus("instances = \"2\"\n"),
            &[(7, 13)],
        ),
        case(
            "wrong_type_boolean_for_integer",
            base_plus("instances = true\n"),
            &[(7, 13)],
        ),
        case(
            "wrong_type_section_is_a_string",
            format!("deploy = \"rolling\"\n{BASE}"),
            &[(1, 10)],
        ),
        case(
            "instances_out_of_range",
            base_plus("instances = 150\n"),
            &[(7, 13)],
        ),
        case(
            "bad_duration",
            base_plus("\n[health]\nhttp = \"/healthz\"\ninterval = \"2 parsecs\"\n"),
            &[(10, 12)],
        ),
        case(
            "duration_without_unit",
            base_plus("grace_period = 30\n\n[health]\ntcp = true\ninterval = \"2\"\n"),
            &[(7, 16), (11, 12)],
        ),
        case(
            "zero_interval",
            base_plus("\n[health]\ntcp = true\ninterval = \"0s\"\ntimeout = \"0\"\n"),
            &[(10, 12), (11, 11)],
        ),
        case(
            "bad_service_name",
            BASE.replace("\"checkout\"", "\"Check_Out\""),
            &[(2, 8)],
        ),
        case(
            "bad_service_name_without_suggestion",
            BASE.replace("\"checkout\"", "\"123\""),
            &[(2, 8)],
        ),
        case(
            "missing_owner",
            BASE.replace("owner = \"payments\"\n", ""),
            &[(1, 1)],
        ),
        case(
            "missing_run",
            "[service]\nname = \"checkout\"\nowner = \"payments\"\n",
            &[(1, 1)],
        ),
        case("empty_file", "", &[(1, 1), (1, 1)]),
        case(
            "empty_command",
            BASE.replace("\"./server\"", "\"  \""),
            &[(6, 11)],
        ),
        case(
            "health_two_checks",
            base_plus("\n[health]\nhttp = \"/healthz\"\ntcp = true\n"),
            &[(10, 1)],
        ),
        case(
            "health_no_check",
            base_plus("\n[health]\ninterval = \"5s\"\n"),
            &[(8, 1)],
        ),
        case(
            "health_tcp_false",
            base_plus("\n[health]\ntcp = false\n"),
            &[(9, 7)],
        ),
        case(
            "health_path_without_slash",
            base_plus("\n[health]\nhttp = \"healthz\"\n"),
            &[(9, 8)],
        ),
        case(
            "reserved_env_keys",
            base_plus("\n[env]\nPORT = \"8080\"\nTEND_TOKEN = \"x\"\nLOG_LEVEL = \"info\"\n"),
            &[(9, 1), (10, 1)],
        ),
        case(
            "invalid_env_key_and_value",
            base_plus("\n[env]\n\"LOG-LEVEL\" = \"info\"\nHOSTS = [\"a\", \"b\"]\n"),
            &[(9, 1), (10, 9)],
        ),
        case(
            "duplicate_alert_name",
            base_plus(
                "\n[[alerts]]\nname = \"slow\"\nexpr = \"up == 0\"\n\n[[alerts]]\nname = \"slow\"\nexpr = \"up == 1\"\n",
            ),
            &[(13, 8)],
        ),
        case(
            "bad_severity",
            base_plus("\n[[alerts]]\nname = \"down\"\nexpr = \"up == 0\"\nseverity = \"critical\"\n"),
            &[(11, 12)],
        ),
        case(
            "severity_typo",
            base_plus("\n[[alerts]]\nname = \"down\"\nexpr = \"up == 0\"\nseverity = \"pgae\"\n"),
            &[(11, 12)],
        ),
        case(
            "alert_missing_expr_and_bad_label",
            base_plus("\n[[alerts]]\nname = \"down\"\nlabels = { severity = \"high\", tier = 1 }\n"),
            &[(8, 1), (10, 12), (10, 38)],
        ),
        case(
            "alerts_single_brackets",
            base_plus("\n[alerts]\nname = \"down\"\n"),
            &[(8, 1)],
        ),
        case(
            "surge_and_unavailable_zero",
            base_plus("\n[deploy]\nmax_surge = 0\n"),
            &[(9, 13)],
        ),
        case(
            "unknown_strategy",
            base_plus("\n[deploy]\nstrategy = \"blue-green\"\n"),
            &[(9, 12)],
        ),
        case(
            "memory_ambiguous_unit",
            base_plus("memory = \"256m\"\ncpus = 0\n"),
            &[(7, 10), (8, 8)],
        ),
        case(
            "http_bad_host_and_path",
            base_plus("\n[http]\nhost = \"Checkout.Localhost\"\npaths = [\"/api\", \"web\"]\n"),
            &[(9, 8), (10, 18)],
        ),
        case(
            "columns_count_characters",
            "service = { description = \"Café ☕ façade\", name = 5, owner = \"payments\" }\n[run]\ncommand = \"./server\"\n",
            // Byte offset 54, but the 51st character: columns count characters.
            &[(1, 51)],
        ),
        case(
            "crlf_line_endings",
            BASE.replace('\n', "\r\n") + "instance = 2\r\n",
            &[(7, 1)],
        ),
        case(
            "many_problems_at_once",
            "[service]\nname = \"Checkout\"\n\n[run]\ncommand = \"./server\"\ninstance = 2\ngrace_period = 10\n\n[health]\nhttp = \"/healthz\"\nexec = \"./check\"\n\n[env]\nPORT = \"1\"\n",
            &[(1, 1), (2, 8), (6, 1), (7, 16), (11, 1), (14, 1)],
        ),
    ]
}

fn error_of(c: &Case) -> ManifestError {
    match parse(&c.source, "tend.toml") {
        Ok(spec) => panic!("case {} parsed but should not have: {spec:#?}", c.name),
        Err(e) => e,
    }
}

#[test]
fn broken_manifests_report_every_problem_where_it_is() {
    let mut failures = Vec::new();
    for c in cases() {
        let err = error_of(&c);
        let at: Vec<(usize, usize)> = err.problems().iter().map(|p| (p.line, p.column)).collect();
        if at != c.at {
            failures.push(format!(
                "{}: expected problems at {:?}, got {:?}\n{}",
                c.name,
                c.at,
                at,
                err.render(false)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn broken_manifests_render_as_snapshotted() {
    for c in cases() {
        let err = error_of(&c);
        let rendered = err.render(false);
        assert!(!rendered.contains('\x1b'), "plain render has ANSI codes");
        for p in err.problems() {
            assert!(
                rendered.contains(&format!("tend.toml:{}:{}", p.line, p.column)),
                "{}: render lacks the location of {p:?}",
                c.name
            );
        }
        insta::assert_snapshot!(c.name, rendered, &c.source);
    }
}

#[test]
fn colour_render_has_the_same_text() {
    for c in cases() {
        let err = error_of(&c);
        let coloured = err.render(true);
        assert!(coloured.contains("\x1b["), "{}: no colour", c.name);
        assert_eq!(strip_ansi(&coloured), err.render(false), "{}", c.name);
    }
}

#[test]
fn miette_shows_every_problem_with_its_location() {
    let c = cases()
        .into_iter()
        .find(|c| c.name == "many_problems_at_once")
        .expect("case exists");
    let err = error_of(&c);
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(200)
        .render_report(&mut out, &err)
        .expect("render");
    for p in err.problems() {
        assert!(
            out.contains(&p.message),
            "missing {:?} in\n{out}",
            p.message
        );
        assert!(
            out.contains(&format!("tend.toml:{}:{}", p.line, p.column)),
            "missing location of {:?} in\n{out}",
            p.message
        );
    }
    insta::assert_snapshot!("miette_many_problems", out);
}

#[test]
fn json_report_has_file_and_problems() {
    let c = cases()
        .into_iter()
        .find(|c| c.name == "unknown_key_with_suggestion")
        .expect("case exists");
    let json = error_of(&c).to_json();
    assert_eq!(
        json,
        serde_json::json!({
            "file": "tend.toml",
            "problems": [{
                "line": 10,
                "column": 1,
                "message": "unknown key `instance` in [run]",
                "label": "unknown key",
                "help": "did you mean `instances`?",
            }]
        })
    );
}

#[test]
fn display_names_the_first_problem_and_counts_the_rest() {
    let err = parse("", "svc/tend.toml").expect_err("empty manifest is invalid");
    assert_eq!(
        err.to_string(),
        "svc/tend.toml:1:1: missing required section [service] (and 1 more problem)"
    );
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
