//! Parser of the Prometheus text exposition format (0.0.4) and OpenMetrics.
//!
//! Histogram and summary families are returned as their plain series
//! (`_bucket`, `_sum`, `_count`, `quantile=`), with `le`/`quantile` values
//! normalised to OpenMetrics float formatting as Prometheus 3 does
//! (`le="1"` → `le="1.0"`), so text and OpenMetrics scrapes agree.

use std::fmt;
use std::sync::Arc;

use crate::labels::{Labels, METRIC_NAME};

/// A parse failure with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    Histogram,
    Summary,
}

/// Parses an exposition body into `(labels, timestamp ms, value)`; samples
/// without a timestamp get `default_time_ms`. OpenMetrics is selected by a
/// content type of `application/openmetrics-text`.
pub fn parse(
    text: &str,
    content_type: Option<&str>,
    default_time_ms: i64,
) -> Result<Vec<(Labels, i64, f64)>, ParseError> {
    let om = content_type.is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/openmetrics-text")
    });
    let mut out = Vec::new();
    let mut kind = Kind::Other;
    let mut family = String::new();
    let mut eof = false;
    let mut pairs: Vec<(Arc<str>, Arc<str>)> = Vec::new();
    let n_lines = text.split('\n').count();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let err = |msg: String| ParseError { line: line_no, msg };
        let line = raw
            .strip_suffix('\r')
            .unwrap_or(raw)
            .trim_start_matches([' ', '\t']);
        if eof {
            if line.is_empty() && i + 1 == n_lines {
                continue;
            }
            return Err(err("content after # EOF".into()));
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start_matches([' ', '\t']);
            if om && rest.trim_end() == "EOF" {
                eof = true;
                continue;
            }
            let mut parts = rest.splitn(3, [' ', '\t']);
            if parts.next() == Some("TYPE") {
                let name = parts.next().unwrap_or("");
                let t = parts.next().unwrap_or("").trim();
                kind = match t {
                    "histogram" | "gaugehistogram" => Kind::Histogram,
                    "summary" => Kind::Summary,
                    "counter" | "gauge" | "untyped" | "unknown" | "info" | "stateset" => {
                        Kind::Other
                    }
                    _ => return Err(err(format!("invalid metric type {t:?}"))),
                };
                family = unquote_name(name);
            }
            continue;
        }
        let (t, v) = parse_sample(line, om, &mut pairs).map_err(err)?;
        // le/quantile normalisation applies only inside the declared family.
        let norm = match kind {
            Kind::Histogram => Some("le"),
            Kind::Summary => Some("quantile"),
            Kind::Other => None,
        };
        if let Some(ln) = norm {
            let name = pairs
                .iter()
                .find(|(n, _)| &**n == METRIC_NAME)
                .map(|(_, v)| &**v)
                .unwrap_or("");
            if name.starts_with(family.as_str()) {
                for (n, val) in pairs.iter_mut() {
                    if &**n == ln {
                        if let Some(f) = parse_float(val) {
                            *val = format_openmetrics_float(f).into();
                        }
                    }
                }
            }
        }
        out.push((
            Labels::new(pairs.drain(..)),
            t.unwrap_or(default_time_ms),
            v,
        ));
    }
    if om && !eof {
        return Err(ParseError {
            line: n_lines,
            msg: "OpenMetrics body does not end with # EOF".into(),
        });
    }
    Ok(out)
}

fn unquote_name(s: &str) -> String {
    if let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        unescape(inner)
    } else {
        s.to_string()
    }
}

fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            // Unknown escapes are kept verbatim, as Prometheus does.
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn name(&mut self, metric: bool) -> Option<&'a str> {
        let start = self.pos;
        match self.peek() {
            Some(b) if is_name_start(b) && (metric || b != b':') => self.pos += 1,
            _ => return None,
        }
        while matches!(self.peek(), Some(b) if is_name_char(b) && (metric || b != b':')) {
            self.pos += 1;
        }
        Some(&self.s[start..self.pos])
    }

    fn quoted(&mut self) -> Result<Arc<str>, String> {
        if self.peek() != Some(b'"') {
            return Err("expected '\"'".into());
        }
        self.pos += 1;
        let start = self.pos;
        let b = self.s.as_bytes();
        while self.pos < b.len() {
            match b[self.pos] {
                b'\\' => self.pos += 2,
                b'"' => {
                    let raw = &self.s[start..self.pos];
                    self.pos += 1;
                    // Most values have no escapes: build the shared string directly.
                    return Ok(if raw.contains('\\') {
                        unescape(raw).into()
                    } else {
                        raw.into()
                    });
                }
                _ => self.pos += 1,
            }
        }
        Err("unterminated quoted string".into())
    }

    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b != b' ' && b != b'\t') {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }
}

/// Parses one sample line into `pairs` (name last) and returns (timestamp, value).
fn parse_sample(
    line: &str,
    om: bool,
    pairs: &mut Vec<(Arc<str>, Arc<str>)>,
) -> Result<(Option<i64>, f64), String> {
    pairs.clear();
    let mut c = Cursor { s: line, pos: 0 };
    let mut name: Option<Arc<str>> = None;
    if c.peek() != Some(b'{') {
        name = Some(
            c.name(true)
                .ok_or_else(|| format!("invalid metric name in {line:?}"))?
                .into(),
        );
    }
    let before = c.pos;
    c.skip_ws();
    let mut separated = c.pos > before;
    if c.peek() == Some(b'{') {
        c.pos += 1;
        loop {
            c.skip_ws();
            match c.peek() {
                Some(b'}') => {
                    c.pos += 1;
                    break;
                }
                None => return Err("unterminated label set".into()),
                _ => {}
            }
            let lname = if c.peek() == Some(b'"') {
                c.quoted()?
            } else {
                c.name(false)
                    .ok_or_else(|| format!("invalid label name at column {}", c.pos + 1))?
                    .into()
            };
            c.skip_ws();
            if c.peek() != Some(b'=') {
                // A lone quoted string is the metric name (UTF-8 names: `{"my.metric", a="b"}`).
                if name.is_none() && matches!(c.peek(), Some(b',' | b'}')) {
                    name = Some(lname);
                    if c.peek() == Some(b',') {
                        c.pos += 1;
                    }
                    continue;
                }
                return Err(format!("expected '=' after label name {lname:?}"));
            }
            c.pos += 1;
            c.skip_ws();
            let value = c.quoted()?;
            if pairs.iter().any(|(n, _)| *n == lname) || (&*lname == METRIC_NAME && name.is_some())
            {
                return Err(format!("duplicate label name {lname:?}"));
            }
            pairs.push((lname, value));
            c.skip_ws();
            match c.peek() {
                Some(b',') => c.pos += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' at column {}", c.pos + 1)),
            }
        }
        separated = matches!(c.peek(), Some(b' ' | b'\t'));
    }
    let name = match name {
        Some(n) => n,
        None => match pairs.iter().position(|(n, _)| &**n == METRIC_NAME) {
            Some(i) => pairs.remove(i).1,
            None => return Err("sample without metric name".into()),
        },
    };
    if !separated {
        return Err(format!(
            "expected whitespace before the value at column {}",
            c.pos + 1
        ));
    }
    c.skip_ws();
    let vtok = c.token();
    if vtok.is_empty() {
        return Err("missing value".into());
    }
    let v = parse_float(vtok).ok_or_else(|| format!("invalid value {vtok:?}"))?;
    c.skip_ws();
    let mut ts = None;
    if c.peek().is_some_and(|b| b != b'#') {
        let tok = c.token();
        ts = Some(if om {
            // OpenMetrics timestamps are float seconds.
            let f = parse_float(tok)
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("invalid timestamp {tok:?}"))?;
            (f * 1000.0) as i64
        } else {
            tok.parse::<i64>()
                .map_err(|_| format!("invalid timestamp {tok:?}"))?
        });
        c.skip_ws();
    }
    match c.peek() {
        None => {}
        // An exemplar (OpenMetrics) is not stored.
        Some(b'#') if om => {}
        Some(_) => {
            return Err(format!(
                "unexpected text after sample: {:?}",
                &line[c.pos..]
            ))
        }
    }
    pairs.push((METRIC_NAME.into(), name));
    Ok((ts, v))
}

/// Parses a float like Go's `strconv.ParseFloat` (NaN, ±Inf, exponents).
pub(crate) fn parse_float(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "nan" => Some(f64::NAN),
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => {
            if s.bytes()
                .any(|b| !(b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
            {
                return None;
            }
            s.parse::<f64>().ok()
        }
    }
}

/// Formats like Go's `strconv.FormatFloat(f, 'g', -1, 64)`: shortest
/// digits, exponent form when the exponent is < -4 or >= 6 (`1e+06`).
pub(crate) fn format_go_g(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde±x".
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

/// Formats like Go's `strconv.FormatFloat(f, 'f', -1, 64)` (no exponent).
pub(crate) fn format_go_f(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{f}")
    }
}

/// OpenMetrics float formatting used for `le`/`quantile` label values.
pub(crate) fn format_openmetrics_float(f: f64) -> String {
    if f == 1.0 {
        return "1.0".into();
    }
    if f == 0.0 {
        return "0.0".into();
    }
    if f == -1.0 {
        return "-1.0".into();
    }
    let s = format_go_g(f);
    if s.contains(['e', '.', 'N', 'I']) {
        s
    } else {
        s + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (Labels, i64, f64) {
        let mut v = parse(text, None, 42).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn text_format_basics() {
        let body = "# HELP http_requests_total The total \\n number.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
                    http_requests_total{method=\"post\",code=\"400\",}    3   1395066363000\n\
                    \n\
                    # A normal comment.\n\
                    msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
                    metric_without_timestamp_and_labels 12.47\n\
                    something_weird{problem=\"division by zero\"} +Inf -3982045\n\
                    nan_metric NaN\n\
                    neg_inf -Inf\n";
        let v = parse(body, Some("text/plain; version=0.0.4"), 7).unwrap();
        assert_eq!(v.len(), 7);
        assert_eq!(
            v[0].0.to_string(),
            "http_requests_total{code=\"200\", method=\"post\"}"
        );
        assert_eq!((v[0].1, v[0].2), (1395066363000, 1027.0));
        assert_eq!(v[1].2, 3.0);
        assert_eq!(v[2].0.get("path"), Some("C:\\DIR\\FILE.TXT"));
        assert_eq!(v[2].0.get("error"), Some("Cannot find file:\n\"FILE.TXT\""));
        assert_eq!((v[2].1, v[2].2), (7, 1.458255915e9));
        assert_eq!(
            v[3].0.metric_name(),
            Some("metric_without_timestamp_and_labels")
        );
        assert_eq!((v[4].1, v[4].2), (-3982045, f64::INFINITY));
        assert!(v[5].2.is_nan());
        assert_eq!(v[6].2, f64::NEG_INFINITY);
    }

    #[test]
    fn histogram_and_summary_lines_are_plain_series() {
        let body = "# TYPE rpc histogram\n\
                    rpc_bucket{le=\"0.05\"} 24054\n\
                    rpc_bucket{le=\"1\"} 33444\n\
                    rpc_bucket{le=\"+Inf\"} 144320\n\
                    rpc_sum 53423\n\
                    rpc_count 144320\n\
                    # TYPE lat summary\n\
                    lat{quantile=\"0\"} 3\n\
                    lat{quantile=\"0.99\"} 4\n\
                    lat_sum 1\n\
                    lat_count 2\n\
                    # TYPE other gauge\n\
                    other{le=\"1\"} 1\n";
        let v = parse(body, None, 0).unwrap();
        let les: Vec<_> = v.iter().filter_map(|s| s.0.get("le")).collect();
        assert_eq!(les, vec!["0.05", "1.0", "+Inf", "1"]);
        let qs: Vec<_> = v.iter().filter_map(|s| s.0.get("quantile")).collect();
        assert_eq!(qs, vec!["0.0", "0.99"]);
        assert_eq!(v.len(), 10);
    }

    #[test]
    fn openmetrics() {
        let body = "# TYPE foo counter\n# HELP foo help\nfoo_total{a=\"b\"} 17.0 1520879607.789 # {id=\"x\"} 1 1520879607.7\nfoo_created 1520430000.123\n# EOF\n";
        let v = parse(
            body,
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            0,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].1, v[0].2), (1520879607789, 17.0));
        assert_eq!(v[1].0.metric_name(), Some("foo_created"));
        let e = parse("foo 1\n", Some("application/openmetrics-text"), 0).unwrap_err();
        assert!(e.msg.contains("EOF"));
        assert!(parse("# EOF\nfoo 1\n", Some("application/openmetrics-text"), 0).is_err());
    }

    #[test]
    fn utf8_names_and_escapes() {
        let (l, t, v) = one("{\"my.metric\", \"label.x\"=\"a\\\"b\"} 1\n");
        assert_eq!(l.metric_name(), Some("my.metric"));
        assert_eq!(l.get("label.x"), Some("a\"b"));
        assert_eq!((t, v), (42, 1.0));
        let (l, _, _) = one("x{a=\"\"} 2");
        assert!(l.get("a").is_none(), "empty values mean absent");
    }

    #[test]
    fn errors_have_line_numbers() {
        for bad in [
            "x{a=\"1\",a=\"2\"} 1",
            "x{a=1} 1",
            "x 1 2 3",
            "x",
            "x{a=\"1\" 1",
            "1x 2",
            "x abc",
            "x 1 1.5",
            "# TYPE x bogus",
        ] {
            let e = parse(&format!("ok 1\n{bad}\n"), None, 0).unwrap_err();
            assert_eq!(e.line, 2, "{bad}: {e}");
        }
    }

    #[test]
    fn go_float_formatting() {
        assert_eq!(format_openmetrics_float(1.0), "1.0");
        assert_eq!(format_openmetrics_float(10.0), "10.0");
        assert_eq!(format_openmetrics_float(0.005), "0.005");
        assert_eq!(format_openmetrics_float(1e-5), "1e-05");
        assert_eq!(format_openmetrics_float(f64::INFINITY), "+Inf");
        assert_eq!(format_openmetrics_float(2.5e6), "2.5e+06");
        assert_eq!(format_openmetrics_float(100000.0), "100000.0");
    }
}
