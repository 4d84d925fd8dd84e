//! The walker: toml_edit's spanned document → a [`ServiceSpec`], or every problem.
//!
//! We walk toml_edit's parsed document instead of deriving `Deserialize`
//! because serde stops at the first error and loses spans for most of them;
//! here every key and value keeps its byte range, so each problem points at
//! the exact text, and the walk carries on after a problem to find the others.
//!
//! Each getter returns [`Got`]: `Absent` (use the default), `Bad` (a problem was
//! recorded; carry on so later problems are found too) or `Ok(value)`. The spec
//! is only returned when no problem was recorded.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use tend_core::names::{suggest_dns_label, validate_dns_label};
use tend_core::{ServiceName, TeamName};
use toml_edit::{ImDocument, Item, Table, TableLike, TomlError, Value};

use crate::diagnostic::{location, show, ManifestError, Problem};
use crate::duration::{parse_duration, DurationError};
use crate::schema::{
    self, closest, closest_field, list, list_or, Field, Section, ALERTS_SECTION, BUILD_SECTION,
    DEPLOY_SECTION, ENV_EXAMPLE, ENV_SECTION, HEALTH_SECTION, HTTP_SECTION, RUN_SECTION,
    SECTIONS, SERVICE_SECTION,
};
use crate::size::{parse_size, suggest_binary_unit, SizeError};
use crate::spec::*;

/// Largest manifest accepted, in bytes: a `tend.toml` describes one service,
/// so anything bigger is a mistake (or an attempt to make the server work hard).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Most consecutive probes a health threshold may ask for.
const MAX_THRESHOLD: u32 = 1000;

/// Names tend sets on every alert, so a rule may not set them as labels.
const RESERVED_ALERT_LABELS: &[&str] = &["alertname", "severity", "service", "team"];

/// Parses and validates `source`, naming it `file_name` in diagnostics.
pub(crate) fn parse(source: &str, file_name: &str) -> Result<ServiceSpec, ManifestError> {
    if source.len() > MAX_MANIFEST_BYTES {
        let problem = Problem::new(
            source,
            0..0,
            format!(
                "the manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are accepted",
                source.len()
            ),
            "",
            Some("a tend.toml describes one service in a few dozen lines".into()),
        );
        return Err(ManifestError::new(file_name, source, vec![problem]));
    }
    let doc = match ImDocument::parse(source) {
        Ok(doc) => doc,
        Err(e) => {
            return Err(ManifestError::new(
                file_name,
                source,
                vec![syntax_problem(source, &e)],
            ))
        }
    };
    let mut walker = Walker {
        src: source,
        problems: Vec::new(),
    };
    let spec = match doc.as_item().as_table() {
        Some(root) => walker.document(root),
        None => None,
    };
    match spec {
        Some(spec) if walker.problems.is_empty() => Ok(spec),
        _ => Err(ManifestError::new(file_name, source, walker.problems)),
    }
}

/// Turns a TOML syntax error into a problem at the position toml_edit reports.
fn syntax_problem(source: &str, e: &TomlError) -> Problem {
    let span = e.span().unwrap_or(0..0);
    // toml_edit's message is "what failed" then "expected ..." lines.
    let mut lines = e.message().lines().map(str::trim).filter(|l| !l.is_empty());
    let what = lines.next().unwrap_or("invalid TOML");
    let rest: Vec<&str> = lines.collect();
    let label = if e.message().contains("duplicate key") {
        "repeated here".to_string()
    } else if rest.is_empty() {
        "here".to_string()
    } else {
        rest.join("; ")
    };
    let all = e.message();
    let help = if all.contains("duplicate key") {
        Some("a key (or section) may appear only once; remove or merge the repeats".to_string())
    } else if what.contains("invalid string") {
        Some("text values need quotes, e.g. `command = \"./server\"`".to_string())
    } else if what.contains("invalid key") {
        Some(
            "bare keys are ASCII letters, digits, `_` and `-`; quote any other key, e.g. `\"my key\" = 1`"
                .to_string(),
        )
    } else if what.contains("invalid table header") {
        Some("a section header looks like `[run]`, or `[[alerts]]` for a list".to_string())
    } else {
        None
    };
    Problem::new(source, span, format!("invalid TOML: {what}"), label, help)
}

/// The outcome of reading one key.
enum Got<T> {
    /// The key is not there: use the default (or report it missing).
    Absent,
    /// The key is there but wrong; a problem was recorded.
    Bad,
    /// The key's valid value.
    Ok(T),
}

impl<T> Got<T> {
    /// The value, or `default` when absent or bad.
    fn or(self, default: T) -> T {
        match self {
            Got::Ok(v) => v,
            Got::Absent | Got::Bad => default,
        }
    }

    /// The value, if valid.
    fn ok(self) -> Option<T> {
        match self {
            Got::Ok(v) => Some(v),
            Got::Absent | Got::Bad => None,
        }
    }

    /// The value, or `T::default()` when absent or bad.
    fn or_default(self) -> T
    where
        T: Default,
    {
        self.ok().unwrap_or_default()
    }

    /// Maps the valid value.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Got<U> {
        match self {
            Got::Ok(v) => Got::Ok(f(v)),
            Got::Absent => Got::Absent,
            Got::Bad => Got::Bad,
        }
    }
}

/// A table being read: its entries, how messages name it, and where it is.
struct Tbl<'a> {
    /// How messages name the table: `[run]`, `[[alerts]]`, `labels`.
    name: String,
    /// The table's entries.
    table: &'a dyn TableLike,
    /// What to underline when the table as a whole is at fault (its header).
    header: Range<usize>,
    /// The keys it accepts; empty for free-form tables.
    fields: &'static [Field],
}

/// Collects problems while walking one document.
struct Walker<'s> {
    src: &'s str,
    problems: Vec<Problem>,
}

impl Walker<'_> {
    fn report(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        self.problems
            .push(Problem::new(self.src, span, message, label, help));
    }

    // ---- the document and its sections -------------------------------------

    fn document(&mut self, root: &Table) -> Option<ServiceSpec> {
        self.check_root(root);
        let service = self
            .required_section(
                root,
                &SERVICE_SECTION,
                "add it at the top of the file, e.g.\n[service]\nname = \"checkout\"\nowner = \"payments\"",
            )
            .and_then(|t| self.service(&t));
        let build = match self.section(root, &BUILD_SECTION) {
            Got::Ok(t) => self.build(&t),
            Got::Absent | Got::Bad => None,
        };
        let run = self
            .required_section(
                root,
                &RUN_SECTION,
                "add it, e.g.\n[run]\ncommand = \"./server\"  # must listen on $PORT",
            )
            .and_then(|t| self.run(&t));
        let health = match self.section(root, &HEALTH_SECTION) {
            Got::Ok(t) => self.health(&t),
            Got::Absent | Got::Bad => None,
        };
        let http = match self.section(root, &HTTP_SECTION) {
            Got::Ok(t) => self.http(&t),
            Got::Absent => Some(HttpSection::default()),
            Got::Bad => None,
        };
        let deploy = match self.section(root, &DEPLOY_SECTION) {
            Got::Ok(t) => self.deploy(&t),
            Got::Absent => Some(DeploySection::default()),
            Got::Bad => None,
        };
        let env = match self.section(root, &ENV_SECTION) {
            Got::Ok(t) => self.env(&t),
            Got::Absent | Got::Bad => BTreeMap::new(),
        };
        let alerts = self.alerts(root);
        Some(ServiceSpec {
            service: service?,
            build,
            run: run?,
            health,
            http: http?,
            deploy: deploy?,
            env,
            alerts,
        })
    }

    /// Reports top-level entries that are not sections we know.
    fn check_root(&mut self, root: &Table) {
        for (key, item) in root.iter() {
            if schema::section(key).is_some() {
                continue;
            }
            let span = root.key(key).and_then(|k| k.span()).unwrap_or(0..0);
            let headers = SECTIONS.iter().map(Section::header);
            if item.is_table_like() || item.is_array_of_tables() {
                let help = match closest(key, SECTIONS.iter().map(|s| s.name))
                    .and_then(schema::section)
                {
                    Some(s) => format!("did you mean {}?", s.header()),
                    None => format!("valid sections are {}", list(headers)),
                };
                self.report(
                    span,
                    format!("unknown section [{}]", show(key)),
                    "unknown section",
                    Some(help),
                );
            } else {
                let homes = schema::homes_of(key, "");
                let help = if homes.is_empty() {
                    format!("top-level entries must be sections: {}", list(headers))
                } else {
                    format!(
                        "`{key}` belongs in {}: move it under that header",
                        list_or(homes)
                    )
                };
                self.report(
                    span,
                    format!("unknown key `{}` at the top level", show(key)),
                    "not in a section",
                    Some(help),
                );
            }
        }
    }

    /// Finds a single-table section; reports it if it is not a table.
    fn section<'a>(&mut self, root: &'a Table, sec: &Section) -> Got<Tbl<'a>> {
        let Some((key, item)) = root.get_key_value(sec.name) else {
            return Got::Absent;
        };
        let key_span = key.span().unwrap_or(0..0);
        match item {
            Item::Table(table) => Got::Ok(Tbl {
                name: sec.header(),
                table,
                header: self.table_header(table).unwrap_or(key_span),
                fields: sec.fields,
            }),
            Item::Value(Value::InlineTable(table)) => Got::Ok(Tbl {
                name: sec.header(),
                table,
                header: key_span,
                fields: sec.fields,
            }),
            Item::ArrayOfTables(tables) => {
                let span = tables
                    .iter()
                    .next()
                    .and_then(|t| self.table_header(t))
                    .unwrap_or(key_span);
                self.report(
                    span,
                    format!("{} must be a single table, not a list", sec.header()),
                    format!("written as [[{}]]", sec.name),
                    Some(format!("write the header with single brackets: {}", sec.header())),
                );
                Got::Bad
            }
            Item::Value(_) | Item::None => {
                let span = item.span().unwrap_or(key_span);
                let example = sec.fields.first().map_or(ENV_EXAMPLE, |f| f.example);
                self.report(
                    span,
                    format!("`{}` must be a table, found {}", sec.name, kind(item)),
                    "not a table",
                    Some(format!(
                        "write it as a section:\n{}\n{example}",
                        sec.header()
                    )),
                );
                Got::Bad
            }
        }
    }

    /// Like [`Self::section`], but reports the section missing.
    fn required_section<'a>(
        &mut self,
        root: &'a Table,
        sec: &Section,
        help: &str,
    ) -> Option<Tbl<'a>> {
        match self.section(root, sec) {
            Got::Ok(t) => Some(t),
            Got::Bad => None,
            Got::Absent => {
                self.report(
                    0..0,
                    format!("missing required section {}", sec.header()),
                    format!("{} is missing from this file", sec.header()),
                    Some(help.to_string()),
                );
                None
            }
        }
    }

    /// The `[header]` line of a standard table, if it has one.
    fn table_header(&self, table: &Table) -> Option<Range<usize>> {
        if table.is_dotted() {
            return None;
        }
        header_span(self.src, table.span()?)
    }

    /// Reports keys of `t` that its schema does not know, with a suggestion.
    fn check_keys(&mut self, t: &Tbl) {
        for (key, _) in t.table.iter() {
            if t.fields.iter().any(|f| f.key == key) {
                continue;
            }
            let span = self.key_span(t, key);
            let section = t.name.trim_matches(|c| c == '[' || c == ']');
            let homes = schema::homes_of(key, section);
            let help = match closest_field(key, t.fields) {
                Some(k) => format!("did you mean `{k}`?"),
                None if !homes.is_empty() => {
                    format!("`{key}` belongs in {}, not {}", list_or(homes), t.name)
                }
                None => format!(
                    "valid keys in {} are {}",
                    t.name,
                    list(t.fields.iter().map(|f| format!("`{}`", f.key)))
                ),
            };
            self.report(
                span,
                format!("unknown key `{}` in {}", show(key), t.name),
                "unknown key",
                Some(help),
            );
        }
    }

    // ---- spans and type errors ---------------------------------------------

    fn key_span(&self, t: &Tbl, key: &str) -> Range<usize> {
        t.table
            .key(key)
            .and_then(|k| k.span())
            .unwrap_or_else(|| t.header.clone())
    }

    fn value_span(&self, t: &Tbl, key: &str, item: &Item) -> Range<usize> {
        let span = match item {
            Item::Table(table) => self.table_header(table),
            _ => item.span(),
        };
        span.unwrap_or_else(|| self.key_span(t, key))
    }

    fn example(t: &Tbl, key: &str) -> Option<&'static str> {
        t.fields.iter().find(|f| f.key == key).map(|f| f.example)
    }

    fn example_help(t: &Tbl, key: &str) -> Option<String> {
        Self::example(t, key).map(|e| format!("for example: `{e}`"))
    }

    /// Reports `key` having the wrong type; `help` defaults to the key's example.
    fn wrong_type(&mut self, t: &Tbl, key: &str, item: &Item, expected: &str, help: Option<String>) {
        let span = self.value_span(t, key, item);
        let help = help.or_else(|| Self::example_help(t, key));
        self.report(
            span,
            format!("`{}` must be {expected}, found {}", show(key), kind(item)),
            format!("expected {expected}"),
            help,
        );
    }

    /// "remove the quotes" help when a string holds what `fits` accepts.
    fn unquote_help(key: &str, item: &Item, fits: impl Fn(&str) -> bool) -> Option<String> {
        let s = item.as_str()?.trim();
        fits(s).then(|| format!("remove the quotes: `{} = {}`", show(key), show(s)))
    }

    fn missing(&mut self, t: &Tbl, key: &str) {
        let help = Self::example(t, key).map(|e| format!("add `{e}` to {}", t.name));
        self.report(
            t.header.clone(),
            format!("missing required key `{key}` in {}", t.name),
            format!("this section needs `{key}`"),
            help,
        );
    }

    /// The value of a required key, reporting it missing if absent.
    fn required<T>(&mut self, t: &Tbl, key: &str, got: Got<T>) -> Option<T> {
        match got {
            Got::Ok(v) => Some(v),
            Got::Bad => None,
            Got::Absent => {
                self.missing(t, key);
                None
            }
        }
    }

    // ---- typed getters -----------------------------------------------------

    fn string(&mut self, t: &Tbl, key: &str) -> Got<(String, Range<usize>)> {
        let Some(item) = t.table.get(key) else {
            return Got::Absent;
        };
        match item.as_str() {
            Some(s) => Got::Ok((s.to_string(), self.value_span(t, key, item))),
            None => {
                self.wrong_type(t, key, item, "a string", None);
                Got::Bad
            }
        }
    }

    fn nonempty_string(&mut self, t: &Tbl, key: &str) -> Got<(String, Range<usize>)> {
        match self.string(t, key) {
            Got::Ok((s, span)) if s.trim().is_empty() => {
                let help = Self::example_help(t, key);
                self.report(span, format!("`{key}` must not be empty"), "empty", help);
                Got::Bad
            }
            other => other,
        }
    }

    /// A whole number in `min..=max`.
    fn count(&mut self, t: &Tbl, key: &str, min: u32, max: u32) -> Got<u32> {
        let Some(item) = t.table.get(key) else {
            return Got::Absent;
        };
        let Some(n) = item.as_integer() else {
            let help = Self::unquote_help(key, item, |s| s.parse::<i64>().is_ok());
            self.wrong_type(t, key, item, "an integer", help);
            return Got::Bad;
        };
        match u32::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Got::Ok(n),
            _ => {
                let range = if max == u32::MAX {
                    format!("at least {min}")
                } else {
                    format!("between {min} and {max}")
                };
                let span = self.value_span(t, key, item);
                let help = Self::example_help(t, key);
                self.report(
                    span,
                    format!("`{key}` must be {range}, found {n}"),
                    "out of range",
                    help,
                );
                Got::Bad
            }
        }
    }

    fn boolean(&mut self, t: &Tbl, key: &str) -> Got<(bool, Range<usize>)> {
        let Some(item) = t.table.get(key) else {
            return Got::Absent;
        };
        match item.as_bool() {
            Some(b) => Got::Ok((b, self.value_span(t, key, item))),
            None => {
                let help = Self::unquote_help(key, item, |s| s == "true" || s == "false");
                self.wrong_type(t, key, item, "a boolean (true or false)", help);
                Got::Bad
            }
        }
    }

    /// A number (integer or float) greater than zero.
    fn positive_number(&mut self, t: &Tbl, key: &str) -> Got<f64> {
        let Some(item) = t.table.get(key) else {
            return Got::Absent;
        };
        let number = item
            .as_float()
            .or_else(|| item.as_integer().map(|i| i as f64));
        let Some(n) = number else {
            let help = Self::unquote_help(key, item, |s| s.parse::<f64>().is_ok());
            self.wrong_type(t, key, item, "a number", help);
            return Got::Bad;
        };
        if n.is_finite() && n > 0.0 {
            Got::Ok(n)
        } else {
            let span = self.value_span(t, key, item);
            let help = Self::example_help(t, key);
            self.report(
                span,
                format!("`{key}` must be more than 0, found {n}"),
                "must be more than 0",
                help,
            );
            Got::Bad
        }
    }

    /// A humantime duration string; zero only if `allow_zero`.
    fn duration(&mut self, t: &Tbl, key: &str, allow_zero: bool) -> Got<Duration> {
        let Some(item) = t.table.get(key) else {
            return Got::Absent;
        };
        let span = self.value_span(t, key, item);
        let units_help =
            "write a number and a unit, e.g. \"500ms\", \"2s\", \"1m\" or \"1h30m\"".to_string();
        match item.as_value() {
            Some(Value::String(s)) => match parse_duration(s.value()) {
                Ok(d) if d.is_zero() && !allow_zero => {
                    let help = Self::example_help(t, key);
                    self.report(
                        span,
                        format!("`{key}` must be longer than 0"),
                        "zero",
                        help,
                    );
                    Got::Bad
                }
                Ok(d) => Got::Ok(d),
                Err(DurationError::NoUnit) => {
                    self.report(
                        span,
                        format!("`{key}` has no unit"),
                        "no unit",
                        Some(format!(
                            "use a string with a unit, e.g. `{key} = \"{}s\"`",
                            show(s.value().trim())
                        )),
                    );
                    Got::Bad
                }
                Err(DurationError::Invalid(reason)) => {
                    self.report(
                        span,
                        format!("`{key}` is not a valid duration: {reason}"),
                        "invalid duration",
                        Some(units_help),
                    );
                    Got::Bad
                }
            },
            Some(Value::Integer(n)) => {
                self.report(
                    span,
                    format!("`{key}` must be a duration string with a unit, found an integer"),
                    "no unit",
                    Some(format!(
                        "use a string with a unit, e.g. `{key} = \"{}s\"`",
                        n.value()
                    )),
                );
                Got::Bad
            }
            Some(Value::Float(_)) => {
                self.report(
                    span,
                    format!("`{key}` must be a duration string with a unit, found a float"),
                    "no unit",
                    Some(format!("use a string with a unit, e.g. `{key} = \"1500ms\"`")),
                );
                Got::Bad
            }
            _ => {
                self.wrong_type(t, key, item, "a duration string", Some(units_help));
                Got::Bad
            }
        }
    }

    /// A memory size string such as `"256MiB"`, in bytes, greater than zero.
    fn size(&mut self, t: &Tbl, key: &str) -> Got<u64> {
        let Some(item) = t.table.get(key) else {
            return Got::Absent;
        };
        let span = self.value_span(t, key, item);
        let units_help = "units are B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024), e.g. \"256MiB\"";
        let Some(s) = item.as_str() else {
            let help = match item.as_integer() {
                Some(n) => format!("use a string with a unit, e.g. `{key} = \"{n}MiB\"`"),
                None => format!("for example: `{key} = \"256MiB\"`"),
            };
            self.wrong_type(t, key, item, "a size string with a unit", Some(help));
            return Got::Bad;
        };
        let (message, label, help) = match parse_size(s) {
            Ok(0) => (
                format!("`{key}` must be more than 0"),
                "zero",
                format!("for example: `{key} = \"256MiB\"`; remove the key for no limit"),
            ),
            Ok(bytes) => return Got::Ok(bytes),
            Err(SizeError::NoUnit) => (
                format!("`{key}` has no unit"),
                "no unit",
                format!(
                    "add a unit, e.g. `{key} = \"{}MiB\"` or `{key} = \"{}B\"`",
                    show(s.trim()),
                    show(s.trim())
                ),
            ),
            Err(SizeError::Ambiguous(unit)) => (
                format!("`{key}` has an ambiguous unit `{}`", show(&unit)),
                "ambiguous unit",
                match suggest_binary_unit(s) {
                    Some(fix) => format!(
                        "`{}` means mebibytes to Docker but millibytes to Kubernetes; write `{key} = \"{}\"`",
                        show(&unit),
                        show(&fix)
                    ),
                    None => units_help.to_string(),
                },
            ),
            Err(e) => (
                format!("`{key}` is not a valid size: \"{}\" {e}", show(s)),
                "invalid size",
                units_help.to_string(),
            ),
        };
        self.report(span, message, label, Some(help));
        Got::Bad
    }

    /// A required DNS label such as a service, team or alert name.
    fn dns_label(&mut self, t: &Tbl, key: &str, what: &str) -> Option<(String, Range<usize>)> {
        let got = self.string(t, key);
        let (name, span) = self.required(t, key, got)?;
        if let Err(e) = validate_dns_label(&name) {
            let help = match suggest_dns_label(&name) {
                Some(fix) => format!("try `{key} = \"{fix}\"`"),
                None => format!(
                    "a {what} is 1 to 63 lowercase letters, digits and `-`, starting with a letter"
                ),
            };
            self.report(
                span,
                format!("invalid {what} \"{}\": {e}", show(&name)),
                format!("invalid {what}"),
                Some(help),
            );
            return None;
        }
        Some((name, span))
    }

    /// A nested table under `key` (`labels = { ... }` or `[alerts.labels]`).
    fn sub_table<'a>(&mut self, t: &Tbl<'a>, key: &str) -> Got<Tbl<'a>> {
        let table: &'a dyn TableLike = t.table;
        let Some(item) = table.get(key) else {
            return Got::Absent;
        };
        match item.as_table_like() {
            Some(sub) => Got::Ok(Tbl {
                name: format!("`{key}`"),
                table: sub,
                header: self.value_span(t, key, item),
                fields: &[],
            }),
            None => {
                self.wrong_type(t, key, item, "a table", None);
                Got::Bad
            }
        }
    }

    // ---- sections ----------------------------------------------------------

    fn service(&mut self, t: &Tbl) -> Option<ServiceSection> {
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

    fn build(&mut self, t: &Tbl) -> Option<BuildSection> {
        self.check_keys(t);
        let command = self.nonempty_string(t, "command");
        let (command, _) = self.required(t, "command", command)?;
        Some(BuildSection { command })
    }

    fn run(&mut self, t: &Tbl) -> Option<RunSection> {
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

    fn health(&mut self, t: &Tbl) -> Option<HealthSection> {
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
    fn check_path(&mut self, path: &str, span: Range<usize>, what: &str, key: Option<&str>) -> bool {
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

    fn http(&mut self, t: &Tbl) -> Option<HttpSection> {
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
        Some(HttpSection { host, paths: paths? })
    }

    fn paths(&mut self, t: &Tbl) -> Option<Vec<String>> {
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

    fn deploy(&mut self, t: &Tbl) -> Option<DeploySection> {
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
        Some(DeploySection {
            strategy: strategy?,
            max_surge: surge?.0,
            max_unavailable: unavailable?.0,
            auto_rollback,
            healthy_deadline,
        })
        .filter(|_| both_ok)
    }

    fn env(&mut self, t: &Tbl) -> BTreeMap<String, String> {
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

    fn alerts(&mut self, root: &Table) -> Vec<AlertRule> {
        let tables = self.alert_tables(root);
        let mut seen: HashMap<String, usize> = HashMap::new();
        tables
            .iter()
            .filter_map(|t| self.alert(t, &mut seen))
            .collect()
    }

    /// Each `[[alerts]]` entry (or entry of `alerts = [{...}]`) as a table.
    fn alert_tables<'a>(&mut self, root: &'a Table) -> Vec<Tbl<'a>> {
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

    fn alert(&mut self, t: &Tbl, seen: &mut HashMap<String, usize>) -> Option<AlertRule> {
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
        let expr = self.nonempty_string(t, "expr");
        let expr = self.required(t, "expr", expr).map(|(e, _)| e);
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
        Some(AlertRule {
            name: name?,
            expr: expr?,
            for_,
            keep_firing_for,
            severity: severity?,
            summary,
            description,
            labels: labels?,
        })
    }

    fn labels(&mut self, t: &Tbl) -> Option<BTreeMap<String, String>> {
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
                        format!("label `{}` must be a string, found {}", show(key), kind(item)),
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

/// "a string", "an integer", ...: the type of `item`, for messages.
fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_kind(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "a list of tables",
    }
}

/// The type of `value`, for messages.
fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// The `[header]` part of a table's span (which covers the body too).
///
/// Scans from the opening bracket to the matching closing one(s), skipping
/// quoted keys, so `[service]  # comment` underlines only `[service]`.
fn header_span(src: &str, span: Range<usize>) -> Option<Range<usize>> {
    let start = span.start;
    let text = src.get(start..span.end.min(src.len()))?;
    if !text.starts_with('[') {
        return None;
    }
    let array = text.starts_with("[[");
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '\n' | '\r' => return Some(start..start + i),
            ']' => {
                let mut end = i + 1;
                if array && text[end..].starts_with(']') {
                    end += 1;
                }
                return Some(start..start + end);
            }
            _ => {}
        }
    }
    Some(start..start + text.len())
}

/// `[A-Za-z_][A-Za-z0-9_]*`: environment variable and label names.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `log-level` → `log_level`: a valid identifier close to `s`, if any.
fn suggest_identifier(s: &str) -> Option<String> {
    let mut fixed: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if fixed.starts_with(|c: char| c.is_ascii_digit()) {
        fixed.insert(0, '_');
    }
    (is_identifier(&fixed) && fixed != s && fixed.chars().any(|c| c != '_')).then_some(fixed)
}

/// Why `host` is not a lowercase DNS host name, if it is not.
fn host_error(host: &str) -> Option<String> {
    if host.contains("://") {
        return Some("is a URL, not a host name".into());
    }
    if host.contains(':') {
        return Some("has a port; the router matches the host name only".into());
    }
    if host.len() > 253 {
        return Some(format!("is {} characters long; at most 253 are allowed", host.len()));
    }
    if host.ends_with('.') {
        return Some("ends with `.`".into());
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("has uppercase letters".into());
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Some("has an empty label (`..` or a leading `.`)".into());
        }
        if label.len() > 63 {
            return Some(format!("label `{}` is longer than 63 characters", show(label)));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Some(format!(
                "contains {c:?}; only lowercase letters, digits, `-` and `.` are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label `{}` starts or ends with `-`", show(label)));
        }
    }
    None
}

/// A valid host close to `host`: lowercased, without scheme, port, path or trailing dot.
fn suggest_host(host: &str) -> Option<String> {
    let mut h = host.trim().to_ascii_lowercase();
    if let Some(i) = h.find("://") {
        h = h[i + 3..].to_string();
    }
    if let Some(i) = h.find(['/', ':']) {
        h.truncate(i);
    }
    let h = h.trim_end_matches('.').to_string();
    (host_error(&h).is_none() && h != host).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_span_stops_at_the_closing_bracket() {
        let src = "[service] # x]\nname = 1\n";
        assert_eq!(header_span(src, 0..src.len()), Some(0..9));
        let src = "[[alerts]]\nname = 'a'";
        assert_eq!(header_span(src, 0..src.len()), Some(0..10));
        let src = "[\"a]b\"]\n";
        assert_eq!(header_span(src, 0..src.len()), Some(0..7));
        assert_eq!(header_span("x = 1", 0..5), None);
        assert_eq!(header_span("[x", 0..99), Some(0..2));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("LOG_LEVEL"));
        assert!(is_identifier("_x1"));
        assert!(!is_identifier("1X"));
        assert!(!is_identifier("LOG-LEVEL"));
        assert!(!is_identifier(""));
        assert_eq!(suggest_identifier("LOG-LEVEL"), Some("LOG_LEVEL".into()));
        assert_eq!(suggest_identifier("1X"), Some("_1X".into()));
        assert_eq!(suggest_identifier("-"), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(host_error("checkout.localhost"), None);
        assert_eq!(host_error("a-1.example.com"), None);
        assert!(host_error("Checkout.localhost").is_some());
        assert!(host_error("a..b").is_some());
        assert!(host_error("-a.b").is_some());
        assert!(host_error("a_b.c").is_some());
        assert_eq!(
            suggest_host("https://Checkout.example.com:8080/x"),
            Some("checkout.example.com".into())
        );
        assert_eq!(suggest_host("checkout.localhost."), Some("checkout.localhost".into()));
        assert_eq!(suggest_host("a_b"), None);
    }
}
