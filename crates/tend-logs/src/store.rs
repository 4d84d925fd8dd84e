//! Per-service segment stores: appending, flushing blocks, the in-memory index,
//! recovery on open, retention, and queries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::checkpoint::{sync_dir, Checkpoint};
use crate::filter::Filter;
use crate::segment::{
    self, parse_header, ActiveBlock, BlockHeader, BlockSummary, BlockView, Encoder, Label,
    LineMeta, NewLine, SEGMENT_MAGIC,
};
use crate::{
    from_nanos, io_err, lock, to_nanos, valid_service, Level, LogError, LogLine, Query, Service,
    Shared, Stream, BLOCK_RAW_BYTES,
};

/// At most this many threads scan one query.
const QUERY_THREADS: usize = 4;
/// Index entries merge consecutive small blocks up to this much raw text, so a
/// slow service flushing a tiny block every second costs little memory.
const ENTRY_RAW_BYTES: u64 = BLOCK_RAW_BYTES as u64;
/// Distinct releases/instances an index entry lists before it stops telling.
const ENTRY_LABELS: usize = 32;

/// The labels present in an index entry (for skipping without reading).
#[derive(Clone, Debug, Default)]
struct LabelSet {
    releases: Vec<Option<u32>>,
    instances: Vec<Option<Arc<str>>>,
    /// Too many distinct values were seen: the entry may hold any.
    overflow: bool,
}

impl LabelSet {
    fn add(&mut self, l: &Label) {
        if self.overflow {
            return;
        }
        if !self.releases.contains(&l.release) {
            self.releases.push(l.release);
        }
        if !self.instances.contains(&l.instance) {
            self.instances.push(l.instance.clone());
        }
        if self.releases.len() > ENTRY_LABELS || self.instances.len() > ENTRY_LABELS {
            self.overflow = true;
            self.releases = Vec::new();
            self.instances = Vec::new();
        }
    }

    fn may_match(&self, f: &Filter) -> bool {
        self.overflow
            || (self.releases.iter().any(|r| f.release_ok(*r))
                && self.instances.iter().any(|i| f.instance_ok(i.as_deref())))
    }
}

/// One or more consecutive blocks of a segment, described together.
#[derive(Clone, Debug)]
pub(crate) struct IndexEntry {
    offset: u64,
    len: u64,
    blocks: u32,
    raw: u64,
    summary: BlockSummary,
    labels: LabelSet,
}

impl IndexEntry {
    fn from_block(offset: u64, h: &BlockHeader) -> IndexEntry {
        let mut labels = LabelSet::default();
        for l in &h.labels {
            labels.add(l);
        }
        IndexEntry {
            offset,
            len: h.total_len() as u64,
            blocks: 1,
            raw: h.raw_len as u64,
            summary: h.summary,
            labels,
        }
    }

    /// Extends this entry with the block right after it, if it stays small.
    fn try_merge(&mut self, offset: u64, h: &BlockHeader) -> bool {
        if self.offset + self.len != offset || self.raw >= ENTRY_RAW_BYTES || self.blocks >= 4096 {
            return false;
        }
        self.len += h.total_len() as u64;
        self.blocks += 1;
        self.raw += h.raw_len as u64;
        let (s, o) = (&mut self.summary, &h.summary);
        s.min_time = s.min_time.min(o.min_time);
        s.max_time = s.max_time.max(o.max_time);
        s.count += o.count;
        s.level_mask |= o.level_mask;
        s.stream_mask |= o.stream_mask;
        for l in &h.labels {
            self.labels.add(l);
        }
        true
    }

    fn max_seq(&self) -> u64 {
        self.summary.first_seq + self.summary.count as u64
    }
}

/// A segment file.
struct Segment {
    name: String,
    path: PathBuf,
    /// Bytes written.
    len: u64,
    /// Bytes known to be fsynced.
    synced_len: u64,
    entries: Arc<Vec<IndexEntry>>,
    min_time: u64,
    max_time: u64,
}

impl Segment {
    fn add_block(&mut self, offset: u64, h: &BlockHeader) {
        let entries = Arc::make_mut(&mut self.entries);
        let merged = entries.last_mut().is_some_and(|e| e.try_merge(offset, h));
        if !merged {
            entries.push(IndexEntry::from_block(offset, h));
        }
        if self.entries.len() == 1 && self.entries[0].blocks == 1 {
            self.min_time = h.summary.min_time;
            self.max_time = h.summary.max_time;
        } else {
            self.min_time = self.min_time.min(h.summary.min_time);
            self.max_time = self.max_time.max(h.summary.max_time);
        }
    }
}

/// A segment as a query sees it: its path and its index at the time of the query.
type SegmentSnapshot = (PathBuf, Arc<Vec<IndexEntry>>);

/// What the newest blocks say about a capture file: (end offset, seq of the block).
pub(crate) type Recovered = HashMap<(Arc<str>, Stream, u64), (u64, u64)>;

/// The store of one service.
pub(crate) struct ServiceStore {
    dir: PathBuf,
    dir_created: bool,
    segments: Vec<Segment>,
    /// Append handle of the last segment while it is open for writing.
    writer: Option<Arc<File>>,
    /// The directory has a segment whose entry is not fsynced yet.
    dir_dirty: bool,
    pub active: ActiveBlock,
    pub next_seq: u64,
    bytes: u64,
    /// Capture-file positions found in the blocks on open.
    pub recovered: Recovered,
    buf: Vec<u8>,
}

/// A segment file to fsync at commit, and what to record once it is.
pub(crate) struct SyncJob {
    pub file: Arc<File>,
    pub name: String,
    pub len: u64,
    pub dir: Option<PathBuf>,
}

impl ServiceStore {
    pub fn new(dir: PathBuf) -> Self {
        ServiceStore {
            dir,
            dir_created: false,
            segments: Vec::new(),
            writer: None,
            dir_dirty: false,
            active: ActiveBlock::default(),
            next_seq: 0,
            bytes: 0,
            recovered: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Bytes of the segments on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends a line to the active block; returns its seq.
    pub fn append(&mut self, l: &NewLine<'_>, hint: &mut Option<(u64, u32)>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.active.push(l, seq, hint);
        seq
    }

    /// True when the active block should be written now.
    pub fn block_full(&self) -> bool {
        self.active.raw_len() >= BLOCK_RAW_BYTES
    }

    /// True when writing keeps failing and the active block grew too large to take more.
    pub fn backlogged(&self) -> bool {
        self.active.raw_len() >= 16 * BLOCK_RAW_BYTES
    }

    /// Scans the service's segments (on open): index, next seq, capture-file
    /// positions; truncates a torn tail.
    fn load(&mut self, service: &str, ck: &Checkpoint) -> Result<(), LogError> {
        let mut names: Vec<(u64, String)> = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for e in rd {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".seg") {
                if let Ok(seq) = u64::from_str_radix(hex, 16) {
                    names.push((seq, name));
                }
            }
        }
        names.sort();
        self.dir_created = true;
        let last = names.len().saturating_sub(1);
        for (i, (_, name)) in names.into_iter().enumerate() {
            let path = self.dir.join(&name);
            // Sealed segments were fsynced when they rolled; only the last can be torn.
            let verify_from = if i < last {
                u64::MAX
            } else {
                ck.segments
                    .iter()
                    .find(|s| s.service == service && s.name == name)
                    .map_or(0, |s| s.len)
            };
            let scanned = match segment::scan_segment(&path, verify_from) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    if fs::metadata(&path).is_ok_and(|m| m.len() < SEGMENT_MAGIC.len() as u64) {
                        // Torn while being created: it never held a block.
                        fs::remove_file(&path).map_err(io_err(&path))?;
                        continue;
                    }
                    let bad = path.with_extension("corrupt");
                    tracing::warn!(segment = %path.display(), "tend-logs: not a segment; renamed to .corrupt");
                    fs::rename(&path, &bad).map_err(io_err(&path))?;
                    continue;
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            if scanned.blocks.is_empty() {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let mut seg = Segment {
                name,
                path,
                len: scanned.len,
                synced_len: scanned.len,
                entries: Arc::new(Vec::new()),
                min_time: 0,
                max_time: 0,
            };
            for (off, h) in &scanned.blocks {
                seg.add_block(*off, h);
                let max_seq = h.summary.first_seq + h.summary.count as u64;
                self.next_seq = self.next_seq.max(max_seq);
                for l in &h.labels {
                    if let (Some(inst), Some((ino, end))) = (&l.instance, l.file) {
                        self.recovered.insert(
                            (inst.clone(), l.stream, ino),
                            (end, max_seq.saturating_sub(1)),
                        );
                    }
                }
            }
            self.bytes += seg.len;
            self.segments.push(seg);
        }
        // Reopen the last segment for appending (fsynced first: it is now the durable state).
        if let Some(seg) = self.segments.last() {
            let f = File::options()
                .append(true)
                .open(&seg.path)
                .map_err(io_err(&seg.path))?;
            f.sync_all().map_err(io_err(&seg.path))?;
            self.writer = Some(Arc::new(f));
        }
        Ok(())
    }

    /// Compresses and writes the active block; rolls the segment at
    /// `segment_bytes` (fsyncing the sealed one). Returns true on a roll.
    pub fn flush(&mut self, enc: &mut Encoder, segment_bytes: u64) -> Result<bool, LogError> {
        if self.active.is_empty() {
            return Ok(false);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.flush_inner(enc, segment_bytes, &mut buf);
        self.buf = buf;
        r
    }

    fn flush_inner(
        &mut self,
        enc: &mut Encoder,
        segment_bytes: u64,
        buf: &mut Vec<u8>,
    ) -> Result<bool, LogError> {
        enc.encode(&self.active, buf).map_err(io_err(&self.dir))?;
        if self.writer.is_none() {
            self.create_segment()?;
        }
        let (Some(w), Some(seg)) = (&self.writer, self.segments.last_mut()) else {
            return Err(io_err(&self.dir)(io::Error::other("no open segment")));
        };
        let before = seg.len;
        if let Err(e) = (&**w).write_all(buf) {
            // Cut a partial block off so the next one is not written after garbage.
            let _ = w.set_len(before);
            return Err(io_err(&seg.path)(e));
        }
        let h = parse_header(buf).map_err(|reason| LogError::Corrupt {
            path: seg.path.clone(),
            reason,
        })?;
        seg.add_block(before, &h);
        seg.len += buf.len() as u64;
        self.bytes += buf.len() as u64;
        self.active.clear();
        if seg.len >= segment_bytes {
            w.sync_all().map_err(io_err(&seg.path))?;
            seg.synced_len = seg.len;
            self.writer = None;
            return Ok(true);
        }
        Ok(false)
    }

    fn create_segment(&mut self) -> Result<(), LogError> {
        if !self.dir_created {
            fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
            if let Some(parent) = self.dir.parent() {
                sync_dir(parent)?;
            }
            self.dir_created = true;
        }
        let name = format!("{:016x}.seg", self.active.first_seq);
        let path = self.dir.join(&name);
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(SEGMENT_MAGIC).map_err(io_err(&path))?;
        drop(f);
        let f = File::options()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.writer = Some(Arc::new(f));
        self.dir_dirty = true;
        self.bytes += SEGMENT_MAGIC.len() as u64;
        self.segments.push(Segment {
            name,
            path,
            len: SEGMENT_MAGIC.len() as u64,
            synced_len: 0,
            entries: Arc::new(Vec::new()),
            min_time: 0,
            max_time: 0,
        });
        Ok(())
    }

    /// The fsync the next commit must do for this service, if any.
    pub fn sync_job(&mut self) -> Option<SyncJob> {
        let w = self.writer.clone()?;
        let seg = self.segments.last()?;
        if seg.synced_len == seg.len && !self.dir_dirty {
            return None;
        }
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        Some(SyncJob {
            file: w,
            name: seg.name.clone(),
            len: seg.len,
            dir,
        })
    }

    /// Records that `name` is fsynced up to `len`.
    pub fn synced(&mut self, name: &str, len: u64) {
        if let Some(s) = self.segments.iter_mut().find(|s| s.name == name) {
            s.synced_len = s.synced_len.max(len);
        }
    }

    /// (name, fsynced length) of the open segment, for the checkpoint.
    pub fn durable_segment(&self) -> Option<(String, u64)> {
        self.writer.as_ref()?;
        self.segments.last().map(|s| (s.name.clone(), s.synced_len))
    }

    /// Newest time in the oldest segment (what retention compares), if any.
    fn oldest_time(&self) -> Option<u64> {
        self.segments.first().map(|s| s.max_time)
    }

    /// Deletes the oldest segment; the open one only if `allow_active`.
    fn delete_oldest(&mut self, allow_active: bool) -> bool {
        let is_active = self.segments.len() == 1 && self.writer.is_some();
        if self.segments.is_empty() || (is_active && !allow_active) {
            return false;
        }
        let seg = self.segments.remove(0);
        if is_active {
            self.writer = None;
        }
        self.bytes = self.bytes.saturating_sub(seg.len);
        if let Err(e) = fs::remove_file(&seg.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(segment = %seg.path.display(), error = %e, "tend-logs: cannot delete segment");
            }
        }
        true
    }

    /// What a query needs, taken under the lock: segment paths with their index,
    /// and a copy of the active block.
    fn snapshot(&self) -> (Vec<SegmentSnapshot>, Option<ActiveBlock>) {
        let segs = self
            .segments
            .iter()
            .map(|s| (s.path.clone(), s.entries.clone()))
            .collect();
        let active = (!self.active.is_empty()).then(|| self.active.clone());
        (segs, active)
    }
}

/// Opens every service directory under the store (on `Logs::open`).
pub(crate) fn open_all(shared: &Shared, ck: &Checkpoint) -> Result<(), LogError> {
    let dir = &shared.config.dir;
    let rd = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in rd {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_service(&name) || !e.file_type().map_err(io_err(e.path()))?.is_dir() {
            continue;
        }
        let svc = shared.service(&name)?;
        lock(&svc.store).load(&name, ck)?;
    }
    Ok(())
}

/// Enforces age and size budgets: per service the oldest whole segments beyond
/// the age or the service budget (never the open one), then globally the oldest
/// segments (the open ones included) beyond the total budget.
pub(crate) fn enforce_retention(shared: &Shared) {
    let cfg = &shared.config;
    let now = to_nanos(SystemTime::now());
    let cutoff = now.saturating_sub(cfg.retention_age.as_nanos().min(u64::MAX as u128) as u64);
    let services = shared.all_services();
    let mut total = 0u64;
    for svc in &services {
        let mut st = lock(&svc.store);
        while st.oldest_time().is_some_and(|t| t < cutoff) && st.delete_oldest(true) {}
        while st.bytes > cfg.retention_bytes_per_service
            && st.segments.len() > 1
            && st.delete_oldest(false)
        {}
        total += st.bytes;
    }
    while total > cfg.retention_bytes_total {
        let oldest = services
            .iter()
            .filter_map(|s| lock(&s.store).oldest_time().map(|t| (t, s)))
            .min_by_key(|(t, _)| *t);
        let Some((_, svc)) = oldest else { break };
        let mut st = lock(&svc.store);
        let before = st.bytes;
        if !st.delete_oldest(true) {
            break;
        }
        total -= before - st.bytes;
    }
}

/// A line kept by a query, ordered by (time, seq).
struct Kept {
    key: (u64, u64),
    line: LogLine,
}

impl PartialEq for Kept {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Kept {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.cmp(&o.key)
    }
}

/// Collects the last `limit` matching lines (a min-heap of the newest so far).
struct Collector<'a> {
    service: &'a str,
    filter: &'a Filter,
    limit: usize,
    heap: BinaryHeap<Reverse<Kept>>,
    all: Vec<Kept>,
    metas: Vec<LineMeta>,
    cands: Vec<u32>,
    label_ok: Vec<bool>,
}

impl<'a> Collector<'a> {
    fn full(&self) -> bool {
        self.limit > 0 && self.heap.len() >= self.limit
    }

    /// Smallest kept key when full: older lines cannot make it.
    fn floor(&self) -> Option<(u64, u64)> {
        if self.full() {
            self.heap.peek().map(|r| r.0.key)
        } else {
            None
        }
    }

    fn block(&mut self, v: &BlockView<'_>) -> Result<(), String> {
        let f = self.filter;
        self.label_ok.clear();
        self.label_ok.extend(v.labels.iter().map(|l| f.label_ok(l)));
        if !self.label_ok.iter().any(|x| *x) {
            return Ok(());
        }
        if f.has_grep() {
            f.grep_text(v.text, &mut self.cands);
            if self.cands.is_empty() {
                return Ok(());
            }
        }
        v.metas(&mut self.metas)?;
        if !f.has_grep() {
            self.cands.clear();
            self.cands.extend(0..self.metas.len() as u32);
        }
        for k in (0..self.cands.len()).rev() {
            let i = self.cands[k] as usize;
            if i >= self.metas.len() {
                return Err("text and metadata columns disagree".into());
            }
            let m = &self.metas[i];
            if !self.label_ok[m.label as usize] || !f.level_ok(m.level) || !f.time_ok(m.time) {
                continue;
            }
            let key = (m.time, v.first_seq + i as u64);
            if self.floor().is_some_and(|fl| key <= fl) {
                continue;
            }
            let label = &v.labels[m.label as usize];
            let raw = String::from_utf8_lossy(&v.text[m.raw.clone()]).into_owned();
            let message = match &m.msg {
                Some(r) => String::from_utf8_lossy(&v.msgs[r.clone()]).into_owned(),
                None => raw.clone(),
            };
            let line = LogLine {
                time: from_nanos(m.time),
                service: self.service.to_owned(),
                release: label.release,
                instance: label.instance.as_deref().map(str::to_owned),
                stream: label.stream,
                level: Level::from_code(m.level),
                message,
                raw,
                seq: key.1,
                app_time: m.app_time.map(from_nanos),
            };
            let kept = Kept { key, line };
            if self.limit == 0 {
                self.all.push(kept);
            } else {
                self.heap.push(Reverse(kept));
                if self.heap.len() > self.limit {
                    self.heap.pop();
                }
            }
        }
        Ok(())
    }
}

/// What the query workers share.
struct Scan<'a> {
    filter: &'a Filter,
    segs: &'a [SegmentSnapshot],
    files: Vec<Option<File>>,
    /// (segment, entry) oldest to newest.
    flat: Vec<(usize, usize)>,
    /// Running maximum of the entries' max_time, oldest to newest: the newest-first
    /// walk stops once nothing older can enter the result.
    prefix_max: Vec<u64>,
    /// Entries handed out so far, newest first.
    next: AtomicUsize,
}

impl<'a> Collector<'a> {
    fn new(service: &'a str, filter: &'a Filter, limit: usize) -> Self {
        Collector {
            service,
            filter,
            limit,
            heap: BinaryHeap::new(),
            all: Vec::new(),
            metas: Vec::new(),
            cands: Vec::new(),
            label_ok: Vec::new(),
        }
    }

    fn into_kept(self) -> Vec<Kept> {
        if self.limit == 0 {
            self.all
        } else {
            self.heap.into_iter().map(|r| r.0).collect()
        }
    }
}

/// A query worker: takes entries newest first until none is left or none can matter.
fn scan_worker(scan: &Scan<'_>, col: &mut Collector<'_>) -> Result<(), LogError> {
    let filter = scan.filter;
    let mut dec = zstd::bulk::Decompressor::new().map_err(io_err(col.service))?;
    let (mut bytes, mut raw) = (Vec::new(), Vec::new());
    let mut blocks: Vec<(usize, BlockHeader)> = Vec::new();
    let n = scan.flat.len();
    loop {
        let taken = scan.next.fetch_add(1, AtomicOrdering::Relaxed);
        if taken >= n {
            return Ok(());
        }
        let k = n - 1 - taken;
        if let Some((t, _)) = col.floor() {
            if scan.prefix_max[k] < t {
                return Ok(());
            }
        }
        let (si, ei) = scan.flat[k];
        let (path, entries) = &scan.segs[si];
        let e = &entries[ei];
        if !filter.summary_ok(&e.summary) || !e.labels.may_match(filter) {
            continue;
        }
        if col
            .floor()
            .is_some_and(|fl| (e.summary.max_time, e.max_seq()) <= fl)
        {
            continue;
        }
        let Some(file) = &scan.files[si] else {
            continue;
        };
        if let Err(err) = segment::read_range(file, e.offset, e.len as usize, &mut bytes) {
            if err.kind() != io::ErrorKind::UnexpectedEof {
                tracing::warn!(segment = %path.display(), error = %err, "tend-logs: cannot read segment");
            }
            continue;
        }
        blocks.clear();
        let mut p = 0usize;
        while p < bytes.len() {
            match parse_header(&bytes[p..]) {
                Ok(h) if p + h.total_len() <= bytes.len() => {
                    let len = h.total_len();
                    blocks.push((p, h));
                    p += len;
                }
                _ => {
                    tracing::error!(segment = %path.display(), offset = e.offset + p as u64, "tend-logs: corrupt block header; skipping the rest of the entry");
                    break;
                }
            }
        }
        // Newest block first.
        for (p, h) in blocks.iter().rev() {
            if !filter.summary_ok(&h.summary)
                || !h.labels.iter().any(|l| filter.label_ok(l))
                || !filter.bloom_ok(&h.bloom)
            {
                continue;
            }
            let last_seq = h.summary.first_seq + h.summary.count as u64;
            if col
                .floor()
                .is_some_and(|fl| (h.summary.max_time, last_seq) <= fl)
            {
                continue;
            }
            let block = &bytes[*p..*p + h.total_len()];
            let r = segment::decode(h, block, &mut dec, &mut raw).and_then(|v| col.block(&v));
            if let Err(reason) = r {
                tracing::error!(segment = %path.display(), offset = e.offset + *p as u64, %reason, "tend-logs: corrupt block skipped");
            }
        }
    }
}

/// Runs a query over a service's stored blocks and its active block, on up to
/// [`QUERY_THREADS`] threads (decompression dominates a scan).
pub(crate) fn query(svc: &Service, q: &Query) -> Result<Vec<LogLine>, LogError> {
    let filter = Filter::new(q);
    let (segs, active) = lock(&svc.store).snapshot();
    let mut col = Collector::new(&svc.name, &filter, q.limit);
    if let Some(a) = &active {
        if filter.summary_ok(&a.summary()) {
            if let Err(reason) = col.block(&a.view()) {
                tracing::error!(service = %svc.name, %reason, "tend-logs: bad active block");
            }
        }
    }
    let flat: Vec<(usize, usize)> = segs
        .iter()
        .enumerate()
        .flat_map(|(si, (_, es))| (0..es.len()).map(move |ei| (si, ei)))
        .collect();
    let mut prefix_max = Vec::with_capacity(flat.len());
    let mut m = 0u64;
    for &(si, ei) in &flat {
        m = m.max(segs[si].1[ei].summary.max_time);
        prefix_max.push(m);
    }
    let files = segs
        .iter()
        .map(|(path, _)| match File::open(path) {
            Ok(f) => Some(f),
            // Deleted by retention since the snapshot: its lines are gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "tend-logs: cannot open segment");
                None
            }
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(QUERY_THREADS)
        .min(flat.len().div_ceil(2))
        .max(1);
    let scan = Scan {
        filter: &filter,
        segs: &segs,
        files,
        flat,
        prefix_max,
        next: AtomicUsize::new(0),
    };
    let mut kept = Vec::new();
    if threads == 1 {
        scan_worker(&scan, &mut col)?;
    } else {
        let (name, limit) = (&*svc.name, q.limit);
        let results: Vec<Result<Vec<Kept>, LogError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..threads)
                .map(|_| {
                    let scan = &scan;
                    s.spawn(move || {
                        let mut c = Collector::new(name, scan.filter, limit);
                        scan_worker(scan, &mut c).map(|()| c.into_kept())
                    })
                })
                .collect();
            let mine = scan_worker(&scan, &mut col);
            let mut out: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
                .collect();
            out.push(mine.map(|()| Vec::new()));
            out
        });
        for r in results {
            kept.extend(r?);
        }
    }
    kept.extend(col.into_kept());
    kept.sort_unstable_by_key(|k| k.key);
    if q.limit > 0 && kept.len() > q.limit {
        kept.drain(..kept.len() - q.limit);
    }
    Ok(kept.into_iter().map(|k| k.line).collect())
}
