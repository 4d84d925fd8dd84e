//! tend's metrics core: an embedded time-series database (head + WAL +
//! Gorilla-compressed blocks with an inverted index), a PromQL engine with
//! Prometheus semantics ([`promql`]), and the Prometheus/OpenMetrics
//! exposition parser ([`exposition`]).
//!
//! On disk under `TsdbConfig::dir`:
//! - `lock`: flock'ed while a process has the store open.
//! - `wal/NNNNNNNN`: segments of `[len u32][crc32 u32][payload]` records
//!   (series: ref + labels; samples: base time, then ref, Δt, f64 bits).
//!   Each segment starts with every live series, so old segments are
//!   deleted once their samples are in blocks. A torn tail is truncated.
//! - `blocks/block_<mint>_<maxt>/{chunks,index,meta.json}`: immutable
//!   blocks of one `block_span`; `chunks` holds Gorilla chunks (≤120
//!   samples, crc32 each), `index` the symbol table, series → chunk refs
//!   and postings (label pair → sorted series ids). Written to `tmp_*`
//!   and renamed; retention deletes whole blocks.

#![warn(missing_docs)]

mod block;
pub mod chunk;
mod enc;
pub mod exposition;
mod head;
mod index;
mod labels;
pub mod promql;
pub mod remote_write;
mod wal;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

pub use head::SERVICE_LABEL;
pub use index::{anchored, Matcher};
pub use labels::{Label, Labels, METRIC_NAME};

use block::Block;
use head::Head;

/// The bit pattern Prometheus uses to mark a series stale (a special NaN).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// True when `v` is the staleness marker.
#[inline]
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Configuration of a [`Tsdb`].
#[derive(Clone, Debug)]
pub struct TsdbConfig {
    /// Data directory (created if missing).
    pub dir: PathBuf,
    /// Blocks whose newest sample is older than this (relative to the newest data) are dropped.
    pub retention: Duration,
    /// Oldest blocks are dropped while blocks + WAL exceed this many bytes.
    pub max_bytes: u64,
    /// How often the background thread writes and fsyncs the WAL.
    pub wal_flush: Duration,
    /// Time span of one block (also the alignment of block boundaries).
    pub block_span: Duration,
    /// Series limit per value of the `service` label (series without it share one budget).
    pub max_series_per_service: usize,
}

impl TsdbConfig {
    /// Defaults: 15 d retention, 8 GiB, 1 s WAL flush, 2 h blocks, 10 000 series per service.
    pub fn new(dir: impl Into<PathBuf>) -> TsdbConfig {
        TsdbConfig {
            dir: dir.into(),
            retention: Duration::from_secs(15 * 24 * 3600),
            max_bytes: 8 << 30,
            wal_flush: Duration::from_secs(1),
            block_span: Duration::from_secs(2 * 3600),
            max_series_per_service: 10_000,
        }
    }
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    /// An I/O error on a file of the store.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file failed validation (bad magic, checksum or structure).
    #[error("{}: corrupt: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// What happened to a batch passed to [`Tsdb::append`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendStats {
    /// Samples stored.
    pub appended: usize,
    /// Samples of new series refused by the per-service cardinality limit.
    pub rejected: usize,
    /// Samples older than (or at the time of, with another value) the series' last sample.
    pub out_of_order: usize,
    /// Samples older than the head (already persisted in blocks).
    pub out_of_bounds: usize,
    /// Exact repeats of the last sample (ignored, as in Prometheus).
    pub duplicates: usize,
}

/// A series with its samples `(timestamp ms, value)`, sorted by time.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series identity.
    pub labels: Labels,
    /// Samples sorted by timestamp.
    pub samples: Vec<(i64, f64)>,
}

/// Store statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TsdbStats {
    /// Series in the head (active series).
    pub head_series: u64,
    /// Samples in the head.
    pub head_samples: u64,
    /// Bytes of compressed head chunks.
    pub head_chunk_bytes: u64,
    /// Number of on-disk blocks.
    pub blocks: u64,
    /// Samples in blocks.
    pub block_samples: u64,
    /// Bytes of compressed chunks in blocks.
    pub block_chunk_bytes: u64,
    /// Samples overall.
    pub samples: u64,
    /// Bytes on disk: blocks (chunks, index, meta) and WAL.
    pub disk_bytes: u64,
    /// Bytes of WAL segments (including not yet written buffer).
    pub wal_bytes: u64,
    /// Compressed chunk bytes per sample (blocks and head together).
    pub bytes_per_sample: f64,
    /// Series count per `service` label value in the head.
    pub series_per_service: BTreeMap<String, u64>,
}

struct Inner {
    cfg: TsdbConfig,
    head: RwLock<Head>,
    // Swapped under the head write lock so that a reader holding the head
    // read lock sees head and blocks consistently.
    blocks: RwLock<Arc<Vec<Arc<Block>>>>,
    wal: wal::Wal,
    compact_lock: Mutex<()>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    crashed: AtomicBool,
    // Held for the store's lifetime: an exclusive flock on `<dir>/lock`.
    _lock: fs::File,
}

/// The time-series database. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Tsdb {
    inner: Arc<Inner>,
}

/// Compressed chunks per series, in time order.
type ChunksByLabels = Vec<(Labels, Vec<Arc<[u8]>>)>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TsdbError + '_ {
    move |source| TsdbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Tsdb {
    /// Opens (or creates) the store: loads blocks, replays the WAL (a torn
    /// tail is truncated) and starts the WAL flush thread.
    pub fn open(cfg: TsdbConfig) -> Result<Tsdb, TsdbError> {
        if cfg.block_span < Duration::from_millis(1) {
            return Err(TsdbError::Config("block_span must be at least 1ms".into()));
        }
        let blocks_dir = cfg.dir.join("blocks");
        fs::create_dir_all(&blocks_dir).map_err(io_err(&blocks_dir))?;
        let lock = lock_dir(&cfg.dir)?;
        let mut blocks = Vec::new();
        for e in fs::read_dir(&blocks_dir).map_err(io_err(&blocks_dir))? {
            let e = e.map_err(io_err(&blocks_dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.starts_with("tmp_") {
                // Leftover of an interrupted block write or deletion.
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else if name.starts_with("block_") {
                match Block::open(&path) {
                    Ok(b) => blocks.push(Arc::new(b)),
                    Err(err) => {
                        tracing::error!(block = %path.display(), %err, "skipping unreadable block")
                    }
                }
            }
        }
        blocks.sort_by_key(|b| b.meta.min_t);
        let min_valid_t = blocks.last().map(|b| b.meta.max_t + 1).unwrap_or(i64::MIN);
        let mut head = Head::new(ms(cfg.block_span), cfg.max_series_per_service, min_valid_t);
        let wal = wal::Wal::open(&cfg.dir.join("wal"), |_, rec| head.replay(rec))?;
        head.finish_replay();
        // The fresh segment starts with every live series so older ones can go.
        wal.append(&head.series_dump(), &[], i64::MIN)?;
        wal.flush()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let inner = Arc::new(Inner {
            head: RwLock::new(head),
            blocks: RwLock::new(Arc::new(blocks)),
            wal,
            compact_lock: Mutex::new(()),
            stop: stop.clone(),
            crashed: AtomicBool::new(false),
            _lock: lock,
            cfg,
        });
        let weak = Arc::downgrade(&inner);
        let every = inner.cfg.wal_flush.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("tsdb-wal-flush".into())
            .spawn(move || flush_loop(weak, stop, every))
            .map_err(io_err(&inner.cfg.dir))?;
        let db = Tsdb { inner };
        db.apply_retention()?;
        Ok(db)
    }

    /// The configuration in use.
    pub fn config(&self) -> &TsdbConfig {
        &self.inner.cfg
    }

    /// Appends samples `(labels, timestamp ms, value)`. Samples of new series
    /// beyond the per-service limit, out-of-order and too-old samples are
    /// counted in the returned stats, not errors.
    pub fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendStats, TsdbError> {
        let mut head = self.inner.head.write();
        let st = head.append(samples, &self.inner.wal)?;
        if self.inner.wal.wants_cut() {
            let dump = head.series_dump();
            self.inner.wal.cut(&dump)?;
        }
        Ok(st)
    }

    /// Writes and fsyncs the WAL (also done every `wal_flush` in the background).
    pub fn flush(&self) -> Result<(), TsdbError> {
        self.inner.wal.flush()
    }

    /// Persists head data into blocks while the head spans more than 1.5 ×
    /// `block_span` (so half a span stays in memory for late samples and
    /// recent queries), then applies retention. The background thread runs
    /// it every minute; calling it directly is safe at any time.
    pub fn compact(&self) -> Result<(), TsdbError> {
        let _g = self.inner.compact_lock.lock();
        let span = ms(self.inner.cfg.block_span);
        let blocks_dir = self.inner.cfg.dir.join("blocks");
        loop {
            let boundary = {
                let head = self.inner.head.read();
                let (min_t, max_t) = (head.min_t(), head.max_t);
                if min_t == i64::MAX || max_t.saturating_sub(min_t) <= span.saturating_mul(3) / 2 {
                    break;
                }
                (min_t.div_euclid(span) + 1).saturating_mul(span)
            };
            let data = self.inner.head.write().prepare_compaction(boundary);
            let block = block::write(&blocks_dir, &data)?;
            drop(data);
            let mut head = self.inner.head.write();
            head.truncate(boundary);
            if let Some(b) = block {
                let mut bl = self.inner.blocks.write();
                let mut v: Vec<Arc<Block>> = bl.iter().cloned().collect();
                v.push(Arc::new(b));
                v.sort_by_key(|b| b.meta.min_t);
                *bl = Arc::new(v);
            }
            let dump = head.series_dump();
            self.inner.wal.cut(&dump)?;
            self.inner.wal.truncate(boundary)?;
        }
        self.apply_retention()
    }

    /// Drops whole blocks older than `retention` or beyond `max_bytes`.
    fn apply_retention(&self) -> Result<(), TsdbError> {
        let retention = ms(self.inner.cfg.retention);
        let (head_max, wal_bytes) = (self.inner.head.read().max_t, self.inner.wal.size_bytes());
        let mut bl = self.inner.blocks.write();
        let newest = bl
            .last()
            .map(|b| b.meta.max_t)
            .unwrap_or(i64::MIN)
            .max(head_max);
        let cutoff = newest.saturating_sub(retention);
        let mut keep: Vec<Arc<Block>> = bl
            .iter()
            .filter(|b| b.meta.max_t >= cutoff)
            .cloned()
            .collect();
        let mut total: u64 = wal_bytes + keep.iter().map(|b| b.size_bytes).sum::<u64>();
        while total > self.inner.cfg.max_bytes && !keep.is_empty() {
            let b = keep.remove(0);
            total -= b.size_bytes;
        }
        if keep.len() == bl.len() {
            return Ok(());
        }
        let dropped: Vec<Arc<Block>> = bl
            .iter()
            .filter(|b| !keep.iter().any(|k| Arc::ptr_eq(k, b)))
            .cloned()
            .collect();
        *bl = Arc::new(keep);
        drop(bl);
        for b in dropped {
            // Rename first so a crash mid-delete leaves a tmp_ dir that open() cleans up.
            let name = b
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = b.dir.with_file_name(format!("tmp_del_{name}"));
            fs::rename(&b.dir, &tmp).map_err(io_err(&b.dir))?;
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
            tracing::info!(block = %name, "retention: dropped block");
        }
        Ok(())
    }

    /// Collects compressed chunks of matching series overlapping `[mint, maxt]`, merged by labels.
    fn select_chunks(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<ChunksByLabels, TsdbError> {
        let mut head_part: ChunksByLabels = Vec::new();
        let blocks = {
            let head = self.inner.head.read();
            for id in head.resolve(matchers) {
                let s = &head.series[id as usize];
                let mut cs = Vec::new();
                s.chunks_in(mint, maxt, &mut cs);
                if !cs.is_empty() {
                    head_part.push((s.labels.clone(), cs));
                }
            }
            self.inner.blocks.read().clone()
        };
        // Blocks in time order, then the head: chunks of a series stay in time order.
        let mut out: ChunksByLabels = Vec::new();
        let mut idx: labels::LabelsMap<Labels, usize> = labels::LabelsMap::default();
        for b in blocks
            .iter()
            .filter(|b| b.meta.max_t >= mint && b.meta.min_t <= maxt)
        {
            for id in b.resolve(matchers) {
                let mut cs = Vec::new();
                b.read_chunks(id, mint, maxt, &mut cs)?;
                if cs.is_empty() {
                    continue;
                }
                let l = &b.series[id as usize].labels;
                match idx.get(l) {
                    Some(&i) => out[i].1.extend(cs),
                    None => {
                        idx.insert(l.clone(), out.len());
                        out.push((l.clone(), cs));
                    }
                }
            }
        }
        if out.is_empty() {
            out = head_part;
        } else {
            for (l, cs) in head_part {
                match idx.get(&l) {
                    Some(&i) => out[i].1.extend(cs),
                    None => out.push((l, cs)),
                }
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Samples of the series matching all `matchers` with `start_ms <= t <= end_ms`, sorted by labels.
    pub fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Series>, TsdbError> {
        let chunks = self.select_chunks(matchers, start_ms, end_ms)?;
        let mut out = Vec::with_capacity(chunks.len());
        for (labels, cs) in chunks {
            let mut samples = Vec::new();
            for c in &cs {
                if !chunk::decode_range(c, start_ms, end_ms, &mut samples) {
                    tracing::error!(series = %labels, "corrupt chunk skipped");
                }
            }
            if !samples.is_empty() {
                out.push(Series { labels, samples });
            }
        }
        Ok(out)
    }

    /// Label sets of matching series with data in `[start_ms, end_ms]` (chunk granularity), sorted.
    pub fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, TsdbError> {
        let mut out: BTreeSet<Labels> = BTreeSet::new();
        let blocks = {
            let head = self.inner.head.read();
            for id in head.resolve(matchers) {
                let s = &head.series[id as usize];
                if s.max_t() >= start_ms && s.min_t() <= end_ms {
                    out.insert(s.labels.clone());
                }
            }
            self.inner.blocks.read().clone()
        };
        for b in blocks
            .iter()
            .filter(|b| b.meta.max_t >= start_ms && b.meta.min_t <= end_ms)
        {
            for id in b.resolve(matchers) {
                let s = &b.series[id as usize];
                if s.chunks
                    .iter()
                    .any(|c| c.max_t >= start_ms && c.min_t <= end_ms)
                {
                    out.insert(s.labels.clone());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Label names of matching series (all series when `matchers` is empty) in the time range, sorted.
    pub fn label_names(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, TsdbError> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        if matchers.is_empty() {
            let blocks = {
                let head = self.inner.head.read();
                if head.max_t >= start_ms {
                    names.extend(head.postings.names().map(str::to_string));
                }
                self.inner.blocks.read().clone()
            };
            for b in blocks
                .iter()
                .filter(|b| b.meta.max_t >= start_ms && b.meta.min_t <= end_ms)
            {
                names.extend(b.postings.names().map(str::to_string));
            }
        } else {
            for l in self.series(matchers, start_ms, end_ms)? {
                names.extend(l.iter().map(|(n, _)| n.to_string()));
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Values of label `name` among matching series (all when `matchers` is empty), sorted.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, TsdbError> {
        let mut vals: BTreeSet<String> = BTreeSet::new();
        if matchers.is_empty() {
            let blocks = {
                let head = self.inner.head.read();
                if head.max_t >= start_ms {
                    vals.extend(head.postings.values(name).map(str::to_string));
                }
                self.inner.blocks.read().clone()
            };
            for b in blocks
                .iter()
                .filter(|b| b.meta.max_t >= start_ms && b.meta.min_t <= end_ms)
            {
                vals.extend(b.postings.values(name).map(str::to_string));
            }
        } else {
            for l in self.series(matchers, start_ms, end_ms)? {
                if let Some(v) = l.get(name) {
                    vals.insert(v.to_string());
                }
            }
        }
        Ok(vals.into_iter().collect())
    }

    /// Counts and sizes.
    pub fn stats(&self) -> TsdbStats {
        let (head_series, head_samples, head_chunk_bytes, per_service, blocks) = {
            let head = self.inner.head.read();
            let per: BTreeMap<String, u64> = head
                .service_counts()
                .iter()
                .map(|(k, v)| (k.to_string(), *v as u64))
                .collect();
            (
                head.series.len() as u64,
                head.num_samples,
                head.chunk_bytes(),
                per,
                self.inner.blocks.read().clone(),
            )
        };
        let wal_bytes = self.inner.wal.size_bytes();
        let block_samples: u64 = blocks.iter().map(|b| b.meta.samples).sum();
        let block_chunk_bytes: u64 = blocks.iter().map(|b| b.meta.chunk_bytes).sum();
        let samples = head_samples + block_samples;
        let bytes_per_sample = if samples == 0 {
            0.0
        } else {
            (head_chunk_bytes + block_chunk_bytes) as f64 / samples as f64
        };
        TsdbStats {
            head_series,
            head_samples,
            head_chunk_bytes,
            blocks: blocks.len() as u64,
            block_samples,
            block_chunk_bytes,
            samples,
            disk_bytes: wal_bytes + blocks.iter().map(|b| b.size_bytes).sum::<u64>(),
            wal_bytes,
            bytes_per_sample,
            series_per_service: per_service,
        }
    }

    /// Test hook: simulates `kill -9` — unflushed WAL data is lost and no
    /// shutdown work runs.
    #[doc(hidden)]
    pub fn crash(self) {
        self.inner.crashed.store(true, Ordering::SeqCst);
        self.inner.wal.discard_pending();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.stop;
            *lock.lock() = true;
            cv.notify_all();
        }
        if !self.crashed.load(Ordering::SeqCst) {
            if let Err(err) = self.wal.flush() {
                tracing::error!(%err, "tsdb: final WAL flush failed");
            }
        }
    }
}

/// Takes an exclusive lock on the data directory so that two processes
/// never write one WAL. Retries briefly: a store being dropped in this
/// process may still hold it for the length of a flush.
fn lock_dir(dir: &Path) -> Result<fs::File, TsdbError> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join("lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        // SAFETY: flock on a valid open descriptor has no memory effects.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        if std::time::Instant::now() > deadline {
            return Err(TsdbError::Config(format!(
                "{} is in use by another process",
                dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How often the background thread compacts the head and applies retention.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

fn flush_loop(db: Weak<Inner>, stop: Arc<(Mutex<bool>, Condvar)>, every: Duration) {
    let (lock, cv) = &*stop;
    let mut last_compact = std::time::Instant::now();
    loop {
        {
            let mut stopped = lock.lock();
            if *stopped {
                return;
            }
            cv.wait_for(&mut stopped, every);
            if *stopped {
                return;
            }
        }
        let Some(inner) = db.upgrade() else { return };
        if inner.crashed.load(Ordering::SeqCst) {
            return;
        }
        if let Err(err) = inner.wal.flush() {
            tracing::error!(%err, "tsdb: WAL flush failed");
        }
        if last_compact.elapsed() >= COMPACT_EVERY {
            last_compact = std::time::Instant::now();
            if let Err(err) = (Tsdb { inner }).compact() {
                tracing::error!(%err, "tsdb: compaction failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tsdb_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<super::Tsdb>();
        check::<super::Labels>();
    }
}
