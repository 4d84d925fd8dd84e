//! One method per section of `tend.toml`, each returning the typed section
//! or `None` after recording why not.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use tend_core::{ServiceName, TeamName};
use toml_edit::{Item, Table, Value};

use super::text::{host_error, is_identifier, kind, suggest_host, suggest_identifier, value_kind};
use super::{Got, Tbl, Walker};
use crate::diagnostic::{location, show};
use crate::schema::{closest, list, list_or, ALERTS_SECTION};
use crate::spec::*;

/// Most consecutive probes a health threshold may ask for.
const MAX_THRESHOLD: u32 = 1000;

/// Names tend sets on every alert, so a rule may not set them as labels.
const RESERVED_ALERT_LABELS: &[&str] = &["alertname", "severity", "service", "team"];

impl Walker<'_> {
    pub(super) fn service(&mut self, t: &Tbl) -> Option<ServiceSection> {
        self.check_keys(t);
        let name = self
            .dns_label(t, "name", "service name")
            .and_then(|(n, _)| ServiceName::parse(&n).ok());
        let owner = self
            .dns_label(t, "owner", "team name")
            .and_then(|(n, _)| TeamName::parse(&n).ok());
        let description = self.string(t, "description").map(|(s, _)| s).or_default();
        let runbook = self.nonempty_string(t, "runbook").map(|(s, _)| s).ok();
        Some(ServiceSection {
            name: name?,
            owner: owner?,
            description,
            runbook,
        })
    }

    pub(super) fn build(&mut self, t: &Tbl) -> Option<BuildSection> {
        self.check_keys(t);
        let command = self.nonempty_string(t, "command");
        let (command, _) = self.required(t, "command", command)?;
        Some(BuildSection { command })
    }

    pub(super) fn run(&mut self, t: &Tbl) -> Option<RunSection> {
        self.check_keys(t);
        let command = self.nonempty_string(t, "command");
        let command = self.required(t, "command", command);
        let instances = self
            .count(t, "instances", 0, MAX_INSTANCES)
            .or(DEFAULT_INSTANCES);
        let grace_period = self
            .duration(t, "grace_period", false)
            .or(DEFAULT_GRACE_PERIOD);
        let memory = self.size(t, "memory").ok();
        let cpus = self.positive_number(t, "cpus").ok();
        Some(RunSection {
            command: command?.0,
            instances,
            grace_period,
            memory,
            cpus,
        })
    }

    pub(super) fn health(&mut self, t: &Tbl) -> Option<HealthSection> {
        self.check_keys(t);
        // The checks written, in source order, so "more than one" points at the second.
        let mut written: Vec<(&str, Range<usize>)> = ["http", "tcp", "exec"]
            .into_iter()
            .filter(|k| t.table.contains_key(k))
            .map(|k| (k, self.key_span(t, k)))
            .collect();
        written.sort_by_key(|(_, span)| span.start);

        let http = match self.nonempty_string(t, "http") {
            Got::Ok((path, span)) => {
                if self.check_path(&path, span, "the health check path", Some("http")) {
                    Some(path)
                } else {
                    None
                }
            }
            Got::Absent | Got::Bad => None,
        };
        let tcp = match self.boolean(t, "tcp") {
            Got::Ok((true, _)) => true,
            Got::Ok((false, span)) => {
                self.report(
                    span,
                    "`tcp = false` is not a health check",
                    "must be true",
                    Some("write `tcp = true` to check that the port accepts connections, or remove [health] to treat a running process as healthy".into()),
                );
                false
            }
            Got::Absent | Got::Bad => false,
        };
        let exec = self.nonempty_string(t, "exec").map(|(s, _)| s).ok();
        let interval = self
            .duration(t, "interval", false)
            .or(DEFAULT_HEALTH_INTERVAL);
        let timeout = self
            .duration(t, "timeout", false)
            .or(DEFAULT_HEALTH_TIMEOUT);
        let healthy_threshold = self
            .count(t, "healthy_threshold", 1, MAX_THRESHOLD)
            .or(DEFAULT_HEALTHY_THRESHOLD);
        let unhealthy_threshold = self
            .count(t, "unhealthy_threshold", 1, MAX_THRESHOLD)
            .or(DEFAULT_UNHEALTHY_THRESHOLD);
        let start_period = self
            .duration(t, "start_period", true)
            .or(DEFAULT_START_PERIOD);

        let check = match written.as_slice() {
            [] => {
                self.report(
                    t.header.clone(),
                    "[health] needs a check: one of `http`, `tcp` or `exec`",
                    "no check in this section",
                    Some("for example: `http = \"/healthz\"`; or remove [health] to treat a running process as healthy".into()),
                );
                None
            }
            [("http", _)] => http.map(|path| HealthCheck::Http { path }),
            [("tcp", _)] => tcp.then_some(HealthCheck::Tcp),
            [(_, _)] => exec.map(|command| HealthCheck::Exec { command }),
            [_, (_, second), ..] => {
                let names = written.iter().map(|(k, _)| format!("`{k}`"));
                self.report(
                    second.clone(),
                    format!("[health] has more than one check: {}", list(names)),
                    "second check",
                    Some("keep exactly one of `http`, `tcp` or `exec`".into()),
                );
                None
            }
        };
        Some(HealthSection {
            check: check?,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            start_period,
        })
    }

    /// Checks an HTTP path prefix; reports and returns false if it is not one.
    /// `key` is the key holding the path alone (None for an array entry).
    pub(super) fn check_path(
        &mut self,
        path: &str,
        span: Range<usize>,
        what: &str,
        key: Option<&str>,
    ) -> bool {
        let problem = if path.contains("://") {
            Some((
                "is a URL, not a path".to_string(),
                "give only the path, e.g. \"/healthz\"; tend finds the host and port itself"
                    .to_string(),
            ))
        } else if !path.starts_with('/') {
            Some((
                "must start with `/`".to_string(),
                match key {
                    Some(key) => format!("try `{key} = \"/{}\"`", show(path.trim())),
                    None => format!("try \"/{}\"", show(path.trim())),
                },
            ))
        } else {
            path.chars()
                .find(|c| c.is_whitespace() || c.is_control() || *c == '?' || *c == '#')
                .map(|c| {
                    (
                        format!("contains {c:?}"),
                        "a path prefix has no spaces, query (`?`) or fragment (`#`)".to_string(),
                    )
                })
        };
        match problem {
            Some((reason, help)) => {
                self.report(
                    span,
                    format!("{what} \"{}\" {reason}", show(path)),
                    "invalid path",
                    Some(help),
                );
                false
            }
            None => true,
        }
    }

    pub(super) fn http(&mut self, t: &Tbl) -> Option<HttpSection> {
        self.check_keys(t);
        let host = match self.nonempty_string(t, "host") {
            Got::Ok((host, span)) => match host_error(&host) {
                None => Got::Ok(host),
                Some(reason) => {
                    let help = match suggest_host(&host) {
                        Some(fix) => format!("try `host = \"{fix}\"`"),
                        None => "a host is lowercase DNS labels separated by dots, e.g. \"checkout.localhost\"".to_string(),
                    };
                    self.report(
                        span,
                        format!("invalid host \"{}\": {reason}", show(&host)),
                        "invalid host",
                        Some(help),
                    );
                    Got::Bad
                }
            },
            Got::Absent => Got::Absent,
            Got::Bad => Got::Bad,
        };
        let paths = self.paths(t);
        let host = match host {
            Got::Ok(h) => Some(h),
            Got::Absent => None,
            Got::Bad => return None,
        };
        Some(HttpSection {
            host,
            paths: paths?,
        })
    }

    pub(super) fn paths(&mut self, t: &Tbl) -> Option<Vec<String>> {
        let Some(item) = t.table.get("paths") else {
            return Some(HttpSection::default().paths);
        };
        let Some(array) = item.as_array() else {
            let help = item
                .as_str()
                .map(|s| format!("use a list: `paths = [\"{}\"]`", show(s)));
            self.wrong_type(t, "paths", item, "an array of strings", help);
            return None;
        };
        if array.is_empty() {
            let span = self.value_span(t, "paths", item);
            self.report(
                span,
                "`paths` must not be empty",
                "no paths",
                Some("remove `paths` to route every path (`[\"/\"]`)".into()),
            );
            return None;
        }
        let fallback = self.value_span(t, "paths", item);
        let mut paths = Vec::new();
        let mut ok = true;
        for value in array.iter() {
            let span = value.span().unwrap_or_else(|| fallback.clone());
            let Some(path) = value.as_str() else {
                self.report(
                    span,
                    format!(
                        "each entry of `paths` must be a string, found {}",
                        value_kind(value)
                    ),
                    "expected a string",
                    Some("for example: `paths = [\"/api\", \"/checkout\"]`".into()),
                );
                ok = false;
                continue;
            };
            if !self.check_path(path, span.clone(), "the path", None) {
                ok = false;
            } else if paths.iter().any(|p| p == path) {
                self.report(
                    span,
                    format!("duplicate path \"{}\" in `paths`", show(path)),
                    "duplicate",
                    Some("list each path prefix once".into()),
                );
                ok = false;
            } else {
                paths.push(path.to_string());
            }
        }
        ok.then_some(paths)
    }

    pub(super) fn deploy(&mut self, t: &Tbl) -> Option<DeploySection> {
        self.check_keys(t);
        let strategy = match self.string(t, "strategy") {
            Got::Ok((s, _)) if s == "rolling" => Some(DeployStrategy::Rolling),
            Got::Ok((s, span)) => {
                self.report(
                    span,
                    format!("unknown deploy strategy \"{}\"", show(&s)),
                    "unknown strategy",
                    Some("the only strategy is `rolling` (the default)".into()),
                );
                None
            }
            Got::Absent => Some(DeployStrategy::Rolling),
            Got::Bad => None,
        };
        let surge = self.count(t, "max_surge", 0, MAX_INSTANCES);
        let unavailable = self.count(t, "max_unavailable", 0, MAX_INSTANCES);
        let mut both_ok = true;
        let surge = match surge {
            Got::Ok(n) => Some((n, true)),
            Got::Absent => Some((DEFAULT_MAX_SURGE, false)),
            Got::Bad => None,
        };
        let unavailable = match unavailable {
            Got::Ok(n) => Some((n, true)),
            Got::Absent => Some((DEFAULT_MAX_UNAVAILABLE, false)),
            Got::Bad => None,
        };
        if let (Some((0, surge_written)), Some((0, _))) = (surge, unavailable) {
            // Point at max_surge when written: raising it is the usual fix.
            let key = if surge_written {
                "max_surge"
            } else {
                "max_unavailable"
            };
            let span = match t.table.get(key) {
                Some(item) => self.value_span(t, key, item),
                None => t.header.clone(),
            };
            self.report(
                span,
                "`max_surge` and `max_unavailable` are both 0",
                "a rollout could never replace an instance",
                Some("set `max_surge = 1` to start a new instance before stopping an old one, or `max_unavailable = 1` to stop one first".into()),
            );
            both_ok = false;
        }
        let auto_rollback = self.boolean(t, "auto_rollback").map(|(b, _)| b).or(true);
        let healthy_deadline = self
            .duration(t, "healthy_deadline", false)
            .or(DEFAULT_HEALTHY_DEADLINE);
        let verify = self.duration(t, "verify", true).or(DEFAULT_VERIFY);
        Some(DeploySection {
            strategy: strategy?,
            max_surge: surge?.0,
            max_unavailable: unavailable?.0,
            auto_rollback,
            healthy_deadline,
            verify,
        })
        .filter(|_| both_ok)
    }

    pub(super) fn env(&mut self, t: &Tbl) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (key, item) in t.table.iter() {
            let key_span = self.key_span(t, key);
            if !is_identifier(key) {
                let rule = "names are ASCII letters, digits and `_`, not starting with a digit";
                let help = match suggest_identifier(key) {
                    Some(fix) => format!("{rule}; try `{fix}`"),
                    None => rule.to_string(),
                };
                self.report(
                    key_span,
                    format!("invalid environment variable name `{}`", show(key)),
                    "invalid name",
                    Some(help),
                );
                continue;
            }
            if key == "PORT" || key.starts_with("TEND_") {
                let help = if key == "PORT" {
                    "the platform sets `PORT` (the port the instance must listen on); remove it from [env]"
                } else {
                    "the platform sets the variables starting with `TEND_`; choose another name"
                };
                self.report(
                    key_span,
                    format!("`{key}` is reserved"),
                    "set by the platform",
                    Some(help.into()),
                );
                continue;
            }
            let value = match item.as_value() {
                Some(Value::String(s)) => s.value().clone(),
                Some(Value::Integer(n)) => n.value().to_string(),
                // Debug keeps the ".0" of 1.0, so the variable reads as written.
                Some(Value::Float(f)) => format!("{:?}", f.value()),
                Some(Value::Boolean(b)) => b.value().to_string(),
                _ => {
                    let span = self.value_span(t, key, item);
                    self.report(
                        span,
                        format!(
                            "`{key}` in [env] must be a string, number or boolean, found {}",
                            kind(item)
                        ),
                        "not a plain value",
                        Some("environment variables are plain text; write a list as one string, e.g. `HOSTS = \"a,b,c\"`".into()),
                    );
                    continue;
                }
            };
            if value.contains('\0') {
                let span = self.value_span(t, key, item);
                self.report(
                    span,
                    format!("`{key}` contains a NUL character"),
                    "NUL character",
                    Some("environment variables cannot hold NUL (\\u0000)".into()),
                );
                continue;
            }
            env.insert(key.to_string(), value);
        }
        env
    }

    pub(super) fn alerts(&mut self, root: &Table) -> Vec<AlertRule> {
        let tables = self.alert_tables(root);
        let mut seen: HashMap<String, usize> = HashMap::new();
        tables
            .iter()
            .filter_map(|t| self.alert(t, &mut seen))
            .collect()
    }

    /// Each `[[alerts]]` entry (or entry of `alerts = [{...}]`) as a table.
    pub(super) fn alert_tables<'a>(&mut self, root: &'a Table) -> Vec<Tbl<'a>> {
        let Some((key, item)) = root.get_key_value(ALERTS_SECTION.name) else {
            return Vec::new();
        };
        let key_span = key.span().unwrap_or(0..0);
        let name = ALERTS_SECTION.header();
        match item {
            Item::ArrayOfTables(tables) => tables
                .iter()
                .map(|table| Tbl {
                    name: name.clone(),
                    table,
                    header: self.table_header(table).unwrap_or(key_span.clone()),
                    fields: ALERTS_SECTION.fields,
                })
                .collect(),
            Item::Value(Value::Array(values)) => {
                let mut tables = Vec::new();
                for value in values.iter() {
                    let span = value.span().unwrap_or(key_span.clone());
                    match value.as_inline_table() {
                        Some(table) => tables.push(Tbl {
                            name: name.clone(),
                            table,
                            header: span,
                            fields: ALERTS_SECTION.fields,
                        }),
                        None => self.report(
                            span,
                            format!(
                                "each entry of `alerts` must be a table, found {}",
                                value_kind(value)
                            ),
                            "expected a table",
                            Some("write each alert as a [[alerts]] section".into()),
                        ),
                    }
                }
                tables
            }
            Item::Table(table) => {
                let span = self.table_header(table).unwrap_or(key_span);
                self.report(
                    span,
                    "[alerts] must be a list of tables",
                    "written with single brackets",
                    Some("write each alert as [[alerts]] (double brackets)".into()),
                );
                Vec::new()
            }
            Item::Value(_) | Item::None => {
                let span = item.span().unwrap_or(key_span);
                self.report(
                    span,
                    format!("`alerts` must be a list of tables, found {}", kind(item)),
                    "not a list of tables",
                    Some("write each alert as a [[alerts]] section".into()),
                );
                Vec::new()
            }
        }
    }

    pub(super) fn alert(
        &mut self,
        t: &Tbl,
        seen: &mut HashMap<String, usize>,
    ) -> Option<AlertRule> {
        self.check_keys(t);
        let name = match self.dns_label(t, "name", "alert name") {
            Some((name, span)) => {
                let (line, _) = location(self.src, span.start);
                match seen.get(&name) {
                    Some(first) => {
                        self.report(
                            span,
                            format!("duplicate alert name \"{name}\""),
                            "used again here",
                            Some(format!(
                                "alert names must be unique in a manifest; \"{name}\" is first used on line {first}"
                            )),
                        );
                        None
                    }
                    None => {
                        seen.insert(name.clone(), line);
                        Some(name)
                    }
                }
            }
            None => None,
        };
        let condition = self.alert_condition(t);
        let for_ = self.duration(t, "for", true).or(Duration::ZERO);
        let keep_firing_for = self.duration(t, "keep_firing_for", true).or(Duration::ZERO);
        let severity = match self.string(t, "severity") {
            Got::Ok((s, span)) => match Severity::ALL.into_iter().find(|v| v.as_str() == s) {
                Some(severity) => Some(severity),
                None => {
                    let names = Severity::ALL.map(|v| v.as_str());
                    let help = match closest(&s, names) {
                        Some(fix) => format!("did you mean \"{fix}\"?"),
                        None => format!(
                            "severity is one of {}",
                            list_or(names.map(|n| format!("\"{n}\"")))
                        ),
                    };
                    self.report(
                        span,
                        format!("unknown severity \"{}\"", show(&s)),
                        "unknown severity",
                        Some(help),
                    );
                    None
                }
            },
            Got::Absent => Some(Severity::default()),
            Got::Bad => None,
        };
        let summary = self.string(t, "summary").map(|(s, _)| s).ok();
        let description = self.string(t, "description").map(|(s, _)| s).ok();
        let labels = match self.sub_table(t, "labels") {
            Got::Ok(labels) => self.labels(&labels),
            Got::Absent => Some(BTreeMap::new()),
            Got::Bad => None,
        };
        let (expr, logs) = condition?;
        Some(AlertRule {
            name: name?,
            expr,
            for_,
            keep_firing_for,
            severity: severity?,
            summary,
            description,
            labels: labels?,
            logs,
        })
    }

    pub(super) fn labels(&mut self, t: &Tbl) -> Option<BTreeMap<String, String>> {
        let mut labels = BTreeMap::new();
        let mut ok = true;
        for (key, item) in t.table.iter() {
            let key_span = self.key_span(t, key);
            if !is_identifier(key) || key.starts_with("__") {
                let help = "label names are ASCII letters, digits and `_`, not starting with a digit or `__`";
                self.report(
                    key_span,
                    format!("invalid label name `{}`", show(key)),
                    "invalid label name",
                    Some(help.into()),
                );
                ok = false;
                continue;
            }
            if RESERVED_ALERT_LABELS.contains(&key) {
                self.report(
                    key_span,
                    format!("label `{key}` is reserved"),
                    "set by tend",
                    Some(format!(
                        "tend sets {} on every alert; choose another name",
                        list(RESERVED_ALERT_LABELS.iter().map(|l| format!("`{l}`")))
                    )),
                );
                ok = false;
                continue;
            }
            match item.as_str() {
                Some(value) => {
                    labels.insert(key.to_string(), value.to_string());
                }
                None => {
                    let span = self.value_span(t, key, item);
                    self.report(
                        span,
                        format!(
                            "label `{}` must be a string, found {}",
                            show(key),
                            kind(item)
                        ),
                        "expected a string",
                        Some(format!("for example: `{} = \"frontend\"`", show(key))),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(labels)
    }
}
