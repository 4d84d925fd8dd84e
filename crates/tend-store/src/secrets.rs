//! Encrypted secrets: every value ever set (ciphertext, nonce, its wrapped data
//! key), each service's current set (name → version), and the set each
//! release runs with. The store never sees a plaintext: callers seal and open
//! with `tend_secrets`.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use tend_core::{ServiceName, Timestamp};
use tend_secrets::{SealedSecret, WrappedKey};

use crate::{ts, Result, StoreError, Tx};

/// One current secret of a service, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    /// The environment variable it becomes.
    pub name: String,
    /// Version of this name's value (1 for the first value set).
    pub version: u32,
    /// Who set this value.
    pub set_by: Option<String>,
    /// When.
    pub set_at: Timestamp,
}

/// A service's current secrets, without values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSet {
    /// Incremented by every change of the set; 0 before the first.
    pub version: u32,
    /// The secrets, by name.
    pub secrets: Vec<SecretMeta>,
    /// When the set last changed.
    pub updated_at: Option<Timestamp>,
    /// Who changed it last.
    pub updated_by: Option<String>,
}

/// A stored value, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Ciphertext and wrapped data key.
    pub sealed: SealedSecret,
}

/// A set as stored: version, name → version, (changed at, changed by).
type Entries = (u32, BTreeMap<String, u32>, Option<(i64, Option<String>)>);

fn parse_entries(json: &str) -> Result<BTreeMap<String, u32>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("secret entries: {e}")))
}

fn to_json(entries: &BTreeMap<String, u32>) -> Result<String> {
    serde_json::to_string(entries).map_err(|e| StoreError::Corrupt(e.to_string()))
}

const VALUE_COLUMNS: &str = "v.name, v.version, v.nonce, v.ciphertext, \
                             k.id, k.master_key_id, k.nonce, k.wrapped";

fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSecret> {
    Ok(StoredSecret {
        name: r.get(0)?,
        version: r.get(1)?,
        sealed: SealedSecret {
            nonce: r.get(2)?,
            ciphertext: r.get(3)?,
            key: WrappedKey {
                id: r.get(4)?,
                master_key_id: r.get(5)?,
                nonce: r.get(6)?,
                wrapped: r.get(7)?,
            },
        },
    })
}

impl Tx<'_> {
    /// The current set: version, name → version, and when and by whom it changed.
    fn secret_entries(&self, sid: i64) -> Result<Entries> {
        let row: Option<(u32, String, i64, Option<String>)> = self
            .txn
            .query_row(
                "SELECT version, entries, updated_at, updated_by FROM service_secrets WHERE service_id = ?1",
                [sid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        match row {
            None => Ok((0, BTreeMap::new(), None)),
            Some((v, e, at, by)) => Ok((v, parse_entries(&e)?, Some((at, by)))),
        }
    }

    /// What a new release records: the set's version and its entries (JSON).
    pub(crate) fn secrets_snapshot(&self, service: &ServiceName) -> Result<(u32, String)> {
        let sid = self.service_id(service)?;
        let (version, entries, _) = self.secret_entries(sid)?;
        Ok((version, to_json(&entries)?))
    }

    /// A service's current secrets: names, versions, who set them and when.
    pub fn secrets(&self, service: &ServiceName) -> Result<SecretSet> {
        let sid = self.service_id(service)?;
        let (version, entries, changed) = self.secret_entries(sid)?;
        let mut stmt = self.txn.prepare_cached(
            "SELECT set_by, set_at FROM secret_values WHERE service_id = ?1 AND name = ?2 AND version = ?3",
        )?;
        let mut secrets = Vec::with_capacity(entries.len());
        for (name, v) in entries {
            let (set_by, set_at): (Option<String>, i64) = stmt
                .query_row(params![sid, name, v], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("secret {name} v{v} of {service} is missing"))
                })?;
            secrets.push(SecretMeta {
                name,
                version: v,
                set_by,
                set_at: ts(set_at),
            });
        }
        Ok(SecretSet {
            version,
            secrets,
            updated_at: changed.as_ref().map(|c| ts(c.0)),
            updated_by: changed.and_then(|c| c.1),
        })
    }

    /// The version the next value of `name` gets (values are never reused, so
    /// a version names one ciphertext for good).
    pub fn next_secret_version(&self, service: &ServiceName, name: &str) -> Result<u32> {
        let sid = self.service_id(service)?;
        Ok(self.txn.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM secret_values WHERE service_id = ?1 AND name = ?2",
            params![sid, name],
            |r| r.get(0),
        )?)
    }

    /// Stores a sealed value of `name` at `version` (from [`Self::next_secret_version`]).
    pub fn insert_secret(
        &mut self,
        service: &ServiceName,
        name: &str,
        version: u32,
        sealed: &SealedSecret,
        actor: Option<&str>,
    ) -> Result<()> {
        let sid = self.service_id(service)?;
        let k = &sealed.key;
        self.txn.execute(
            "INSERT INTO secret_data_keys(id, master_key_id, nonce, wrapped, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                k.id,
                k.master_key_id,
                k.nonce,
                k.wrapped,
                self.now.as_millis()
            ],
        )?;
        self.txn.execute(
            "INSERT INTO secret_values(service_id, name, version, nonce, ciphertext, data_key_id, set_by, set_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![sid, name, version, sealed.nonce, sealed.ciphertext, k.id, actor, self.now.as_millis()],
        )?;
        Ok(())
    }

    /// Replaces the service's current set (name → version); returns its new version.
    pub fn set_secret_entries(
        &mut self,
        service: &ServiceName,
        entries: &BTreeMap<String, u32>,
        actor: Option<&str>,
    ) -> Result<u32> {
        let sid = self.service_id(service)?;
        let version = self.secret_entries(sid)?.0 + 1;
        self.txn.execute(
            "INSERT INTO service_secrets(service_id, version, entries, updated_at, updated_by)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(service_id) DO UPDATE SET version = excluded.version, entries = excluded.entries,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            params![sid, version, to_json(entries)?, self.now.as_millis(), actor],
        )?;
        Ok(version)
    }

    /// The current value versions: name → version.
    pub fn current_secret_versions(&self, service: &ServiceName) -> Result<BTreeMap<String, u32>> {
        let sid = self.service_id(service)?;
        Ok(self.secret_entries(sid)?.1)
    }

    /// The sealed secrets release `release` runs with.
    pub fn release_secrets(
        &self,
        service: &ServiceName,
        release: u32,
    ) -> Result<Vec<StoredSecret>> {
        let sid = self.service_id(service)?;
        let json: String = self
            .txn
            .query_row(
                "SELECT secrets FROM releases WHERE service_id = ?1 AND version = ?2",
                params![sid, release],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "release",
                name: format!("{service} v{release}"),
            })?;
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {VALUE_COLUMNS} FROM secret_values v JOIN secret_data_keys k ON k.id = v.data_key_id
             WHERE v.service_id = ?1 AND v.name = ?2 AND v.version = ?3"
        ))?;
        let mut out = Vec::new();
        for (name, v) in parse_entries(&json)? {
            let s = stmt
                .query_row(params![sid, name, v], stored_row)
                .optional()?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "secret {name} v{v} of {service} v{release} is missing"
                    ))
                })?;
            out.push(s);
        }
        Ok(out)
    }

    /// Every wrapped data key (for a master key rotation).
    pub fn secret_data_keys(&self) -> Result<Vec<WrappedKey>> {
        let mut stmt = self.txn.prepare(
            "SELECT id, master_key_id, nonce, wrapped FROM secret_data_keys ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(WrappedKey {
                    id: r.get(0)?,
                    master_key_id: r.get(1)?,
                    nonce: r.get(2)?,
                    wrapped: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Replaces a data key's wrapping (same id, same key, new master key).
    pub fn rewrap_data_key(&mut self, key: &WrappedKey) -> Result<()> {
        let n = self.txn.execute(
            "UPDATE secret_data_keys SET master_key_id = ?1, nonce = ?2, wrapped = ?3 WHERE id = ?4",
            params![key.master_key_id, key.nonce, key.wrapped, key.id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "data key",
                name: key.id.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::store;
    use tend_core::TeamName;

    fn sealed(tag: u8) -> SealedSecret {
        SealedSecret {
            nonce: vec![tag; 24],
            ciphertext: vec![tag; 20],
            key: WrappedKey {
                id: format!("dk{tag}"),
                master_key_id: "m1".into(),
                nonce: vec![tag; 24],
                wrapped: vec![tag; 48],
            },
        }
    }

    #[test]
    fn values_are_versioned_and_releases_keep_theirs() {
        let (_d, store) = store();
        let team = TeamName::parse("payments").unwrap();
        let svc = ServiceName::parse("checkout").unwrap();
        store
            .write(|tx| {
                tx.create_team(&team)?;
                tx.upsert_service(&svc, &team, "", "{}", "")?;
                assert_eq!(tx.next_secret_version(&svc, "K")?, 1);
                tx.insert_secret(&svc, "K", 1, &sealed(1), Some("alice"))?;
                let v =
                    tx.set_secret_entries(&svc, &BTreeMap::from([("K".into(), 1)]), Some("alice"))?;
                assert_eq!(v, 1);
                let r1 = tx.create_release(&svc, "{}", "aaa", "deploy", Some("alice"))?;
                assert_eq!(r1.secrets_version, 1);
                assert_eq!(tx.next_secret_version(&svc, "K")?, 2);
                tx.insert_secret(&svc, "K", 2, &sealed(2), Some("bob"))?;
                tx.set_secret_entries(&svc, &BTreeMap::from([("K".into(), 2)]), Some("bob"))?;
                let r2 = tx.create_config_release(&svc, 1, "secrets", Some("bob"))?;
                assert_eq!(r2.secrets_version, 2);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store
            .read(|tx| {
                let set = tx.secrets(&svc)?;
                assert_eq!(set.version, 2);
                assert_eq!(set.secrets.len(), 1);
                assert_eq!(set.secrets[0].version, 2);
                assert_eq!(set.secrets[0].set_by.as_deref(), Some("bob"));
                assert_eq!(tx.release_secrets(&svc, 1)?[0].sealed, sealed(1));
                assert_eq!(tx.release_secrets(&svc, 2)?[0].sealed, sealed(2));
                assert_eq!(tx.releases(&svc)?[0].secrets_version, 2);
                assert_eq!(tx.secret_data_keys()?.len(), 2);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let mut k = sealed(1).key;
        k.master_key_id = "m2".into();
        k.wrapped = vec![9; 48];
        store.write(|tx| tx.rewrap_data_key(&k)).unwrap();
        let back = store.read(|tx| tx.release_secrets(&svc, 1)).unwrap();
        assert_eq!(back[0].sealed.key, k);
        // Deleting the service takes values and their data keys with it.
        store.write(|tx| tx.delete_service(&svc)).unwrap();
        assert!(store.read(|tx| tx.secret_data_keys()).unwrap().is_empty());
    }
}
