//! Storage tests: head, WAL replay and crashes, compaction, retention, limits.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tend_metrics::{Labels, Matcher, Series, Tsdb, TsdbConfig};

const HOUR: i64 = 3_600_000;

fn cfg(dir: &std::path::Path) -> TsdbConfig {
    let mut c = TsdbConfig::new(dir);
    // Flushes only when the test asks, so crash tests are deterministic.
    c.wal_flush = Duration::from_secs(3600);
    c
}

fn l(name: &str, svc: &str, i: usize) -> Labels {
    Labels::new([
        ("__name__", name.to_string()),
        ("service", svc.to_string()),
        ("i", i.to_string()),
    ])
}

fn all(db: &Tsdb) -> Vec<Series> {
    db.select(
        &[Matcher::re("__name__", ".+").unwrap()],
        i64::MIN,
        i64::MAX,
    )
    .unwrap()
}

#[test]
fn append_select_head() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let mut batch = Vec::new();
    for t in 0..300 {
        for i in 0..3 {
            batch.push((l("m", "a", i), t * 1000, (t * i as i64) as f64));
        }
    }
    let st = db.append(&batch).unwrap();
    assert_eq!(st.appended, 900);
    let got = db
        .select(
            &[Matcher::eq("__name__", "m"), Matcher::eq("i", "2")],
            10_000,
            20_000,
        )
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].samples.len(), 11);
    assert_eq!(got[0].samples[0], (10_000, 20.0));
    // Out of order and duplicates are counted, not stored.
    let st = db
        .append(&[(l("m", "a", 0), 5_000, 1.0), (l("m", "a", 0), 299_000, 0.0)])
        .unwrap();
    assert_eq!((st.appended, st.out_of_order, st.duplicates), (0, 1, 1));
    assert_eq!(db.series(&[Matcher::eq("i", "1")], 0, 1).unwrap().len(), 1);
    assert_eq!(
        db.label_names(&[], i64::MIN, i64::MAX).unwrap(),
        vec!["__name__", "i", "service"]
    );
    assert_eq!(
        db.label_values("i", &[], i64::MIN, i64::MAX).unwrap(),
        vec!["0", "1", "2"]
    );
    assert_eq!(
        db.label_values("i", &[Matcher::neq("i", "1")], i64::MIN, i64::MAX)
            .unwrap(),
        vec!["0", "2"]
    );
}

#[test]
fn compaction_reopen_and_bytes_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let n_series = 50;
    let scrapes = 6 * HOUR / 15_000; // 6 h of 15 s scrapes
    {
        let db = Tsdb::open(cfg(dir.path())).unwrap();
        for k in 0..scrapes {
            let t = 1_700_000_000_000 / (2 * HOUR) * (2 * HOUR) + k * 15_000;
            let batch: Vec<_> = (0..n_series)
                .map(|i| {
                    // Counters with small integer increments and gauges with a few distinct values.
                    let v = if i % 2 == 0 {
                        (k * (i as i64 % 7 + 1)) as f64
                    } else {
                        ((k / 20) % 5) as f64
                    };
                    (l("req_total", "svc", i), t, v)
                })
                .collect();
            db.append(&batch).unwrap();
        }
        db.compact().unwrap();
        let st = db.stats();
        assert!(st.blocks >= 2, "{st:?}");
        assert_eq!(st.samples, (n_series as u64) * scrapes as u64);
        let bps = st.block_chunk_bytes as f64 / st.block_samples as f64;
        println!(
            "bytes/sample in blocks for regular 15s scrapes: {bps:.3} (overall {:.3})",
            st.bytes_per_sample
        );
        assert!(bps < 1.37, "bytes per sample {bps}");
        db.flush().unwrap();
    }
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let got = all(&db);
    assert_eq!(got.len(), n_series);
    for s in &got {
        assert_eq!(s.samples.len() as i64, scrapes, "{}", s.labels);
        assert!(s.samples.windows(2).all(|w| w[0].0 < w[1].0));
    }
    // Appending older than the head is refused.
    let st = db
        .append(&[(l("req_total", "svc", 0), 1_700_000_000_000 - 10 * HOUR, 1.0)])
        .unwrap();
    assert_eq!(st.out_of_bounds, 1);
}

#[test]
fn wal_crash_keeps_everything_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let h = std::thread::spawn(move || {
        let db = Tsdb::open(cfg(&path)).unwrap();
        for t in 0..100 {
            db.append(&[(l("x", "a", 0), t, t as f64)]).unwrap();
        }
        db.flush().unwrap();
        for t in 100..150 {
            db.append(&[(l("x", "a", 0), t, t as f64), (l("y", "a", 1), t, 1.0)])
                .unwrap();
        }
        db.crash();
    });
    h.join().unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let got = all(&db);
    assert_eq!(
        got.len(),
        1,
        "series created after the last flush are lost, not corrupted"
    );
    assert_eq!(got[0].samples.len(), 100);
    // The store stays writable after recovery.
    db.append(&[(l("x", "a", 0), 100, 5.0)]).unwrap();
    drop(db);
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    assert_eq!(all(&db)[0].samples.len(), 101, "graceful drop flushes");
}

#[test]
fn torn_wal_tail_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Tsdb::open(cfg(dir.path())).unwrap();
        for t in 0..50 {
            db.append(&[(l("x", "a", 0), t, 1.0)]).unwrap();
        }
        db.flush().unwrap();
    }
    // Append garbage (a half-written record) to the newest segment.
    let wal = dir.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let mut data = std::fs::read(last).unwrap();
    data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(last, data).unwrap();
    // Also flip a byte in the middle of an older segment's tail record.
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    assert_eq!(all(&db)[0].samples.len(), 50);
    db.append(&[(l("x", "a", 0), 60, 1.0)]).unwrap();
    drop(db);
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    assert_eq!(all(&db)[0].samples.len(), 51);
}

#[test]
fn cardinality_limit_per_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_series_per_service = 10;
    let db = Tsdb::open(c).unwrap();
    let batch: Vec<_> = (0..15)
        .map(|i| (l("m", "noisy", i), 1000, 1.0))
        .chain((0..5).map(|i| (l("m", "calm", i), 1000, 1.0)))
        .collect();
    let st = db.append(&batch).unwrap();
    assert_eq!((st.appended, st.rejected), (15, 5));
    // Existing series keep accepting samples; new ones stay refused.
    let st = db
        .append(&[
            (l("m", "noisy", 3), 2000, 1.0),
            (l("m", "noisy", 99), 2000, 1.0),
        ])
        .unwrap();
    assert_eq!((st.appended, st.rejected), (1, 1));
    assert_eq!(db.stats().series_per_service.get("noisy"), Some(&10));
}

#[test]
fn retention_by_age_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.block_span = Duration::from_secs(3600);
    c.retention = Duration::from_secs(5 * 3600);
    let db = Tsdb::open(c.clone()).unwrap();
    for k in 0..(12 * 60) {
        let t = k * 60_000;
        db.append(&[(l("m", "a", 0), t, k as f64), (l("m", "a", 1), t, 1.0)])
            .unwrap();
    }
    db.compact().unwrap();
    let got = all(&db);
    let oldest = got.iter().map(|s| s.samples[0].0).min().unwrap();
    assert!(
        oldest >= 12 * HOUR - 7 * HOUR,
        "old blocks dropped: oldest={oldest}"
    );
    assert!(
        oldest <= 12 * HOUR - 5 * HOUR,
        "recent data kept: oldest={oldest}"
    );
    let blocks_before = db.stats().blocks;
    drop(db);
    // Shrinking max_bytes drops the oldest blocks at open.
    c.max_bytes = db_size(dir.path()) / 2;
    let db = Tsdb::open(c).unwrap();
    assert!(db.stats().blocks < blocks_before);
    assert!(db.stats().disk_bytes <= db_size(dir.path()));
}

fn db_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            db_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

#[test]
fn stale_markers_and_special_values_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let stale = f64::from_bits(tend_metrics::STALE_NAN_BITS);
    db.append(&[
        (l("m", "a", 0), 1, f64::NAN),
        (l("m", "a", 0), 2, f64::INFINITY),
        (l("m", "a", 0), 3, stale),
    ])
    .unwrap();
    let got = all(&db);
    assert!(got[0].samples[0].1.is_nan());
    assert_eq!(got[0].samples[1].1, f64::INFINITY);
    assert!(tend_metrics::is_stale_nan(got[0].samples[2].1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Whatever is appended comes back from select, across head, blocks and a reopen.
    #[test]
    fn append_select_roundtrip(
        series in proptest::collection::vec(
            (0usize..6, proptest::collection::vec((1i64..400_000, any::<f64>()), 1..200)), 1..12),
        compact in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.block_span = Duration::from_secs(600);
        let db = Tsdb::open(c.clone()).unwrap();
        let mut expected: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        for (i, (svc, steps)) in series.iter().enumerate() {
            let labels = l("p", &format!("s{svc}"), i);
            let mut t = 0i64;
            for (d, v) in steps {
                t += d;
                db.append(&[(labels.clone(), t, *v)]).unwrap();
                expected.entry(labels.clone()).or_default().push((t, *v));
            }
        }
        if compact {
            db.compact().unwrap();
        }
        db.flush().unwrap();
        let check = |db: &Tsdb| {
            let got = all(db);
            assert_eq!(got.len(), expected.len());
            for (s, (el, es)) in got.iter().zip(expected.iter()) {
                assert_eq!(&s.labels, el);
                assert_eq!(s.samples.len(), es.len());
                for (a, b) in s.samples.iter().zip(es.iter()) {
                    assert_eq!(a.0, b.0);
                    assert_eq!(a.1.to_bits(), b.1.to_bits());
                }
            }
            // A sub-range select returns exactly the samples inside it.
            let (lo, hi) = (100_000, 900_000);
            let got = db.select(&[Matcher::eq("__name__", "p")], lo, hi).unwrap();
            let n: usize = got.iter().map(|s| s.samples.len()).sum();
            let want: usize = expected.values().map(|v| v.iter().filter(|(t, _)| *t >= lo && *t <= hi).count()).sum();
            assert_eq!(n, want);
        };
        check(&db);
        drop(db);
        let db = Tsdb::open(c).unwrap();
        check(&db);
    }
}

fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A WAL torn at any byte recovers a prefix of what was written, including
    /// every batch that was completely on disk before the tear.
    #[test]
    fn torn_wal_recovers_a_prefix(batches in proptest::collection::vec(1usize..20, 1..12), cut_frac in 0.0f64..1.0) {
        let dir = tempfile::tempdir().unwrap();
        let mut sizes = Vec::new();
        let mut expected = Vec::new();
        {
            let db = Tsdb::open(cfg(dir.path())).unwrap();
            let mut t = 0;
            for n in &batches {
                let mut batch = Vec::new();
                for _ in 0..*n {
                    t += 1000;
                    batch.push((l("x", "a", 0), t, t as f64 / 7.0));
                    expected.push((t, t as f64 / 7.0));
                }
                db.append(&batch).unwrap();
                db.flush().unwrap();
                sizes.push((std::fs::metadata(newest_segment(dir.path())).unwrap().len(), expected.len()));
            }
            db.crash();
        }
        let seg = newest_segment(dir.path());
        let len = std::fs::metadata(&seg).unwrap().len();
        let cut = (len as f64 * cut_frac) as u64;
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
        let db = Tsdb::open(cfg(dir.path())).unwrap();
        let got: Vec<(i64, f64)> = all(&db).into_iter().flat_map(|s| s.samples).collect();
        prop_assert!(got.len() <= expected.len());
        prop_assert_eq!(&got[..], &expected[..got.len()]);
        let must: usize = sizes.iter().filter(|(size, _)| *size <= cut).map(|(_, n)| *n).max().unwrap_or(0);
        prop_assert!(got.len() >= must, "lost flushed data: got {} want >= {}", got.len(), must);
    }
}

#[test]
fn data_dir_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let start = std::time::Instant::now();
    assert!(Tsdb::open(cfg(dir.path())).is_err());
    assert!(start.elapsed() >= Duration::from_secs(2));
    drop(db);
    Tsdb::open(cfg(dir.path())).unwrap();
}

#[test]
fn scrape_cache_path_stores_the_same_series_as_plain_parse() {
    use tend_metrics::exposition::{self, ScrapeCache};
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let target = Labels::from_pairs(&[("service", "s"), ("instance", "i1")]);
    let mut cache = ScrapeCache::new();
    let mut want: Vec<Series> = Vec::new();
    for k in 0..300i64 {
        let text = format!(
            "# TYPE h histogram\nh_bucket{{le=\"1\"}} {k}\nh_bucket{{le=\"+Inf\"}} {}\nreq{{code=\"200\"}} {}\n",
            k * 2,
            k * 3
        );
        // Alternate the cached and the plain path: both must land on the same series.
        let t = k * 15_000;
        let batch = if k % 3 == 0 {
            let mut v = exposition::parse(&text, None, t).unwrap();
            for s in &mut v {
                s.0 = s.0.merged(&target);
            }
            v
        } else {
            let mut v = Vec::new();
            cache.parse(&text, None, t, &target, &mut v).unwrap();
            v
        };
        let st = db.append(&batch).unwrap();
        assert_eq!(st.appended, 3);
        for (l, t, v) in batch {
            match want.iter_mut().find(|s| s.labels == l) {
                Some(s) => s.samples.push((t, v)),
                None => want.push(Series {
                    labels: l,
                    samples: vec![(t, v)],
                }),
            }
        }
    }
    assert_eq!(db.stats().head_series, 3);
    want.sort_by(|a, b| a.labels.cmp(&b.labels));
    assert_eq!(all(&db), want);
    assert_eq!(
        want[0].labels.to_string(),
        "h_bucket{instance=\"i1\", le=\"+Inf\", service=\"s\"}"
    );
    // Survives a restart (WAL replay) and keeps appending to the same series.
    db.flush().unwrap();
    drop(db);
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let mut v = Vec::new();
    cache
        .parse("req{code=\"200\"} 1\n", None, 300 * 15_000, &target, &mut v)
        .unwrap();
    assert_eq!(db.append(&v).unwrap().appended, 1);
    assert_eq!(db.stats().head_series, 3);
}
