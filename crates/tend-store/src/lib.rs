//! tend's control-plane state store.
//!
//! Everything the control plane knows — teams, tokens (hashes only), services with
//! their current spec, releases, deployments, instances, events and the audit
//! trail — lives in one SQLite database, `state.db`, in the data directory.
//!
//! Durability: the database runs in WAL mode with `synchronous = FULL`, so a
//! transaction that [`Store::write`] returned from is on disk; a `kill -9` (or a
//! power cut) right after an acknowledged API write loses nothing.
//!
//! No other crate writes SQL: callers get a [`Tx`] with domain methods.

mod alerts;
mod audit;
mod deploy;
mod events;
mod migrations;
mod secrets;
mod services;
mod teams;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tend_core::Timestamp;

pub use alerts::{AlertUpsert, NewNotification, OutboxItem, Recorded, StateChange};
pub use audit::AuditQuery;
pub use deploy::{ConfigVars, Desired, InstanceRecord, ReleaseRecord};
pub use secrets::{SecretMeta, SecretSet, StoredSecret};
pub use services::{ServiceRecord, UpsertOutcome};
pub use tokens::{NewToken, TokenLookup};

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "state.db";

/// Errors of the store. Callers map them to HTTP status codes by variant.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{kind} `{name}` not found")]
    NotFound {
        /// What was looked for (`team`, `service`, `token`).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The change conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// The database was written by a newer tend.
    #[error("the database at {path} has schema version {found}, newer than this tend knows ({known}); upgrade tend")]
    TooNew {
        /// Path of the database.
        path: PathBuf,
        /// Version found in the file.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
    /// Data in the database cannot be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// SQLite itself failed (I/O, disk full, locked, ...).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be prepared.
    #[error("cannot use data directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The control-plane database. Cheap to share behind an `Arc`; calls block, so
/// async callers run them on a blocking thread.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) `state.db` in `data_dir` and migrates it to the
    /// current schema.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Self::from_connection(conn, path)
    }

    fn from_connection(mut conn: Connection, path: PathBuf) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit is fsynced, so an acknowledged write survives a crash
        // of the machine, not only of the process. Control-plane writes are rare.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrate(&mut conn, &path)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a read transaction (a consistent snapshot).
    pub fn read<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.transaction(TransactionBehavior::Deferred, |tx| f(tx))
    }

    /// Runs `f` in a write transaction, committed only if `f` returns `Ok`.
    ///
    /// When this returns `Ok`, the change is durable.
    pub fn write<T, E>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.transaction(TransactionBehavior::Immediate, f)
    }

    fn transaction<T, E>(
        &self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        // A panic while holding the lock leaves the connection usable (the
        // transaction is rolled back on drop), so a poisoned lock is recovered.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let txn = conn
            .transaction_with_behavior(behavior)
            .map_err(StoreError::from)?;
        let mut tx = Tx {
            txn,
            now: Timestamp::from_system_time(SystemTime::now()),
        };
        let out = f(&mut tx)?;
        tx.txn.commit().map_err(StoreError::from)?;
        Ok(out)
    }
}

/// A transaction on the store, with the domain operations as methods.
pub struct Tx<'c> {
    txn: rusqlite::Transaction<'c>,
    now: Timestamp,
}

impl Tx<'_> {
    /// The time this transaction stamps on what it writes.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Reads a value from the metadata table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .txn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets a value in the metadata table.
    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.txn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn opt_ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }
}
