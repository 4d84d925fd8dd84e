//! The audit trail: admins read all of it, members their teams' part.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use tend_api::{AuditEntry, ErrorBody};
use tend_core::TeamName;
use tend_store::AuditQuery;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::db::read;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// Only entries about this team's things.
    team: Option<TeamName>,
    /// Only entries older than this id (paging).
    before: Option<i64>,
    /// At most this many, newest first (default 100, at most 1000).
    limit: Option<u32>,
}

/// Audit entries, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Vec<AuditEntry>), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let p = &caller.principal;
    let teams = match (&params.team, p.admin) {
        (Some(t), _) => {
            caller.require_team(t, &format!("the audit trail of team `{t}`"))?;
            Some(vec![t.clone()])
        }
        (None, true) => None,
        (None, false) => Some(p.teams.clone()),
    };
    let q = AuditQuery {
        teams,
        before_id: params.before,
        limit: params.limit.unwrap_or(100).clamp(1, 1000),
    };
    Ok(Json(read(&state, move |tx| Ok(tx.audit(&q)?)).await?))
}
