//! The in-memory head: recent samples of every active series, kept in
//! compressed chunks, indexed by label hash (append path) and by postings
//! (queries).

use std::collections::HashMap;
use std::sync::Arc;

use crate::chunk::{ChunkAppender, SAMPLES_PER_CHUNK};
use crate::index::{Matcher, Postings};
use crate::labels::{Labels, LabelsMap};
use crate::wal;
use crate::AppendStats;

/// The label that keys the per-service cardinality limit.
pub const SERVICE_LABEL: &str = "service";

/// A sealed, immutable chunk of the head.
#[derive(Clone, Debug)]
pub(crate) struct HeadChunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) num: u16,
    pub(crate) bytes: Arc<[u8]>,
}

/// One series in the head.
pub(crate) struct MemSeries {
    pub(crate) labels: Labels,
    // A scrape cache's copy of `labels`: the appender then finds the series
    // by pointer instead of comparing every string (the cache keeps it alive
    // anyway, so this costs no memory while the target is scraped).
    alias: Option<Labels>,
    pub(crate) wal_ref: u64,
    pub(crate) chunks: Vec<HeadChunk>,
    pub(crate) open: ChunkAppender,
    // Last appended sample, for ordering and duplicate checks.
    last_t: i64,
    last_v: u64,
}

impl MemSeries {
    fn new(labels: Labels, wal_ref: u64) -> Self {
        MemSeries {
            labels,
            alias: None,
            wal_ref,
            chunks: Vec::new(),
            open: ChunkAppender::new(),
            last_t: i64::MIN,
            last_v: 0,
        }
    }

    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let open = std::mem::take(&mut self.open);
        let (min_t, max_t, num) = (open.min_t(), open.max_t(), open.len() as u16);
        self.chunks.push(HeadChunk {
            min_t,
            max_t,
            num,
            bytes: open.into_bytes().into(),
        });
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.open.is_empty()
    }

    pub(crate) fn min_t(&self) -> i64 {
        self.chunks
            .first()
            .map(|c| c.min_t)
            .unwrap_or(if self.open.is_empty() {
                i64::MAX
            } else {
                self.open.min_t()
            })
    }

    pub(crate) fn max_t(&self) -> i64 {
        if !self.open.is_empty() {
            self.open.max_t()
        } else {
            self.chunks.last().map(|c| c.max_t).unwrap_or(i64::MIN)
        }
    }

    /// Chunks overlapping `[mint, maxt]`: sealed ones shared, the open one copied.
    pub(crate) fn chunks_in(&self, mint: i64, maxt: i64, out: &mut Vec<Arc<[u8]>>) {
        for c in &self.chunks {
            if c.max_t >= mint && c.min_t <= maxt {
                out.push(c.bytes.clone());
            }
        }
        if !self.open.is_empty() && self.open.max_t() >= mint && self.open.min_t() <= maxt {
            out.push(Arc::from(self.open.to_bytes()));
        }
    }
}

/// Outcome of adding one sample.
enum Add {
    Ok,
    OutOfOrder,
    Duplicate,
}

/// The head block.
pub(crate) struct Head {
    pub(crate) series: Vec<MemSeries>,
    by_hash: LabelsMap<u64, u32>,
    // Rare hash collisions: extra ids for a hash already in `by_hash`.
    collisions: HashMap<u64, Vec<u32>>,
    pub(crate) postings: Postings,
    per_service: HashMap<Box<str>, usize>,
    /// Samples older than this are rejected (they belong to persisted blocks).
    pub(crate) min_valid_t: i64,
    pub(crate) max_t: i64,
    next_ref: u64,
    pub(crate) num_samples: u64,
    block_span: i64,
    max_series_per_service: usize,
    // Reused WAL payload buffers: no allocation per sample on the append path.
    scratch_series: Vec<u8>,
    scratch_samples: Vec<u8>,
    // Only used during WAL replay: WAL ref → series id.
    replay_refs: HashMap<u64, Labels>,
}

impl Head {
    pub(crate) fn new(block_span: i64, max_series_per_service: usize, min_valid_t: i64) -> Head {
        Head {
            series: Vec::new(),
            by_hash: LabelsMap::default(),
            collisions: HashMap::new(),
            postings: Postings::default(),
            per_service: HashMap::new(),
            min_valid_t,
            max_t: i64::MIN,
            next_ref: 1,
            num_samples: 0,
            block_span: block_span.max(1),
            max_series_per_service,
            scratch_series: Vec::new(),
            scratch_samples: Vec::new(),
            replay_refs: HashMap::new(),
        }
    }

    /// Smallest timestamp in the head (i64::MAX when empty).
    pub(crate) fn min_t(&self) -> i64 {
        self.series
            .iter()
            .map(|s| s.min_t())
            .min()
            .unwrap_or(i64::MAX)
    }

    fn lookup(&self, labels: &Labels) -> Option<u32> {
        let h = labels.hash_value();
        let id = *self.by_hash.get(&h)?;
        let s = &self.series[id as usize];
        if s.alias.as_ref().is_some_and(|a| a.ptr_eq(labels)) || s.labels == *labels {
            return Some(id);
        }
        self.collisions
            .get(&h)?
            .iter()
            .copied()
            .find(|&i| self.series[i as usize].labels == *labels)
    }

    fn insert_series(&mut self, labels: Labels, wal_ref: u64) -> u32 {
        let id = self.series.len() as u32;
        let h = labels.hash_value();
        match self.by_hash.entry(h) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.entry(h).or_default().push(id)
            }
        }
        // Keep the interned copy: its strings are shared with the index.
        let labels = self.postings.add(id, &labels);
        let svc = labels.get(SERVICE_LABEL).unwrap_or("");
        match self.per_service.get_mut(svc) {
            Some(n) => *n += 1,
            None => {
                self.per_service.insert(svc.into(), 1);
            }
        }
        self.series.push(MemSeries::new(labels, wal_ref));
        id
    }

    /// Finds or creates a series, enforcing the per-service limit.
    fn get_or_create(&mut self, labels: &Labels) -> Option<u32> {
        if let Some(id) = self.lookup(labels) {
            if labels.is_cached() {
                let s = &mut self.series[id as usize];
                if !s.alias.as_ref().is_some_and(|a| a.ptr_eq(labels)) {
                    s.alias = Some(labels.clone());
                }
            }
            return Some(id);
        }
        let svc = labels.get(SERVICE_LABEL).unwrap_or("");
        if self.per_service.get(svc).copied().unwrap_or(0) >= self.max_series_per_service {
            return None;
        }
        let r = self.next_ref;
        self.next_ref += 1;
        wal::encode_series(&mut self.scratch_series, r, labels);
        let id = self.insert_series(labels.clone(), r);
        if labels.is_cached() {
            self.series[id as usize].alias = Some(labels.clone());
        }
        Some(id)
    }

    #[inline]
    fn add(&mut self, id: u32, t: i64, v: f64) -> Add {
        let span = self.block_span;
        let s = &mut self.series[id as usize];
        if t <= s.last_t {
            if t == s.last_t && v.to_bits() == s.last_v {
                return Add::Duplicate;
            }
            return Add::OutOfOrder;
        }
        // Cut at 120 samples and at block-window boundaries, so compaction
        // moves whole chunks into blocks without re-encoding.
        if !s.open.is_empty()
            && (s.open.len() >= SAMPLES_PER_CHUNK as usize
                || t.div_euclid(span) != s.open.min_t().div_euclid(span))
        {
            s.seal();
        }
        s.open.append(t, v);
        s.last_t = t;
        s.last_v = v.to_bits();
        self.num_samples += 1;
        if t > self.max_t {
            self.max_t = t;
        }
        Add::Ok
    }

    /// Appends a batch and logs it to the WAL buffer.
    pub(crate) fn append(
        &mut self,
        samples: &[(Labels, i64, f64)],
        wal: &wal::Wal,
    ) -> Result<AppendStats, crate::TsdbError> {
        let mut st = AppendStats::default();
        self.scratch_series.clear();
        self.scratch_samples.clear();
        let mut max_t = i64::MIN;
        let mut base_t = 0i64;
        // Consecutive samples of one series (e.g. a histogram's lines) skip the lookup.
        let mut last: Option<(&Labels, u32)> = None;
        for (labels, t, v) in samples {
            if *t < self.min_valid_t {
                st.out_of_bounds += 1;
                continue;
            }
            let id = match last {
                Some((l, id)) if l == labels => id,
                _ => match self.get_or_create(labels) {
                    Some(id) => id,
                    None => {
                        st.rejected += 1;
                        continue;
                    }
                },
            };
            last = Some((labels, id));
            match self.add(id, *t, *v) {
                Add::Ok => {
                    st.appended += 1;
                    max_t = max_t.max(*t);
                    let r = self.series[id as usize].wal_ref;
                    wal::encode_sample(&mut self.scratch_samples, &mut base_t, r, *t, *v);
                }
                Add::OutOfOrder => st.out_of_order += 1,
                Add::Duplicate => st.duplicates += 1,
            }
        }
        wal.append(&self.scratch_series, &self.scratch_samples, max_t)?;
        Ok(st)
    }

    /// Applies one replayed WAL record.
    pub(crate) fn replay(&mut self, rec: wal::Record) {
        match rec {
            wal::Record::Series(list) => {
                for (r, labels) in list {
                    self.next_ref = self.next_ref.max(r + 1);
                    self.replay_refs.insert(r, labels);
                }
            }
            wal::Record::Samples(list) => {
                for (r, t, v) in list {
                    if t < self.min_valid_t {
                        continue;
                    }
                    let Some(labels) = self.replay_refs.get(&r) else {
                        continue;
                    };
                    let id = match self.lookup(labels) {
                        Some(id) => id,
                        // The limit applied when the series was first accepted; replay restores it as it was.
                        None => {
                            let labels = labels.clone();
                            self.insert_series(labels, r)
                        }
                    };
                    let _ = self.add(id, t, v);
                }
            }
        }
    }

    /// Ends replay: frees the ref map.
    pub(crate) fn finish_replay(&mut self) {
        self.replay_refs = HashMap::new();
    }

    /// A series-record payload of every live series (starts each WAL segment).
    pub(crate) fn series_dump(&self) -> Vec<u8> {
        let mut p = Vec::new();
        for s in &self.series {
            wal::encode_series(&mut p, s.wal_ref, &s.labels);
        }
        p
    }

    /// Seals open chunks before `boundary` and returns `(labels, chunks)` of all
    /// data older than `boundary`, sorted by labels; raises `min_valid_t`.
    pub(crate) fn prepare_compaction(&mut self, boundary: i64) -> Vec<(Labels, Vec<HeadChunk>)> {
        self.min_valid_t = self.min_valid_t.max(boundary);
        let mut out = Vec::new();
        for s in &mut self.series {
            if !s.open.is_empty() && s.open.max_t() < boundary {
                s.seal();
            }
            let old: Vec<HeadChunk> = s
                .chunks
                .iter()
                .take_while(|c| c.max_t < boundary)
                .cloned()
                .collect();
            if !old.is_empty() {
                out.push((s.labels.clone(), old));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Drops chunks older than `boundary` and garbage-collects empty series.
    pub(crate) fn truncate(&mut self, boundary: i64) {
        let mut removed = 0u64;
        for s in &mut self.series {
            let n = s.chunks.iter().take_while(|c| c.max_t < boundary).count();
            removed += s.chunks[..n].iter().map(|c| u64::from(c.num)).sum::<u64>();
            s.chunks.drain(..n);
        }
        self.num_samples = self.num_samples.saturating_sub(removed);
        if self.series.iter().any(|s| s.is_empty()) {
            let old = std::mem::take(&mut self.series);
            self.by_hash.clear();
            self.collisions.clear();
            self.postings = Postings::default();
            self.per_service.clear();
            for s in old.into_iter().filter(|s| !s.is_empty()) {
                let id = self.insert_series(s.labels.clone(), s.wal_ref);
                self.series[id as usize] = s;
            }
        }
    }

    /// Ids of series matching `matchers`.
    pub(crate) fn resolve(&self, matchers: &[Matcher]) -> Vec<u32> {
        self.postings.resolve(matchers)
    }

    /// Bytes held by chunks.
    pub(crate) fn chunk_bytes(&self) -> u64 {
        self.series
            .iter()
            .map(|s| {
                s.chunks.iter().map(|c| c.bytes.len() as u64).sum::<u64>()
                    + s.open.byte_len() as u64
            })
            .sum()
    }

    /// Number of series per `service` label value.
    pub(crate) fn service_counts(&self) -> &HashMap<Box<str>, usize> {
        &self.per_service
    }
}
