//! Teams and their notification channels.

use rusqlite::{params, OptionalExtension};
use tend_core::model::{Channel, ChannelKind, Team};
use tend_core::{TeamName, TokenName};

use crate::{ts, Result, StoreError, Tx};

fn parse_team(name: String) -> Result<TeamName> {
    TeamName::parse(&name).map_err(|e| StoreError::Corrupt(format!("team name {name:?}: {e}")))
}

impl Tx<'_> {
    pub(crate) fn team_id(&self, name: &TeamName) -> Result<i64> {
        self.txn
            .query_row(
                "SELECT id FROM teams WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "team",
                name: name.to_string(),
            })
    }

    /// Creates a team; a conflict if the name is taken.
    pub fn create_team(&mut self, name: &TeamName) -> Result<Team> {
        let inserted = self.txn.execute(
            "INSERT INTO teams(name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![name.as_str(), self.now.as_millis()],
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "team `{name}` already exists"
            )));
        }
        self.team(name)
    }

    /// Whether a team exists.
    pub fn team_exists(&self, name: &TeamName) -> Result<bool> {
        match self.team_id(name) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One team with its members, channels and services.
    pub fn team(&self, name: &TeamName) -> Result<Team> {
        let (id, created_at): (i64, i64) = self
            .txn
            .query_row(
                "SELECT id, created_at FROM teams WHERE name = ?1",
                [name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "team",
                name: name.to_string(),
            })?;
        let mut members = Vec::new();
        let mut stmt = self.txn.prepare_cached(
            "SELECT t.name FROM tokens t JOIN token_teams tt ON tt.token_id = t.id
             WHERE tt.team_id = ?1 AND t.revoked_at IS NULL ORDER BY t.name",
        )?;
        for row in stmt.query_map([id], |r| r.get::<_, String>(0))? {
            let n = row?;
            members.push(
                TokenName::parse(&n)
                    .map_err(|e| StoreError::Corrupt(format!("token name {n:?}: {e}")))?,
            );
        }
        let mut channels = Vec::new();
        let mut stmt = self.txn.prepare_cached(
            "SELECT name, kind, target, member FROM channels WHERE team_id = ?1 ORDER BY name",
        )?;
        for row in stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })? {
            let (n, kind, target, member) = row?;
            let member = member
                .map(|m| {
                    TokenName::parse(&m)
                        .map_err(|e| StoreError::Corrupt(format!("channel member {m:?}: {e}")))
                })
                .transpose()?;
            channels.push(Channel {
                name: TokenName::parse(&n)
                    .map_err(|e| StoreError::Corrupt(format!("channel name {n:?}: {e}")))?,
                kind: ChannelKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("channel kind {kind:?}")))?,
                target,
                member,
            });
        }
        let mut stmt = self
            .txn
            .prepare_cached("SELECT name FROM services WHERE team_id = ?1 ORDER BY name")?;
        let services = stmt
            .query_map([id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Team {
            name: name.clone(),
            created_at: ts(created_at),
            members,
            channels,
            services,
        })
    }

    /// Every team, by name.
    pub fn teams(&self) -> Result<Vec<Team>> {
        let mut stmt = self.txn.prepare("SELECT name FROM teams ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        names
            .into_iter()
            .map(|n| self.team(&parse_team(n)?))
            .collect()
    }

    /// Deletes a team; a conflict while it still owns services.
    pub fn delete_team(&mut self, name: &TeamName) -> Result<()> {
        let team = self.team(name)?;
        if !team.services.is_empty() {
            return Err(StoreError::Conflict(format!(
                "team `{name}` still owns {}: delete them or move them to another team first",
                team.services
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.txn
            .execute("DELETE FROM teams WHERE name = ?1", [name.as_str()])?;
        Ok(())
    }

    /// Adds a notification channel to a team; a conflict if the name is taken.
    pub fn add_channel(&mut self, team: &TeamName, channel: &Channel) -> Result<()> {
        let id = self.team_id(team)?;
        let inserted = self.txn.execute(
            "INSERT INTO channels(team_id, name, kind, target, member) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(team_id, name) DO NOTHING",
            params![
                id,
                channel.name.as_str(),
                channel.kind.as_str(),
                channel.target,
                channel.member.as_ref().map(|m| m.as_str())
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "team `{team}` already has a channel `{}`",
                channel.name
            )));
        }
        Ok(())
    }

    /// Removes a team's channel.
    pub fn remove_channel(&mut self, team: &TeamName, name: &TokenName) -> Result<()> {
        let id = self.team_id(team)?;
        let n = self.txn.execute(
            "DELETE FROM channels WHERE team_id = ?1 AND name = ?2",
            params![id, name.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "channel",
                name: format!("{team}/{name}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::store;
    use crate::StoreError;
    use tend_core::model::{Channel, ChannelKind};
    use tend_core::{TeamName, TokenName};

    fn t(s: &str) -> TeamName {
        TeamName::parse(s).unwrap()
    }

    #[test]
    fn team_lifecycle() {
        let (_d, store) = store();
        store.write(|tx| tx.create_team(&t("payments"))).unwrap();
        let err = store
            .write(|tx| tx.create_team(&t("payments")))
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        store
            .write(|tx| {
                tx.add_channel(
                    &t("payments"),
                    &Channel {
                        name: TokenName::parse("hook").unwrap(),
                        kind: ChannelKind::Webhook,
                        target: "http://127.0.0.1:9/hook".into(),
                        member: Some(TokenName::parse("alice").unwrap()),
                    },
                )
            })
            .unwrap();
        let team = store.read(|tx| tx.team(&t("payments"))).unwrap();
        assert_eq!(team.channels.len(), 1);
        assert_eq!(team.channels[0].member.as_ref().unwrap().as_str(), "alice");
        assert_eq!(store.read(|tx| tx.teams()).unwrap().len(), 1);
        store.write(|tx| tx.delete_team(&t("payments"))).unwrap();
        let err = store.read(|tx| tx.team(&t("payments"))).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }));
    }
}
