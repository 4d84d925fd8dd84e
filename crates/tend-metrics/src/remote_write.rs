//! Prometheus remote-write 1.0 export, for teams that outgrow one machine.
//!
//! # Shape
//! [`RemoteWriter::push`] is called with every batch the collector stores: an
//! O(n) copy into a bounded queue under a mutex, never waiting for the
//! network. Past [`RemoteWriteConfig::queue_samples`] waiting samples the
//! *oldest* are dropped and counted ([`RemoteWriteStats::dropped`]): when the
//! receiver is down for long, the newest data is worth more.
//!
//! A thread of its own (`tend-remote-write`) with a current-thread tokio
//! runtime sends the queue in order, at most `batch_samples` per request, as
//! the protocol says: a protobuf `WriteRequest` (encoded here by hand: four
//! small messages, no protoc needed), snappy block-compressed, `POST`ed with
//! `Content-Encoding: snappy`, `Content-Type: application/x-protobuf` and
//! `X-Prometheus-Remote-Write-Version: 0.1.0`.
//!
//! 2xx: sent. 5xx, 429, connection errors and timeouts: the same batch is
//! retried after an exponential backoff (100 ms doubling up to
//! `max_backoff`, ±10 % jitter), the queue filling (and overflowing) behind
//! it. Any other status (400 out-of-order, 401, 413, ...) would fail again
//! the same way: the batch is dropped and counted, and the receiver's message
//! logged. Samples of one series are sent in time order, each once (unless
//! an attempt timed out after the receiver stored it; Prometheus ignores the
//! duplicate).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::Labels;

/// First retry delay of a failing batch; doubled per attempt up to `max_backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Where and how to send samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteWriteConfig {
    /// The receiver's endpoint, e.g. `http://prometheus:9090/api/v1/write`.
    pub url: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub bearer_token: Option<String>,
    /// Most samples in one request (default 2 000).
    pub batch_samples: usize,
    /// Samples waiting beyond this are dropped, oldest first (default 500 000).
    pub queue_samples: usize,
    /// Longest wait between two attempts of a failing batch (default 30 s).
    pub max_backoff: Duration,
    /// Timeout of one request (default 10 s).
    pub timeout: Duration,
}

impl RemoteWriteConfig {
    /// The defaults, sending to `url`.
    pub fn new(url: impl Into<String>) -> RemoteWriteConfig {
        RemoteWriteConfig {
            url: url.into(),
            bearer_token: None,
            batch_samples: 2000,
            queue_samples: 500_000,
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a remote writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    /// The URL is not an absolute http(s) URL.
    #[error("invalid remote-write URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client or the thread could not be made.
    #[error("cannot start remote write: {0}")]
    Start(String),
}

/// Counters of a [`RemoteWriter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteWriteStats {
    /// Samples the receiver accepted.
    pub sent: u64,
    /// Samples dropped: the queue overflowed, or the receiver refused them for good.
    pub dropped: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Samples waiting in the queue.
    pub pending: u64,
}

type Sample = (Labels, i64, f64);

struct Shared {
    cfg: RemoteWriteConfig,
    queue: Mutex<VecDeque<Sample>>,
    wake: tokio::sync::Notify,
    stop: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

/// Sends every pushed sample to a remote-write receiver. Cheap to clone.
#[derive(Clone)]
pub struct RemoteWriter {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl RemoteWriter {
    /// Validates the configuration and starts the sending thread.
    pub fn start(cfg: RemoteWriteConfig) -> Result<RemoteWriter, RemoteWriteError> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| RemoteWriteError::Url {
            url: cfg.url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RemoteWriteError::Url {
                url: cfg.url.clone(),
                reason: "the scheme must be http or https".into(),
            });
        }
        if cfg.batch_samples == 0 || cfg.queue_samples == 0 {
            return Err(RemoteWriteError::Start(
                "batch and queue sizes must be positive".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RemoteWriteError::Start(e.to_string()))?;
        let shared = Arc::new(Shared {
            cfg,
            queue: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteWriteError::Start(e.to_string()))?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tend-remote-write".into())
            .spawn(move || rt.block_on(run(s, client, url)))
            .map_err(|e| RemoteWriteError::Start(e.to_string()))?;
        Ok(RemoteWriter {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Queues samples for sending; drops the oldest waiting ones beyond the queue's size.
    pub fn push(&self, samples: &[(Labels, i64, f64)]) {
        if samples.is_empty() {
            return;
        }
        let cap = self.shared.cfg.queue_samples;
        {
            let mut q = self.shared.queue.lock();
            q.extend(samples.iter().cloned());
            let over = q.len().saturating_sub(cap);
            if over > 0 {
                q.drain(..over);
                self.shared
                    .dropped
                    .fetch_add(over as u64, Ordering::Relaxed);
            }
        }
        self.shared.wake.notify_one();
    }

    /// The counters so far.
    pub fn stats(&self) -> RemoteWriteStats {
        RemoteWriteStats {
            sent: self.shared.sent.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
            pending: self.shared.queue.lock().len() as u64,
        }
    }

    /// Stops sending (what still waits is dropped) and joins the thread.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

enum Outcome {
    Sent,
    Retry(String),
    Refused(String),
}

async fn run(shared: Arc<Shared>, client: reqwest::Client, url: reqwest::Url) {
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut warned_refusal = false;
    loop {
        let batch: Vec<Sample> = {
            let mut q = shared.queue.lock();
            let n = q.len().min(shared.cfg.batch_samples);
            q.drain(..n).collect()
        };
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        if batch.is_empty() {
            // Bounded: a stop flag set between the check and the wait is seen within a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.wake.notified()).await;
            continue;
        }
        let body = match snap::raw::Encoder::new().compress_vec(&encode(&batch)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "remote write: cannot compress a batch; dropped");
                shared
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
        };
        let mut backoff = INITIAL_BACKOFF;
        loop {
            match attempt(&client, &url, &shared.cfg, body.clone()).await {
                Outcome::Sent => {
                    shared.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Outcome::Refused(why) => {
                    if !warned_refusal {
                        tracing::warn!(%url, reason = %why, "remote write: the receiver refused a batch; dropped");
                        warned_refusal = true;
                    } else {
                        tracing::debug!(%url, reason = %why, "remote write: batch refused");
                    }
                    shared
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
                Outcome::Retry(why) => {
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%url, reason = %why, ?backoff, "remote write: retrying");
                    // xorshift: jitter so that many writers do not retry in step.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let jitter = 0.9 + (seed % 1000) as f64 / 5000.0;
                    let wait = backoff.mul_f64(jitter);
                    backoff = (backoff * 2).min(shared.cfg.max_backoff);
                    let _ = tokio::time::timeout(wait, async {
                        while !shared.stop.load(Ordering::Relaxed) {
                            shared.wake.notified().await;
                        }
                    })
                    .await;
                    if shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }
}

async fn attempt(
    client: &reqwest::Client,
    url: &reqwest::Url,
    cfg: &RemoteWriteConfig,
    body: Vec<u8>,
) -> Outcome {
    let mut req = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_ENCODING, "snappy")
        .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body);
    if let Some(t) = &cfg.bearer_token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Err(e) => Outcome::Retry(e.to_string()),
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                return Outcome::Sent;
            }
            let text = resp.text().await.unwrap_or_default();
            let why = format!("HTTP {status}: {}", text.trim());
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                Outcome::Retry(why)
            } else {
                Outcome::Refused(why)
            }
        }
    }
}

// ---- protobuf (prometheus/prompb: WriteRequest, TimeSeries, Label, Sample) ----

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Encodes samples as a `WriteRequest`: one `TimeSeries` per label set, in
/// order of first appearance, its samples in the order given.
pub fn encode(samples: &[(Labels, i64, f64)]) -> Vec<u8> {
    let mut order: Vec<&Labels> = Vec::new();
    let mut by_series: HashMap<&Labels, Vec<(i64, f64)>> = HashMap::new();
    for (l, t, v) in samples {
        by_series
            .entry(l)
            .or_insert_with(|| {
                order.push(l);
                Vec::new()
            })
            .push((*t, *v));
    }
    let mut out = Vec::with_capacity(samples.len() * 64);
    let mut ts = Vec::new();
    let mut msg = Vec::new();
    for l in order {
        ts.clear();
        // Labels are kept sorted by name, as the protocol requires.
        for (name, value) in l.iter() {
            msg.clear();
            bytes_field(&mut msg, 1, name.as_bytes());
            bytes_field(&mut msg, 2, value.as_bytes());
            bytes_field(&mut ts, 1, &msg);
        }
        for (t, v) in &by_series[l] {
            msg.clear();
            msg.push(1 << 3 | 1); // value: double, fixed64
            msg.extend_from_slice(&v.to_bits().to_le_bytes());
            msg.push(2 << 3); // timestamp: int64, varint
            varint(&mut msg, *t as u64);
            bytes_field(&mut ts, 2, &msg);
        }
        bytes_field(&mut out, 1, &ts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_a_known_message() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        // One series {__name__="up"} with one sample (t=1, v=1.0), checked
        // byte by byte against the protobuf encoding rules.
        let l = Labels::from_pairs(&[("__name__", "up")]);
        let got = encode(&[(l, 1, 1.0)]);
        let label = [
            0x0a, 8, b'_', b'_', b'n', b'a', b'm', b'e', b'_', b'_', 0x12, 2, b'u', b'p',
        ];
        let mut sample = vec![0x09];
        sample.extend_from_slice(&1.0f64.to_bits().to_le_bytes());
        sample.extend_from_slice(&[0x10, 1]);
        let mut series = vec![0x0a, label.len() as u8];
        series.extend_from_slice(&label);
        series.extend_from_slice(&[0x12, sample.len() as u8]);
        series.extend_from_slice(&sample);
        let mut want = vec![0x0a, series.len() as u8];
        want.extend_from_slice(&series);
        assert_eq!(got, want);
    }

    #[test]
    fn negative_timestamps_are_ten_byte_varints() {
        let mut v = Vec::new();
        varint(&mut v, -1i64 as u64);
        assert_eq!(v.len(), 10);
    }

    #[test]
    fn samples_of_a_series_are_grouped_in_order() {
        let a = Labels::from_pairs(&[("__name__", "a")]);
        let b = Labels::from_pairs(&[("__name__", "b")]);
        let got = encode(&[
            (a.clone(), 1, 1.0),
            (b.clone(), 1, 2.0),
            (a.clone(), 2, 3.0),
        ]);
        let want_a = encode(&[(a.clone(), 1, 1.0), (a, 2, 3.0)]);
        let want_b = encode(&[(b, 1, 2.0)]);
        assert_eq!(got, [want_a, want_b].concat());
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(RemoteWriter::start(RemoteWriteConfig::new("not a url")).is_err());
        assert!(RemoteWriter::start(RemoteWriteConfig::new("ftp://x/y")).is_err());
    }

    #[test]
    fn an_unreachable_receiver_fills_the_queue_and_drops_the_oldest() {
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let mut cfg = RemoteWriteConfig::new(format!("http://127.0.0.1:{port}/api/v1/write"));
        cfg.queue_samples = 10;
        cfg.batch_samples = 5;
        let w = RemoteWriter::start(cfg).expect("start");
        let l = Labels::from_pairs(&[("__name__", "x")]);
        let batch: Vec<_> = (0..25).map(|i| (l.clone(), i, i as f64)).collect();
        w.push(&batch);
        let st = w.stats();
        assert!(st.dropped >= 15, "{st:?}");
        assert!(st.pending <= 10, "{st:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while w.stats().retries == 0 {
            assert!(std::time::Instant::now() < deadline, "no retry seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(w.stats().sent, 0);
        w.shutdown();
    }
}
