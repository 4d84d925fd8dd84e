//! Write-ahead log: append-only numbered segments of framed records.
//!
//! Record framing: `u32` LE payload length, `u32` LE crc32 of the payload,
//! payload. Payload types: `1` = series (`ref`, labels), `2` = samples
//! (`ref`, timestamp, value bits). Appends go to a memory buffer that is
//! written and fsynced by [`Wal::flush`] (called every `wal_flush`), so a
//! `kill -9` loses at most one flush interval. Each segment starts with the
//! series records of every live series, so any segment can be deleted once
//! its samples are in blocks. Replay truncates a torn or corrupt tail.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::enc::{put_str, put_uvarint, put_varint, Decoder};
use crate::labels::Labels;
use crate::TsdbError;

pub(crate) const REC_SERIES: u8 = 1;
pub(crate) const REC_SAMPLES: u8 = 2;

/// Segments are cut beyond this size (checked by the appender).
pub(crate) const SEGMENT_SIZE: u64 = 64 << 20;
// Appenders write the buffer themselves past this size, bounding memory.
const MAX_PENDING: usize = 8 << 20;

/// A decoded WAL record.
#[derive(Debug)]
pub(crate) enum Record {
    Series(Vec<(u64, Labels)>),
    Samples(Vec<(u64, i64, f64)>),
}

struct Segment {
    seq: u64,
    file: File,
    size: u64,
}

struct Files {
    cur: Segment,
    // Closed segments with the largest sample timestamp they hold.
    closed: Vec<(u64, i64)>,
}

struct Pending {
    buf: Vec<u8>,
    max_t: i64,
}

/// The write-ahead log of the head.
pub(crate) struct Wal {
    dir: PathBuf,
    // Lock order: `files` before `pending`.
    files: Mutex<Files>,
    pending: Mutex<Pending>,
    cur_max_t: Mutex<i64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TsdbError + '_ {
    move |source| TsdbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:08}"))
}

/// Lists segment numbers in `dir`, sorted.
fn list_segments(dir: &Path) -> Result<Vec<u64>, TsdbError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Encodes a record frame around `payload` into `out`.
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends one series entry to a series-record payload (type byte first).
pub(crate) fn encode_series(payload: &mut Vec<u8>, r: u64, labels: &Labels) {
    if payload.is_empty() {
        payload.push(REC_SERIES);
    }
    put_uvarint(payload, r);
    put_uvarint(payload, labels.len() as u64);
    for (n, v) in labels.iter() {
        put_str(payload, n);
        put_str(payload, v);
    }
}

/// Appends one sample to a samples-record payload: the type byte and a base
/// timestamp come first, then per sample the ref, the timestamp relative to
/// the base and the value bits (~11 bytes per sample).
#[inline]
pub(crate) fn encode_sample(payload: &mut Vec<u8>, base_t: &mut i64, r: u64, t: i64, v: f64) {
    if payload.is_empty() {
        payload.push(REC_SAMPLES);
        put_varint(payload, t);
        *base_t = t;
    }
    put_uvarint(payload, r);
    put_varint(payload, t.wrapping_sub(*base_t));
    payload.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn decode(payload: &[u8]) -> Option<Record> {
    let mut d = Decoder::new(payload);
    match d.u8()? {
        REC_SERIES => {
            let mut out = Vec::new();
            while !d.is_empty() {
                let r = d.uvarint()?;
                let n = d.uvarint()?;
                let mut pairs = Vec::with_capacity(n.min(64) as usize);
                for _ in 0..n {
                    let name = d.str()?;
                    let value = d.str()?;
                    pairs.push((name, value));
                }
                out.push((r, Labels::new(pairs)));
            }
            Some(Record::Series(out))
        }
        REC_SAMPLES => {
            let mut out = Vec::new();
            let base = d.varint()?;
            while !d.is_empty() {
                let r = d.uvarint()?;
                let t = base.wrapping_add(d.varint()?);
                let v = f64::from_bits(d.u64_le()?);
                out.push((r, t, v));
            }
            Some(Record::Samples(out))
        }
        _ => None,
    }
}

/// Parses the records of one segment; returns the records and the byte
/// offset where valid data ends (less than `buf.len()` on a torn/corrupt tail).
fn parse_segment(buf: &[u8]) -> (Vec<Record>, usize) {
    let mut recs = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= buf.len() {
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
        let Some(payload) = buf.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match decode(payload) {
            Some(r) => recs.push(r),
            None => break,
        }
        pos += 8 + len;
    }
    (recs, pos)
}

impl Wal {
    /// Opens the WAL in `dir`, replaying every record into `apply` in order.
    /// A corrupt or torn record ends the log: its segment is truncated there
    /// and later segments are removed.
    pub(crate) fn open(dir: &Path, mut apply: impl FnMut(u64, Record)) -> Result<Wal, TsdbError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segs = list_segments(dir)?;
        let mut closed = Vec::new();
        let mut stop_at: Option<usize> = None;
        for (i, &seq) in segs.iter().enumerate() {
            let path = seg_path(dir, seq);
            let mut buf = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io_err(&path))?;
            let (recs, valid) = parse_segment(&buf);
            let mut max_t = i64::MIN;
            for r in recs {
                if let Record::Samples(s) = &r {
                    for &(_, t, _) in s {
                        max_t = max_t.max(t);
                    }
                }
                apply(seq, r);
            }
            closed.push((seq, max_t));
            if valid < buf.len() {
                tracing::warn!(segment = %path.display(), valid, len = buf.len(), "WAL: truncating torn or corrupt tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid as u64).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                stop_at = Some(i);
                break;
            }
        }
        if let Some(i) = stop_at {
            for &seq in &segs[i + 1..] {
                let p = seg_path(dir, seq);
                tracing::warn!(segment = %p.display(), "WAL: removing segment after corruption");
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        // Always start a fresh segment: the caller writes the series dump into it.
        let next = closed.last().map(|c| c.0 + 1).unwrap_or(1);
        let cur = Self::create_segment(dir, next)?;
        sync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            files: Mutex::new(Files { cur, closed }),
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(64 << 10),
                max_t: i64::MIN,
            }),
            cur_max_t: Mutex::new(i64::MIN),
        })
    }

    fn create_segment(dir: &Path, seq: u64) -> Result<Segment, TsdbError> {
        let path = seg_path(dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Segment { seq, file, size: 0 })
    }

    /// Buffers framed records; the series payload must precede samples that use it.
    pub(crate) fn append(
        &self,
        series_payload: &[u8],
        samples_payload: &[u8],
        max_t: i64,
    ) -> Result<(), TsdbError> {
        let full = {
            let mut p = self.pending.lock();
            if !series_payload.is_empty() {
                frame(&mut p.buf, series_payload);
            }
            if !samples_payload.is_empty() {
                frame(&mut p.buf, samples_payload);
            }
            p.max_t = p.max_t.max(max_t);
            p.buf.len() > MAX_PENDING
        };
        if full {
            self.write_out(false)?;
        }
        Ok(())
    }

    /// Writes buffered records to the segment file, and fsyncs if `sync`.
    fn write_out(&self, sync: bool) -> Result<(), TsdbError> {
        let mut files = self.files.lock();
        let (buf, max_t) = {
            let mut p = self.pending.lock();
            let max_t = p.max_t;
            p.max_t = i64::MIN;
            (
                std::mem::replace(&mut p.buf, Vec::with_capacity(64 << 10)),
                max_t,
            )
        };
        {
            let mut m = self.cur_max_t.lock();
            *m = (*m).max(max_t);
        }
        let path = seg_path(&self.dir, files.cur.seq);
        if !buf.is_empty() {
            files.cur.file.write_all(&buf).map_err(io_err(&path))?;
            files.cur.size += buf.len() as u64;
        }
        if sync {
            files.cur.file.sync_data().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Writes and fsyncs everything appended so far.
    pub(crate) fn flush(&self) -> Result<(), TsdbError> {
        self.write_out(true)
    }

    /// Drops buffered, unwritten records (simulates a crash in tests).
    pub(crate) fn discard_pending(&self) {
        self.pending.lock().buf.clear();
    }

    /// True when the current segment should be cut.
    pub(crate) fn wants_cut(&self) -> bool {
        let size = self.files.lock().cur.size;
        size + self.pending.lock().buf.len() as u64 > SEGMENT_SIZE
    }

    /// Closes the current segment and starts a new one beginning with `series_dump`
    /// (a series-record payload). The caller holds the head lock so no append races.
    pub(crate) fn cut(&self, series_dump: &[u8]) -> Result<(), TsdbError> {
        self.write_out(true)?;
        let mut files = self.files.lock();
        let seq = files.cur.seq + 1;
        let mut seg = Self::create_segment(&self.dir, seq)?;
        let mut buf = Vec::with_capacity(series_dump.len() + 8);
        if !series_dump.is_empty() {
            frame(&mut buf, series_dump);
        }
        let path = seg_path(&self.dir, seq);
        seg.file.write_all(&buf).map_err(io_err(&path))?;
        seg.file.sync_data().map_err(io_err(&path))?;
        seg.size = buf.len() as u64;
        let old = std::mem::replace(&mut files.cur, seg);
        let max_t = std::mem::replace(&mut *self.cur_max_t.lock(), i64::MIN);
        files.closed.push((old.seq, max_t));
        drop(files);
        sync_dir(&self.dir)
    }

    /// Deletes closed segments whose samples are all older than `before_t`
    /// (they are in blocks now).
    pub(crate) fn truncate(&self, before_t: i64) -> Result<(), TsdbError> {
        let mut files = self.files.lock();
        let mut keep = Vec::new();
        for &(seq, max_t) in &files.closed {
            if max_t < before_t {
                let p = seg_path(&self.dir, seq);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(TsdbError::Io { path: p, source: e }),
                }
            } else {
                keep.push((seq, max_t));
            }
        }
        files.closed = keep;
        Ok(())
    }

    /// Bytes on disk (segments) plus buffered bytes.
    pub(crate) fn size_bytes(&self) -> u64 {
        let files = self.files.lock();
        let mut total = files.cur.size;
        for &(seq, _) in &files.closed {
            total += fs::metadata(seg_path(&self.dir, seq))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        total + self.pending.lock().buf.len() as u64
    }
}

/// Fsyncs a directory so that created/renamed entries survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), TsdbError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        {
            let wal = Wal::open(&wal_dir, |_, _| {}).unwrap();
            let mut s = Vec::new();
            encode_series(&mut s, 1, &Labels::from_pairs(&[("__name__", "x")]));
            let mut p = Vec::new();
            let mut base = 0;
            for i in 0..10 {
                encode_sample(&mut p, &mut base, 1, 1000 + i, i as f64);
            }
            wal.append(&s, &p, 9).unwrap();
            wal.flush().unwrap();
            let mut p2 = Vec::new();
            encode_sample(&mut p2, &mut base, 1, 1010, 10.0);
            wal.append(&[], &p2, 10).unwrap();
            wal.flush().unwrap();
        }
        // Tear the last record in half.
        let seg = seg_path(&wal_dir, 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut samples = 0;
        let mut series = 0;
        let _wal = Wal::open(&wal_dir, |_, r| match r {
            Record::Series(s) => series += s.len(),
            Record::Samples(s) => samples += s.len(),
        })
        .unwrap();
        assert_eq!((series, samples), (1, 10));
        // Segment 1 was truncated to the valid prefix.
        assert!(fs::metadata(&seg).unwrap().len() < len - 5);
    }
}
