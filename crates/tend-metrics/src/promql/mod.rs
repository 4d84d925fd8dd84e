//! PromQL evaluation with Prometheus semantics, over a [`Tsdb`].
//!
//! Expressions are parsed by the `promql-parser` crate. Evaluation follows
//! the Prometheus engine: every node is evaluated for all steps of the query
//! at once (an instant query is a range query with one step), selectors read
//! storage once per node, lookback and range windows are left-open
//! (`(t - window, t]`, Prometheus 3), stale markers end a series, and
//! `__name__` is dropped by every function and operator that changes values.

mod aggregate;
mod binary;
mod eval;
mod functions;

use std::time::Duration;

use crate::{Labels, Series, Tsdb, TsdbError};

pub use eval::MAX_POINTS_PER_SERIES;

/// Evaluation settings.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// How far back an instant selector looks for a sample (Prometheus: 5 m).
    pub lookback_delta_ms: i64,
    /// Wall-clock budget of one query.
    pub timeout: Duration,
    /// Samples a query may hold (loaded from storage plus produced), like `--query.max-samples`.
    pub max_samples: usize,
    /// Subquery step when the query gives none (Prometheus: the evaluation interval, 1 m).
    pub default_subquery_step_ms: i64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
            default_subquery_step_ms: 60_000,
        }
    }
}

/// One element of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Series labels.
    pub labels: Labels,
    /// Evaluation timestamp (ms).
    pub t: i64,
    /// Value.
    pub v: f64,
}

/// A range-vector or range-query result: series sorted by labels.
pub type Matrix = Vec<Series>;

/// The result of an instant query.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A scalar at the evaluation time.
    Scalar {
        /// Evaluation timestamp (ms).
        t: i64,
        /// Value.
        v: f64,
    },
    /// A string literal.
    String {
        /// Evaluation timestamp (ms).
        t: i64,
        /// Value.
        v: String,
    },
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector (a matrix selector or subquery at the top level).
    Matrix(Matrix),
}

/// Query failures, each mapping to one Prometheus API error type.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The expression or the query parameters are invalid (HTTP 400, `bad_data`).
    #[error("{0}")]
    Parse(String),
    /// Evaluation failed (HTTP 422, `execution`), e.g. many-to-many matching.
    #[error("{0}")]
    Execution(String),
    /// The query ran longer than [`EvalOptions::timeout`] (HTTP 503, `timeout`).
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// The query needed more than [`EvalOptions::max_samples`] (HTTP 422, `execution`).
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// Storage failed (HTTP 500, `internal`).
    #[error("storage: {0}")]
    Storage(#[from] TsdbError),
}

impl QueryError {
    /// The Prometheus API `errorType` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::Parse(_) => "bad_data",
            QueryError::Execution(_) | QueryError::TooManySamples => "execution",
            QueryError::Timeout => "timeout",
            QueryError::Storage(_) => "internal",
        }
    }

    /// The HTTP status Prometheus answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            QueryError::Parse(_) => 400,
            QueryError::Execution(_) | QueryError::TooManySamples => 422,
            QueryError::Timeout => 503,
            QueryError::Storage(_) => 500,
        }
    }
}

fn parse(expr: &str) -> Result<promql_parser::parser::Expr, QueryError> {
    promql_parser::parser::parse(expr).map_err(QueryError::Parse)
}

/// Parses a series selector (`up{job="x"}`, `{service="web"}`) into groups of
/// storage matchers (several when the selector uses `or`), for `match[]`.
pub fn parse_selector(selector: &str) -> Result<Vec<Vec<crate::Matcher>>, QueryError> {
    match parse(selector)? {
        promql_parser::parser::Expr::VectorSelector(vs) => Ok(eval::matcher_groups(&vs)),
        _ => Err(QueryError::Parse(format!(
            "invalid series selector {selector:?}: expected a metric name and/or label matchers"
        ))),
    }
}

/// Checks that `expr` parses (for validating alert rules and dashboards).
pub fn validate(expr: &str) -> Result<(), QueryError> {
    parse(expr).map(|_| ())
}

/// Evaluates `expr` at `time_ms`.
pub fn instant(
    db: &Tsdb,
    expr: &str,
    time_ms: i64,
    opts: &EvalOptions,
) -> Result<Value, QueryError> {
    let ast = parse(expr)?;
    let ctx = eval::Ctx::new(db, opts, time_ms, time_ms);
    let ev = eval::Ev::new(&ctx, time_ms, time_ms, 1);
    Ok(match ev.eval(&ast)? {
        eval::Val::Scalar(v) => Value::Scalar {
            t: time_ms,
            v: v.first().copied().unwrap_or(f64::NAN),
        },
        eval::Val::String(s) => Value::String { t: time_ms, v: s },
        eval::Val::Vector(series) => Value::Vector(
            series
                .into_iter()
                .filter_map(|s| {
                    s.points.first().map(|&(_, v)| Sample {
                        labels: s.labels,
                        t: time_ms,
                        v,
                    })
                })
                .collect(),
        ),
        eval::Val::Range(r) => Value::Matrix(r.window_series(&ev, 0)),
    })
}

/// Evaluates `expr` at every step from `start_ms` to `end_ms`; series sorted by labels.
pub fn range(
    db: &Tsdb,
    expr: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    opts: &EvalOptions,
) -> Result<Matrix, QueryError> {
    if step_ms <= 0 {
        return Err(QueryError::Parse(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if end_ms < start_ms {
        return Err(QueryError::Parse(
            "end timestamp must not be before start time".into(),
        ));
    }
    if (end_ms - start_ms) / step_ms > MAX_POINTS_PER_SERIES as i64 {
        return Err(QueryError::Parse(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let ast = parse(expr)?;
    let ctx = eval::Ctx::new(db, opts, start_ms, end_ms);
    let ev = eval::Ev::new(&ctx, start_ms, end_ms, step_ms);
    let mut out: Matrix = match ev.eval(&ast)? {
        eval::Val::Scalar(v) => vec![Series {
            labels: Labels::empty(),
            samples: v.iter().enumerate().map(|(i, &v)| (ev.ts(i), v)).collect(),
        }],
        eval::Val::Vector(series) => series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .map(|s| Series { samples: s.points.iter().map(|&(i, v)| (ev.ts(i as usize), v)).collect(), labels: s.labels })
            .collect(),
        eval::Val::String(_) => {
            return Err(QueryError::Parse(
                "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
            ))
        }
        eval::Val::Range(_) => {
            return Err(QueryError::Parse(
                "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector".into(),
            ))
        }
    };
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}
