//! `tend metrics NAME`: a service's golden signals at a glance.
//!
//! Every row is one PromQL range query over the Prometheus API (the same
//! queries a Grafana dashboard would run, shown by `-o json`), drawn as a
//! sparkline with its latest value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{Global, MetricsArgs, Output};
use crate::output::{print_table, table};

/// The eight levels of a sparkline, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// How a signal's values read.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Unit {
    PerSecond,
    Ratio,
    Seconds,
    Cores,
    Bytes,
    Count,
}

/// One row: a named query and what it returned.
#[derive(Debug, Serialize)]
struct Signal {
    name: &'static str,
    unit: Unit,
    query: String,
    /// The latest value, if any point has one.
    now: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    /// `[unix seconds, value or null]` at every step from start to end.
    points: Vec<(f64, Option<f64>)>,
}

#[derive(Debug, Serialize)]
struct Report {
    service: String,
    start: f64,
    end: f64,
    step_seconds: f64,
    signals: Vec<Signal>,
}

/// The queries, for service `s` with rate window `w` (a PromQL duration).
fn queries(s: &str, w: &str) -> Vec<(&'static str, Unit, String)> {
    let router = format!("service=\"{s}\"");
    let runtime = format!("service=\"{s}\",job=\"runtime\"");
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by (le) (rate(tend_http_request_duration_seconds_bucket{{{router}}}[{w}])))"
        )
    };
    vec![
        (
            "requests",
            Unit::PerSecond,
            format!("sum(rate(tend_http_requests_total{{{router}}}[{w}]))"),
        ),
        (
            "errors",
            Unit::Ratio,
            format!(
                "(sum(rate(tend_http_requests_total{{{router},code=\"5xx\"}}[{w}])) or vector(0)) / sum(rate(tend_http_requests_total{{{router}}}[{w}]))"
            ),
        ),
        ("latency p50", Unit::Seconds, quantile(0.5)),
        ("latency p99", Unit::Seconds, quantile(0.99)),
        (
            "cpu",
            Unit::Cores,
            format!("sum(rate(process_cpu_seconds_total{{{runtime}}}[{w}]))"),
        ),
        (
            "memory",
            Unit::Bytes,
            format!("sum(process_resident_memory_bytes{{{runtime}}})"),
        ),
        (
            "restarts",
            Unit::Count,
            format!("sum(tend_instance_restarts_total{{{runtime}}})"),
        ),
        (
            "ready",
            Unit::Count,
            format!("sum(tend_instance_ready{{{runtime}}})"),
        ),
    ]
}

/// Shows the golden signals of one service over `--since`.
pub async fn run(g: &Global, args: MetricsArgs) -> Result<()> {
    let name: tend_core::ServiceName = super::name("service", &args.name)?;
    let client = super::client(g)?;
    // A clear "no such service" (or "not your team's") before any query.
    client.service(name.as_str()).await?;
    let end = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let since = args.since.max(Duration::from_secs(10)).as_secs_f64();
    let start = end - since;
    let step = (since / f64::from(args.width)).max(1.0);
    // Like Grafana's $__rate_interval: at least two steps, and a minute so
    // that a few scrapes fall in each window.
    let window = format!("{}s", (2.0 * step).max(60.0).ceil() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (label, unit, q)) in queries(name.as_str(), &window).into_iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let data = client
                .prometheus(
                    "/api/v1/query_range",
                    &[
                        ("query", q.clone()),
                        ("start", start.to_string()),
                        ("end", end.to_string()),
                        ("step", step.to_string()),
                    ],
                )
                .await;
            (i, label, unit, q, data)
        });
    }
    let mut signals = Vec::new();
    for (i, label, unit, query, data) in tasks.join_all().await {
        let data = data?;
        let points = align(&data, start, end, step);
        let finite = || points.iter().filter_map(|p| p.1);
        signals.push((
            i,
            Signal {
                name: label,
                unit,
                query,
                now: points.iter().rev().find_map(|p| p.1),
                min: finite().reduce(f64::min),
                max: finite().reduce(f64::max),
                points,
            },
        ));
    }
    signals.sort_by_key(|(i, _)| *i);
    let report = Report {
        service: name.to_string(),
        start,
        end,
        step_seconds: step,
        signals: signals.into_iter().map(|(_, s)| s).collect(),
    };
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: last {} (a point every {})",
        report.service,
        humantime::format_duration(Duration::from_secs(since as u64)),
        humantime::format_duration(Duration::from_secs(step.round() as u64))
    );
    let mut t = table(["signal", "now", "min", "max", "trend"]);
    for s in &report.signals {
        t.add_row(vec![
            s.name.to_string(),
            format_value(s.now, s.unit),
            format_value(s.min, s.unit),
            format_value(s.max, s.unit),
            sparkline(&s.points),
        ]);
    }
    print_table(&t);
    if report.signals.iter().all(|s| s.now.is_none()) {
        eprintln!("no data yet: metrics are collected every scrape interval once instances run");
    }
    Ok(())
}

/// The first series of a matrix result, on the grid `start + k * step`.
fn align(data: &Value, start: f64, end: f64, step: f64) -> Vec<(f64, Option<f64>)> {
    let n = ((end - start) / step).floor() as usize + 1;
    let mut out: Vec<(f64, Option<f64>)> =
        (0..n).map(|k| (start + k as f64 * step, None)).collect();
    let values = data["result"][0]["values"].as_array();
    for p in values.into_iter().flatten() {
        let (Some(t), Some(v)) = (p[0].as_f64(), p[1].as_str()) else {
            continue;
        };
        let k = ((t - start) / step).round();
        let v = v.parse::<f64>().ok().filter(|v| v.is_finite());
        if k >= 0.0 && (k as usize) < n {
            out[k as usize].1 = v;
        }
    }
    out
}

/// Unicode bars scaled between the series' min and max; a space where there is no point.
fn sparkline(points: &[(f64, Option<f64>)]) -> String {
    let finite: Vec<f64> = points.iter().filter_map(|p| p.1).collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    points
        .iter()
        .map(|p| match p.1 {
            None => ' ',
            Some(_) if hi <= lo => BARS[0],
            Some(v) => {
                let i = ((v - lo) / (hi - lo) * (BARS.len() - 1) as f64).round() as usize;
                BARS[i.min(BARS.len() - 1)]
            }
        })
        .collect()
}

/// A value for people: `12.3/s`, `0.52%`, `230ms`, `45.2MiB`.
fn format_value(v: Option<f64>, unit: Unit) -> String {
    let Some(v) = v else {
        return "-".into();
    };
    match unit {
        Unit::PerSecond => format!("{}/s", short(v)),
        Unit::Ratio => format!("{}%", short(v * 100.0)),
        Unit::Seconds if v < 1e-3 => format!("{}µs", short(v * 1e6)),
        Unit::Seconds if v < 1.0 => format!("{}ms", short(v * 1e3)),
        Unit::Seconds => format!("{}s", short(v)),
        Unit::Cores => short(v),
        Unit::Bytes => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut x = v;
            let mut i = 0;
            while x >= 1024.0 && i + 1 < units.len() {
                x /= 1024.0;
                i += 1;
            }
            format!("{}{}", short(x), units[i])
        }
        Unit::Count => format!("{}", v.round()),
    }
}

/// Three significant digits, no trailing zeros.
fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_and_show_gaps() {
        let pts = |vs: &[Option<f64>]| -> Vec<(f64, Option<f64>)> {
            vs.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect()
        };
        assert_eq!(
            sparkline(&pts(&[Some(0.0), Some(7.0), None, Some(3.5)])),
            "▁█ ▅"
        );
        assert_eq!(sparkline(&pts(&[Some(2.0), Some(2.0)])), "▁▁");
        assert_eq!(sparkline(&pts(&[None, None])), "  ");
    }

    #[test]
    fn values_read_like_people_write_them() {
        assert_eq!(format_value(Some(12.345), Unit::PerSecond), "12.3/s");
        assert_eq!(format_value(Some(0.0052), Unit::Ratio), "0.52%");
        assert_eq!(format_value(Some(0.23), Unit::Seconds), "230ms");
        assert_eq!(format_value(Some(1.5), Unit::Seconds), "1.5s");
        assert_eq!(format_value(Some(47_400_000.0), Unit::Bytes), "45.2MiB");
        assert_eq!(format_value(Some(2.0), Unit::Count), "2");
        assert_eq!(format_value(None, Unit::Cores), "-");
    }

    #[test]
    fn matrices_land_on_the_grid() {
        let data = serde_json::json!({"resultType": "matrix", "result": [
            {"metric": {}, "values": [[100.0, "1"], [120.0, "NaN"], [130.0, "3"]]}
        ]});
        let got = align(&data, 100.0, 130.0, 10.0);
        assert_eq!(
            got,
            vec![
                (100.0, Some(1.0)),
                (110.0, None),
                (120.0, None),
                (130.0, Some(3.0))
            ]
        );
    }
}
