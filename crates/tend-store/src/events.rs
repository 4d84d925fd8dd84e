//! The timeline of each service: what changed and what happened.

use rusqlite::params;
use tend_core::model::Event;
use tend_core::ServiceName;

use crate::{ts, Result, Tx};

/// An event from the columns `id, time, service, kind, message, actor`.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        time: ts(r.get(1)?),
        service: r.get(2)?,
        kind: r.get(3)?,
        message: r.get(4)?,
        actor: r.get(5)?,
    })
}

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

    /// Events of every service after `after_id`, oldest first, at most `limit`.
    pub fn events_after(&self, after_id: i64, limit: u32) -> Result<Vec<Event>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, time, service, kind, message, actor FROM events
             WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![after_id, limit], event_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64> {
        Ok(self
            .txn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }

    /// The latest `limit` events of a service, oldest first.
    pub fn events(&self, service: &ServiceName, limit: u32) -> Result<Vec<Event>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, time, service, kind, message, actor FROM
               (SELECT * FROM events WHERE service = ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = stmt
            .query_map(params![service.as_str(), limit], event_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}
