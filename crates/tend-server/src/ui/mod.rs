//! The web dashboard under `/ui`: the catalog, services, teams — server-rendered
//! HTML (maud), SVG charts drawn here, and a little plain JavaScript for what
//! updates live (logs over SSE, status fragments).
//!
//! It lives inside the server rather than in a crate of its own because it
//! is another front end of the same API layer: it authenticates with the
//! same token check, authorises with the same `Caller` rules, and changes
//! state only through the same `audited` transactions and `plan` functions as
//! the JSON routes. A separate crate would have to depend on the server
//! (which mounts it: a cycle) or make those internals public API.
//!
//! Browsers get a session cookie instead of a bearer token (see [`session`]);
//! every POST carries the session's CSRF token.

mod chart;
mod data;
mod incidents;
mod pages;
mod session;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use tend_store::TokenLookup;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// The dashboard's state: the server's, plus its sessions.
#[derive(Clone)]
pub(crate) struct Ui {
    app: AppState,
    sessions: Arc<session::Sessions>,
}

/// `app` with the dashboard under `/ui` (and `/ui/` sent there).
pub(crate) fn mount(app: Router, state: AppState) -> Router {
    app.nest("/ui", router(state))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
}

/// The dashboard's routes, to be nested under `/ui`.
fn router(app: AppState) -> Router {
    let ui = Ui {
        app,
        sessions: Arc::new(session::Sessions::default()),
    };
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/teams", get(pages::teams))
        .route("/incidents", get(incidents::list))
        .route("/incidents/{id}/ack", post(incidents::ack))
        .route("/incidents/{id}/resolve", post(incidents::resolve))
        .route("/services/{name}", get(pages::service))
        .route("/services/{name}/instances", get(pages::instances_fragment))
        .route("/services/{name}/logs", get(pages::logs_stream))
        .route("/services/{name}/rollback", post(pages::rollback))
        .route("/fragments/catalog", get(pages::catalog_fragment))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .fallback(|| async { UiError::NotFound("no such page".into()) })
        .layer(axum::middleware::from_fn(headers))
        .with_state(ui)
}

/// Security headers on every response, and the time the server spent on it
/// (`Server-Timing`, shown by browsers' dev tools and read by the tests).
async fn headers(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.1}")) {
        h.insert("server-timing", v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/app.js"),
    )
}

/// A signed-in viewer: who (as the API would see them) and their session.
#[derive(Clone)]
pub(crate) struct Viewer {
    caller: Caller,
    session_id: String,
    csrf: String,
}

impl Viewer {
    /// Whether the viewer may change things owned by `team`.
    fn acts_for(&self, team: &tend_core::TeamName) -> bool {
        self.caller.principal.acts_for(team)
    }
}

/// Why a page cannot be shown.
#[derive(Debug)]
pub(crate) enum UiError {
    /// No (live) session: log in first.
    LoginNeeded,
    /// Not allowed, or a POST without the right CSRF token.
    Forbidden(String),
    /// No such thing.
    NotFound(String),
    /// Anything the API would refuse, with its status.
    Api(ApiError),
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError::Api(e)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            UiError::LoginNeeded => return Redirect::to("/ui/login").into_response(),
            UiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            UiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            UiError::Api(e) => {
                let m = e.to_string();
                (e.into_response().status(), m)
            }
        };
        if status.is_server_error() {
            tracing::error!(%status, message, "dashboard page failed");
        }
        let body = page(
            status.canonical_reason().unwrap_or("Error"),
            None,
            html! {
                section class="card" {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p role="alert" { (message) }
                    p { a href="/ui" { "Back to the services" } }
                }
            },
        );
        (status, body).into_response()
    }
}

impl FromRequestParts<Ui> for Viewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, UiError> {
        let result = viewer(parts, ui).await;
        // A change attempted without a live session is a security event, as a
        // 401 on a mutating API request is: record it. Page views are not.
        if matches!(result, Err(UiError::LoginNeeded)) && parts.method == axum::http::Method::POST {
            // The path as the browser sent it (nesting strips `/ui`).
            let path = parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map(|u| u.0.path().to_string())
                .unwrap_or_else(|| parts.uri.path().to_string());
            let entry = tend_core::model::NewAuditEntry {
                actor: None,
                action: format!("POST {path}"),
                target: path,
                team: None,
                outcome: tend_core::model::Outcome::Denied,
                client: client_of(parts),
                detail: Some("no dashboard session (logged out or expired)".into()),
            };
            let store = ui.app.store.clone();
            let _ = tokio::task::spawn_blocking(move || {
                store.write(|tx| tx.append_audit(&entry)).map_err(
                    |e| tracing::error!(error = %e, "cannot record a refused dashboard request"),
                )
            })
            .await;
        }
        result
    }
}

fn client_of(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
}

/// The viewer of a request, from its session cookie.
async fn viewer(parts: &Parts, ui: &Ui) -> Result<Viewer, UiError> {
    let id = session::cookie(&parts.headers, session::COOKIE)
        .ok_or(UiError::LoginNeeded)?
        .to_string();
    let sess = ui.sessions.get(&id).ok_or(UiError::LoginNeeded)?;
    // The token behind the session is checked again on every request: a
    // revoked or expired token ends its sessions at once.
    let store = ui.app.store.clone();
    let hash = sess.token_hash;
    let lookup = tokio::task::spawn_blocking(move || store.write(|tx| tx.authenticate(&hash)))
        .await
        .map_err(|e| UiError::Api(ApiError::Internal(e.to_string())))?
        .map_err(|e| UiError::Api(e.into()))?;
    match lookup {
        TokenLookup::Valid(principal) => Ok(Viewer {
            caller: Caller {
                principal,
                client: client_of(parts),
            },
            session_id: id,
            csrf: sess.csrf,
        }),
        _ => {
            ui.sessions.remove(&id);
            Err(UiError::LoginNeeded)
        }
    }
}

/// The page around every view: header with navigation, then `main`.
fn page(title: &str, viewer: Option<&Viewer>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tend" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/ui" { "tend" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            a href="/ui" { "Services" }
                            a href="/ui/teams" { "Teams" }
                            a href="/ui/incidents" { "Incidents" }
                        }
                        div class="who" {
                            span {
                                (v.caller.principal.name.as_str())
                                @if v.caller.principal.admin { " (admin)" }
                            }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" class="link" { "Log out" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" { (main) }
            }
        }
    }
}

/// Parses an `application/x-www-form-urlencoded` body.
fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Fails unless the form carries the session's CSRF token.
fn check_csrf(
    viewer: &Viewer,
    fields: &std::collections::HashMap<String, String>,
) -> Result<(), String> {
    match fields.get("csrf") {
        Some(t) if session::same_secret(t, &viewer.csrf) => Ok(()),
        Some(_) => Err("the form's CSRF token is wrong: reload the page and try again".into()),
        None => Err("the form has no CSRF token: reload the page and try again".into()),
    }
}

/// The `State` of the dashboard handlers.
type S = State<Ui>;
