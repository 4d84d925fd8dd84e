//! Teams (admin-managed) and their notification channels (team-managed).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tend_api::{AddChannel, CreateTeam, ErrorBody, Team};
use tend_core::model::Channel;
use tend_core::{TeamName, TokenName};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::db::{audited, read};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_teams, create_team))
        .routes(routes!(show_team, delete_team))
        .routes(routes!(add_channel))
        .routes(routes!(remove_channel))
}

/// Channel targets can carry credentials (Slack and PagerDuty keys): only the
/// team's members and admins see them.
fn redact_for(caller: &Caller, mut team: Team) -> Team {
    if !caller.principal.acts_for(&team.name) {
        for c in &mut team.channels {
            c.target = "(hidden: only the team's members see channel targets)".into();
        }
    }
    team
}

/// Every team with members, channels and services.
#[utoipa::path(get, path = "/teams", tag = "teams",
    responses((status = 200, body = Vec<Team>), (status = 401, body = ErrorBody)))]
async fn list_teams(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Team>>, ApiError> {
    let teams = read(&state, |tx| Ok(tx.teams()?)).await?;
    Ok(Json(
        teams.into_iter().map(|t| redact_for(&caller, t)).collect(),
    ))
}

/// Creates a team (admin only).
#[utoipa::path(post, path = "/teams", tag = "teams", request_body = CreateTeam,
    responses((status = 201, body = Team), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_team(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTeam>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    let c = caller.clone();
    let team = audited(
        &state,
        &caller,
        "team.create",
        format!("team/{}", req.name),
        move |tx, note| {
            note.team = Some(req.name.clone());
            c.require_admin("create teams")?;
            Ok(tx.create_team(&req.name)?)
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(team)))
}

/// One team.
#[utoipa::path(get, path = "/teams/{team}", tag = "teams",
    params(("team" = String, Path, description = "Team name")),
    responses((status = 200, body = Team), (status = 404, body = ErrorBody)))]
async fn show_team(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<TeamName>,
) -> Result<Json<Team>, ApiError> {
    let team = read(&state, move |tx| Ok(tx.team(&name)?)).await?;
    Ok(Json(redact_for(&caller, team)))
}

/// Deletes a team (admin only); refused while it owns services.
#[utoipa::path(delete, path = "/teams/{team}", tag = "teams",
    params(("team" = String, Path, description = "Team name")),
    responses((status = 204), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_team(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<TeamName>,
) -> Result<StatusCode, ApiError> {
    let c = caller.clone();
    audited(
        &state,
        &caller,
        "team.delete",
        format!("team/{name}"),
        move |tx, note| {
            note.team = Some(name.clone());
            c.require_admin("delete teams")?;
            Ok(tx.delete_team(&name)?)
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a notification channel to a team (its members or an admin).
#[utoipa::path(post, path = "/teams/{team}/channels", tag = "teams", request_body = AddChannel,
    params(("team" = String, Path, description = "Team name")),
    responses((status = 201, body = Team), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_channel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(team): ApiPath<TeamName>,
    ApiJson(req): ApiJson<AddChannel>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    if req.target.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "channel `target` must not be empty".into(),
        ));
    }
    let c = caller.clone();
    let target = format!("team/{team}/channel/{}", req.name);
    let out = audited(
        &state,
        &caller,
        "team.channel.add",
        target,
        move |tx, note| {
            note.team = Some(team.clone());
            c.require_team(&team, &format!("team `{team}`"))?;
            if let Some(m) = &req.member {
                let members = tx.team(&team)?.members;
                if !members.contains(m) {
                    return Err(ApiError::BadRequest(format!(
                        "`{m}` is not a member of team `{team}` (members: {})",
                        members
                            .iter()
                            .map(|m| m.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            tx.add_channel(
                &team,
                &Channel {
                    name: req.name,
                    kind: req.kind,
                    target: req.target,
                    member: req.member,
                },
            )?;
            Ok(tx.team(&team)?)
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// Removes a team's notification channel (its members or an admin).
#[utoipa::path(delete, path = "/teams/{team}/channels/{channel}", tag = "teams",
    params(("team" = String, Path, description = "Team name"),
           ("channel" = String, Path, description = "Channel name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_channel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((team, channel)): ApiPath<(TeamName, TokenName)>,
) -> Result<StatusCode, ApiError> {
    let c = caller.clone();
    let target = format!("team/{team}/channel/{channel}");
    audited(
        &state,
        &caller,
        "team.channel.remove",
        target,
        move |tx, note| {
            note.team = Some(team.clone());
            c.require_team(&team, &format!("team `{team}`"))?;
            Ok(tx.remove_channel(&team, &channel)?)
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
