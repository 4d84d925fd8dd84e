//! The alerting parts of a manifest that need more than the generic getters:
//! PromQL and log-pattern checks of `[[alerts]]`, and `[alert_defaults]`.

use std::ops::Range;

use super::{Got, Tbl, Walker};
use crate::diagnostic::show;
use crate::schema::{closest, list_or};
use crate::spec::{AlertDefaults, LogCondition, DEFAULT_ALERT_NAMES, DEFAULT_LOG_WINDOW};

/// Longest log pattern accepted (a regex is compiled for every evaluation).
const MAX_LOG_PATTERN: usize = 1024;

impl Walker<'_> {
    /// The rule's condition: a PromQL `expr` or a `logs` pattern, exactly one.
    /// Returns the expression (empty for a log rule) and the log condition.
    pub(super) fn alert_condition(&mut self, t: &Tbl) -> Option<(String, Option<LogCondition>)> {
        let expr = self.nonempty_string(t, "expr");
        let logs = self.nonempty_string(t, "logs");
        let window = self.duration(t, "window", false);
        let threshold = self.count(t, "threshold", 1, u32::MAX);
        match (expr, logs) {
            (Got::Ok((expr, span)), Got::Absent) => {
                for key in ["window", "threshold"] {
                    if let Some(item) = t.table.get(key) {
                        let span = self.value_span(t, key, item);
                        self.report(
                            span,
                            format!("`{key}` only applies to log-based rules"),
                            "needs `logs`",
                            Some(format!(
                                "remove `{key}`, or replace `expr` with `logs = '<regex>'`"
                            )),
                        );
                    }
                }
                self.check_promql(&expr, span).then_some((expr, None))
            }
            (Got::Absent, Got::Ok((pattern, span))) => {
                let pattern_ok = self.check_log_pattern(&pattern, span);
                let window = match window {
                    Got::Ok(w) => Some(w),
                    Got::Absent => Some(DEFAULT_LOG_WINDOW),
                    Got::Bad => None,
                };
                let threshold = match threshold {
                    Got::Ok(n) => Some(n),
                    Got::Absent => Some(1),
                    Got::Bad => None,
                };
                if !pattern_ok {
                    return None;
                }
                Some((
                    String::new(),
                    Some(LogCondition {
                        pattern,
                        window: window?,
                        threshold: threshold?,
                    }),
                ))
            }
            (Got::Ok(_), Got::Ok((_, span))) => {
                self.report(
                    span,
                    "an alert has either `expr` or `logs`, not both",
                    "second condition",
                    Some("split it into two [[alerts]] entries".into()),
                );
                None
            }
            (Got::Absent, Got::Absent) => {
                self.report(
                    t.header.clone(),
                    format!("missing required key `expr` in {}", t.name),
                    "this section needs `expr`",
                    Some(
                        "add a PromQL condition, e.g. `expr = 'rate(http_requests_total{code=~\"5..\"}[5m]) > 1'`, \
                         or a log condition, e.g. `logs = 'panic'`"
                            .into(),
                    ),
                );
                None
            }
            _ => None,
        }
    }

    /// Reports a PromQL expression that does not parse, pointing at it.
    fn check_promql(&mut self, expr: &str, span: Range<usize>) -> bool {
        match promql_parser::parser::parse(expr) {
            Ok(_) => true,
            Err(e) => {
                self.report(
                    span,
                    format!("invalid PromQL in `expr`: {e}"),
                    "does not parse",
                    Some("check it with `tend query '<expr>'`; the rule fires while it returns samples".into()),
                );
                false
            }
        }
    }

    fn check_log_pattern(&mut self, pattern: &str, span: Range<usize>) -> bool {
        let built = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build();
        match built {
            Ok(_) if pattern.len() <= MAX_LOG_PATTERN => true,
            Ok(_) => {
                self.report(
                    span,
                    format!("`logs` is longer than {MAX_LOG_PATTERN} characters"),
                    "too long",
                    None,
                );
                false
            }
            Err(e) => {
                let first = e.to_string();
                let first = first.lines().last().unwrap_or("").trim().to_string();
                self.report(
                    span,
                    format!("invalid regular expression in `logs`: {first}"),
                    "does not compile",
                    Some("escape special characters with `\\\\`, e.g. 'status=5\\\\d\\\\d'".into()),
                );
                false
            }
        }
    }

    pub(super) fn alert_defaults(&mut self, t: &Tbl) -> Option<AlertDefaults> {
        self.check_keys(t);
        let d = AlertDefaults::default();
        let mut ok = true;
        let disable = self.disable_list(t);
        ok &= disable.is_some();
        let crash_restarts = self.count(t, "crash_restarts", 1, 1000);
        let crash_window = self.duration(t, "crash_window", false);
        let not_ready_for = self.duration(t, "not_ready_for", false);
        let error_ratio = self.ratio(t, "error_ratio");
        let error_min_rps = self.positive_number(t, "error_min_rps");
        let error_for = self.duration(t, "error_for", true);
        let latency_factor = self.positive_number(t, "latency_factor");
        let latency_for = self.duration(t, "latency_for", true);
        let latency_window = self.duration(t, "latency_window", false);
        let latency_baseline = self.duration(t, "latency_baseline", false);
        let memory_ratio = self.ratio(t, "memory_ratio");
        let memory_for = self.duration(t, "memory_for", true);
        macro_rules! take {
            ($got:expr, $default:expr) => {
                match $got {
                    Got::Ok(v) => v,
                    Got::Absent => $default,
                    Got::Bad => {
                        ok = false;
                        $default
                    }
                }
            };
        }
        let out = AlertDefaults {
            disable: disable.unwrap_or_default(),
            crash_restarts: take!(crash_restarts, d.crash_restarts),
            crash_window: take!(crash_window, d.crash_window),
            not_ready_for: take!(not_ready_for, d.not_ready_for),
            error_ratio: take!(error_ratio, d.error_ratio),
            error_min_rps: take!(error_min_rps, d.error_min_rps),
            error_for: take!(error_for, d.error_for),
            latency_factor: take!(latency_factor, d.latency_factor),
            latency_for: take!(latency_for, d.latency_for),
            latency_window: take!(latency_window, d.latency_window),
            latency_baseline: take!(latency_baseline, d.latency_baseline),
            memory_ratio: take!(memory_ratio, d.memory_ratio),
            memory_for: take!(memory_for, d.memory_for),
        };
        ok.then_some(out)
    }

    /// A number in (0, 1].
    fn ratio(&mut self, t: &Tbl, key: &str) -> Got<f64> {
        match self.positive_number(t, key) {
            Got::Ok(n) if n > 1.0 => {
                let item = t.table.get(key).expect("the key was just read");
                let span = self.value_span(t, key, item);
                self.report(
                    span,
                    format!("`{key}` is a share between 0 and 1, found {n}"),
                    "more than 1",
                    Some(format!("for 5% write `{key} = 0.05`")),
                );
                Got::Bad
            }
            other => other,
        }
    }

    /// `disable = ["high-latency", ...]`: names of default alerts.
    fn disable_list(&mut self, t: &Tbl) -> Option<Vec<String>> {
        let (entries, mut ok) = self.string_list(t, "disable", "high-latency")?;
        let mut names = Vec::new();
        for (name, span) in entries {
            if !DEFAULT_ALERT_NAMES.contains(&name.as_str()) {
                let help = match closest(&name, DEFAULT_ALERT_NAMES) {
                    Some(fix) => format!("did you mean \"{fix}\"?"),
                    None => format!(
                        "the default alerts are {}",
                        list_or(DEFAULT_ALERT_NAMES.map(|n| format!("\"{n}\"")))
                    ),
                };
                self.report(
                    span,
                    format!("unknown default alert \"{}\"", show(&name)),
                    "unknown alert",
                    Some(help),
                );
                ok = false;
                continue;
            }
            names.push(name);
        }
        ok.then_some(names)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    const HEAD: &str = "[service]\nname = \"web\"\nowner = \"team\"\n[run]\ncommand = \"./web\"\n";

    fn errors(extra: &str) -> String {
        let src = format!("{HEAD}{extra}");
        match crate::parse(&src, "tend.toml") {
            Ok(_) => String::new(),
            Err(e) => e.render(false),
        }
    }

    #[test]
    fn bad_promql_points_at_the_expression() {
        let out = errors("[[alerts]]\nname = \"a\"\nexpr = 'sum(rate(x[5m])'\n");
        assert!(out.contains("invalid PromQL in `expr`"), "{out}");
        assert!(out.contains("tend.toml:8:8"), "{out}");
        assert_eq!(errors("[[alerts]]\nname = \"a\"\nexpr = 'up == 0'\n"), "");
    }

    #[test]
    fn log_rules_take_a_pattern_window_and_threshold() {
        let src = format!(
            "{HEAD}[[alerts]]\nname = \"panics\"\nlogs = 'panic|fatal'\nwindow = \"1m\"\nthreshold = 3\n"
        );
        let spec = crate::parse(&src, "tend.toml").unwrap();
        let logs = spec.alerts[0].logs.as_ref().unwrap();
        assert_eq!(logs.pattern, "panic|fatal");
        assert_eq!(logs.window, Duration::from_secs(60));
        assert_eq!(logs.threshold, 3);
        assert!(spec.alerts[0].expr.is_empty());

        let out = errors("[[alerts]]\nname = \"a\"\nlogs = 'x('\n");
        assert!(
            out.contains("invalid regular expression in `logs`"),
            "{out}"
        );
        let out = errors("[[alerts]]\nname = \"a\"\nexpr = 'up'\nlogs = 'x'\n");
        assert!(out.contains("either `expr` or `logs`"), "{out}");
        let out = errors("[[alerts]]\nname = \"a\"\nexpr = 'up'\nwindow = \"1m\"\n");
        assert!(out.contains("only applies to log-based rules"), "{out}");
    }

    #[test]
    fn alert_defaults_override_and_disable() {
        let src = format!(
            "{HEAD}[alert_defaults]\ndisable = [\"high-latency\"]\nerror_ratio = 0.2\nerror_for = \"0s\"\n"
        );
        let spec = crate::parse(&src, "tend.toml").unwrap();
        let d = &spec.alert_defaults;
        assert!(!d.enabled("high-latency"));
        assert!(d.enabled("crash-looping"));
        assert_eq!(d.error_ratio, 0.2);
        assert_eq!(d.error_for, Duration::ZERO);
        assert_eq!(d.crash_restarts, 3);

        let out = errors("[alert_defaults]\ndisable = [\"high-latancy\"]\n");
        assert!(out.contains("did you mean \"high-latency\""), "{out}");
        let out = errors("[alert_defaults]\nerror_ratio = 5\n");
        assert!(out.contains("between 0 and 1"), "{out}");
        let out = errors("[alert_defaults]\nerror_rate = 0.1\n");
        assert!(out.contains("error_ratio"), "{out}");
    }
}
