//! The timeline of each service: what changed and what happened.

use rusqlite::params;
use tend_core::model::Event;
use tend_core::ServiceName;

use crate::{ts, Result, Tx};

impl Tx<'_> {
    /// Appends an event to a service's timeline.
    pub fn append_event(
        &mut self,
        service: &ServiceName,
        kind: &str,
        message: &str,
        actor: Option<&str>,
    ) -> Result<i64> {
        self.txn.execute(
            "INSERT INTO events(time, service, kind, message, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![self.now.as_millis(), service.as_str(), kind, message, actor],
        )?;
        Ok(self.txn.last_insert_rowid())
    }

    /// The latest `limit` events of a service, oldest first.
    pub fn events(&self, service: &ServiceName, limit: u32) -> Result<Vec<Event>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, time, service, kind, message, actor FROM
               (SELECT * FROM events WHERE service = ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![service.as_str(), limit], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    time: ts(r.get(1)?),
                    service: r.get(2)?,
                    kind: r.get(3)?,
                    message: r.get(4)?,
                    actor: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}
