//! Changes of desired state, made inside the caller's store transaction (so the
//! API can write its audit entry in the same one). After commit, the caller
//! wakes the controller with [`crate::Deployer::wake`].

use tend_core::model::{Deployment, DeploymentKind, DeploymentState};
use tend_core::ServiceName;
use tend_store::{Desired, Tx};

use crate::controller::DeployError;

/// Marks every unfinished deployment of `service` as superseded.
fn supersede(tx: &mut Tx<'_>, service: &ServiceName, by: &str) -> Result<(), DeployError> {
    for d in tx.active_deployments()? {
        if d.service == service.as_str() {
            tx.advance_deployment(d.id, DeploymentState::Superseded, None, None, by)?;
        }
    }
    Ok(())
}

/// Starts a deployment that builds an upload; the build runs after commit
/// ([`crate::Deployer::spawn_build`]).
pub fn begin_build(
    tx: &mut Tx<'_>,
    service: &ServiceName,
    actor: &str,
) -> Result<Deployment, DeployError> {
    let desired = tx.desired(service)?;
    supersede(tx, service, "superseded by a new deploy")?;
    let d = tx.create_deployment(
        service,
        DeploymentKind::Deploy,
        None,
        desired.release,
        DeploymentState::Building,
        Some(actor),
    )?;
    tx.append_event(
        service,
        "deploy.started",
        &format!("deployment #{} started: building", d.id),
        Some(actor),
    )?;
    Ok(d)
}

/// Starts rolling out an existing release.
pub fn begin_release(
    tx: &mut Tx<'_>,
    service: &ServiceName,
    version: u32,
    kind: DeploymentKind,
    actor: &str,
) -> Result<Deployment, DeployError> {
    tx.release(service, version)?;
    let desired = tx.desired(service)?;
    supersede(tx, service, "superseded by a new deployment")?;
    tx.set_desired(
        service,
        &Desired {
            release: Some(version),
            stopped: false,
            ..desired
        },
    )?;
    let d = tx.create_deployment(
        service,
        kind,
        Some(version),
        desired.release,
        DeploymentState::RollingOut,
        Some(actor),
    )?;
    let what = match kind {
        DeploymentKind::Deploy => format!("deploy of v{version}"),
        DeploymentKind::Rollback => format!(
            "rollback to v{version}{}",
            desired
                .release
                .map(|p| format!(" from v{p}"))
                .unwrap_or_default()
        ),
        DeploymentKind::Restart => format!("rolling restart of v{version}"),
    };
    let kind_name = match kind {
        DeploymentKind::Deploy => "deploy.started",
        DeploymentKind::Rollback => "rollback.started",
        DeploymentKind::Restart => "restart.started",
    };
    tx.append_event(
        service,
        kind_name,
        &format!("deployment #{}: {what}", d.id),
        Some(actor),
    )?;
    Ok(d)
}

/// Rolls back to `to`, or to the release before the current one.
pub fn begin_rollback(
    tx: &mut Tx<'_>,
    service: &ServiceName,
    to: Option<u32>,
    actor: &str,
) -> Result<Deployment, DeployError> {
    let current = tx.desired(service)?.release;
    let target = match to {
        Some(v) => v,
        None => {
            let cur = current.ok_or_else(|| DeployError::NothingToRollBack(service.to_string()))?;
            tx.releases(service)?
                .into_iter()
                .map(|r| r.version)
                .find(|v| *v < cur)
                .ok_or_else(|| DeployError::NothingToRollBack(service.to_string()))?
        }
    };
    if Some(target) == current {
        return Err(DeployError::Invalid(format!(
            "{service} already runs v{target}"
        )));
    }
    begin_release(tx, service, target, DeploymentKind::Rollback, actor)
}

/// Replaces every instance of the current release, batch by batch.
pub fn begin_restart(
    tx: &mut Tx<'_>,
    service: &ServiceName,
    actor: &str,
) -> Result<Deployment, DeployError> {
    let current = tx
        .desired(service)?
        .release
        .ok_or_else(|| DeployError::NoRelease(service.to_string()))?;
    begin_release(tx, service, current, DeploymentKind::Restart, actor)
}

/// Sets the number of instances.
pub fn scale(
    tx: &mut Tx<'_>,
    service: &ServiceName,
    instances: u32,
    actor: &str,
) -> Result<(), DeployError> {
    if instances > tend_manifest::MAX_INSTANCES {
        return Err(DeployError::Invalid(format!(
            "at most {} instances per service",
            tend_manifest::MAX_INSTANCES
        )));
    }
    let d = tx.desired(service)?;
    tx.set_desired(
        service,
        &Desired {
            scale: Some(instances),
            ..d
        },
    )?;
    tx.append_event(
        service,
        "scale",
        &format!("scaled to {instances} instance(s)"),
        Some(actor),
    )?;
    Ok(())
}

/// Stops every instance (`stopped`) or lets the service run again.
pub fn set_stopped(
    tx: &mut Tx<'_>,
    service: &ServiceName,
    stopped: bool,
    actor: &str,
) -> Result<(), DeployError> {
    let d = tx.desired(service)?;
    if stopped {
        supersede(tx, service, "superseded by `tend stop`")?;
    }
    tx.set_desired(service, &Desired { stopped, ..d })?;
    let (kind, msg) = if stopped {
        ("stop", "stopped: every instance is drained and stopped")
    } else {
        ("start", "started again")
    };
    tx.append_event(service, kind, msg, Some(actor))?;
    Ok(())
}

/// Changes a service's config vars: `set` adds or replaces, `unset` removes.
/// Unless `deploy` is false, the change becomes a new release (same files and
/// spec, new config) rolled out like any deploy — so a bad value is rolled
/// back by itself. Returns the new config version and the deployment, if any.
pub fn change_config(
    tx: &mut Tx<'_>,
    service: &ServiceName,
    set: &std::collections::BTreeMap<String, String>,
    unset: &[String],
    deploy: bool,
    actor: &str,
) -> Result<(u32, Option<Deployment>), DeployError> {
    for key in set.keys().chain(unset) {
        check_var_name(key)?;
    }
    let mut vars = tx.config(service)?.vars;
    for k in unset {
        if vars.remove(k).is_none() {
            return Err(DeployError::Invalid(format!(
                "`{k}` is not set for {service}"
            )));
        }
    }
    vars.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    let desired = tx.desired(service)?;
    // Refuse what could never run: references that loop.
    let base_env = match desired.release {
        Some(v) => {
            serde_json::from_str::<tend_manifest::ServiceSpec>(&tx.release(service, v)?.spec)
                .map(|s| s.env)
                .unwrap_or_default()
        }
        None => Default::default(),
    };
    tend_core::env::resolve(&base_env, &vars).map_err(|e| DeployError::Invalid(e.to_string()))?;
    let version = tx.set_config(service, &vars, Some(actor))?;
    let mut what = Vec::new();
    if !set.is_empty() {
        what.push(format!(
            "set {}",
            set.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !unset.is_empty() {
        what.push(format!("unset {}", unset.join(", ")));
    }
    // Names only: values may be sensitive and events are readable by everyone.
    let summary = format!("config v{version}: {}", what.join("; "));
    tx.append_event(service, "config.changed", &summary, Some(actor))?;
    let deployment = match (deploy, desired.release) {
        (true, Some(current)) => {
            let release = tx.create_config_release(service, current, &summary, Some(actor))?;
            Some(begin_release(
                tx,
                service,
                release.version,
                DeploymentKind::Deploy,
                actor,
            )?)
        }
        _ => None,
    };
    Ok((version, deployment))
}

/// Config var names follow the manifest's `[env]` rules.
fn check_var_name(key: &str) -> Result<(), DeployError> {
    let mut chars = key.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(DeployError::Invalid(format!(
            "`{key}` is not a valid variable name: use letters, digits and `_`, not starting with a digit"
        )));
    }
    if key == "PORT" || key.starts_with("TEND_") {
        return Err(DeployError::Invalid(format!(
            "`{key}` is set by the platform and cannot be configured"
        )));
    }
    Ok(())
}
