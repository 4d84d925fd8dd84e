//! The ingest thread: tails capture files round-robin, rate-limits per service,
//! appends lines to the stores, commits (fsync + checkpoint) every second,
//! punches holes in ingested prefixes, finishes sources, runs retention.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use crate::checkpoint::{sync_dir, Checkpoint, CkFile, CkSegment, CkSource, CkTombstone};
use crate::follow::Candidate;
use crate::line::{lift_json, Splitter};
use crate::segment::{Encoder, NewLine};
use crate::store::{enforce_retention, ServiceStore};
use crate::{
    from_nanos, lock, to_nanos, Cmd, Level, LogLine, Service, Shared, Source, Stream,
    COMMIT_INTERVAL, PARTIAL_LINE_WAIT, READ_BUDGET, STOP_CRASH, STOP_GRACEFUL,
};

/// Sleep between passes that found nothing to read.
const POLL: Duration = Duration::from_millis(100);
/// How often timers (partial lines, drop notices, follow lag markers) are checked.
const TICK: Duration = Duration::from_millis(100);
const RETENTION_INTERVAL: Duration = Duration::from_secs(2);
/// A rate-limit episode is reported once no line was dropped for this long...
const DROP_QUIET: Duration = Duration::from_secs(1);
/// ...or, during a long flood, this often.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);
const PAGE: u64 = 4096;

/// Per-service token bucket on raw bytes, and the current drop episode.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    ep_lines: u64,
    ep_bytes: u64,
    ep_start: Instant,
    last_drop: Instant,
}

impl Bucket {
    fn new(rate: u64, credit: f64, now: Instant) -> Bucket {
        let rate = rate as f64;
        Bucket {
            tokens: 2.0 * rate + credit,
            rate,
            burst: 2.0 * rate,
            last: now,
            ep_lines: 0,
            ep_bytes: 0,
            ep_start: now,
            last_drop: now,
        }
    }

    /// Takes `cost` bytes if available (rate 0 = unlimited).
    fn take(&mut self, cost: u64, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if self.tokens < self.burst {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = now;
        let cost = cost as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            return true;
        }
        if self.ep_lines == 0 {
            self.ep_start = now;
        }
        self.ep_lines += 1;
        self.ep_bytes += cost as u64;
        self.last_drop = now;
        false
    }

    /// The drop notice to write now, if the episode is over (or long).
    fn report(&mut self, now: Instant) -> Option<(u64, u64)> {
        if self.ep_lines == 0 {
            return None;
        }
        let quiet = now.saturating_duration_since(self.last_drop) >= DROP_QUIET;
        let long = now.saturating_duration_since(self.ep_start) >= DROP_REPORT_EVERY;
        if !(quiet || long) {
            return None;
        }
        let r = (self.ep_lines, self.ep_bytes);
        self.ep_lines = 0;
        self.ep_bytes = 0;
        self.ep_start = now;
        Some(r)
    }
}

/// One capture file being tailed.
struct FileState {
    stream: Stream,
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    can_punch: bool,
    punched: u64,
    split: Splitter,
    read_pos: u64,
    pending_since: Option<Instant>,
    /// Receive time of the last line (ns): times are monotonic per source.
    last_time: u64,
    label_hint: Option<(u64, u32)>,
    /// (ino, offset) from the checkpoint loaded at open, used at the first open.
    resume: Option<(u64, u64)>,
    eof: bool,
}

impl FileState {
    fn new(stream: Stream, path: PathBuf, resume: Option<(u64, u64)>, max_line: usize) -> Self {
        FileState {
            stream,
            path,
            file: None,
            ino: 0,
            can_punch: false,
            punched: 0,
            split: Splitter::new(max_line, 0),
            read_pos: 0,
            pending_since: None,
            last_time: 0,
            label_hint: None,
            resume,
            eof: true,
        }
    }

    fn ck(&self) -> CkFile {
        CkFile {
            path: self.path.clone(),
            ino: self.ino,
            offset: if self.file.is_some() {
                self.split.consumed()
            } else {
                self.resume.map_or(0, |r| r.1)
            },
        }
    }
}

struct SourceState {
    service: Arc<Service>,
    team: String,
    release: u32,
    instance: Arc<str>,
    files: [FileState; 2],
    finishing: bool,
}

/// Everything the per-line path needs besides the file being read.
struct LineCtx<'a> {
    svc: &'a Service,
    release: u32,
    instance: &'a str,
    bucket: &'a mut Bucket,
    enc: &'a mut Encoder,
    segment_bytes: u64,
    now: Instant,
    written: &'a mut bool,
}

pub(crate) struct Ingest {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Cmd>,
    sources: Vec<SourceState>,
    rr: usize,
    buckets: HashMap<Arc<str>, Bucket>,
    enc: Option<Encoder>,
    buf: Vec<u8>,
    tombstones: Vec<CkTombstone>,
    /// Rate-limit credit for the daemon's downtime, per service of the checkpoint.
    credit: HashMap<String, f64>,
    dirty: bool,
    /// A block was written since retention last ran.
    written: bool,
    last_commit: Instant,
    last_tick: Instant,
    last_retention: Instant,
    commit_failing: bool,
}

impl Ingest {
    pub fn new(shared: Arc<Shared>, ck: Checkpoint, rx: mpsc::Receiver<Cmd>) -> Ingest {
        let now = Instant::now();
        let cfg = &shared.config;
        let down = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(ck.written_at_ms);
        let credit_bytes = if ck.written_at_ms == 0 {
            0.0
        } else {
            // What the service was entitled to write while nobody was reading.
            (cfg.rate_limit_bytes_per_sec as f64 * down as f64 / 1000.0)
                .min(cfg.retention_bytes_per_service as f64)
        };
        let mut credit = HashMap::new();
        let mut sources = Vec::new();
        let max_line = cfg.max_line_bytes;
        for s in &ck.sources {
            let Ok(service) = shared.service(&s.service) else {
                continue;
            };
            credit.insert(s.service.clone(), credit_bytes);
            sources.push(SourceState {
                service,
                team: s.team.clone(),
                release: s.release,
                instance: Arc::from(s.instance.as_str()),
                files: [
                    FileState::new(
                        Stream::Stdout,
                        s.stdout.path.clone(),
                        Some((s.stdout.ino, s.stdout.offset)),
                        max_line,
                    ),
                    FileState::new(
                        Stream::Stderr,
                        s.stderr.path.clone(),
                        Some((s.stderr.ino, s.stderr.offset)),
                        max_line,
                    ),
                ],
                finishing: s.finishing,
            });
        }
        let enc = match Encoder::new() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(error = %e, "tend-logs: cannot create a zstd context; nothing will be stored");
                None
            }
        };
        Ingest {
            shared,
            rx,
            sources,
            rr: 0,
            buckets: HashMap::new(),
            enc,
            buf: vec![0; READ_BUDGET],
            tombstones: ck.tombstones,
            credit,
            dirty: false,
            written: false,
            last_commit: now,
            last_tick: now,
            last_retention: now,
            commit_failing: false,
        }
    }

    pub fn run(&mut self) {
        loop {
            match self.shared.stop.load(Ordering::SeqCst) {
                STOP_CRASH => return,
                STOP_GRACEFUL => {
                    self.commit();
                    return;
                }
                _ => {}
            }
            while let Ok(cmd) = self.rx.try_recv() {
                self.command(cmd);
            }
            let read = self.pass();
            self.timers();
            if read == 0 {
                if let Ok(cmd) = self.rx.recv_timeout(POLL) {
                    self.command(cmd);
                }
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Watch(src) => self.watch(src),
            Cmd::Finish(inst) => {
                if let Some(s) = self.sources.iter_mut().find(|s| *s.instance == *inst) {
                    s.finishing = true;
                    self.dirty = true;
                } else if !inst.is_empty() {
                    tracing::debug!(instance = %inst, "tend-logs: finish of an instance not watched");
                }
            }
        }
    }

    fn watch(&mut self, src: Source) {
        if let Some(s) = self
            .sources
            .iter_mut()
            .find(|s| *s.instance == *src.instance)
        {
            s.finishing = false;
            s.release = src.release;
            s.team = src.team;
            self.dirty = true;
            return;
        }
        let Ok(service) = self.shared.service(&src.service) else {
            return;
        };
        let max_line = self.shared.config.max_line_bytes;
        self.sources.push(SourceState {
            service,
            team: src.team,
            release: src.release,
            instance: Arc::from(src.instance.as_str()),
            files: [
                FileState::new(Stream::Stdout, src.stdout, None, max_line),
                FileState::new(Stream::Stderr, src.stderr, None, max_line),
            ],
            finishing: false,
        });
        self.dirty = true;
    }

    /// One round-robin pass over every source; returns the bytes read.
    fn pass(&mut self) -> usize {
        let n = self.sources.len();
        if n == 0 {
            return 0;
        }
        let mut total = 0;
        let start = self.rr % n;
        self.rr = self.rr.wrapping_add(1);
        let mut done = Vec::new();
        for k in 0..n {
            let si = (start + k) % n;
            if lock(&self.sources[si].service.store).backlogged() {
                continue; // the store cannot write: leave the lines in the capture file
            }
            let mut all_eof = true;
            for fi in 0..2 {
                total += self.read_file(si, fi);
                all_eof &= self.sources[si].files[fi].eof;
            }
            if self.sources[si].finishing && all_eof {
                for fi in 0..2 {
                    self.flush_partial(si, fi, true);
                }
                done.push(si);
            }
        }
        if !done.is_empty() {
            self.finish_sources(done);
        }
        total
    }

    /// Opens the file if needed; decides where to resume.
    fn open_file(&mut self, si: usize, fi: usize) -> bool {
        let src = &mut self.sources[si];
        let f = &mut src.files[fi];
        let (file, can_punch) = match File::options().read(true).write(true).open(&f.path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(_) => match File::open(&f.path) {
                Ok(file) => (file, false),
                Err(e) => {
                    tracing::debug!(file = %f.path.display(), error = %e, "tend-logs: cannot open capture file");
                    return false;
                }
            },
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let ino = meta.ino();
        let mut offset = 0u64;
        if let Some((ck_ino, ck_off)) = f.resume.take() {
            if ck_ino == ino {
                offset = ck_off;
            }
        }
        {
            let st = lock(&src.service.store);
            if let Some(&(end, seq)) = st.recovered.get(&(src.instance.clone(), f.stream, ino)) {
                let horizon = self
                    .tombstones
                    .iter()
                    .filter(|t| *t.instance == *src.instance && *t.service == *src.service.name)
                    .map(|t| t.horizon)
                    .max();
                if horizon.is_none_or(|h| seq >= h) {
                    offset = offset.max(end);
                }
            }
        }
        if offset > meta.len() {
            tracing::warn!(file = %f.path.display(), offset, size = meta.len(), "tend-logs: capture file is shorter than its checkpoint; reading it from the start");
            offset = 0;
        }
        f.file = Some(file);
        f.ino = ino;
        f.can_punch = can_punch;
        f.punched = 0;
        f.split.reset(offset);
        f.read_pos = offset;
        f.pending_since = None;
        f.label_hint = None;
        self.shared.watched_files.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn close_file(&mut self, si: usize, fi: usize) {
        let f = &mut self.sources[si].files[fi];
        if f.file.take().is_some() {
            self.shared.watched_files.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Reads up to one budget from a file and ingests the lines; returns bytes read.
    fn read_file(&mut self, si: usize, fi: usize) -> usize {
        if self.sources[si].files[fi].file.is_none() && !self.open_file(si, fi) {
            self.sources[si].files[fi].eof = true;
            return 0;
        }
        let n = {
            let f = &self.sources[si].files[fi];
            let Some(file) = &f.file else { return 0 };
            match file.read_at(&mut self.buf, f.read_pos) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(file = %f.path.display(), error = %e, "tend-logs: read failed");
                    0
                }
            }
        };
        if n == 0 {
            self.at_eof(si, fi);
            return 0;
        }
        self.sources[si].files[fi].eof = false;
        let buf = std::mem::take(&mut self.buf);
        self.ingest_bytes(si, fi, Some(&buf[..n]));
        self.buf = buf;
        let f = &mut self.sources[si].files[fi];
        f.read_pos += n as u64;
        f.pending_since = match (f.split.has_pending(), f.pending_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(Instant::now()),
        };
        n
    }

    /// At end of file: notice a replaced or truncated file.
    fn at_eof(&mut self, si: usize, fi: usize) {
        let f = &mut self.sources[si].files[fi];
        f.eof = true;
        let Some(file) = &f.file else { return };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let replaced = match std::fs::metadata(&f.path) {
            Ok(m) => m.ino() != f.ino,
            Err(_) => true,
        };
        if replaced {
            // The old file is fully read: store its partial line, then follow the path anew.
            self.flush_partial(si, fi, true);
            self.close_file(si, fi);
            let f = &mut self.sources[si].files[fi];
            f.resume = None;
            self.dirty = true;
        } else if size < f.read_pos {
            tracing::warn!(file = %f.path.display(), "tend-logs: capture file truncated; reading it from the start");
            f.split.reset(0);
            f.read_pos = 0;
            f.punched = 0;
        }
    }

    /// Stores the unfinished last line of a file if it waited long enough (or `force`).
    fn flush_partial(&mut self, si: usize, fi: usize, force: bool) {
        let f = &self.sources[si].files[fi];
        if !f.split.has_pending() || f.file.is_none() {
            return;
        }
        if !force
            && f.pending_since
                .is_none_or(|t| t.elapsed() < PARTIAL_LINE_WAIT)
        {
            return;
        }
        self.ingest_bytes(si, fi, None);
        self.sources[si].files[fi].pending_since = None;
    }

    /// Splits `chunk` (or flushes the partial line when None) and stores the lines.
    fn ingest_bytes(&mut self, si: usize, fi: usize, chunk: Option<&[u8]>) {
        let Some(enc) = self.enc.as_mut() else { return };
        let src = &mut self.sources[si];
        let svc = src.service.clone();
        let rate = self.shared.config.rate_limit_bytes_per_sec;
        let now = Instant::now();
        let credit = self.credit.remove(&*svc.name).unwrap_or(0.0);
        let bucket = self
            .buckets
            .entry(svc.name.clone())
            .or_insert_with(|| Bucket::new(rate, credit, now));
        let f = &mut src.files[fi];
        let time = to_nanos(SystemTime::now()).max(f.last_time);
        f.last_time = time;
        let mut ctx = LineCtx {
            svc: &svc,
            release: src.release,
            instance: &src.instance,
            bucket,
            enc,
            segment_bytes: self.shared.config.segment_bytes,
            now,
            written: &mut self.written,
        };
        {
            let mut st = lock(&svc.store);
            let (stream, ino, hint) = (f.stream, f.ino, &mut f.label_hint);
            let mut emit = |line: &[u8], end: u64| {
                ingest_line(&mut ctx, &mut st, stream, ino, time, hint, line, end);
            };
            match chunk {
                Some(c) => f.split.feed(c, &mut emit),
                None => f.split.flush(&mut emit),
            }
        }
        self.dirty = true;
        // Budgets right after a block is written (sizes only, cheap), so the store
        // never exceeds one by more than the segment being written.
        if std::mem::take(&mut self.written) {
            enforce_retention(&self.shared);
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            for si in 0..self.sources.len() {
                for fi in 0..2 {
                    self.flush_partial(si, fi, false);
                }
            }
            self.report_drops(now);
            for svc in self.shared.all_services() {
                svc.subs.tick();
            }
        }
        let commit_every = if self.commit_failing {
            COMMIT_INTERVAL * 5
        } else {
            COMMIT_INTERVAL
        };
        if now.duration_since(self.last_commit) >= commit_every {
            self.last_commit = now;
            if self.dirty || self.any_active() {
                self.commit();
            }
        }
        // After every block written (sizes only: cheap), so a budget is never
        // exceeded by more than the block being written; ages every few seconds.
        if self.written || now.duration_since(self.last_retention) >= RETENTION_INTERVAL {
            self.written = false;
            self.last_retention = now;
            enforce_retention(&self.shared);
            let cutoff = to_nanos(SystemTime::now()) / 1_000_000;
            let age = self.shared.config.retention_age.as_millis() as u64;
            let before = self.tombstones.len();
            self.tombstones.retain(|t| t.at_ms + age >= cutoff);
            self.dirty |= before != self.tombstones.len();
        }
    }

    fn any_active(&self) -> bool {
        self.shared
            .all_services()
            .iter()
            .any(|s| !lock(&s.store).active.is_empty())
    }

    /// Writes the "N lines dropped" notice of services whose flood is over.
    fn report_drops(&mut self, now: Instant) {
        let mut reports = Vec::new();
        for (name, b) in self.buckets.iter_mut() {
            if let Some(r) = b.report(now) {
                reports.push((name.clone(), r));
            }
        }
        for (name, (lines, bytes)) in reports {
            if let Some(svc) = self.shared.existing_service(&name) {
                let mut st = lock(&svc.store);
                drop_notice(&svc, &mut st, lines, bytes);
            }
        }
    }

    /// Writes every active block, fsyncs, writes the checkpoint, punches holes.
    /// Returns whether the checkpoint was written.
    fn commit(&mut self) -> bool {
        let r = self.try_commit();
        match &r {
            Ok(()) => {
                if self.commit_failing {
                    tracing::info!("tend-logs: commits succeed again");
                }
                self.commit_failing = false;
                self.dirty = false;
            }
            Err(e) => {
                if !self.commit_failing {
                    tracing::error!(error = %e, "tend-logs: commit failed; lines stay in the capture files and are retried");
                }
                self.commit_failing = true;
            }
        }
        if r.is_ok() {
            self.punch_holes();
        }
        r.is_ok()
    }

    fn try_commit(&mut self) -> Result<(), crate::LogError> {
        let Some(enc) = self.enc.as_mut() else {
            return Err(crate::LogError::Corrupt {
                path: self.shared.config.dir.clone(),
                reason: "no zstd context".into(),
            });
        };
        let services = self.shared.all_services();
        let mut jobs = Vec::new();
        for svc in &services {
            let mut st = lock(&svc.store);
            if !st.active.is_empty() {
                st.flush(enc, self.shared.config.segment_bytes)?;
                self.written = true;
            }
            if let Some(j) = st.sync_job() {
                jobs.push((svc.clone(), j));
            }
        }
        // Budgets first: a freshly written block must not wait for the fsyncs.
        if std::mem::take(&mut self.written) {
            enforce_retention(&self.shared);
        }
        // Outside the store locks: queries go on while we wait for the disk.
        for (svc, j) in &jobs {
            j.file
                .sync_data()
                .map_err(crate::io_err(&svc.name.to_string()))?;
            if let Some(d) = &j.dir {
                sync_dir(d)?;
            }
            lock(&svc.store).synced(&j.name, j.len);
        }
        let mut ck = Checkpoint {
            tombstones: self.tombstones.clone(),
            ..Checkpoint::default()
        };
        for s in &self.sources {
            ck.sources.push(CkSource {
                service: s.service.name.to_string(),
                team: s.team.clone(),
                release: s.release,
                instance: s.instance.to_string(),
                stdout: s.files[0].ck(),
                stderr: s.files[1].ck(),
                finishing: s.finishing,
            });
        }
        for svc in &services {
            if let Some((name, len)) = lock(&svc.store).durable_segment() {
                ck.segments.push(CkSegment {
                    service: svc.name.to_string(),
                    name,
                    len,
                });
            }
        }
        ck.store(&self.shared.config.dir)
    }

    /// Frees the disk blocks of the durably ingested prefix of every capture file.
    fn punch_holes(&mut self) {
        for s in &mut self.sources {
            for f in &mut s.files {
                let Some(file) = &f.file else { continue };
                if !f.can_punch {
                    continue;
                }
                let upto = f.split.consumed() / PAGE * PAGE;
                if upto <= f.punched {
                    continue;
                }
                match punch_hole(file, upto) {
                    Ok(()) => f.punched = upto,
                    Err(e) => {
                        tracing::debug!(file = %f.path.display(), error = %e, "tend-logs: cannot punch holes; the capture file keeps its size on disk");
                        f.can_punch = false;
                    }
                }
            }
        }
    }

    /// The sources drained after `finish`: tombstone, commit, delete their files.
    fn finish_sources(&mut self, mut done: Vec<usize>) {
        // A process still holding a capture file open (the same instance id started
        // again, or `finish` called too early) would write into a deleted file:
        // keep watching such a source instead.
        done.retain(|&si| {
            let s = &mut self.sources[si];
            let busy = s.files.iter().any(|f| f.file.as_ref().is_some_and(file_in_use));
            if busy {
                tracing::info!(instance = %s.instance, "tend-logs: finish: a process still has the capture files open; watching on");
                s.finishing = false;
            }
            !busy
        });
        if done.is_empty() {
            return;
        }
        let at_ms = to_nanos(SystemTime::now()) / 1_000_000;
        for &si in &done {
            let s = &self.sources[si];
            let horizon = lock(&s.service.store).next_seq;
            self.tombstones
                .retain(|t| !(*t.instance == *s.instance && *t.service == *s.service.name));
            self.tombstones.push(CkTombstone {
                service: s.service.name.to_string(),
                instance: s.instance.to_string(),
                horizon,
                at_ms,
            });
        }
        if !self.commit() {
            return; // retried on a later pass: the sources stay, drained and finishing
        }
        done.sort_unstable();
        for &si in done.iter().rev() {
            for fi in 0..2 {
                let f = &self.sources[si].files[fi];
                // Only the file we ingested: a new file at the same path is someone else's.
                let same =
                    f.file.is_some() && std::fs::metadata(&f.path).is_ok_and(|m| m.ino() == f.ino);
                if same {
                    if let Err(e) = std::fs::remove_file(&f.path) {
                        tracing::warn!(file = %f.path.display(), error = %e, "tend-logs: cannot delete a finished capture file");
                    }
                }
                self.close_file(si, fi);
            }
            let s = self.sources.remove(si);
            tracing::debug!(instance = %s.instance, "tend-logs: source finished");
        }
        self.dirty = true;
    }
}

/// The per-line path: rate limit, JSON lifting, append, followers.
#[allow(clippy::too_many_arguments)]
fn ingest_line(
    ctx: &mut LineCtx<'_>,
    st: &mut ServiceStore,
    stream: Stream,
    ino: u64,
    time: u64,
    hint: &mut Option<(u64, u32)>,
    line: &[u8],
    end: u64,
) {
    let cost = line.len() as u64 + 1;
    if !ctx.bucket.take(cost, ctx.now) {
        let c = &ctx.svc.counters;
        c.dropped_lines.fetch_add(1, Ordering::Relaxed);
        c.dropped_bytes.fetch_add(cost, Ordering::Relaxed);
        return;
    }
    if let Some((lines, bytes)) = ctx.bucket.report(ctx.now) {
        drop_notice(ctx.svc, st, lines, bytes);
    }
    let raw = String::from_utf8_lossy(line);
    let lifted = if raw.trim_start().starts_with('{') {
        lift_json(&raw)
    } else {
        None
    };
    let (level, message, app_time) = match &lifted {
        Some(l) => (
            l.level,
            l.message.as_deref().filter(|m| *m != raw),
            l.time.map(to_nanos),
        ),
        None => (None, None, None),
    };
    let nl = NewLine {
        time,
        release: Some(ctx.release),
        instance: Some(ctx.instance),
        stream,
        file: Some((ino, end)),
        level,
        raw: &raw,
        message,
        app_time,
    };
    append_locked(ctx.svc, st, &nl, hint);
    if st.block_full() {
        match st.flush(ctx.enc, ctx.segment_bytes) {
            Ok(_) => *ctx.written = true,
            Err(e) => {
                tracing::warn!(service = %ctx.svc.name, error = %e, "tend-logs: cannot write a block; retrying at the next commit")
            }
        }
    }
}

/// Appends a line under the store lock, counts it, offers it to followers.
fn append_locked(
    svc: &Service,
    st: &mut ServiceStore,
    nl: &NewLine<'_>,
    hint: &mut Option<(u64, u32)>,
) {
    let seq = st.append(nl, hint);
    if let Some(x) = &svc.export {
        x.push(&svc.name, nl);
    }
    let c = &svc.counters;
    c.lines.fetch_add(1, Ordering::Relaxed);
    c.bytes.fetch_add(nl.raw.len() as u64, Ordering::Relaxed);
    if svc.subs.any() {
        let cand = Candidate {
            release: nl.release,
            instance: nl.instance,
            stream: nl.stream,
            level: nl.level.map_or(0, Level::code),
            raw: nl.raw,
        };
        svc.subs.offer(&cand, || LogLine {
            time: from_nanos(nl.time),
            service: svc.name.to_string(),
            release: nl.release,
            instance: nl.instance.map(str::to_owned),
            stream: nl.stream,
            level: nl.level,
            message: nl.message.unwrap_or(nl.raw).to_owned(),
            raw: nl.raw.to_owned(),
            seq,
            app_time: nl.app_time.map(from_nanos),
        });
    }
}

fn drop_notice(svc: &Service, st: &mut ServiceStore, lines: u64, bytes: u64) {
    let msg = format!("{lines} lines ({bytes} bytes) dropped by rate limit");
    tracing::warn!(service = %svc.name, lines, bytes, "tend-logs: lines dropped by rate limit");
    let nl = NewLine {
        time: to_nanos(SystemTime::now()),
        release: None,
        instance: None,
        stream: Stream::Platform,
        file: None,
        level: Some(Level::Warn),
        raw: &msg,
        message: None,
        app_time: None,
    };
    append_locked(svc, st, &nl, &mut None);
}

/// A platform line from any thread.
pub(crate) fn append_platform(
    _shared: &Shared,
    svc: &Service,
    release: Option<u32>,
    instance: Option<&str>,
    level: Level,
    message: &str,
    time: SystemTime,
) {
    let msg: std::borrow::Cow<'_, str> = if message.contains(['\n', '\r']) {
        message.replace(['\n', '\r'], " ").into()
    } else {
        message.into()
    };
    let nl = NewLine {
        time: to_nanos(time),
        release,
        instance,
        stream: Stream::Platform,
        file: None,
        level: Some(level),
        raw: &msg,
        message: None,
        app_time: None,
    };
    let mut st = lock(&svc.store);
    append_locked(svc, &mut st, &nl, &mut None);
}

/// Whether any process has this file open (a scan of `/proc/*/fd`; finish is rare).
fn file_in_use(file: &File) -> bool {
    let Ok(me) = file.metadata() else {
        return false;
    };
    let own = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == own {
            continue; // our own descriptor (and a test's writer thread) is no writer process
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::metadata(fd.path())
                .is_ok_and(|m| m.ino() == me.ino() && m.dev() == me.dev())
            {
                return true;
            }
        }
    }
    false
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)` over `[0, upto)`.
fn punch_hole(file: &File, upto: u64) -> io::Result<()> {
    // SAFETY: fallocate on a valid fd with in-range arguments has no memory-safety preconditions.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            upto as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
