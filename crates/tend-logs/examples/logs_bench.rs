//! Rough throughput check: `cargo run --release -p tend-logs --example logs_bench [MB]`.
//! Writes MB of 100–200 byte lines to a capture file, measures ingestion, then a
//! regex and a substring query over the stored lines.

use std::io::Write;
use std::time::{Duration, Instant};

use tend_logs::{Grep, LogConfig, Logs, Query, Source};

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let inst = dir.path().join("instances/bench-v1-0001");
    std::fs::create_dir_all(&inst).unwrap();
    let (out, err) = (inst.join("stdout.log"), inst.join("stderr.log"));
    std::fs::File::create(&err).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out).unwrap());
    let (mut n, mut bytes, mut x) = (0u64, 0usize, 0x2545F4914F6CDD1Du64);
    let words = [
        "GET",
        "POST",
        "/api/v1/users",
        "/healthz",
        "200",
        "404",
        "500",
        "ms",
        "user_id",
        "request",
    ];
    while bytes < mb << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = if n % 3 == 0 {
            format!("{{\"level\":\"info\",\"msg\":\"{} {} {}\",\"ts\":\"2026-01-01T00:00:00.{:03}Z\",\"req\":\"{:016x}\",\"dur_ms\":{}}}\n", words[(x % 2) as usize], words[2 + (x >> 8) as usize % 2], words[4 + (x >> 16) as usize % 3], n % 1000, x, x % 997)
        } else {
            format!(
                "2026-01-01 12:00:00 INFO {} {} {} took {} ms req={:016x} {}\n",
                words[(x % 2) as usize],
                words[2 + (x >> 8) as usize % 2],
                words[4 + (x >> 16) as usize % 3],
                x % 997,
                x.rotate_left(17),
                "x".repeat((x % 60) as usize)
            )
        };
        f.write_all(line.as_bytes()).unwrap();
        bytes += line.len();
        n += 1;
    }
    f.write_all(b"needle-in-the-haystack 12345\n").unwrap();
    n += 1;
    drop(f);
    if let Some(p) = std::env::args().nth(2) {
        std::fs::copy(&out, p).unwrap(); // before ingestion punches holes into it
    }
    let mut cfg = LogConfig::new(dir.path().join("logs"));
    cfg.rate_limit_bytes_per_sec = 0;
    cfg.retention_bytes_per_service = 1 << 40;
    cfg.retention_bytes_total = 1 << 40;
    let logs = Logs::open(cfg).unwrap();
    let t0 = Instant::now();
    logs.watch(Source {
        service: "bench".into(),
        team: "t".into(),
        release: 1,
        instance: "bench-v1-0001".into(),
        stdout: out.clone(),
        stderr: err,
    });
    while logs.stats().lines_ingested < n {
        std::thread::sleep(Duration::from_millis(5));
    }
    let dt = t0.elapsed();
    println!(
        "ingest: {n} lines, {:.1} MB in {dt:.2?} = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / dt.as_secs_f64()
    );
    logs.shutdown();
    let st = logs.stats();
    println!(
        "store: {:.1} MB in {} segments (ratio {:.1})",
        st.store_bytes as f64 / 1e6,
        st.segments,
        bytes as f64 / st.store_bytes as f64
    );
    for (name, grep) in [
        (
            "regex  needle-[\\w-]+ \\d+",
            Grep::Regex(regex::Regex::new(r"needle-[\w-]+ \d+").unwrap()),
        ),
        (
            "substr needle-in-the",
            Grep::Substring("needle-in-the".into()),
        ),
        (
            "regex  req=[0-9a-f]{4}ffff",
            Grep::Regex(regex::Regex::new(r"req=[0-9a-f]{4}ffff").unwrap()),
        ),
    ] {
        let q = Query {
            grep: Some(grep),
            limit: 1000,
            ..Query::new("bench")
        };
        let mut dt = Duration::MAX;
        let mut v = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            v = logs.query(&q).unwrap();
            dt = dt.min(t0.elapsed());
        }
        println!(
            "query {name}: {} lines in {dt:.2?} = {:.0} MB/s of raw text",
            v.len(),
            bytes as f64 / 1e6 / dt.as_secs_f64()
        );
    }
    let t0 = Instant::now();
    let v = logs
        .query(&Query {
            limit: 100,
            ..Query::new("bench")
        })
        .unwrap();
    println!("tail 100: {} lines in {:.2?}", v.len(), t0.elapsed());
}
