//! Deployments and operations: deploy, releases, status, rollback, scale,
//! restart, stop, start. Every change is the owner team's (or an admin's).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use tend_api::{
    Deployment, DeploymentKind, ErrorBody, Release, RollbackRequest, ScaleRequest, ServiceStatus,
    WatchEvent,
};
use tend_core::model::InstanceState;
use tend_core::ServiceName;
use tend_deploy::{pack, plan};
use tend_store::{StoreError, Tx};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::db::{audited, read};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(deploy_upload))
        .layer(DefaultBodyLimit::max(pack::DEFAULT_MAX_BYTES as usize))
        .routes(routes!(deploy_release))
        .routes(routes!(list_releases))
        .routes(routes!(list_deployments))
        .routes(routes!(show_deployment))
        .routes(routes!(watch_deployment))
        .routes(routes!(status))
        .routes(routes!(rollback))
        .routes(routes!(restart))
        .routes(routes!(scale))
        .routes(routes!(stop))
        .routes(routes!(start))
}

/// Checks that the caller acts for the service's owner team; notes the team.
fn authorize(
    tx: &Tx<'_>,
    caller: &Caller,
    name: &ServiceName,
    note: &mut crate::db::AuditNote,
) -> Result<(), ApiError> {
    let owner = tx.service(name)?.owner;
    note.team = Some(owner.clone());
    caller.require_team(&owner, &format!("service `{name}`"))
}

/// Uploads a packed service directory, builds it into a new release and rolls
/// it out. The body is a gzipped tar holding `tend.toml` at its top; the
/// manifest is applied as by `POST /services`. Answers at once; follow the
/// deployment with `/deployments/{id}/watch`.
#[utoipa::path(post, path = "/services/{name}/deploy", tag = "deploy",
    params(("name" = String, Path, description = "Service name")),
    request_body(content = Vec<u8>, content_type = "application/gzip", description = "gzipped tar of the service directory"),
    responses((status = 202, body = Deployment), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn deploy_upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
    body: Bytes,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let archive = body.to_vec();
    let manifest = tokio::task::spawn_blocking({
        let archive = archive.clone();
        move || {
            pack::read_file(
                &archive,
                tend_manifest::MANIFEST_FILE,
                tend_manifest::MAX_MANIFEST_BYTES as u64,
            )
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::BadRequest(format!("cannot read the upload: {e}")))?
    .ok_or_else(|| ApiError::BadRequest("the upload has no tend.toml at its top".into()))?;
    let spec = tend_manifest::parse(&manifest, "tend.toml")
        .map_err(|e| ApiError::InvalidManifest(Box::new(e)))?;
    if spec.name() != &name {
        return Err(ApiError::BadRequest(format!(
            "the upload's tend.toml is for service `{}`, not `{name}`",
            spec.name()
        )));
    }
    let spec_json = serde_json::to_string(&spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let c = caller.clone();
    let s = spec.clone();
    let deployment = audited(&state, &caller, "service.deploy", format!("service/{name}"), move |tx, note| {
        let owner = s.owner().clone();
        note.team = Some(owner.clone());
        match tx.service(&name) {
            Ok(old) => c.require_team(&old.owner, &format!("service `{name}`"))?,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        c.require_team(&owner, &format!("service `{name}` (per its manifest)"))?;
        if !tx.team_exists(&owner)? {
            return Err(ApiError::NotFound(format!(
                "owner team `{owner}` does not exist; an admin creates it with `tend teams create {owner}`"
            )));
        }
        tx.upsert_service(&name, &owner, &s.service.description, &spec_json, &manifest)?;
        // Before anything is built: a release without its required secrets could not run.
        super::secrets::check_required(tx, &name, &s)?;
        let d = plan::begin_build(tx, &name, c.principal.name.as_str())?;
        note.detail = Some(format!("deployment #{}", d.id));
        Ok(d)
    })
    .await?;
    state
        .deployer
        .spawn_build(deployment.clone(), spec, archive);
    Ok((StatusCode::ACCEPTED, Json(deployment)))
}

/// Rolls out an existing release again, without building.
#[utoipa::path(post, path = "/services/{name}/releases/{version}/deploy", tag = "deploy",
    params(("name" = String, Path, description = "Service name"), ("version" = u32, Path, description = "Release number")),
    responses((status = 202, body = Deployment), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn deploy_release(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(ServiceName, u32)>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    change(
        &state,
        &caller,
        "service.deploy",
        name,
        move |tx, c, name| {
            Ok(plan::begin_release(
                tx,
                name,
                version,
                DeploymentKind::Deploy,
                c.principal.name.as_str(),
            )?)
        },
    )
    .await
    .map(|d| (StatusCode::ACCEPTED, Json(d)))
}

/// Runs an authorised change on a service, then wakes the controller.
pub(super) async fn change<T, F>(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    name: ServiceName,
    f: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Tx<'_>, &Caller, &ServiceName) -> Result<T, ApiError> + Send + 'static,
{
    let c = caller.clone();
    let n = name.clone();
    let out = audited(
        state,
        caller,
        action,
        format!("service/{name}"),
        move |tx, note| {
            authorize(tx, &c, &n, note)?;
            f(tx, &c, &n)
        },
    )
    .await?;
    state.deployer.wake(&name);
    Ok(out)
}

/// The service's releases, newest first.
#[utoipa::path(get, path = "/services/{name}/releases", tag = "deploy",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = Vec<Release>), (status = 404, body = ErrorBody)))]
async fn list_releases(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<Vec<Release>>, ApiError> {
    Ok(Json(read(&state, move |tx| Ok(tx.releases(&name)?)).await?))
}

/// The service's latest deployments, newest first.
#[utoipa::path(get, path = "/services/{name}/deployments", tag = "deploy",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = Vec<Deployment>), (status = 404, body = ErrorBody)))]
async fn list_deployments(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    Ok(Json(
        read(&state, move |tx| Ok(tx.deployments(&name, 50)?)).await?,
    ))
}

/// One deployment with its steps.
#[utoipa::path(get, path = "/deployments/{id}", tag = "deploy",
    params(("id" = i64, Path, description = "Deployment id")),
    responses((status = 200, body = Deployment), (status = 404, body = ErrorBody)))]
async fn show_deployment(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(read(&state, move |tx| Ok(tx.deployment(id)?)).await?))
}

/// Follows a deployment: its build output and steps as newline-delimited JSON
/// ([`WatchEvent`]), ending with its final record. Joining late replays
/// everything from the start.
#[utoipa::path(get, path = "/deployments/{id}/watch", tag = "deploy",
    params(("id" = i64, Path, description = "Deployment id")),
    responses((status = 200, body = WatchEvent, content_type = "application/x-ndjson"), (status = 404, body = ErrorBody)))]
async fn watch_deployment(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    // Fail fast with 404 before the stream starts.
    read(&state, move |tx| Ok(tx.deployment(id)?)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let log_path = state.deployer.build_log_path(id);
    tokio::spawn(async move {
        let mut offset: u64 = 0;
        let mut partial = String::new();
        let mut steps_sent = 0usize;
        loop {
            let (lines, new_offset) = read_new_lines(&log_path, offset, &mut partial);
            offset = new_offset;
            for line in lines {
                if !send(&tx, &WatchEvent::Log { line }).await {
                    return;
                }
            }
            let d = match read(&state, move |t| Ok(t.deployment(id)?)).await {
                Ok(d) => d,
                Err(_) => return,
            };
            for step in d.steps.iter().skip(steps_sent) {
                if !send(&tx, &WatchEvent::Step { step: step.clone() }).await {
                    return;
                }
            }
            steps_sent = d.steps.len();
            if d.state.is_terminal() {
                let (lines, _) = read_new_lines(&log_path, offset, &mut partial);
                for line in lines {
                    let _ = send(&tx, &WatchEvent::Log { line }).await;
                }
                let _ = send(&tx, &WatchEvent::End { deployment: d }).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ev: &WatchEvent,
) -> bool {
    let mut line = match serde_json::to_vec(ev) {
        Ok(l) => l,
        Err(_) => return false,
    };
    line.push(b'\n');
    tx.send(Ok(Bytes::from(line))).await.is_ok()
}

/// Complete lines appended to `path` since `offset`; keeps a partial last line.
fn read_new_lines(path: &std::path::Path, offset: u64, partial: &mut String) -> (Vec<String>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (vec![], offset);
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return (vec![], offset);
    }
    let mut buf = Vec::new();
    let Ok(n) = f.take(1024 * 1024).read_to_end(&mut buf) else {
        return (vec![], offset);
    };
    partial.push_str(&String::from_utf8_lossy(&buf));
    let mut lines = Vec::new();
    while let Some(i) = partial.find('\n') {
        lines.push(partial[..i].to_string());
        partial.replace_range(..=i, "");
    }
    (lines, offset + n as u64)
}

/// What runs, how it is doing, and where it is served.
#[utoipa::path(get, path = "/services/{name}/status", tag = "deploy",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceStatus), (status = 404, body = ErrorBody)))]
async fn status(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<ServiceStatus>, ApiError> {
    Ok(Json(service_status(&state, name).await?))
}

pub(crate) async fn service_status(
    state: &AppState,
    name: ServiceName,
) -> Result<ServiceStatus, ApiError> {
    let n = name.clone();
    let (rec, desired, deployment, spec_instances) = read(state, move |tx| {
        let rec = tx.service(&n)?;
        let desired = tx.desired(&n)?;
        let deployment = tx.deployments(&n, 1)?.into_iter().next();
        let spec_instances = match desired.release {
            Some(v) => serde_json::from_str::<tend_manifest::ServiceSpec>(&tx.release(&n, v)?.spec)
                .map(|s| s.run.instances)
                .unwrap_or(0),
            None => 0,
        };
        Ok((rec, desired, deployment, spec_instances))
    })
    .await?;
    let instances = state.deployer.instances(&name)?;
    let spec: Option<tend_manifest::ServiceSpec> = serde_json::from_str(&rec.spec).ok();
    let port = state.router_addr.port();
    let mut urls = vec![format!("http://{name}.localhost:{port}/")];
    if let Some(host) = spec.as_ref().and_then(|s| s.http.host.clone()) {
        urls.push(format!("http://{host}:{port}/"));
    }
    Ok(ServiceStatus {
        ready_instances: instances
            .iter()
            .filter(|i| i.state == InstanceState::Ready)
            .count() as u32,
        desired_instances: if desired.stopped {
            0
        } else {
            desired.scale.unwrap_or(spec_instances)
        },
        name,
        owner: rec.owner,
        release: desired.release,
        stopped: desired.stopped,
        instances,
        deployment,
        urls,
    })
}

/// Rolls back to an earlier release (the previous one by default).
#[utoipa::path(post, path = "/services/{name}/rollback", tag = "deploy", request_body = RollbackRequest,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = Deployment), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    begin_rollback(&state, &caller, name, req.to)
        .await
        .map(|d| (StatusCode::ACCEPTED, Json(d)))
}

/// Rolls `name` back to release `to` (the previous one when `None`) for
/// `caller`: the owner team or an admin, audited as `service.rollback`.
/// Shared by the API and the dashboard.
pub(crate) async fn begin_rollback(
    state: &AppState,
    caller: &Caller,
    name: ServiceName,
    to: Option<u32>,
) -> Result<Deployment, ApiError> {
    change(
        state,
        caller,
        "service.rollback",
        name,
        move |tx, c, name| {
            Ok(plan::begin_rollback(
                tx,
                name,
                to,
                c.principal.name.as_str(),
            )?)
        },
    )
    .await
}

/// Replaces every instance, batch by batch, without dropping below the allowed count.
#[utoipa::path(post, path = "/services/{name}/restart", tag = "deploy",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 202, body = Deployment), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn restart(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    change(
        &state,
        &caller,
        "service.restart",
        name,
        move |tx, c, name| Ok(plan::begin_restart(tx, name, c.principal.name.as_str())?),
    )
    .await
    .map(|d| (StatusCode::ACCEPTED, Json(d)))
}

/// Sets the number of instances.
#[utoipa::path(post, path = "/services/{name}/scale", tag = "deploy", request_body = ScaleRequest,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceStatus), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn scale(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
    ApiJson(req): ApiJson<ScaleRequest>,
) -> Result<Json<ServiceStatus>, ApiError> {
    change(
        &state,
        &caller,
        "service.scale",
        name.clone(),
        move |tx, c, name| {
            Ok(plan::scale(
                tx,
                name,
                req.instances,
                c.principal.name.as_str(),
            )?)
        },
    )
    .await?;
    Ok(Json(service_status(&state, name).await?))
}

/// Drains and stops every instance; the service stays stopped until `start`.
#[utoipa::path(post, path = "/services/{name}/stop", tag = "deploy",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceStatus), (status = 403, body = ErrorBody)))]
async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<ServiceStatus>, ApiError> {
    set_stopped(state, caller, name, true).await
}

/// Starts a stopped service again.
#[utoipa::path(post, path = "/services/{name}/start", tag = "deploy",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = ServiceStatus), (status = 403, body = ErrorBody)))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<ServiceStatus>, ApiError> {
    set_stopped(state, caller, name, false).await
}

async fn set_stopped(
    state: AppState,
    caller: Caller,
    name: ServiceName,
    stopped: bool,
) -> Result<Json<ServiceStatus>, ApiError> {
    let action = if stopped {
        "service.stop"
    } else {
        "service.start"
    };
    change(&state, &caller, action, name.clone(), move |tx, c, name| {
        Ok(plan::set_stopped(
            tx,
            name,
            stopped,
            c.principal.name.as_str(),
        )?)
    })
    .await?;
    Ok(Json(service_status(&state, name).await?))
}
