//! Reading one key: spans, type errors and the typed getters.
//!
//! Every getter records its own problem and returns [`Got::Bad`], so callers
//! only decide what a missing key means.

use std::ops::Range;
use std::time::Duration;

use tend_core::names::{suggest_dns_label, validate_dns_label};
use toml_edit::{Item, TableLike, Value};

use super::text::kind;
use super::{Got, Tbl, Walker};
use crate::diagnostic::show;
use crate::duration::{parse_duration, DurationError};
use crate::size::{parse_size, suggest_binary_unit, SizeError};

/// The strings of a list with their spans, and whether every entry was one.
pub(super) type StringList = (Vec<(String, Range<usize>)>, bool);

impl Walker<'_> {
    /// `key = ["a", "b"]`: each string with its span. A missing key is an
    /// empty list; a value that is not an array is reported and gives `None`.
    /// Entries that are not strings are reported and left out, and make the
    /// returned flag false, so callers still check the others.
    pub(super) fn string_list(&mut self, t: &Tbl, key: &str, example: &str) -> Option<StringList> {
        let Some(item) = t.table.get(key) else {
            return Some((Vec::new(), true));
        };
        let Some(array) = item.as_array() else {
            let help = item
                .as_str()
                .map(|s| format!("use a list: `{key} = [\"{}\"]`", show(s)));
            self.wrong_type(t, key, item, "an array of strings", help);
            return None;
        };
        let fallback = self.value_span(t, key, item);
        let mut entries = Vec::new();
        let mut ok = true;
        for value in array.iter() {
            let span = value.span().unwrap_or_else(|| fallback.clone());
            match value.as_str() {
                Some(s) => entries.push((s.to_string(), span)),
                None => {
                    self.report(
                        span,
                        format!(
                            "each entry of `{key}` must be a string, found {}",
                            super::text::value_kind(value)
                        ),
                        "expected a string",
                        Some(format!("for example: `{key} = [\"{example}\"]`")),
                    );
                    ok = false;
                }
            }
        }
        Some((entries, ok))
    }

    pub(super) fn key_span(&self, t: &Tbl, key: &str) -> Range<usize> {
        t.table
            .key(key)
            .and_then(|k| k.span())
            .unwrap_or_else(|| t.header.clone())
    }

    pub(super) fn value_span(&self, t: &Tbl, key: &str, item: &Item) -> Range<usize> {
        let span = match item {
            Item::Table(table) => self.table_header(table),
            _ => item.span(),
        };
        span.unwrap_or_else(|| self.key_span(t, key))
    }

    pub(super) fn example(t: &Tbl, key: &str) -> Option<&'static str> {
        t.fields.iter().find(|f| f.key == key).map(|f| f.example)
    }

    pub(super) fn example_help(t: &Tbl, key: &str) -> Option<String> {
        Self::example(t, key).map(|e| format!("for example: `{e}`"))
    }

    /// Reports `key` having the wrong type; `help` defaults to the key's example.
    pub(super) fn wrong_type(
        &mut self,
        t: &Tbl,
        key: &str,
        item: &Item,
        expected: &str,
        help: Option<String>,
    ) {
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
    pub(super) fn unquote_help(
        key: &str,
        item: &Item,
        fits: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let s = item.as_str()?.trim();
        fits(s).then(|| format!("remove the quotes: `{} = {}`", show(key), show(s)))
    }

    pub(super) fn missing(&mut self, t: &Tbl, key: &str) {
        let help = Self::example(t, key).map(|e| format!("add `{e}` to {}", t.name));
        self.report(
            t.header.clone(),
            format!("missing required key `{key}` in {}", t.name),
            format!("this section needs `{key}`"),
            help,
        );
    }

    /// The value of a required key, reporting it missing if absent.
    pub(super) fn required<T>(&mut self, t: &Tbl, key: &str, got: Got<T>) -> Option<T> {
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

    pub(super) fn string(&mut self, t: &Tbl, key: &str) -> Got<(String, Range<usize>)> {
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

    pub(super) fn nonempty_string(&mut self, t: &Tbl, key: &str) -> Got<(String, Range<usize>)> {
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
    pub(super) fn count(&mut self, t: &Tbl, key: &str, min: u32, max: u32) -> Got<u32> {
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

    pub(super) fn boolean(&mut self, t: &Tbl, key: &str) -> Got<(bool, Range<usize>)> {
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
    pub(super) fn positive_number(&mut self, t: &Tbl, key: &str) -> Got<f64> {
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
    pub(super) fn duration(&mut self, t: &Tbl, key: &str, allow_zero: bool) -> Got<Duration> {
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
                    self.report(span, format!("`{key}` must be longer than 0"), "zero", help);
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
                    Some(format!(
                        "use a string with a unit, e.g. `{key} = \"1500ms\"`"
                    )),
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
    pub(super) fn size(&mut self, t: &Tbl, key: &str) -> Got<u64> {
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
    pub(super) fn dns_label(
        &mut self,
        t: &Tbl,
        key: &str,
        what: &str,
    ) -> Option<(String, Range<usize>)> {
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
    pub(super) fn sub_table<'a>(&mut self, t: &Tbl<'a>, key: &str) -> Got<Tbl<'a>> {
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
}
