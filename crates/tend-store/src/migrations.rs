//! Schema migrations, versioned in code.
//!
//! Each entry of [`MIGRATIONS`] moves the schema one version forward and runs in
//! the same transaction as the bump of `PRAGMA user_version`, so a crash midway
//! leaves the previous version intact. Never edit a released migration; append.

use std::path::Path;

use rusqlite::Connection;

use crate::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // v1: the foundation.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE teams (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE channels (
        id      INTEGER PRIMARY KEY,
        team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        name    TEXT NOT NULL,
        kind    TEXT NOT NULL,
        target  TEXT NOT NULL,
        UNIQUE (team_id, name)
    ) STRICT;

    CREATE TABLE tokens (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL,
        hash         BLOB NOT NULL UNIQUE,
        admin        INTEGER NOT NULL DEFAULT 0,
        created_at   INTEGER NOT NULL,
        created_by   TEXT,
        expires_at   INTEGER,
        revoked_at   INTEGER,
        last_used_at INTEGER
    ) STRICT;
    -- Names identify active tokens; a revoked name may be reused.
    CREATE UNIQUE INDEX tokens_active_name ON tokens(name) WHERE revoked_at IS NULL;

    CREATE TABLE token_teams (
        token_id INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
        team_id  INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        PRIMARY KEY (token_id, team_id)
    ) STRICT;

    CREATE TABLE services (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        team_id     INTEGER NOT NULL REFERENCES teams(id) ON DELETE RESTRICT,
        description TEXT NOT NULL DEFAULT '',
        spec        TEXT NOT NULL,
        manifest    TEXT NOT NULL,
        generation  INTEGER NOT NULL DEFAULT 1,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        -- Desired state of the runtime: which release runs, how many, or none.
        desired_release INTEGER,
        scale           INTEGER,
        stopped         INTEGER NOT NULL DEFAULT 0
    ) STRICT;

    -- Immutable once written: a release is an artifact plus the spec it runs with.
    CREATE TABLE releases (
        id          INTEGER PRIMARY KEY,
        service_id  INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        spec        TEXT NOT NULL,
        artifact    TEXT NOT NULL,
        config      TEXT NOT NULL DEFAULT '{}',
        description TEXT NOT NULL DEFAULT '',
        created_at  INTEGER NOT NULL,
        created_by  TEXT,
        UNIQUE (service_id, version)
    ) STRICT;

    CREATE TABLE deployments (
        id          INTEGER PRIMARY KEY,
        service_id  INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        kind        TEXT NOT NULL,
        release     INTEGER,
        previous    INTEGER,
        state       TEXT NOT NULL,
        reason      TEXT,
        steps       TEXT NOT NULL DEFAULT '[]',
        actor       TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX deployments_service ON deployments(service_id, id);

    -- An instance row is written before its process starts (handle NULL), so a
    -- crash between the two leaves a record to reconcile, never an unknown process.
    CREATE TABLE instances (
        id          TEXT PRIMARY KEY,
        service_id  INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        release     INTEGER NOT NULL,
        port        INTEGER NOT NULL,
        state       TEXT NOT NULL,
        handle      TEXT,
        restarts    INTEGER NOT NULL DEFAULT 0,
        last_exit   TEXT,
        created_at  INTEGER NOT NULL,
        started_at  INTEGER,
        updated_at  INTEGER NOT NULL
    ) STRICT;

    -- Events outlive their service: the timeline of a deleted service stays readable.
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        time     INTEGER NOT NULL,
        service  TEXT NOT NULL,
        kind     TEXT NOT NULL,
        message  TEXT NOT NULL,
        actor    TEXT
    ) STRICT;
    CREATE INDEX events_service_time ON events(service, time);

    CREATE TABLE audit (
        id       INTEGER PRIMARY KEY,
        time     INTEGER NOT NULL,
        actor    TEXT,
        action   TEXT NOT NULL,
        target   TEXT NOT NULL,
        team     TEXT,
        outcome  TEXT NOT NULL,
        client   TEXT,
        detail   TEXT
    ) STRICT;
    CREATE INDEX audit_team ON audit(team, id);
    "#,
    // v2: config vars per service, versioned with releases.
    r#"
    ALTER TABLE releases ADD COLUMN config_version INTEGER NOT NULL DEFAULT 0;

    CREATE TABLE service_config (
        service_id  INTEGER PRIMARY KEY REFERENCES services(id) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        vars        TEXT NOT NULL,
        updated_at  INTEGER NOT NULL,
        updated_by  TEXT
    ) STRICT;
    "#,
    // v3: encrypted secrets per service, versioned with releases. Only
    // ciphertexts and wrapped data keys: plaintext is never stored.
    r#"
    CREATE TABLE secret_data_keys (
        id            TEXT PRIMARY KEY,
        master_key_id TEXT NOT NULL,
        nonce         BLOB NOT NULL,
        wrapped       BLOB NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;

    -- One row per value ever set: releases refer to (name, version).
    CREATE TABLE secret_values (
        id          INTEGER PRIMARY KEY,
        service_id  INTEGER NOT NULL REFERENCES services(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        nonce       BLOB NOT NULL,
        ciphertext  BLOB NOT NULL,
        data_key_id TEXT NOT NULL REFERENCES secret_data_keys(id),
        set_by      TEXT,
        set_at      INTEGER NOT NULL,
        UNIQUE (service_id, name, version)
    ) STRICT;
    -- Each value has a data key of its own: it goes with the value.
    CREATE TRIGGER secret_values_drop_key AFTER DELETE ON secret_values BEGIN
        DELETE FROM secret_data_keys WHERE id = OLD.data_key_id;
    END;

    -- The service's current secrets: name -> version, as JSON.
    CREATE TABLE service_secrets (
        service_id  INTEGER PRIMARY KEY REFERENCES services(id) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        entries     TEXT NOT NULL,
        updated_at  INTEGER NOT NULL,
        updated_by  TEXT
    ) STRICT;

    ALTER TABLE releases ADD COLUMN secrets_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE releases ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}';
    "#,
    // v4: alerting — incidents with their alerts and timeline, the outbox
    // of notifications (the delivery log), on-call rotations, overrides and
    // escalation policies. Incidents keep service and team by name, like
    // events: they outlive the service.
    r#"
    CREATE TABLE incidents (
        id                 INTEGER PRIMARY KEY,
        service            TEXT NOT NULL,
        team               TEXT NOT NULL,
        state              TEXT NOT NULL,
        severity           TEXT NOT NULL,
        title              TEXT NOT NULL,
        context            TEXT NOT NULL DEFAULT '{}',
        opened_at          INTEGER NOT NULL,
        acked_at           INTEGER,
        acked_by           TEXT,
        resolved_at        INTEGER,
        resolved_by        TEXT,
        escalation_level   INTEGER NOT NULL DEFAULT 0,
        escalation_round   INTEGER NOT NULL DEFAULT 0,
        next_escalation_at INTEGER,
        notified_state     TEXT,
        updated_at         INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX incidents_open ON incidents(service) WHERE state != 'resolved';
    CREATE INDEX incidents_team ON incidents(team, id);

    CREATE TABLE incident_alerts (
        incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        name        TEXT NOT NULL,
        severity    TEXT NOT NULL,
        labels      TEXT NOT NULL,
        annotations TEXT NOT NULL,
        value       REAL NOT NULL,
        status      TEXT NOT NULL,
        starts_at   INTEGER NOT NULL,
        ends_at     INTEGER,
        PRIMARY KEY (incident_id, fingerprint)
    ) STRICT;

    CREATE TABLE incident_timeline (
        id          INTEGER PRIMARY KEY,
        incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
        time        INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        actor       TEXT,
        detail      TEXT NOT NULL
    ) STRICT;
    CREATE INDEX incident_timeline_incident ON incident_timeline(incident_id, id);

    CREATE TABLE notifications (
        id           INTEGER PRIMARY KEY,
        incident_id  INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
        team         TEXT NOT NULL,
        channel      TEXT NOT NULL,
        kind         TEXT NOT NULL,
        target       TEXT NOT NULL,
        event        TEXT NOT NULL,
        payload      TEXT NOT NULL,
        status       TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        http_status  INTEGER,
        last_error   TEXT,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        delivered_at INTEGER
    ) STRICT;
    CREATE INDEX notifications_incident ON notifications(incident_id, id);
    CREATE INDEX notifications_queue ON notifications(status, id)
        WHERE status IN ('pending', 'sending');

    CREATE TABLE oncall_rotations (
        team_id            INTEGER PRIMARY KEY REFERENCES teams(id) ON DELETE CASCADE,
        members            TEXT NOT NULL,
        handoff            TEXT NOT NULL,
        anchor             INTEGER NOT NULL,
        utc_offset_minutes INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE oncall_overrides (
        id         INTEGER PRIMARY KEY,
        team_id    INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        member     TEXT NOT NULL,
        starts_at  INTEGER NOT NULL,
        ends_at    INTEGER NOT NULL,
        created_by TEXT,
        created_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE escalation_policies (
        team_id    INTEGER PRIMARY KEY REFERENCES teams(id) ON DELETE CASCADE,
        levels     TEXT NOT NULL,
        repeat     INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL
    ) STRICT;
    "#,
    // v5: a rotation's IANA time zone (hand-offs follow its daylight saving);
    // the member a channel belongs to (their own pager or mailbox).
    r#"
    ALTER TABLE oncall_rotations ADD COLUMN time_zone TEXT;
    ALTER TABLE channels ADD COLUMN member TEXT;
    "#,
];

/// The schema version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > latest() {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known: latest(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[test]
    fn migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let store = Store::open(dir.path()).unwrap();
        let v: i64 = store
            .conn
            .lock()
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, latest());
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(crate::DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }
}
