//! Request counters and latency histograms, per service and per instance.
//!
//! The hot path only touches atomics in a [`Stats`] that was allocated when
//! the routing table changed: a request costs a handful of relaxed
//! `fetch_add`s and no allocation. Snapshots and the Prometheus text are
//! built on the cold path (a scrape), from the same atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::Method;

/// Methods that get their own label value; anything else is `OTHER`, so a
/// client inventing methods cannot grow the number of series.
pub(crate) const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Index of `method` in [`METHODS`].
pub(crate) fn method_index(method: &Method) -> u8 {
    // Comparisons against the standard constants are enum compares, no string work.
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// Prometheus' default buckets (`DefBuckets` in client_golang), in nanoseconds,
/// so dashboards written for other services work unchanged.
const BUCKET_NANOS: [u64; 11] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The `le` label of each bucket, written as Prometheus clients write them.
const BUCKET_LABELS: [&str; 11] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];

/// The class of an HTTP status code, the `code` label (`2xx`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusClass {
    /// 1xx, e.g. `101 Switching Protocols` of a WebSocket.
    Informational,
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx, including the router's own 404 and 413, and 499 for a client
    /// that went away before the answer.
    ClientError,
    /// 5xx, including the router's own 502, 503 and 504.
    ServerError,
}

impl StatusClass {
    /// All classes, in label order.
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    /// The class of `status`; codes outside 100..=599 count as server errors.
    pub fn of(status: u16) -> StatusClass {
        Self::ALL[Self::index(status)]
    }

    fn index(status: u16) -> usize {
        match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        }
    }

    /// The label value: `1xx` to `5xx`.
    pub fn label(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// The live counters of one (service, instance) pair.
///
/// Allocated when the routing table introduces the instance and shared by
/// every lookup structure that routes to it, so counters survive table
/// updates and outlive the instance's removal until it is drained.
pub(crate) struct Stats {
    pub(crate) service: Box<str>,
    pub(crate) instance: Box<str>,
    in_flight: AtomicU64,
    /// False once the instance has left the published lookup structure;
    /// `drained` needs it to tell "idle between two requests" from "gone".
    routable: AtomicBool,
    requests: [[AtomicU64; 5]; METHODS.len()],
    /// Non-cumulative; the last slot is the `+Inf` overflow. `_count` is
    /// their sum, so `+Inf` and `_count` always agree in one scrape.
    buckets: [AtomicU64; BUCKET_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Stats {
    pub(crate) fn new(service: &str, instance: &str) -> Arc<Stats> {
        Arc::new(Stats {
            service: service.into(),
            instance: instance.into(),
            in_flight: AtomicU64::new(0),
            routable: AtomicBool::new(false),
            requests: Default::default(),
            buckets: Default::default(),
            sum_nanos: AtomicU64::new(0),
        })
    }

    pub(crate) fn enter(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn set_routable(&self, routable: bool) {
        self.routable.store(routable, Relaxed);
    }

    pub(crate) fn is_routable(&self) -> bool {
        self.routable.load(Relaxed)
    }

    /// Counts one finished exchange.
    pub(crate) fn record(&self, method: u8, status: u16, elapsed: Duration) {
        let method = usize::from(method).min(METHODS.len() - 1);
        self.requests[method][StatusClass::index(status)].fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&le| nanos <= le)
            .unwrap_or(BUCKET_NANOS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    fn snapshot(&self) -> InstanceMetrics {
        let mut requests = Vec::new();
        for (m, classes) in self.requests.iter().enumerate() {
            for (c, count) in classes.iter().enumerate() {
                let count = count.load(Relaxed);
                if count > 0 {
                    requests.push(RequestCount {
                        method: METHODS[m],
                        class: StatusClass::ALL[c],
                        count,
                    });
                }
            }
        }
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKET_NANOS.len());
        for (i, le) in BUCKET_NANOS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            buckets.push((*le as f64 / 1e9, cumulative));
        }
        cumulative += self.buckets[BUCKET_NANOS.len()].load(Relaxed);
        InstanceMetrics {
            service: self.service.to_string(),
            instance: self.instance.to_string(),
            in_flight: self.in_flight(),
            requests,
            latency: LatencyHistogram {
                buckets,
                sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
                count: cumulative,
            },
        }
    }
}

/// Counters of every service and instance the router knows, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// One entry per (service, instance), sorted by service then instance.
    /// Requests the router answered itself are under instance `-` (and
    /// service `-` when no service matched the host).
    pub instances: Vec<InstanceMetrics>,
}

impl MetricsSnapshot {
    /// The entry of `instance` of `service`, if the router has one.
    pub fn get(&self, service: &str, instance: &str) -> Option<&InstanceMetrics> {
        self.instances
            .iter()
            .find(|m| m.service == service && m.instance == instance)
    }
}

/// The counters of one instance (or of the router itself for a service).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMetrics {
    /// Service label; `-` for requests that matched no service.
    pub service: String,
    /// Instance label; `-` for requests the router answered itself.
    pub instance: String,
    /// Requests currently in flight (including open WebSocket tunnels).
    pub in_flight: u64,
    /// Finished requests by method and status class; only non-zero counts.
    pub requests: Vec<RequestCount>,
    /// Duration of whole exchanges, until the last byte of the response.
    pub latency: LatencyHistogram,
}

impl InstanceMetrics {
    /// Requests with `method` (upper case, e.g. `GET`) that ended in `class`.
    pub fn requests(&self, method: &str, class: StatusClass) -> u64 {
        self.requests
            .iter()
            .filter(|r| r.method == method && r.class == class)
            .map(|r| r.count)
            .sum()
    }

    /// Requests of any method that ended in `class`.
    pub fn requests_in(&self, class: StatusClass) -> u64 {
        self.requests
            .iter()
            .filter(|r| r.class == class)
            .map(|r| r.count)
            .sum()
    }

    /// All finished requests.
    pub fn total(&self) -> u64 {
        self.requests.iter().map(|r| r.count).sum()
    }
}

/// A request counter, one (method, status class) cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCount {
    /// Upper-case method, or `OTHER` for non-standard ones.
    pub method: &'static str,
    /// Status class of the answer.
    pub class: StatusClass,
    /// How many.
    pub count: u64,
}

/// A latency histogram with Prometheus' default buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    /// `(upper bound in seconds, cumulative count)`, ascending, without `+Inf`
    /// (which is `count`).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

pub(crate) fn snapshot(stats: &[Arc<Stats>]) -> MetricsSnapshot {
    MetricsSnapshot {
        instances: stats.iter().map(|s| s.snapshot()).collect(),
    }
}

/// Writes `stats` in the Prometheus text exposition format 0.0.4.
pub(crate) fn render(stats: &[Arc<Stats>], out: &mut String) {
    // `write!` into a String cannot fail; the results are ignored on purpose.
    out.push_str(
        "# HELP tend_http_requests_total HTTP requests that went through the router, by status class.\n\
         # TYPE tend_http_requests_total counter\n",
    );
    for s in stats {
        for (m, classes) in s.requests.iter().enumerate() {
            for (c, count) in classes.iter().enumerate() {
                let count = count.load(Relaxed);
                if count == 0 {
                    continue;
                }
                out.push_str("tend_http_requests_total{");
                labels(out, s);
                let _ = writeln!(
                    out,
                    ",method=\"{}\",code=\"{}\"}} {count}",
                    METHODS[m],
                    StatusClass::ALL[c].label()
                );
            }
        }
    }
    out.push_str(
        "# HELP tend_http_requests_in_flight HTTP requests being served (open WebSocket tunnels included).\n\
         # TYPE tend_http_requests_in_flight gauge\n",
    );
    for s in stats {
        out.push_str("tend_http_requests_in_flight{");
        labels(out, s);
        let _ = writeln!(out, "}} {}", s.in_flight());
    }
    out.push_str(
        "# HELP tend_http_request_duration_seconds Duration of HTTP exchanges through the router, until the last byte of the response.\n\
         # TYPE tend_http_request_duration_seconds histogram\n",
    );
    for s in stats {
        let mut cumulative = 0;
        for (i, le) in BUCKET_LABELS.iter().enumerate() {
            cumulative += s.buckets[i].load(Relaxed);
            out.push_str("tend_http_request_duration_seconds_bucket{");
            labels(out, s);
            let _ = writeln!(out, ",le=\"{le}\"}} {cumulative}");
        }
        cumulative += s.buckets[BUCKET_LABELS.len()].load(Relaxed);
        out.push_str("tend_http_request_duration_seconds_bucket{");
        labels(out, s);
        let _ = writeln!(out, ",le=\"+Inf\"}} {cumulative}");
        out.push_str("tend_http_request_duration_seconds_sum{");
        labels(out, s);
        let _ = writeln!(out, "}} {}", s.sum_nanos.load(Relaxed) as f64 / 1e9);
        out.push_str("tend_http_request_duration_seconds_count{");
        labels(out, s);
        let _ = writeln!(out, "}} {cumulative}");
    }
}

fn labels(out: &mut String, s: &Stats) {
    out.push_str("service=\"");
    escape(out, &s.service);
    out.push_str("\",instance=\"");
    escape(out, &s.instance);
    out.push('"');
}

/// Label values escape `\`, `"` and newline (exposition format 0.0.4).
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        let s = Stats::new("web", "web-1");
        s.record(0, 200, Duration::from_millis(5));
        s.record(0, 200, Duration::from_millis(6));
        s.record(2, 503, Duration::from_secs(11));
        let snap = s.snapshot();
        assert_eq!(snap.latency.buckets[0], (0.005, 1));
        assert_eq!(snap.latency.buckets[1], (0.01, 2));
        assert_eq!(snap.latency.buckets[10], (10.0, 2));
        assert_eq!(snap.latency.count, 3);
        assert_eq!(snap.requests("GET", StatusClass::Success), 2);
        assert_eq!(snap.requests("POST", StatusClass::ServerError), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let s = Stats::new("a\"b", "c\\d\n");
        s.record(9, 700, Duration::ZERO);
        let mut out = String::new();
        render(&[s], &mut out);
        assert!(out.contains(
            "tend_http_requests_total{service=\"a\\\"b\",instance=\"c\\\\d\\n\",method=\"OTHER\",code=\"5xx\"} 1\n"
        ));
    }
}
