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
