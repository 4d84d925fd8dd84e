//! The tend side of `bench/metrics.py`: synthetic scrape targets, ingested
//! into a `Tsdb` through the scrape path, or sent to a Prometheus by remote
//! write, so that both stores hold the very same samples.
//!
//! ```text
//! metrics_vs_prometheus tend DIR T0_MS    ingest, compact, query; prints JSON
//! metrics_vs_prometheus send URL T0_MS    remote-write the same samples to URL
//! ```
//!
//! The data: `TARGETS` targets (instances of 4 services) scraped every 15 s
//! (with a few ms of deterministic jitter, as real scrapes have) for `HOURS`
//! hours; each target exposes ~330 series shaped like a real service's:
//! request counters by method/code/path, a latency histogram per path, CPU
//! counters per mode and core, a memory gauge, queue gauges, runtime gauges.
//! Values come from a fixed-seed generator, so every run and both stores get
//! identical samples.

use std::fmt::Write;
use std::time::{Duration, Instant};

use tend_metrics::exposition::{self, ScrapeCache};
use tend_metrics::promql::{self, EvalOptions};
use tend_metrics::{Labels, Tsdb, TsdbConfig};

const TARGETS: usize = 32;
const HOURS: i64 = 6;
const INTERVAL_MS: i64 = 15_000;
const SCRAPES: i64 = HOURS * 3600 * 1000 / INTERVAL_MS;
const PATHS: usize = 10;
const BUCKETS: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];

/// The dashboard queries timed on both (over the last hour, 30 s step).
const QUERIES: [&str; 5] = [
    "sum by (service) (rate(http_requests_total[5m]))",
    "sum by (service) (rate(http_requests_total{code=~\"5..\"}[5m])) / sum by (service) (rate(http_requests_total[5m]))",
    "histogram_quantile(0.99, sum by (le, service) (rate(http_request_duration_seconds_bucket[5m])))",
    "topk(5, max by (instance) (process_resident_memory_bytes))",
    "sum by (instance) (rate(node_cpu_seconds_total{mode!=\"idle\"}[5m]))",
];

/// SplitMix64: a deterministic value per (target, series, scrape).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A target's counters and gauges, advanced one scrape at a time.
struct Target {
    id: usize,
    requests: Vec<f64>,
    buckets: Vec<[f64; 12]>,
    sums: Vec<f64>,
    cpu: Vec<f64>,
    memory: f64,
}

impl Target {
    fn new(id: usize) -> Target {
        Target {
            id,
            requests: vec![0.0; 2 * 3 * PATHS],
            buckets: vec![[0.0; 12]; PATHS],
            sums: vec![0.0; PATHS],
            cpu: vec![0.0; 5 * 8],
            memory: 64.0 * 1024.0 * 1024.0,
        }
    }

    /// Advances to scrape `k` and renders the exposition text.
    fn scrape(&mut self, k: i64, out: &mut String) {
        out.clear();
        let seed = |s: usize| mix(((self.id as u64) << 40) ^ ((s as u64) << 20) ^ k as u64);
        out.push_str("# TYPE http_requests_total counter\n");
        let (methods, codes) = (["GET", "POST"], ["200", "404", "500"]);
        for (i, r) in self.requests.iter_mut().enumerate() {
            let (m, c, p) = (i % 2, (i / 2) % 3, i / 6);
            let base = [40.0, 3.0, 0.4][c] / (1 + m) as f64 / (1 + p) as f64;
            *r += (base * 15.0 * (0.5 + unit(seed(i)))).round();
            let _ = writeln!(
                out,
                "http_requests_total{{method=\"{}\",code=\"{}\",path=\"/api/v{p}\"}} {r}",
                methods[m], codes[c]
            );
        }
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for p in 0..PATHS {
            let n = (20.0 * unit(seed(100 + p))).round() as usize;
            for j in 0..n {
                // Log-normal-ish latencies around 50 ms.
                let u = unit(seed(1000 + p * 64 + j)).max(1e-9);
                let lat = 0.05 * (-(u.ln()) * 0.8).exp() * (0.3 + p as f64 * 0.1);
                self.sums[p] += lat;
                for (b, le) in self.buckets[p].iter_mut().zip(BUCKETS) {
                    if le == "+Inf" || lat <= le.parse::<f64>().unwrap_or(f64::INFINITY) {
                        *b += 1.0;
                    }
                }
            }
            for (b, le) in self.buckets[p].iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{path=\"/api/v{p}\",le=\"{le}\"}} {b}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{path=\"/api/v{p}\"}} {}\nhttp_request_duration_seconds_count{{path=\"/api/v{p}\"}} {}",
                self.sums[p], self.buckets[p][11]
            );
        }
        out.push_str("# TYPE node_cpu_seconds_total counter\n");
        let modes = ["user", "system", "iowait", "irq", "idle"];
        for (i, c) in self.cpu.iter_mut().enumerate() {
            let (mode, core) = (i % 5, i / 5);
            let busy = [0.3, 0.1, 0.02, 0.01, 0.57][mode];
            *c += ((busy * 15.0 * (0.8 + 0.4 * unit(seed(200 + i)))) * 100.0).round() / 100.0;
            let _ = writeln!(
                out,
                "node_cpu_seconds_total{{mode=\"{}\",cpu=\"{core}\"}} {c}",
                modes[mode]
            );
        }
        self.memory += ((unit(seed(300)) - 0.5) * 256.0).round() * 4096.0;
        let _ = writeln!(
            out,
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
            self.memory
        );
        out.push_str("# TYPE queue_depth gauge\n");
        for q in 0..50 {
            let v = (unit(seed(400 + q)) * 10.0).floor() * f64::from(q % 3 == 0);
            let _ = writeln!(out, "queue_depth{{queue=\"q{q}\"}} {v}");
        }
        out.push_str("# TYPE runtime_info gauge\n");
        for g in 0..20 {
            // Mostly constant gauges, some slowly changing, as runtime stats are.
            let v = if g % 4 == 0 {
                (k / 40) as f64 * 1024.0
            } else {
                g as f64 * 100.0
            };
            let _ = writeln!(out, "runtime_info{{stat=\"s{g}\"}} {v}");
        }
    }

    fn labels(&self) -> Labels {
        Labels::new([
            ("service", format!("svc{}", self.id % 4)),
            ("instance", format!("svc{}-{}", self.id % 4, self.id)),
            ("team", "bench".to_string()),
        ])
    }
}

/// The time of scrape `k` of target `t`: on the interval, plus 0-4 ms of jitter.
fn scrape_time(t0: i64, k: i64, t: usize) -> i64 {
    t0 + k * INTERVAL_MS + (mix((k as u64) << 8 ^ t as u64) % 5) as i64
}

/// Parses a scrape and labels it like the collector does (uncached: the
/// Prometheus side's CPU is not measured here).
fn ingest_text(text: &str, ts: i64, target: &Labels) -> Vec<(Labels, i64, f64)> {
    let mut samples = exposition::parse(text, None, ts).expect("valid exposition text");
    for s in &mut samples {
        s.0 = s.0.merged(target);
    }
    samples
}

fn cpu_time(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn tend(dir: &str, t0: i64) {
    let mut cfg = TsdbConfig::new(dir);
    cfg.max_series_per_service = 1_000_000;
    cfg.retention = Duration::from_secs(3650 * 24 * 3600);
    let db = Tsdb::open(cfg).expect("open");
    let mut targets: Vec<Target> = (0..TARGETS).map(Target::new).collect();
    let labels: Vec<_> = targets.iter().map(Target::labels).collect();
    let mut text = String::new();
    let mut render_cpu = 0.0;
    let (cpu0, wall0) = (cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID), Instant::now());
    let mut samples = 0usize;
    // One scrape cache per target, as the collector keeps.
    let mut caches: Vec<ScrapeCache> = (0..TARGETS).map(|_| ScrapeCache::new()).collect();
    let mut batch = Vec::new();
    for k in 0..SCRAPES {
        for (t, target) in targets.iter_mut().enumerate() {
            let r0 = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
            target.scrape(k, &mut text);
            render_cpu += cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - r0;
            batch.clear();
            caches[t]
                .parse(&text, None, scrape_time(t0, k, t), &labels[t], &mut batch)
                .expect("valid exposition text");
            samples += db.append(&batch).expect("append").appended;
        }
        // As the background thread would, once an hour of data.
        if k % 240 == 239 {
            db.compact().expect("compact");
        }
    }
    db.compact().expect("compact");
    db.flush().expect("flush");
    let ingest_cpu = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0 - render_cpu;
    let wall = wall0.elapsed().as_secs_f64();
    let st = db.stats();
    let blocks_bytes = dir_bytes(&std::path::Path::new(dir).join("blocks"));

    let end = t0 + (SCRAPES - 1) * INTERVAL_MS;
    let opts = EvalOptions::default();
    let mut queries = Vec::new();
    for q in QUERIES {
        let mut times = Vec::new();
        let mut series = 0;
        for _ in 0..7 {
            let s = Instant::now();
            let m = promql::range(&db, q, end - 3_600_000, end, 30_000, &opts).expect("query");
            times.push(s.elapsed().as_secs_f64());
            series = m.len();
        }
        times.sort_by(f64::total_cmp);
        queries.push(serde_json::json!({"query": q, "median_seconds": times[3], "series": series}));
    }
    let out = serde_json::json!({
        "series": st.head_series,
        "samples": samples,
        "ingest_cpu_seconds": ingest_cpu,
        "ingest_wall_seconds": wall,
        "block_samples": st.block_samples,
        "block_chunk_bytes": st.block_chunk_bytes,
        "block_bytes": blocks_bytes,
        "blocks": st.blocks,
        "queries": queries,
        "end_ms": end,
    });
    println!("{out}");
}

fn send(url: &str, t0: i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
    let mut targets: Vec<Target> = (0..TARGETS).map(Target::new).collect();
    let labels: Vec<_> = targets.iter().map(Target::labels).collect();
    let mut text = String::new();
    let mut sent = 0usize;
    for k in 0..SCRAPES {
        let mut batch = Vec::new();
        for (t, target) in targets.iter_mut().enumerate() {
            target.scrape(k, &mut text);
            batch.extend(ingest_text(&text, scrape_time(t0, k, t), &labels[t]));
        }
        // What a scrape of every target produces: one request per round.
        let body = snap::raw::Encoder::new()
            .compress_vec(&tend_metrics::remote_write::encode(&batch))
            .expect("snappy");
        rt.block_on(async {
            let resp = http
                .post(url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body)
                .send()
                .await
                .expect("send");
            let status = resp.status();
            if !status.is_success() {
                panic!("{status}: {}", resp.text().await.unwrap_or_default());
            }
        });
        sent += batch.len();
    }
    println!("{}", serde_json::json!({ "samples": sent }));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t0: i64 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .expect("usage: metrics_vs_prometheus tend|send DIR|URL T0_MS");
    match args[1].as_str() {
        "tend" => tend(&args[2], t0),
        "send" => send(&args[2], t0),
        other => panic!("unknown mode {other}"),
    }
}
