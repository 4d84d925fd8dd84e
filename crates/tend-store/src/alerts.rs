//! Incidents (firing alerts of one service grouped, with their timeline and
//! context), the outbox of notifications with their delivery log, and each
//! team's on-call rotation, overrides and escalation policy.
//!
//! Notifications are an outbox: whoever changes an incident (the alert
//! engine, an API call) queues what must be said in the same transaction,
//! and the engine delivers the queue. A crash between the two loses nothing.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use tend_core::incident::{
    Delivery, EscalationPolicy, Handoff, Incident, IncidentAlert, IncidentContext, IncidentFilter,
    IncidentState, OncallOverride, Rotation, TimelineEntry,
};
use tend_core::{ServiceName, TeamName, Timestamp, TokenName};

use crate::{opt_ts, ts, Result, StoreError, Tx};

/// An alert as the engine reports it, to be added to (or refreshed in) an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertUpsert {
    /// Label-set fingerprint.
    pub fingerprint: String,
    /// Rule name.
    pub name: String,
    /// `page`, `ticket` or `info`.
    pub severity: String,
    /// All labels.
    pub labels: BTreeMap<String, String>,
    /// Rendered annotations.
    pub annotations: BTreeMap<String, String>,
    /// Current value.
    pub value: f64,
    /// When it started firing.
    pub starts_at: Timestamp,
}

/// What [`Tx::record_firing`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new incident was opened for the alert.
    Opened(i64),
    /// The alert joined (or was already in) the service's open incident.
    Joined {
        /// The incident.
        incident: i64,
        /// Whether the alert is new to the incident.
        new_alert: bool,
    },
}

/// A notification to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The incident it is about.
    pub incident_id: i64,
    /// The team whose channel receives it.
    pub team: String,
    /// The channel's name.
    pub channel: String,
    /// `webhook`, `slack`, `pagerduty` or `email`.
    pub kind: String,
    /// URL, routing key or address.
    pub target: String,
    /// `trigger`, `acknowledge` or `resolve`.
    pub event: String,
    /// The exact body to send (JSON).
    pub payload: String,
}

/// A queued notification taken for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Its number.
    pub id: i64,
    /// The incident.
    pub incident_id: i64,
    /// The channel's name.
    pub channel: String,
    /// The channel's kind.
    pub kind: String,
    /// Where to send it.
    pub target: String,
    /// The body.
    pub payload: String,
    /// Attempts already made.
    pub attempts: u32,
}

/// An incident whose state changed since its channels were last told.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// The incident as it is now.
    pub incident: Incident,
    /// The state the channels last heard of.
    pub notified: Option<IncidentState>,
}

const INCIDENT_COLUMNS: &str = "id, service, team, state, severity, title, opened_at, acked_at, \
     acked_by, resolved_at, resolved_by, escalation_level";

type IncidentRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
    i64,
);

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IncidentRow> {
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
        r.get(11)?,
    ))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn parse_state(s: &str) -> Result<IncidentState> {
    IncidentState::parse(s).ok_or_else(|| corrupt("incident state", s))
}

fn not_found(id: i64) -> StoreError {
    StoreError::NotFound {
        kind: "incident",
        name: id.to_string(),
    }
}

impl Tx<'_> {
    fn build_incident(&self, row: IncidentRow) -> Result<Incident> {
        let (
            id,
            service,
            team,
            state,
            severity,
            title,
            opened,
            acked,
            acked_by,
            resolved,
            resolved_by,
            level,
        ) = row;
        Ok(Incident {
            id,
            service,
            team: TeamName::parse(&team).map_err(|e| corrupt("incident team", e))?,
            state: parse_state(&state)?,
            severity,
            title,
            opened_at: ts(opened),
            acked_at: opt_ts(acked),
            acked_by,
            resolved_at: opt_ts(resolved),
            resolved_by,
            escalation_level: level as u32,
            alerts: self.incident_alerts(id)?,
        })
    }

    fn incident_alerts(&self, id: i64) -> Result<Vec<IncidentAlert>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT fingerprint, name, severity, labels, annotations, value, status, starts_at, ends_at
             FROM incident_alerts WHERE incident_id = ?1 ORDER BY starts_at, fingerprint",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, f64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(
                |(fp, name, severity, labels, ann, value, status, starts, ends)| {
                    Ok(IncidentAlert {
                        fingerprint: fp,
                        name,
                        severity,
                        labels: serde_json::from_str(&labels)
                            .map_err(|e| corrupt("alert labels", e))?,
                        annotations: serde_json::from_str(&ann)
                            .map_err(|e| corrupt("alert annotations", e))?,
                        value,
                        status,
                        starts_at: ts(starts),
                        ends_at: opt_ts(ends),
                    })
                },
            )
            .collect()
    }

    /// One incident with its alerts.
    pub fn incident(&self, id: i64) -> Result<Incident> {
        let row = self
            .txn
            .query_row(
                &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"),
                [id],
                incident_row,
            )
            .optional()?
            .ok_or_else(|| not_found(id))?;
        self.build_incident(row)
    }

    /// Incidents matching `filter`, newest first.
    pub fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>> {
        let teams: Option<String> = filter.teams.as_ref().map(|t| {
            serde_json::Value::from(t.iter().map(|t| t.to_string()).collect::<Vec<_>>()).to_string()
        });
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let mut stmt = self.txn.prepare_cached(&format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents
             WHERE (?1 IS NULL OR team IN (SELECT value FROM json_each(?1)))
               AND (?2 IS NULL OR service = ?2)
               AND (?3 OR state != 'resolved')
             ORDER BY id DESC LIMIT ?4"
        ))?;
        let rows = stmt
            .query_map(
                params![teams, filter.service, filter.include_resolved, limit],
                incident_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(|r| self.build_incident(r)).collect()
    }

    /// The open (not resolved) incident of a service, if any.
    pub fn open_incident(&self, service: &str) -> Result<Option<i64>> {
        Ok(self
            .txn
            .query_row(
                "SELECT id FROM incidents WHERE service = ?1 AND state != 'resolved'
                 ORDER BY id DESC LIMIT 1",
                [service],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The context recorded when the incident opened.
    pub fn incident_context(&self, id: i64) -> Result<IncidentContext> {
        let json: String = self
            .txn
            .query_row("SELECT context FROM incidents WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| not_found(id))?;
        serde_json::from_str(&json).map_err(|e| corrupt("incident context", e))
    }

    /// The incident's timeline, oldest first.
    pub fn incident_timeline(&self, id: i64) -> Result<Vec<TimelineEntry>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT time, kind, actor, detail FROM incident_timeline
             WHERE incident_id = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(TimelineEntry {
                    time: ts(r.get(0)?),
                    kind: r.get(1)?,
                    actor: r.get(2)?,
                    detail: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Adds an entry to an incident's timeline.
    pub fn append_timeline(
        &mut self,
        id: i64,
        kind: &str,
        actor: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        self.txn.execute(
            "INSERT INTO incident_timeline(incident_id, time, kind, actor, detail)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, self.now.as_millis(), kind, actor, detail],
        )?;
        Ok(())
    }

    /// Records a firing alert: it joins the service's open incident, or opens
    /// one (owned by `team`, with `context`, on the service's timeline too).
    pub fn record_firing(
        &mut self,
        service: &ServiceName,
        team: &TeamName,
        alert: &AlertUpsert,
        context: impl FnOnce() -> IncidentContext,
    ) -> Result<Recorded> {
        let labels = serde_json::to_string(&alert.labels).map_err(|e| corrupt("labels", e))?;
        let annotations =
            serde_json::to_string(&alert.annotations).map_err(|e| corrupt("annotations", e))?;
        let now = self.now.as_millis();
        let (id, opened) = match self.open_incident(service.as_str())? {
            Some(id) => (id, false),
            None => {
                let title = alert
                    .annotations
                    .get("summary")
                    .cloned()
                    .unwrap_or_else(|| format!("{} on {service}", alert.name));
                let ctx = serde_json::to_string(&context()).map_err(|e| corrupt("context", e))?;
                self.txn.execute(
                    "INSERT INTO incidents(service, team, state, severity, title, context, opened_at, updated_at)
                     VALUES (?1, ?2, 'triggered', ?3, ?4, ?5, ?6, ?6)",
                    params![service.as_str(), team.as_str(), alert.severity, title, ctx, now],
                )?;
                let id = self.txn.last_insert_rowid();
                self.append_timeline(id, "opened", None, &format!("incident opened: {title}"))?;
                self.append_event(
                    service,
                    "incident.opened",
                    &format!("incident #{id} opened for team `{team}`: {title}"),
                    None,
                )?;
                (id, true)
            }
        };
        let existing: Option<String> = self
            .txn
            .query_row(
                "SELECT status FROM incident_alerts WHERE incident_id = ?1 AND fingerprint = ?2",
                params![id, alert.fingerprint],
                |r| r.get(0),
            )
            .optional()?;
        self.txn.execute(
            "INSERT INTO incident_alerts(incident_id, fingerprint, name, severity, labels, annotations,
                                         value, status, starts_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'firing', ?8)
             ON CONFLICT(incident_id, fingerprint) DO UPDATE SET
               value = excluded.value, annotations = excluded.annotations,
               status = 'firing', ends_at = NULL",
            params![
                id,
                alert.fingerprint,
                alert.name,
                alert.severity,
                labels,
                annotations,
                alert.value,
                alert.starts_at.as_millis()
            ],
        )?;
        let new_alert = existing.as_deref() != Some("firing");
        if new_alert {
            self.append_timeline(
                id,
                "alert.firing",
                None,
                &format!("{} firing (value {})", alert.name, alert.value),
            )?;
            // The most urgent severity of its alerts is the incident's. A
            // triggered incident that becomes more urgent is announced again
            // (a `page` starts its escalation).
            let raised = self.txn.execute(
                "UPDATE incidents SET severity = ?2, updated_at = ?3 WHERE id = ?1
                 AND (CASE severity WHEN 'page' THEN 0 WHEN 'ticket' THEN 1 ELSE 2 END)
                   > (CASE ?2 WHEN 'page' THEN 0 WHEN 'ticket' THEN 1 ELSE 2 END)",
                params![id, alert.severity, now],
            )?;
            if raised > 0 && !opened {
                self.txn.execute(
                    "UPDATE incidents SET notified_state = NULL WHERE id = ?1 AND state = 'triggered'",
                    [id],
                )?;
                self.append_timeline(
                    id,
                    "severity.raised",
                    None,
                    &format!("severity raised to {} by {}", alert.severity, alert.name),
                )?;
            }
        }
        Ok(if opened {
            Recorded::Opened(id)
        } else {
            Recorded::Joined {
                incident: id,
                new_alert,
            }
        })
    }

    /// Records that an alert stopped firing. When it was the incident's last
    /// firing alert, the incident resolves by itself; returns its id then.
    pub fn record_resolved(
        &mut self,
        service: &ServiceName,
        fingerprint: &str,
    ) -> Result<Option<i64>> {
        let Some(id) = self.open_incident(service.as_str())? else {
            return Ok(None);
        };
        let name: Option<String> = self
            .txn
            .query_row(
                "UPDATE incident_alerts SET status = 'resolved', ends_at = ?3
                 WHERE incident_id = ?1 AND fingerprint = ?2 AND status = 'firing' RETURNING name",
                params![id, fingerprint, self.now.as_millis()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(name) = name else { return Ok(None) };
        self.append_timeline(id, "alert.resolved", None, &format!("{name} resolved"))?;
        let firing: i64 = self.txn.query_row(
            "SELECT COUNT(*) FROM incident_alerts WHERE incident_id = ?1 AND status = 'firing'",
            [id],
            |r| r.get(0),
        )?;
        if firing == 0 {
            self.resolve_incident(id, None)?;
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Acknowledges an incident: escalation stops. A conflict unless triggered.
    pub fn ack_incident(&mut self, id: i64, by: &str) -> Result<Incident> {
        let inc = self.incident(id)?;
        if inc.state != IncidentState::Triggered {
            return Err(StoreError::Conflict(format!(
                "incident #{id} is already {}",
                inc.state.as_str()
            )));
        }
        self.txn.execute(
            "UPDATE incidents SET state = 'acknowledged', acked_at = ?2, acked_by = ?3,
               next_escalation_at = NULL, updated_at = ?2 WHERE id = ?1",
            params![id, self.now.as_millis(), by],
        )?;
        self.append_timeline(
            id,
            "acknowledged",
            Some(by),
            &format!("acknowledged by {by}"),
        )?;
        self.incident(id)
    }

    /// Resolves an incident, by hand (`by`) or because its alerts cleared.
    /// A conflict if it is already resolved.
    pub fn resolve_incident(&mut self, id: i64, by: Option<&str>) -> Result<Incident> {
        let inc = self.incident(id)?;
        if inc.state == IncidentState::Resolved {
            return Err(StoreError::Conflict(format!(
                "incident #{id} is already resolved"
            )));
        }
        let now = self.now.as_millis();
        self.txn.execute(
            "UPDATE incidents SET state = 'resolved', resolved_at = ?2, resolved_by = ?3,
               next_escalation_at = NULL, updated_at = ?2 WHERE id = ?1",
            params![id, now, by],
        )?;
        self.txn.execute(
            "UPDATE incident_alerts SET status = 'resolved', ends_at = ?2
             WHERE incident_id = ?1 AND status = 'firing'",
            params![id, now],
        )?;
        let detail = match by {
            Some(who) => format!("resolved by {who}"),
            None => "resolved: every alert cleared".to_string(),
        };
        self.append_timeline(id, "resolved", by, &detail)?;
        let service =
            ServiceName::parse(&inc.service).map_err(|e| corrupt("incident service", e))?;
        self.append_event(
            &service,
            "incident.resolved",
            &format!("incident #{id} {detail}"),
            by,
        )?;
        self.incident(id)
    }

    /// Incidents whose state their channels have not heard of yet.
    pub fn unannounced_incidents(&self) -> Result<Vec<StateChange>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, notified_state FROM incidents
             WHERE notified_state IS NULL OR notified_state != state",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, n)| {
                Ok(StateChange {
                    incident: self.incident(id)?,
                    notified: n.as_deref().map(parse_state).transpose()?,
                })
            })
            .collect()
    }

    /// Marks the incident's current state as announced.
    pub fn mark_announced(&mut self, id: i64, state: IncidentState) -> Result<()> {
        self.txn.execute(
            "UPDATE incidents SET notified_state = ?2 WHERE id = ?1",
            params![id, state.as_str()],
        )?;
        Ok(())
    }

    /// Sets where escalation stands: the level reached (0-based), the round,
    /// and when the next step is due (`None`: no further step).
    pub fn set_escalation(
        &mut self,
        id: i64,
        level: u32,
        round: u32,
        next_at: Option<Timestamp>,
    ) -> Result<()> {
        self.txn.execute(
            "UPDATE incidents SET escalation_level = ?2, escalation_round = ?3,
               next_escalation_at = ?4 WHERE id = ?1",
            params![id, level, round, next_at.map(|t| t.as_millis())],
        )?;
        Ok(())
    }

    /// Makes the next escalation step of a triggered incident due now (a
    /// notification to the current level could not be delivered).
    pub fn hurry_escalation(&mut self, id: i64) -> Result<bool> {
        Ok(self.txn.execute(
            "UPDATE incidents SET next_escalation_at = MIN(next_escalation_at, ?2)
             WHERE id = ?1 AND state = 'triggered' AND next_escalation_at IS NOT NULL",
            params![id, self.now.as_millis()],
        )? > 0)
    }

    /// Triggered incidents whose next escalation step is due, with
    /// (level reached, round).
    pub fn due_escalations(&self) -> Result<Vec<(Incident, u32, u32)>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, escalation_level, escalation_round FROM incidents
             WHERE state = 'triggered' AND next_escalation_at IS NOT NULL
               AND next_escalation_at <= ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([self.now.as_millis()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, l, r)| Ok((self.incident(id)?, l as u32, r as u32)))
            .collect()
    }

    // ---- the notification outbox ------------------------------------------

    /// Queues a notification; returns its id.
    pub fn enqueue_notification(&mut self, n: &NewNotification) -> Result<i64> {
        self.txn.execute(
            "INSERT INTO notifications(incident_id, team, channel, kind, target, event, payload,
                                       status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?8)",
            params![
                n.incident_id,
                n.team,
                n.channel,
                n.kind,
                n.target,
                n.event,
                n.payload,
                self.now.as_millis()
            ],
        )?;
        Ok(self.txn.last_insert_rowid())
    }

    /// Takes up to `limit` queued notifications for delivery (marks them `sending`).
    pub fn claim_notifications(&mut self, limit: u32) -> Result<Vec<OutboxItem>> {
        let mut stmt = self.txn.prepare_cached(
            "UPDATE notifications SET status = 'sending', updated_at = ?1
             WHERE id IN (SELECT id FROM notifications WHERE status = 'pending' ORDER BY id LIMIT ?2)
             RETURNING id, incident_id, channel, kind, target, payload, attempts",
        )?;
        let mut rows = stmt
            .query_map(params![self.now.as_millis(), limit], |r| {
                Ok(OutboxItem {
                    id: r.get(0)?,
                    incident_id: r.get(1)?,
                    channel: r.get(2)?,
                    kind: r.get(3)?,
                    target: r.get(4)?,
                    payload: r.get(5)?,
                    attempts: r.get::<_, i64>(6)? as u32,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Puts notifications left `sending` by a previous run back in the queue.
    pub fn requeue_interrupted_notifications(&mut self) -> Result<usize> {
        Ok(self.txn.execute(
            "UPDATE notifications SET status = 'pending' WHERE status = 'sending'",
            [],
        )?)
    }

    /// Records one delivery attempt; `done` marks it delivered (ok) or failed
    /// for good (not ok), else it stays `sending` for the next attempt.
    pub fn record_attempt(
        &mut self,
        id: i64,
        http_status: Option<u16>,
        error: Option<&str>,
        done: bool,
    ) -> Result<()> {
        let status = match (done, error) {
            (true, None) => "delivered",
            (true, Some(_)) => "failed",
            (false, _) => "sending",
        };
        let now = self.now.as_millis();
        self.txn.execute(
            "UPDATE notifications SET attempts = attempts + 1, http_status = ?2, last_error = ?3,
               status = ?4, updated_at = ?5,
               delivered_at = CASE WHEN ?4 = 'delivered' THEN ?5 ELSE delivered_at END
             WHERE id = ?1",
            params![id, http_status, error, status, now],
        )?;
        Ok(())
    }

    /// The delivery log of an incident's notifications, oldest first.
    pub fn deliveries(&self, incident_id: i64) -> Result<Vec<Delivery>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, incident_id, team, channel, kind, event, status, attempts, http_status,
                    last_error, created_at, delivered_at
             FROM notifications WHERE incident_id = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([incident_id], |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    incident_id: r.get(1)?,
                    team: r.get(2)?,
                    channel: r.get(3)?,
                    kind: r.get(4)?,
                    event: r.get(5)?,
                    status: r.get(6)?,
                    attempts: r.get::<_, i64>(7)? as u32,
                    http_status: r.get::<_, Option<i64>>(8)?.map(|s| s as u16),
                    last_error: r.get(9)?,
                    created_at: ts(r.get(10)?),
                    delivered_at: opt_ts(r.get(11)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Channels (team, channel) that were sent a `trigger` for the incident.
    pub fn triggered_channels(&self, incident_id: i64) -> Result<Vec<(String, String)>> {
        let mut stmt = self.txn.prepare_cached(
            "SELECT DISTINCT team, channel FROM notifications
             WHERE incident_id = ?1 AND event = 'trigger' ORDER BY team, channel",
        )?;
        let rows = stmt
            .query_map([incident_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    // ---- on-call --------------------------------------------------------------

    /// Sets (replaces) a team's rotation.
    pub fn set_rotation(&mut self, team: &TeamName, r: &Rotation) -> Result<()> {
        let id = self.team_id(team)?;
        let members = serde_json::to_string(&r.members).map_err(|e| corrupt("members", e))?;
        self.txn.execute(
            "INSERT INTO oncall_rotations(team_id, members, handoff, anchor, utc_offset_minutes, updated_at, time_zone)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(team_id) DO UPDATE SET members = excluded.members, handoff = excluded.handoff,
               anchor = excluded.anchor, utc_offset_minutes = excluded.utc_offset_minutes,
               updated_at = excluded.updated_at, time_zone = excluded.time_zone",
            params![
                id,
                members,
                r.handoff.as_str(),
                r.anchor.as_millis(),
                r.utc_offset_minutes,
                self.now.as_millis(),
                r.time_zone
            ],
        )?;
        Ok(())
    }

    /// Removes a team's rotation; not found if it has none.
    pub fn remove_rotation(&mut self, team: &TeamName) -> Result<()> {
        let id = self.team_id(team)?;
        if self
            .txn
            .execute("DELETE FROM oncall_rotations WHERE team_id = ?1", [id])?
            == 0
        {
            return Err(StoreError::NotFound {
                kind: "rotation of team",
                name: team.to_string(),
            });
        }
        Ok(())
    }

    /// A team's rotation, if it has one.
    pub fn rotation(&self, team: &TeamName) -> Result<Option<Rotation>> {
        let id = self.team_id(team)?;
        let row = self
            .txn
            .query_row(
                "SELECT members, handoff, anchor, utc_offset_minutes, time_zone FROM oncall_rotations
                 WHERE team_id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(members, handoff, anchor, offset, time_zone)| {
            Ok(Rotation {
                members: serde_json::from_str::<Vec<TokenName>>(&members)
                    .map_err(|e| corrupt("rotation members", e))?,
                handoff: Handoff::parse(&handoff).ok_or_else(|| corrupt("handoff", &handoff))?,
                anchor: ts(anchor),
                utc_offset_minutes: offset as i32,
                time_zone,
            })
        })
        .transpose()
    }

    /// Adds an on-call override; returns its id.
    pub fn add_override(
        &mut self,
        team: &TeamName,
        member: &TokenName,
        starts_at: Timestamp,
        ends_at: Timestamp,
        by: Option<&str>,
    ) -> Result<i64> {
        let id = self.team_id(team)?;
        self.txn.execute(
            "INSERT INTO oncall_overrides(team_id, member, starts_at, ends_at, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                member.as_str(),
                starts_at.as_millis(),
                ends_at.as_millis(),
                by,
                self.now.as_millis()
            ],
        )?;
        Ok(self.txn.last_insert_rowid())
    }

    /// Removes an override of a team.
    pub fn remove_override(&mut self, team: &TeamName, override_id: i64) -> Result<()> {
        let id = self.team_id(team)?;
        if self.txn.execute(
            "DELETE FROM oncall_overrides WHERE team_id = ?1 AND id = ?2",
            params![id, override_id],
        )? == 0
        {
            return Err(StoreError::NotFound {
                kind: "override",
                name: format!("{team}/{override_id}"),
            });
        }
        Ok(())
    }

    /// A team's overrides, by start.
    pub fn overrides(&self, team: &TeamName) -> Result<Vec<OncallOverride>> {
        let id = self.team_id(team)?;
        let mut stmt = self.txn.prepare_cached(
            "SELECT id, member, starts_at, ends_at, created_by FROM oncall_overrides
             WHERE team_id = ?1 ORDER BY starts_at, id",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, m, s, e, by)| {
                Ok(OncallOverride {
                    id,
                    member: TokenName::parse(&m).map_err(|e| corrupt("override member", e))?,
                    starts_at: ts(s),
                    ends_at: ts(e),
                    created_by: by,
                })
            })
            .collect()
    }

    /// Sets (replaces) a team's escalation policy.
    pub fn set_escalation_policy(&mut self, team: &TeamName, p: &EscalationPolicy) -> Result<()> {
        let id = self.team_id(team)?;
        let levels = serde_json::to_string(&p.levels).map_err(|e| corrupt("levels", e))?;
        self.txn.execute(
            "INSERT INTO escalation_policies(team_id, levels, repeat, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(team_id) DO UPDATE SET levels = excluded.levels, repeat = excluded.repeat,
               updated_at = excluded.updated_at",
            params![id, levels, p.repeat, self.now.as_millis()],
        )?;
        Ok(())
    }

    /// A team's escalation policy (the default one when it set none).
    pub fn escalation_policy(&self, team: &TeamName) -> Result<EscalationPolicy> {
        let id = self.team_id(team)?;
        let row = self
            .txn
            .query_row(
                "SELECT levels, repeat FROM escalation_policies WHERE team_id = ?1",
                [id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        match row {
            None => Ok(EscalationPolicy::default()),
            Some((levels, repeat)) => Ok(EscalationPolicy {
                levels: serde_json::from_str(&levels).map_err(|e| corrupt("levels", e))?,
                repeat: repeat as u32,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::store;
    use tend_core::incident::{EscalationLevel, EscalationTarget};

    fn svc(store: &crate::Store) -> (ServiceName, TeamName) {
        let team = TeamName::parse("payments").unwrap();
        let name = ServiceName::parse("web").unwrap();
        store.write(|tx| tx.create_team(&team)).unwrap();
        (name, team)
    }

    fn alert(fp: &str, severity: &str) -> AlertUpsert {
        AlertUpsert {
            fingerprint: fp.into(),
            name: format!("rule-{fp}"),
            severity: severity.into(),
            labels: BTreeMap::from([("service".into(), "web".into())]),
            annotations: BTreeMap::from([("summary".into(), format!("{fp} is bad"))]),
            value: 0.5,
            starts_at: Timestamp::from_millis(1000),
        }
    }

    #[test]
    fn alerts_of_a_service_group_into_one_incident_that_resolves_with_them() {
        let (_d, store) = store();
        let (web, team) = svc(&store);
        let ctx = || IncidentContext {
            rollback: "tend rollback web".into(),
            ..Default::default()
        };
        let r = store
            .write(|tx| tx.record_firing(&web, &team, &alert("a", "ticket"), ctx))
            .unwrap();
        let Recorded::Opened(id) = r else {
            panic!("{r:?}")
        };
        // The same fingerprint again is deduplicated; a second one joins.
        let r = store
            .write(|tx| tx.record_firing(&web, &team, &alert("a", "ticket"), ctx))
            .unwrap();
        assert_eq!(
            r,
            Recorded::Joined {
                incident: id,
                new_alert: false
            }
        );
        let r = store
            .write(|tx| tx.record_firing(&web, &team, &alert("b", "page"), ctx))
            .unwrap();
        assert_eq!(
            r,
            Recorded::Joined {
                incident: id,
                new_alert: true
            }
        );
        let inc = store.read(|tx| tx.incident(id)).unwrap();
        assert_eq!(inc.alerts.len(), 2);
        assert_eq!(inc.severity, "page");
        assert_eq!(inc.title, "a is bad");
        assert_eq!(inc.team, team);
        assert_eq!(
            store.read(|tx| tx.incident_context(id)).unwrap().rollback,
            "tend rollback web"
        );

        assert_eq!(
            store.write(|tx| tx.record_resolved(&web, "a")).unwrap(),
            None
        );
        assert_eq!(
            store.write(|tx| tx.record_resolved(&web, "b")).unwrap(),
            Some(id)
        );
        let inc = store.read(|tx| tx.incident(id)).unwrap();
        assert_eq!(inc.state, IncidentState::Resolved);
        assert_eq!(inc.resolved_by, None);
        let kinds: Vec<String> = store
            .read(|tx| tx.incident_timeline(id))
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "opened",
                "alert.firing",
                "alert.firing",
                "severity.raised",
                "alert.resolved",
                "alert.resolved",
                "resolved"
            ]
        );
        let events = store.read(|tx| tx.events(&web, 10)).unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["incident.opened", "incident.resolved"]);
        // A new firing after resolution opens a new incident.
        let r = store
            .write(|tx| tx.record_firing(&web, &team, &alert("a", "ticket"), ctx))
            .unwrap();
        assert!(matches!(r, Recorded::Opened(n) if n != id));
    }

    #[test]
    fn ack_and_resolve_by_hand_with_filters() {
        let (_d, store) = store();
        let (web, team) = svc(&store);
        let r = store
            .write(|tx| {
                tx.record_firing(&web, &team, &alert("a", "page"), IncidentContext::default)
            })
            .unwrap();
        let Recorded::Opened(id) = r else { panic!() };
        store
            .write(|tx| tx.set_escalation(id, 0, 0, Some(Timestamp::from_millis(0))))
            .unwrap();
        assert_eq!(store.read(|tx| tx.due_escalations()).unwrap().len(), 1);
        let inc = store.write(|tx| tx.ack_incident(id, "alice")).unwrap();
        assert_eq!(inc.state, IncidentState::Acknowledged);
        assert!(store.read(|tx| tx.due_escalations()).unwrap().is_empty());
        let err = store.write(|tx| tx.ack_incident(id, "bob")).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let open = IncidentFilter {
            teams: Some(vec![team.clone()]),
            ..Default::default()
        };
        assert_eq!(store.read(|tx| tx.incidents(&open)).unwrap().len(), 1);
        let other = IncidentFilter {
            teams: Some(vec![TeamName::parse("search").unwrap()]),
            ..Default::default()
        };
        assert!(store.read(|tx| tx.incidents(&other)).unwrap().is_empty());
        store
            .write(|tx| tx.resolve_incident(id, Some("alice")))
            .unwrap();
        assert!(store.read(|tx| tx.incidents(&open)).unwrap().is_empty());
        let all = IncidentFilter {
            include_resolved: true,
            ..Default::default()
        };
        assert_eq!(store.read(|tx| tx.incidents(&all)).unwrap().len(), 1);
        let err = store
            .write(|tx| tx.resolve_incident(id, Some("x")))
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
        assert!(matches!(
            store.read(|tx| tx.incident(999)).unwrap_err(),
            StoreError::NotFound { .. }
        ));
    }

    #[test]
    fn outbox_claims_once_and_logs_attempts() {
        let (_d, store) = store();
        let (web, team) = svc(&store);
        let Recorded::Opened(id) = store
            .write(|tx| {
                tx.record_firing(&web, &team, &alert("a", "page"), IncidentContext::default)
            })
            .unwrap()
        else {
            panic!()
        };
        let n = NewNotification {
            incident_id: id,
            team: "payments".into(),
            channel: "hook".into(),
            kind: "webhook".into(),
            target: "http://127.0.0.1:9/".into(),
            event: "trigger".into(),
            payload: "{}".into(),
        };
        store.write(|tx| tx.enqueue_notification(&n)).unwrap();
        let claimed = store.write(|tx| tx.claim_notifications(10)).unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(store
            .write(|tx| tx.claim_notifications(10))
            .unwrap()
            .is_empty());
        store
            .write(|tx| tx.record_attempt(claimed[0].id, Some(503), Some("503"), false))
            .unwrap();
        store
            .write(|tx| tx.record_attempt(claimed[0].id, Some(200), None, true))
            .unwrap();
        let log = store.read(|tx| tx.deliveries(id)).unwrap();
        assert_eq!(log[0].status, "delivered");
        assert_eq!(log[0].attempts, 2);
        assert_eq!(
            store.read(|tx| tx.triggered_channels(id)).unwrap(),
            vec![("payments".to_string(), "hook".to_string())]
        );
    }

    #[test]
    fn rotation_overrides_and_policy_round_trip() {
        let (_d, store) = store();
        let (_, team) = svc(&store);
        assert_eq!(store.read(|tx| tx.rotation(&team)).unwrap(), None);
        assert_eq!(
            store.read(|tx| tx.escalation_policy(&team)).unwrap(),
            EscalationPolicy::default()
        );
        let r = Rotation {
            members: vec![TokenName::parse("alice").unwrap()],
            handoff: Handoff::Weekly,
            anchor: Timestamp::from_millis(5),
            utc_offset_minutes: -300,
            time_zone: Some("America/New_York".into()),
        };
        store.write(|tx| tx.set_rotation(&team, &r)).unwrap();
        assert_eq!(store.read(|tx| tx.rotation(&team)).unwrap(), Some(r));
        let p = EscalationPolicy {
            levels: vec![EscalationLevel {
                delay_secs: 30,
                targets: vec![EscalationTarget::Team],
            }],
            repeat: 2,
        };
        store
            .write(|tx| tx.set_escalation_policy(&team, &p))
            .unwrap();
        assert_eq!(store.read(|tx| tx.escalation_policy(&team)).unwrap(), p);
        let oid = store
            .write(|tx| {
                tx.add_override(
                    &team,
                    &TokenName::parse("bob").unwrap(),
                    Timestamp::from_millis(0),
                    Timestamp::from_millis(10),
                    Some("admin"),
                )
            })
            .unwrap();
        assert_eq!(store.read(|tx| tx.overrides(&team)).unwrap().len(), 1);
        store.write(|tx| tx.remove_override(&team, oid)).unwrap();
        assert!(store.write(|tx| tx.remove_override(&team, oid)).is_err());
    }
}
