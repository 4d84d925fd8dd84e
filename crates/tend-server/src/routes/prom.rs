//! The Prometheus HTTP API (`/api/v1/query`, `query_range`, `series`, `labels`,
//! `label/<name>/values`, `status/buildinfo`), so Grafana and promtool can use
//! tend as a Prometheus data source. Same JSON envelope and error types as
//! Prometheus; authenticated with tend's bearer tokens like every endpoint.
//! Documented by Prometheus, so not in tend's OpenAPI description.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use tend_metrics::promql::{self, EvalOptions, Value};
use tend_metrics::{Labels, Matcher};

use crate::auth::Caller;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/query", get(query_get).post(query_post))
        .route("/api/v1/query_range", get(range_get).post(range_post))
        .route("/api/v1/labels", get(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/series", get(series))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/metrics", get(platform_metrics))
}

/// The platform's own metrics, Prometheus text format (scrape with a token).
async fn platform_metrics(State(s): State<AppState>, _c: Caller) -> Response {
    let text =
        crate::metrics::render_platform(&s.router, &s.logs, &s.tsdb, s.remote_write.as_ref());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A Prometheus API error: `{"status":"error","errorType":...,"error":...}`.
struct PromError(StatusCode, &'static str, String);

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"status": "error", "errorType": self.1, "error": self.2})),
        )
            .into_response()
    }
}

fn bad(msg: impl Into<String>) -> PromError {
    PromError(StatusCode::BAD_REQUEST, "bad_data", msg.into())
}

fn success(data: Json_) -> Response {
    Json(json!({"status": "success", "data": data})).into_response()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time parameter: Unix seconds (float) or RFC 3339.
fn parse_time(name: &str, s: &str) -> Result<i64, PromError> {
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Ok((f * 1000.0).round() as i64);
        }
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
        .map_err(|_| {
            bad(format!(
                "invalid parameter \"{name}\": cannot parse \"{s}\" to a valid timestamp"
            ))
        })
}

/// A duration parameter: seconds (float) or a Prometheus duration (`15s`, `1m`).
fn parse_step(name: &str, s: &str) -> Result<i64, PromError> {
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() && f > 0.0 {
            return Ok((f * 1000.0).round() as i64);
        }
    }
    humantime::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            bad(format!(
                "invalid parameter \"{name}\": cannot parse \"{s}\" to a valid duration"
            ))
        })
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn point(t: i64, v: f64) -> Json_ {
    json!([t as f64 / 1000.0, fmt_value(v)])
}

fn metric(l: &Labels) -> Json_ {
    Json_::Object(
        l.iter()
            .map(|(k, v)| (k.to_string(), Json_::String(v.to_string())))
            .collect(),
    )
}

fn options(timeout: Option<&str>) -> Result<EvalOptions, PromError> {
    let mut o = EvalOptions::default();
    if let Some(t) = timeout {
        o.timeout =
            Duration::from_millis(parse_step("timeout", t)? as u64).min(Duration::from_secs(120));
    }
    Ok(o)
}

fn query_error(e: promql::QueryError) -> PromError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    PromError(status, e.error_type(), e.to_string())
}

#[derive(Debug, Deserialize)]
struct InstantParams {
    query: Option<String>,
    time: Option<String>,
    timeout: Option<String>,
}

async fn query_get(
    State(s): State<AppState>,
    _c: Caller,
    Query(p): Query<InstantParams>,
) -> Response {
    instant(s, p).await.unwrap_or_else(|e| e.into_response())
}

async fn query_post(
    State(s): State<AppState>,
    _c: Caller,
    Form(p): Form<InstantParams>,
) -> Response {
    instant(s, p).await.unwrap_or_else(|e| e.into_response())
}

async fn instant(state: AppState, p: InstantParams) -> Result<Response, PromError> {
    let expr = p
        .query
        .ok_or_else(|| bad("invalid parameter \"query\": missing"))?;
    let t = match p.time.as_deref() {
        Some(t) => parse_time("time", t)?,
        None => now_ms(),
    };
    let opts = options(p.timeout.as_deref())?;
    let db = state.tsdb.clone();
    let value = tokio::task::spawn_blocking(move || promql::instant(&db, &expr, t, &opts))
        .await
        .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(query_error)?;
    let data = match value {
        Value::Scalar { t, v } => json!({"resultType": "scalar", "result": point(t, v)}),
        Value::String { t, v } => json!({"resultType": "string", "result": [t as f64 / 1000.0, v]}),
        Value::Vector(samples) => {
            json!({"resultType": "vector", "result": samples.iter().map(|s| json!({"metric": metric(&s.labels), "value": point(s.t, s.v)})).collect::<Vec<_>>()})
        }
        Value::Matrix(series) => {
            json!({"resultType": "matrix", "result": series.iter().map(|s| json!({"metric": metric(&s.labels), "values": s.samples.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>()})).collect::<Vec<_>>()})
        }
    };
    Ok(success(data))
}

#[derive(Debug, Deserialize)]
struct RangeParams {
    query: Option<String>,
    start: Option<String>,
    end: Option<String>,
    step: Option<String>,
    timeout: Option<String>,
}

async fn range_get(
    State(s): State<AppState>,
    _c: Caller,
    Query(p): Query<RangeParams>,
) -> Response {
    range(s, p).await.unwrap_or_else(|e| e.into_response())
}

async fn range_post(State(s): State<AppState>, _c: Caller, Form(p): Form<RangeParams>) -> Response {
    range(s, p).await.unwrap_or_else(|e| e.into_response())
}

async fn range(state: AppState, p: RangeParams) -> Result<Response, PromError> {
    let expr = p
        .query
        .ok_or_else(|| bad("invalid parameter \"query\": missing"))?;
    let start = parse_time(
        "start",
        p.start
            .as_deref()
            .ok_or_else(|| bad("invalid parameter \"start\": missing"))?,
    )?;
    let end = parse_time(
        "end",
        p.end
            .as_deref()
            .ok_or_else(|| bad("invalid parameter \"end\": missing"))?,
    )?;
    let step = parse_step(
        "step",
        p.step
            .as_deref()
            .ok_or_else(|| bad("invalid parameter \"step\": missing"))?,
    )?;
    if end < start {
        return Err(bad(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    if (end - start) / step > 11_000 {
        return Err(bad("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"));
    }
    let opts = options(p.timeout.as_deref())?;
    let db = state.tsdb.clone();
    let matrix =
        tokio::task::spawn_blocking(move || promql::range(&db, &expr, start, end, step, &opts))
            .await
            .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(query_error)?;
    Ok(success(json!({
        "resultType": "matrix",
        "result": matrix.iter().map(|s| json!({"metric": metric(&s.labels), "values": s.samples.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>()})).collect::<Vec<_>>()
    })))
}

/// `match[]` (repeated), `start` and `end` of the metadata endpoints.
#[derive(Debug, Default)]
struct MatchParams {
    matches: Vec<String>,
    start: Option<String>,
    end: Option<String>,
}

/// `match[]` selectors as matcher lists (`{a="b"}` or `name{...}`).
fn selectors(list: &[String]) -> Result<Vec<Vec<Matcher>>, PromError> {
    let mut out = Vec::new();
    for s in list {
        out.extend(promql::parse_selector(s).map_err(|e| bad(e.to_string()))?);
    }
    Ok(out)
}

fn span(p: &MatchParams) -> Result<(i64, i64), PromError> {
    let start = p
        .start
        .as_deref()
        .map(|s| parse_time("start", s))
        .transpose()?
        .unwrap_or(i64::MIN / 2);
    let end = p
        .end
        .as_deref()
        .map(|s| parse_time("end", s))
        .transpose()?
        .unwrap_or(i64::MAX / 2);
    Ok((start, end))
}

fn match_params(raw: Option<&str>) -> MatchParams {
    let mut p = MatchParams::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "match[]" => p.matches.push(v.into_owned()),
            "start" => p.start = Some(v.into_owned()),
            "end" => p.end = Some(v.into_owned()),
            _ => {}
        }
    }
    p
}

async fn labels(State(s): State<AppState>, _c: Caller, uri: axum::http::Uri) -> Response {
    let p = match_params(uri.query());
    let run = async {
        let sels = selectors(&p.matches)?;
        let (start, end) = span(&p)?;
        let db = s.tsdb.clone();
        let names = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
            let mut all = std::collections::BTreeSet::new();
            let sets = if sels.is_empty() { vec![vec![]] } else { sels };
            for m in sets {
                all.extend(db.label_names(&m, start, end).map_err(|e| e.to_string())?);
            }
            Ok(all.into_iter().collect())
        })
        .await
        .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        Ok::<_, PromError>(success(json!(names)))
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

async fn label_values(
    State(s): State<AppState>,
    _c: Caller,
    Path(name): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let p = match_params(uri.query());
    let run = async {
        let sels = selectors(&p.matches)?;
        let (start, end) = span(&p)?;
        let db = s.tsdb.clone();
        let values = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
            let mut all = std::collections::BTreeSet::new();
            let sets = if sels.is_empty() { vec![vec![]] } else { sels };
            for m in sets {
                all.extend(
                    db.label_values(&name, &m, start, end)
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok(all.into_iter().collect())
        })
        .await
        .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        Ok::<_, PromError>(success(json!(values)))
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

async fn series(State(s): State<AppState>, _c: Caller, uri: axum::http::Uri) -> Response {
    let p = match_params(uri.query());
    let run = async {
        if p.matches.is_empty() {
            return Err(bad("no match[] parameter provided"));
        }
        let sels = selectors(&p.matches)?;
        let (start, end) = span(&p)?;
        let db = s.tsdb.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<Json_>, String> {
            let mut seen = std::collections::BTreeMap::new();
            for m in sels {
                for l in db.series(&m, start, end).map_err(|e| e.to_string())? {
                    seen.insert(format!("{l:?}"), metric(&l));
                }
            }
            Ok(seen.into_values().collect())
        })
        .await
        .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| PromError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
        Ok::<_, PromError>(success(json!(found)))
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

async fn buildinfo(_c: Caller) -> Response {
    success(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "tend (Rust)"
    }))
}
