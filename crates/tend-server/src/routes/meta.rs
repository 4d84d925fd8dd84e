//! Health and identity.

use axum::Json;
use tend_api::{Health, WhoAmI};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

/// Liveness of the server; needs no token.
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// The caller's token: its name, role and teams.
#[utoipa::path(get, path = "/whoami", tag = "meta",
    responses((status = 200, body = WhoAmI), (status = 401, body = tend_api::ErrorBody)))]
async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.principal.name,
        admin: caller.principal.admin,
        teams: caller.principal.teams,
    })
}
