//! End-to-end tests of tend-logs on real files in temporary directories.
//! Waits poll a condition against a deadline; there are no bare sleeps for conditions.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tend_logs::{FollowItem, Grep, Level, LogConfig, LogLine, Logs, Query, Source, Stream};

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn source(root: &Path, service: &str, release: u32, instance: &str) -> Source {
    let d = root.join("instances").join(instance);
    fs::create_dir_all(&d).unwrap();
    for f in ["stdout.log", "stderr.log"] {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(f))
            .unwrap();
    }
    Source {
        service: service.into(),
        team: "team".into(),
        release,
        instance: instance.into(),
        stdout: d.join("stdout.log"),
        stderr: d.join("stderr.log"),
    }
}

fn append(path: &Path, data: impl AsRef<[u8]>) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(data.as_ref()).unwrap();
}

fn config(root: &Path) -> LogConfig {
    LogConfig::new(root.join("logs"))
}

fn q(service: &str) -> Query {
    Query::new(service)
}

fn query(logs: &Logs, q: &Query) -> Vec<LogLine> {
    logs.query(q).unwrap()
}

/// Waits until the query returns exactly `n` lines.
fn wait_lines(logs: &Logs, q: &Query, n: usize, timeout: Duration) -> Vec<LogLine> {
    wait_for(&format!("{n} lines for {q:?}"), timeout, || {
        let v = query(logs, q);
        (v.len() == n).then_some(v)
    })
}

#[test]
fn lines_are_queryable_within_a_second_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let s = source(dir.path(), "web", 3, "web-v3-aaaa");
    logs.watch(s.clone());
    logs.watch(s.clone()); // idempotent
    let t0 = Instant::now();
    append(&s.stdout, "hello out\n");
    append(&s.stderr, "hello err\n");
    let lines = wait_lines(&logs, &q("web"), 2, Duration::from_secs(1));
    assert!(t0.elapsed() < Duration::from_secs(1));
    let out = lines.iter().find(|l| l.stream == Stream::Stdout).unwrap();
    assert_eq!(out.raw, "hello out");
    assert_eq!(out.message, "hello out");
    assert_eq!(out.service, "web");
    assert_eq!(out.release, Some(3));
    assert_eq!(out.instance.as_deref(), Some("web-v3-aaaa"));
    assert_eq!(out.level, None);
    let err = lines.iter().find(|l| l.stream == Stream::Stderr).unwrap();
    assert_eq!(err.raw, "hello err");
    assert!(out.time <= SystemTime::now());
    // JSON form of a line: RFC 3339 with milliseconds.
    let js = serde_json::to_value(out).unwrap();
    let t = js["time"].as_str().unwrap();
    assert!(
        t.ends_with('Z') && t.len() == "2026-01-01T00:00:00.000Z".len(),
        "{t}"
    );
    assert_eq!(js["stream"], "stdout");
    let back: LogLine = serde_json::from_value(js).unwrap();
    assert_eq!(back.raw, out.raw);
    let st = logs.stats();
    assert_eq!(st.services["web"].lines_ingested, 2);
    assert_eq!(st.watched_files, 2);
    // Unknown services are empty, invalid names an error.
    assert!(query(&logs, &q("nobody")).is_empty());
    assert!(logs.query(&q("../etc")).is_err());
}

#[test]
fn json_fields_are_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let s = source(dir.path(), "api", 1, "api-v1-0001");
    logs.watch(s.clone());
    append(
        &s.stdout,
        concat!(
            r#"{"level":"ERROR","msg":"db down","ts":"2024-01-02T03:04:05.678Z","try":3}"#,
            "\n",
            r#"{"severity":"warning","message":"slow"}"#,
            "\n",
            r#"{"lvl":"critical","other":1}"#,
            "\n",
            "{not json\n",
        ),
    );
    let lines = wait_lines(&logs, &q("api"), 4, Duration::from_secs(2));
    assert_eq!(lines[0].level, Some(Level::Error));
    assert_eq!(lines[0].message, "db down");
    assert!(lines[0].raw.starts_with(r#"{"level":"ERROR""#));
    assert_eq!(
        lines[0].app_time,
        Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_704_164_645_678))
    );
    assert_eq!(lines[1].level, Some(Level::Warn));
    assert_eq!(lines[1].message, "slow");
    assert_eq!(lines[2].level, Some(Level::Fatal));
    assert_eq!(lines[2].message, lines[2].raw);
    assert_eq!(lines[3].level, None);
    assert_eq!(lines[3].message, "{not json");
}

#[test]
fn filters_grep_time_labels_level() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let a = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    let b = source(dir.path(), "svc", 2, "svc-v2-bbbb");
    logs.watch(a.clone());
    logs.watch(b.clone());
    append(&a.stdout, "GET /users 200\nGET /orders 500\n");
    append(&a.stderr, "{\"level\":\"warn\",\"msg\":\"retrying\"}\n");
    wait_lines(&logs, &q("svc"), 3, Duration::from_secs(2));
    let mid = SystemTime::now();
    // Make sure the next lines get a later receive time than `mid`.
    wait_for("the clock to tick", Duration::from_secs(1), || {
        (SystemTime::now() > mid).then_some(())
    });
    append(
        &b.stdout,
        "GET /users 201\n{\"level\":\"error\",\"msg\":\"boom\"}\n",
    );
    logs.platform(
        "svc",
        Some(2),
        Some("svc-v2-bbbb"),
        Level::Info,
        "deploy v2\nstarted",
    );
    wait_lines(&logs, &q("svc"), 6, Duration::from_secs(2));

    let regex = Query {
        grep: Some(Grep::Regex(regex::Regex::new(r"/users \d+").unwrap())),
        ..q("svc")
    };
    let v = query(&logs, &regex);
    assert_eq!(
        v.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>(),
        ["GET /users 200", "GET /users 201"]
    );
    let anchored = Query {
        grep: Some(Grep::Regex(regex::Regex::new(r"^GET /orders").unwrap())),
        ..q("svc")
    };
    assert_eq!(query(&logs, &anchored).len(), 1);
    let spanning = Query {
        grep: Some(Grep::Regex(regex::Regex::new(r"200\s+GET").unwrap())),
        ..q("svc")
    };
    assert!(
        query(&logs, &spanning).is_empty(),
        "a match must not span lines"
    );
    let sub = Query {
        grep: Some(Grep::Substring("500".into())),
        ..q("svc")
    };
    assert_eq!(query(&logs, &sub)[0].raw, "GET /orders 500");

    let since = query(
        &logs,
        &Query {
            since: Some(mid),
            ..q("svc")
        },
    );
    assert_eq!(since.len(), 3);
    let until = query(
        &logs,
        &Query {
            until: Some(mid),
            ..q("svc")
        },
    );
    assert_eq!(until.len(), 3);

    assert_eq!(
        query(
            &logs,
            &Query {
                release: Some(2),
                ..q("svc")
            }
        )
        .len(),
        3
    );
    assert_eq!(
        query(
            &logs,
            &Query {
                instance: Some("svc-v1-aaaa".into()),
                ..q("svc")
            }
        )
        .len(),
        3
    );
    let err = query(
        &logs,
        &Query {
            stream: Some(Stream::Stderr),
            ..q("svc")
        },
    );
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].message, "retrying");
    let plat = query(
        &logs,
        &Query {
            stream: Some(Stream::Platform),
            ..q("svc")
        },
    );
    assert_eq!(plat.len(), 1);
    assert_eq!(plat[0].raw, "deploy v2 started");
    assert_eq!(plat[0].level, Some(Level::Info));
    let warn = Query {
        min_level: Some(Level::Warn),
        ..q("svc")
    };
    assert_eq!(
        query(&logs, &warn)
            .iter()
            .map(|l| l.message.as_str())
            .collect::<Vec<_>>(),
        ["retrying", "boom"]
    );
    let combo = Query {
        release: Some(2),
        min_level: Some(Level::Error),
        grep: Some(Grep::Substring("boom".into())),
        ..q("svc")
    };
    assert_eq!(query(&logs, &combo).len(), 1);

    // The same filters over flushed blocks (after a clean restart).
    drop(logs);
    let logs = Logs::open(config(dir.path())).unwrap();
    assert_eq!(query(&logs, &q("svc")).len(), 6);
    assert_eq!(query(&logs, &regex).len(), 2);
    assert_eq!(query(&logs, &warn).len(), 2);
    assert_eq!(
        query(
            &logs,
            &Query {
                since: Some(mid),
                ..q("svc")
            }
        )
        .len(),
        3
    );
}

#[test]
fn limit_returns_the_last_lines_in_time_order_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let a = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    let b = source(dir.path(), "svc", 1, "svc-v1-bbbb");
    logs.watch(a.clone());
    logs.watch(b.clone());
    for i in 0..40 {
        let s = if i % 2 == 0 { &a } else { &b };
        append(&s.stdout, format!("n{i}\n"));
        // One line at a time, so receive times interleave across the two instances.
        wait_lines(&logs, &q("svc"), i + 1, Duration::from_secs(2));
    }
    let v = query(
        &logs,
        &Query {
            limit: 5,
            ..q("svc")
        },
    );
    assert_eq!(
        v.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>(),
        ["n35", "n36", "n37", "n38", "n39"]
    );
    assert!(v
        .windows(2)
        .all(|w| (w[0].time, w[0].seq) < (w[1].time, w[1].seq)));
    assert_eq!(v[0].instance.as_deref(), Some("svc-v1-bbbb"));
    drop(logs);
    let logs = Logs::open(config(dir.path())).unwrap();
    let v = query(
        &logs,
        &Query {
            limit: 3,
            ..q("svc")
        },
    );
    assert_eq!(
        v.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>(),
        ["n37", "n38", "n39"]
    );
    let v = query(
        &logs,
        &Query {
            limit: 2,
            instance: Some("svc-v1-aaaa".into()),
            ..q("svc")
        },
    );
    assert_eq!(
        v.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>(),
        ["n36", "n38"]
    );
}

#[test]
fn long_lines_split_invalid_utf8_kept_partial_flushed_on_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_line_bytes = 100;
    let logs = Logs::open(cfg).unwrap();
    let s = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    logs.watch(s.clone());
    append(&s.stdout, "a".repeat(250) + "\n");
    append(&s.stdout, b"bad \xff\xfe bytes\n");
    append(&s.stdout, "no newline yet");
    let v = wait_lines(&logs, &q("svc"), 4, Duration::from_secs(2));
    assert_eq!(v[0].raw, "a".repeat(100));
    assert_eq!(v[1].raw, "a".repeat(100));
    assert_eq!(v[2].raw, "a".repeat(50));
    assert_eq!(v[3].raw, "bad \u{fffd}\u{fffd} bytes");
    logs.finish("svc-v1-aaaa");
    let v = wait_lines(&logs, &q("svc"), 5, Duration::from_secs(2));
    assert_eq!(v[4].raw, "no newline yet");
    wait_for("capture files deleted", Duration::from_secs(3), || {
        (!s.stdout.exists() && !s.stderr.exists()).then_some(())
    });
    wait_for("no watched files", Duration::from_secs(2), || {
        (logs.stats().watched_files == 0).then_some(())
    });
    // A restart neither resumes nor re-reads the finished instance.
    drop(logs);
    let logs = Logs::open(config(dir.path())).unwrap();
    assert_eq!(logs.stats().watched_files, 0);
    assert_eq!(query(&logs, &q("svc")).len(), 5);
    // The same instance id started again: its new files are read from the start.
    let s2 = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    append(&s2.stdout, "second life\n");
    logs.watch(s2);
    let v = wait_lines(&logs, &q("svc"), 6, Duration::from_secs(2));
    assert_eq!(v[5].raw, "second life");
}

#[test]
fn partial_line_is_stored_after_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let s = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    logs.watch(s.clone());
    append(&s.stdout, "prompt> ");
    let v = wait_lines(&logs, &q("svc"), 1, Duration::from_secs(3));
    assert_eq!(v[0].raw, "prompt> ");
    append(&s.stdout, "rest\n");
    let v = wait_lines(&logs, &q("svc"), 2, Duration::from_secs(2));
    assert_eq!(v[1].raw, "rest");
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<FollowItem>) -> LogLine {
    match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        Ok(Some(FollowItem::Line(l))) => l,
        other => panic!("expected a line, got {other:?}"),
    }
}

#[tokio::test]
async fn follow_sees_new_sources_of_the_service_and_lags() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let a = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    logs.watch(a.clone());
    append(&a.stdout, "before follow\n");
    wait_lines(&logs, &q("svc"), 1, Duration::from_secs(2));
    let mut rx = logs.follow(&q("svc"));
    let mut errors = logs.follow(&Query {
        min_level: Some(Level::Error),
        ..q("svc")
    });
    append(&a.stdout, "one\n");
    assert_eq!(next(&mut rx).await.raw, "one");
    // A new release's instance of the same service just flows in.
    let b = source(dir.path(), "svc", 2, "svc-v2-bbbb");
    logs.watch(b.clone());
    append(&b.stderr, "{\"level\":\"error\",\"msg\":\"two\"}\n");
    let l = next(&mut rx).await;
    assert_eq!(
        (l.message.as_str(), l.release, l.stream),
        ("two", Some(2), Stream::Stderr)
    );
    assert_eq!(next(&mut errors).await.message, "two");
    logs.platform("svc", None, None, Level::Warn, "rolled back");
    assert_eq!(next(&mut rx).await.raw, "rolled back");

    // A consumer that does not read: ingestion goes on, the consumer learns what it missed.
    let mut slow = logs.follow(&q("svc"));
    let n = tend_logs::FOLLOW_CHANNEL + 500;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!("bulk {i}\n"));
    }
    append(&a.stdout, text);
    let total = 4 + n;
    let l2 = logs.clone();
    tokio::task::spawn_blocking(move || wait_lines(&l2, &q("svc"), total, Duration::from_secs(5)))
        .await
        .unwrap();
    let (mut lines, mut lagged) = (0u64, 0u64);
    while lines + lagged < n as u64 {
        match tokio::time::timeout(Duration::from_secs(2), slow.recv()).await {
            Ok(Some(FollowItem::Line(_))) => lines += 1,
            Ok(Some(FollowItem::Lagged(k))) => lagged += k,
            other => panic!("follow ended early: {other:?} after {lines} lines, {lagged} lagged"),
        }
    }
    assert_eq!(lines, tend_logs::FOLLOW_CHANNEL as u64);
    assert_eq!(lagged, 500);
}

/// Reads every stored line of `service` and counts the numbered ones.
fn count_numbers(logs: &Logs, service: &str, prefix: &str) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for l in query(logs, &q(service)) {
        if let Some(n) = l.raw.strip_prefix(prefix) {
            let n: u64 = n.split(' ').next().unwrap().parse().unwrap();
            *seen.entry(n).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn crash_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = source(dir.path(), "crashy", 1, "crashy-v1-0001");
    const N: u64 = 40_000;
    // The writer: an instance that keeps writing while the daemon dies again and again.
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (path, written) = (s.stdout.clone(), written.clone());
        std::thread::spawn(move || {
            let mut f = OpenOptions::new().append(true).open(path).unwrap();
            let pad = "x".repeat(90);
            for i in 0..N {
                // One write per line, as an unbuffered process would.
                f.write_all(format!("line-{i} {pad}\n").as_bytes()).unwrap();
                written.store(i + 1, Ordering::Relaxed);
                if i % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
        })
    };
    // Crash points spread around the commit interval (1 s) and block flushes (256 KiB).
    for (k, ms) in [120u64, 700, 1100, 1500, 300, 2300, 900]
        .into_iter()
        .enumerate()
    {
        let logs = Logs::open(config(dir.path())).unwrap();
        if k % 2 == 0 {
            logs.watch(s.clone()); // odd rounds rely on the checkpoint's sources being resumed
        }
        std::thread::sleep(Duration::from_millis(ms)); // let it ingest for a while: not a wait for a condition
        logs.platform("crashy", None, None, Level::Info, &format!("round {k}"));
        logs.simulate_crash();
    }
    writer.join().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    logs.watch(s.clone());
    let seen = wait_for("every line ingested", Duration::from_secs(20), || {
        let seen = count_numbers(&logs, "crashy", "line-");
        (seen.len() as u64 == N).then_some(seen)
    });
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        dups.is_empty(),
        "duplicated lines: {:?}",
        &dups[..dups.len().min(10)]
    );
    assert!((0..N).all(|i| seen.contains_key(&i)));
    assert_eq!(written.load(Ordering::Relaxed), N);
    // Order is preserved: seq follows the file order.
    let lines = query(
        &logs,
        &Query {
            stream: Some(Stream::Stdout),
            ..q("crashy")
        },
    );
    let nums: Vec<u64> = lines
        .iter()
        .map(|l| l.raw[5..].split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]), "lines out of order");
}

/// The newest segment file of a service.
fn last_segment(root: &Path, service: &str) -> PathBuf {
    let mut segs: Vec<_> = fs::read_dir(root.join("logs").join(service))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// Rewrites the checkpoint as if it had been written before any line was read:
/// the state after a crash between writing blocks and writing the checkpoint.
fn stale_checkpoint(root: &Path) {
    let p = root.join("logs/checkpoint.json");
    let mut ck: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    for s in ck["sources"].as_array_mut().unwrap() {
        s["stdout"]["offset"] = 0.into();
        s["stderr"]["offset"] = 0.into();
    }
    ck["segments"] = serde_json::json!([]);
    fs::write(&p, serde_json::to_vec(&ck).unwrap()).unwrap();
}

#[test]
fn blocks_written_after_the_last_checkpoint_are_not_ingested_twice() {
    let dir = tempfile::tempdir().unwrap();
    let s = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    let logs = Logs::open(config(dir.path())).unwrap();
    logs.watch(s.clone());
    for i in 0..100 {
        append(&s.stdout, format!("line-{i}\n"));
    }
    wait_lines(&logs, &q("svc"), 100, Duration::from_secs(2));
    logs.shutdown();
    drop(logs);
    stale_checkpoint(dir.path());
    let logs = Logs::open(config(dir.path())).unwrap();
    for i in 100..150 {
        append(&s.stdout, format!("line-{i}\n"));
    }
    wait_lines(&logs, &q("svc"), 150, Duration::from_secs(2));
    let seen = count_numbers(&logs, "svc", "line-");
    assert!(seen.values().all(|c| *c == 1) && seen.len() == 150);
}

#[test]
fn torn_tail_is_truncated_and_reread() {
    let dir = tempfile::tempdir().unwrap();
    let s = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    let logs = Logs::open(config(dir.path())).unwrap();
    logs.watch(s.clone());
    for i in 0..50 {
        append(&s.stdout, format!("line-{i}\n"));
    }
    wait_lines(&logs, &q("svc"), 50, Duration::from_secs(2));
    logs.shutdown();
    for i in 50..80 {
        append(&s.stdout, format!("line-{i}\n"));
    }
    let logs = Logs::open(config(dir.path())).unwrap();
    wait_lines(&logs, &q("svc"), 80, Duration::from_secs(2));
    logs.shutdown();
    drop(logs);

    // 1. Garbage after the last block.
    let seg = last_segment(dir.path(), "svc");
    append(&seg, b"TLB1\x00\x01garbage that is not a block");
    let logs = Logs::open(config(dir.path())).unwrap();
    assert_eq!(query(&logs, &q("svc")).len(), 80);
    logs.shutdown();
    drop(logs);

    // 2. The last block cut in half, and a checkpoint that predates it: its lines
    //    come back from the capture file, once.
    let len = fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);
    stale_checkpoint(dir.path());
    let logs = Logs::open(config(dir.path())).unwrap();
    let v = query(&logs, &q("svc"));
    assert!(v.len() < 80, "the torn block is gone ({} lines)", v.len());
    wait_lines(&logs, &q("svc"), 80, Duration::from_secs(2));
    let seen = count_numbers(&logs, "svc", "line-");
    assert!(seen.values().all(|c| *c == 1) && seen.len() == 80);

    // 3. A flipped byte inside a block is skipped by queries, not a panic.
    logs.shutdown();
    drop(logs);
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&seg, bytes).unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let _ = query(&logs, &q("svc"));
}

#[test]
fn retention_keeps_the_store_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 64 << 10;
    cfg.retention_bytes_per_service = 256 << 10;
    cfg.retention_bytes_total = 512 << 10;
    cfg.rate_limit_bytes_per_sec = 0;
    let seg = cfg.segment_bytes;
    // A segment may overshoot its target by its last block (≤ 256 KiB raw, compressed).
    let slack = seg + (160 << 10);
    let logs = Logs::open(cfg.clone()).unwrap();
    let services = ["one", "two", "three"];
    let srcs: Vec<Source> = services
        .iter()
        .map(|s| source(dir.path(), s, 1, &format!("{s}-v1-0001")))
        .collect();
    for s in &srcs {
        logs.watch(s.clone());
    }
    // Poorly compressible lines (an xorshift stream).
    let mut x = 0x9E3779B97F4A7C15u64;
    let mut max_seen = 0u64;
    for round in 0..30 {
        for s in &srcs {
            let mut text = String::new();
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push_str(&format!(
                    "{round} {x:016x} {:016x} {:016x}\n",
                    x.rotate_left(7),
                    x.rotate_left(29)
                ));
            }
            append(&s.stdout, text);
        }
        let expected = (round + 1) * 1000;
        for s in services {
            wait_for("ingestion", Duration::from_secs(5), || {
                let st = logs.stats();
                (st.services
                    .get(s)
                    .is_some_and(|x| x.lines_ingested >= expected as u64))
                .then_some(())
            });
        }
        // Retention runs on the ingest thread right after the write that
        // crossed the budget; on a busy machine the stats may be read in
        // between, so the bound must hold within a deadline.
        let within = |st: &tend_logs::LogStats| {
            st.store_bytes <= cfg.retention_bytes_total + slack
                && services
                    .iter()
                    .all(|s| st.services[*s].store_bytes <= cfg.retention_bytes_per_service + slack)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let st = loop {
            let st = logs.stats();
            if within(&st) || Instant::now() >= deadline {
                break st;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for s in services {
            let b = st.services[s].store_bytes;
            assert!(
                b <= cfg.retention_bytes_per_service + slack,
                "{s}: {b} bytes"
            );
        }
        assert!(
            st.store_bytes <= cfg.retention_bytes_total + slack,
            "total {}: {st:#?}",
            st.store_bytes
        );
        max_seen = max_seen.max(st.store_bytes);
    }
    assert!(
        max_seen > cfg.retention_bytes_total / 2,
        "the test wrote too little ({max_seen})"
    );
    // Oldest lines went first: the newest are still there.
    let v = query(
        &logs,
        &Query {
            limit: 1,
            ..q("one")
        },
    );
    assert!(v[0].raw.starts_with("29 "));
    drop(logs);

    // Age: with a short retention everything old goes.
    let mut cfg2 = cfg.clone();
    cfg2.retention_age = Duration::from_millis(500);
    let logs = Logs::open(cfg2).unwrap();
    wait_for("aged segments deleted", Duration::from_secs(6), || {
        (logs.stats().store_bytes == 0).then_some(())
    });
    assert!(query(&logs, &q("one")).is_empty());
}

#[test]
fn a_flood_does_not_delay_a_quiet_service_and_drops_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.rate_limit_bytes_per_sec = 1 << 20;
    let logs = Logs::open(cfg).unwrap();
    let flood = source(dir.path(), "flood", 1, "flood-v1-0001");
    let quiet = source(dir.path(), "quiet", 1, "quiet-v1-0001");
    logs.watch(flood.clone());
    logs.watch(quiet.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (path, stop) = (flood.stdout.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = OpenOptions::new().append(true).open(path).unwrap();
            let line = format!("{}\n", "flood ".repeat(25));
            let chunk = line.repeat(64 << 10 >> 8);
            let mut written = 0usize;
            // As fast as possible, bounded in bytes and time.
            let t0 = Instant::now();
            while written < (48 << 20)
                && t0.elapsed() < Duration::from_secs(4)
                && !stop.load(Ordering::Relaxed)
            {
                f.write_all(chunk.as_bytes()).unwrap();
                written += chunk.len();
            }
        })
    };
    wait_for("the flood to be ingested", Duration::from_secs(5), || {
        (logs
            .stats()
            .services
            .get("flood")
            .is_some_and(|s| s.lines_dropped > 0))
        .then_some(())
    });
    for i in 0..3 {
        let t0 = Instant::now();
        append(&quiet.stdout, format!("quiet {i}\n"));
        wait_lines(&logs, &q("quiet"), i + 1, Duration::from_secs(1));
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "quiet line took {:?}",
            t0.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let notice = Query {
        stream: Some(Stream::Platform),
        grep: Some(Grep::Substring("dropped by rate limit".into())),
        ..q("flood")
    };
    let v = wait_for("the drop notice", Duration::from_secs(60), || {
        let v = query(&logs, &notice);
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(v[0].level, Some(Level::Warn));
    let st = logs.stats();
    let f = &st.services["flood"];
    assert!(f.lines_dropped > 0 && f.bytes_dropped > 0);
    assert!(f.lines_ingested > 0);
    assert_eq!(st.services["quiet"].lines_dropped, 0);
}

#[test]
fn ingested_prefix_of_a_capture_file_is_punched_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    let mut text = String::new();
    for i in 0..40_000 {
        text.push_str(&format!("line {i:08} {}\n", "p".repeat(80)));
    }
    append(&s.stdout, &text);
    let size = fs::metadata(&s.stdout).unwrap().len();
    let blocks_before = fs::metadata(&s.stdout).unwrap().blocks();
    assert!(
        blocks_before * 512 >= size / 2,
        "the file is not sparse to begin with"
    );
    let logs = Logs::open(config(dir.path())).unwrap();
    logs.watch(s.clone());
    wait_lines(&logs, &q("svc"), 40_000, Duration::from_secs(20));
    let blocks_after = wait_for("holes punched", Duration::from_secs(5), || {
        let b = fs::metadata(&s.stdout).unwrap().blocks();
        (b * 512 < 64 << 10).then_some(b)
    });
    assert!(blocks_after < blocks_before);
    assert_eq!(
        fs::metadata(&s.stdout).unwrap().len(),
        size,
        "logical size unchanged"
    );
    // The writer's O_APPEND position is undisturbed: new lines land after the old ones.
    append(&s.stdout, "after punch\n");
    let v = wait_lines(
        &logs,
        &Query {
            limit: 1,
            ..q("svc")
        },
        1,
        Duration::from_secs(1),
    );
    wait_for("the new line", Duration::from_secs(2), || {
        let v = query(
            &logs,
            &Query {
                limit: 1,
                ..q("svc")
            },
        );
        (v[0].raw == "after punch").then_some(())
    });
    drop(v);
}

#[test]
fn second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    assert!(matches!(
        Logs::open(config(dir.path())),
        Err(tend_logs::LogError::Locked { .. })
    ));
    drop(logs);
    Logs::open(config(dir.path())).unwrap();
}

#[test]
fn platform_lines_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    logs.platform(
        "svc",
        Some(4),
        Some("svc-v4-0001"),
        Level::Error,
        "crashed: exit 1",
    );
    assert_eq!(query(&logs, &q("svc")).len(), 1, "visible at once");
    drop(logs);
    let logs = Logs::open(config(dir.path())).unwrap();
    let v = query(&logs, &q("svc"));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].release, Some(4));
    assert_eq!(v[0].stream, Stream::Platform);
    // seq continues after a restart.
    logs.platform("svc", None, None, Level::Info, "again");
    let v = query(&logs, &q("svc"));
    assert!(v[1].seq > v[0].seq);
}

#[test]
fn finish_keeps_files_a_process_still_writes() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let a = source(dir.path(), "svc", 1, "svc-v1-aaaa");
    logs.watch(a.clone());
    // A process with the capture file as its stdout, as the runtime starts instances.
    let out = OpenOptions::new().append(true).open(&a.stdout).unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "echo started; exec sleep 30"])
        .stdout(out)
        .spawn()
        .unwrap();
    wait_lines(&logs, &q("svc"), 1, Duration::from_secs(2));
    logs.finish("svc-v1-aaaa");
    // Commands run in order: once b's line is in, a's finish has been handled.
    let b = source(dir.path(), "svc", 1, "svc-v1-bbbb");
    logs.watch(b.clone());
    append(&b.stdout, "b\n");
    wait_lines(&logs, &q("svc"), 2, Duration::from_secs(2));
    assert!(
        a.stdout.exists(),
        "a file still open by a process must not be deleted"
    );
    append(&a.stdout, "still watched\n");
    wait_lines(&logs, &q("svc"), 3, Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    logs.finish("svc-v1-aaaa");
    wait_for("capture files deleted", Duration::from_secs(3), || {
        (!a.stdout.exists()).then_some(())
    });
}

#[test]
fn grep_over_large_stored_blocks_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(config(dir.path())).unwrap();
    let s = source(dir.path(), "big", 1, "big-v1-0001");
    logs.watch(s.clone());
    let mut text = String::new();
    for i in 0..30_000u32 {
        let id = i.wrapping_mul(2_654_435_761);
        text.push_str(&format!(
            "req={id:08x} GET /item/{i} status={}\n",
            200 + (i % 7 == 0) as u32 * 300
        ));
    }
    text.push_str("FATAL Connection Refused to db-1\n");
    append(&s.stdout, &text);
    wait_lines(&logs, &q("big"), 30_001, Duration::from_secs(10));
    drop(logs);
    let logs = Logs::open(config(dir.path())).unwrap();
    let count = |g: Grep| {
        query(
            &logs,
            &Query {
                grep: Some(g),
                ..q("big")
            },
        )
        .len()
    };
    let re = |p: &str| Grep::Regex(regex::Regex::new(p).unwrap());
    let id = 12_345u32.wrapping_mul(2_654_435_761);
    assert_eq!(count(Grep::Substring(format!("req={id:08x} "))), 1);
    assert_eq!(count(re(&format!(r"req={id:08x} GET /item/\d+"))), 1);
    assert_eq!(count(re(r"status=500")), 30_000usize.div_ceil(7));
    assert_eq!(count(re(r"(?i)connection refused")), 1);
    let ci = regex::RegexBuilder::new("connection refused")
        .case_insensitive(true)
        .build()
        .unwrap();
    assert_eq!(count(Grep::Regex(ci)), 1);
    assert_eq!(count(Grep::Substring("no such text".into())), 0);
    assert_eq!(count(re(r"/item/2999[0-9] ")), 10);
}
