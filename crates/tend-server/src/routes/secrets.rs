//! Secrets: set and unset by the owner team (or an admin), listed without
//! values, never read back. Every change is a new release, rolled out and
//! rolled back like a deploy. Values are sealed inside the store transaction
//! that records them, so a master key rotation sees every data key.

use axum::extract::State;
use axum::Json;
use tend_api::{ErrorBody, KeyRotated, SecretInfo, SecretsChange, SecretsChanged, SecretsView};
use tend_core::model::{DeploymentKind, NewAuditEntry, Outcome};
use tend_core::ServiceName;
use tend_deploy::plan;
use tend_secrets::{SecretError, SecretRef};
use tend_store::Tx;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::db::{audited, read};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::AppState;

/// Largest secret value accepted (an environment variable, not a file store).
const MAX_VALUE_BYTES: usize = 64 * 1024;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show_secrets, change_secrets))
        .routes(routes!(rotate_key))
}

fn secret_error(e: SecretError) -> ApiError {
    match e {
        SecretError::NoKey(_) => ApiError::Unavailable(e.to_string()),
        SecretError::RotationInProgress => ApiError::Conflict(e.to_string()),
        other => {
            tracing::error!(error = %other, "secrets failure");
            ApiError::Internal(other.to_string())
        }
    }
}

/// Names follow the manifest's `[env]` rules; the platform's own are refused.
fn check_name(key: &str) -> Result<(), ApiError> {
    let mut chars = key.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= 256;
    if !valid {
        return Err(ApiError::BadRequest(format!(
            "`{key}` is not a valid secret name: use letters, digits and `_`, not starting with a digit"
        )));
    }
    if key == "PORT" || key.starts_with("TEND_") {
        return Err(ApiError::BadRequest(format!(
            "`{key}` is set by the platform and cannot be a secret"
        )));
    }
    Ok(())
}

/// The `[secrets] required` names of the service's current spec.
fn required(tx: &Tx<'_>, name: &ServiceName) -> Result<Vec<String>, ApiError> {
    let spec = tx.service(name)?.spec;
    Ok(serde_json::from_str::<tend_manifest::ServiceSpec>(&spec)
        .map(|s| s.secrets.required)
        .unwrap_or_default())
}

/// Refuses a deploy of `spec` while secrets it requires are not set; called
/// before the build starts.
pub(crate) fn check_required(
    tx: &Tx<'_>,
    name: &ServiceName,
    spec: &tend_manifest::ServiceSpec,
) -> Result<(), ApiError> {
    if spec.secrets.required.is_empty() {
        return Ok(());
    }
    let set = tx.current_secret_versions(name)?;
    let missing: Vec<&str> = spec
        .secrets
        .required
        .iter()
        .filter(|k| !set.contains_key(*k))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "{name} requires secrets that are not set: {}; set them with `tend secrets set {name} {}=...` \
         (a new service is registered first with `tend apply`), then deploy again",
        missing.join(", "),
        missing[0]
    )))
}

/// The service's secrets: names, versions, who set them and when; never values.
#[utoipa::path(get, path = "/services/{name}/secrets", tag = "secrets",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = SecretsView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_secrets(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
) -> Result<Json<SecretsView>, ApiError> {
    let c = caller.clone();
    let n = name.clone();
    let result = read(&state, move |tx| {
        let owner = tx.service(&n)?.owner;
        c.require_team(&owner, &format!("the secrets of service `{n}`"))?;
        let set = tx.secrets(&n)?;
        Ok(SecretsView {
            version: set.version,
            secrets: set
                .secrets
                .into_iter()
                .map(|s| SecretInfo {
                    name: s.name,
                    version: s.version,
                    set_by: s.set_by,
                    set_at: s.set_at,
                })
                .collect(),
            updated_at: set.updated_at,
            updated_by: set.updated_by,
        })
    })
    .await;
    if let Err(e) = &result {
        if e.is_denial() {
            // Looking at another team's secrets is worth a trace even when refused.
            let store = state.store.clone();
            let entry = NewAuditEntry {
                actor: Some(caller.principal.name.to_string()),
                action: "service.secrets.list".into(),
                target: format!("service/{name}"),
                team: None,
                outcome: Outcome::Denied,
                client: caller.client.clone(),
                detail: Some(e.to_string()),
            };
            let _ = tokio::task::spawn_blocking(move || store.write(|tx| tx.append_audit(&entry)))
                .await;
        }
    }
    Ok(Json(result?))
}

/// Sets and unsets secrets; unless `deploy` is false, rolls the change out as a
/// new release (rolled back by itself if it breaks the service). Answers with
/// versions only: a value is never sent back.
#[utoipa::path(post, path = "/services/{name}/secrets", tag = "secrets", request_body = SecretsChange,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, body = SecretsChanged), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn change_secrets(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<ServiceName>,
    ApiJson(req): ApiJson<SecretsChange>,
) -> Result<Json<SecretsChanged>, ApiError> {
    if req.set.is_empty() && req.unset.is_empty() {
        return Err(ApiError::BadRequest(
            "nothing to change: give `set` or `unset`".into(),
        ));
    }
    for (k, v) in &req.set {
        check_name(k)?;
        if v.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "the value of `{k}` contains a NUL byte, which an environment variable cannot hold"
            )));
        }
        if v.len() > MAX_VALUE_BYTES {
            return Err(ApiError::BadRequest(format!(
                "the value of `{k}` is {} bytes; at most {MAX_VALUE_BYTES} are accepted",
                v.len()
            )));
        }
    }
    for k in &req.unset {
        check_name(k)?;
        if req.set.contains_key(k) {
            return Err(ApiError::BadRequest(format!("`{k}` is both set and unset")));
        }
    }
    let vault = state.secrets.clone();
    let c = caller.clone();
    let n = name.clone();
    let changed = audited(
        &state,
        &caller,
        "service.secrets",
        format!("service/{name}"),
        move |tx, note| {
            let owner = tx.service(&n)?.owner;
            note.team = Some(owner.clone());
            c.require_team(&owner, &format!("the secrets of service `{n}`"))?;
            let actor = c.principal.name.as_str();
            // Names only, in the audit trail and the timeline.
            let mut what = Vec::new();
            if !req.set.is_empty() {
                what.push(format!("set {}", req.set.keys().cloned().collect::<Vec<_>>().join(", ")));
            }
            if !req.unset.is_empty() {
                what.push(format!("unset {}", req.unset.join(", ")));
            }
            note.detail = Some(what.join("; "));
            let ring = vault.keyring().map_err(secret_error)?;
            let mut entries = tx.current_secret_versions(&n)?;
            let required = required(tx, &n)?;
            for k in &req.unset {
                if entries.remove(k).is_none() {
                    return Err(ApiError::BadRequest(format!("secret `{k}` is not set for {n}")));
                }
                if required.contains(k) {
                    return Err(ApiError::BadRequest(format!(
                        "`{k}` is required by {n}'s tend.toml ([secrets] required); remove it there first"
                    )));
                }
            }
            for (k, v) in &req.set {
                let version = tx.next_secret_version(&n, k)?;
                let at = SecretRef {
                    service: n.as_str(),
                    name: k,
                    version,
                };
                let sealed = tend_secrets::seal(&ring, &at, v).map_err(secret_error)?;
                tx.insert_secret(&n, k, version, &sealed, Some(actor))?;
                entries.insert(k.clone(), version);
            }
            let version = tx.set_secret_entries(&n, &entries, Some(actor))?;
            let summary = format!("secrets v{version}: {}", what.join("; "));
            tx.append_event(&n, "secrets.changed", &summary, Some(actor))?;
            let deployment = match (req.deploy, tx.desired(&n)?.release) {
                (true, Some(current)) => {
                    let release = tx.create_config_release(&n, current, &summary, Some(actor))?;
                    Some(plan::begin_release(
                        tx,
                        &n,
                        release.version,
                        DeploymentKind::Deploy,
                        actor,
                    )?)
                }
                _ => None,
            };
            Ok(SecretsChanged {
                version,
                deployment,
            })
        },
    )
    .await?;
    state.deployer.wake(&name);
    Ok(Json(changed))
}

/// Rotates the master key (admin): a new key is made, every data key is
/// re-wrapped under it in one transaction, then the old key is dropped.
/// Ciphertexts do not change, so every release keeps working; instances keep
/// running.
#[utoipa::path(post, path = "/secrets/rotate-key", tag = "secrets",
    responses((status = 200, body = KeyRotated), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<KeyRotated>, ApiError> {
    let vault = state.secrets.clone();
    let c = caller.clone();
    let (rotation, count) = audited(
        &state,
        &caller,
        "secrets.rotate_key",
        "master-key".to_string(),
        move |tx, note| {
            c.require_admin("rotate the master key")?;
            // The key file holds the new key (and the old one) before any data
            // key is re-wrapped: a crash at any point leaves everything readable.
            let rotation = vault.rotate().map_err(secret_error)?;
            let mut count = 0u32;
            for key in tx.secret_data_keys()? {
                let key = rotation.rewrap(&key).map_err(secret_error)?;
                tx.rewrap_data_key(&key)?;
                count += 1;
            }
            note.detail = Some(format!(
                "new master key {}; {count} data key(s) re-wrapped",
                rotation.new_key_id
            ));
            Ok((rotation, count))
        },
    )
    .await?;
    let id = rotation.new_key_id.clone();
    // Committed: the old key can go.
    tokio::task::spawn_blocking(move || rotation.finish())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(secret_error)?;
    Ok(Json(KeyRotated {
        master_key_id: id,
        data_keys: count,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_env_rules() {
        assert!(check_name("DATABASE_URL").is_ok());
        assert!(check_name("_x1").is_ok());
        for bad in ["", "1A", "A-B", "PORT", "TEND_X", "A B"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
