//! PromQL functions, following Prometheus's `functions.go` numerically
//! (extrapolation of `rate`, Kahan summation, bucket interpolation).

use promql_parser::parser::{Call, Expr};

use super::eval::{
    absent_labels, by_step, exec, merge_series, Ev, OutBuilder, RangeVal, SSeries, Val,
};
use super::QueryError;
use crate::exposition::parse_float;
use crate::labels::LabelsMap;
use crate::{anchored, Labels, METRIC_NAME};

/// Kahan-Neumaier compensated addition, exactly as Prometheus's `kahanSumInc`.
#[inline]
pub(crate) fn kahan_sum_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// The φ-quantile of `values` (sorts them), Prometheus's interpolation.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Go's sort.Float64s order: NaN first.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Go's `math.Max` (NaN wins unless the other side is +Inf).
fn go_max(x: f64, y: f64) -> f64 {
    if x == f64::INFINITY || y == f64::INFINITY {
        f64::INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && x == y {
        if x.is_sign_negative() {
            y
        } else {
            x
        }
    } else if x > y {
        x
    } else {
        y
    }
}

/// Go's `math.Min` (NaN wins unless the other side is -Inf).
fn go_min(x: f64, y: f64) -> f64 {
    if x == f64::NEG_INFINITY || y == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && x == y {
        if x.is_sign_negative() {
            x
        } else {
            y
        }
    } else if x < y {
        x
    } else {
        y
    }
}

fn arg(c: &Call, i: usize) -> Result<&Expr, QueryError> {
    c.args.args.get(i).map(|b| b.as_ref()).ok_or_else(|| {
        QueryError::Parse(format!(
            "expected at least {} argument(s) in call to \"{}\"",
            i + 1,
            c.func.name
        ))
    })
}

fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

pub(crate) fn eval(ev: &Ev, c: &Call) -> Result<Val, QueryError> {
    let name = c.func.name;
    match name {
        "time" => Ok(Val::Scalar(
            (0..ev.n).map(|i| ev.ts(i) as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; ev.n])),
        "vector" => {
            let s = ev.eval_scalar(arg(c, 0)?)?;
            Ok(Val::Vector(vec![SSeries {
                labels: Labels::empty(),
                points: s.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect(),
            }]))
        }
        "scalar" => {
            let v = ev.eval_vector(arg(c, 0)?)?;
            let steps = by_step(&v, ev.n);
            Ok(Val::Scalar(
                steps
                    .iter()
                    .map(|at| if at.len() == 1 { at[0].1 } else { f64::NAN })
                    .collect(),
            ))
        }
        "absent" => {
            let e = arg(c, 0)?;
            let v = ev.eval_vector(e)?;
            let labels = match e {
                Expr::VectorSelector(vs) => absent_labels(vs),
                _ => Labels::empty(),
            };
            let steps = by_step(&v, ev.n);
            let points: Vec<(u32, f64)> = steps
                .iter()
                .enumerate()
                .filter(|(_, at)| at.is_empty())
                .map(|(i, _)| (i as u32, 1.0))
                .collect();
            Ok(Val::Vector(if points.is_empty() {
                Vec::new()
            } else {
                vec![SSeries { labels, points }]
            }))
        }
        "timestamp" => {
            let e = arg(c, 0)?;
            let series = match unparen(e) {
                // Of a selector, the sample's own timestamp, not the step's.
                Expr::VectorSelector(vs) => ev.vector_selector(vs, true)?,
                other => {
                    let mut v = ev.eval_vector(other)?;
                    for s in &mut v {
                        for p in &mut s.points {
                            p.1 = ev.ts(p.0 as usize) as f64 / 1000.0;
                        }
                    }
                    v
                }
            };
            map_drop_name(series, |_, v| Some(v))
        }
        "label_replace" => label_replace(ev, c),
        "label_join" => label_join(ev, c),
        "histogram_quantile" => histogram_quantile(ev, c),
        "sort" | "sort_desc" => {
            let mut v = ev.eval_vector(arg(c, 0)?)?;
            // Order only matters for instant queries (one step).
            if ev.n == 1 {
                let desc = name == "sort_desc";
                v.sort_by(|a, b| {
                    let (x, y) = (a.points[0].1, b.points[0].1);
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if desc => y.total_cmp(&x),
                        _ => x.total_cmp(&y),
                    }
                });
            }
            Ok(Val::Vector(v))
        }
        "round" => {
            let v = ev.eval_vector(arg(c, 0)?)?;
            let to = match c.args.args.get(1) {
                Some(e) => ev.eval_scalar(e)?,
                None => vec![1.0; ev.n],
            };
            map_drop_name(v, |i, f| {
                let inv = 1.0 / to[i];
                Some((f * inv + 0.5).floor() / inv)
            })
        }
        "clamp" => {
            let v = ev.eval_vector(arg(c, 0)?)?;
            let lo = ev.eval_scalar(arg(c, 1)?)?;
            let hi = ev.eval_scalar(arg(c, 2)?)?;
            map_drop_name(v, |i, f| {
                if hi[i] < lo[i] {
                    None
                } else {
                    Some(go_max(lo[i], go_min(hi[i], f)))
                }
            })
        }
        "clamp_min" => {
            let v = ev.eval_vector(arg(c, 0)?)?;
            let lo = ev.eval_scalar(arg(c, 1)?)?;
            map_drop_name(v, |i, f| Some(go_max(lo[i], f)))
        }
        "clamp_max" => {
            let v = ev.eval_vector(arg(c, 0)?)?;
            let hi = ev.eval_scalar(arg(c, 1)?)?;
            map_drop_name(v, |i, f| Some(go_min(hi[i], f)))
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month"
        | "month" | "year" => {
            let v = match c.args.args.first() {
                Some(e) => ev.eval_vector(e)?,
                None => vec![SSeries {
                    labels: Labels::empty(),
                    points: (0..ev.n)
                        .map(|i| (i as u32, ev.ts(i) as f64 / 1000.0))
                        .collect(),
                }],
            };
            map_drop_name(v, |_, f| Some(date_part(name, f)))
        }
        "rate" | "irate" | "increase" | "delta" | "idelta" | "deriv" | "predict_linear"
        | "resets" | "changes" | "avg_over_time" | "min_over_time" | "max_over_time"
        | "sum_over_time" | "count_over_time" | "last_over_time" | "present_over_time"
        | "quantile_over_time" | "stddev_over_time" | "stdvar_over_time" | "mad_over_time"
        | "absent_over_time" => range_function(ev, c),
        _ => match math_fn(name) {
            Some(f) => {
                let v = ev.eval_vector(arg(c, 0)?)?;
                map_drop_name(v, |_, x| Some(f(x)))
            }
            None => Err(exec(format!("function \"{name}\" is not supported"))),
        },
    }
}

fn math_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sgn" => |v: f64| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        "deg" => |v: f64| v * 180.0 / std::f64::consts::PI,
        "rad" => |v: f64| v * std::f64::consts::PI / 180.0,
        "acos" => f64::acos,
        "acosh" => f64::acosh,
        "asin" => f64::asin,
        "asinh" => f64::asinh,
        "atan" => f64::atan,
        "atanh" => f64::atanh,
        "cos" => f64::cos,
        "cosh" => f64::cosh,
        "sin" => f64::sin,
        "sinh" => f64::sinh,
        "tan" => f64::tan,
        "tanh" => f64::tanh,
        _ => return None,
    })
}

/// Maps values per step and drops `__name__` (as every value-changing function does).
fn map_drop_name(
    v: Vec<SSeries>,
    mut f: impl FnMut(usize, f64) -> Option<f64>,
) -> Result<Val, QueryError> {
    let out = v
        .into_iter()
        .map(|s| SSeries {
            labels: s.labels.without_name(),
            points: s
                .points
                .into_iter()
                .filter_map(|(i, x)| f(i as usize, x).map(|y| (i, y)))
                .collect(),
        })
        .collect();
    Ok(Val::Vector(merge_series(out)?))
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// A calendar field of Unix time `f` (seconds, UTC), like Go's `time.Unix(int64(f), 0).UTC()`.
fn date_part(name: &str, f: f64) -> f64 {
    if !f.is_finite() {
        return f64::NAN;
    }
    let secs = f as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (match name {
        "minute" => sod % 3600 / 60,
        "hour" => sod / 3600,
        "day_of_week" => (days + 4).rem_euclid(7),
        "day_of_month" => d,
        "day_of_year" => (1..m).map(|mm| days_in_month(y, mm)).sum::<i64>() + d,
        "days_in_month" => days_in_month(y, m),
        "month" => m,
        _ => y,
    }) as f64
}

fn label_replace(ev: &Ev, c: &Call) -> Result<Val, QueryError> {
    let v = ev.eval_vector(arg(c, 0)?)?;
    let dst = ev.eval_string(arg(c, 1)?)?;
    let repl = ev.eval_string(arg(c, 2)?)?;
    let src = ev.eval_string(arg(c, 3)?)?;
    let re_s = ev.eval_string(arg(c, 4)?)?;
    let re = anchored(&re_s).map_err(|_| {
        exec(format!(
            "invalid regular expression in label_replace(): {re_s}"
        ))
    })?;
    if dst.is_empty() {
        return Err(exec(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let out = v
        .into_iter()
        .map(|s| {
            let sv = s.labels.get(&src).unwrap_or("");
            let labels = match re.captures(sv) {
                Some(caps) => {
                    // Same `$1` / `${name}` template rules as Go's Regexp.Expand.
                    let mut res = String::new();
                    caps.expand(&repl, &mut res);
                    s.labels.with(&dst, &res)
                }
                None => s.labels.clone(),
            };
            SSeries {
                labels,
                points: s.points,
            }
        })
        .collect();
    Ok(Val::Vector(merge_series(out)?))
}

fn label_join(ev: &Ev, c: &Call) -> Result<Val, QueryError> {
    let v = ev.eval_vector(arg(c, 0)?)?;
    let dst = ev.eval_string(arg(c, 1)?)?;
    let sep = ev.eval_string(arg(c, 2)?)?;
    let mut srcs = Vec::new();
    for e in c.args.args.iter().skip(3) {
        srcs.push(ev.eval_string(e)?);
    }
    if dst.is_empty() {
        return Err(exec(format!(
            "invalid destination label name in label_join(): {dst}"
        )));
    }
    let out = v
        .into_iter()
        .map(|s| {
            let joined: Vec<&str> = srcs.iter().map(|n| s.labels.get(n).unwrap_or("")).collect();
            let labels = s.labels.with(&dst, &joined.join(&sep));
            SSeries {
                labels,
                points: s.points,
            }
        })
        .collect();
    Ok(Val::Vector(merge_series(out)?))
}

/// Prometheus's `almost.Equal`.
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// Quantile over classic buckets `(upper bound, cumulative count)`, exactly
/// as Prometheus's `BucketQuantile` (sorting, coalescing, monotonicity fix,
/// linear interpolation, the lowest bucket starting at 0 when positive).
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some(&(ub, _)) if ub == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Coalesce buckets with the same upper bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    *buckets = merged;
    // Ensure monotonic counts, ignoring tiny float deltas.
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) || curr < prev {
            b.1 = prev;
            continue;
        }
        prev = curr;
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = buckets.len() - 1;
    let b = buckets[..n].iter().position(|x| x.1 >= rank).unwrap_or(n);
    if b == n {
        return buckets[n - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let mut start = 0.0;
    let end = buckets[b].0;
    let mut count = buckets[b].1;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

fn histogram_quantile(ev: &Ev, c: &Call) -> Result<Val, QueryError> {
    let q = ev.eval_scalar(arg(c, 0)?)?;
    let v = ev.eval_vector(arg(c, 1)?)?;
    let mut groups: Vec<Labels> = Vec::new();
    let mut idx: LabelsMap<Labels, u32> = LabelsMap::default();
    // Per input series: (group, upper bound); series without a valid `le` are ignored.
    let mut info: Vec<Option<(u32, f64)>> = Vec::with_capacity(v.len());
    for s in &v {
        let Some(ub) = s.labels.get("le").and_then(parse_float) else {
            info.push(None);
            continue;
        };
        let key = s.labels.without(&["le", METRIC_NAME]);
        let g = match idx.get(&key) {
            Some(&g) => g,
            None => {
                groups.push(key.clone());
                idx.insert(key, (groups.len() - 1) as u32);
                (groups.len() - 1) as u32
            }
        };
        info.push(Some((g, ub)));
    }
    let steps = by_step(&v, ev.n);
    let mut out = OutBuilder::default();
    let mut buckets: Vec<Vec<(f64, f64)>> = vec![Vec::new(); groups.len()];
    for (i, at) in steps.iter().enumerate() {
        for &(si, val) in at {
            if let Some((g, ub)) = info[si as usize] {
                buckets[g as usize].push((ub, val));
            }
        }
        for (g, b) in buckets.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            let r = bucket_quantile(q[i], b);
            out.push(&groups[g], i as u32, r)?;
            b.clear();
        }
    }
    Ok(Val::Vector(out.finish()))
}

/// Prometheus's `extrapolatedRate` (rate, increase, delta).
fn extrapolated_rate(
    w: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (first_t, first_v) = w[0];
    let (last_t, last_v) = w[w.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &w[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut duration_to_start = (first_t - range_start) as f64 / 1000.0;
    let mut duration_to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let avg_between = sampled_interval / (w.len() - 1) as f64;
    let threshold = avg_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    if duration_to_start >= threshold {
        duration_to_start = avg_between / 2.0;
    }
    if is_counter && result > 0.0 && first_v >= 0.0 {
        // A counter cannot go below zero: do not extrapolate past its zero point.
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    extrapolate_to += duration_to_start;
    if duration_to_end >= threshold {
        duration_to_end = avg_between / 2.0;
    }
    extrapolate_to += duration_to_end;
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Prometheus's `instantValue` (irate, idelta).
fn instant_value(w: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (lt, lv) = w[w.len() - 1];
    let (pt, pv) = w[w.len() - 2];
    let mut r = if is_rate && lv < pv { lv } else { lv - pv };
    let interval = lt - pt;
    if interval == 0 {
        return None;
    }
    if is_rate {
        r /= interval as f64 / 1000.0;
    }
    Some(r)
}

/// Least-squares fit, as Prometheus's `linearRegression` (x in seconds from `intercept_t`).
fn linear_regression(w: &[(i64, f64)], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut cx, mut sum_y, mut cy, mut sum_xy, mut cxy, mut sum_x2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in w.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1e3;
        (sum_x, cx) = kahan_sum_inc(x, sum_x, cx);
        (sum_y, cy) = kahan_sum_inc(v, sum_y, cy);
        (sum_xy, cxy) = kahan_sum_inc(x * v, sum_xy, cxy);
        (sum_x2, cx2) = kahan_sum_inc(x * x, sum_x2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sum_x += cx;
    sum_y += cy;
    sum_xy += cxy;
    sum_x2 += cx2;
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn avg_over_time(w: &[(i64, f64)]) -> f64 {
    let (mut sum, mut count) = (w[0].1, 1.0);
    let (mut mean, mut c) = (0.0, 0.0);
    let mut incremental = false;
    for (i, &(_, f)) in w[1..].iter().enumerate() {
        count = (i + 2) as f64;
        if !incremental {
            let (ns, nc) = kahan_sum_inc(f, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_sum_inc(f / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn variance_over_time(w: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, f) in w {
        count += 1.0;
        let delta = f - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (f - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

fn range_function(ev: &Ev, c: &Call) -> Result<Val, QueryError> {
    let name = c.func.name;
    let (rv, param): (RangeVal, Option<Vec<f64>>) = match name {
        "quantile_over_time" => {
            let q = ev.eval_scalar(arg(c, 0)?)?;
            (ev.eval_range(arg(c, 1)?)?, Some(q))
        }
        "predict_linear" => {
            let r = ev.eval_range(arg(c, 0)?)?;
            (r, Some(ev.eval_scalar(arg(c, 1)?)?))
        }
        _ => (ev.eval_range(arg(c, 0)?)?, None),
    };
    if name == "absent_over_time" {
        let mut present = vec![false; ev.n];
        for s in &rv.series {
            rv.for_each_window(ev, s, |i, w| present[i] |= !w.is_empty());
        }
        let points: Vec<(u32, f64)> = present
            .iter()
            .enumerate()
            .filter(|(_, p)| !**p)
            .map(|(i, _)| (i as u32, 1.0))
            .collect();
        return Ok(Val::Vector(if points.is_empty() {
            Vec::new()
        } else {
            vec![SSeries {
                labels: rv.absent_labels.clone(),
                points,
            }]
        }));
    }
    let keep_name = name == "last_over_time";
    let range = rv.range;
    let mut out = Vec::with_capacity(rv.series.len());
    let mut scratch: Vec<f64> = Vec::new();
    for (k, s) in rv.series.iter().enumerate() {
        if k % 256 == 0 {
            ev.ctx.check()?;
        }
        let mut points = Vec::new();
        rv.for_each_window(ev, s, |i, w| {
            if w.is_empty() {
                return;
            }
            let end = rv.window_end(ev, i);
            let v = match name {
                "rate" => extrapolated_rate(w, end - range, end, range, true, true),
                "increase" => extrapolated_rate(w, end - range, end, range, true, false),
                "delta" => extrapolated_rate(w, end - range, end, range, false, false),
                "irate" => instant_value(w, true),
                "idelta" => instant_value(w, false),
                "deriv" => (w.len() >= 2).then(|| linear_regression(w, w[0].0).0),
                "predict_linear" => (w.len() >= 2).then(|| {
                    // Prometheus regresses around the evaluation time, not the offset window end.
                    let (slope, intercept) = linear_regression(w, end + rv.offset);
                    let d = param
                        .as_ref()
                        .and_then(|p| p.get(i))
                        .copied()
                        .unwrap_or(f64::NAN);
                    slope * d + intercept
                }),
                "resets" => Some(w.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64),
                "changes" => Some(
                    w.windows(2)
                        .filter(|p| !(p[1].1 == p[0].1 || (p[1].1.is_nan() && p[0].1.is_nan())))
                        .count() as f64,
                ),
                "avg_over_time" => Some(avg_over_time(w)),
                "sum_over_time" => {
                    let (mut sum, mut cc) = (0.0, 0.0);
                    for &(_, f) in w {
                        (sum, cc) = kahan_sum_inc(f, sum, cc);
                    }
                    Some(if sum.is_infinite() { sum } else { sum + cc })
                }
                "count_over_time" => Some(w.len() as f64),
                "min_over_time" => {
                    Some(
                        w.iter()
                            .fold(w[0].1, |m, &(_, f)| if f < m || m.is_nan() { f } else { m }),
                    )
                }
                "max_over_time" => {
                    Some(
                        w.iter()
                            .fold(w[0].1, |m, &(_, f)| if f > m || m.is_nan() { f } else { m }),
                    )
                }
                "last_over_time" => Some(w[w.len() - 1].1),
                "present_over_time" => Some(1.0),
                "quantile_over_time" => {
                    let q = param
                        .as_ref()
                        .and_then(|p| p.get(i))
                        .copied()
                        .unwrap_or(f64::NAN);
                    scratch.clear();
                    scratch.extend(w.iter().map(|p| p.1));
                    Some(quantile(q, &mut scratch))
                }
                "stddev_over_time" => Some(variance_over_time(w).sqrt()),
                "stdvar_over_time" => Some(variance_over_time(w)),
                "mad_over_time" => {
                    scratch.clear();
                    scratch.extend(w.iter().map(|p| p.1));
                    let median = quantile(0.5, &mut scratch);
                    for x in scratch.iter_mut() {
                        *x = (*x - median).abs();
                    }
                    Some(quantile(0.5, &mut scratch))
                }
                _ => None,
            };
            if let Some(v) = v {
                points.push((i as u32, v));
            }
        });
        if !points.is_empty() {
            let labels = if keep_name {
                s.labels.clone()
            } else {
                s.labels.without_name()
            };
            out.push(SSeries { labels, points });
        }
    }
    let total: usize = out.iter().map(|s| s.points.len()).sum();
    ev.ctx.add_samples(total)?;
    Ok(Val::Vector(merge_series(out)?))
}
