//! Driver of `bench/logs.py`: the real ingest path (a capture file tailed by
//! `Logs`), then queries over what it stored, printed as one JSON object.
//!
//! `cargo run --release -p tend-logs --example logs_vs_rg -- DIR MB PLAIN [--rg] [--export LOKI_URL] [--regex R]... [--literal L]...`
//!
//! Writes MB of realistic request logs (JSON lines of 100–200 bytes with paths,
//! status codes, durations, random ids; one line in ten plain text) to
//! `DIR/instances/bench-v1-0001/stdout.log` and the same bytes to `PLAIN` (for
//! rg), ingests the capture file through `Logs::watch`, measures the rate, the
//! CPU time and the peak RSS (VmHWM, reset before ingestion), then runs every
//! query twice (limit 0: all matching lines) and reports the second run. With
//! `--rg`, ripgrep searches `PLAIN` for the same pattern right after each run
//! (output read through a pipe and counted), so both see the same page cache and
//! the same neighbours.

use std::io::Write;
use std::time::{Duration, Instant};

use tend_logs::{Grep, LogConfig, Logs, Query, Source};

/// A request id planted a few times (a hex literal).
const NEEDLE: &str = "c0ffee15deadbeef";
/// An error planted a few times (a word literal).
const ERROR: &str = "ConnectionResetError: [Errno 104] Connection reset by peer";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Days-from-civil, for the timestamps in the lines.
fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

fn line(r: &mut Rng, ms: u64, n: u64) -> String {
    const RES: &[&str] = &[
        "users", "orders", "items", "carts", "invoices", "sessions", "search", "payments",
    ];
    const METHODS: &[&str] = &["GET", "GET", "GET", "GET", "POST", "PUT", "DELETE"];
    const STATIC: &[&str] = &["/healthz", "/metrics", "/static/app.js", "/favicon.ico"];
    let status = match r.below(1000) {
        0..=19 => [500, 502, 503, 504][r.below(4) as usize],
        20..=79 => [400, 401, 403, 404, 409, 429][r.below(6) as usize],
        80..=119 => [301, 302, 304][r.below(3) as usize],
        _ => [200, 200, 200, 201, 204][r.below(5) as usize],
    };
    let path = match r.below(10) {
        0 => STATIC[r.below(STATIC.len() as u64) as usize].to_owned(),
        1 => format!("/api/v2/{}/{}", r.pick(RES), r.below(100_000)),
        2 => format!("/api/{}?page={}", r.pick(RES), r.below(50)),
        _ => format!("/api/{}/{}", r.pick(RES), r.below(100_000)),
    };
    let level = match status {
        500.. => "error",
        400.. => "warn",
        _ => "info",
    };
    let id = r.next();
    if n % 10 == 7 {
        // A plain-text line, as frameworks print besides their JSON.
        return format!(
            "{} {} {} {} {}ms req={:016x} upstream=10.0.{}.{}:8080",
            rfc3339_ms(ms),
            level.to_uppercase(),
            r.pick(METHODS),
            path,
            r.below(2000),
            id,
            r.below(8),
            r.below(256)
        );
    }
    format!(
        r#"{{"ts":"{}","level":"{level}","msg":"request","method":"{}","status":{status},"path":"{path}","dur_ms":{}.{},"bytes":{},"req":"{:016x}","ip":"10.{}.{}.{}"}}"#,
        rfc3339_ms(ms),
        r.pick(METHODS),
        r.below(900),
        r.below(10),
        r.below(50_000),
        id,
        r.below(4),
        r.below(256),
        r.below(256)
    )
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// ripgrep over the plain file: (wall seconds, CPU seconds, matching lines).
fn run_rg(pattern: &str, literal: bool, plain: &std::path::Path) -> (f64, f64, usize) {
    use std::io::Read;
    let children_cpu = || {
        // SAFETY: getrusage writes into the struct we pass.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    let mut cmd = std::process::Command::new("rg");
    cmd.args(["--no-config", "--no-line-number", "--color", "never"]);
    if literal {
        cmd.arg("--fixed-strings");
    }
    cmd.arg("--").arg(pattern).arg(plain);
    cmd.stdout(std::process::Stdio::piped());
    let (t, c) = (Instant::now(), children_cpu());
    let mut child = cmd.spawn().expect("rg (apt-get install ripgrep)");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.wait().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let lines = memchr::memchr_iter(b'\n', &out).count();
    (secs, children_cpu() - c, lines)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() >= 3,
        "usage: logs_vs_rg DIR MB PLAIN [--regex R]... [--literal L]..."
    );
    let dir = std::path::PathBuf::from(&args[0]);
    let mb: u64 = args[1].parse().expect("MB");
    let plain = std::path::PathBuf::from(&args[2]);
    let mut greps: Vec<(String, String, Grep)> = Vec::new();
    let mut with_rg = false;
    let mut export = None;
    let mut it = args[3..].iter();
    while let Some(a) = it.next() {
        if a == "--rg" {
            with_rg = true;
            continue;
        }
        let v = it.next().expect("value");
        match a.as_str() {
            "--export" => export = Some(tend_logs::ExportConfig::loki(v.clone())),
            "--regex" => greps.push((
                "regex".into(),
                v.clone(),
                Grep::Regex(regex::Regex::new(v).expect("regex")),
            )),
            "--literal" => greps.push(("literal".into(), v.clone(), Grep::Substring(v.clone()))),
            _ => panic!("unknown argument {a}"),
        }
    }

    // Generate.
    let inst = dir.join("instances/bench-v1-0001");
    std::fs::create_dir_all(&inst).unwrap();
    let (out, err) = (inst.join("stdout.log"), inst.join("stderr.log"));
    std::fs::File::create(&err).unwrap();
    let mut cap = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out).unwrap());
    let mut pf = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&plain).unwrap());
    let mut r = Rng(0x2545_F491_4F6C_DD1D);
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut ms = 1_795_000_000_000u64; // 2026-11-19
    let (mut min_len, mut max_len) = (usize::MAX, 0);
    let t_gen = Instant::now();
    while bytes < mb << 20 {
        ms += r.below(3);
        let mut l = line(&mut r, ms, n);
        if n % 2_000_000 == 1234 {
            l = format!("{} ERROR upstream payments: {ERROR}", rfc3339_ms(ms));
        } else if n % 1_500_000 == 777 {
            l = l.replacen("req=", &format!("req={NEEDLE} was="), 1);
            l = l.replacen(r#""req":""#, &format!(r#""req":"{NEEDLE}","was":""#), 1);
        }
        min_len = min_len.min(l.len());
        max_len = max_len.max(l.len());
        l.push('\n');
        cap.write_all(l.as_bytes()).unwrap();
        pf.write_all(l.as_bytes()).unwrap();
        bytes += l.len() as u64;
        n += 1;
    }
    cap.flush().unwrap();
    pf.flush().unwrap();
    drop((cap, pf));
    let gen_secs = t_gen.elapsed().as_secs_f64();

    // Ingest.
    let mut cfg = LogConfig::new(dir.join("logs"));
    cfg.rate_limit_bytes_per_sec = 0;
    cfg.retention_bytes_per_service = 1 << 40;
    cfg.retention_bytes_total = 1 << 40;
    cfg.export = export;
    let logs = Logs::open(cfg).unwrap();
    // Peak RSS of the ingestion alone (generation buffers are gone by now).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (t0, c0) = (Instant::now(), cpu_secs());
    logs.watch(Source {
        service: "bench".into(),
        team: "t".into(),
        release: 1,
        instance: "bench-v1-0001".into(),
        stdout: out,
        stderr: err,
    });
    while logs.stats().lines_ingested < n {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ingest_secs = t0.elapsed().as_secs_f64();
    let ingest_cpu = cpu_secs() - c0;
    let hwm = vm_hwm_kb();
    logs.shutdown(); // last block written and fsynced
    let st = logs.stats();

    let mut queries = Vec::new();
    for (kind, pattern, grep) in greps {
        let q = Query {
            grep: Some(grep),
            limit: 0,
            ..Query::new("bench")
        };
        let mut times = Vec::new();
        let mut cpu = 0.0;
        let mut found = 0;
        let mut rg = None;
        for _ in 0..2 {
            let (t, c) = (Instant::now(), cpu_secs());
            found = logs.query(&q).unwrap().len();
            times.push(t.elapsed().as_secs_f64());
            cpu = cpu_secs() - c;
            if with_rg {
                rg = Some(run_rg(&pattern, kind == "literal", &plain));
            }
        }
        let mut j = serde_json::json!({
            "kind": kind, "pattern": pattern, "matches": found,
            "first_secs": times[0], "secs": times[1], "cpu_secs": cpu,
        });
        if let Some((secs, cpu, matches)) = rg {
            j["rg"] = serde_json::json!({"secs": secs, "cpu_secs": cpu, "matches": matches});
        }
        queries.push(j);
    }
    let report = serde_json::json!({
        "lines": n,
        "raw_bytes": bytes,
        "line_len_min": min_len,
        "line_len_max": max_len,
        "generate_secs": gen_secs,
        "ingest_secs": ingest_secs,
        "ingest_cpu_secs": ingest_cpu,
        "ingest_peak_rss_kb": hwm,
        "store_bytes": st.store_bytes,
        "segments": st.segments,
        "export_sent": st.export_sent,
        "export_dropped": st.export_dropped,
        "queries": queries,
    });
    println!("{report}");
}
