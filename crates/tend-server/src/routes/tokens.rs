//! API tokens: created and revoked by admins; members see their teams' tokens.

use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use tend_api::{CreateToken, CreatedToken, ErrorBody, TokenInfo};
use tend_core::{Timestamp, TokenName};
use tend_store::NewToken;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{generate_token, hash_token, Caller};
use crate::db::{audited, read};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Include revoked tokens.
    #[serde(default)]
    all: bool,
}

/// Tokens: all for admins, those of the caller's teams (and itself) for members.
#[utoipa::path(get, path = "/tokens", tag = "tokens", params(ListParams),
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody)))]
async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let p = caller.principal.clone();
    let tokens = read(&state, move |tx| {
        let teams = (!p.admin).then(|| p.teams.clone());
        let mut list = tx.tokens(teams.as_deref(), params.all)?;
        if !p.admin && !list.iter().any(|t| t.name == p.name) {
            // A token in no team still sees itself.
            list.extend(tx.token(&p.name).ok());
        }
        Ok(list)
    })
    .await?;
    Ok(Json(tokens))
}

/// Creates a token (admin only). The secret is in the answer and nowhere else.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let expires_at = req.expires_in.as_deref().map(parse_lifetime).transpose()?;
    if !req.admin && req.teams.is_empty() {
        return Err(ApiError::BadRequest(
            "a token needs at least one team (`teams`) or the admin role (`admin: true`)".into(),
        ));
    }
    let secret = generate_token();
    let new = NewToken {
        name: req.name.clone(),
        hash: hash_token(&secret),
        admin: req.admin,
        teams: req.teams,
        created_by: Some(caller.principal.name.to_string()),
        expires_at,
    };
    let c = caller.clone();
    let info = audited(
        &state,
        &caller,
        "token.create",
        format!("token/{}", req.name),
        move |tx, note| {
            note.team = new.teams.first().cloned();
            note.detail = Some(format!(
                "admin={} teams=[{}]",
                new.admin,
                new.teams
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            c.require_admin("create tokens")?;
            Ok(tx.create_token(&new)?)
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: secret,
            info,
        }),
    ))
}

fn parse_lifetime(s: &str) -> Result<Timestamp, ApiError> {
    let d: Duration = humantime::parse_duration(s).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid `expires_in` {s:?}: {e}; use a duration such as \"30d\" or \"12h\""
        ))
    })?;
    if d.is_zero() {
        return Err(ApiError::BadRequest(
            "`expires_in` must be more than zero".into(),
        ));
    }
    Ok(Timestamp::from_system_time(SystemTime::now()).saturating_add(d))
}

/// Revokes a token (admin, or the token itself); it stops working at once.
#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "Token name")),
    responses((status = 200, body = TokenInfo), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<TokenName>,
) -> Result<Json<TokenInfo>, ApiError> {
    let c = caller.clone();
    let info = audited(
        &state,
        &caller,
        "token.revoke",
        format!("token/{name}"),
        move |tx, note| {
            if c.principal.name != name {
                c.require_admin("revoke other tokens")?;
            }
            let info = tx.revoke_token(&name)?;
            note.team = info.teams.first().cloned();
            Ok(info)
        },
    )
    .await?;
    Ok(Json(info))
}
