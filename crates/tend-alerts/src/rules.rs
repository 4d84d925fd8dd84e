//! Alert rules: the service's own `[[alerts]]` and the defaults every
//! service gets, each scoped to its service.

use std::collections::BTreeMap;
use std::time::Duration;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::Expr;
use tend_core::{ServiceName, TeamName};
use tend_manifest::{AlertRule, ServiceSpec, Severity};

use crate::AlertError;

/// What makes a rule's condition hold. Each yields a vector of
/// (labels, value): every element is one alert.
#[derive(Debug, Clone)]
pub enum Condition {
    /// A PromQL expression over tend's TSDB, already scoped to the service.
    PromQl(String),
    /// At least `threshold` of the service's log lines matching `pattern`
    /// arrived within `window`.
    Logs {
        /// Matched against each raw line.
        pattern: regex::Regex,
        /// How far back.
        window: Duration,
        /// Lines needed.
        threshold: u32,
    },
    /// At least `threshold` events of these kinds on the service's timeline
    /// within `window`.
    Events {
        /// Event kinds counted.
        kinds: &'static [&'static str],
        /// How far back.
        window: Duration,
        /// Events needed.
        threshold: u32,
    },
    /// One element while the service has instances not ready (starting,
    /// unhealthy, crashed, waiting to restart), valued their number; `for`
    /// makes it "for longer than".
    InstancesNotReady,
}

/// One rule of one service, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `alertname`.
    pub name: String,
    /// The service it watches.
    pub service: ServiceName,
    /// Its owner.
    pub team: TeamName,
    /// When it holds.
    pub condition: Condition,
    /// How long it must hold before firing.
    pub for_: Duration,
    /// How long it keeps firing after it stops holding.
    pub keep_firing_for: Duration,
    /// How loudly.
    pub severity: Severity,
    /// Template of the one-line summary.
    pub summary: String,
    /// Template of the longer description.
    pub description: String,
    /// Labels added to every alert of the rule.
    pub labels: BTreeMap<String, String>,
    /// The service's runbook, as the `runbook_url` annotation.
    pub runbook: Option<String>,
    /// Whether it is one of the default rules.
    pub builtin: bool,
}

impl Rule {
    /// A key that identifies the rule across evaluations (its state lives under it).
    pub fn key(&self) -> String {
        format!("{}/{}", self.service, self.name)
    }
}

/// Adds `service="<service>"` to every selector of `expr` (replacing any
/// `service` matcher it had), so a team's rule only ever sees its service.
pub fn scope_to_service(expr: &str, service: &str) -> Result<String, AlertError> {
    let mut ast = promql_parser::parser::parse(expr).map_err(AlertError::Rule)?;
    scope(&mut ast, service);
    Ok(ast.to_string())
}

fn scope(e: &mut Expr, service: &str) {
    let pin = |m: &mut Vec<Matcher>| {
        m.retain(|m| m.name != "service");
        m.push(Matcher::new(MatchOp::Equal, "service", service));
    };
    match e {
        Expr::Aggregate(a) => {
            scope(&mut a.expr, service);
            if let Some(p) = a.param.as_mut() {
                scope(p, service);
            }
        }
        Expr::Unary(u) => scope(&mut u.expr, service),
        Expr::Binary(b) => {
            scope(&mut b.lhs, service);
            scope(&mut b.rhs, service);
        }
        Expr::Paren(p) => scope(&mut p.expr, service),
        Expr::Subquery(s) => scope(&mut s.expr, service),
        Expr::VectorSelector(vs) => {
            pin(&mut vs.matchers.matchers);
            vs.matchers.or_matchers.iter_mut().for_each(pin);
        }
        Expr::MatrixSelector(ms) => {
            pin(&mut ms.vs.matchers.matchers);
            ms.vs.matchers.or_matchers.iter_mut().for_each(pin);
        }
        Expr::Call(c) => c.args.args.iter_mut().for_each(|a| scope(a, service)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn secs(d: Duration) -> String {
    tend_manifest::format_duration(d)
}

/// `d` as a PromQL duration (whole milliseconds, which every parser takes).
fn promql_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The rules of one service: its defaults (as `[alert_defaults]` sets them)
/// and its own `[[alerts]]`.
pub fn service_rules(spec: &ServiceSpec) -> Result<Vec<Rule>, AlertError> {
    let service = spec.name().clone();
    let team = spec.owner().clone();
    let runbook = spec.service.runbook.clone();
    let d = &spec.alert_defaults;
    let s = service.as_str();
    let mut rules = Vec::new();
    let mut rule = |name: &str, condition, for_, severity, summary: String, description: String| {
        if d.enabled(name) {
            rules.push(Rule {
                name: name.to_string(),
                service: service.clone(),
                team: team.clone(),
                condition,
                for_,
                keep_firing_for: Duration::ZERO,
                severity,
                summary,
                description,
                labels: BTreeMap::new(),
                runbook: runbook.clone(),
                builtin: true,
            });
        }
    };
    rule(
        "crash-looping",
        Condition::Events {
            kinds: &["instance.crashed"],
            window: d.crash_window,
            threshold: d.crash_restarts,
        },
        Duration::ZERO,
        Severity::Page,
        format!("{s} is crash looping"),
        format!(
            "{{{{ $value }}}} crashes of {s}'s instances in the last {}; see `tend events {s}` and `tend logs {s}`",
            secs(d.crash_window)
        ),
    );
    rule(
        "instances-not-ready",
        Condition::InstancesNotReady,
        d.not_ready_for,
        Severity::Page,
        format!("{s}: {{{{ $value }}}} instance(s) not ready"),
        format!(
            "{s} has had instances not ready (starting, unhealthy or waiting to restart) for more than {}; now {{{{ $value }}}}; see `tend status {s}`",
            secs(d.not_ready_for)
        ),
    );
    rule(
        "deploy-failed",
        Condition::Events {
            kinds: &["deploy.failed", "deploy.rolled_back"],
            window: Duration::from_secs(600),
            threshold: 1,
        },
        Duration::ZERO,
        Severity::Ticket,
        format!("a deployment of {s} failed"),
        format!("a deployment of {s} failed in the last 10m (and was rolled back if it could be); see `tend events {s}`"),
    );
    // Requests over the last minute per series, counting a series that
    // appeared within the minute from zero: the router only exports a
    // counter once it is non-zero, so `rate` would need a second scrape
    // before it sees the first 5xx at all.
    let increase = |sel: &str| format!("clamp_min({sel} - ({sel} offset 1m or {sel} * 0), 0)");
    let total = format!(
        "sum by (service, team) ({})",
        increase(&format!(r#"tend_http_requests_total{{service="{s}"}}"#))
    );
    let errors = format!(
        "sum by (service, team) ({})",
        increase(&format!(
            r#"tend_http_requests_total{{service="{s}",code="5xx"}}"#
        ))
    );
    rule(
        "high-error-rate",
        Condition::PromQl(format!(
            "({errors} / {total}) > {} and {total} >= {}",
            d.error_ratio,
            d.error_min_rps * 60.0
        )),
        d.error_for,
        Severity::Page,
        format!("{s} answers too many 5xx"),
        format!(
            "{{{{ $value }}}} of {s}'s requests answered 5xx over the last minute (threshold {})",
            d.error_ratio
        ),
    );
    let p99 = |range: &str, offset: &str| {
        format!(
            r#"histogram_quantile(0.99, sum by (service, team, le) (rate(tend_http_request_duration_seconds_bucket{{service="{s}"}}[{range}]{offset})))"#
        )
    };
    let window = promql_duration(d.latency_window);
    let rate_window = format!(
        r#"sum by (service, team) (rate(tend_http_requests_total{{service="{s}"}}[{window}]))"#
    );
    rule(
        "high-latency",
        Condition::PromQl(format!(
            "({now} > {factor} * {base}) and {now} > 0.1 and {rate} >= {rps}",
            now = p99(&window, ""),
            base = p99(&promql_duration(d.latency_baseline), &format!(" offset {window}")),
            factor = d.latency_factor,
            rps = d.error_min_rps,
            rate = rate_window,
        )),
        d.latency_for,
        Severity::Ticket,
        format!("{s} is slower than usual"),
        format!(
            "p99 latency of {s} over the last {} is {{{{ $value }}}}s, more than {} times its level in the {} before",
            secs(d.latency_window),
            d.latency_factor,
            secs(d.latency_baseline)
        ),
    );
    if let Some(limit) = spec.run.memory {
        rule(
            "memory-near-limit",
            Condition::PromQl(format!(
                r#"max by (service, team, instance) (process_resident_memory_bytes{{service="{s}",job="runtime"}}) > {}"#,
                (limit as f64 * d.memory_ratio).floor()
            )),
            d.memory_for,
            Severity::Ticket,
            format!("{s}: instance {{{{ $labels.instance }}}} is near its memory limit"),
            format!("instance {{{{ $labels.instance }}}} uses {{{{ $value }}}} bytes of its {limit}-byte limit"),
        );
    }
    for a in &spec.alerts {
        rules.push(own_rule(a, &service, &team, runbook.clone())?);
    }
    Ok(rules)
}

fn own_rule(
    a: &AlertRule,
    service: &ServiceName,
    team: &TeamName,
    runbook: Option<String>,
) -> Result<Rule, AlertError> {
    let condition = match &a.logs {
        Some(l) => Condition::Logs {
            pattern: regex::Regex::new(&l.pattern)
                .map_err(|e| AlertError::Rule(format!("{}: {e}", a.name)))?,
            window: l.window,
            threshold: l.threshold,
        },
        None => Condition::PromQl(scope_to_service(&a.expr, service.as_str())?),
    };
    Ok(Rule {
        name: a.name.clone(),
        service: service.clone(),
        team: team.clone(),
        condition,
        for_: a.for_,
        keep_firing_for: a.keep_firing_for,
        severity: a.severity,
        summary: a
            .summary
            .clone()
            .unwrap_or_else(|| format!("{} on {service}", a.name)),
        description: a.description.clone().unwrap_or_default(),
        labels: a.labels.clone(),
        runbook,
        builtin: false,
    })
}

/// Renders `{{ $labels.NAME }}`, `{{ $value }}` (and `{{$value}}` etc.) in a
/// template; anything else between braces is left as written.
pub fn render(template: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = after[..end].trim();
        if inner == "$value" {
            out.push_str(&format_value(value));
        } else if let Some(name) = inner.strip_prefix("$labels.") {
            out.push_str(labels.get(name.trim()).map(String::as_str).unwrap_or(""));
        } else {
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// A value as Prometheus' templates print `{{ $value }}` (Go's `%g`-like).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Prometheus' label-set fingerprint (FNV-1a 64 over `name 0xff value 0xff`
/// in name order), as 16 hex digits, so it matches what Alertmanager shows.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 14695981039346656037;
    const PRIME: u64 = 1099511628211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        add(k.as_bytes());
        add(&[0xff]);
        add(v.as_bytes());
        add(&[0xff]);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selector_is_pinned_to_the_service() {
        let e = scope_to_service(
            r#"sum(rate(http_requests_total{code="500",service="other"}[5m])) / on() count(up)"#,
            "web",
        )
        .unwrap();
        assert!(!e.contains("other"), "{e}");
        assert_eq!(e.matches(r#"service="web""#).count(), 2, "{e}");
        promql_parser::parser::parse(&e).unwrap();
    }

    #[test]
    fn templates_render_labels_and_value() {
        let labels = BTreeMap::from([("instance".to_string(), "web-1".to_string())]);
        assert_eq!(
            render(
                "{{ $labels.instance }} at {{$value}} ({{ other }})",
                &labels,
                0.25
            ),
            "web-1 at 0.25 ({{ other }})"
        );
        assert_eq!(render("{{ $labels.missing }}x{{", &labels, 1.0), "x{{");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(1.0 / 3.0), "0.333333");
    }

    #[test]
    fn fingerprint_matches_prometheus() {
        // model.LabelSet{"alertname": "x"}.Fingerprint() in Prometheus' common/model.
        let l = BTreeMap::from([("alertname".to_string(), "x".to_string())]);
        let empty = BTreeMap::new();
        assert_eq!(fingerprint(&empty), "cbf29ce484222325");
        assert_ne!(fingerprint(&l), fingerprint(&empty));
        assert_eq!(fingerprint(&l).len(), 16);
    }

    /// The default error-rate rule on router-shaped data in a real TSDB: a
    /// 5xx series that appears at the latest scrape counts at once, one
    /// failed request does not.
    #[test]
    fn error_rate_sees_a_new_5xx_series_at_its_first_scrape() {
        let spec = tend_manifest::parse(
            "[service]\nname = \"web\"\nowner = \"team\"\n[run]\ncommand = \"./web\"\n",
            "tend.toml",
        )
        .unwrap();
        let rules = service_rules(&spec).unwrap();
        let rule = rules.iter().find(|r| r.name == "high-error-rate").unwrap();
        let Condition::PromQl(expr) = &rule.condition else {
            panic!()
        };
        let eval = |errors: f64| {
            let dir = tempfile::tempdir().unwrap();
            let db = tend_metrics::Tsdb::open(tend_metrics::TsdbConfig::new(dir.path())).unwrap();
            let l = |code: &str| {
                tend_metrics::Labels::from_pairs(&[
                    ("__name__", "tend_http_requests_total"),
                    ("service", "web"),
                    ("team", "team"),
                    ("instance", "web-1"),
                    ("method", "GET"),
                    ("code", code),
                ])
            };
            let t0 = 1_000_000_000_000i64;
            // 20 requests/s for 2 minutes, scraped every 10 s.
            let mut samples: Vec<_> = (0..=12)
                .map(|i| (l("2xx"), t0 + i * 10_000, (i * 200) as f64))
                .collect();
            samples.push((l("5xx"), t0 + 120_000, errors));
            db.append(&samples).unwrap();
            match tend_metrics::promql::instant(&db, expr, t0 + 120_000, &Default::default())
                .unwrap()
            {
                tend_metrics::promql::Value::Vector(v) => v,
                other => panic!("{other:?}"),
            }
        };
        let v = eval(100.0);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!((v[0].v - 100.0 / 1300.0).abs() < 1e-9, "{v:?}");
        assert_eq!(v[0].labels.get("team"), Some("team"));
        assert!(eval(1.0).is_empty());
    }

    #[test]
    fn defaults_follow_the_manifest() {
        let spec = tend_manifest::parse(
            "[service]\nname = \"web\"\nowner = \"team\"\n[run]\ncommand = \"./web\"\n\
             [alert_defaults]\ndisable = [\"high-latency\"]\nerror_ratio = 0.5\n\
             [[alerts]]\nname = \"mine\"\nexpr = 'up == 0'\n",
            "tend.toml",
        )
        .unwrap();
        let rules = service_rules(&spec).unwrap();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        // No memory limit: no memory rule.
        assert_eq!(
            names,
            [
                "crash-looping",
                "instances-not-ready",
                "deploy-failed",
                "high-error-rate",
                "mine"
            ]
        );
        let Condition::PromQl(e) = &rules[3].condition else {
            panic!()
        };
        assert!(e.contains("> 0.5"), "{e}");
        for r in &rules {
            if let Condition::PromQl(e) = &r.condition {
                promql_parser::parser::parse(e).unwrap_or_else(|err| panic!("{e}: {err}"));
            }
        }
        let Condition::PromQl(e) = &rules[4].condition else {
            panic!()
        };
        assert!(e.contains(r#"service="web""#), "{e}");
    }
}
