//! The audit trail: append-only.

use rusqlite::params;
use tend_core::model::{AuditEntry, NewAuditEntry, Outcome};
use tend_core::TeamName;

use crate::{ts, Result, StoreError, Tx};

/// Which audit entries to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries about these teams' things (`None`: all).
    pub teams: Option<Vec<TeamName>>,
    /// Only entries with an id below this (for paging backwards).
    pub before_id: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl Tx<'_> {
    /// Appends an audit entry stamped with the transaction's time.
    pub fn append_audit(&mut self, e: &NewAuditEntry) -> Result<i64> {
        self.txn.execute(
            "INSERT INTO audit(time, actor, action, target, team, outcome, client, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                self.now.as_millis(),
                e.actor,
                e.action,
                e.target,
                e.team.as_ref().map(|t| t.as_str()),
                e.outcome.as_str(),
                e.client,
                e.detail,
            ],
        )?;
        Ok(self.txn.last_insert_rowid())
    }

    /// Audit entries, newest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let teams_json = q
            .teams
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".into()));
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, time, actor, action, target, team, outcome, client, detail FROM audit
             WHERE (?1 IS NULL OR team IN (SELECT value FROM json_each(?1)))
               AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![teams_json, q.before_id, q.limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(
                |(id, time, actor, action, target, team, outcome, client, detail)| {
                    Ok(AuditEntry {
                        id,
                        time: ts(time),
                        actor,
                        action,
                        target,
                        team: team
                            .map(|t| {
                                TeamName::parse(&t)
                                    .map_err(|e| StoreError::Corrupt(format!("team {t:?}: {e}")))
                            })
                            .transpose()?,
                        outcome: Outcome::parse(&outcome)
                            .ok_or_else(|| StoreError::Corrupt(format!("outcome {outcome:?}")))?,
                        client,
                        detail,
                    })
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::store;

    fn entry(team: Option<&str>, outcome: Outcome) -> NewAuditEntry {
        NewAuditEntry {
            actor: Some("alice".into()),
            action: "service.apply".into(),
            target: "service/checkout".into(),
            team: team.map(|t| TeamName::parse(t).unwrap()),
            outcome,
            client: Some("127.0.0.1:1234".into()),
            detail: None,
        }
    }

    #[test]
    fn filters_by_team_and_pages() {
        let (_d, store) = store();
        store
            .write(|tx| {
                tx.append_audit(&entry(Some("payments"), Outcome::Allowed))?;
                tx.append_audit(&entry(Some("search"), Outcome::Denied))?;
                tx.append_audit(&entry(None, Outcome::Failed))
            })
            .unwrap();
        let all = store
            .read(|tx| {
                tx.audit(&AuditQuery {
                    limit: 10,
                    ..Default::default()
                })
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].outcome, Outcome::Failed, "newest first");
        let payments = store
            .read(|tx| {
                tx.audit(&AuditQuery {
                    teams: Some(vec![TeamName::parse("payments").unwrap()]),
                    limit: 10,
                    ..Default::default()
                })
            })
            .unwrap();
        assert_eq!(payments.len(), 1);
        assert_eq!(payments[0].outcome, Outcome::Allowed);
        let older = store
            .read(|tx| {
                tx.audit(&AuditQuery {
                    before_id: Some(all[0].id),
                    limit: 1,
                    ..Default::default()
                })
            })
            .unwrap();
        assert_eq!(older.len(), 1);
        assert_eq!(older[0].id, all[1].id);
    }
}
