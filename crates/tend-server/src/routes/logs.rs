//! `GET /services/{name}/logs`: stored lines, then (with `follow`) live ones,
//! as newline-delimited JSON. Readable by every token, like the catalog.

use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use serde::Deserialize;
use tend_api::{ErrorBody, LogEntry, LogItem};
use tend_core::{ServiceName, Timestamp};
use tend_logs::{FollowItem, Grep, Level, LogLine, Query, Stream};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::db::read;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(service_logs))
}

/// Most lines one request returns from the store.
const MAX_LINES: usize = 100_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// Only lines after this: a duration back from now (`1h`, `15m`) or an RFC 3339 time.
    since: Option<String>,
    /// Only lines before this: a duration back from now or an RFC 3339 time.
    until: Option<String>,
    /// Only lines of this release (`3` or `v3`).
    release: Option<String>,
    /// Only lines of this instance.
    instance: Option<String>,
    /// Only `stdout`, `stderr` or `platform`.
    stream: Option<String>,
    /// Only lines at this level or more severe (`debug`, `info`, `warn`, `error`, `fatal`).
    level: Option<String>,
    /// Only lines matching this regular expression.
    grep: Option<String>,
    /// Only lines containing this text.
    contains: Option<String>,
    /// The last N stored lines (default 100; 0 for all, up to 100000).
    n: Option<usize>,
    /// Keep the stream open and send new lines as they come.
    #[serde(default)]
    follow: bool,
}

fn parse_time(what: &str, s: &str) -> Result<SystemTime, ApiError> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(s).map_err(|_| {
        ApiError::BadRequest(format!(
            "`{what}={s}` is neither a duration (`1h`, `30m`) nor a time (`2026-11-29T10:00:00Z`)"
        ))
    })
}

fn query_of(service: &ServiceName, p: &LogParams) -> Result<Query, ApiError> {
    let grep = match (&p.grep, &p.contains) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give `grep` or `contains`, not both".into(),
            ))
        }
        (Some(re), None) => Some(Grep::Regex(regex::Regex::new(re).map_err(|e| {
            ApiError::BadRequest(format!("invalid regular expression in `grep`: {e}"))
        })?)),
        (None, Some(text)) => Some(Grep::Substring(text.clone())),
        (None, None) => None,
    };
    Ok(Query {
        service: service.to_string(),
        since: p
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?,
        until: p
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?,
        release: p
            .release
            .as_deref()
            .map(|r| {
                r.trim_start_matches(['v', 'V'])
                    .parse::<u32>()
                    .map_err(|_| {
                        ApiError::BadRequest(format!("`release={r}` is not a release such as v3"))
                    })
            })
            .transpose()?,
        instance: p.instance.clone(),
        stream: p
            .stream
            .as_deref()
            .map(|s| {
                s.parse::<Stream>().map_err(|_| {
                    ApiError::BadRequest(format!("`stream={s}`: use stdout, stderr or platform"))
                })
            })
            .transpose()?,
        min_level: p
            .level
            .as_deref()
            .map(|l| {
                Level::parse(l).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "`level={l}`: use trace, debug, info, warn, error or fatal"
                    ))
                })
            })
            .transpose()?,
        grep,
        limit: match p.n {
            None => 100,
            Some(0) => MAX_LINES,
            Some(n) => n.min(MAX_LINES),
        },
    })
}

fn entry(l: LogLine) -> LogEntry {
    LogEntry {
        time: Timestamp::from_system_time(l.time),
        service: l.service,
        release: l.release,
        instance: l.instance,
        stream: l.stream.as_str().to_string(),
        level: l.level.map(|l| l.as_str().to_string()),
        message: l.message,
        raw: l.raw,
        seq: l.seq,
    }
}

fn ndjson(item: &LogItem) -> Bytes {
    let mut v = serde_json::to_vec(item).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A service's log lines in time order across instances: the last `n` stored
/// lines matching the filters, then, with `follow`, new ones as they come.
#[utoipa::path(get, path = "/services/{name}/logs", tag = "logs",
    params(("name" = String, Path, description = "Service name"), LogParams),
    responses((status = 200, body = LogItem, content_type = "application/x-ndjson"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn service_logs(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    let n = name.clone();
    read(&state, move |tx| Ok(tx.service(&n)?)).await?;
    let query = query_of(&name, &params)?;
    // Subscribe before reading the store so nothing falls between the two;
    // lines seen in both are skipped by sequence number.
    let mut live = params.follow.then(|| state.logs.follow(&query));
    let logs = state.logs.clone();
    let q = query.clone();
    let stored = tokio::task::spawn_blocking(move || logs.query(&q))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot read the logs: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        let mut last_seq = None;
        for l in stored {
            last_seq = Some(l.seq);
            if tx.send(Ok(ndjson(&LogItem::Line(entry(l))))).await.is_err() {
                return;
            }
        }
        let Some(live) = live.as_mut() else { return };
        loop {
            // A keep-alive blank line now and then tells a dead client apart.
            let item = tokio::time::timeout(Duration::from_secs(15), live.recv()).await;
            let bytes = match item {
                Ok(Some(FollowItem::Line(l))) => {
                    if last_seq.is_some_and(|s| l.seq <= s) {
                        continue;
                    }
                    ndjson(&LogItem::Line(entry(l)))
                }
                Ok(Some(FollowItem::Lagged(n))) => ndjson(&LogItem::Lagged { lagged: n }),
                Ok(None) => return,
                Err(_) => Bytes::from_static(b"\n"),
            };
            if tx.send(Ok(bytes)).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}
