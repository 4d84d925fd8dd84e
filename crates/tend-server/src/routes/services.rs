//! The service catalog: apply, list, show, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use tend_api::{
    ApplyOutcome, ApplyRequest, ApplyResponse, ErrorBody, Event, Service, ServiceSummary,
};
use tend_core::{ServiceName, TeamName};
use tend_manifest::ServiceSpec;
use tend_store::{ServiceRecord, StoreError, UpsertOutcome};
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
        .routes(routes!(list_services, apply_service))
        .routes(routes!(show_service, delete_service))
        .routes(routes!(service_events))
}

fn to_service(rec: ServiceRecord) -> Result<Service, ApiError> {
    let spec: ServiceSpec = serde_json::from_str(&rec.spec).map_err(|e| {
        ApiError::Internal(format!("stored spec of `{}` cannot be read: {e}", rec.name))
    })?;
    Ok(Service {
        runbook: spec.service.runbook.clone(),
        name: rec.name,
        owner: rec.owner,
        description: rec.description,
        generation: rec.generation,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
        spec,
        manifest: rec.manifest,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only the services of this team.
    owner: Option<TeamName>,
}

/// The catalog: every service with its owner. Readable by every token.
#[utoipa::path(get, path = "/services", tag = "services", params(ListParams),
    responses((status = 200, body = Vec<ServiceSummary>), (status = 401, body = ErrorBody)))]
async fn list_services(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<ServiceSummary>>, ApiError> {
    let list = read(&state, move |tx| {
        let mut out = Vec::new();
        for r in tx.services(params.owner.as_ref())? {
            let desired = tx.desired(&r.name)?;
            let instances = tx.instances(Some(&r.name))?;
            let spec_instances = match desired.release {
                Some(v) => serde_json::from_str::<ServiceSpec>(&tx.release(&r.name, v)?.spec)
                    .map(|s| s.run.instances)
                    .unwrap_or(0),
                None => 0,
            };
            out.push(ServiceSummary {
                release: desired.release,
                ready_instances: instances
                    .iter()
                    .filter(|i| i.instance.state == tend_core::model::InstanceState::Ready)
                    .count() as u32,
                desired_instances: if desired.stopped {
                    0
                } else {
                    desired.scale.unwrap_or(spec_instances)
                },
                name: r.name,
                owner: r.owner,
                description: r.description,
                generation: r.generation,
                updated_at: r.updated_at,
            });
        }
        Ok(out)
    })
    .await?;
    Ok(Json(list))
}

/// Registers or updates a service from its `tend.toml`. The caller must act for
/// the owner team; moving a service to another team needs both teams (or admin).
#[utoipa::path(post, path = "/services", tag = "services", request_body = ApplyRequest,
    responses((status = 200, body = ApplyResponse, description = "Updated or unchanged"),
              (status = 201, body = ApplyResponse, description = "Created"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "Invalid manifest, with diagnostics")))]
async fn apply_service(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ApplyRequest>,
) -> Result<(StatusCode, Json<ApplyResponse>), ApiError> {
    let file_name = req.file_name.as_deref().unwrap_or("tend.toml");
    let spec = match tend_manifest::parse(&req.manifest, file_name) {
        Ok(spec) => spec,
        Err(e) => {
            // Still audited: somebody tried to change something.
            let err = ApiError::InvalidManifest(Box::new(e));
            let message = err.to_string();
            let _ = audited(
                &state,
                &caller,
                "service.apply",
                "service/?".into(),
                move |_, _| {
                    Err::<(), _>(ApiError::BadRequest(format!("invalid manifest: {message}")))
                },
            )
            .await;
            return Err(err);
        }
    };
    let name = spec.name().clone();
    let owner = spec.owner().clone();
    let spec_json = serde_json::to_string(&spec)
        .map_err(|e| ApiError::Internal(format!("cannot encode spec: {e}")))?;
    let c = caller.clone();
    let (rec, outcome) = audited(&state, &caller, "service.apply", format!("service/{name}"), move |tx, note| {
        note.team = Some(owner.clone());
        let previous_owner = match tx.service(&name) {
            Ok(old) => Some(old.owner),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(prev) = &previous_owner {
            c.require_team(prev, &format!("service `{name}`"))?;
        }
        c.require_team(&owner, &format!("service `{name}` (per its manifest)"))?;
        if !tx.team_exists(&owner)? {
            return Err(ApiError::NotFound(format!(
                "owner team `{owner}` does not exist; an admin creates it with `tend teams create {owner}`"
            )));
        }
        let (rec, outcome) = tx.upsert_service(&name, &owner, &spec.service.description, &spec_json, &req.manifest)?;
        let actor = c.principal.name.as_str();
        match outcome {
            UpsertOutcome::Created => {
                tx.append_event(&name, "service.created", &format!("service registered, owned by `{owner}`"), Some(actor))?;
            }
            UpsertOutcome::Updated => {
                let msg = match previous_owner.filter(|p| p != &owner) {
                    Some(prev) => format!("spec updated to generation {}; owner changed from `{prev}` to `{owner}`", rec.generation),
                    None => format!("spec updated to generation {}", rec.generation),
                };
                tx.append_event(&name, "service.updated", &msg, Some(actor))?;
                note.detail = Some(msg);
            }
            UpsertOutcome::Unchanged => note.detail = Some("unchanged".into()),
        }
        Ok((rec, outcome))
    })
    .await?;
    let (status, outcome) = match outcome {
        UpsertOutcome::Created => (StatusCode::CREATED, ApplyOutcome::Created),
        UpsertOutcome::Updated => (StatusCode::OK, ApplyOutcome::Updated),
        UpsertOutcome::Unchanged => (StatusCode::OK, ApplyOutcome::Unchanged),
    };
    Ok((
        status,
        Json(ApplyResponse {
            outcome,
            service: to_service(rec)?,
        }),
    ))
}

/// One service with its full spec and manifest.
#[utoipa::path(get, path = "/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = Service), (status = 404, body = ErrorBody)))]
async fn show_service(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<Service>, ApiError> {
    let rec = read(&state, move |tx| Ok(tx.service(&name)?)).await?;
    Ok(Json(to_service(rec)?))
}

/// Removes a service from the catalog (its owner team or an admin).
#[utoipa::path(delete, path = "/services/{name}", tag = "services",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_service(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<StatusCode, ApiError> {
    let c = caller.clone();
    audited(
        &state,
        &caller,
        "service.delete",
        format!("service/{name}"),
        move |tx, note| {
            let rec = tx.service(&name)?;
            note.team = Some(rec.owner.clone());
            c.require_team(&rec.owner, &format!("service `{name}`"))?;
            tx.delete_service(&name)?;
            tx.append_event(
                &name,
                "service.deleted",
                "service removed from the catalog",
                Some(c.principal.name.as_str()),
            )?;
            Ok(())
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventParams {
    /// At most this many of the latest events (default 100, at most 1000).
    limit: Option<u32>,
}

/// The service's timeline: what changed and what happened, oldest first.
#[utoipa::path(get, path = "/services/{name}/events", tag = "services",
    params(("name" = String, Path, description = "Service name"), EventParams),
    responses((status = 200, body = Vec<Event>), (status = 404, body = ErrorBody)))]
async fn service_events(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let limit = params.limit.unwrap_or(100).min(1000);
    let events = read(&state, move |tx| Ok(tx.events(&name, limit)?)).await?;
    Ok(Json(events))
}
