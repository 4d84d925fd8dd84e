//! The evaluator core: values over steps, selectors, subqueries, helpers.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::MatchOp;
use promql_parser::parser::{
    AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector,
};

use super::{aggregate, binary, functions, EvalOptions, QueryError};
use crate::labels::LabelsMap;
use crate::{is_stale_nan, Labels, Matcher, Series, Tsdb, METRIC_NAME};

/// Prometheus's limit of points per series in a range query.
pub const MAX_POINTS_PER_SERIES: usize = 11_000;

/// State shared by all evaluators of one query (subqueries create more).
pub(crate) struct Ctx<'a> {
    pub(crate) db: &'a Tsdb,
    pub(crate) opts: &'a EvalOptions,
    deadline: Instant,
    samples: Cell<usize>,
    /// Start and end of the top-level query (for `@ start()` / `@ end()`).
    pub(crate) start: i64,
    pub(crate) end: i64,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(db: &'a Tsdb, opts: &'a EvalOptions, start: i64, end: i64) -> Self {
        let deadline = Instant::now() + opts.timeout.min(Duration::from_secs(86_400 * 365));
        Ctx {
            db,
            opts,
            deadline,
            samples: Cell::new(0),
            start,
            end,
        }
    }

    /// Fails once the query's time budget is spent.
    pub(crate) fn check(&self) -> Result<(), QueryError> {
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout);
        }
        Ok(())
    }

    /// Accounts for `n` more samples held by the query.
    pub(crate) fn add_samples(&self, n: usize) -> Result<(), QueryError> {
        let t = self.samples.get().saturating_add(n);
        if t > self.opts.max_samples {
            return Err(QueryError::TooManySamples);
        }
        self.samples.set(t);
        Ok(())
    }
}

/// An instant-vector series over the steps: points are `(step index, value)`, sorted.
#[derive(Clone, Debug)]
pub(crate) struct SSeries {
    pub(crate) labels: Labels,
    pub(crate) points: Vec<(u32, f64)>,
}

/// A range vector: raw samples plus how windows are placed at each step.
pub(crate) struct RangeVal {
    pub(crate) series: Vec<Series>,
    pub(crate) range: i64,
    pub(crate) offset: i64,
    pub(crate) at: Option<i64>,
    /// The labels `absent_over_time` reports (from a matrix selector's equality matchers).
    pub(crate) absent_labels: Labels,
}

impl RangeVal {
    /// End of the window at step `i` (windows are `(end - range, end]`).
    pub(crate) fn window_end(&self, ev: &Ev, i: usize) -> i64 {
        self.at.unwrap_or_else(|| ev.ts(i)) - self.offset
    }

    /// Calls `f(step, window)` for every step, sliding two cursors.
    pub(crate) fn for_each_window(
        &self,
        ev: &Ev,
        s: &Series,
        mut f: impl FnMut(usize, &[(i64, f64)]),
    ) {
        let (mut lo, mut hi) = (0usize, 0usize);
        let n = s.samples.len();
        for i in 0..ev.n {
            let end = self.window_end(ev, i);
            let start = end.saturating_sub(self.range);
            while hi < n && s.samples[hi].0 <= end {
                hi += 1;
            }
            while lo < hi && s.samples[lo].0 <= start {
                lo += 1;
            }
            f(i, &s.samples[lo..hi]);
        }
    }

    /// The samples in the window of step `i`, per series (top-level matrix results).
    pub(crate) fn window_series(&self, ev: &Ev, i: usize) -> Vec<Series> {
        let end = self.window_end(ev, i);
        let start = end.saturating_sub(self.range);
        self.series
            .iter()
            .filter_map(|s| {
                let samples: Vec<(i64, f64)> = s
                    .samples
                    .iter()
                    .copied()
                    .filter(|&(t, _)| t > start && t <= end)
                    .collect();
                (!samples.is_empty()).then(|| Series {
                    labels: s.labels.clone(),
                    samples,
                })
            })
            .collect()
    }
}

/// The value of a node over all steps.
pub(crate) enum Val {
    Scalar(Vec<f64>),
    String(String),
    Vector(Vec<SSeries>),
    Range(RangeVal),
}

impl Val {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::String(_) => "string",
            Val::Vector(_) => "instant vector",
            Val::Range(_) => "range vector",
        }
    }
}

/// Evaluates expressions at `n` steps `start + i * step`.
pub(crate) struct Ev<'a> {
    pub(crate) ctx: &'a Ctx<'a>,
    pub(crate) start: i64,
    pub(crate) step: i64,
    pub(crate) n: usize,
}

pub(crate) fn exec(msg: impl Into<String>) -> QueryError {
    QueryError::Execution(msg.into())
}

pub(crate) fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => dur_ms(&d),
        Err(e) => -dur_ms(&e.duration()),
    }
}

/// Converts a selector's matchers into storage matchers; several groups when
/// the selector uses `or` between matcher lists.
pub(crate) fn matcher_groups(vs: &VectorSelector) -> Vec<Vec<Matcher>> {
    let conv = |m: &promql_parser::label::Matcher| match &m.op {
        MatchOp::Equal => Matcher::Eq(m.name.clone(), m.value.clone()),
        MatchOp::NotEqual => Matcher::Neq(m.name.clone(), m.value.clone()),
        MatchOp::Re(r) => Matcher::Re(m.name.clone(), r.clone()),
        MatchOp::NotRe(r) => Matcher::NotRe(m.name.clone(), r.clone()),
    };
    let mut groups: Vec<Vec<Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![vs.matchers.matchers.iter().map(conv).collect()]
    } else {
        vs.matchers
            .or_matchers
            .iter()
            .map(|g| g.iter().map(conv).collect())
            .collect()
    };
    if let Some(n) = &vs.name {
        for g in &mut groups {
            g.push(Matcher::Eq(METRIC_NAME.to_string(), n.clone()));
        }
    }
    groups
}

/// Labels `absent()` reports for a selector: its equality matchers, except
/// `__name__` and names matched more than once (Prometheus's historic rule).
pub(crate) fn absent_labels(vs: &VectorSelector) -> Labels {
    let mut out: BTreeMap<String, Option<String>> = BTreeMap::new();
    let all = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten());
    for m in all {
        if m.name == METRIC_NAME {
            continue;
        }
        let first = !out.contains_key(&m.name);
        if m.op == MatchOp::Equal && first {
            out.insert(m.name.clone(), Some(m.value.clone()));
        } else {
            out.insert(m.name.clone(), None);
        }
    }
    Labels::new(out.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))))
}

impl<'a> Ev<'a> {
    pub(crate) fn new(ctx: &'a Ctx<'a>, start: i64, end: i64, step: i64) -> Self {
        let step = step.max(1);
        let n = ((end - start) / step + 1).max(1) as usize;
        Ev {
            ctx,
            start,
            step,
            n,
        }
    }

    /// Timestamp of step `i`.
    #[inline]
    pub(crate) fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    pub(crate) fn at_ms(&self, a: &Option<AtModifier>) -> Option<i64> {
        match a {
            None => None,
            Some(AtModifier::Start) => Some(self.ctx.start),
            Some(AtModifier::End) => Some(self.ctx.end),
            Some(AtModifier::At(t)) => Some(system_time_ms(t)),
        }
    }

    /// Evaluates any expression.
    pub(crate) fn eval(&self, e: &Expr) -> Result<Val, QueryError> {
        self.ctx.check()?;
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; self.n])),
            Expr::StringLiteral(s) => Ok(Val::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
                Val::Vector(series) => {
                    let out = series
                        .into_iter()
                        .map(|s| SSeries {
                            labels: s.labels.without_name(),
                            points: s.points.into_iter().map(|(i, v)| (i, -v)).collect(),
                        })
                        .collect();
                    Ok(Val::Vector(merge_series(out)?))
                }
                other => Err(exec(format!(
                    "unary minus not allowed on {}",
                    other.type_name()
                ))),
            },
            Expr::Binary(b) => binary::eval(self, b),
            Expr::Aggregate(a) => aggregate::eval(self, a),
            Expr::Call(c) => functions::eval(self, c),
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.vector_selector(vs, false)?)),
            Expr::MatrixSelector(ms) => Ok(Val::Range(self.matrix_selector(ms)?)),
            Expr::Subquery(sq) => Ok(Val::Range(self.subquery(sq)?)),
            Expr::Extension(_) => Err(exec("extension expressions are not supported")),
        }
    }

    /// Evaluates an expression that must be an instant vector.
    pub(crate) fn eval_vector(&self, e: &Expr) -> Result<Vec<SSeries>, QueryError> {
        match self.eval(e)? {
            Val::Vector(v) => Ok(v),
            other => Err(exec(format!(
                "expected instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates an expression that must be a scalar (one value per step).
    pub(crate) fn eval_scalar(&self, e: &Expr) -> Result<Vec<f64>, QueryError> {
        match self.eval(e)? {
            Val::Scalar(v) => Ok(v),
            other => Err(exec(format!("expected scalar, got {}", other.type_name()))),
        }
    }

    /// Evaluates an expression that must be a string.
    pub(crate) fn eval_string(&self, e: &Expr) -> Result<String, QueryError> {
        match self.eval(e)? {
            Val::String(s) => Ok(s),
            other => Err(exec(format!("expected string, got {}", other.type_name()))),
        }
    }

    /// Evaluates an expression that must be a range vector.
    pub(crate) fn eval_range(&self, e: &Expr) -> Result<RangeVal, QueryError> {
        match self.eval(e)? {
            Val::Range(r) => Ok(r),
            other => Err(exec(format!(
                "expected range vector, got {}",
                other.type_name()
            ))),
        }
    }

    fn select(&self, vs: &VectorSelector, mint: i64, maxt: i64) -> Result<Vec<Series>, QueryError> {
        let groups = matcher_groups(vs);
        let mut out = if groups.len() == 1 {
            self.ctx.db.select(&groups[0], mint, maxt)?
        } else {
            let mut merged: BTreeMap<Labels, Series> = BTreeMap::new();
            for g in &groups {
                for s in self.ctx.db.select(g, mint, maxt)? {
                    merged.entry(s.labels.clone()).or_insert(s);
                }
            }
            merged.into_values().collect()
        };
        let n: usize = out.iter().map(|s| s.samples.len()).sum();
        self.ctx.add_samples(n)?;
        out.retain(|s| !s.samples.is_empty());
        Ok(out)
    }

    /// An instant selector: the newest sample within the lookback window of
    /// each step, unless it is a stale marker. With `timestamps`, the value is
    /// the sample's timestamp in seconds (for `timestamp()`).
    pub(crate) fn vector_selector(
        &self,
        vs: &VectorSelector,
        timestamps: bool,
    ) -> Result<Vec<SSeries>, QueryError> {
        let off = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let eval_t = |i: usize| at.unwrap_or_else(|| self.ts(i)) - off;
        let lb = self.ctx.opts.lookback_delta_ms;
        let (lo, hi) = (eval_t(0), eval_t(self.n - 1));
        let series = self.select(vs, lo.saturating_sub(lb) + 1, hi)?;
        let mut out = Vec::with_capacity(series.len());
        let mut total = 0usize;
        for (k, s) in series.into_iter().enumerate() {
            if k % 1024 == 0 {
                self.ctx.check()?;
            }
            let mut points = Vec::new();
            let mut j = 0usize;
            for i in 0..self.n {
                let et = eval_t(i);
                while j < s.samples.len() && s.samples[j].0 <= et {
                    j += 1;
                }
                if j == 0 {
                    continue;
                }
                let (t, v) = s.samples[j - 1];
                if t <= et.saturating_sub(lb) || is_stale_nan(v) {
                    continue;
                }
                points.push((i as u32, if timestamps { t as f64 / 1000.0 } else { v }));
            }
            if !points.is_empty() {
                total += points.len();
                out.push(SSeries {
                    labels: s.labels,
                    points,
                });
            }
        }
        self.ctx.add_samples(total)?;
        Ok(out)
    }

    fn matrix_selector(&self, ms: &MatrixSelector) -> Result<RangeVal, QueryError> {
        let vs = &ms.vs;
        let range = dur_ms(&ms.range);
        let off = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let first = at.unwrap_or_else(|| self.ts(0)) - off;
        let last = at.unwrap_or_else(|| self.ts(self.n - 1)) - off;
        let mut series = self.select(vs, first.saturating_sub(range) + 1, last)?;
        // Stale markers never appear in range vectors.
        for s in &mut series {
            s.samples.retain(|&(_, v)| !is_stale_nan(v));
        }
        series.retain(|s| !s.samples.is_empty());
        Ok(RangeVal {
            series,
            range,
            offset: off,
            at,
            absent_labels: absent_labels(vs),
        })
    }

    fn subquery(&self, sq: &SubqueryExpr) -> Result<RangeVal, QueryError> {
        let off = offset_ms(&sq.offset);
        let at = self.at_ms(&sq.at);
        let range = dur_ms(&sq.range);
        let step = sq
            .step
            .as_ref()
            .map(dur_ms)
            .filter(|s| *s > 0)
            .unwrap_or(self.ctx.opts.default_subquery_step_ms.max(1));
        let first = at.unwrap_or_else(|| self.ts(0)) - off;
        let last = at.unwrap_or_else(|| self.ts(self.n - 1)) - off;
        // The first step-aligned timestamp at or after `first - range` (as Prometheus).
        let lo = first - range;
        let mut start = step * (lo / step);
        if start < lo {
            start += step;
        }
        let mut rv = RangeVal {
            series: Vec::new(),
            range,
            offset: off,
            at,
            absent_labels: Labels::empty(),
        };
        if last < start {
            return Ok(rv);
        }
        let steps = ((last - start) / step + 1) as usize;
        self.ctx.add_samples(steps)?;
        let inner = Ev::new(self.ctx, start, last, step);
        rv.series = match inner.eval(&sq.expr)? {
            Val::Vector(v) => v
                .into_iter()
                .map(|s| Series {
                    samples: s
                        .points
                        .iter()
                        .map(|&(i, v)| (inner.ts(i as usize), v))
                        .collect(),
                    labels: s.labels,
                })
                .collect(),
            Val::Scalar(v) => vec![Series {
                labels: Labels::empty(),
                samples: v
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (inner.ts(i), v))
                    .collect(),
            }],
            other => {
                return Err(exec(format!(
                    "subquery is only allowed on instant vector, got {}",
                    other.type_name()
                )))
            }
        };
        Ok(rv)
    }
}

/// Groups the points of all series by step: `out[step] = [(series index, value)]`.
pub(crate) fn by_step(series: &[SSeries], n: usize) -> Vec<Vec<(u32, f64)>> {
    let mut out: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    for (si, s) in series.iter().enumerate() {
        for &(i, v) in &s.points {
            if let Some(slot) = out.get_mut(i as usize) {
                slot.push((si as u32, v));
            }
        }
    }
    out
}

pub(crate) const DUPLICATE_LABELSET: &str = "vector cannot contain metrics with the same labelset";

/// Collects output points step by step, merging series by labels.
#[derive(Default)]
pub(crate) struct OutBuilder {
    map: LabelsMap<Labels, usize>,
    pub(crate) series: Vec<SSeries>,
}

impl OutBuilder {
    /// Adds a point; steps must be pushed in increasing order per series.
    pub(crate) fn push(&mut self, labels: &Labels, step: u32, v: f64) -> Result<(), QueryError> {
        let idx = match self.map.get(labels) {
            Some(&i) => i,
            None => {
                self.series.push(SSeries {
                    labels: labels.clone(),
                    points: Vec::new(),
                });
                self.map.insert(labels.clone(), self.series.len() - 1);
                self.series.len() - 1
            }
        };
        let s = &mut self.series[idx];
        if s.points.last().is_some_and(|&(last, _)| last == step) {
            return Err(exec(DUPLICATE_LABELSET));
        }
        s.points.push((step, v));
        Ok(())
    }

    /// The collected series.
    pub(crate) fn finish(self) -> Vec<SSeries> {
        self.series
    }
}

/// Merges series that ended up with equal labels (e.g. after dropping
/// `__name__`); two points at one step are an error, as in Prometheus.
pub(crate) fn merge_series(series: Vec<SSeries>) -> Result<Vec<SSeries>, QueryError> {
    let mut idx: LabelsMap<Labels, usize> = LabelsMap::default();
    let mut out: Vec<SSeries> = Vec::with_capacity(series.len());
    let mut merged_any = false;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        match idx.get(&s.labels) {
            Some(&i) => {
                merged_any = true;
                out[i].points.extend(s.points);
            }
            None => {
                idx.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    if merged_any {
        for s in &mut out {
            s.points.sort_by_key(|p| p.0);
            if s.points.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(exec(DUPLICATE_LABELSET));
            }
        }
    }
    Ok(out)
}
