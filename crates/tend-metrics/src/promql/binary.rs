//! Binary operators: arithmetic, comparison (with `bool`), set operators,
//! and vector matching (`on`/`ignoring`, `group_left`/`group_right`).

use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD,
    T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::eval::{by_step, exec, merge_series, Ev, OutBuilder, SSeries, Val};
use super::QueryError;
use crate::labels::LabelsMap;
use crate::{Labels, METRIC_NAME};

fn is_comparison(op: u16) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic operators drop `__name__`; comparisons keep it unless `bool`.
fn drops_name(op: u16) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD | T_ATAN2)
}

/// Value of `lhs op rhs` and whether the element is kept (comparisons filter).
#[inline]
fn elem_binop(op: u16, l: f64, r: f64) -> (f64, bool) {
    match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_POW => (l.powf(r), true),
        // Go's math.Mod and Rust's % on floats are both fmod (sign of the dividend).
        T_MOD => (l % r, true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

/// Scalar-scalar: comparisons yield 1 or 0.
fn scalar_binop(op: u16, l: f64, r: f64) -> f64 {
    let (v, keep) = elem_binop(op, l, r);
    if is_comparison(op) {
        if keep {
            1.0
        } else {
            0.0
        }
    } else {
        v
    }
}

pub(crate) fn eval(ev: &Ev, b: &BinaryExpr) -> Result<Val, QueryError> {
    let op = b.op.id();
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&b.lhs)?;
    let rhs = ev.eval(&b.rhs)?;
    match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            if is_comparison(op) && !return_bool {
                return Err(QueryError::Parse(
                    "comparisons between scalars must use BOOL modifier".into(),
                ));
            }
            Ok(Val::Scalar(
                l.iter()
                    .zip(r.iter())
                    .map(|(&a, &b)| scalar_binop(op, a, b))
                    .collect(),
            ))
        }
        (Val::Vector(v), Val::Scalar(s)) => {
            Ok(Val::Vector(vector_scalar(op, v, &s, false, return_bool)?))
        }
        (Val::Scalar(s), Val::Vector(v)) => {
            Ok(Val::Vector(vector_scalar(op, v, &s, true, return_bool)?))
        }
        (Val::Vector(l), Val::Vector(r)) => {
            let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
            if matches!(op, T_LAND | T_LOR | T_LUNLESS) {
                Ok(Val::Vector(set_op(ev, op, l, r, matching.as_ref())?))
            } else {
                let card = b
                    .modifier
                    .as_ref()
                    .map(|m| m.card.clone())
                    .unwrap_or(VectorMatchCardinality::OneToOne);
                Ok(Val::Vector(vector_vector(
                    ev,
                    op,
                    l,
                    r,
                    matching.as_ref(),
                    &card,
                    return_bool,
                )?))
            }
        }
        _ => Err(exec("invalid operand types for binary operator")),
    }
}

fn vector_scalar(
    op: u16,
    v: Vec<SSeries>,
    s: &[f64],
    swap: bool,
    return_bool: bool,
) -> Result<Vec<SSeries>, QueryError> {
    let drop = drops_name(op) || return_bool;
    let cmp = is_comparison(op);
    let mut out = Vec::with_capacity(v.len());
    for series in v {
        let mut points = Vec::with_capacity(series.points.len());
        for (i, x) in series.points {
            let sv = s.get(i as usize).copied().unwrap_or(f64::NAN);
            let (l, r) = if swap { (sv, x) } else { (x, sv) };
            let (mut val, mut keep) = elem_binop(op, l, r);
            // A comparison always yields the vector's value, whichever side it is on.
            if cmp && swap {
                val = r;
            }
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            if keep {
                points.push((i, val));
            }
        }
        let labels = if drop {
            series.labels.without_name()
        } else {
            series.labels
        };
        out.push(SSeries { labels, points });
    }
    if drop {
        merge_series(out)
    } else {
        out.retain(|s| !s.points.is_empty());
        Ok(out)
    }
}

/// The matching signature: `on` keeps the listed labels, otherwise all
/// labels except the `ignoring` ones and `__name__`.
fn signature(l: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(ls)) => {
            let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
            l.keep(&names)
        }
        Some(LabelModifier::Exclude(ls)) => {
            let mut names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
            names.push(METRIC_NAME);
            l.without(&names)
        }
        None => l.without_name(),
    }
}

fn set_op(
    ev: &Ev,
    op: u16,
    l: Vec<SSeries>,
    r: Vec<SSeries>,
    matching: Option<&LabelModifier>,
) -> Result<Vec<SSeries>, QueryError> {
    let lsig: Vec<Labels> = l.iter().map(|s| signature(&s.labels, matching)).collect();
    let rsig: Vec<Labels> = r.iter().map(|s| signature(&s.labels, matching)).collect();
    let lsteps = by_step(&l, ev.n);
    let rsteps = by_step(&r, ev.n);
    let mut out = OutBuilder::default();
    for i in 0..ev.n {
        let (la, ra) = (&lsteps[i], &rsteps[i]);
        match op {
            T_LAND | T_LUNLESS => {
                let rset: HashSet<&Labels> = ra.iter().map(|&(si, _)| &rsig[si as usize]).collect();
                for &(si, v) in la {
                    let present = rset.contains(&lsig[si as usize]);
                    if present == (op == T_LAND) {
                        out.push(&l[si as usize].labels, i as u32, v)?;
                    }
                }
            }
            _ => {
                let lset: HashSet<&Labels> = la.iter().map(|&(si, _)| &lsig[si as usize]).collect();
                for &(si, v) in la {
                    out.push(&l[si as usize].labels, i as u32, v)?;
                }
                for &(si, v) in ra {
                    if !lset.contains(&rsig[si as usize]) {
                        out.push(&r[si as usize].labels, i as u32, v)?;
                    }
                }
            }
        }
    }
    Ok(out.finish())
}

/// Labels of a vector-vector result, from the "many" side `lhs` (Prometheus's resultMetric).
fn result_labels(
    lhs: &Labels,
    rhs: &Labels,
    op: u16,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    return_bool: bool,
) -> Labels {
    let mut l = if drops_name(op) || return_bool {
        lhs.without_name()
    } else {
        lhs.clone()
    };
    if matches!(card, VectorMatchCardinality::OneToOne) {
        match matching {
            Some(LabelModifier::Include(ls)) => {
                let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                l = l.keep(&names);
            }
            Some(LabelModifier::Exclude(ls)) => {
                let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                l = l.without(&names);
            }
            None => {}
        }
    }
    if let VectorMatchCardinality::ManyToOne(inc) | VectorMatchCardinality::OneToMany(inc) = card {
        for name in &inc.labels {
            // Included labels are copied from the "one" side.
            l = l.with(name, rhs.get(name).unwrap_or(""));
        }
    }
    l
}

fn vector_vector(
    ev: &Ev,
    op: u16,
    lhs: Vec<SSeries>,
    rhs: Vec<SSeries>,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    return_bool: bool,
) -> Result<Vec<SSeries>, QueryError> {
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    // For group_right, swap so that `many` is always the iterated side.
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let msig: Vec<Labels> = many
        .iter()
        .map(|s| signature(&s.labels, matching))
        .collect();
    let osig: Vec<Labels> = one.iter().map(|s| signature(&s.labels, matching)).collect();
    let msteps = by_step(&many, ev.n);
    let osteps = by_step(&one, ev.n);
    let mut out = OutBuilder::default();
    let mut label_cache: HashMap<(u32, u32), Labels> = HashMap::new();
    for i in 0..ev.n {
        let (ma, oa) = (&msteps[i], &osteps[i]);
        if ma.is_empty() || oa.is_empty() {
            continue;
        }
        if i % 64 == 0 {
            ev.ctx.check()?;
        }
        let mut one_by_sig: LabelsMap<&Labels, (u32, f64)> = LabelsMap::default();
        for &(si, v) in oa {
            let sig = &osig[si as usize];
            if let Some(&(prev, _)) = one_by_sig.get(sig) {
                let side = if one_to_many { "left" } else { "right" };
                return Err(exec(format!(
                    "found duplicate series for the match group {sig} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    one[prev as usize].labels, one[si as usize].labels
                )));
            }
            one_by_sig.insert(sig, (si, v));
        }
        let mut matched: LabelsMap<&Labels, HashSet<u64>> = LabelsMap::default();
        for &(mi, mv) in ma {
            let sig = &msig[mi as usize];
            let Some(&(oi, ov)) = one_by_sig.get(sig) else {
                continue;
            };
            let (fl, fr) = if one_to_many { (ov, mv) } else { (mv, ov) };
            let (mut val, keep) = elem_binop(op, fl, fr);
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let labels = label_cache
                .entry((mi, oi))
                .or_insert_with(|| {
                    result_labels(
                        &many[mi as usize].labels,
                        &one[oi as usize].labels,
                        op,
                        matching,
                        card,
                        return_bool,
                    )
                })
                .clone();
            match matched.get_mut(sig) {
                Some(set) => {
                    if matches!(card, VectorMatchCardinality::OneToOne) {
                        return Err(exec(
                            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                        ));
                    }
                    if !set.insert(labels.hash_value()) {
                        return Err(exec("multiple matches for labels: grouping labels must ensure unique matches"));
                    }
                }
                None => {
                    let mut set = HashSet::new();
                    set.insert(labels.hash_value());
                    matched.insert(sig, set);
                }
            }
            out.push(&labels, i as u32, val)?;
        }
    }
    Ok(out.finish())
}
