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

mod alerts;
mod getters;
mod metrics;
mod secrets;
mod sections;
mod text;

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, TableLike, TomlError, Value};

use crate::diagnostic::{show, ManifestError, Problem};
use crate::schema::{
    self, closest, closest_field, list, list_or, Field, Section, ALERT_DEFAULTS_SECTION,
    BUILD_SECTION, DEPLOY_SECTION, ENV_EXAMPLE, ENV_SECTION, HEALTH_SECTION, HTTP_SECTION,
    RUN_SECTION, SECTIONS, SERVICE_SECTION,
};
use crate::spec::{AlertDefaults, DeploySection, HttpSection, SecretsSection, ServiceSpec};
use text::{header_span, kind};

/// Largest manifest accepted, in bytes: a `tend.toml` describes one service,
/// so anything bigger is a mistake (or an attempt to make the server work hard).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

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
        let secrets = match self.section(root, &schema::SECRETS_SECTION) {
            Got::Ok(t) => self.secrets(&t, &env),
            Got::Absent => Some(SecretsSection::default()),
            Got::Bad => None,
        };
        let alert_defaults = match self.section(root, &ALERT_DEFAULTS_SECTION) {
            Got::Ok(t) => self.alert_defaults(&t),
            Got::Absent => Some(AlertDefaults::default()),
            Got::Bad => None,
        };
        let metrics = match self.section(root, &schema::METRICS_SECTION) {
            Got::Ok(t) => Some(self.metrics(&t)?),
            Got::Absent => None,
            Got::Bad => return None,
        };
        Some(ServiceSpec {
            service: service?,
            build,
            run: run?,
            health,
            http: http?,
            deploy: deploy?,
            env,
            alerts,
            metrics,
            alert_defaults: alert_defaults?,
            secrets: secrets?,
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
                let help =
                    match closest(key, SECTIONS.iter().map(|s| s.name)).and_then(schema::section) {
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
                    Some(format!(
                        "write the header with single brackets: {}",
                        sec.header()
                    )),
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
}
