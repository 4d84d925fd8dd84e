//! Turning capture-file bytes into lines: splitting (newlines, long lines,
//! partial last lines), and lifting `level`/`msg`/`time` out of JSON lines.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::Level;

/// Splits a byte stream into lines of at most `max` bytes.
///
/// Lines are emitted with the file offset just past the bytes they consumed
/// (including the newline), which is what the checkpoint may advance to.
pub(crate) struct Splitter {
    /// Bytes of an unfinished line (never more than `max` between calls).
    pending: Vec<u8>,
    /// File offset of `pending[0]`.
    pending_start: u64,
    max: usize,
}

impl Splitter {
    pub fn new(max: usize, offset: u64) -> Self {
        Splitter {
            pending: Vec::new(),
            pending_start: offset,
            max: max.max(4),
        }
    }

    /// True when an unfinished line is buffered.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// File offset up to which every byte has been emitted as (part of) a line.
    pub fn consumed(&self) -> u64 {
        self.pending_start
    }

    /// Forgets buffered bytes and restarts at `offset` (file replaced or truncated).
    pub fn reset(&mut self, offset: u64) {
        self.pending.clear();
        self.pending_start = offset;
    }

    /// Feeds `chunk`, which starts at file offset `consumed() + pending bytes`.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(&[u8], u64)) {
        let base = self.pending_start + self.pending.len() as u64;
        let mut start = 0usize;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let end_off = base + nl as u64 + 1;
            if self.pending.is_empty() {
                let line = &chunk[start..nl];
                emit_pieces(line, base + start as u64, end_off, self.max, emit);
            } else {
                self.pending.extend_from_slice(&chunk[start..nl]);
                emit_pieces(&self.pending, self.pending_start, end_off, self.max, emit);
                self.pending.clear();
            }
            self.pending_start = end_off;
            start = nl + 1;
        }
        let rest = &chunk[start..];
        if rest.is_empty() {
            return;
        }
        if self.pending.is_empty() {
            self.pending_start = base + start as u64;
        }
        self.pending.extend_from_slice(rest);
        // Emit whole pieces of an over-long unfinished line now, so memory stays bounded.
        while self.pending.len() > self.max {
            let cut = cut_point(&self.pending, self.max);
            let end = self.pending_start + cut as u64;
            emit(&self.pending[..cut], end);
            self.pending.drain(..cut);
            self.pending_start = end;
        }
    }

    /// Emits the unfinished line, if any (after a timeout or at the end of the file's life).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8], u64)) {
        if self.pending.is_empty() {
            return;
        }
        let end = self.pending_start + self.pending.len() as u64;
        emit_pieces(&self.pending, self.pending_start, end, self.max, emit);
        self.pending.clear();
        self.pending_start = end;
    }
}

/// Emits `line` (starting at file offset `start`, its terminator ending at `end`)
/// as pieces of at most `max` bytes; the last piece carries the terminator.
fn emit_pieces(
    mut line: &[u8],
    mut start: u64,
    end: u64,
    max: usize,
    emit: &mut impl FnMut(&[u8], u64),
) {
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    while line.len() > max {
        let cut = cut_point(line, max);
        start += cut as u64;
        emit(&line[..cut], start);
        line = &line[cut..];
    }
    emit(line, end);
}

/// Where to split a too-long line: at most `max` bytes, backing off (up to 3
/// bytes) so a UTF-8 character is not cut in two.
fn cut_point(b: &[u8], max: usize) -> usize {
    let mut c = max;
    while c > max - 3 && (b[c] & 0xC0) == 0x80 {
        c -= 1;
    }
    if (b[c] & 0xC0) == 0x80 {
        max // not UTF-8 anyway
    } else {
        c
    }
}

/// Fields lifted from a JSON line.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Lifted<'a> {
    pub level: Option<Level>,
    pub message: Option<Cow<'a, str>>,
    pub time: Option<SystemTime>,
}

/// Lifts `level`/`lvl`/`severity`, `msg`/`message` and `time`/`ts`/`timestamp`
/// (keys case-insensitive; also Serilog's `@l`/`@m`/`@t`) out of a line that is
/// one JSON object. None for anything else.
pub(crate) fn lift_json(raw: &str) -> Option<Lifted<'_>> {
    let t = raw.trim_ascii();
    if !(t.starts_with('{') && t.ends_with('}')) {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(t);
    let lifted = de.deserialize_map(LiftVisitor).ok()?;
    de.end().ok()?;
    Some(lifted)
}

struct LiftVisitor;

enum Key {
    Level,
    Message,
    Time,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KV;
        impl Visitor<'_> for KV {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                let k = |n: &str| s.eq_ignore_ascii_case(n);
                Ok(
                    if k("level") || k("lvl") || k("severity") || k("@l") || k("loglevel") {
                        Key::Level
                    } else if k("msg") || k("message") || k("@m") {
                        Key::Message
                    } else if k("time") || k("ts") || k("timestamp") || k("@t") {
                        Key::Time
                    } else {
                        Key::Other
                    },
                )
            }
        }
        d.deserialize_identifier(KV)
    }
}

/// A JSON value as far as lifting cares.
enum Val<'a> {
    Str(Cow<'a, str>),
    Int(u64),
    Num(f64),
    Other,
}

impl<'de> de::Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct VV;
        impl<'de> Visitor<'de> for VV {
            type Value = Val<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Val<'de>, E> {
                Ok(Val::Str(Cow::Owned(s)))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Val<'de>, E> {
                Ok(Val::Num(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Val<'de>, E> {
                Ok(Val::Num(n as f64))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Val<'de>, E> {
                Ok(Val::Int(n))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Val<'de>, E> {
                Ok(Val::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
                Ok(Val::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Val<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Val::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Val<'de>, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Val::Other)
            }
        }
        d.deserialize_any(VV)
    }
}

impl<'de> Visitor<'de> for LiftVisitor {
    type Value = Lifted<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Lifted<'de>, A::Error> {
        let mut out = Lifted::default();
        while let Some(k) = m.next_key::<Key>()? {
            match k {
                Key::Other => {
                    m.next_value::<IgnoredAny>()?;
                }
                Key::Level => {
                    let v = m.next_value::<Val>()?;
                    if out.level.is_none() {
                        out.level = match v {
                            Val::Str(s) => Level::parse(&s),
                            Val::Num(n) => Level::from_number(n),
                            Val::Int(n) => Level::from_number(n as f64),
                            Val::Other => None,
                        };
                    }
                }
                Key::Message => {
                    if let Val::Str(s) = m.next_value::<Val>()? {
                        if out.message.is_none() {
                            out.message = Some(s);
                        }
                    }
                }
                Key::Time => {
                    let v = m.next_value::<Val>()?;
                    if out.time.is_none() {
                        out.time = match v {
                            Val::Str(s) => parse_time(&s),
                            Val::Num(n) => epoch_number(n),
                            Val::Int(n) => epoch_integer(n),
                            Val::Other => None,
                        };
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A number of seconds, milliseconds, microseconds or nanoseconds since the
/// epoch, told apart by magnitude (valid for dates after 1973).
fn epoch_number(n: f64) -> Option<SystemTime> {
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    let secs = if n < 1e11 {
        n
    } else if n < 1e14 {
        n / 1e3
    } else if n < 1e17 {
        n / 1e6
    } else {
        n / 1e9
    };
    Some(SystemTime::UNIX_EPOCH + Duration::try_from_secs_f64(secs).ok()?)
}

/// Like [`epoch_number`], exactly, for integers.
fn epoch_integer(n: u64) -> Option<SystemTime> {
    let d = match n {
        0 => return None,
        n if n < 100_000_000_000 => Duration::from_secs(n),
        n if n < 100_000_000_000_000 => Duration::from_millis(n),
        n if n < 100_000_000_000_000_000 => Duration::from_micros(n),
        n => Duration::from_nanos(n),
    };
    SystemTime::UNIX_EPOCH.checked_add(d)
}

/// Parses a time as found in logs: RFC 3339 (`T` or space, any fraction, `Z`,
/// `±hh:mm`, `±hhmm` or no zone = UTC) or a number of (milli/micro/nano)seconds
/// since the epoch.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return epoch_integer(s.parse().ok()?);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return epoch_number(s.parse().ok()?);
    }
    parse_rfc3339(s)
}

/// Strict-enough RFC 3339: `YYYY-MM-DD(T| )HH:MM:SS[.frac][Z|±HH:MM|±HHMM]`.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if i < b.len() && (b[i] == b'.' || b[i] == b',') {
        i += 1;
        let mut digits = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if digits < 9 {
                nanos = nanos * 10 + (b[i] - b'0') as u64;
                digits += 1;
            }
            i += 1;
        }
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match &b[i..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (oh, om) = match rest {
                [a, b2, b':', c, d2] | [a, b2, c, d2] => {
                    let two = |x: u8, y: u8| -> Option<i64> {
                        (x.is_ascii_digit() && y.is_ascii_digit())
                            .then(|| ((x - b'0') * 10 + (y - b'0')) as i64)
                    };
                    (two(*a, *b2)?, two(*c, *d2)?)
                }
                [a, b2] if a.is_ascii_digit() && b2.is_ascii_digit() => {
                    (((a - b'0') * 10 + (b2 - b'0')) as i64, 0)
                }
                _ => return None,
            };
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86400 + h * 3600 + mi * 60 + sec - offset_secs;
    if secs < 0 {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos as u32))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]], flush: bool) -> Vec<(String, u64)> {
        let mut s = Splitter::new(max, 0);
        let mut out = Vec::new();
        let mut emit =
            |l: &[u8], end: u64| out.push((String::from_utf8_lossy(l).into_owned(), end));
        for c in chunks {
            s.feed(c, &mut emit);
        }
        if flush {
            s.flush(&mut emit);
        }
        out
    }

    #[test]
    fn splits_lines_and_keeps_partial() {
        let out = split(100, &[b"ab\ncd", b"e\r\nf"], false);
        assert_eq!(out, vec![("ab".into(), 3), ("cde".into(), 8)]);
        let out = split(100, &[b"ab\ncd", b"e\r\nf"], true);
        assert_eq!(out.last(), Some(&("f".to_string(), 9)));
    }

    #[test]
    fn long_lines_are_split_not_dropped() {
        let line = "x".repeat(25) + "\n";
        let out = split(10, &[line.as_bytes()], false);
        assert_eq!(
            out,
            vec![
                ("x".repeat(10), 10),
                ("x".repeat(10), 20),
                ("x".repeat(5), 26)
            ]
        );
        // Same across chunk boundaries (unfinished line longer than max).
        let out = split(10, &[&line.as_bytes()[..13], &line.as_bytes()[13..]], false);
        assert_eq!(
            out,
            vec![
                ("x".repeat(10), 10),
                ("x".repeat(10), 20),
                ("x".repeat(5), 26)
            ]
        );
        // Never inside a UTF-8 character.
        let out = split(4, &["aaé€b\n".as_bytes()], false);
        assert!(out.iter().all(|(l, _)| !l.contains('\u{fffd}')), "{out:?}");
        assert_eq!(out.last().unwrap().1, "aaé€b\n".len() as u64);
    }

    #[test]
    fn lifts_json_fields() {
        let l = lift_json(r#"{"level":"WARNING","msg":"disk low","ts":"2024-05-06T07:08:09.5+02:00","n":[1,{"a":2}]}"#).unwrap();
        assert_eq!(l.level, Some(Level::Warn));
        assert_eq!(l.message.as_deref(), Some("disk low"));
        assert_eq!(l.time, parse_rfc3339("2024-05-06T05:08:09.5Z"));
        let l = lift_json(r#"{"lvl":50,"message":"a \"q\"","time":1700000000123}"#).unwrap();
        assert_eq!(l.level, Some(Level::Error));
        assert_eq!(l.message.as_deref(), Some("a \"q\""));
        assert_eq!(
            l.time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(
            lift_json(r#"{"severity":"critical"}"#).unwrap().level,
            Some(Level::Fatal)
        );
        assert_eq!(
            lift_json(r#"{"Severity":"err"}"#).unwrap().level,
            Some(Level::Error)
        );
        assert!(lift_json("{not json}").is_none());
        assert!(lift_json("plain").is_none());
        assert!(lift_json(r#"{"a":1} {"b":2}"#).is_none());
    }

    #[test]
    fn parses_times() {
        let t = parse_rfc3339("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_secs(86401));
        assert_eq!(parse_rfc3339("1970-01-02 00:00:01"), Some(t));
        assert_eq!(parse_rfc3339("1970-01-02T01:00:01+0100"), Some(t));
        assert_eq!(parse_time("86401"), Some(t));
        assert!(parse_rfc3339("1970-13-02T00:00:01Z").is_none());
        let s = humantime::format_rfc3339_millis(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        )
        .to_string();
        assert_eq!(
            parse_rfc3339(&s),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
    }
}
