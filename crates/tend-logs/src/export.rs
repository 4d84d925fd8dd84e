//! Optional export of every stored line to a Loki push API, for teams whose logs
//! must leave the machine.
//!
//! # Shape
//! Enabled by [`LogConfig::export`](crate::LogConfig::export) with a
//! [`ExportConfig::loki_url`]. Every line that enters the store (instance output,
//! platform lines, rate-limit notices) is also handed to the exporter at the
//! moment it is appended, by [`Hook::push`]: an O(1) push into a bounded queue
//! under a mutex held for a few pointer moves, never waiting for the network.
//! When the queue holds [`ExportConfig::buffer_lines`] lines the *oldest* waiting
//! line is dropped and counted (`LogStats::export_dropped`), and a platform line
//! "log export: N lines dropped (buffer full)" is written into the service's log
//! at most once a minute.
//!
//! The exporter runs on a thread of its own (`tend-logs-export`) with a small
//! current-thread tokio runtime, whether or not the caller has a runtime: it can
//! then neither be starved by a busy (or single-threaded) caller runtime nor
//! block one, and shutdown can join it like the ingest thread.
//!
//! # Batches and delivery
//! A batch is sent once [`ExportConfig::batch_lines`] lines wait, or
//! [`ExportConfig::batch_wait`] after the exporter saw the first waiting line.
//! One `POST {loki_url}/loki/api/v1/push` per batch, JSON:
//! `{"streams":[{"stream":{"service","team","release","stream"},"values":[["<unix ns>","<raw line>",{"instance","level"}],...]}]}`.
//! The instance (high cardinality) and the level travel as Loki 3 structured
//! metadata, not as labels; `release` is `v<N>` and is absent on platform lines
//! that have none; values are sorted by time within each stream of a batch.
//!
//! 2xx: sent. 429, 5xx, connection errors and timeouts: the same batch is retried
//! after an exponential backoff (200 ms doubling up to
//! [`ExportConfig::max_backoff`], ±10 % jitter), or after `Retry-After` (delay in
//! seconds, honoured up to 5 min; the HTTP-date form is not parsed) when the
//! server gives one; a request times out after 10 s; each retry counts in `export_retries`. Any other
//! status (400, 401, 413, ...): the batch is dropped and counted, and the first
//! such rejection is logged (later ones at debug level). The batch being retried
//! is held aside (at most `batch_lines` lines) while the queue keeps filling, so
//! memory is bounded by `buffer_lines + batch_lines` lines; once the queue
//! overflows, the failing batch (older than anything queued) is dropped too at its
//! next failed attempt, so what is finally delivered is always the newest lines.
//!
//! # Guarantees
//! A line is in one batch; a batch is sent again only after a failed attempt, so
//! Loki gets each line once, unless an attempt failed after Loki had stored it
//! (a timeout): then twice, with the same stream, timestamp and text, which Loki
//! deduplicates. Lines are exported when they are appended, before they are
//! durable in the local store: lines of the last second re-read from the capture
//! files after a crash are exported again. A batch still failing when shutdown
//! begins is dropped; the lines still queued get one attempt per batch within
//! [`SHUTDOWN_GRACE`], the rest are counted as dropped.
//!
//! OTLP/HTTP is not implemented; the queue and retry machinery would carry it
//! with another encoder.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::segment::NewLine;
use crate::{lock, Level, Stream};

/// How long `shutdown` keeps trying to deliver the lines still waiting.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Minimum time between two "lines dropped" platform lines (per service).
pub(crate) const DROP_NOTICE_EVERY: Duration = Duration::from_secs(60);
/// First retry delay; doubled per failed attempt up to `max_backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Timeout of one push request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of a server's `Retry-After` that is honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How often the idle exporter wakes to write drop notices.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Where and how to export lines (set as [`LogConfig::export`](crate::LogConfig::export)).
///
/// Every stored line (instance output and platform lines) is pushed to
/// `{loki_url}/loki/api/v1/push` as JSON, with the labels `service`, `team`,
/// `release` (`v<N>`) and `stream`, and `instance` and `level` as Loki 3
/// structured metadata. Batches go out at `batch_lines` lines or `batch_wait`;
/// 429, 5xx and connection errors are retried with exponential backoff up to
/// `max_backoff` (or `Retry-After` seconds, up to 5 min); any other 4xx drops the
/// batch. Ingestion never waits: at most `buffer_lines` lines wait, the oldest
/// are dropped beyond. See `LogStats::export_*` for the counters.
/// `ExportConfig::default()` exports nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// Base URL of a Loki (`http://loki:3100`); lines go to `{url}/loki/api/v1/push`.
    /// None: no export.
    pub loki_url: Option<String>,
    /// A batch is sent when this many lines wait (default 1000).
    pub batch_lines: usize,
    /// ...or this long after the first of them was seen (default 1 s).
    pub batch_wait: Duration,
    /// Lines waiting beyond this are dropped, oldest first (default 100 000).
    pub buffer_lines: usize,
    /// Longest wait between two attempts of a failing batch (default 30 s).
    pub max_backoff: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            loki_url: None,
            batch_lines: 1000,
            batch_wait: Duration::from_secs(1),
            buffer_lines: 100_000,
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl ExportConfig {
    /// The defaults, exporting to the Loki at `url`.
    pub fn loki(url: impl Into<String>) -> Self {
        ExportConfig {
            loki_url: Some(url.into()),
            ..ExportConfig::default()
        }
    }
}

/// One line waiting for export.
struct ExportLine {
    time: u64,
    service: Arc<str>,
    release: Option<u32>,
    instance: Option<Box<str>>,
    stream: Stream,
    level: Option<Level>,
    line: Box<str>,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<ExportLine>,
    /// Lines dropped because the queue was full, per service, not yet noticed.
    drops: HashMap<Arc<str>, u64>,
    /// A line was dropped since the batch in flight was taken: that batch holds
    /// older lines still, so it goes next if its attempt fails.
    overflow: bool,
}

/// The ingest side of the exporter, shared by every service.
pub(crate) struct Hook {
    queue: Mutex<Queue>,
    cap: usize,
    batch: usize,
    /// Wakes the exporter: first line queued, a batch full, or stop.
    wake: tokio::sync::Notify,
    stop: AtomicBool,
    crash: AtomicBool,
    /// Service → team (the `team` label), learned from `watch` and the checkpoint.
    teams: Mutex<HashMap<String, Arc<str>>>,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub retries: AtomicU64,
}

impl Hook {
    /// Queues a stored line for export; never waits for the exporter.
    pub fn push(&self, service: &Arc<str>, nl: &NewLine<'_>) {
        let line = ExportLine {
            time: nl.time,
            service: service.clone(),
            release: nl.release,
            instance: nl.instance.map(Box::from),
            stream: nl.stream,
            level: nl.level,
            line: Box::from(nl.raw),
        };
        let (n, evicted) = {
            let mut q = lock(&self.queue);
            let evicted = if q.lines.len() >= self.cap {
                let e = q.lines.pop_front();
                if let Some(e) = &e {
                    *q.drops.entry(e.service.clone()).or_default() += 1;
                    q.overflow = true;
                }
                e
            } else {
                None
            };
            q.lines.push_back(line);
            (q.lines.len(), evicted)
        };
        if evicted.is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            drop(evicted); // freed outside the lock
        }
        if n == 1 || n == self.batch {
            self.wake.notify_one();
        }
    }

    /// Records the team of a service (for the `team` label).
    pub fn set_team(&self, service: &str, team: &str) {
        let mut t = lock(&self.teams);
        if t.get(service).is_none_or(|x| **x != *team) {
            t.insert(service.to_owned(), Arc::from(team));
        }
    }

    fn waiting(&self) -> usize {
        lock(&self.queue).lines.len()
    }

    fn take(&self, n: usize) -> Vec<ExportLine> {
        let mut q = lock(&self.queue);
        q.overflow = false;
        let n = n.min(q.lines.len());
        q.lines.drain(..n).collect()
    }

    /// Whether lines were dropped since the last `take`.
    fn overflowed(&self) -> bool {
        lock(&self.queue).overflow
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The exporter: its hook and its thread.
pub(crate) struct Exporter {
    pub hook: Arc<Hook>,
    thread: Mutex<Option<JoinHandle<()>>>,
    url: String,
    cfg: ExportConfig,
}

/// Writes "N lines dropped" platform lines: (service, lines).
pub(crate) type Notice = Box<dyn Fn(&str, u64) + Send + 'static>;

impl Exporter {
    /// An exporter for `cfg`, or None when it exports nowhere (or its URL is unusable).
    pub fn new(cfg: &ExportConfig) -> Option<Exporter> {
        let base = cfg.loki_url.as_deref()?.trim_end_matches('/');
        let url = format!("{base}/loki/api/v1/push");
        if let Err(e) = reqwest::Url::parse(&url) {
            tracing::error!(url, error = %e, "tend-logs: log export disabled: bad Loki URL");
            return None;
        }
        let cap = cfg.buffer_lines.max(1);
        let batch = cfg.batch_lines.max(1);
        Some(Exporter {
            hook: Arc::new(Hook {
                queue: Mutex::new(Queue::default()),
                cap,
                batch,
                wake: tokio::sync::Notify::new(),
                stop: AtomicBool::new(false),
                crash: AtomicBool::new(false),
                teams: Mutex::new(HashMap::new()),
                sent: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
            thread: Mutex::new(None),
            url,
            cfg: ExportConfig {
                batch_lines: batch,
                buffer_lines: cap,
                ..cfg.clone()
            },
        })
    }

    /// Starts the exporter thread; `notice` writes the drop notices.
    pub fn start(&self, notice: Notice) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        let run = Run {
            hook: self.hook.clone(),
            client,
            url: self.url.clone(),
            cfg: self.cfg.clone(),
            notice,
            last_notice: HashMap::new(),
            rejected_logged: false,
            failing: false,
            rng: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0x9E37_79B9, |d| d.as_nanos() as u64)
                | 1,
        };
        let t = std::thread::Builder::new()
            .name("tend-logs-export".into())
            .spawn(move || rt.block_on(run.run()))?;
        *lock(&self.thread) = Some(t);
        Ok(())
    }

    /// Stops the exporter: after a last delivery attempt (graceful), or at once.
    pub fn stop(&self, crash: bool) {
        if crash {
            self.hook.crash.store(true, Ordering::SeqCst);
        }
        self.hook.stop.store(true, Ordering::SeqCst);
        self.hook.wake.notify_one();
        if let Some(t) = lock(&self.thread).take() {
            if t.join().is_err() {
                tracing::error!("tend-logs: the export thread panicked");
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // Normally stopped (and joined) already; if `Logs::open` failed after the
        // thread started, it must not live on. Not joined: this may run on it.
        self.hook.crash.store(true, Ordering::SeqCst);
        self.hook.stop.store(true, Ordering::SeqCst);
        self.hook.wake.notify_one();
    }
}

/// What a delivery attempt came to.
enum Outcome {
    Sent,
    Rejected,
    Retry(Option<Duration>),
}

/// The exporter task's state.
struct Run {
    hook: Arc<Hook>,
    client: reqwest::Client,
    url: String,
    cfg: ExportConfig,
    notice: Notice,
    last_notice: HashMap<Arc<str>, Instant>,
    rejected_logged: bool,
    failing: bool,
    rng: u64,
}

impl Run {
    async fn run(mut self) {
        loop {
            self.notices(false);
            if self.hook.crash.load(Ordering::SeqCst) {
                return;
            }
            if self.hook.stopping() {
                self.drain().await;
                return;
            }
            if self.hook.waiting() == 0 {
                let _ = tokio::time::timeout(IDLE_TICK, self.hook.wake.notified()).await;
                continue;
            }
            // Lines wait: until a full batch, batch_wait, or stop.
            let deadline = tokio::time::Instant::now() + self.cfg.batch_wait;
            while self.hook.waiting() < self.cfg.batch_lines && !self.hook.stopping() {
                if tokio::time::timeout_at(deadline, self.hook.wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if self.hook.stopping() {
                continue;
            }
            let batch = self.hook.take(self.cfg.batch_lines);
            if !batch.is_empty() {
                self.deliver(batch).await;
            }
        }
    }

    /// Sends one batch, retrying while the failure is worth a retry and we are not stopping.
    async fn deliver(&mut self, batch: Vec<ExportLine>) {
        let body = self.encode(&batch);
        let n = batch.len() as u64;
        let mut per_service: Vec<(Arc<str>, u64)> = Vec::new();
        for l in &batch {
            match per_service
                .iter_mut()
                .find(|(s, _)| Arc::ptr_eq(s, &l.service))
            {
                Some((_, c)) => *c += 1,
                None => per_service.push((l.service.clone(), 1)),
            }
        }
        drop(batch);
        let mut backoff = INITIAL_BACKOFF.min(self.cfg.max_backoff);
        loop {
            match self.attempt(&body, REQUEST_TIMEOUT).await {
                Outcome::Sent => {
                    self.hook.sent.fetch_add(n, Ordering::Relaxed);
                    return;
                }
                Outcome::Rejected => {
                    self.hook.dropped.fetch_add(n, Ordering::Relaxed);
                    return;
                }
                Outcome::Retry(after) => {
                    if self.hook.stopping() {
                        // Shutdown: the drain makes the last attempt; this batch is lost.
                        self.hook.dropped.fetch_add(n, Ordering::Relaxed);
                        return;
                    }
                    if self.hook.overflowed() {
                        // The buffer is full and dropping its oldest lines: this
                        // batch is older still, so it is dropped first.
                        self.hook.dropped.fetch_add(n, Ordering::Relaxed);
                        let mut q = lock(&self.hook.queue);
                        for (svc, c) in per_service {
                            *q.drops.entry(svc).or_default() += c;
                        }
                        return;
                    }
                    self.hook.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = after.unwrap_or_else(|| self.jitter(backoff));
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                    if !self.pause(wait).await {
                        self.hook.dropped.fetch_add(n, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps `wait` (writing drop notices meanwhile); false if stopped meanwhile.
    async fn pause(&mut self, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            if self.hook.stopping() {
                return false;
            }
            let step = tokio::time::Instant::now() + IDLE_TICK;
            let r = tokio::time::timeout_at(until.min(step), self.hook.wake.notified()).await;
            self.notices(false);
            if r.is_err() && tokio::time::Instant::now() >= until {
                return true;
            }
        }
    }

    /// On shutdown: one attempt per batch until the grace period is over.
    async fn drain(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            let batch = self.hook.take(self.cfg.batch_lines);
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.hook.dropped.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            let body = self.encode(&batch);
            drop(batch);
            match self.attempt(&body, left.min(REQUEST_TIMEOUT)).await {
                Outcome::Sent => self.hook.sent.fetch_add(n, Ordering::Relaxed),
                Outcome::Rejected | Outcome::Retry(_) => {
                    self.hook.dropped.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        self.notices(true);
    }

    async fn attempt(&mut self, body: &[u8], timeout: Duration) -> Outcome {
        let r = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body.to_vec())
            .send()
            .await;
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(url = %self.url, error = %e, "tend-logs: log export failing; retrying with backoff");
                }
                self.failing = true;
                return Outcome::Retry(None);
            }
        };
        let status = resp.status();
        if status.is_success() {
            if self.failing {
                tracing::info!(url = %self.url, "tend-logs: log export works again");
            }
            self.failing = false;
            return Outcome::Sent;
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            if !self.failing {
                tracing::warn!(url = %self.url, %status, "tend-logs: log export failing; retrying with backoff");
            }
            self.failing = true;
            return Outcome::Retry(after);
        }
        let text = resp.text().await.unwrap_or_default();
        let text = text.get(..text.len().min(300)).unwrap_or("");
        if !self.rejected_logged {
            self.rejected_logged = true;
            tracing::error!(url = %self.url, %status, response = %text, "tend-logs: log export rejected a batch; its lines are dropped (further rejections are logged at debug level)");
        } else {
            tracing::debug!(url = %self.url, %status, response = %text, "tend-logs: log export rejected a batch");
        }
        Outcome::Rejected
    }

    /// Writes the "lines dropped" platform line of each service due; at shutdown
    /// (`last`) only logs them, as the store takes no more lines.
    fn notices(&mut self, is_last: bool) {
        let due: Vec<(Arc<str>, u64)> = {
            let mut q = lock(&self.hook.queue);
            if q.drops.is_empty() {
                return;
            }
            let last = &self.last_notice;
            let due: Vec<Arc<str>> = q
                .drops
                .keys()
                .filter(|s| {
                    is_last
                        || last
                            .get(*s)
                            .is_none_or(|t| t.elapsed() >= DROP_NOTICE_EVERY)
                })
                .cloned()
                .collect();
            due.into_iter()
                .filter_map(|s| q.drops.remove(&s).map(|n| (s, n)))
                .collect()
        };
        for (svc, n) in due {
            tracing::warn!(service = %svc, lines = n, "tend-logs: log export buffer full; oldest lines dropped");
            if !is_last {
                (self.notice)(&svc, n);
            }
            self.last_notice.insert(svc, Instant::now());
        }
    }

    /// `d` ± 10 %.
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let f = 0.9 + (self.rng % 2001) as f64 / 10_000.0;
        d.mul_f64(f)
    }

    /// The Loki push body of a batch.
    fn encode(&self, batch: &[ExportLine]) -> Vec<u8> {
        let teams = lock(&self.hook.teams).clone();
        let mut groups: HashMap<(&str, Option<u32>, Stream), Vec<&ExportLine>> = HashMap::new();
        for l in batch {
            groups
                .entry((&*l.service, l.release, l.stream))
                .or_default()
                .push(l);
        }
        let mut keys: Vec<_> = groups.keys().copied().collect();
        keys.sort_unstable();
        let streams = keys
            .into_iter()
            .map(|k| {
                let mut lines = groups.remove(&k).unwrap_or_default();
                lines.sort_by_key(|l| l.time); // stable: ingest order among equal times
                let (service, release, stream) = k;
                PushStream {
                    stream: Labels {
                        service,
                        team: teams.get(service).map(|t| t.to_string()),
                        release: release.map(|r| format!("v{r}")),
                        stream: stream.as_str(),
                    },
                    values: lines
                        .into_iter()
                        .map(|l| {
                            (
                                l.time.to_string(),
                                &*l.line,
                                Meta {
                                    instance: l.instance.as_deref(),
                                    level: l.level.map(Level::as_str),
                                },
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        serde_json::to_vec(&Push { streams }).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Push<'a> {
    streams: Vec<PushStream<'a>>,
}

#[derive(Serialize)]
struct PushStream<'a> {
    stream: Labels<'a>,
    values: Vec<(String, &'a str, Meta<'a>)>,
}

#[derive(Serialize)]
struct Labels<'a> {
    service: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    release: Option<String>,
    stream: &'static str,
}

#[derive(Serialize)]
struct Meta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<&'static str>,
}
