//! tend's logs product: capture every instance's stdout/stderr, store it compressed,
//! query it and follow it, losing nothing across daemon crashes.
//!
//! # Data flow
//! The process runtime appends each instance's output (O_APPEND) to
//! `<data>/instances/<id>/{stdout,stderr}.log`. One ingest thread
//! (`tend-logs-ingest`) tails every watched file round-robin (at most
//! [`READ_BUDGET`] bytes per file per pass, so a flooding service cannot delay the
//! others), splits lines, applies each service's token bucket, lifts JSON fields,
//! appends the lines to the service's in-memory *active block*, and hands them to
//! `follow` subscribers. Queries read the stored blocks and the active block.
//!
//! # On-disk format (`<dir>/<service>/<first-seq:016x>.seg`)
//! A segment is the 8-byte magic `TENDSEG1` followed by blocks. A block is a
//! header (magic `TLB1`, crc32 of everything after the crc, header and payload
//! lengths, raw length, line count, min/max receive time, first seq, level and
//! stream masks, and the label table: release, instance, stream and capture-file
//! position of each source present, and a bloom filter of the text's trigrams)
//! followed by the zstd-compressed raw lines: a metadata column (one frame, level
//! 6), then the text column (`raw` + `\n` each) and the lifted messages (one frame,
//! level 1). Segments roll at `segment_bytes`.
//!
//! # Durability and fsync policy
//! - A block is written (one `write`) when the active block reaches
//!   [`BLOCK_RAW_BYTES`] of raw text, and at every *commit*.
//! - A commit runs every [`COMMIT_INTERVAL`] (1 s) while anything changed: write
//!   every active block, `fsync` every segment written since the last commit (and
//!   its directory when the segment is new), then write `<dir>/checkpoint.json`
//!   atomically (temp file, `fsync`, `rename`, `fsync` of the directory) with the
//!   capture-file offsets consumed so far, then punch holes in the capture files.
//!   A sealed segment is also `fsync`ed when it rolls.
//! - Each block's label table records, per capture file, its inode and the offset
//!   just past the block's last line of it. On restart the resume offset of a file
//!   is the larger of the checkpoint's and the newest recorded in a surviving
//!   block: so blocks written (or even fsynced) after the last checkpoint are not
//!   ingested twice, and lines of the lost active block (never in a checkpoint,
//!   never in a block) are read again from the capture file: no loss, no
//!   duplicate after `kill -9`. Platform lines ([`Logs::platform`]) have no
//!   capture file: a crash may lose the last second of them.
//! - On open, blocks past the length the checkpoint recorded as fsynced are
//!   crc-checked; the first block whose length or crc does not check out is
//!   truncated away with everything after it in that segment. Queries check every
//!   block's crc and skip (and log) a corrupt one instead of failing.
//!
//! # Retention
//! Sizes are checked after every block written, ages every 2 s: per service the
//! oldest whole segments beyond `retention_age` or `retention_bytes_per_service`
//! are deleted (never its open segment for size), then the globally oldest
//! segments (open ones included) until `retention_bytes_total` holds. So a budget
//! is exceeded by at most the open segment (which may overshoot `segment_bytes`
//! by its last block).
//!
//! # Bounded capture files
//! After each commit the durably ingested prefix of every capture file is freed
//! with `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` rounded down to
//! 4 KiB: the file keeps its logical size and the writer's O_APPEND offset. Where
//! the file system does not support it (EOPNOTSUPP, or the file cannot be opened
//! for writing) nothing is freed and the file grows until [`Logs::finish`]
//! deletes it. A capture file is never truncated.
//!
//! # Queries
//! A query snapshots the service's block index and active block, then scans the
//! index newest first on up to 4 threads, skipping blocks by their header (time
//! range, releases, instances, streams, levels, and for a grep the trigram bloom
//! filter against the literals every match must contain), searching a block's
//! whole text column at once and decoding its metadata only when there is a hit.
//! It stops as soon as no older block can enter the last `limit` lines.
//!
//! # Export
//! With [`LogConfig::export`] set to an [`ExportConfig`] with a `loki_url`, every
//! line appended to the store (instance output and platform lines) is also queued
//! for a Loki push API, from the same place that feeds followers. The queue is
//! bounded (`buffer_lines`, oldest dropped and counted, a platform line at most
//! once a minute) and pushing into it never waits for the network; a
//! `tend-logs-export` thread with its own current-thread tokio runtime batches
//! (`batch_lines` or `batch_wait`), pushes, and retries 429/5xx/connection errors
//! with backoff. Counters in [`LogStats`] (`export_*`). Details in `export.rs`.
//!
//! # Contract for callers
//! `watch` every instance when it starts or is adopted (idempotent; the sources of
//! the last checkpoint are resumed by `open` already, so lines written while the
//! daemon was down are read then). A crashed instance restarted under the same id
//! keeps its files: just keep it watched. Call `finish` once no process of that
//! instance id will write again (stopped for good, replaced): its files are read
//! to the end, the partial last line stored, then the files are deleted, unless a
//! process still has them open, in which case they stay watched. Run `query` off
//! the async runtime (`spawn_blocking`): it reads files.

mod checkpoint;
mod export;
mod filter;
mod follow;
mod ingest;
mod line;
mod segment;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use export::ExportConfig;
pub use line::parse_time;

/// Bytes read from one capture file per round-robin pass (fairness between sources).
pub const READ_BUDGET: usize = 256 * 1024;
/// Raw bytes after which the active block of a service is compressed and written.
pub const BLOCK_RAW_BYTES: usize = 256 * 1024;
/// How often buffered lines are written, fsynced and checkpointed.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a partial last line (no newline yet) waits before it is stored as a line.
pub const PARTIAL_LINE_WAIT: Duration = Duration::from_secs(1);
/// Capacity of a `follow` channel; a consumer further behind gets [`FollowItem::Lagged`].
pub const FOLLOW_CHANNEL: usize = 1024;

/// Configuration of the log store.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Directory of the store, `<data>/logs`.
    pub dir: PathBuf,
    /// Lines older than this are deleted (whole segments).
    pub retention_age: Duration,
    /// Store budget of one service.
    pub retention_bytes_per_service: u64,
    /// Store budget of all services together.
    pub retention_bytes_total: u64,
    /// Target compressed size of a segment.
    pub segment_bytes: u64,
    /// Longer lines are split into several lines of at most this many bytes.
    pub max_line_bytes: usize,
    /// Per-service ingestion rate (raw bytes per second); the burst is 2 s worth.
    pub rate_limit_bytes_per_sec: u64,
    /// Push every stored line to a Loki as well (None: keep them here only).
    /// See [`ExportConfig`] for batching, retries and the bounded buffer.
    pub export: Option<ExportConfig>,
}

impl LogConfig {
    /// The defaults (7 days, 1 GiB per service, 10 GiB total, 16 MiB segments,
    /// 16 KiB lines, 10 MiB/s per service, no export) with the store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            retention_age: Duration::from_secs(7 * 24 * 3600),
            retention_bytes_per_service: 1 << 30,
            retention_bytes_total: 10 << 30,
            segment_bytes: 16 << 20,
            max_line_bytes: 16 << 10,
            rate_limit_bytes_per_sec: 10 << 20,
            export: None,
        }
    }
}

/// Severity of a line, lifted from JSON output or set by the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// A failed operation.
    Error,
    /// The process cannot go on.
    Fatal,
}

impl Level {
    /// Lenient parse: case-insensitive names and common aliases ("warning", "err",
    /// "critical", ...), and the numeric levels of pino/bunyan (10..60).
    pub fn parse(s: &str) -> Option<Level> {
        let s = s.trim();
        if let Ok(n) = s.parse::<f64>() {
            return Level::from_number(n);
        }
        let mut buf = [0u8; 16];
        let b = s.as_bytes();
        if b.len() > buf.len() {
            return None;
        }
        for (d, c) in buf.iter_mut().zip(b) {
            *d = c.to_ascii_lowercase();
        }
        Some(match &buf[..b.len()] {
            b"trace" | b"trc" | b"verbose" | b"finest" | b"finer" => Level::Trace,
            b"debug" | b"dbg" | b"dbug" | b"fine" => Level::Debug,
            b"info" | b"inf" | b"information" | b"informational" | b"notice" => Level::Info,
            b"warn" | b"warning" | b"wrn" => Level::Warn,
            b"error" | b"err" | b"eror" | b"severe" => Level::Error,
            b"fatal" | b"critical" | b"crit" | b"panic" | b"alert" | b"emerg" | b"emergency"
            | b"dpanic" => Level::Fatal,
            _ => return None,
        })
    }

    /// pino/bunyan numeric levels: 10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal.
    pub fn from_number(n: f64) -> Option<Level> {
        Some(match n {
            n if (10.0..20.0).contains(&n) => Level::Trace,
            n if (20.0..30.0).contains(&n) => Level::Debug,
            n if (30.0..40.0).contains(&n) => Level::Info,
            n if (40.0..50.0).contains(&n) => Level::Warn,
            n if (50.0..60.0).contains(&n) => Level::Error,
            n if (60.0..=100.0).contains(&n) => Level::Fatal,
            _ => return None,
        })
    }

    /// Lower-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// 1..=6 (0 stands for "no level" in the block format).
    pub(crate) fn code(self) -> u8 {
        self as u8 + 1
    }

    pub(crate) fn from_code(c: u8) -> Option<Level> {
        Some(match c {
            1 => Level::Trace,
            2 => Level::Debug,
            3 => Level::Info,
            4 => Level::Warn,
            5 => Level::Error,
            6 => Level::Fatal,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::parse(s).ok_or_else(|| format!("unknown log level {s:?}"))
    }
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The instance's standard output.
    Stdout,
    /// The instance's standard error.
    Stderr,
    /// Written by tend itself (deploys, crashes, health, dropped-lines notices).
    Platform,
}

impl Stream {
    /// Lower-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Platform => "platform",
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(c: u8) -> Option<Stream> {
        Some(match c {
            0 => Stream::Stdout,
            1 => Stream::Stderr,
            2 => Stream::Platform,
            _ => return None,
        })
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "stdout" | "out" => Ok(Stream::Stdout),
            "stderr" | "err" => Ok(Stream::Stderr),
            "platform" | "tend" => Ok(Stream::Platform),
            _ => Err(format!("unknown stream {s:?} (stdout, stderr, platform)")),
        }
    }
}

/// An instance's output files, to be captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Service the instance belongs to (a DNS label).
    pub service: String,
    /// Team owning the service.
    pub team: String,
    /// Release the instance runs.
    pub release: u32,
    /// Instance id (unique, stable across crash restarts of the same instance).
    pub instance: String,
    /// The instance's stdout file.
    pub stdout: PathBuf,
    /// The instance's stderr file.
    pub stderr: PathBuf,
}

/// One stored line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogLine {
    /// Receive time (monotonic per source); RFC 3339 with milliseconds in JSON.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// Service name.
    pub service: String,
    /// Release of the instance that wrote it (None for some platform lines).
    pub release: Option<u32>,
    /// Instance that wrote it (None for some platform lines).
    pub instance: Option<String>,
    /// stdout, stderr or platform.
    pub stream: Stream,
    /// Level lifted from JSON (`level`/`lvl`/`severity`), or the platform's.
    pub level: Option<Level>,
    /// The JSON `msg`/`message` when present, else the whole line.
    pub message: String,
    /// The line as written (without its newline; invalid UTF-8 replaced by U+FFFD).
    pub raw: String,
    /// Per-service sequence number: the order lines entered the store.
    pub seq: u64,
    /// The time the line itself claims (JSON `time`/`ts`/`timestamp`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub app_time: Option<SystemTime>,
}

/// A text filter on the raw line.
#[derive(Clone, Debug)]
pub enum Grep {
    /// Lines the regex matches (anywhere in the line).
    Regex(regex::Regex),
    /// Lines containing this exact text.
    Substring(String),
}

/// Which lines to return (query) or stream (follow).
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// The service (required).
    pub service: String,
    /// Only lines received at or after this time.
    pub since: Option<SystemTime>,
    /// Only lines received before this time. Ignored by `follow`.
    pub until: Option<SystemTime>,
    /// Only lines of this release.
    pub release: Option<u32>,
    /// Only lines of this instance.
    pub instance: Option<String>,
    /// Only lines of this stream.
    pub stream: Option<Stream>,
    /// Only lines with a level at least this severe (lines without a level are excluded).
    pub min_level: Option<Level>,
    /// Only lines matching this.
    pub grep: Option<Grep>,
    /// The last `limit` matching lines (like tail); 0 = no limit. Ignored by `follow`.
    pub limit: usize,
}

impl Query {
    /// Every line of `service`, no limit.
    pub fn new(service: impl Into<String>) -> Self {
        Query {
            service: service.into(),
            ..Query::default()
        }
    }
}

/// An item of a `follow` stream.
#[derive(Clone, Debug, PartialEq)]
pub enum FollowItem {
    /// A new matching line.
    Line(LogLine),
    /// This many matching lines were skipped because the consumer was too slow.
    Lagged(u64),
}

/// Counters of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLogStats {
    /// Lines stored (including platform lines).
    pub lines_ingested: u64,
    /// Raw bytes stored.
    pub bytes_ingested: u64,
    /// Lines dropped by the rate limit.
    pub lines_dropped: u64,
    /// Raw bytes dropped by the rate limit.
    pub bytes_dropped: u64,
    /// Bytes of the service's segments on disk.
    pub store_bytes: u64,
    /// Number of segments on disk.
    pub segments: u64,
}

/// Counters of the whole store (since `open`, except the on-disk sizes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
    /// Lines stored.
    pub lines_ingested: u64,
    /// Raw bytes stored.
    pub bytes_ingested: u64,
    /// Lines dropped by rate limits.
    pub lines_dropped: u64,
    /// Raw bytes dropped by rate limits.
    pub bytes_dropped: u64,
    /// Bytes of all segments on disk.
    pub store_bytes: u64,
    /// Number of segments on disk.
    pub segments: u64,
    /// Capture files currently watched.
    pub watched_files: u64,
    /// Lines the export delivered (accepted by the receiver).
    #[serde(default)]
    pub export_sent: u64,
    /// Lines the export gave up on: buffer full (oldest dropped), or rejected
    /// by the receiver (a 4xx other than 429), or still failing at shutdown.
    #[serde(default)]
    pub export_dropped: u64,
    /// Delivery attempts repeated after a 429, a 5xx or a connection error.
    #[serde(default)]
    pub export_retries: u64,
    /// Per service.
    pub services: BTreeMap<String, ServiceLogStats>,
}

/// Errors of the log store; each names the file concerned.
#[derive(thiserror::Error, Debug)]
pub enum LogError {
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process (or `Logs`) has this store open.
    #[error("{}: the log store is in use by another process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The name is not a valid service name (a DNS label).
    #[error("invalid service name {0:?}")]
    InvalidService(String),
    /// A file of the store is damaged beyond what recovery handles.
    #[error("{}: corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LogError {
    let path = path.into();
    move |source| LogError::Io { path, source }
}

/// True for a DNS label: 1..=63 of `[a-z0-9-]`, not starting or ending with '-'.
pub(crate) fn valid_service(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Nanoseconds since the epoch (0 before it).
pub(crate) fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

pub(crate) fn from_nanos(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(n)
}

/// Serde helper: a `SystemTime` as RFC 3339 with milliseconds (`2026-01-02T03:04:05.678Z`).
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as RFC 3339 UTC with milliseconds.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    /// Parses RFC 3339 (any fraction, `Z` or a numeric offset).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        crate::line::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}")))
    }
}

/// Serde helper: an optional `SystemTime` as RFC 3339 with milliseconds.
pub mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some` as RFC 3339 UTC with milliseconds, `None` as null.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// Parses null or RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            None => Ok(None),
            Some(s) => crate::line::parse_rfc3339(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}"))),
        }
    }
}

/// How the ingest thread should stop.
pub(crate) const RUNNING: u8 = 0;
pub(crate) const STOP_GRACEFUL: u8 = 1;
pub(crate) const STOP_CRASH: u8 = 2;

/// Commands to the ingest thread.
pub(crate) enum Cmd {
    Watch(Source),
    Finish(String),
}

/// Counters of one service, updated without locks.
#[derive(Default)]
pub(crate) struct Counters {
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped_lines: AtomicU64,
    pub dropped_bytes: AtomicU64,
}

/// One service: its store, its followers, its counters.
pub(crate) struct Service {
    pub name: Arc<str>,
    pub store: Mutex<store::ServiceStore>,
    pub subs: follow::Subscribers,
    pub counters: Counters,
    /// Where stored lines are also queued for export, when it is enabled.
    pub export: Option<Arc<export::Hook>>,
}

/// State shared by the handles, the ingest thread and queries.
pub(crate) struct Shared {
    pub config: LogConfig,
    pub services: RwLock<HashMap<String, Arc<Service>>>,
    pub cmds: Mutex<mpsc::Sender<Cmd>>,
    pub stop: AtomicU8,
    pub watched_files: AtomicU64,
    pub export: Option<export::Exporter>,
    /// Held (flock) until shutdown so two daemons never ingest into one store.
    lock_file: Mutex<Option<std::fs::File>>,
}

impl Shared {
    /// The service, created (in memory; its directory on first write) if new.
    pub fn service(&self, name: &str) -> Result<Arc<Service>, LogError> {
        if let Some(s) = self
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(s.clone());
        }
        if !valid_service(name) {
            return Err(LogError::InvalidService(name.to_owned()));
        }
        let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
        let svc = map
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Service {
                    name: Arc::from(name),
                    store: Mutex::new(store::ServiceStore::new(self.config.dir.join(name))),
                    subs: follow::Subscribers::default(),
                    counters: Counters::default(),
                    export: self.export.as_ref().map(|e| e.hook.clone()),
                })
            })
            .clone();
        Ok(svc)
    }

    pub fn existing_service(&self, name: &str) -> Option<Arc<Service>> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all_services(&self) -> Vec<Arc<Service>> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Owns the ingest thread: the last `Logs` clone dropped stops it (gracefully).
struct Owner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Owner {
    fn stop(&self, how: u8) {
        let _ = self
            .shared
            .stop
            .compare_exchange(RUNNING, how, Ordering::SeqCst, Ordering::SeqCst);
        // Wake the thread if it sleeps on its command channel.
        drop(lock(&self.shared.cmds).send(Cmd::Finish(String::new())));
        if let Some(t) = lock(&self.thread).take() {
            if t.join().is_err() {
                tracing::error!("tend-logs: the ingest thread panicked");
            }
        }
        // After the ingest thread: every line it stored is queued by now.
        if let Some(e) = &self.shared.export {
            e.stop(self.shared.stop.load(Ordering::SeqCst) == STOP_CRASH);
        }
        // Nothing writes the store any more: another `Logs` may open it.
        drop(lock(&self.shared.lock_file).take());
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop(STOP_GRACEFUL);
    }
}

/// The log store and its ingestion; a cheap handle (clones share everything).
#[derive(Clone)]
pub struct Logs {
    owner: Arc<Owner>,
}

impl fmt::Debug for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logs")
            .field("dir", &self.owner.shared.config.dir)
            .finish()
    }
}

impl Logs {
    /// Opens the store (recovering a torn tail), resumes the sources of the last
    /// checkpoint, and starts the ingest thread (a dedicated OS thread; no tokio
    /// runtime is required).
    pub fn open(config: LogConfig) -> Result<Logs, LogError> {
        std::fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let lock_path = config.dir.join("LOCK");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a valid fd has no memory-safety preconditions.
            if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    LogError::Locked { path: lock_path }
                } else {
                    LogError::Io {
                        path: lock_path,
                        source: e,
                    }
                });
            }
        }
        let ck = checkpoint::Checkpoint::load(&config.dir)?;
        let exporter = config.export.as_ref().and_then(export::Exporter::new);
        if let Some(e) = &exporter {
            for s in &ck.sources {
                e.hook.set_team(&s.service, &s.team);
            }
        }
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            config,
            services: RwLock::new(HashMap::new()),
            cmds: Mutex::new(tx),
            stop: AtomicU8::new(RUNNING),
            watched_files: AtomicU64::new(0),
            export: exporter,
            lock_file: Mutex::new(Some(lock_file)),
        });
        store::open_all(&shared, &ck)?;
        if let Some(e) = &shared.export {
            let weak = Arc::downgrade(&shared);
            e.start(Box::new(move |service, n| {
                let Some(shared) = weak.upgrade() else { return };
                if let Some(svc) = shared.existing_service(service) {
                    let msg = format!("log export: {n} lines dropped (buffer full)");
                    ingest::append_platform(
                        &shared,
                        &svc,
                        None,
                        None,
                        Level::Warn,
                        &msg,
                        SystemTime::now(),
                    );
                }
            }))
            .map_err(io_err(&shared.config.dir))?;
        }
        let mut ingest = ingest::Ingest::new(shared.clone(), ck, rx);
        let thread = std::thread::Builder::new()
            .name("tend-logs-ingest".into())
            .spawn(move || ingest.run())
            .map_err(io_err(&shared.config.dir))?;
        Ok(Logs {
            owner: Arc::new(Owner {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    fn send(&self, cmd: Cmd) {
        // The receiver lives as long as the ingest thread; after shutdown commands are moot.
        drop(lock(&self.shared().cmds).send(cmd));
    }

    /// Starts (or keeps) ingesting an instance's output files. Idempotent; resumes
    /// from the persisted offset of each file; cancels a pending `finish` of it.
    pub fn watch(&self, source: Source) {
        if !valid_service(&source.service) {
            tracing::warn!(service = %source.service, "tend-logs: watch of an invalid service name ignored");
            return;
        }
        if let Some(e) = &self.shared().export {
            e.hook.set_team(&source.service, &source.team);
        }
        self.send(Cmd::Watch(source));
    }

    /// The instance is gone: ingest what remains in its files (a partial last line
    /// included), then stop watching them and delete them once durably ingested.
    pub fn finish(&self, instance: &str) {
        if instance.is_empty() {
            return;
        }
        self.send(Cmd::Finish(instance.to_owned()));
    }

    /// Writes a platform line (deploy, crash, health events) into the service's
    /// stream (`stream = platform`); visible to queries and followers at once.
    /// Newlines in `message` become spaces.
    pub fn platform(
        &self,
        service: &str,
        release: Option<u32>,
        instance: Option<&str>,
        level: Level,
        message: &str,
    ) {
        match self.shared().service(service) {
            Ok(svc) => ingest::append_platform(
                self.shared(),
                &svc,
                release,
                instance,
                level,
                message,
                SystemTime::now(),
            ),
            Err(e) => tracing::warn!(error = %e, "tend-logs: platform line dropped"),
        }
    }

    /// Stored lines of `q.service` matching `q`, in time order (then seq), the last
    /// `q.limit` of them. Reads files: call it off the async runtime.
    pub fn query(&self, q: &Query) -> Result<Vec<LogLine>, LogError> {
        if !valid_service(&q.service) {
            return Err(LogError::InvalidService(q.service.clone()));
        }
        match self.shared().existing_service(&q.service) {
            Some(svc) => store::query(&svc, q),
            None => Ok(Vec::new()),
        }
    }

    /// Lines matching `q` (`since`, `until` and `limit` ignored) as they are
    /// ingested from now on, across instances and releases of the service. The
    /// channel holds [`FOLLOW_CHANNEL`] items; a slower consumer gets
    /// [`FollowItem::Lagged`] with the number of lines it missed, and never slows
    /// ingestion. Dropping the receiver ends the subscription.
    pub fn follow(&self, q: &Query) -> tokio::sync::mpsc::Receiver<FollowItem> {
        let (tx, rx) = tokio::sync::mpsc::channel(FOLLOW_CHANNEL);
        match self.shared().service(&q.service) {
            Ok(svc) => svc.subs.add(filter::Filter::new(q), tx),
            Err(e) => tracing::warn!(error = %e, "tend-logs: follow of an invalid service"),
        }
        rx
    }

    /// Counters: ingested and dropped lines/bytes, store bytes and segments, per service.
    pub fn stats(&self) -> LogStats {
        let mut st = LogStats {
            watched_files: self.shared().watched_files.load(Ordering::Relaxed),
            ..LogStats::default()
        };
        if let Some(e) = &self.shared().export {
            st.export_sent = e.hook.sent.load(Ordering::Relaxed);
            st.export_dropped = e.hook.dropped.load(Ordering::Relaxed);
            st.export_retries = e.hook.retries.load(Ordering::Relaxed);
        }
        for svc in self.shared().all_services() {
            let c = &svc.counters;
            let (store_bytes, segments) = {
                let s = lock(&svc.store);
                (s.bytes(), s.segment_count() as u64)
            };
            let s = ServiceLogStats {
                lines_ingested: c.lines.load(Ordering::Relaxed),
                bytes_ingested: c.bytes.load(Ordering::Relaxed),
                lines_dropped: c.dropped_lines.load(Ordering::Relaxed),
                bytes_dropped: c.dropped_bytes.load(Ordering::Relaxed),
                store_bytes,
                segments,
            };
            st.lines_ingested += s.lines_ingested;
            st.bytes_ingested += s.bytes_ingested;
            st.lines_dropped += s.lines_dropped;
            st.bytes_dropped += s.bytes_dropped;
            st.store_bytes += s.store_bytes;
            st.segments += s.segments;
            st.services.insert(svc.name.to_string(), s);
        }
        st
    }

    /// Writes everything buffered, checkpoints, and stops ingestion (idempotent).
    /// Dropping the last clone does the same; later calls on any clone are no-ops
    /// except `query` and `stats`.
    pub fn shutdown(&self) {
        self.owner.stop(STOP_GRACEFUL);
    }

    /// Stops ingestion at once without writing buffered lines or a checkpoint, as
    /// `kill -9` would (what was already written to files stays). For crash tests.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        self.owner.stop(STOP_CRASH);
    }
}
