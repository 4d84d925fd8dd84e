//! Log ingest with secrets redacted vs without:
//! `cargo run --release -p tend-logs --example redact_bench [MB] [SECRETS]`.
//!
//! Without secrets an instance writes its capture file itself; with secrets
//! its output goes through a pipe to the output relay (`tend_runtime::relay`,
//! Aho-Corasick over every value), which writes the file. Both pipelines run
//! as in production — a writer, the relay when there is one, and the ingest
//! thread, concurrently — and the rate is lines stored per second from the
//! first byte written to the last line ingested. Every 50th line carries one
//! of the secrets; the run checks none of them reached the store.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use tend_logs::{Grep, LogConfig, Logs, Query, Source};
use tend_secrets::RedactorBuilder;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let nsecrets: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let mut x = 0x2545F4914F6CDD1Du64;
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let secrets: Vec<(String, String)> = (0..nsecrets)
        .map(|i| {
            let v: String = (0..32)
                .map(|_| alphabet[(xorshift(&mut x) % alphabet.len() as u64) as usize] as char)
                .collect();
            (format!("SECRET_{i}"), format!("sk_{v}"))
        })
        .collect();
    let (text, lines) = corpus(mb, &secrets, &mut x);
    println!(
        "{:.1} MB, {lines} lines, {nsecrets} secrets (one in every 50th line)",
        text.len() as f64 / 1e6
    );
    let mut best = [f64::MAX; 2];
    for round in 0..3 {
        for (mode, slot) in [("none", 0), ("redact", 1)] {
            let secs = run(&text, lines, if slot == 1 { Some(&secrets) } else { None });
            best[slot] = best[slot].min(secs);
            println!(
                "round {round} {mode:>6}: {:.2}s = {:.0} lines/s, {:.1} MB/s",
                secs,
                lines as f64 / secs,
                text.len() as f64 / 1e6 / secs
            );
        }
    }
    let (none, redact) = (lines as f64 / best[0], lines as f64 / best[1]);
    println!(
        "best: none {none:.0} lines/s, redact {redact:.0} lines/s, ratio {:.3}",
        redact / none
    );
}

/// `mb` MB of log lines like logs_bench's; every 50th holds a secret.
fn corpus(mb: usize, secrets: &[(String, String)], x: &mut u64) -> (Vec<u8>, u64) {
    let words = [
        "GET",
        "POST",
        "/api/v1/users",
        "/healthz",
        "200",
        "404",
        "500",
    ];
    let mut out = Vec::with_capacity(mb << 20);
    let mut n = 0u64;
    while out.len() < mb << 20 {
        let r = xorshift(x);
        if n % 50 == 49 {
            let (_, v) = &secrets[(r % secrets.len() as u64) as usize];
            writeln!(
                out,
                "2026-01-01 12:00:00 INFO connecting with token={v} req={r:016x}"
            )
            .unwrap();
        } else if n.is_multiple_of(3) {
            writeln!(
                out,
                "{{\"level\":\"info\",\"msg\":\"{} {} {}\",\"req\":\"{:016x}\",\"dur_ms\":{}}}",
                words[(r % 2) as usize],
                words[2 + (r >> 8) as usize % 2],
                words[4 + (r >> 16) as usize % 3],
                r,
                r % 997
            )
            .unwrap();
        } else {
            writeln!(
                out,
                "2026-01-01 12:00:00 INFO {} {} {} took {} ms req={:016x} {}",
                words[(r % 2) as usize],
                words[2 + (r >> 8) as usize % 2],
                words[4 + (r >> 16) as usize % 3],
                r % 997,
                r.rotate_left(17),
                "x".repeat((r % 60) as usize)
            )
            .unwrap();
        }
        n += 1;
    }
    (out, n)
}

/// Seconds from the first byte written to the last line ingested.
fn run(text: &[u8], lines: u64, secrets: Option<&Vec<(String, String)>>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let inst = dir.path().join("instances/bench-v1-0001");
    std::fs::create_dir_all(&inst).unwrap();
    let (out, err) = (inst.join("stdout.log"), inst.join("stderr.log"));
    std::fs::File::create(&err).unwrap();
    let file = std::fs::File::create(&out).unwrap();
    let mut cfg = LogConfig::new(dir.path().join("logs"));
    cfg.rate_limit_bytes_per_sec = 0;
    cfg.retention_bytes_per_service = 1 << 40;
    cfg.retention_bytes_total = 1 << 40;
    let logs = Logs::open(cfg).unwrap();
    logs.watch(Source {
        service: "bench".into(),
        team: "t".into(),
        release: 1,
        instance: "bench-v1-0001".into(),
        stdout: out.clone(),
        stderr: err,
    });
    let t0 = Instant::now();
    std::thread::scope(|s| {
        match secrets {
            None => {
                s.spawn(move || write_all(file, text));
            }
            Some(secrets) => {
                let (r, w) = std::io::pipe().unwrap();
                let builder = secrets.iter().fold(RedactorBuilder::new(), |b, (k, v)| {
                    b.secret(k, v.as_bytes())
                });
                s.spawn(move || tend_runtime::relay::pump(r, file, builder));
                s.spawn(move || write_all(w, text));
            }
        }
        while logs.stats().lines_ingested < lines {
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    if let Some(secrets) = secrets {
        check_clean(&logs, secrets, &out);
    }
    logs.shutdown();
    secs
}

/// Like an instance behind a stdio buffer: 8 KiB writes.
fn write_all(mut w: impl Write, text: &[u8]) {
    for chunk in text.chunks(8192) {
        w.write_all(chunk).unwrap();
    }
}

fn check_clean(logs: &Logs, secrets: &[(String, String)], _out: &Path) {
    for (_, v) in secrets.iter().take(5) {
        let q = Query {
            grep: Some(Grep::Substring(v.clone())),
            limit: 10,
            ..Query::new("bench")
        };
        assert!(
            logs.query(&q).unwrap().is_empty(),
            "a secret reached the store"
        );
    }
    let q = Query {
        grep: Some(Grep::Substring("[redacted:SECRET_".into())),
        limit: 10,
        ..Query::new("bench")
    };
    assert!(!logs.query(&q).unwrap().is_empty(), "nothing was redacted");
}
