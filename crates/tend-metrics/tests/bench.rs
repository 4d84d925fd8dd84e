//! Rough throughput measurements; run with
//! `cargo test --release -p tend-metrics --test bench -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use tend_metrics::promql::{self, EvalOptions};
use tend_metrics::{exposition, Labels, Tsdb, TsdbConfig};

#[test]
#[ignore = "benchmark"]
fn ingest_and_query_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TsdbConfig::new(dir.path());
    cfg.max_series_per_service = 1_000_000;
    cfg.wal_flush = Duration::from_secs(1);
    let db = Tsdb::open(cfg).unwrap();
    let n_series = 10_000usize;
    let scrapes = 240i64; // 1 h at 15 s
    let labels: Vec<Labels> = (0..n_series)
        .map(|i| {
            Labels::new([
                ("__name__", "http_requests_total".to_string()),
                ("service", format!("svc{}", i % 20)),
                ("instance", format!("inst{}", i % 50)),
                ("code", ["200", "404", "500"][i % 3].to_string()),
                ("i", i.to_string()),
            ])
        })
        .collect();
    let t0 = 1_700_000_000_000i64;
    let mut batch: Vec<(Labels, i64, f64)> = Vec::with_capacity(n_series);
    let start = Instant::now();
    for k in 0..scrapes {
        batch.clear();
        for (i, l) in labels.iter().enumerate() {
            batch.push((
                l.clone(),
                t0 + k * 15_000,
                (k as usize * (i % 7 + 1)) as f64,
            ));
        }
        db.append(&batch).unwrap();
    }
    db.flush().unwrap();
    let el = start.elapsed();
    let total = n_series as f64 * scrapes as f64;
    println!(
        "append: {total} samples in {el:?} = {:.2} M samples/s (one thread)",
        total / el.as_secs_f64() / 1e6
    );
    let st = db.stats();
    println!(
        "head bytes/sample: {:.3}; wal bytes: {}",
        st.bytes_per_sample, st.wal_bytes
    );

    // Scrape parsing.
    let mut text = String::new();
    for (i, l) in labels.iter().take(1000).enumerate() {
        text.push_str(&format!(
            "http_requests_total{{code=\"{}\",instance=\"{}\",i=\"{i}\"}} {}\n",
            l.get("code").unwrap(),
            l.get("instance").unwrap(),
            i * 3
        ));
    }
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..100 {
        n += exposition::parse(&text, None, t0).unwrap().len();
    }
    println!(
        "parse: {:.2} M lines/s",
        n as f64 / start.elapsed().as_secs_f64() / 1e6
    );

    let end = t0 + (scrapes - 1) * 15_000;
    let opts = EvalOptions::default();
    for q in [
        "sum(rate(http_requests_total[5m]))",
        "sum by (service) (rate(http_requests_total[5m]))",
        "topk(5, rate(http_requests_total{code=\"500\"}[5m]))",
        "http_requests_total{i=\"42\"}",
    ] {
        let start = Instant::now();
        let r = promql::instant(&db, q, end, &opts).unwrap();
        let inst = start.elapsed();
        let start = Instant::now();
        let m = promql::range(&db, q, end - 3_600_000 + 300_000, end, 60_000, &opts).unwrap();
        println!(
            "{q}: instant {inst:?} ({} el), range 1h/1m {:?} ({} series)",
            match r {
                promql::Value::Vector(v) => v.len(),
                _ => 0,
            },
            start.elapsed(),
            m.len()
        );
    }
}
