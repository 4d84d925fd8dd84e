//! Releases, deployments, instances and each service's desired runtime state.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};
use tend_core::model::{
    Deployment, DeploymentKind, DeploymentState, DeploymentStep, Instance, InstanceState, Release,
};
use tend_core::{ServiceName, Timestamp};

use crate::{opt_ts, ts, Result, StoreError, Tx};

/// What a service should be running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The release to run; `None` before the first deploy.
    pub release: Option<u32>,
    /// Instances asked for by `tend scale`; `None` means the spec's count.
    pub scale: Option<u32>,
    /// Stopped by `tend stop`: run nothing.
    pub stopped: bool,
}

/// An instance as stored, with the runtime's opaque handle.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    /// The service it belongs to.
    pub service: ServiceName,
    /// What the API shows (pid is filled by the caller from the handle).
    pub instance: Instance,
    /// The runtime handle (JSON), once the process started.
    pub handle: Option<String>,
    /// When the record was made.
    pub created_at: Timestamp,
}

fn kind_str(k: DeploymentKind) -> &'static str {
    match k {
        DeploymentKind::Deploy => "deploy",
        DeploymentKind::Rollback => "rollback",
        DeploymentKind::Restart => "restart",
    }
}

fn parse_kind(s: &str) -> Result<DeploymentKind> {
    Ok(match s {
        "deploy" => DeploymentKind::Deploy,
        "rollback" => DeploymentKind::Rollback,
        "restart" => DeploymentKind::Restart,
        _ => return Err(StoreError::Corrupt(format!("deployment kind {s:?}"))),
    })
}

fn state_str(s: DeploymentState) -> &'static str {
    match s {
        DeploymentState::Building => "building",
        DeploymentState::RollingOut => "rolling_out",
        DeploymentState::Verifying => "verifying",
        DeploymentState::Succeeded => "succeeded",
        DeploymentState::Failed => "failed",
        DeploymentState::RolledBack => "rolled_back",
        DeploymentState::Superseded => "superseded",
    }
}

fn parse_state(s: &str) -> Result<DeploymentState> {
    Ok(match s {
        "building" => DeploymentState::Building,
        "rolling_out" => DeploymentState::RollingOut,
        "verifying" => DeploymentState::Verifying,
        "succeeded" => DeploymentState::Succeeded,
        "failed" => DeploymentState::Failed,
        "rolled_back" => DeploymentState::RolledBack,
        "superseded" => DeploymentState::Superseded,
        _ => return Err(StoreError::Corrupt(format!("deployment state {s:?}"))),
    })
}

/// A release from the columns `version, artifact, description, created_at,
/// created_by, config_version, secrets_version`.
fn release_row(r: &Row<'_>) -> rusqlite::Result<Release> {
    Ok(Release {
        version: r.get(0)?,
        artifact: r.get(1)?,
        description: r.get(2)?,
        created_at: ts(r.get(3)?),
        created_by: r.get(4)?,
        config_version: r.get(5)?,
        secrets_version: r.get(6)?,
    })
}

const RELEASE_COLUMNS: &str =
    "version, artifact, description, created_at, created_by, config_version, secrets_version";

/// A release with what it runs: the spec (JSON) and the config vars.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRecord {
    /// The release.
    pub release: Release,
    /// The validated spec, as JSON.
    pub spec: String,
    /// The service's config vars at the time (they override the spec's `[env]`).
    pub config: BTreeMap<String, String>,
}

/// The config vars of a service, as last set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigVars {
    /// Incremented by every change; 0 before the first.
    pub version: u32,
    /// Names and values.
    pub vars: BTreeMap<String, String>,
    /// When they last changed.
    pub updated_at: Option<Timestamp>,
    /// Who changed them last.
    pub updated_by: Option<String>,
}

fn parse_vars(json: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("config vars: {e}")))
}

const DEPLOYMENT_COLUMNS: &str = "d.id, s.name, d.kind, d.release, d.previous, d.state, d.reason, \
                                  d.steps, d.actor, d.created_at, d.updated_at";

type DeploymentRow = (
    i64,
    String,
    String,
    Option<u32>,
    Option<u32>,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
    i64,
);

fn deployment_row(r: &Row<'_>) -> rusqlite::Result<DeploymentRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn build_deployment(row: DeploymentRow) -> Result<Deployment> {
    let steps: Vec<DeploymentStep> = serde_json::from_str(&row.7)
        .map_err(|e| StoreError::Corrupt(format!("deployment {} steps: {e}", row.0)))?;
    Ok(Deployment {
        id: row.0,
        service: row.1,
        kind: parse_kind(&row.2)?,
        release: row.3,
        previous: row.4,
        state: parse_state(&row.5)?,
        reason: row.6,
        steps,
        actor: row.8,
        created_at: ts(row.9),
        updated_at: ts(row.10),
    })
}

const INSTANCE_COLUMNS: &str = "s.name, i.id, i.release, i.port, i.state, i.handle, i.restarts, \
                                i.last_exit, i.created_at, i.started_at";

type InstanceRow = (
    String,
    String,
    u32,
    u16,
    String,
    Option<String>,
    u32,
    Option<String>,
    i64,
    Option<i64>,
);

fn instance_row(r: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn build_instance(row: InstanceRow) -> Result<InstanceRecord> {
    Ok(InstanceRecord {
        service: ServiceName::parse(&row.0)
            .map_err(|e| StoreError::Corrupt(format!("service {:?}: {e}", row.0)))?,
        instance: Instance {
            id: row.1,
            release: row.2,
            port: row.3,
            state: InstanceState::parse(&row.4)
                .ok_or_else(|| StoreError::Corrupt(format!("instance state {:?}", row.4)))?,
            pid: None,
            restarts: row.6,
            started_at: opt_ts(row.9),
            last_exit: row.7,
        },
        handle: row.5,
        created_at: ts(row.8),
    })
}

impl Tx<'_> {
    pub(crate) fn service_id(&self, name: &ServiceName) -> Result<i64> {
        self.txn
            .query_row(
                "SELECT id FROM services WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "service",
                name: name.to_string(),
            })
    }

    /// Names of every service, sorted.
    pub fn service_names(&self) -> Result<Vec<ServiceName>> {
        let mut stmt = self
            .txn
            .prepare("SELECT name FROM services ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        names
            .into_iter()
            .map(|n| {
                ServiceName::parse(&n)
                    .map_err(|e| StoreError::Corrupt(format!("service {n:?}: {e}")))
            })
            .collect()
    }

    /// Records a new release with the next version number, running the
    /// service's current config vars.
    pub fn create_release(
        &mut self,
        service: &ServiceName,
        spec: &str,
        artifact: &str,
        description: &str,
        created_by: Option<&str>,
    ) -> Result<Release> {
        let config = self.config(service)?;
        let vars =
            serde_json::to_string(&config.vars).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (secrets_version, secrets) = self.secrets_snapshot(service)?;
        let sid = self.service_id(service)?;
        let version: u32 = self.txn.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE service_id = ?1",
            [sid],
            |r| r.get(0),
        )?;
        self.txn.execute(
            "INSERT INTO releases(service_id, version, spec, artifact, description, created_at, created_by,
                                  config, config_version, secrets, secrets_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![sid, version, spec, artifact, description, self.now.as_millis(), created_by, vars, config.version,
                    secrets, secrets_version],
        )?;
        Ok(Release {
            version,
            config_version: config.version,
            secrets_version,
            artifact: artifact.to_string(),
            description: description.to_string(),
            created_at: self.now,
            created_by: created_by.map(str::to_string),
        })
    }

    /// A service's releases, newest first.
    pub fn releases(&self, service: &ServiceName) -> Result<Vec<Release>> {
        let sid = self.service_id(service)?;
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE service_id = ?1 ORDER BY version DESC"
        ))?;
        let rows = stmt
            .query_map([sid], release_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// One release with the spec and config it runs with.
    pub fn release(&self, service: &ServiceName, version: u32) -> Result<ReleaseRecord> {
        let sid = self.service_id(service)?;
        let (release, spec, config): (Release, String, String) = self
            .txn
            .query_row(
                &format!("SELECT {RELEASE_COLUMNS}, spec, config FROM releases WHERE service_id = ?1 AND version = ?2"),
                params![sid, version],
                |r| Ok((release_row(r)?, r.get(7)?, r.get(8)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "release",
                name: format!("{service} v{version}"),
            })?;
        Ok(ReleaseRecord {
            release,
            spec,
            config: parse_vars(&config)?,
        })
    }

    /// The service's config vars.
    pub fn config(&self, service: &ServiceName) -> Result<ConfigVars> {
        let sid = self.service_id(service)?;
        let row: Option<(u32, String, i64, Option<String>)> = self
            .txn
            .query_row(
                "SELECT version, vars, updated_at, updated_by FROM service_config WHERE service_id = ?1",
                [sid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        match row {
            None => Ok(ConfigVars::default()),
            Some((version, vars, at, by)) => Ok(ConfigVars {
                version,
                vars: parse_vars(&vars)?,
                updated_at: Some(ts(at)),
                updated_by: by,
            }),
        }
    }

    /// Replaces the service's config vars; returns the new version.
    pub fn set_config(
        &mut self,
        service: &ServiceName,
        vars: &BTreeMap<String, String>,
        actor: Option<&str>,
    ) -> Result<u32> {
        let sid = self.service_id(service)?;
        let version = self.config(service)?.version + 1;
        let json = serde_json::to_string(vars).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.txn.execute(
            "INSERT INTO service_config(service_id, version, vars, updated_at, updated_by)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(service_id) DO UPDATE SET version = excluded.version, vars = excluded.vars,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            params![sid, version, json, self.now.as_millis(), actor],
        )?;
        Ok(version)
    }

    /// Records a release that runs an existing release's files and spec with
    /// the service's current config vars and secrets (a config or secrets change).
    pub fn create_config_release(
        &mut self,
        service: &ServiceName,
        base: u32,
        description: &str,
        created_by: Option<&str>,
    ) -> Result<Release> {
        let base = self.release(service, base)?;
        self.create_release(
            service,
            &base.spec,
            &base.release.artifact,
            description,
            created_by,
        )
    }

    /// Content addresses of every artifact some release still refers to,
    /// keeping only the newest `keep` releases of each service.
    pub fn artifacts_to_keep(&self, keep: u32) -> Result<Vec<String>> {
        let mut stmt = self.txn.prepare(
            "SELECT DISTINCT artifact FROM releases r WHERE
               (SELECT COUNT(*) FROM releases n WHERE n.service_id = r.service_id AND n.version > r.version) < ?1
               OR r.version = (SELECT desired_release FROM services s WHERE s.id = r.service_id)
               OR r.version IN (SELECT release FROM instances i WHERE i.service_id = r.service_id)",
        )?;
        let rows = stmt
            .query_map([keep], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// What the service should run.
    pub fn desired(&self, service: &ServiceName) -> Result<Desired> {
        self.txn
            .query_row(
                "SELECT desired_release, scale, stopped FROM services WHERE name = ?1",
                [service.as_str()],
                |r| {
                    Ok(Desired {
                        release: r.get(0)?,
                        scale: r.get(1)?,
                        stopped: r.get(2)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "service",
                name: service.to_string(),
            })
    }

    /// Sets what the service should run.
    pub fn set_desired(&mut self, service: &ServiceName, d: &Desired) -> Result<()> {
        let n = self.txn.execute(
            "UPDATE services SET desired_release = ?1, scale = ?2, stopped = ?3 WHERE name = ?4",
            params![d.release, d.scale, d.stopped, service.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "service",
                name: service.to_string(),
            });
        }
        Ok(())
    }

    /// Starts recording a deployment.
    pub fn create_deployment(
        &mut self,
        service: &ServiceName,
        kind: DeploymentKind,
        release: Option<u32>,
        previous: Option<u32>,
        state: DeploymentState,
        actor: Option<&str>,
    ) -> Result<Deployment> {
        let sid = self.service_id(service)?;
        let steps = serde_json::to_string(&[DeploymentStep {
            at: self.now,
            step: state_str(state).to_string(),
            detail: String::new(),
        }])
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.txn.execute(
            "INSERT INTO deployments(service_id, kind, release, previous, state, steps, actor, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![sid, kind_str(kind), release, previous, state_str(state), steps, actor, self.now.as_millis()],
        )?;
        self.deployment(self.txn.last_insert_rowid())
    }

    /// One deployment.
    pub fn deployment(&self, id: i64) -> Result<Deployment> {
        let row = self
            .txn
            .query_row(
                &format!(
                    "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN services s ON s.id = d.service_id
                     WHERE d.id = ?1"
                ),
                [id],
                deployment_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "deployment",
                name: id.to_string(),
            })?;
        build_deployment(row)
    }

    /// A service's latest deployments, newest first.
    pub fn deployments(&self, service: &ServiceName, limit: u32) -> Result<Vec<Deployment>> {
        let sid = self.service_id(service)?;
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN services s ON s.id = d.service_id
             WHERE d.service_id = ?1 ORDER BY d.id DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![sid, limit], deployment_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(build_deployment).collect()
    }

    /// Every deployment that is not over, oldest first.
    pub fn active_deployments(&self) -> Result<Vec<Deployment>> {
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN services s ON s.id = d.service_id
             WHERE d.state IN ('building', 'rolling_out', 'verifying') ORDER BY d.id"
        ))?;
        let rows = stmt
            .query_map([], deployment_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(build_deployment).collect()
    }

    /// Moves a deployment on, appending a timestamped step.
    pub fn advance_deployment(
        &mut self,
        id: i64,
        state: DeploymentState,
        release: Option<u32>,
        reason: Option<&str>,
        detail: &str,
    ) -> Result<Deployment> {
        let mut d = self.deployment(id)?;
        d.steps.push(DeploymentStep {
            at: self.now,
            step: state_str(state).to_string(),
            detail: detail.to_string(),
        });
        let steps =
            serde_json::to_string(&d.steps).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.txn.execute(
            "UPDATE deployments SET state = ?1, release = COALESCE(?2, release),
                    reason = COALESCE(?3, reason), steps = ?4, updated_at = ?5
             WHERE id = ?6",
            params![
                state_str(state),
                release,
                reason,
                steps,
                self.now.as_millis(),
                id
            ],
        )?;
        self.deployment(id)
    }

    /// Records an instance before its process starts.
    pub fn insert_instance(
        &mut self,
        service: &ServiceName,
        id: &str,
        release: u32,
        port: u16,
        restarts: u32,
    ) -> Result<()> {
        let sid = self.service_id(service)?;
        self.txn.execute(
            "INSERT INTO instances(id, service_id, release, port, state, restarts, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?6)",
            params![id, sid, release, port, restarts, self.now.as_millis()],
        )?;
        Ok(())
    }

    /// Records a started process: its handle and start time.
    pub fn instance_started(&mut self, id: &str, handle: &str, port: u16) -> Result<()> {
        self.txn.execute(
            "UPDATE instances SET handle = ?1, port = ?2, state = 'starting', started_at = ?3, updated_at = ?3
             WHERE id = ?4",
            params![handle, port, self.now.as_millis(), id],
        )?;
        Ok(())
    }

    /// Updates an instance's state (and, when given, how it last exited).
    pub fn set_instance_state(
        &mut self,
        id: &str,
        state: InstanceState,
        last_exit: Option<&str>,
    ) -> Result<()> {
        self.txn.execute(
            "UPDATE instances SET state = ?1, last_exit = COALESCE(?2, last_exit), updated_at = ?3
             WHERE id = ?4",
            params![state.as_str(), last_exit, self.now.as_millis(), id],
        )?;
        Ok(())
    }

    /// Marks an instance crashed and counts a restart; the process is gone, its
    /// handle stays (it locates the instance's log files).
    pub fn instance_crashed(&mut self, id: &str, last_exit: &str) -> Result<()> {
        self.txn.execute(
            "UPDATE instances SET state = 'crashed', last_exit = ?1,
                    restarts = restarts + 1, updated_at = ?2
             WHERE id = ?3",
            params![last_exit, self.now.as_millis(), id],
        )?;
        Ok(())
    }

    /// Forgets an instance whose process is gone for good.
    pub fn delete_instance(&mut self, id: &str) -> Result<()> {
        self.txn
            .execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Instances, of one service or all, oldest first.
    pub fn instances(&self, service: Option<&ServiceName>) -> Result<Vec<InstanceRecord>> {
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances i JOIN services s ON s.id = i.service_id
             WHERE ?1 IS NULL OR s.name = ?1 ORDER BY i.created_at, i.id"
        ))?;
        let rows = stmt
            .query_map([service.map(|s| s.as_str())], instance_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(build_instance).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::store;
    use tend_core::TeamName;

    #[test]
    fn releases_deployments_instances() {
        let (_d, store) = store();
        let team = TeamName::parse("payments").unwrap();
        let svc = ServiceName::parse("checkout").unwrap();
        store
            .write(|tx| {
                tx.create_team(&team)?;
                tx.upsert_service(&svc, &team, "", "{}", "")?;
                let r1 = tx.create_release(&svc, "{}", "aaa", "deploy", Some("alice"))?;
                let r2 = tx.create_release(&svc, "{}", "bbb", "deploy", Some("alice"))?;
                assert_eq!((r1.version, r2.version), (1, 2));
                tx.set_desired(
                    &svc,
                    &Desired {
                        release: Some(2),
                        scale: None,
                        stopped: false,
                    },
                )?;
                let d = tx.create_deployment(
                    &svc,
                    DeploymentKind::Deploy,
                    Some(2),
                    Some(1),
                    DeploymentState::RollingOut,
                    Some("alice"),
                )?;
                let d = tx.advance_deployment(
                    d.id,
                    DeploymentState::Succeeded,
                    None,
                    None,
                    "all ready",
                )?;
                assert_eq!(d.steps.len(), 2);
                assert!(tx.active_deployments()?.is_empty());
                tx.insert_instance(&svc, "checkout-v2-a", 2, 4000, 0)?;
                tx.instance_started("checkout-v2-a", "{}", 4000)?;
                tx.instance_crashed("checkout-v2-a", "exit code 1")?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let inst = store.read(|tx| tx.instances(Some(&svc))).unwrap();
        assert_eq!(inst.len(), 1);
        assert_eq!(inst[0].instance.state, InstanceState::Crashed);
        assert_eq!(inst[0].instance.restarts, 1);
        assert_eq!(store.read(|tx| tx.releases(&svc)).unwrap()[0].version, 2);
        let keep = store.read(|tx| tx.artifacts_to_keep(1)).unwrap();
        assert_eq!(keep, vec!["bbb".to_string()]);
        // Deleting the service takes its runtime records with it.
        store.write(|tx| tx.delete_service(&svc)).unwrap();
        assert!(store.read(|tx| tx.instances(None)).unwrap().is_empty());
    }
}
