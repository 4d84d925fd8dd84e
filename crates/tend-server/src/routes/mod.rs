//! The API's routes. Each handler carries its OpenAPI description, and the
//! router is built from the same list as the spec, so the two cannot drift.

pub(crate) mod alerts;
mod audit;
mod config;
pub(crate) mod deploy;
mod logs;
mod meta;
mod prom;
mod secrets;
mod services;
mod teams;
mod tokens;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::AppState;

/// The routes under `/api/v1` with their OpenAPI description.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(meta::routes())
        .merge(teams::routes())
        .merge(tokens::routes())
        .merge(services::routes())
        .merge(audit::routes())
        .merge(deploy::routes())
        .merge(logs::routes())
        .merge(config::routes())
        .merge(alerts::routes())
        .merge(secrets::routes())
}

pub(crate) fn router(state: AppState, body_limit: usize) -> Router {
    let (api, spec) = OpenApiRouter::with_openapi(crate::openapi::base())
        .nest(tend_api::API_PREFIX, api())
        .split_for_parts();
    let spec = std::sync::Arc::new(spec);
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let spec = spec.clone();
                async move { Json(spec.as_ref().clone()) }
            }),
        )
        .merge(api)
        .merge(prom::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        ApiError::NotFound(format!(
            "no such endpoint: {}; see /api/v1/openapi.json",
            uri.path()
        )),
    )
}
