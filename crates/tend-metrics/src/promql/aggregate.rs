//! Aggregation operators (`sum`, `avg`, `topk`, ... with `by`/`without`).

use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE, T_STDDEV,
    T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::eval::{by_step, exec, Ev, OutBuilder, SSeries, Val};
use super::functions::{kahan_sum_inc, quantile};
use super::QueryError;
use crate::exposition::format_go_f;
use crate::labels::LabelsMap;
use crate::{Labels, METRIC_NAME};

/// Running state of one group at one step (Prometheus's groupedAggregation).
#[derive(Clone, Copy, Default)]
struct Acc {
    seen: bool,
    value: f64,
    kahan_c: f64,
    mean: f64,
    count: f64,
    incremental_mean: bool,
}

pub(crate) fn eval(ev: &Ev, a: &AggregateExpr) -> Result<Val, QueryError> {
    let op = a.op.id();
    let input = ev.eval_vector(&a.expr)?;
    // Group key of every input series, computed once for all steps.
    let mut groups: Vec<Labels> = Vec::new();
    let mut group_idx: LabelsMap<Labels, u32> = LabelsMap::default();
    let mut group_of: Vec<u32> = Vec::with_capacity(input.len());
    for s in &input {
        let key = match &a.modifier {
            None => Labels::empty(),
            Some(LabelModifier::Include(ls)) => {
                let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                s.labels.keep(&names)
            }
            Some(LabelModifier::Exclude(ls)) => {
                let mut names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                names.push(METRIC_NAME);
                s.labels.without(&names)
            }
        };
        let g = match group_idx.get(&key) {
            Some(&g) => g,
            None => {
                groups.push(key.clone());
                group_idx.insert(key, (groups.len() - 1) as u32);
                (groups.len() - 1) as u32
            }
        };
        group_of.push(g);
    }
    let steps = by_step(&input, ev.n);
    match op {
        T_SUM | T_AVG | T_COUNT | T_MIN | T_MAX | T_GROUP | T_STDDEV | T_STDVAR => {
            Ok(Val::Vector(simple(ev, op, &groups, &group_of, &steps)?))
        }
        T_TOPK | T_BOTTOMK => {
            let param = a
                .param
                .as_ref()
                .ok_or_else(|| exec("topk/bottomk need a parameter"))?;
            let k = ev.eval_scalar(param)?;
            Ok(Val::Vector(topk(
                ev,
                op == T_TOPK,
                &k,
                &input,
                &groups,
                &group_of,
                &steps,
            )?))
        }
        T_QUANTILE => {
            let param = a
                .param
                .as_ref()
                .ok_or_else(|| exec("quantile needs a parameter"))?;
            let q = ev.eval_scalar(param)?;
            let mut out: Vec<SSeries> = groups
                .iter()
                .map(|g| SSeries {
                    labels: g.clone(),
                    points: Vec::new(),
                })
                .collect();
            let mut vals: Vec<Vec<f64>> = vec![Vec::new(); groups.len()];
            for (i, at) in steps.iter().enumerate() {
                for &(si, v) in at {
                    vals[group_of[si as usize] as usize].push(v);
                }
                for (g, vs) in vals.iter_mut().enumerate() {
                    if !vs.is_empty() {
                        out[g].points.push((i as u32, quantile(q[i], vs)));
                        vs.clear();
                    }
                }
            }
            out.retain(|s| !s.points.is_empty());
            Ok(Val::Vector(out))
        }
        T_COUNT_VALUES => {
            let param = a
                .param
                .as_ref()
                .ok_or_else(|| exec("count_values needs a parameter"))?;
            let label = ev.eval_string(param)?;
            if label.is_empty() {
                return Err(exec(format!("invalid label name {label:?}")));
            }
            let mut out = OutBuilder::default();
            for (i, at) in steps.iter().enumerate() {
                // (group, value text) → count, in first-seen order.
                let mut counts: Vec<(u32, String, f64)> = Vec::new();
                for &(si, v) in at {
                    let g = group_of[si as usize];
                    let text = format_go_f(v);
                    match counts.iter_mut().find(|c| c.0 == g && c.1 == text) {
                        Some(c) => c.2 += 1.0,
                        None => counts.push((g, text, 1.0)),
                    }
                }
                for (g, text, n) in counts {
                    out.push(&groups[g as usize].with(&label, &text), i as u32, n)?;
                }
            }
            Ok(Val::Vector(out.finish()))
        }
        _ => Err(exec(format!("aggregation {} is not supported", a.op))),
    }
}

fn simple(
    ev: &Ev,
    op: u16,
    groups: &[Labels],
    group_of: &[u32],
    steps: &[Vec<(u32, f64)>],
) -> Result<Vec<SSeries>, QueryError> {
    let mut out: Vec<SSeries> = groups
        .iter()
        .map(|g| SSeries {
            labels: g.clone(),
            points: Vec::new(),
        })
        .collect();
    let mut accs = vec![Acc::default(); groups.len()];
    let mut touched: Vec<u32> = Vec::new();
    for (i, at) in steps.iter().enumerate() {
        if i % 256 == 0 {
            ev.ctx.check()?;
        }
        for &(si, f) in at {
            let g = group_of[si as usize];
            let a = &mut accs[g as usize];
            if !a.seen {
                *a = Acc {
                    seen: true,
                    value: f,
                    count: 1.0,
                    ..Acc::default()
                };
                touched.push(g);
                match op {
                    T_GROUP => a.value = 1.0,
                    T_COUNT => a.value = 1.0,
                    T_STDDEV | T_STDVAR => {
                        a.value = 0.0;
                        a.mean = f;
                    }
                    _ => {}
                }
                continue;
            }
            match op {
                T_SUM => {
                    (a.value, a.kahan_c) = kahan_sum_inc(f, a.value, a.kahan_c);
                }
                T_AVG => {
                    a.count += 1.0;
                    if !a.incremental_mean {
                        let (nv, nc) = kahan_sum_inc(f, a.value, a.kahan_c);
                        if !nv.is_infinite() {
                            a.value = nv;
                            a.kahan_c = nc;
                            continue;
                        }
                        // The running sum would overflow: switch to an incremental mean.
                        a.incremental_mean = true;
                        a.mean = a.value / (a.count - 1.0);
                        a.kahan_c /= a.count - 1.0;
                    }
                    let q = (a.count - 1.0) / a.count;
                    (a.mean, a.kahan_c) = kahan_sum_inc(f / a.count, q * a.mean, q * a.kahan_c);
                }
                T_COUNT => a.value += 1.0,
                T_GROUP => {}
                T_MAX if a.value < f || a.value.is_nan() => a.value = f,
                T_MIN if a.value > f || a.value.is_nan() => a.value = f,
                T_STDDEV | T_STDVAR => {
                    a.count += 1.0;
                    let delta = f - a.mean;
                    a.mean += delta / a.count;
                    a.value += delta * (f - a.mean);
                }
                _ => {}
            }
        }
        for &g in &touched {
            let a = &mut accs[g as usize];
            let v = match op {
                T_SUM => a.value + a.kahan_c,
                T_AVG => {
                    if a.incremental_mean {
                        a.mean + a.kahan_c
                    } else {
                        (a.value + a.kahan_c) / a.count
                    }
                }
                T_STDVAR => a.value / a.count,
                T_STDDEV => (a.value / a.count).sqrt(),
                _ => a.value,
            };
            out[g as usize].points.push((i as u32, v));
            a.seen = false;
        }
        touched.clear();
    }
    out.retain(|s| !s.points.is_empty());
    Ok(out)
}

fn topk(
    ev: &Ev,
    top: bool,
    k: &[f64],
    input: &[SSeries],
    groups: &[Labels],
    group_of: &[u32],
    steps: &[Vec<(u32, f64)>],
) -> Result<Vec<SSeries>, QueryError> {
    let mut out = OutBuilder::default();
    let mut per_group: Vec<Vec<(u32, f64)>> = vec![Vec::new(); groups.len()];
    for (i, at) in steps.iter().enumerate() {
        if at.is_empty() {
            continue;
        }
        let kf = k.get(i).copied().unwrap_or(f64::NAN);
        if kf.is_nan() {
            return Err(exec("Parameter value is NaN"));
        }
        if kf >= i64::MAX as f64 {
            return Err(exec(format!("Scalar value {kf} overflows int64")));
        }
        let kk = kf as i64;
        if kk < 1 {
            continue;
        }
        for &(si, v) in at {
            per_group[group_of[si as usize] as usize].push((si, v));
        }
        for cands in per_group.iter_mut() {
            if cands.is_empty() {
                continue;
            }
            // NaN ranks last for both topk and bottomk.
            cands.sort_by(|a, b| {
                let (x, y) = (a.1, b.1);
                match (x.is_nan(), y.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => {
                        if top {
                            y.total_cmp(&x)
                        } else {
                            x.total_cmp(&y)
                        }
                    }
                }
            });
            for &(si, v) in cands.iter().take(usize::try_from(kk).unwrap_or(usize::MAX)) {
                out.push(&input[si as usize].labels, i as u32, v)?;
            }
            cands.clear();
        }
        if i % 256 == 0 {
            ev.ctx.check()?;
        }
    }
    Ok(out.finish())
}
