//! Charts as SVG, drawn on the server: no chart library, no build step, and
//! a page that is complete as it arrives.

use std::fmt::Write;

use maud::{html, Markup, PreEscaped};

/// How a chart's values read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Requests per second.
    PerSecond,
    /// A fraction shown as a percentage.
    Ratio,
    /// Seconds, shown as ms or s.
    Seconds,
    /// Bytes, shown as KiB/MiB/GiB.
    Bytes,
    /// CPU cores (CPU seconds per second), shown as mCPU below one.
    Cores,
    /// A bare number.
    Plain,
}

/// A value in its unit, short (`12.3 req/s`, `4.2%`, `180 ms`, `64 MiB`).
pub fn format(v: f64, unit: Unit) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    match unit {
        Unit::PerSecond => format!("{} req/s", num(v)),
        Unit::Ratio => format!("{}%", num(v * 100.0)),
        Unit::Seconds if v < 1.0 => format!("{} ms", num(v * 1000.0)),
        Unit::Seconds => format!("{} s", num(v)),
        Unit::Bytes => {
            let mut v = v;
            for suffix in ["B", "KiB", "MiB", "GiB"] {
                if v < 1024.0 {
                    return format!("{} {suffix}", num(v));
                }
                v /= 1024.0;
            }
            format!("{} TiB", num(v))
        }
        // Millicores below one core, as `kubectl top` shows them.
        Unit::Cores if v.abs() < 1.0 => format!("{} mCPU", num(v * 1000.0)),
        Unit::Cores => format!("{} CPU", num(v)),
        Unit::Plain => num(v),
    }
}

/// A number with about three significant digits.
fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Points (time ms, value) as SVG path data scaled into `w`×`h` between
/// `t0..t1` and `0..max`; non-finite values break the line.
fn path(points: &[(i64, f64)], t0: i64, t1: i64, max: f64, x0: f64, w: f64, h: f64) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    let span = (t1 - t0).max(1) as f64;
    for &(t, v) in points {
        if !v.is_finite() {
            pen_down = false;
            continue;
        }
        let x = x0 + (t - t0) as f64 / span * w;
        let y = h - (v / max).clamp(0.0, 1.0) * h;
        let _ = write!(d, "{}{x:.1},{y:.1}", if pen_down { " L" } else { " M" });
        pen_down = true;
    }
    d
}

fn max_of<'a>(series: impl Iterator<Item = &'a [(i64, f64)]>) -> f64 {
    let m = series
        .flat_map(|s| s.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    if m > 0.0 {
        m
    } else {
        1.0
    }
}

/// Where a chart should start: at `t0`, or later if no series has a value
/// before then (a fresh server, a new service), so what there is fills the
/// chart instead of a sliver at its right edge. At least a minute is shown.
pub fn fit_start<'a>(t0: i64, t1: i64, series: impl Iterator<Item = &'a [(i64, f64)]>) -> i64 {
    let first = series
        .filter_map(|s| s.iter().find(|p| p.1.is_finite()).map(|p| p.0))
        .min();
    match first {
        Some(f) if f > t0 => f.min(t1 - 60_000).max(t0),
        _ => t0,
    }
}

/// A small line without axes for tables: the shape of the last half hour.
pub fn sparkline(points: &[(i64, f64)], t0: i64, t1: i64, label: &str) -> Markup {
    const W: f64 = 80.0;
    const H: f64 = 20.0;
    let max = max_of(std::iter::once(points));
    let d = path(points, t0, t1, max, 0.0, W, H - 1.0);
    html! {
        svg class="spark" viewBox="0 0 80 20" width="80" height="20" role="img" aria-label=(label) {
            @if d.is_empty() {
                line x1="0" y1="19" x2="80" y2="19" class="spark-none" {}
            } @else {
                path d=(d) {}
            }
        }
    }
}

/// One line of a chart.
pub struct Line<'a> {
    /// Legend text.
    pub name: String,
    /// (time ms, value) points.
    pub points: &'a [(i64, f64)],
}

/// A chart with a y axis, start/end times and a legend.
pub fn chart(title: &str, unit: Unit, lines: &[Line<'_>], t0: i64, t1: i64) -> Markup {
    const W: f64 = 400.0;
    const H: f64 = 130.0;
    const LEFT: f64 = 66.0;
    let t0 = fit_start(t0, t1, lines.iter().map(|l| l.points));
    let max = max_of(lines.iter().map(|l| l.points));
    let plot_w = W - LEFT - 8.0;
    let mut body = String::new();
    for frac in [0.0, 0.5, 1.0] {
        let y = H - frac * H;
        let _ = write!(
            body,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - 8.0,
            LEFT - 6.0,
            (y + 4.0).clamp(10.0, H),
            escape(&format(max * frac, unit))
        );
    }
    for (i, l) in lines.iter().enumerate() {
        let d = path(l.points, t0, t1, max, LEFT, plot_w, H);
        if !d.is_empty() {
            let _ = write!(body, r#"<path class="s{}" d="{d}"/>"#, i % 6);
        }
    }
    let empty = lines
        .iter()
        .all(|l| l.points.iter().all(|p| !p.1.is_finite()));
    let summary = if empty {
        format!("{title}: no data in this window")
    } else {
        let parts: Vec<String> = lines
            .iter()
            .map(|l| {
                let last = l.points.iter().rev().find(|p| p.1.is_finite()).map(|p| p.1);
                format!(
                    "{} {}",
                    l.name,
                    last.map(|v| format(v, unit)).unwrap_or_else(|| "–".into())
                )
            })
            .collect();
        format!("{title}, latest: {}", parts.join(", "))
    };
    html! {
        figure class="chart" {
            figcaption { (title) }
            svg viewBox="0 0 400 148" role="img" aria-label=(summary) {
                (PreEscaped(body))
                text class="tick" x=(LEFT) y="146" { (clock(t0)) }
                text class="tick" x="392" y="146" text-anchor="end" { (clock(t1)) }
                @if empty {
                    text class="nodata" x="225" y="70" text-anchor="middle" { "no data in this window" }
                }
            }
            @if !empty {
                ul class="legend" {
                    @for (i, l) in lines.iter().enumerate() {
                        li { span class=(format!("key s{}", i % 6)) {} (l.name) }
                    }
                }
            }
        }
    }
}

/// `HH:MM` (UTC) of a time in ms.
fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    let day = s.rem_euclid(86_400);
    format!("{:02}:{:02} UTC", day / 3600, (day % 3600) / 60)
}

/// `s` made safe inside SVG text built by hand (the grid is written as one
/// string: thousands of tiny maud nodes would be slower for nothing).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Escaper writing into a String cannot fail.
    let _ = maud::Escaper::new(&mut out).write_str(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(format(12.345, Unit::PerSecond), "12.3 req/s");
        assert_eq!(format(0.042, Unit::Ratio), "4.20%");
        assert_eq!(format(0.18, Unit::Seconds), "180 ms");
        assert_eq!(format(2.5, Unit::Seconds), "2.50 s");
        assert_eq!(format(64.0 * 1024.0 * 1024.0, Unit::Bytes), "64.0 MiB");
        assert_eq!(format(f64::NAN, Unit::Cores), "–");
        assert_eq!(format(0.0123, Unit::Cores), "12.3 mCPU");
        assert_eq!(format(1.5, Unit::Cores), "1.50 CPU");
    }

    #[test]
    fn gaps_break_the_line_and_values_scale() {
        let pts = [(0, 0.0), (50, 10.0), (60, f64::NAN), (100, 5.0)];
        let d = path(&pts, 0, 100, 10.0, 0.0, 100.0, 10.0);
        assert_eq!(d, " M0.0,10.0 L50.0,0.0 M100.0,5.0");
    }

    #[test]
    fn charts_escape_names_and_say_when_empty() {
        let pts = [(0, 1.0), (10, 2.0)];
        let c = chart(
            "Req <rate>",
            Unit::PerSecond,
            &[Line {
                name: "<b>".into(),
                points: &pts,
            }],
            0,
            10,
        )
        .into_string();
        assert!(!c.contains("<b>") && c.contains("&lt;b&gt;"));
        assert!(c.contains("latest: &lt;b&gt; 2.00 req/s"));
        let empty = chart("CPU", Unit::Cores, &[], 0, 10).into_string();
        assert!(empty.contains("no data in this window"));
    }

    #[test]
    fn charts_start_where_the_data_does() {
        let late = [(500_000, f64::NAN), (900_000, 1.0)];
        assert_eq!(fit_start(0, 1_000_000, std::iter::once(&late[..])), 900_000);
        let recent = [(990_000, 1.0)];
        assert_eq!(
            fit_start(0, 1_000_000, std::iter::once(&recent[..])),
            940_000
        );
        let early = [(0, 1.0)];
        assert_eq!(fit_start(10, 1_000_000, std::iter::once(&early[..])), 10);
        assert_eq!(fit_start(10, 1_000_000, std::iter::empty()), 10);
    }

    #[test]
    fn sparkline_of_nothing_is_a_flat_line() {
        let s = sparkline(&[], 0, 10, "none").into_string();
        assert!(s.contains("spark-none"));
    }
}
