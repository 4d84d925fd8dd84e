//! Property tests: no input makes the parser or the renderers panic, and every
//! reported location lies inside the source.

use miette::{GraphicalReportHandler, GraphicalTheme};
use proptest::prelude::*;
use tend_manifest::{parse, ServiceSpec};

/// Parses `source` and checks everything that must hold whatever it contains.
fn check(source: &str) -> Result<(), TestCaseError> {
    match parse(source, "tend.toml") {
        Ok(spec) => {
            let json =
                serde_json::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: ServiceSpec =
                serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.name(), spec.name());
        }
        Err(err) => {
            prop_assert!(!err.problems().is_empty());
            let lines: Vec<&str> = source.split('\n').collect();
            for p in err.problems() {
                prop_assert!(
                    p.span.start <= p.span.end && p.span.end <= source.len(),
                    "{p:?}"
                );
                prop_assert!(source.is_char_boundary(p.span.start), "{p:?}");
                prop_assert!(source.is_char_boundary(p.span.end), "{p:?}");
                prop_assert!(p.line >= 1 && p.line <= lines.len(), "{p:?}");
                let line = lines[p.line - 1];
                let width = line.chars().filter(|c| *c != '\u{feff}').count();
                prop_assert!(p.column >= 1 && p.column <= width + 1, "{p:?} in {line:?}");
            }
            let plain = err.render(false);
            // Control characters from the input must never reach a terminal.
            prop_assert!(!plain.contains('\x1b'), "{plain}");
            for p in err.problems() {
                let location = format!("tend.toml:{}:{}", p.line, p.column);
                prop_assert!(plain.contains(&location));
            }
            let _ = err.render(true);
            let _ = err.to_json();
            let _ = err.to_string();
            let mut out = String::new();
            GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
                .render_report(&mut out, &err)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    Ok(())
}

/// Pieces of TOML that reach deep into the schema when glued together.
fn fragment() -> impl Strategy<Value = String> {
    let headers = prop::sample::select(vec![
        "[service]",
        "[build]",
        "[run]",
        "[health]",
        "[http]",
        "[deploy]",
        "[env]",
        "[[alerts]]",
        "[alerts]",
        "[alerts.labels]",
        "[run.limits]",
        "[[run]]",
        "[x]",
        "[",
        "]",
        "[[",
        "[\"a]b\"]",
        "[ service ]",
    ])
    .prop_map(str::to_string);
    let keys = prop::sample::select(vec![
        "name",
        "owner",
        "description",
        "runbook",
        "command",
        "instances",
        "grace_period",
        "memory",
        "cpus",
        "http",
        "tcp",
        "exec",
        "interval",
        "timeout",
        "healthy_threshold",
        "unhealthy_threshold",
        "start_period",
        "host",
        "paths",
        "strategy",
        "max_surge",
        "max_unavailable",
        "auto_rollback",
        "healthy_deadline",
        "expr",
        "for",
        "keep_firing_for",
        "severity",
        "summary",
        "labels",
        "PORT",
        "TEND_X",
        "LOG_LEVEL",
        "\"é-x\"",
        "run.command",
        "service.name",
        "instance",
        "a.b.c",
        "\"\"",
        "1",
    ]);
    let values = prop::sample::select(vec![
        "\"x\"",
        "\"checkout\"",
        "\"Check_Out\"",
        "\"\"",
        "1",
        "-1",
        "0",
        "150",
        "1.5",
        "nan",
        "inf",
        "true",
        "false",
        "\"2s\"",
        "\"0\"",
        "\"2\"",
        "\"1h30m\"",
        "\"256MiB\"",
        "\"256m\"",
        "\"/healthz\"",
        "\"healthz\"",
        "[\"/\", 1]",
        "[]",
        "{ a = 1 }",
        "{ severity = \"x\", tier = 1 }",
        "'é☕\u{7}'",
        "\"\\u0000\"",
        "9999999999999999999",
        "1979-05-27",
        "\"\"\"multi\nline\"\"\"",
        "\"page\"",
        "\"rolling\"",
        "[[1]]",
        "\"Checkout.Localhost\"",
        "\"\\u001b[2J\"",
    ]);
    prop_oneof![
        3 => headers,
        6 => (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,12}",
        1 => prop::sample::select(vec!["é", "\r\n", "\u{feff}", "\t", "#", "\"", "'", "="])
            .prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn arbitrary_strings_never_panic(source in "\\PC{0,200}") {
        check(&source)?;
    }

    #[test]
    fn toml_like_inputs_never_panic(
        fragments in prop::collection::vec(fragment(), 0..40),
        separator in prop::sample::select(vec!["\n", "\r\n", " ", ""]),
    ) {
        check(&fragments.join(separator))?;
    }

    #[test]
    fn valid_base_with_extra_fragments_never_panics(
        fragments in prop::collection::vec(fragment(), 0..12),
    ) {
        let source = format!(
            "[service]\nname = \"web\"\nowner = \"team\"\n[run]\ncommand = \"./web\"\n{}\n",
            fragments.join("\n")
        );
        check(&source)?;
    }
}
