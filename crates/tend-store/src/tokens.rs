//! API tokens: only a hash of each secret is stored.

use rusqlite::{params, OptionalExtension};
use tend_core::model::{Principal, TokenInfo};
use tend_core::{TeamName, Timestamp, TokenName};

use crate::{opt_ts, ts, Result, StoreError, Tx};

/// A token to create. The secret itself never reaches the store.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Name, unique among active tokens.
    pub name: TokenName,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// Admin role.
    pub admin: bool,
    /// Teams it is a member of; they must exist.
    pub teams: Vec<TeamName>,
    /// Name of the creating token, if any.
    pub created_by: Option<String>,
    /// Expiry, if any.
    pub expires_at: Option<Timestamp>,
}

/// What a presented token hash turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    /// No token has this hash.
    Unknown,
    /// The token was revoked at this time.
    Revoked(Timestamp),
    /// The token expired at this time.
    Expired(Timestamp),
    /// The token is valid.
    Valid(Principal),
}

// Updating last_used_at on every request would turn every read into a write.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

impl Tx<'_> {
    /// Creates a token; a conflict if an active token has the same name.
    pub fn create_token(&mut self, new: &NewToken) -> Result<TokenInfo> {
        let mut team_ids = Vec::with_capacity(new.teams.len());
        for team in &new.teams {
            team_ids.push(self.team_id(team)?);
        }
        let taken: bool = self.txn.query_row(
            "SELECT EXISTS(SELECT 1 FROM tokens WHERE name = ?1 AND revoked_at IS NULL)",
            [new.name.as_str()],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::Conflict(format!(
                "an active token named `{}` already exists; revoke it first or pick another name",
                new.name
            )));
        }
        self.txn.execute(
            "INSERT INTO tokens(name, hash, admin, created_at, created_by, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                new.name.as_str(),
                &new.hash[..],
                new.admin,
                self.now.as_millis(),
                new.created_by,
                new.expires_at.map(|t| t.as_millis()),
            ],
        )?;
        let id = self.txn.last_insert_rowid();
        for team_id in team_ids {
            self.txn.execute(
                "INSERT OR IGNORE INTO token_teams(token_id, team_id) VALUES (?1, ?2)",
                [id, team_id],
            )?;
        }
        self.token_by_id(id)
    }

    /// Whether any token was ever created (used to detect a first start).
    pub fn has_tokens(&self) -> Result<bool> {
        Ok(self
            .txn
            .query_row("SELECT EXISTS(SELECT 1 FROM tokens)", [], |r| r.get(0))?)
    }

    /// Resolves a token hash to a principal, and records its use.
    pub fn authenticate(&mut self, hash: &[u8; 32]) -> Result<TokenLookup> {
        type Row = (i64, String, bool, Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Row> = self
            .txn
            .query_row(
                "SELECT id, name, admin, expires_at, revoked_at, last_used_at
                 FROM tokens WHERE hash = ?1",
                [&hash[..]],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, name, admin, expires_at, revoked_at, last_used)) = row else {
            return Ok(TokenLookup::Unknown);
        };
        if let Some(r) = revoked_at {
            return Ok(TokenLookup::Revoked(ts(r)));
        }
        if let Some(e) = expires_at {
            if e <= self.now.as_millis() {
                return Ok(TokenLookup::Expired(ts(e)));
            }
        }
        if last_used.is_none_or(|t| self.now.as_millis() - t >= LAST_USED_RESOLUTION_MS) {
            self.txn.execute(
                "UPDATE tokens SET last_used_at = ?1 WHERE id = ?2",
                [self.now.as_millis(), id],
            )?;
        }
        Ok(TokenLookup::Valid(Principal {
            token_id: id,
            name: parse_name(name)?,
            admin,
            teams: self.token_teams(id)?,
        }))
    }

    fn token_teams(&self, id: i64) -> Result<Vec<TeamName>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT t.name FROM teams t JOIN token_teams tt ON tt.team_id = t.id
             WHERE tt.token_id = ?1 ORDER BY t.name",
        )?;
        let names = stmt
            .query_map([id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        names
            .into_iter()
            .map(|n| {
                TeamName::parse(&n).map_err(|e| StoreError::Corrupt(format!("team {n:?}: {e}")))
            })
            .collect()
    }

    fn token_by_id(&self, id: i64) -> Result<TokenInfo> {
        let row = self.txn.query_row(
            "SELECT name, admin, created_at, created_by, expires_at, revoked_at, last_used_at
             FROM tokens WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            },
        )?;
        Ok(TokenInfo {
            name: parse_name(row.0)?,
            admin: row.1,
            teams: self.token_teams(id)?,
            created_at: ts(row.2),
            created_by: row.3,
            expires_at: opt_ts(row.4),
            revoked_at: opt_ts(row.5),
            last_used_at: opt_ts(row.6),
        })
    }

    /// Tokens, newest first; with `teams`, only those in one of these teams.
    /// Revoked tokens are included only when `include_revoked`.
    pub fn tokens(
        &self,
        teams: Option<&[TeamName]>,
        include_revoked: bool,
    ) -> Result<Vec<TokenInfo>> {
        let mut stmt = self
            .txn
            .prepare("SELECT id FROM tokens WHERE (?1 OR revoked_at IS NULL) ORDER BY id DESC")?;
        let ids = stmt
            .query_map([include_revoked], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for id in ids {
            let info = self.token_by_id(id)?;
            if let Some(teams) = teams {
                if !info.teams.iter().any(|t| teams.contains(t)) {
                    continue;
                }
            }
            out.push(info);
        }
        Ok(out)
    }

    /// The active token with this name.
    pub fn token(&self, name: &TokenName) -> Result<TokenInfo> {
        let id: i64 = self
            .txn
            .query_row(
                "SELECT id FROM tokens WHERE name = ?1 AND revoked_at IS NULL",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "token",
                name: name.to_string(),
            })?;
        self.token_by_id(id)
    }

    /// Revokes the active token with this name; it stops working at once.
    pub fn revoke_token(&mut self, name: &TokenName) -> Result<TokenInfo> {
        let info = self.token(name)?;
        self.txn.execute(
            "UPDATE tokens SET revoked_at = ?1 WHERE name = ?2 AND revoked_at IS NULL",
            params![self.now.as_millis(), name.as_str()],
        )?;
        Ok(TokenInfo {
            revoked_at: Some(self.now),
            ..info
        })
    }
}

fn parse_name(n: String) -> Result<TokenName> {
    TokenName::parse(&n).map_err(|e| StoreError::Corrupt(format!("token name {n:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::store;
    use std::time::Duration;

    fn new_token(name: &str, hash: u8, teams: &[&str]) -> NewToken {
        NewToken {
            name: TokenName::parse(name).unwrap(),
            hash: [hash; 32],
            admin: false,
            teams: teams.iter().map(|t| TeamName::parse(t).unwrap()).collect(),
            created_by: None,
            expires_at: None,
        }
    }

    #[test]
    fn authenticate_revoke_expire() {
        let (_d, store) = store();
        let payments = TeamName::parse("payments").unwrap();
        store.write(|tx| tx.create_team(&payments)).unwrap();
        store
            .write(|tx| tx.create_token(&new_token("alice", 1, &["payments"])))
            .unwrap();
        match store.write(|tx| tx.authenticate(&[1; 32])).unwrap() {
            TokenLookup::Valid(p) => assert_eq!(p.teams, vec![payments.clone()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.write(|tx| tx.authenticate(&[9; 32])).unwrap(),
            TokenLookup::Unknown
        );
        let err = store
            .write(|tx| tx.create_token(&new_token("alice", 2, &[])))
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
        store
            .write(|tx| tx.revoke_token(&TokenName::parse("alice").unwrap()))
            .unwrap();
        assert!(matches!(
            store.write(|tx| tx.authenticate(&[1; 32])).unwrap(),
            TokenLookup::Revoked(_)
        ));
        // A revoked name can be reused.
        let mut expired = new_token("alice", 3, &[]);
        expired.expires_at = Some(Timestamp::from_system_time(
            std::time::SystemTime::now() - Duration::from_secs(1),
        ));
        store.write(|tx| tx.create_token(&expired)).unwrap();
        assert!(matches!(
            store.write(|tx| tx.authenticate(&[3; 32])).unwrap(),
            TokenLookup::Expired(_)
        ));
        assert_eq!(store.read(|tx| tx.tokens(None, true)).unwrap().len(), 2);
        assert_eq!(store.read(|tx| tx.tokens(None, false)).unwrap().len(), 1);
    }

    #[test]
    fn unknown_team_is_not_found() {
        let (_d, store) = store();
        let err = store
            .write(|tx| tx.create_token(&new_token("bob", 1, &["nope"])))
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "team", .. }));
    }
}
