//! Incidents (read by anyone, acknowledged and resolved by the owning team
//! or an admin) and each team's on-call set-up: rotation, overrides and
//! escalation policy (changed by the team's members or an admin).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use tend_api::{
    AddOverride, ErrorBody, EscalationLevel, EscalationPolicy, EscalationTarget, Incident,
    IncidentDetail, OnCall, Rotation, SetEscalation, SetRotation,
};
use tend_core::incident::{latest_handoff, on_call, parse_time_zone, IncidentFilter};
use tend_core::TeamName;
use tend_store::Tx;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::db::{audited, read};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_incidents))
        .routes(routes!(show_incident))
        .routes(routes!(ack_incident))
        .routes(routes!(resolve_incident))
        .routes(routes!(show_oncall))
        .routes(routes!(set_rotation, remove_rotation))
        .routes(routes!(add_override))
        .routes(routes!(remove_override))
        .routes(routes!(set_escalation))
}

/// Query of `GET /incidents`.
#[derive(Debug, Deserialize, IntoParams)]
struct IncidentParams {
    /// Only this team's incidents.
    team: Option<TeamName>,
    /// Resolved incidents too (and, for admins without `team`, every team's).
    #[serde(default)]
    all: bool,
    /// Most incidents returned (default 100).
    limit: Option<u32>,
}

/// Incidents, newest first: open ones of the caller's teams by default;
/// `team` picks a team, `all` adds resolved ones.
#[utoipa::path(get, path = "/incidents", tag = "alerts", params(IncidentParams),
    responses((status = 200, body = Vec<Incident>), (status = 401, body = ErrorBody)))]
async fn list_incidents(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<IncidentParams>,
) -> Result<Json<Vec<Incident>>, ApiError> {
    let teams = match p.team {
        Some(t) => Some(vec![t]),
        // Admins see every team's; others their own teams' by default.
        None if caller.principal.admin => None,
        None => Some(caller.principal.teams.clone()),
    };
    let filter = IncidentFilter {
        teams,
        service: None,
        include_resolved: p.all,
        limit: p.limit.unwrap_or(100).min(1000),
    };
    Ok(Json(
        read(&state, move |tx| Ok(tx.incidents(&filter)?)).await?,
    ))
}

/// One incident with its context (what changed, errors, runbook, rollback),
/// timeline and delivery log.
#[utoipa::path(get, path = "/incidents/{id}", tag = "alerts",
    params(("id" = i64, Path, description = "Incident number")),
    responses((status = 200, body = IncidentDetail), (status = 404, body = ErrorBody)))]
async fn show_incident(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<IncidentDetail>, ApiError> {
    let detail = read(&state, move |tx| {
        Ok(IncidentDetail {
            incident: tx.incident(id)?,
            context: tx.incident_context(id)?,
            timeline: tx.incident_timeline(id)?,
            deliveries: tx.deliveries(id)?,
        })
    })
    .await?;
    Ok(Json(detail))
}

/// What a person can do to an incident.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IncidentChange {
    /// Acknowledge: escalation stops.
    Ack,
    /// Resolve by hand.
    Resolve,
}

/// Acknowledges or resolves incident `id` for `caller` (the owning team or an
/// admin), audited as `incident.ack` / `incident.resolve`. Shared by the API
/// and the dashboard.
pub(crate) async fn change_incident(
    state: &AppState,
    caller: &Caller,
    id: i64,
    change: IncidentChange,
) -> Result<Incident, ApiError> {
    let action = match change {
        IncidentChange::Ack => "incident.ack",
        IncidentChange::Resolve => "incident.resolve",
    };
    let c = caller.clone();
    let who = caller.principal.name.to_string();
    audited(
        state,
        caller,
        action,
        format!("incident/{id}"),
        move |tx, note| {
            let inc = tx.incident(id)?;
            note.team = Some(inc.team.clone());
            c.require_team(&inc.team, &format!("incident #{id}"))?;
            Ok(match change {
                IncidentChange::Ack => tx.ack_incident(id, &who)?,
                IncidentChange::Resolve => tx.resolve_incident(id, Some(&who))?,
            })
        },
    )
    .await
}

/// Acknowledges an incident: escalation stops (the owning team or an admin).
#[utoipa::path(post, path = "/incidents/{id}/ack", tag = "alerts",
    params(("id" = i64, Path, description = "Incident number")),
    responses((status = 200, body = Incident), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn ack_incident(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Incident>, ApiError> {
    change_incident(&state, &caller, id, IncidentChange::Ack)
        .await
        .map(Json)
}

/// Resolves an incident by hand (the owning team or an admin).
#[utoipa::path(post, path = "/incidents/{id}/resolve", tag = "alerts",
    params(("id" = i64, Path, description = "Incident number")),
    responses((status = 200, body = Incident), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resolve_incident(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Incident>, ApiError> {
    change_incident(&state, &caller, id, IncidentChange::Resolve)
        .await
        .map(Json)
}

fn oncall_of(tx: &Tx<'_>, team: &TeamName) -> Result<OnCall, ApiError> {
    let rotation = tx.rotation(team)?;
    let overrides = tx.overrides(team)?;
    let policy = tx.escalation_policy(team)?;
    Ok(on_call(
        team,
        rotation.as_ref(),
        &overrides,
        policy,
        tx.now(),
    ))
}

/// Who is on call for a team now, who is next, and how pages escalate.
#[utoipa::path(get, path = "/teams/{team}/oncall", tag = "alerts",
    params(("team" = String, Path, description = "Team name")),
    responses((status = 200, body = OnCall), (status = 404, body = ErrorBody)))]
async fn show_oncall(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(team): ApiPath<TeamName>,
) -> Result<Json<OnCall>, ApiError> {
    Ok(Json(read(&state, move |tx| oncall_of(tx, &team)).await?))
}

/// `HH:MM` → minutes.
fn parse_hhmm(s: &str, what: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::BadRequest(format!("{what} must look like `09:00`, got {s:?}"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `+HH:MM` / `-HH:MM` / `Z` → minutes east of UTC.
fn parse_offset(s: &str) -> Result<i32, ApiError> {
    if s == "Z" || s == "UTC" {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => {
            return Err(ApiError::BadRequest(format!(
                "utc_offset must look like `+02:00` or `-05:00`, got {s:?}"
            )))
        }
    };
    let m = parse_hhmm(rest, "utc_offset")?;
    if m > 14 * 60 {
        return Err(ApiError::BadRequest(format!(
            "utc_offset {s} is beyond ±14:00"
        )));
    }
    Ok(sign * m as i32)
}

/// Sets a team's on-call rotation: members take turns, handing off daily or
/// weekly at a local time; the first member's shift starts at the latest
/// hand-off time (weekly: on today's weekday).
#[utoipa::path(put, path = "/teams/{team}/rotation", tag = "alerts", request_body = SetRotation,
    params(("team" = String, Path, description = "Team name")),
    responses((status = 200, body = OnCall), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_rotation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(team): ApiPath<TeamName>,
    ApiJson(req): ApiJson<SetRotation>,
) -> Result<Json<OnCall>, ApiError> {
    if req.members.is_empty() {
        return Err(ApiError::BadRequest(
            "a rotation needs at least one member".into(),
        ));
    }
    let minute = parse_hhmm(
        req.handoff_time.as_deref().unwrap_or("09:00"),
        "handoff_time",
    )?;
    let offset = parse_offset(req.utc_offset.as_deref().unwrap_or("+00:00"))?;
    let time_zone = match &req.time_zone {
        Some(_) if req.utc_offset.is_some() => {
            return Err(ApiError::BadRequest(
                "give either time_zone or utc_offset, not both".into(),
            ))
        }
        Some(name) => Some(parse_time_zone(name).map_err(ApiError::BadRequest)?),
        None => None,
    };
    let c = caller.clone();
    let oc = audited(
        &state,
        &caller,
        "team.rotation.set",
        format!("team/{team}/rotation"),
        move |tx, note| {
            note.team = Some(team.clone());
            c.require_team(&team, &format!("team `{team}`"))?;
            let members = tx.team(&team)?.members;
            let strangers: Vec<String> = req
                .members
                .iter()
                .filter(|m| !members.contains(m))
                .map(|m| format!("`{m}`"))
                .collect();
            if !strangers.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "{} not a member of team `{team}` (members: {})",
                    strangers.join(", "),
                    members
                        .iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            note.detail = Some(format!(
                "{} {}",
                req.handoff.as_str(),
                req.members
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(" → ")
            ));
            let rotation = Rotation {
                members: req.members,
                handoff: req.handoff,
                anchor: latest_handoff(tx.now(), minute, offset, time_zone.as_deref()),
                utc_offset_minutes: offset,
                time_zone,
            };
            tx.set_rotation(&team, &rotation)?;
            oncall_of(tx, &team)
        },
    )
    .await?;
    Ok(Json(oc))
}

/// Removes a team's rotation.
#[utoipa::path(delete, path = "/teams/{team}/rotation", tag = "alerts",
    params(("team" = String, Path, description = "Team name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_rotation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(team): ApiPath<TeamName>,
) -> Result<StatusCode, ApiError> {
    let c = caller.clone();
    audited(
        &state,
        &caller,
        "team.rotation.remove",
        format!("team/{team}/rotation"),
        move |tx, note| {
            note.team = Some(team.clone());
            c.require_team(&team, &format!("team `{team}`"))?;
            Ok(tx.remove_rotation(&team)?)
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Puts someone on call for a while, over the rotation.
#[utoipa::path(post, path = "/teams/{team}/overrides", tag = "alerts", request_body = AddOverride,
    params(("team" = String, Path, description = "Team name")),
    responses((status = 201, body = OnCall), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_override(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(team): ApiPath<TeamName>,
    ApiJson(req): ApiJson<AddOverride>,
) -> Result<(StatusCode, Json<OnCall>), ApiError> {
    let c = caller.clone();
    let who = caller.principal.name.to_string();
    let oc = audited(
        &state,
        &caller,
        "team.override.add",
        format!("team/{team}/overrides"),
        move |tx, note| {
            note.team = Some(team.clone());
            c.require_team(&team, &format!("team `{team}`"))?;
            let starts = req.starts_at.unwrap_or(tx.now());
            if req.ends_at <= starts {
                return Err(ApiError::BadRequest(
                    "`ends_at` must be after the start".into(),
                ));
            }
            if !tx.team(&team)?.members.contains(&req.member) {
                return Err(ApiError::BadRequest(format!(
                    "`{}` is not a member of team `{team}`",
                    req.member
                )));
            }
            note.detail = Some(format!(
                "{} from {starts} until {}",
                req.member, req.ends_at
            ));
            tx.add_override(&team, &req.member, starts, req.ends_at, Some(&who))?;
            oncall_of(tx, &team)
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(oc)))
}

/// Removes an override.
#[utoipa::path(delete, path = "/teams/{team}/overrides/{id}", tag = "alerts",
    params(("team" = String, Path, description = "Team name"),
           ("id" = i64, Path, description = "Override number")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_override(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((team, id)): ApiPath<(TeamName, i64)>,
) -> Result<StatusCode, ApiError> {
    let c = caller.clone();
    audited(
        &state,
        &caller,
        "team.override.remove",
        format!("team/{team}/overrides/{id}"),
        move |tx, note| {
            note.team = Some(team.clone());
            c.require_team(&team, &format!("team `{team}`"))?;
            Ok(tx.remove_override(&team, id)?)
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets how a team's `page` incidents escalate while unacknowledged.
#[utoipa::path(put, path = "/teams/{team}/escalation", tag = "alerts", request_body = SetEscalation,
    params(("team" = String, Path, description = "Team name")),
    responses((status = 200, body = OnCall), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_escalation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(team): ApiPath<TeamName>,
    ApiJson(req): ApiJson<SetEscalation>,
) -> Result<Json<OnCall>, ApiError> {
    if req.levels.is_empty() {
        return Err(ApiError::BadRequest(
            "an escalation policy needs at least one level".into(),
        ));
    }
    if req.repeat > 10 {
        return Err(ApiError::BadRequest("`repeat` is at most 10".into()));
    }
    let mut levels = Vec::new();
    for (i, l) in req.levels.iter().enumerate() {
        let delay: Duration = humantime::parse_duration(&l.after).map_err(|e| {
            ApiError::BadRequest(format!("level {}: `after` {:?}: {e}", i + 1, l.after))
        })?;
        if l.notify.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "level {}: `notify` is empty",
                i + 1
            )));
        }
        let targets = l
            .notify
            .iter()
            .map(|t| EscalationTarget::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::BadRequest(format!("level {}: {e}", i + 1)))?;
        levels.push(EscalationLevel {
            delay_secs: delay.as_secs(),
            targets,
        });
    }
    let policy = EscalationPolicy {
        levels,
        repeat: req.repeat,
    };
    let c = caller.clone();
    let oc = audited(
        &state,
        &caller,
        "team.escalation.set",
        format!("team/{team}/escalation"),
        move |tx, note| {
            note.team = Some(team.clone());
            c.require_team(&team, &format!("team `{team}`"))?;
            let channels = tx.team(&team)?.channels;
            for l in &policy.levels {
                for t in &l.targets {
                    match t {
                        EscalationTarget::Channel { name } if !channels.iter().any(|c| &c.name == name) => {
                            return Err(ApiError::BadRequest(format!(
                                "team `{team}` has no channel `{name}`; add it first with `tend teams channels add`"
                            )))
                        }
                        EscalationTarget::OtherTeam { name } if !tx.team_exists(name)? => {
                            return Err(ApiError::BadRequest(format!("no team `{name}`")))
                        }
                        _ => {}
                    }
                }
            }
            note.detail = Some(
                policy
                    .levels
                    .iter()
                    .map(|l| {
                        format!(
                            "+{}s {}",
                            l.delay_secs,
                            l.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" → "),
            );
            tx.set_escalation_policy(&team, &policy)?;
            oncall_of(tx, &team)
        },
    )
    .await?;
    Ok(Json(oc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_times_of_day_parse_strictly() {
        assert_eq!(parse_offset("-05:30").unwrap(), -330);
        assert!(parse_offset("0200").is_err());
        assert!(parse_hhmm("24:00", "x").is_err());
    }
}
