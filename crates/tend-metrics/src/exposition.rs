//! Parser of the Prometheus text exposition format (0.0.4) and OpenMetrics.
//!
//! Histogram and summary families are returned as their plain series
//! (`_bucket`, `_sum`, `_count`, `quantile=`), with `le`/`quantile` values
//! normalised to OpenMetrics float formatting as Prometheus 3 does
//! (`le="1"` → `le="1.0"`), so text and OpenMetrics scrapes agree.
//!
//! [`ScrapeCache`] is the scrape path's fast lane: like Prometheus's scrape
//! cache it maps the raw series text of a line (`name{labels}`) to the
//! finished label set, so a target's known series cost a hash lookup and a
//! float parse per scrape instead of parsing, allocating and sorting labels.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::labels::{hash_bytes, Labels, METRIC_NAME};

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
    let mut out = Vec::new();
    parse_impl(text, content_type, default_time_ms, None, &mut out)?;
    Ok(out)
}

/// Hashes cache keys (raw series text) with the crate's word-at-a-time hash
/// plus a final avalanche, as hash tables index by the low bits.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }
}

/// Which `le`/`quantile` normalisation a cached series got (it depends on
/// the `# TYPE` line in force, so a hit must see the same).
#[derive(Clone, PartialEq, Eq)]
enum Norm {
    // The series has neither label: the `# TYPE` context does not matter.
    Insensitive,
    // Has `le` and/or `quantile`; which one (if any) was normalised.
    Sensitive {
        has_le: bool,
        has_quantile: bool,
        applied: Option<Kind>,
        name: Arc<str>,
    },
}

struct CacheEntry {
    labels: Labels,
    norm: Norm,
    // Scrape generation that last saw this series (for eviction).
    seen: u64,
}

/// Per-target cache of the scrape path: raw series text → finished labels
/// (parsed, normalised, merged with the target's labels). Keep one per
/// scrape target and pass it every scrape of that target; it holds the
/// series of the latest scrape only (entries not seen are dropped, as
/// Prometheus's scrape cache does), so memory is bounded by the target.
#[derive(Default)]
pub struct ScrapeCache {
    target: Option<Labels>,
    entries: HashMap<Box<str>, CacheEntry, BuildHasherDefault<KeyHasher>>,
    generation: u64,
}

impl ScrapeCache {
    /// An empty cache.
    pub fn new() -> ScrapeCache {
        ScrapeCache::default()
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Like [`parse`], then every series gets `target`'s labels (replacing
    /// same-named ones, as [`Labels::merged`]); the samples are appended to
    /// `out` (nothing is appended on error). Equal to `parse` followed by
    /// `merged` on every sample.
    pub fn parse(
        &mut self,
        text: &str,
        content_type: Option<&str>,
        default_time_ms: i64,
        target: &Labels,
        out: &mut Vec<(Labels, i64, f64)>,
    ) -> Result<(), ParseError> {
        let start = out.len();
        if target.get(METRIC_NAME).is_some() {
            // The target would rename series: the cache keys by name, so
            // take the slow path (never the case for the collector).
            self.entries.clear();
            self.target = None;
            parse_impl(text, content_type, default_time_ms, None, out)?;
            for s in &mut out[start..] {
                s.0 = s.0.merged(target);
            }
            return Ok(());
        }
        if self.target.as_ref() != Some(target) {
            self.entries.clear();
            self.target = Some(target.clone());
        }
        self.generation += 1;
        match parse_impl(text, content_type, default_time_ms, Some(self), out) {
            Ok(()) => {
                if self.entries.len() > out.len() - start {
                    // Series gone from the target: forget them.
                    let g = self.generation;
                    self.entries.retain(|_, e| e.seen == g);
                }
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }
}

/// The end of the series part of a sample line (`name`, `name{...}` or
/// `{...}`), found without parsing it: the cache key. `None` if there is none.
fn series_key_end(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() && is_name_char(b[i]) {
        i += 1;
    }
    let name_end = i;
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    if b.get(i) != Some(&b'{') {
        return (name_end > 0).then_some(name_end);
    }
    i += 1;
    loop {
        match *b.get(i)? {
            b'"' => {
                i += 1;
                loop {
                    match *b.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'}' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The normalisation a sample line gets under the `# TYPE` in force.
fn norm_label(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Histogram => Some("le"),
        Kind::Summary => Some("quantile"),
        Kind::Other => None,
    }
}

fn parse_impl(
    text: &str,
    content_type: Option<&str>,
    default_time_ms: i64,
    mut cache: Option<&mut ScrapeCache>,
    out: &mut Vec<(Labels, i64, f64)>,
) -> Result<(), ParseError> {
    let om = content_type.is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/openmetrics-text")
    });
    let mut kind = Kind::Other;
    let mut family = String::new();
    let mut eof = false;
    let mut pairs: Vec<(Arc<str>, Arc<str>)> = Vec::new();
    let mut lines = text.split('\n').enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let line_no = i + 1;
        let err = |msg: String| ParseError { line: line_no, msg };
        let line = raw
            .strip_suffix('\r')
            .unwrap_or(raw)
            .trim_start_matches([' ', '\t']);
        if eof {
            if line.is_empty() && lines.peek().is_none() {
                continue;
            }
            return Err(err("content after # EOF".into()));
        }
        let first = line.as_bytes().first().copied();
        if first == Some(b'#') {
            let rest = line[1..].trim_start_matches([' ', '\t']);
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
        // Sample lines never start with whitespace (trimmed above) and
        // blank lines are skipped.
        if first.is_none() || line.trim().is_empty() {
            continue;
        }
        let key_end = if cache.is_some() {
            series_key_end(line)
        } else {
            None
        };
        if let (Some(c), Some(end)) = (cache.as_deref_mut(), key_end) {
            let g = c.generation;
            if let Some(e) = c.entries.get_mut(&line[..end]) {
                let valid = match &e.norm {
                    Norm::Insensitive => true,
                    Norm::Sensitive {
                        has_le,
                        has_quantile,
                        applied,
                        name,
                    } => {
                        let would = match kind {
                            Kind::Histogram if *has_le => Some(Kind::Histogram),
                            Kind::Summary if *has_quantile => Some(Kind::Summary),
                            _ => None,
                        }
                        .filter(|_| name.starts_with(family.as_str()));
                        would == *applied
                    }
                };
                if valid {
                    let (t, v) = parse_tail(line, end, om).map_err(err)?;
                    e.seen = g;
                    out.push((e.labels.clone(), t.unwrap_or(default_time_ms), v));
                    continue;
                }
            }
        }
        let (series_end, t, v) = parse_sample(line, om, &mut pairs).map_err(err)?;
        // le/quantile normalisation applies only inside the declared family.
        let mut applied = None;
        if let Some(ln) = norm_label(kind) {
            // The name was pushed last by parse_sample.
            let name = pairs.last().map(|(_, v)| &**v).unwrap_or("");
            if name.starts_with(family.as_str()) {
                for (n, val) in pairs.iter_mut() {
                    if &**n == ln {
                        applied = Some(kind);
                        if let Some(f) = parse_float(val) {
                            *val = format_openmetrics_float(f).into();
                        }
                    }
                }
            }
        }
        let (has_le, has_quantile) = pairs.iter().fold((false, false), |(l, q), (n, _)| {
            (l || &**n == "le", q || &**n == "quantile")
        });
        // parse_sample pushes the metric name last.
        let name = pairs.last().map(|(_, v)| v.clone());
        let mut labels = Labels::new(pairs.drain(..));
        if let Some(c) = cache.as_deref_mut() {
            if let Some(target) = &c.target {
                labels = labels.merged(target);
            }
            labels = labels.into_cached();
            // Cache only when the cheap key scan agrees with the parser.
            if key_end == Some(series_end) {
                let norm = if has_le || has_quantile {
                    Norm::Sensitive {
                        has_le,
                        has_quantile,
                        applied,
                        name: name.unwrap_or_else(|| "".into()),
                    }
                } else {
                    Norm::Insensitive
                };
                c.entries.insert(
                    line[..series_end].into(),
                    CacheEntry {
                        labels: labels.clone(),
                        norm,
                        seen: c.generation,
                    },
                );
            }
        }
        out.push((labels, t.unwrap_or(default_time_ms), v));
    }
    if om && !eof {
        return Err(ParseError {
            line: text.split('\n').count(),
            msg: "OpenMetrics body does not end with # EOF".into(),
        });
    }
    Ok(())
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

/// Parses one sample line into `pairs` (name last) and returns the end of
/// the series part (`name{...}`), the timestamp and the value.
fn parse_sample(
    line: &str,
    om: bool,
    pairs: &mut Vec<(Arc<str>, Arc<str>)>,
) -> Result<(usize, Option<i64>, f64), String> {
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
    let mut series_end = c.pos;
    c.skip_ws();
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
        series_end = c.pos;
    }
    let name = match name {
        Some(n) => n,
        None => match pairs.iter().position(|(n, _)| &**n == METRIC_NAME) {
            Some(i) => pairs.remove(i).1,
            None => return Err("sample without metric name".into()),
        },
    };
    let (ts, v) = parse_tail(line, series_end, om)?;
    pairs.push((METRIC_NAME.into(), name));
    Ok((series_end, ts, v))
}

/// Parses what follows the series part of a sample line: whitespace, the
/// value, an optional timestamp, and (OpenMetrics) an exemplar.
fn parse_tail(line: &str, pos: usize, om: bool) -> Result<(Option<i64>, f64), String> {
    let mut c = Cursor { s: line, pos };
    if !matches!(c.peek(), Some(b' ' | b'\t')) {
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
    Ok((ts, v))
}

/// Parses a float like Go's `strconv.ParseFloat` (NaN, ±Inf, exponents).
pub(crate) fn parse_float(s: &str) -> Option<f64> {
    // Numbers first, without allocating: this runs once per sample.
    if s.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return s.parse::<f64>().ok();
    }
    const SPECIAL: [(&str, f64); 7] = [
        ("nan", f64::NAN),
        ("inf", f64::INFINITY),
        ("+inf", f64::INFINITY),
        ("infinity", f64::INFINITY),
        ("+infinity", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
        ("-infinity", f64::NEG_INFINITY),
    ];
    SPECIAL
        .iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
        .map(|&(_, v)| v)
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

    /// `parse` then `merged`: what the cache must equal.
    fn slow(text: &str, ct: Option<&str>, target: &Labels) -> Vec<(Labels, i64, f64)> {
        let mut v = parse(text, ct, 5).unwrap();
        for s in &mut v {
            s.0 = s.0.merged(target);
        }
        v
    }

    fn cached(
        c: &mut ScrapeCache,
        text: &str,
        ct: Option<&str>,
        target: &Labels,
    ) -> Vec<(Labels, i64, f64)> {
        let mut out = Vec::new();
        c.parse(text, ct, 5, target, &mut out).unwrap();
        out
    }

    fn same(a: &[(Labels, i64, f64)], b: &[(Labels, i64, f64)]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.0, y.0);
            assert_eq!(x.0.hash_value(), y.0.hash_value());
            assert_eq!((x.1, x.2.to_bits()), (y.1, y.2.to_bits()));
        }
    }

    #[test]
    fn scrape_cache_equals_parse_and_merge() {
        let t1 = Labels::from_pairs(&[("service", "s"), ("instance", "i1"), ("a", "target")]);
        let t2 = Labels::from_pairs(&[("service", "s"), ("instance", "i2")]);
        let scrapes = [
            "# TYPE rpc histogram\nrpc_bucket{le=\"1\"} 1\nrpc_bucket {le=\"+Inf\"}\t2 77\nrpc_sum 3\n\
             x{a=\"b\",c=\"q}\\\"x\"} 1\n{\"u.v\", le=\"1\"} 4\nplain 1e3\n",
            // Same series, new values; one gone; the `# TYPE` context changed
            // for `rpc_bucket`, so its `le` must no longer be normalised.
            "# TYPE rpc gauge\nrpc_bucket{le=\"1\"} 5\nrpc_bucket {le=\"+Inf\"}\t6 78\n\
             x{a=\"b\",c=\"q}\\\"x\"} NaN\n{\"u.v\", le=\"1\"} -Inf\nplain 2\n",
            "# TYPE rpc histogram\nrpc_bucket{le=\"1\"} 7\nplain 3\nnew{z=\"1\"} 0\n",
            "# TYPE rpc summary\nrpc_bucket{le=\"1\"} 8\nrpc{quantile=\"1\"} 1\n",
        ];
        let mut c = ScrapeCache::new();
        for target in [&t1, &t1, &t2] {
            for text in scrapes {
                same(
                    &cached(&mut c, text, None, target),
                    &slow(text, None, target),
                );
                assert!(c.len() <= slow(text, None, target).len());
            }
        }
        let om = Some("application/openmetrics-text");
        let text = "foo_total{a=\"b\"} 17.0 1520879607.789 # {id=\"x\"} 1\n# EOF\n";
        for _ in 0..2 {
            same(&cached(&mut c, text, om, &t1), &slow(text, om, &t1));
        }
        // A target that names series takes the uncached path, same result.
        let named = Labels::from_pairs(&[("__name__", "n"), ("service", "s")]);
        same(
            &cached(&mut c, scrapes[0], None, &named),
            &slow(scrapes[0], None, &named),
        );
    }

    #[test]
    fn scrape_cache_errors_like_parse() {
        let t = Labels::from_pairs(&[("service", "s")]);
        let mut c = ScrapeCache::new();
        cached(&mut c, "x{a=\"1\"} 1\ny 2\n", None, &t);
        // Known series with a bad tail still fail, on the same line, and
        // nothing is appended.
        for bad in [
            "x{a=\"1\"}1",
            "x{a=\"1\"} abc",
            "y 1 2 3",
            "y",
            "x{a=\"1\"} 1 1.5",
        ] {
            let text = format!("y 1\n{bad}\n");
            let mut out = Vec::new();
            let e = c.parse(&text, None, 0, &t, &mut out).unwrap_err();
            assert_eq!(e, parse(&text, None, 0).unwrap_err(), "{bad}");
            assert!(out.is_empty());
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
