//! Config vars: read and changed by the owner team (or an admin). Every change
//! is a new release, rolled out and rolled back like a deploy.

use axum::extract::State;
use axum::Json;
use tend_api::{ConfigChange, ConfigChanged, ConfigView, ErrorBody};
use tend_core::ServiceName;
use tend_deploy::plan;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::db::read;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show_config, change_config))
}

/// The service's config vars with their values (owner team and admins).
#[utoipa::path(get, path = "/services/{name}/config", tag = "config",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ConfigView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_config(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<ConfigView>, ApiError> {
    let view = read(&state, move |tx| {
        let owner = tx.service(&name)?.owner;
        caller.require_team(&owner, &format!("the config of service `{name}`"))?;
        let c = tx.config(&name)?;
        Ok(ConfigView {
            version: c.version,
            vars: c.vars,
            updated_at: c.updated_at,
            updated_by: c.updated_by,
        })
    })
    .await?;
    Ok(Json(view))
}

/// Sets and unsets config vars; unless `deploy` is false, rolls the change out
/// as a new release (rolled back by itself if the new config breaks the service).
#[utoipa::path(post, path = "/services/{name}/config", tag = "config", request_body = ConfigChange,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ConfigChanged), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn change_config(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
    ApiJson(req): ApiJson<ConfigChange>,
) -> Result<Json<ConfigChanged>, ApiError> {
    if req.set.is_empty() && req.unset.is_empty() {
        return Err(ApiError::BadRequest(
            "nothing to change: give `set` or `unset`".into(),
        ));
    }
    let (version, deployment) = super::deploy::change(
        &state,
        &caller,
        "service.config",
        name,
        move |tx, c, name| {
            Ok(plan::change_config(
                tx,
                name,
                &req.set,
                &req.unset,
                req.deploy,
                c.principal.name.as_str(),
            )?)
        },
    )
    .await?;
    Ok(Json(ConfigChanged {
        version,
        deployment,
    }))
}
