//! Services: the current spec of each, as last applied.

use rusqlite::{params, OptionalExtension, Row};
use tend_core::{ServiceName, TeamName, Timestamp};

use crate::{ts, Result, StoreError, Tx};

/// A service as stored: its owner, its current spec (JSON) and the manifest
/// text it was applied from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// The service's name.
    pub name: ServiceName,
    /// The owning team.
    pub owner: TeamName,
    /// One line for people.
    pub description: String,
    /// The validated spec, serialised as JSON by the caller.
    pub spec: String,
    /// The `tend.toml` text it was applied from.
    pub manifest: String,
    /// Incremented by every apply that changed the spec.
    pub generation: i64,
    /// First apply.
    pub created_at: Timestamp,
    /// Last apply that changed something.
    pub updated_at: Timestamp,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// The service did not exist.
    Created,
    /// The spec changed.
    Updated,
    /// The same spec was applied again.
    Unchanged,
}

const COLUMNS: &str = "s.name, t.name, s.description, s.spec, s.manifest, s.generation, \
                       s.created_at, s.updated_at";

fn record(r: &Row<'_>) -> rusqlite::Result<(String, String, ServiceRecordRest)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        ServiceRecordRest {
            description: r.get(2)?,
            spec: r.get(3)?,
            manifest: r.get(4)?,
            generation: r.get(5)?,
            created_at: r.get(6)?,
            updated_at: r.get(7)?,
        },
    ))
}

struct ServiceRecordRest {
    description: String,
    spec: String,
    manifest: String,
    generation: i64,
    created_at: i64,
    updated_at: i64,
}

fn build((name, owner, rest): (String, String, ServiceRecordRest)) -> Result<ServiceRecord> {
    Ok(ServiceRecord {
        name: ServiceName::parse(&name)
            .map_err(|e| StoreError::Corrupt(format!("service name {name:?}: {e}")))?,
        owner: TeamName::parse(&owner)
            .map_err(|e| StoreError::Corrupt(format!("team name {owner:?}: {e}")))?,
        description: rest.description,
        spec: rest.spec,
        manifest: rest.manifest,
        generation: rest.generation,
        created_at: ts(rest.created_at),
        updated_at: ts(rest.updated_at),
    })
}

impl Tx<'_> {
    /// Creates or updates a service. The owner team must exist.
    pub fn upsert_service(
        &mut self,
        name: &ServiceName,
        owner: &TeamName,
        description: &str,
        spec: &str,
        manifest: &str,
    ) -> Result<(ServiceRecord, UpsertOutcome)> {
        let team_id = self.team_id(owner)?;
        let existing = self.service_opt(name)?;
        let outcome = match &existing {
            None => {
                self.txn.execute(
                    "INSERT INTO services(name, team_id, description, spec, manifest,
                                          created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![
                        name.as_str(),
                        team_id,
                        description,
                        spec,
                        manifest,
                        self.now.as_millis()
                    ],
                )?;
                UpsertOutcome::Created
            }
            Some(old) if old.spec == spec && &old.owner == owner => {
                // Comments or layout may differ; keep the text the user last sent.
                self.txn.execute(
                    "UPDATE services SET manifest = ?1 WHERE name = ?2",
                    params![manifest, name.as_str()],
                )?;
                UpsertOutcome::Unchanged
            }
            Some(_) => {
                self.txn.execute(
                    "UPDATE services SET team_id = ?1, description = ?2, spec = ?3, manifest = ?4,
                            generation = generation + 1, updated_at = ?5
                     WHERE name = ?6",
                    params![
                        team_id,
                        description,
                        spec,
                        manifest,
                        self.now.as_millis(),
                        name.as_str()
                    ],
                )?;
                UpsertOutcome::Updated
            }
        };
        Ok((self.service(name)?, outcome))
    }

    fn service_opt(&self, name: &ServiceName) -> Result<Option<ServiceRecord>> {
        self.txn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM services s JOIN teams t ON t.id = s.team_id
                     WHERE s.name = ?1"
                ),
                [name.as_str()],
                record,
            )
            .optional()?
            .map(build)
            .transpose()
    }

    /// One service.
    pub fn service(&self, name: &ServiceName) -> Result<ServiceRecord> {
        self.service_opt(name)?.ok_or_else(|| StoreError::NotFound {
            kind: "service",
            name: name.to_string(),
        })
    }

    /// Every service, by name; with `owner`, only that team's.
    pub fn services(&self, owner: Option<&TeamName>) -> Result<Vec<ServiceRecord>> {
        let mut stmt = self.txn.prepare(&format!(
            "SELECT {COLUMNS} FROM services s JOIN teams t ON t.id = s.team_id
             WHERE ?1 IS NULL OR t.name = ?1 ORDER BY s.name"
        ))?;
        let rows = stmt
            .query_map([owner.map(|o| o.as_str())], record)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(build).collect()
    }

    /// Deletes a service with its releases, deployments and instances records.
    pub fn delete_service(&mut self, name: &ServiceName) -> Result<()> {
        let n = self
            .txn
            .execute("DELETE FROM services WHERE name = ?1", [name.as_str()])?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "service",
                name: name.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::store;

    #[test]
    fn upsert_reports_what_changed() {
        let (_d, store) = store();
        let team = TeamName::parse("payments").unwrap();
        let name = ServiceName::parse("checkout").unwrap();
        let err = store
            .write(|tx| tx.upsert_service(&name, &team, "", "{}", "x"))
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "team", .. }));
        store.write(|tx| tx.create_team(&team)).unwrap();
        let (_, o) = store
            .write(|tx| tx.upsert_service(&name, &team, "d", "{}", "x"))
            .unwrap();
        assert_eq!(o, UpsertOutcome::Created);
        let (_, o) = store
            .write(|tx| tx.upsert_service(&name, &team, "d", "{}", "# comment\nx"))
            .unwrap();
        assert_eq!(o, UpsertOutcome::Unchanged);
        let (rec, o) = store
            .write(|tx| tx.upsert_service(&name, &team, "d", "{\"a\":1}", "y"))
            .unwrap();
        assert_eq!(o, UpsertOutcome::Updated);
        assert_eq!(rec.generation, 2);
        let err = store.write(|tx| tx.delete_team(&team)).unwrap_err();
        assert!(err.to_string().contains("`checkout`"), "{err}");
        store.write(|tx| tx.delete_service(&name)).unwrap();
        assert!(store.read(|tx| tx.services(None)).unwrap().is_empty());
    }
}
