//! The dashboard's pages and the actions their forms post.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use tend_core::model::{Instance, NewAuditEntry, Outcome};
use tend_core::{ServiceName, TeamName};
use tend_logs::{FollowItem, Grep, Level, LogLine, Query as LogQuery, Stream};
use tend_store::TokenLookup;

use super::chart::{self, Line, Unit};
use super::data::{self, Golden, Points, ServiceRow};
use super::session;
use super::{check_csrf, form, page, UiError, Viewer, S};
use crate::db::{audited, read};
use crate::error::ApiError;

/// The catalog's sparkline window.
const CATALOG_WINDOW_MS: i64 = 30 * 60 * 1000;
/// Points in a sparkline.
const SPARK_POINTS: i64 = 60;
/// Points in a chart.
const CHART_POINTS: i64 = 120;
/// Log lines shown when the page opens.
const LOG_BACKLOG: usize = 200;

fn client(req: &Request) -> Option<String> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
}

pub(super) async fn body_of(req: Request) -> Result<Bytes, UiError> {
    axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|_| {
            UiError::Api(ApiError::PayloadTooLarge(
                "the form is larger than 64 KiB".into(),
            ))
        })
}

// ------------------------------------------------------------------ login

/// The login form; sets the pre-login CSRF cookie the form must echo.
fn login_form(headers: &HeaderMap, status: StatusCode, problem: Option<&str>) -> Response {
    let token = session::random_token();
    let secure = session::is_https(headers);
    let body = page(
        "Log in",
        None,
        html! {
            section class="card login" {
                h1 { "Log in to tend" }
                p { "Paste an API token: the one " code { "tend server" } " printed at first start, or one an admin made with " code { "tend tokens create" } "." }
                @if let Some(p) = problem {
                    p class="error" role="alert" id="login-problem" { (p) }
                }
                form method="post" action="/ui/login" {
                    input type="hidden" name="csrf" value=(token);
                    label for="token" { "Token" }
                    input id="token" name="token" type="password" autocomplete="current-password"
                        required autofocus spellcheck="false" placeholder="tend_…"
                        aria-describedby=[problem.map(|_| "login-problem")];
                    button type="submit" { "Log in" }
                }
            }
        },
    );
    (
        status,
        [(
            header::SET_COOKIE,
            session::set_cookie(
                session::LOGIN_COOKIE,
                &token,
                Duration::from_secs(3600),
                secure,
            ),
        )],
        body,
    )
        .into_response()
}

/// `GET /ui/login`.
pub(super) async fn login_page(
    State(ui): S,
    viewer: Result<Viewer, UiError>,
    headers: HeaderMap,
) -> Response {
    let _ = ui;
    match viewer {
        Ok(_) => Redirect::to("/ui").into_response(),
        Err(_) => login_form(&headers, StatusCode::OK, None),
    }
}

/// `POST /ui/login`: checks the token like the API does and starts a session.
pub(super) async fn login(State(ui): S, req: Request) -> Result<Response, UiError> {
    let headers = req.headers().clone();
    let client = client(&req);
    let fields = form(&body_of(req).await?);
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    let echoed = fields.get("csrf").map(String::as_str).unwrap_or("");
    if expected.is_empty() || !session::same_secret(expected, echoed) {
        return Ok(login_form(
            &headers,
            StatusCode::FORBIDDEN,
            Some("The form expired or did not come from this page. Please try again."),
        ));
    }
    let token = fields.get("token").map(|t| t.trim()).unwrap_or("");
    if token.is_empty() {
        return Ok(login_form(
            &headers,
            StatusCode::BAD_REQUEST,
            Some("Enter a token."),
        ));
    }
    let hash = crate::auth::hash_token(token);
    let store = ui.app.store.clone();
    let lookup = tokio::task::spawn_blocking(move || store.write(|tx| tx.authenticate(&hash)))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)?;
    let (outcome, actor, problem) = match &lookup {
        TokenLookup::Valid(p) => (Outcome::Allowed, Some(p.name.to_string()), None),
        TokenLookup::Unknown => (
            Outcome::Denied,
            None,
            Some("That token is not valid.".to_string()),
        ),
        TokenLookup::Revoked(at) => (
            Outcome::Denied,
            None,
            Some(format!("That token was revoked at {at}.")),
        ),
        TokenLookup::Expired(at) => (
            Outcome::Denied,
            None,
            Some(format!("That token expired at {at}.")),
        ),
    };
    let entry = NewAuditEntry {
        actor,
        action: "ui.login".into(),
        target: "ui/session".into(),
        team: None,
        outcome,
        client,
        detail: problem.clone(),
    };
    let store = ui.app.store.clone();
    tokio::task::spawn_blocking(move || store.write(|tx| tx.append_audit(&entry)))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)?;
    if let Some(problem) = problem {
        return Ok(login_form(
            &headers,
            StatusCode::UNAUTHORIZED,
            Some(&problem),
        ));
    }
    let (id, _) = ui.sessions.create(hash);
    let secure = session::is_https(&headers);
    let mut resp = Redirect::to("/ui").into_response();
    let h = resp.headers_mut();
    for c in [
        session::set_cookie(session::COOKIE, &id, session::SESSION_TTL, secure),
        session::clear_cookie(session::LOGIN_COOKIE, secure),
    ] {
        if let Ok(v) = c.parse() {
            h.append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

/// `POST /ui/logout`.
pub(super) async fn logout(
    State(ui): S,
    viewer: Viewer,
    req: Request,
) -> Result<Response, UiError> {
    let secure = session::is_https(req.headers());
    let fields = form(&body_of(req).await?);
    check_csrf(&viewer, &fields).map_err(UiError::Forbidden)?;
    ui.sessions.remove(&viewer.session_id);
    audited(
        &ui.app,
        &viewer.caller,
        "ui.logout",
        "ui/session".into(),
        |_, _| Ok(()),
    )
    .await?;
    Ok((
        [(
            header::SET_COOKIE,
            session::clear_cookie(session::COOKIE, secure),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response())
}

// ---------------------------------------------------------------- catalog

#[derive(Debug, Default, Deserialize)]
pub(super) struct CatalogParams {
    team: Option<String>,
    q: Option<String>,
}

impl CatalogParams {
    fn team(&self) -> Result<Option<TeamName>, UiError> {
        match self.team.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) => TeamName::parse(t)
                .map(Some)
                .map_err(|e| UiError::Api(ApiError::BadRequest(format!("team `{t}`: {e}")))),
        }
    }

    fn matches(&self, row: &ServiceRow) -> bool {
        let Some(q) = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) else {
            return true;
        };
        let q = q.to_lowercase();
        row.name.as_str().contains(&q)
            || row.owner.as_str().contains(&q)
            || row.description.to_lowercase().contains(&q)
    }

    fn query_string(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("team", self.team.as_deref().unwrap_or(""))
            .append_pair("q", self.q.as_deref().unwrap_or(""))
            .finish()
    }
}

/// Catalog rows and golden signals, read concurrently.
async fn catalog_data(ui: &super::Ui, params: &CatalogParams) -> Result<Catalog, UiError> {
    let team = params.team()?;
    let rows = read(&ui.app, move |tx| {
        let teams = tx.teams()?.into_iter().map(|t| t.name).collect::<Vec<_>>();
        let open = super::incidents::count_by_service(&super::incidents::open(tx)?);
        Ok((data::catalog(tx, team.as_ref())?, teams, open))
    });
    let t1 = data::now_ms();
    let t0 = t1 - CATALOG_WINDOW_MS;
    let db = ui.app.tsdb.clone();
    let golden = tokio::task::spawn_blocking(move || {
        data::golden(&db, t0, t1, CATALOG_WINDOW_MS / SPARK_POINTS)
    });
    let (rows, golden) = tokio::join!(rows, golden);
    let (rows, teams, open) = rows?;
    let golden = golden.map_err(|e| ApiError::Internal(e.to_string()))?;
    let rows = rows.into_iter().filter(|r| params.matches(r)).collect();
    // One time axis for every row, so sparklines compare.
    let t0 = chart::fit_start(
        t0,
        t1,
        golden
            .rate
            .values()
            .chain(golden.errors.values())
            .chain(golden.p99.values())
            .map(|p| p.as_slice()),
    );
    Ok(Catalog {
        rows,
        teams,
        golden,
        open,
        t0,
        t1,
    })
}

/// What the catalog shows.
struct Catalog {
    rows: Vec<ServiceRow>,
    teams: Vec<TeamName>,
    golden: Golden,
    /// Open incidents by service.
    open: HashMap<String, usize>,
    t0: i64,
    t1: i64,
}

fn last(p: Option<&Points>) -> f64 {
    p.and_then(|p| p.iter().rev().find(|x| x.1.is_finite()))
        .map(|x| x.1)
        .unwrap_or(f64::NAN)
}

fn health_badge(h: data::Health) -> Markup {
    html! { span class=(format!("badge {}", h.as_str().replace(' ', "-"))) { (h.as_str()) } }
}

fn signal_cell(p: Option<&Points>, unit: Unit, what: &str, t0: i64, t1: i64) -> Markup {
    let v = last(p);
    let text = chart::format(v, unit);
    html! {
        td class="num signal" data-label=(what) {
            span { (text) }
            (chart::sparkline(p.map(|p| p.as_slice()).unwrap_or(&[]), t0, t1, &format!("{what}, last 30 minutes, now {text}")))
        }
    }
}

fn catalog_rows(c: &Catalog) -> Markup {
    let (rows, g, t0, t1) = (&c.rows, &c.golden, c.t0, c.t1);
    html! {
        @if rows.is_empty() {
            tr { td colspan="9" class="empty" { "No service matches." } }
        }
        @for r in rows {
            @let n = r.name.as_str();
            tr data-service=(n) {
                th scope="row" data-label="Service" {
                    a href=(format!("/ui/services/{n}")) { (n) }
                    @if !r.description.is_empty() { div class="muted" { (r.description) } }
                }
                td data-label="Owner" class="owner" { a href=(format!("/ui/teams#team-{}", r.owner)) { (r.owner.as_str()) } }
                td data-label="Release" { @if let Some(v) = r.release { "v" (v) } @else { "–" } }
                td data-label="Instances" class="num" { (r.ready) "/" (r.desired) }
                td data-label="Health" { (health_badge(r.health)) }
                td data-label="Incidents" class="num" {
                    @match c.open.get(n) {
                        Some(k) => a class="badge down" href="/ui/incidents" { (k) " open" },
                        None => span class="muted" { "none" },
                    }
                }
                (signal_cell(g.rate.get(n), Unit::PerSecond, "Requests", t0, t1))
                (signal_cell(g.errors.get(n), Unit::Ratio, "Errors", t0, t1))
                (signal_cell(g.p99.get(n), Unit::Seconds, "p99", t0, t1))
            }
        }
    }
}

/// `GET /ui`: the catalog, or the login form when not signed in.
pub(super) async fn home(
    State(ui): S,
    viewer: Result<Viewer, UiError>,
    headers: HeaderMap,
    Query(params): Query<CatalogParams>,
) -> Result<Response, UiError> {
    let Ok(viewer) = viewer else {
        return Ok(login_form(&headers, StatusCode::OK, None));
    };
    let cat = catalog_data(&ui, &params).await?;
    let teams = &cat.teams;
    let selected = params.team.clone().unwrap_or_default();
    let mine: Vec<&TeamName> = viewer.caller.principal.teams.iter().collect();
    let body = html! {
        div class="title" {
            h1 { "Services" }
            p class="muted" { (cat.rows.len()) " shown · owner, release, instances and the last 30 minutes of traffic" }
        }
        form class="filters" method="get" action="/ui" role="search" {
            div {
                label for="team" { "Team" }
                select id="team" name="team" {
                    option value="" selected[selected.is_empty()] { "All teams" }
                    @for t in teams {
                        option value=(t.as_str()) selected[selected == t.as_str()] {
                            (t.as_str()) @if mine.contains(&t) { " (yours)" }
                        }
                    }
                }
            }
            div class="grow" {
                label for="q" { "Search" }
                input id="q" name="q" type="search" value=(params.q.clone().unwrap_or_default())
                    placeholder="name, team or description";
            }
            button type="submit" { "Filter" }
        }
        div class="table-wrap" {
            table class="catalog responsive" {
                caption class="sr-only" { "Services" }
                thead { tr {
                    th scope="col" { "Service" } th scope="col" { "Owner" } th scope="col" { "Release" }
                    th scope="col" { "Instances" } th scope="col" { "Health" } th scope="col" { "Incidents" } th scope="col" { "Requests" }
                    th scope="col" { "Errors" } th scope="col" { "p99" }
                } }
                tbody id="catalog-rows" data-refresh=(format!("/ui/fragments/catalog?{}", params.query_string())) data-every="5000" {
                    (catalog_rows(&cat))
                }
            }
        }
    };
    Ok(page("Services", Some(&viewer), body).into_response())
}

/// `GET /ui/fragments/catalog`: the catalog's rows, for live refresh.
pub(super) async fn catalog_fragment(
    State(ui): S,
    _viewer: Viewer,
    Query(params): Query<CatalogParams>,
) -> Result<Markup, UiError> {
    Ok(catalog_rows(&catalog_data(&ui, &params).await?))
}

// ---------------------------------------------------------------- service

#[derive(Debug, Default, Deserialize)]
pub(super) struct ServiceParams {
    window: Option<String>,
    /// The deployment a rollback from this page started (shown as a notice).
    started: Option<String>,
}

/// The windows a service's charts can show.
const WINDOWS: [(&str, i64); 5] = [
    ("15m", 15 * 60_000),
    ("1h", 3_600_000),
    ("6h", 6 * 3_600_000),
    ("24h", 24 * 3_600_000),
    ("7d", 7 * 24 * 3_600_000),
];

fn parse_service(name: &str) -> Result<ServiceName, UiError> {
    ServiceName::parse(name).map_err(|e| UiError::NotFound(format!("no service `{name}`: {e}")))
}

fn instance_rows(instances: &[Instance], usage: &HashMap<String, (f64, f64)>) -> Markup {
    let now = data::now_ms();
    html! {
        @if instances.is_empty() {
            tr { td colspan="8" class="empty" { "No instances." } }
        }
        @for i in instances {
            @let (cpu, mem) = usage.get(&i.id).copied().unwrap_or((f64::NAN, f64::NAN));
            tr data-instance=(i.id) {
                th scope="row" data-label="Instance" { code { (i.id) } }
                td data-label="Release" { "v" (i.release) }
                td data-label="State" { span class=(format!("badge {}", i.state.as_str())) { (i.state.as_str()) } }
                td data-label="Restarts" class="num" { (i.restarts) }
                td data-label="Uptime" class="num" { (data::uptime(i, now)) }
                td data-label="CPU" class="num" { (chart::format(cpu, Unit::Cores)) }
                td data-label="Memory" class="num" { (chart::format(mem, Unit::Bytes)) }
                td data-label="Last exit" class="muted" { (i.last_exit.as_deref().unwrap_or("")) }
            }
        }
    }
}

async fn instances_with_usage(
    ui: &super::Ui,
    name: &ServiceName,
) -> Result<(Vec<Instance>, HashMap<String, (f64, f64)>), UiError> {
    let deployer = ui.app.deployer.clone();
    let db = ui.app.tsdb.clone();
    let n = name.clone();
    tokio::task::spawn_blocking(move || {
        let instances = deployer.instances(&n).map_err(ApiError::from)?;
        Ok((instances, data::instance_usage(&db, &n)))
    })
    .await
    .map_err(|e| UiError::Api(ApiError::Internal(e.to_string())))?
}

/// `GET /ui/services/{name}/instances`: the instances table's rows.
pub(super) async fn instances_fragment(
    State(ui): S,
    _viewer: Viewer,
    Path(name): Path<String>,
) -> Result<Markup, UiError> {
    let name = parse_service(&name)?;
    let n = name.clone();
    read(&ui.app, move |tx| Ok(tx.service(&n)?)).await?;
    let (instances, usage) = instances_with_usage(&ui, &name).await?;
    Ok(instance_rows(&instances, &usage))
}

fn series_lines(m: &std::collections::BTreeMap<String, Points>) -> Vec<Line<'_>> {
    m.iter()
        .map(|(k, p)| Line {
            name: if k.is_empty() {
                "all".into()
            } else {
                k.clone()
            },
            points: p,
        })
        .collect()
}

/// `GET /ui/services/{name}`.
pub(super) async fn service(
    State(ui): S,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(params): Query<ServiceParams>,
) -> Result<Response, UiError> {
    let name = parse_service(&name)?;
    let (window_name, window_ms) = match params.window.as_deref() {
        None => WINDOWS[1],
        Some(w) => *WINDOWS.iter().find(|(n, _)| *n == w).ok_or_else(|| {
            UiError::Api(ApiError::BadRequest(format!(
                "window `{w}`: use one of 15m, 1h, 6h, 24h, 7d"
            )))
        })?,
    };
    let principal = viewer.caller.principal.clone();
    let n = name.clone();
    let detail = read(&ui.app, move |tx| {
        let d = data::service_detail(tx, &n, |owner| principal.acts_for(owner))?;
        Ok((d, super::incidents::of_service(tx, n.as_str())?))
    });
    let t1 = data::now_ms();
    let t0 = t1 - window_ms;
    let db = ui.app.tsdb.clone();
    let n = name.clone();
    let charts = tokio::task::spawn_blocking(move || {
        data::service_charts(&db, &n, t0, t1, (window_ms / CHART_POINTS).max(1000))
    });
    let (detail, charts, inst) = tokio::join!(detail, charts, instances_with_usage(&ui, &name));
    let (d, incidents) = detail?;
    let charts = charts.map_err(|e| ApiError::Internal(e.to_string()))?;
    let (instances, usage) = inst?;
    let owner_acts = viewer.acts_for(&d.row.owner);
    let n = name.as_str();
    let port = ui.app.router_addr.port();
    let body = html! {
        div class="title" {
            p class="crumbs" { a href="/ui" { "Services" } " / " }
            h1 { (n) " " (health_badge(d.row.health)) }
            p { (d.row.description) }
            dl class="facts" {
                div { dt { "Owner" } dd class="owner" { a href=(format!("/ui/teams#team-{}", d.row.owner)) { (d.row.owner.as_str()) } } }
                div { dt { "Release" } dd { @if let Some(v) = d.row.release { "v" (v) } @else { "none yet" } } }
                div { dt { "Instances" } dd { (d.row.ready) " ready of " (d.row.desired) } }
                @if let Some(dep) = &d.deployment {
                    div { dt { "Last deployment" } dd {
                        "#" (dep.id) " " (format!("{:?}", dep.kind).to_lowercase()) " "
                        @if let Some(v) = dep.release { "v" (v) " " }
                        span class="badge" { (format!("{:?}", dep.state).to_lowercase()) }
                        @if let Some(r) = &dep.reason { " — " (r) }
                    } }
                }
                div { dt { "URL" } dd { a href=(format!("http://{n}.localhost:{port}/")) { (format!("http://{n}.localhost:{port}/")) }
                    @if let Some(h) = d.host.as_ref().filter(|h| **h != format!("{n}.localhost")) { br; a href=(format!("http://{h}:{port}/")) { (format!("http://{h}:{port}/")) } } } }
                @if let Some(r) = &d.runbook { div { dt { "Runbook" } dd { a href=(r) rel="noopener noreferrer" { (r) } } } }
            }
            @if let Some(id) = params.started.as_deref().and_then(|s| s.parse::<i64>().ok()) {
                p class="notice" role="status" { "Rollback started: deployment #" (id) ". Instances are replaced below as it rolls out." }
            }
        }
        @if !incidents.is_empty() {
            section aria-labelledby="h-incidents" {
                h2 id="h-incidents" { "Incidents" }
                (super::incidents::short_list(&incidents))
            }
        }
        section aria-labelledby="h-instances" {
            h2 id="h-instances" { "Instances" }
            div class="table-wrap" {
                table class="responsive" {
                    thead { tr {
                        th scope="col" { "Instance" } th scope="col" { "Release" } th scope="col" { "State" }
                        th scope="col" { "Restarts" } th scope="col" { "Uptime" } th scope="col" { "CPU" }
                        th scope="col" { "Memory" } th scope="col" { "Last exit" }
                    } }
                    tbody id="instances" data-refresh=(format!("/ui/services/{n}/instances")) data-every="2000" {
                        (instance_rows(&instances, &usage))
                    }
                }
            }
        }
        section aria-labelledby="h-metrics" {
            div class="section-head" {
                h2 id="h-metrics" { "Metrics" }
                nav class="windows" aria-label="Chart window" {
                    @for (w, _) in WINDOWS {
                        a href=(format!("/ui/services/{n}?window={w}#h-metrics")) aria-current=[(w == window_name).then_some("true")] { (w) }
                    }
                }
            }
            div class="charts" {
                (chart::chart("Requests by status", Unit::PerSecond, &series_lines(&charts.requests), t0, t1))
                (chart::chart("Error ratio (5xx)", Unit::Ratio, &[Line { name: "5xx".into(), points: &charts.errors }], t0, t1))
                (chart::chart("Latency", Unit::Seconds, &charts.latency.iter().map(|(k, p)| Line { name: k.clone(), points: p }).collect::<Vec<_>>(), t0, t1))
                (chart::chart("CPU", Unit::Cores, &series_lines(&charts.cpu), t0, t1))
                (chart::chart("Memory", Unit::Bytes, &series_lines(&charts.memory), t0, t1))
            }
        }
        section aria-labelledby="h-logs" class="logs" data-service=(n) {
            h2 id="h-logs" { "Logs" }
            form class="filters" id="log-filters" {
                div {
                    label for="log-level" { "Level" }
                    select id="log-level" name="level" {
                        option value="" { "any" }
                        @for l in ["debug", "info", "warn", "error"] { option value=(l) { (l) "+" } }
                    }
                }
                div {
                    label for="log-stream" { "Stream" }
                    select id="log-stream" name="stream" {
                        option value="" { "all" }
                        @for s in ["stdout", "stderr", "platform"] { option value=(s) { (s) } }
                    }
                }
                div class="grow" {
                    label for="log-grep" { "Grep (regular expression)" }
                    input id="log-grep" name="grep" type="search" spellcheck="false" placeholder="e.g. status\":5|timeout";
                }
                button type="submit" { "Apply" }
                button type="button" id="log-pause" aria-pressed="false" { "Pause" }
            }
            p class="muted" id="log-state" role="status" { "Connecting…" }
            ol id="log-lines" class="log-lines" aria-label="Log lines, newest last" tabindex="0" {}
            noscript { p { "Live logs need JavaScript; " code { "tend logs " (n) " -f" } " shows them in a terminal." } }
        }
        section aria-labelledby="h-releases" {
            h2 id="h-releases" { "Releases" }
            div class="table-wrap" {
                table class="responsive" {
                    thead { tr {
                        th scope="col" { "Release" } th scope="col" { "Created" } th scope="col" { "By" }
                        th scope="col" { "Status" } th scope="col" { "Description" } th scope="col" { span class="sr-only" { "Actions" } }
                    } }
                    tbody {
                        @for (r, state) in &d.releases {
                            @let current = d.row.release == Some(r.version);
                            tr {
                                th scope="row" data-label="Release" { "v" (r.version) @if current { " " span class="badge healthy" { "current" } } }
                                td data-label="Created" { time datetime=(r.created_at.to_string()) { (r.created_at.to_string()) } }
                                td data-label="By" { (r.created_by.as_deref().unwrap_or("–")) }
                                td data-label="Status" { (state.as_deref().unwrap_or("–")) }
                                td data-label="Description" class="muted" { (r.description) }
                                td {
                                    @if owner_acts && !current && d.row.release.is_some() {
                                        form method="post" action=(format!("/ui/services/{n}/rollback")) class="rollback-form" {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            input type="hidden" name="to" value=(r.version);
                                            button type="submit" class="rollback" { "Roll back to v" (r.version) }
                                        }
                                    }
                                }
                            }
                        }
                        @if d.releases.is_empty() { tr { td colspan="6" class="empty" { "No release yet." } } }
                    }
                }
            }
            @if !owner_acts {
                p class="muted" { "Only team " (d.row.owner.as_str()) " (or an admin) can roll back." }
            }
        }
        section aria-labelledby="h-events" {
            h2 id="h-events" { "Events" }
            ol class="timeline" {
                @for e in &d.events {
                    li class=(format!("ev {}", e.kind.replace('.', "-"))) {
                        time datetime=(e.time.to_string()) { (e.time.to_string()) }
                        span class="kind" { (e.kind) }
                        span { (e.message) }
                        @if let Some(a) = &e.actor { span class="muted" { " by " (a) } }
                    }
                }
                @if d.events.is_empty() { li class="empty" { "Nothing happened yet." } }
            }
        }
        section aria-labelledby="h-config" {
            h2 id="h-config" { "Config and secrets" }
            h3 { "Config vars" }
            @match &d.config_names {
                Some(names) if names.is_empty() => p class="muted" { "No config vars set." },
                Some(names) => ul class="names" { @for k in names { li { code { (k) } } } },
                None => p class="muted" { "Only team " (d.row.owner.as_str()) " sees this service's config." },
            }
            h3 { "Secrets" }
            @match &d.secret_names {
                Some(names) if names.is_empty() => p class="muted" { "No secrets set." },
                Some(names) => ul class="names" { @for k in names { li { code { (k) } } } },
                None => p class="muted" { "Only team " (d.row.owner.as_str()) " sees this service's secrets." },
            }
            p class="muted" { "Names only: values never leave the server here." }
        }
    };
    Ok(page(n, Some(&viewer), body).into_response())
}

// ------------------------------------------------------------------- logs

#[derive(Debug, Default, Deserialize)]
pub(super) struct LogParams {
    level: Option<String>,
    grep: Option<String>,
    stream: Option<String>,
}

fn log_query(service: &ServiceName, p: &LogParams) -> Result<LogQuery, String> {
    let nonempty = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(LogQuery {
        service: service.to_string(),
        min_level: nonempty(&p.level)
            .map(|l| {
                Level::parse(&l)
                    .ok_or_else(|| format!("level `{l}`: use debug, info, warn or error"))
            })
            .transpose()?,
        stream: nonempty(&p.stream)
            .map(|s| {
                s.parse::<Stream>()
                    .map_err(|_| format!("stream `{s}`: use stdout, stderr or platform"))
            })
            .transpose()?,
        grep: nonempty(&p.grep)
            .map(|g| {
                regex::Regex::new(&g)
                    .map(Grep::Regex)
                    .map_err(|e| format!("grep: not a regular expression: {e}"))
            })
            .transpose()?,
        limit: LOG_BACKLOG,
        ..LogQuery::default()
    })
}

fn sse_line(l: &LogLine) -> SseEvent {
    let data = serde_json::json!({
        "time": tend_core::Timestamp::from_system_time(l.time).to_string(),
        "instance": l.instance,
        "stream": l.stream.as_str(),
        "level": l.level.map(|l| l.as_str()),
        "message": l.message,
        "raw": l.raw,
    });
    SseEvent::default()
        .id(l.seq.to_string())
        .data(data.to_string())
}

/// `GET /ui/services/{name}/logs`: the latest lines, then new ones as they
/// come, as server-sent events. A reconnecting browser sends `Last-Event-ID`
/// and gets only what it has not seen.
pub(super) async fn logs_stream(
    State(ui): S,
    _viewer: Viewer,
    Path(name): Path<String>,
    Query(params): Query<LogParams>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let name = parse_service(&name)?;
    let n = name.clone();
    read(&ui.app, move |tx| Ok(tx.service(&n)?)).await?;
    let seen: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(256);
    let query = match log_query(&name, &params) {
        Ok(q) => q,
        Err(problem) => {
            // Said in the stream: EventSource cannot read an error status.
            let _ = tx
                .send(Ok(SseEvent::default().event("problem").data(problem)))
                .await;
            drop(tx);
            return Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response());
        }
    };
    // Subscribe before reading the store so nothing falls between the two.
    let mut live = ui.app.logs.follow(&query);
    let logs = ui.app.logs.clone();
    let q = query.clone();
    let stored = tokio::task::spawn_blocking(move || logs.query(&q))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot read the logs: {e}")))?;
    tokio::spawn(async move {
        let mut last_seq = seen;
        for l in stored {
            if last_seq.is_some_and(|s| l.seq <= s) {
                continue;
            }
            last_seq = Some(l.seq);
            if tx.send(Ok(sse_line(&l))).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(Ok(SseEvent::default().event("live").data("following")))
            .await;
        loop {
            // Ends as soon as the browser goes away, even on a quiet service.
            let item = tokio::select! {
                item = live.recv() => item,
                _ = tx.closed() => return,
            };
            let Some(item) = item else { return };
            let ev = match item {
                FollowItem::Line(l) => {
                    if last_seq.is_some_and(|s| l.seq <= s) {
                        continue;
                    }
                    last_seq = Some(l.seq);
                    sse_line(&l)
                }
                FollowItem::Lagged(n) => SseEvent::default().event("lagged").data(n.to_string()),
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

// --------------------------------------------------------------- rollback

/// `POST /ui/services/{name}/rollback`: the API's rollback — same
/// authorisation (owner team or admin), same plan, same audit entry.
pub(super) async fn rollback(
    State(ui): S,
    viewer: Viewer,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, UiError> {
    let name = parse_service(&name)?;
    let fields = form(&body_of(req).await?);
    let target = format!("service/{name}");
    if let Err(problem) = check_csrf(&viewer, &fields) {
        // Recorded like any refused change.
        let p = problem.clone();
        let _ = audited(
            &ui.app,
            &viewer.caller,
            "service.rollback",
            target,
            move |_, _| Err::<(), _>(ApiError::Forbidden(p)),
        )
        .await;
        return Err(UiError::Forbidden(problem));
    }
    let to = match fields.get("to").map(|s| s.trim().trim_start_matches('v')) {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            UiError::Api(ApiError::BadRequest(format!(
                "release `{v}` is not a number such as 3"
            )))
        })?),
    };
    let deployment =
        crate::routes::deploy::begin_rollback(&ui.app, &viewer.caller, name.clone(), to)
            .await
            .map_err(|e| match e {
                ApiError::Forbidden(m) => UiError::Forbidden(m),
                other => UiError::Api(other),
            })?;
    Ok(Redirect::to(&format!("/ui/services/{name}?started={}", deployment.id)).into_response())
}

// ------------------------------------------------------------------ teams

/// `GET /ui/teams`: every team with members, channels and services.
pub(super) async fn teams(State(ui): S, viewer: Viewer) -> Result<Response, UiError> {
    let (teams, rows, open, oncall) = read(&ui.app, |tx| {
        let teams = tx.teams()?;
        let mut oncall = HashMap::new();
        for t in &teams {
            oncall.insert(t.name.clone(), super::incidents::on_call(tx, &t.name)?);
        }
        Ok((
            teams,
            data::catalog(tx, None)?,
            super::incidents::open(tx)?,
            oncall,
        ))
    })
    .await?;
    let by_name: HashMap<&str, &ServiceRow> = rows.iter().map(|r| (r.name.as_str(), r)).collect();
    let body = html! {
        div class="title" { h1 { "Teams" } }
        div class="cards" {
            @for t in &teams {
                @let member = viewer.acts_for(&t.name);
                section class="card team" id=(format!("team-{}", t.name)) aria-labelledby=(format!("h-team-{}", t.name)) {
                    h2 id=(format!("h-team-{}", t.name)) {
                        (t.name.as_str())
                        @if viewer.caller.principal.teams.contains(&t.name) { " " span class="badge healthy" { "your team" } }
                    }
                    h3 { "Members" }
                    @if t.members.is_empty() { p class="muted" { "No member tokens." } }
                    ul class="names" { @for m in &t.members { li { (m.as_str()) } } }
                    h3 { "Services" }
                    @if t.services.is_empty() { p class="muted" { "No services." } }
                    ul class="services" {
                        @for s in &t.services {
                            li {
                                a href=(format!("/ui/services/{s}")) { (s) }
                                @if let Some(r) = by_name.get(s.as_str()) { " " (health_badge(r.health)) }
                            }
                        }
                    }
                    @if let Some(oc) = oncall.get(&t.name) {
                        h3 { "On call" }
                        @match &oc.member {
                            Some(m) => p class="oncall" {
                                strong { (m.as_str()) } " now (" (oc.source) ")"
                                @if let Some(u) = oc.until { " until " time datetime=(u.to_string()) { (u.to_string()) } }
                                @if let Some(n) = &oc.next { ", then " (n.as_str()) }
                            },
                            None => p class="muted" { "No rotation: pages go to the team's channels." },
                        }
                        h3 { "Escalation" }
                        ol class="names" {
                            @for l in &oc.escalation.levels {
                                li {
                                    "after " (l.delay_secs) "s: "
                                    (l.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "))
                                }
                            }
                        }
                        @if oc.escalation.repeat > 0 { p class="muted" { "repeated " (oc.escalation.repeat) " times" } }
                    }
                    h3 { "Open incidents" }
                    (super::incidents::short_list(&open.iter().filter(|i| i.team == t.name).cloned().collect::<Vec<_>>()))
                    h3 { "Channels" }
                    @if t.channels.is_empty() { p class="muted" { "No notification channels." } }
                    ul class="names" {
                        @for c in &t.channels {
                            li {
                                (c.name.as_str()) " (" (c.kind.as_str()) ")"
                                @if let Some(m) = &c.member { " — " (m.as_str()) "'s own" }
                                @if member { ": " code { (c.target) } }
                            }
                        }
                    }
                    p { a href=(format!("/ui?team={}", t.name)) { "Catalog of " (t.name.as_str()) } }
                }
            }
            @if teams.is_empty() { p class="muted" { "No teams yet: an admin creates them with " code { "tend teams create NAME" } "." } }
        }
    };
    Ok(page("Teams", Some(&viewer), body).into_response())
}
