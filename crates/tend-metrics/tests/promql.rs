//! PromQL golden tests, with expected values worked out from Prometheus's
//! documented semantics (and its own test data where noted).

use std::time::Duration;

use tend_metrics::promql::{self, EvalOptions, QueryError, Value};
use tend_metrics::{exposition, Tsdb, TsdbConfig};

const M: i64 = 60_000;

struct Db {
    _dir: tempfile::TempDir,
    db: Tsdb,
}

/// Loads Prometheus-test-style series: `name{labels} v v a+bxN _ stale`,
/// one value per `interval_ms` starting at 0.
fn load(interval_ms: i64, text: &str) -> Db {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TsdbConfig::new(dir.path());
    cfg.wal_flush = Duration::from_secs(3600);
    let db = Tsdb::open(cfg).unwrap();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let split = line
            .rfind('}')
            .map(|i| i + 1)
            .unwrap_or_else(|| line.find(' ').unwrap());
        let (series, values) = line.split_at(split);
        let labels = exposition::parse(&format!("{series} 0\n"), None, 0)
            .unwrap()
            .remove(0)
            .0;
        let mut t = 0i64;
        let mut batch = Vec::new();
        for tok in values.split_whitespace() {
            if tok == "_" {
                t += interval_ms;
                continue;
            }
            if tok == "stale" {
                batch.push((
                    labels.clone(),
                    t,
                    f64::from_bits(tend_metrics::STALE_NAN_BITS),
                ));
                t += interval_ms;
                continue;
            }
            if let Some((start, rest)) = split_expanding(tok) {
                let (delta, n) = rest;
                for k in 0..=n {
                    batch.push((labels.clone(), t, start + delta * k as f64));
                    t += interval_ms;
                }
                continue;
            }
            batch.push((labels.clone(), t, tok.parse::<f64>().unwrap()));
            t += interval_ms;
        }
        db.append(&batch).unwrap();
    }
    Db { _dir: dir, db }
}

/// Parses `a+bxN` / `a-bxN` / `axN`.
fn split_expanding(tok: &str) -> Option<(f64, (f64, i64))> {
    let (head, n) = tok.split_once('x')?;
    let n: i64 = n.parse().ok()?;
    let pos = head[1..].find(['+', '-']).map(|p| p + 1);
    Some(match pos {
        Some(p) => (head[..p].parse().ok()?, (head[p..].parse().ok()?, n)),
        None => (head.parse().ok()?, (0.0, n)),
    })
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || ((a - b).abs() <= 1e-9 * a.abs().max(b.abs()))
}

impl Db {
    fn instant(&self, q: &str, t: i64) -> Value {
        promql::instant(&self.db, q, t, &EvalOptions::default())
            .unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// Asserts an instant vector result equals `want` (labels as displayed, any order).
    fn vector(&self, q: &str, t: i64, want: &[(&str, f64)]) {
        let Value::Vector(v) = self.instant(q, t) else {
            panic!("{q}: not a vector")
        };
        let mut got: Vec<(String, f64)> = v.iter().map(|s| (s.labels.to_string(), s.v)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<(String, f64)> = want.iter().map(|(l, v)| (l.to_string(), *v)).collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got.len(),
            want.len(),
            "{q} at {t}: got {got:?}, want {want:?}"
        );
        for (g, w) in got.iter().zip(want.iter()) {
            assert_eq!(g.0, w.0, "{q}: got {got:?}");
            assert!(close(g.1, w.1), "{q} {}: got {} want {}", g.0, g.1, w.1);
        }
    }

    fn scalar(&self, q: &str, t: i64) -> f64 {
        match self.instant(q, t) {
            Value::Scalar { v, .. } => v,
            other => panic!("{q}: not a scalar: {other:?}"),
        }
    }

    fn err(&self, q: &str, t: i64) -> QueryError {
        promql::instant(&self.db, q, t, &EvalOptions::default()).expect_err(q)
    }
}

#[test]
fn selectors_lookback_staleness_offset_at() {
    let d = load(
        M,
        "up{job=\"a\"} 1 2 3 _ _ _ _ _ _ _ 9 stale\nup{job=\"b\"} 5\nother 1",
    );
    d.vector("up", 0, &[("up{job=\"a\"}", 1.0), ("up{job=\"b\"}", 5.0)]);
    d.vector(
        "up",
        2 * M + 30_000,
        &[("up{job=\"a\"}", 3.0), ("up{job=\"b\"}", 5.0)],
    );
    // Lookback is 5m, left-open: a sample at 0 is visible until just before 5m.
    d.vector("up{job=\"b\"}", 5 * M - 1, &[("up{job=\"b\"}", 5.0)]);
    d.vector("up{job=\"b\"}", 5 * M, &[]);
    d.vector("up{job=\"a\"}", 8 * M, &[]);
    d.vector("up{job=\"a\"}", 10 * M, &[("up{job=\"a\"}", 9.0)]);
    // A stale marker ends the series at once.
    d.vector("up{job=\"a\"}", 11 * M, &[]);
    d.vector(
        "up offset 9m",
        10 * M,
        &[("up{job=\"a\"}", 2.0), ("up{job=\"b\"}", 5.0)],
    );
    d.vector("up{job=\"a\"} @ 120", 10 * M, &[("up{job=\"a\"}", 3.0)]);
    d.vector(
        "{__name__=~\"up|other\", job!=\"a\"}",
        0,
        &[("other{}", 1.0), ("up{job=\"b\"}", 5.0)],
    );
    d.vector("up{job=~\"a|z\"}", 0, &[("up{job=\"a\"}", 1.0)]);
    d.vector("up{job!~\"a\"}", 0, &[("up{job=\"b\"}", 5.0)]);
    d.vector(
        "{job=\"a\" or __name__=\"other\"}",
        0,
        &[("other{}", 1.0), ("up{job=\"a\"}", 1.0)],
    );
    d.vector(
        "count_over_time(up{job=\"a\"}[20m])",
        12 * M,
        &[("{job=\"a\"}", 4.0)],
    );
    d.vector("{job=\"\", __name__=~\".+\"}", 0, &[("other{}", 1.0)]);
    let Value::Matrix(m) = d.instant("up{job=\"a\"}[3m]", 3 * M) else {
        panic!()
    };
    assert_eq!(
        m[0].samples,
        vec![(M, 2.0), (2 * M, 3.0)],
        "range windows are left-open"
    );
    assert_eq!(d.scalar("time()", 90_000), 90.0);
    assert_eq!(d.scalar("1 + 2 * 3", 0), 7.0);
    assert_eq!(d.scalar("2 ^ 3 ^ 2", 0), 512.0);
}

#[test]
fn rate_increase_irate_delta_extrapolation() {
    // A counter growing 1/s, scraped every 15 s.
    let d = load(
        15_000,
        "c 0+15x20\nstart{} _ _ _ _ _ _ 5 20 35\nreset 10 20 5\ngauge 10 5 7",
    );
    // Full window: extrapolated to both edges.
    d.vector("rate(c[1m])", 120_000, &[("{}", 1.0)]);
    d.vector("increase(c[1m])", 120_000, &[("{}", 60.0)]);
    // Series starting inside the window: start extrapolation is limited by the zero point.
    d.vector("increase(start[1m])", 120_000, &[("{}", 35.0)]);
    d.vector("rate(start[1m])", 120_000, &[("{}", 35.0 / 60.0)]);
    d.vector("irate(start[1m])", 120_000, &[("{}", 1.0)]);
    d.vector("idelta(start[1m])", 120_000, &[("{}", 15.0)]);
    // Counter reset: 10, 20, 5.
    d.vector("increase(reset[45s])", 30_000, &[("{}", 22.5)]);
    d.vector("irate(reset[45s])", 30_000, &[("{}", 5.0 / 15.0)]);
    d.vector("resets(reset[1m])", 30_000, &[("{}", 1.0)]);
    d.vector("changes(reset[1m])", 30_000, &[("{}", 2.0)]);
    // Gauges: no reset handling.
    d.vector("delta(gauge[45s])", 30_000, &[("{}", -4.5)]);
    // Fewer than two samples: no result.
    d.vector("rate(c[10s])", 120_000, &[]);
    d.vector("deriv(c[1m])", 120_000, &[("{}", 1.0)]);
    d.vector("predict_linear(c[1m], 60)", 120_000, &[("{}", 180.0)]);
}

#[test]
fn prometheus_functions_test_data_increase() {
    // From Prometheus's promql/promqltest/testdata/functions.test (left-open windows).
    let d = load(5 * M, "http_requests_total{path=\"/foo\"} 0+10x10\nhttp_requests_total{path=\"/dings\"} 10+10x10\nhttp_requests_total{path=\"/bumms\"} 1+10x10");
    d.vector(
        "increase(http_requests_total[50m])",
        50 * M,
        &[
            ("{path=\"/foo\"}", 100.0),
            ("{path=\"/dings\"}", 100.0),
            ("{path=\"/bumms\"}", 100.0),
        ],
    );
}

#[test]
fn over_time_functions() {
    let d = load(M, "g 1 5 3 NaN 2\nh 4 -1 8");
    d.vector("avg_over_time(h[5m])", 2 * M, &[("{}", 11.0 / 3.0)]);
    d.vector("sum_over_time(h[5m])", 2 * M, &[("{}", 11.0)]);
    d.vector("min_over_time(h[5m])", 2 * M, &[("{}", -1.0)]);
    d.vector("max_over_time(h[5m])", 2 * M, &[("{}", 8.0)]);
    d.vector("count_over_time(g[10m])", 4 * M, &[("{}", 5.0)]);
    d.vector("last_over_time(h[5m])", 2 * M, &[("h{}", 8.0)]);
    d.vector("present_over_time(h[5m])", 2 * M, &[("{}", 1.0)]);
    d.vector("quantile_over_time(0.5, h[5m])", 2 * M, &[("{}", 4.0)]);
    d.vector("quantile_over_time(0.75, h[5m])", 2 * M, &[("{}", 6.0)]);
    let var = ((4.0f64 - 11.0 / 3.0).powi(2)
        + (-1.0f64 - 11.0 / 3.0).powi(2)
        + (8.0f64 - 11.0 / 3.0).powi(2))
        / 3.0;
    d.vector("stdvar_over_time(h[5m])", 2 * M, &[("{}", var)]);
    d.vector("stddev_over_time(h[5m])", 2 * M, &[("{}", var.sqrt())]);
    // NaN handling of min/max follows Prometheus (NaN is replaced by any number).
    d.vector("max_over_time(g[10m])", 4 * M, &[("{}", 5.0)]);
    d.vector("absent_over_time(h[1m])", 10 * M, &[("{}", 1.0)]);
    d.vector(
        "absent_over_time(nonexistent{job=\"x\"}[1m])",
        10 * M,
        &[("{job=\"x\"}", 1.0)],
    );
    d.vector("absent_over_time(h[5m])", 2 * M, &[]);
}

#[test]
fn aggregations() {
    let d = load(
        M,
        "http{job=\"api\", instance=\"1\", code=\"200\"} 10\n\
         http{job=\"api\", instance=\"2\", code=\"200\"} 20\n\
         http{job=\"api\", instance=\"2\", code=\"500\"} 5\n\
         http{job=\"web\", instance=\"1\", code=\"200\"} 40\n",
    );
    d.vector("sum(http)", 0, &[("{}", 75.0)]);
    d.vector(
        "sum by (job) (http)",
        0,
        &[("{job=\"api\"}", 35.0), ("{job=\"web\"}", 40.0)],
    );
    d.vector(
        "sum without (instance, code) (http)",
        0,
        &[("{job=\"api\"}", 35.0), ("{job=\"web\"}", 40.0)],
    );
    d.vector(
        "sum by (__name__, job) (http)",
        0,
        &[("http{job=\"api\"}", 35.0), ("http{job=\"web\"}", 40.0)],
    );
    d.vector(
        "avg by (job) (http)",
        0,
        &[("{job=\"api\"}", 35.0 / 3.0), ("{job=\"web\"}", 40.0)],
    );
    d.vector(
        "count by (code) (http)",
        0,
        &[("{code=\"200\"}", 3.0), ("{code=\"500\"}", 1.0)],
    );
    d.vector("min(http)", 0, &[("{}", 5.0)]);
    d.vector(
        "max by (instance) (http)",
        0,
        &[("{instance=\"1\"}", 40.0), ("{instance=\"2\"}", 20.0)],
    );
    d.vector(
        "group by (job) (http)",
        0,
        &[("{job=\"api\"}", 1.0), ("{job=\"web\"}", 1.0)],
    );
    d.vector(
        "stddev(http)",
        0,
        &[(
            "{}",
            (((10.0f64 - 18.75).powi(2)
                + (20.0f64 - 18.75).powi(2)
                + (5.0f64 - 18.75).powi(2)
                + (40.0f64 - 18.75).powi(2))
                / 4.0)
                .sqrt(),
        )],
    );
    d.vector("quantile(0.5, http)", 0, &[("{}", 15.0)]);
    d.vector(
        "quantile by (job) (0.9, http)",
        0,
        &[("{job=\"api\"}", 18.0), ("{job=\"web\"}", 40.0)],
    );
    d.vector(
        "topk(2, http)",
        0,
        &[
            ("http{code=\"200\", instance=\"1\", job=\"web\"}", 40.0),
            ("http{code=\"200\", instance=\"2\", job=\"api\"}", 20.0),
        ],
    );
    d.vector(
        "bottomk by (job) (1, http)",
        0,
        &[
            ("http{code=\"500\", instance=\"2\", job=\"api\"}", 5.0),
            ("http{code=\"200\", instance=\"1\", job=\"web\"}", 40.0),
        ],
    );
    // topk output is ordered by value for instant queries.
    let Value::Vector(v) = d.instant("topk(3, http)", 0) else {
        panic!()
    };
    assert_eq!(
        v.iter().map(|s| s.v).collect::<Vec<_>>(),
        vec![40.0, 20.0, 10.0]
    );
    d.vector(
        "count_values(\"value\", http)",
        0,
        &[
            ("{value=\"10\"}", 1.0),
            ("{value=\"20\"}", 1.0),
            ("{value=\"5\"}", 1.0),
            ("{value=\"40\"}", 1.0),
        ],
    );
    d.vector(
        "count_values by (job) (\"code\", http)",
        0,
        &[
            ("{code=\"10\", job=\"api\"}", 1.0),
            ("{code=\"20\", job=\"api\"}", 1.0),
            ("{code=\"5\", job=\"api\"}", 1.0),
            ("{code=\"40\", job=\"web\"}", 1.0),
        ],
    );
    d.vector("sum(nonexistent)", 0, &[]);
}

const MATCHING: &str = "method_code:http_errors:rate5m{method=\"get\", code=\"500\"} 24\n\
    method_code:http_errors:rate5m{method=\"get\", code=\"404\"} 30\n\
    method_code:http_errors:rate5m{method=\"put\", code=\"501\"} 3\n\
    method_code:http_errors:rate5m{method=\"post\", code=\"500\"} 6\n\
    method_code:http_errors:rate5m{method=\"post\", code=\"404\"} 21\n\
    method:http_requests:rate5m{method=\"get\"} 600\n\
    method:http_requests:rate5m{method=\"del\"} 34\n\
    method:http_requests:rate5m{method=\"post\"} 120\n";

#[test]
fn vector_matching_from_prometheus_docs() {
    let d = load(M, MATCHING);
    d.vector(
        "method_code:http_errors:rate5m{code=\"500\"} / ignoring(code) method:http_requests:rate5m",
        0,
        &[("{method=\"get\"}", 0.04), ("{method=\"post\"}", 0.05)],
    );
    d.vector(
        "method_code:http_errors:rate5m / ignoring(code) group_left method:http_requests:rate5m",
        0,
        &[
            ("{code=\"500\", method=\"get\"}", 0.04),
            ("{code=\"404\", method=\"get\"}", 0.05),
            ("{code=\"500\", method=\"post\"}", 0.05),
            ("{code=\"404\", method=\"post\"}", 0.175),
        ],
    );
    d.vector(
        "method:http_requests:rate5m / on(method) group_right method_code:http_errors:rate5m",
        0,
        &[
            ("{code=\"500\", method=\"get\"}", 25.0),
            ("{code=\"404\", method=\"get\"}", 20.0),
            ("{code=\"500\", method=\"post\"}", 20.0),
            ("{code=\"404\", method=\"post\"}", 120.0 / 21.0),
        ],
    );
    // group_left(label) copies the label from the "one" side.
    let d2 = load(
        M,
        "a{x=\"1\", k=\"a\"} 1\na{x=\"2\", k=\"a\"} 2\ninfo{k=\"a\", owner=\"team\"} 1",
    );
    d2.vector(
        "a * on(k) group_left(owner) info",
        0,
        &[
            ("{k=\"a\", owner=\"team\", x=\"1\"}", 1.0),
            ("{k=\"a\", owner=\"team\", x=\"2\"}", 2.0),
        ],
    );
    let e = d.err(
        "method_code:http_errors:rate5m / ignoring(code) method:http_requests:rate5m",
        0,
    );
    assert!(
        matches!(e, QueryError::Execution(ref m) if m.contains("many-to-one matching must be explicit")),
        "{e}"
    );
    d.vector(
        "method:http_requests:rate5m / ignoring(code) group_right method_code:http_errors:rate5m",
        0,
        &[
            ("{code=\"500\", method=\"get\"}", 25.0),
            ("{code=\"404\", method=\"get\"}", 20.0),
            ("{code=\"500\", method=\"post\"}", 20.0),
            ("{code=\"404\", method=\"post\"}", 120.0 / 21.0),
        ],
    );
    let e = d.err(
        "method_code:http_errors:rate5m / ignoring(method) group_left method:http_requests:rate5m",
        0,
    );
    assert!(
        matches!(e, QueryError::Execution(ref m) if m.contains("many-to-many")),
        "{e}"
    );
    let e = d.err(
        "method:http_requests:rate5m + on() method_code:http_errors:rate5m",
        0,
    );
    assert!(
        matches!(e, QueryError::Execution(ref m) if m.contains("many-to-many")),
        "{e}"
    );
    assert_eq!(e.error_type(), "execution");
    assert_eq!(e.http_status(), 422);
}

#[test]
fn arithmetic_comparison_and_sets() {
    let d = load(
        M,
        "a{i=\"1\"} 1\na{i=\"2\"} 2\na{i=\"3\"} 3\nb{i=\"1\"} 10\nb{i=\"2\"} 20\nb{i=\"4\"} 40",
    );
    d.vector(
        "a * 2",
        0,
        &[("{i=\"1\"}", 2.0), ("{i=\"2\"}", 4.0), ("{i=\"3\"}", 6.0)],
    );
    d.vector(
        "10 - a",
        0,
        &[("{i=\"1\"}", 9.0), ("{i=\"2\"}", 8.0), ("{i=\"3\"}", 7.0)],
    );
    d.vector("a > 1", 0, &[("a{i=\"2\"}", 2.0), ("a{i=\"3\"}", 3.0)]);
    d.vector("2 < a", 0, &[("a{i=\"3\"}", 3.0)]);
    d.vector(
        "a > bool 1",
        0,
        &[("{i=\"1\"}", 0.0), ("{i=\"2\"}", 1.0), ("{i=\"3\"}", 1.0)],
    );
    d.vector("a == 2", 0, &[("a{i=\"2\"}", 2.0)]);
    d.vector("b / a", 0, &[("{i=\"1\"}", 10.0), ("{i=\"2\"}", 10.0)]);
    d.vector("b > a", 0, &[("b{i=\"1\"}", 10.0), ("b{i=\"2\"}", 20.0)]);
    d.vector("a >= bool b", 0, &[("{i=\"1\"}", 0.0), ("{i=\"2\"}", 0.0)]);
    d.vector(
        "a % 2",
        0,
        &[("{i=\"1\"}", 1.0), ("{i=\"2\"}", 0.0), ("{i=\"3\"}", 1.0)],
    );
    d.vector(
        "-a",
        0,
        &[
            ("{i=\"1\"}", -1.0),
            ("{i=\"2\"}", -2.0),
            ("{i=\"3\"}", -3.0),
        ],
    );
    d.vector("a and b", 0, &[("a{i=\"1\"}", 1.0), ("a{i=\"2\"}", 2.0)]);
    d.vector("a unless b", 0, &[("a{i=\"3\"}", 3.0)]);
    d.vector(
        "a or b",
        0,
        &[
            ("a{i=\"1\"}", 1.0),
            ("a{i=\"2\"}", 2.0),
            ("a{i=\"3\"}", 3.0),
            ("b{i=\"4\"}", 40.0),
        ],
    );
    d.vector(
        "a and on() b",
        0,
        &[
            ("a{i=\"1\"}", 1.0),
            ("a{i=\"2\"}", 2.0),
            ("a{i=\"3\"}", 3.0),
        ],
    );
    d.vector(
        "a unless on(i) b{i=\"1\"}",
        0,
        &[("a{i=\"2\"}", 2.0), ("a{i=\"3\"}", 3.0)],
    );
    assert_eq!(d.scalar("1 > bool 2", 0), 0.0);
    assert_eq!(d.scalar("7 % 4", 0), 3.0);
    // Dropping __name__ may make two series identical: Prometheus refuses that.
    let e = d.err("{__name__=~\"a|b\", i=\"1\"} * 2", 0);
    assert!(e.to_string().contains("same labelset"), "{e}");
}

#[test]
fn instant_functions() {
    let d = load(
        M,
        "v{x=\"a\"} -1.5\nv{x=\"b\"} 2.5\nv{x=\"c\"} 7.25\nsrc{a=\"x-1\", b=\"y\"} 1",
    );
    d.vector(
        "abs(v)",
        0,
        &[("{x=\"a\"}", 1.5), ("{x=\"b\"}", 2.5), ("{x=\"c\"}", 7.25)],
    );
    d.vector(
        "ceil(v)",
        0,
        &[("{x=\"a\"}", -1.0), ("{x=\"b\"}", 3.0), ("{x=\"c\"}", 8.0)],
    );
    d.vector(
        "floor(v)",
        0,
        &[("{x=\"a\"}", -2.0), ("{x=\"b\"}", 2.0), ("{x=\"c\"}", 7.0)],
    );
    // Prometheus rounds half up (floor(x + 0.5)).
    d.vector(
        "round(v)",
        0,
        &[("{x=\"a\"}", -1.0), ("{x=\"b\"}", 3.0), ("{x=\"c\"}", 7.0)],
    );
    d.vector(
        "round(v, 0.5)",
        0,
        &[("{x=\"a\"}", -1.5), ("{x=\"b\"}", 2.5), ("{x=\"c\"}", 7.5)],
    );
    d.vector(
        "clamp(v, 0, 5)",
        0,
        &[("{x=\"a\"}", 0.0), ("{x=\"b\"}", 2.5), ("{x=\"c\"}", 5.0)],
    );
    d.vector("clamp(v, 5, 0)", 0, &[]);
    d.vector(
        "clamp_min(v, 3)",
        0,
        &[("{x=\"a\"}", 3.0), ("{x=\"b\"}", 3.0), ("{x=\"c\"}", 7.25)],
    );
    d.vector(
        "clamp_max(v, 0)",
        0,
        &[("{x=\"a\"}", -1.5), ("{x=\"b\"}", 0.0), ("{x=\"c\"}", 0.0)],
    );
    d.vector("sqrt(v{x=\"c\"} - 3.25)", 0, &[("{x=\"c\"}", 2.0)]);
    d.vector("exp(v{x=\"b\"} - 2.5)", 0, &[("{x=\"b\"}", 1.0)]);
    d.vector("ln(v{x=\"b\"} - 1.5)", 0, &[("{x=\"b\"}", 0.0)]);
    d.vector(
        "sgn(v)",
        0,
        &[("{x=\"a\"}", -1.0), ("{x=\"b\"}", 1.0), ("{x=\"c\"}", 1.0)],
    );
    d.vector("vector(3)", 0, &[("{}", 3.0)]);
    assert_eq!(d.scalar("scalar(v{x=\"b\"})", 0), 2.5);
    assert!(d.scalar("scalar(v)", 0).is_nan());
    d.vector("absent(v)", 0, &[]);
    d.vector(
        "absent(nope{job=\"x\", a=~\"b\", c=\"1\", c=\"2\"})",
        0,
        &[("{job=\"x\"}", 1.0)],
    );
    d.vector("timestamp(v{x=\"a\"})", 90_000, &[("{x=\"a\"}", 0.0)]);
    d.vector("timestamp(-v{x=\"a\"})", 90_000, &[("{x=\"a\"}", 90.0)]);
    d.vector(
        "label_replace(src, \"dst\", \"$1-z\", \"a\", \"x-(.*)\")",
        0,
        &[("src{a=\"x-1\", b=\"y\", dst=\"1-z\"}", 1.0)],
    );
    d.vector(
        "label_replace(src, \"dst\", \"$1\", \"a\", \"nomatch(.*)\")",
        0,
        &[("src{a=\"x-1\", b=\"y\"}", 1.0)],
    );
    d.vector(
        "label_replace(src, \"b\", \"\", \"b\", \".*\")",
        0,
        &[("src{a=\"x-1\"}", 1.0)],
    );
    d.vector(
        "label_join(src, \"j\", \",\", \"a\", \"b\", \"none\")",
        0,
        &[("src{a=\"x-1\", b=\"y\", j=\"x-1,y,\"}", 1.0)],
    );
    let Value::Vector(v) = d.instant("sort_desc(v)", 0) else {
        panic!()
    };
    assert_eq!(
        v.iter().map(|s| s.v).collect::<Vec<_>>(),
        vec![7.25, 2.5, -1.5]
    );
    let Value::Vector(v) = d.instant("sort(v)", 0) else {
        panic!()
    };
    assert_eq!(
        v.iter().map(|s| s.v).collect::<Vec<_>>(),
        vec![-1.5, 2.5, 7.25]
    );
    // 2024-02-29T13:45:00Z = 1709214300
    let t = 1_709_214_300_000;
    let d = load(M, "");
    for (f, want) in [
        ("year", 2024.0),
        ("month", 2.0),
        ("day_of_month", 29.0),
        ("days_in_month", 29.0),
        ("day_of_week", 4.0),
        ("day_of_year", 60.0),
        ("hour", 13.0),
        ("minute", 45.0),
    ] {
        d.vector(&format!("{f}()"), t, &[("{}", want)]);
    }
}

#[test]
fn histogram_quantile_prometheus_test_data() {
    // From Prometheus's promql/promqltest/testdata/histograms.test.
    let d = load(
        5 * M,
        "testhistogram_bucket{le=\"0.1\", start=\"positive\"} 0+5x10\n\
         testhistogram_bucket{le=\".2\", start=\"positive\"} 0+7x10\n\
         testhistogram_bucket{le=\"1e0\", start=\"positive\"} 0+11x10\n\
         testhistogram_bucket{le=\"+Inf\", start=\"positive\"} 0+12x10\n\
         testhistogram_bucket{le=\"-.2\", start=\"negative\"} 0+1x10\n\
         testhistogram_bucket{le=\"-0.1\", start=\"negative\"} 0+2x10\n\
         testhistogram_bucket{le=\"0.3\", start=\"negative\"} 0+2x10\n\
         testhistogram_bucket{le=\"+Inf\", start=\"negative\"} 0+3x10\n",
    );
    let t = 50 * M;
    let q = |phi: &str| format!("histogram_quantile({phi}, testhistogram_bucket)");
    d.vector(
        &q("-0.1"),
        t,
        &[
            ("{start=\"positive\"}", f64::NEG_INFINITY),
            ("{start=\"negative\"}", f64::NEG_INFINITY),
        ],
    );
    d.vector(
        &q("1.01"),
        t,
        &[
            ("{start=\"positive\"}", f64::INFINITY),
            ("{start=\"negative\"}", f64::INFINITY),
        ],
    );
    d.vector(
        "histogram_quantile(0, testhistogram_bucket{start=\"positive\"})",
        t,
        &[("{start=\"positive\"}", 0.0)],
    );
    d.vector(
        "histogram_quantile(0, testhistogram_bucket{start=\"negative\"})",
        t,
        &[("{start=\"negative\"}", -0.2)],
    );
    d.vector(
        &q("1"),
        t,
        &[("{start=\"positive\"}", 1.0), ("{start=\"negative\"}", 0.3)],
    );
    d.vector(
        &q("0.2"),
        t,
        &[
            ("{start=\"positive\"}", 0.048),
            ("{start=\"negative\"}", -0.2),
        ],
    );
    d.vector(
        &q("0.5"),
        t,
        &[
            ("{start=\"positive\"}", 0.15),
            ("{start=\"negative\"}", -0.15),
        ],
    );
    d.vector(
        &q("0.8"),
        t,
        &[
            ("{start=\"positive\"}", 0.72),
            ("{start=\"negative\"}", 0.3),
        ],
    );
    // The usual form: quantile of rates, aggregated by le.
    d.vector(
        "histogram_quantile(0.5, sum by (le) (rate(testhistogram_bucket{start=\"positive\"}[10m])))",
        t,
        &[("{}", 0.15)],
    );
    // No +Inf bucket: NaN.
    d.vector(
        "histogram_quantile(0.5, testhistogram_bucket{le!=\"+Inf\", start=\"positive\"})",
        t,
        &[("{start=\"positive\"}", f64::NAN)],
    );
}

#[test]
fn range_queries_and_subqueries() {
    let d = load(M, "x 0+1x20\ny{a=\"1\"} 1 1 1 _ _ _ _ _ _ 1");
    let m = promql::range(&d.db, "x * 2", 0, 5 * M, M, &EvalOptions::default()).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].samples,
        (0..=5).map(|i| (i * M, 2.0 * i as f64)).collect::<Vec<_>>()
    );
    // Gaps beyond the lookback delta leave holes in range results.
    let m = promql::range(&d.db, "y", 0, 10 * M, M, &EvalOptions::default()).unwrap();
    let ts: Vec<i64> = m[0].samples.iter().map(|p| p.0 / M).collect();
    assert_eq!(ts, vec![0, 1, 2, 3, 4, 5, 6, 9, 10]);
    let m = promql::range(&d.db, "time()", 0, 2 * M, M, &EvalOptions::default()).unwrap();
    assert_eq!(m[0].samples, vec![(0, 0.0), (M, 60.0), (2 * M, 120.0)]);
    let m = promql::range(
        &d.db,
        "rate(x[2m])",
        2 * M,
        4 * M,
        M,
        &EvalOptions::default(),
    )
    .unwrap();
    assert!(
        m[0].samples
            .iter()
            .all(|p| (p.1 - 1.0 / 60.0).abs() < 1e-12),
        "{m:?}"
    );
    // Subquery windows are left-open too: inner steps 3m, 4m, 5m.
    d.vector("sum_over_time(x[3m:1m])", 5 * M, &[("{}", 12.0)]);
    d.vector(
        "max_over_time(rate(x[2m])[5m:1m])",
        10 * M,
        &[("{}", 1.0 / 60.0)],
    );
    d.vector("sum_over_time(x[3m:1m] offset 1m)", 5 * M, &[("{}", 9.0)]);
    let m = promql::range(
        &d.db,
        "sum_over_time(x[2m:1m])",
        3 * M,
        5 * M,
        M,
        &EvalOptions::default(),
    )
    .unwrap();
    assert_eq!(m[0].samples, vec![(3 * M, 5.0), (4 * M, 7.0), (5 * M, 9.0)]);
}

#[test]
fn errors_and_limits() {
    let d = load(M, "x 1 2 3");
    let e = d.err("sum(", 0);
    assert!(matches!(e, QueryError::Parse(_)));
    assert_eq!((e.error_type(), e.http_status()), ("bad_data", 400));
    let e = promql::range(&d.db, "x[5m]", 0, M, M, &EvalOptions::default()).unwrap_err();
    assert!(matches!(e, QueryError::Parse(_)), "{e}");
    let e = promql::range(&d.db, "x", 0, 100_000 * M, M, &EvalOptions::default()).unwrap_err();
    assert!(matches!(e, QueryError::Parse(_)), "{e}");
    let opts = EvalOptions {
        max_samples: 2,
        ..EvalOptions::default()
    };
    let e = promql::range(&d.db, "x", 0, 2 * M, M, &opts).unwrap_err();
    assert!(matches!(e, QueryError::TooManySamples), "{e}");
    let opts = EvalOptions {
        timeout: Duration::ZERO,
        ..EvalOptions::default()
    };
    std::thread::sleep(Duration::from_millis(2));
    let e = promql::instant(&d.db, "x", 0, &opts).unwrap_err();
    assert!(matches!(e, QueryError::Timeout), "{e}");
    let e = d.err("holt_winters(x[5m], 0.5, 0.5)", 0);
    assert!(
        matches!(e, QueryError::Parse(_) | QueryError::Execution(_)),
        "{e}"
    );
    assert!(matches!(d.instant("\"hello\"", 0), Value::String { ref v, .. } if v == "hello"));
}
