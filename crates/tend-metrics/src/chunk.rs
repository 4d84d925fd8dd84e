//! Gorilla-style compressed chunks: delta-of-delta timestamps and XOR floats.
//!
//! Layout of a chunk: `u16` big-endian sample count, then a bit stream:
//! sample 0 = zigzag varint timestamp (bytes written through the bit writer)
//! and the 64 raw float bits; sample 1 = zigzag varint timestamp delta and an
//! XOR-encoded value; later samples = a delta-of-delta bucket and an XOR value.
//!
//! Delta-of-delta buckets are tuned for millisecond timestamps with scrape
//! jitter: `0` (dod = 0), `10`+7 bits, `110`+13 bits, `1110`+20 bits,
//! `1111`+64 bits. XOR values follow the Gorilla paper (`0` = same value,
//! `10` = reuse the previous leading/trailing window, `11` + 5 bits leading
//! zeros + 6 bits significant length + the significant bits).

/// Samples per chunk before a new one is cut (as in Prometheus).
pub const SAMPLES_PER_CHUNK: u16 = 120;

/// Appends bits, most significant first.
///
/// Bits gather in a 64-bit accumulator and reach the buffer 8 bytes at a
/// time: the head appends to thousands of chunks in turn, and touching each
/// one's heap buffer on every sample was the append path's top cache miss.
#[derive(Clone, Debug, Default)]
pub struct BitWriter {
    // Whole bytes written so far.
    buf: Vec<u8>,
    // The last `nacc` bits written (0..=63), right-aligned.
    acc: u64,
    nacc: u32,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer whose buffer starts with `prefix` (whole bytes).
    pub fn with_prefix(prefix: &[u8], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(prefix.len()));
        buf.extend_from_slice(prefix);
        BitWriter {
            buf,
            acc: 0,
            nacc: 0,
        }
    }

    /// Writes one bit.
    #[inline]
    pub fn write_bit(&mut self, bit: bool) {
        self.write_bits(u64::from(bit), 1);
    }

    /// Writes the lowest `n` bits of `v` (n ≤ 64), most significant first.
    #[inline]
    pub fn write_bits(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        let n = n.min(64);
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        if self.nacc + n < 64 {
            self.acc = (self.acc << n) | v;
            self.nacc += n;
            return;
        }
        // Fill the accumulator to 64 bits, store it, keep the rest.
        let space = 64 - self.nacc; // 1..=64, at most n
        let rest = n - space;
        let full = if space == 64 {
            v
        } else {
            (self.acc << space) | (v >> rest)
        };
        self.buf.extend_from_slice(&full.to_be_bytes());
        self.acc = if rest == 0 {
            0
        } else {
            v & ((1u64 << rest) - 1)
        };
        self.nacc = rest;
    }

    /// Number of bits written.
    pub fn bit_len(&self) -> usize {
        self.buf.len() * 8 + self.nacc as usize
    }

    /// Number of bytes of [`BitWriter::to_bytes`].
    pub fn byte_len(&self) -> usize {
        self.buf.len() + self.nacc.div_ceil(8) as usize
    }

    /// The bytes written so far (the last byte may be partial, padded with zeros).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        out.extend_from_slice(&self.buf);
        self.put_pending(&mut out);
        out
    }

    fn put_pending(&self, out: &mut Vec<u8>) {
        if self.nacc > 0 {
            let left = self.acc << (64 - self.nacc);
            out.extend_from_slice(&left.to_be_bytes()[..self.nacc.div_ceil(8) as usize]);
        }
    }

    /// Consumes the writer.
    pub fn into_bytes(mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        self.put_pending(&mut buf);
        buf
    }
}

/// Reads bits written by [`BitWriter`]; reads past the end return `None`.
#[derive(Clone, Debug)]
pub struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader starting at bit 0 of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        BitReader { buf, pos: 0 }
    }

    /// Reads one bit.
    #[inline]
    pub fn read_bit(&mut self) -> Option<bool> {
        let byte = *self.buf.get(self.pos / 8)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1 == 1;
        self.pos += 1;
        Some(bit)
    }

    /// Reads `n` bits (n ≤ 64) as the low bits of a `u64`.
    #[inline]
    pub fn read_bits(&mut self, n: u32) -> Option<u64> {
        if n == 0 {
            return Some(0);
        }
        if n > 64 || self.pos + n as usize > self.buf.len() * 8 {
            return None;
        }
        // Load the (at most 9) bytes holding the field into a u128 and shift:
        // no per-byte loop on the query hot path.
        let byte = self.pos / 8;
        let off = (self.pos % 8) as u32;
        let mut w = [0u8; 16];
        let avail = (self.buf.len() - byte).min(16);
        w[..avail].copy_from_slice(&self.buf[byte..byte + avail]);
        let v = (u128::from_be_bytes(w) << off) >> (128 - n);
        self.pos += n as usize;
        Some(v as u64)
    }

    fn read_uvarint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        let mut s = 0u32;
        loop {
            let b = self.read_bits(8)? as u8;
            if s >= 64 {
                return None;
            }
            if b < 0x80 {
                return Some(x | (u64::from(b) << s));
            }
            x |= u64::from(b & 0x7f) << s;
            s += 7;
        }
    }
}

fn write_uvarint_bits(w: &mut BitWriter, mut v: u64) {
    while v >= 0x80 {
        w.write_bits(u64::from((v as u8) | 0x80), 8);
        v >>= 7;
    }
    w.write_bits(v, 8);
}

// Delta-of-delta buckets: (prefix bits, prefix length, payload bits).
const DOD_BUCKETS: [(u64, u32, u32); 3] = [(0b10, 2, 7), (0b110, 3, 13), (0b1110, 4, 20)];

#[inline]
fn fits(v: i64, nbits: u32) -> bool {
    // Two's complement range of nbits, shifted by one as in Prometheus
    // (-(2^(n-1)-1) ..= 2^(n-1)), which keeps decoding unambiguous.
    let half = 1i64 << (nbits - 1);
    -(half - 1) <= v && v <= half
}

/// An appendable Gorilla chunk (the head keeps one open per series).
#[derive(Clone, Debug)]
pub struct ChunkAppender {
    w: BitWriter,
    num: u16,
    t: i64,
    t_delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
    min_t: i64,
}

impl Default for ChunkAppender {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkAppender {
    /// An empty chunk.
    pub fn new() -> Self {
        ChunkAppender {
            w: BitWriter::with_prefix(&[0, 0], 32),
            num: 0,
            t: 0,
            t_delta: 0,
            v: 0,
            leading: 0xff,
            trailing: 0,
            min_t: 0,
        }
    }

    /// Number of samples in the chunk.
    #[inline]
    pub fn len(&self) -> usize {
        self.num as usize
    }

    /// True when the chunk holds no samples.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.num == 0
    }

    /// Timestamp of the first sample (meaningless when empty).
    pub fn min_t(&self) -> i64 {
        self.min_t
    }

    /// Timestamp of the last sample (meaningless when empty).
    pub fn max_t(&self) -> i64 {
        self.t
    }

    /// Size of the encoded chunk in bytes.
    pub fn byte_len(&self) -> usize {
        self.w.byte_len()
    }

    /// Appends a sample; timestamps must increase (the head enforces it).
    #[inline]
    pub fn append(&mut self, t: i64, v: f64) {
        let vb = v.to_bits();
        match self.num {
            0 => {
                write_uvarint_bits(&mut self.w, crate::enc::zigzag(t));
                self.w.write_bits(vb, 64);
                self.min_t = t;
            }
            1 => {
                let d = t.wrapping_sub(self.t);
                write_uvarint_bits(&mut self.w, crate::enc::zigzag(d));
                self.write_xor(vb);
                self.t_delta = d;
            }
            _ => {
                let d = t.wrapping_sub(self.t);
                let dod = d.wrapping_sub(self.t_delta);
                if dod == 0 {
                    self.w.write_bit(false);
                } else if let Some(&(p, pl, nb)) = DOD_BUCKETS.iter().find(|b| fits(dod, b.2)) {
                    self.w.write_bits(p, pl);
                    self.w.write_bits(dod as u64, nb);
                } else {
                    self.w.write_bits(0b1111, 4);
                    self.w.write_bits(dod as u64, 64);
                }
                self.write_xor(vb);
                self.t_delta = d;
            }
        }
        self.t = t;
        self.v = vb;
        // The count header is written when the bytes are taken.
        self.num += 1;
    }

    #[inline]
    fn write_xor(&mut self, vb: u64) {
        let delta = vb ^ self.v;
        if delta == 0 {
            self.w.write_bit(false);
            return;
        }
        self.w.write_bit(true);
        let mut lead = delta.leading_zeros() as u8;
        let trail = delta.trailing_zeros() as u8;
        if lead >= 32 {
            lead = 31;
        }
        if self.leading != 0xff && lead >= self.leading && trail >= self.trailing {
            self.w.write_bit(false);
            self.w.write_bits(
                delta >> self.trailing,
                64 - u32::from(self.leading) - u32::from(self.trailing),
            );
            return;
        }
        self.leading = lead;
        self.trailing = trail;
        self.w.write_bit(true);
        self.w.write_bits(u64::from(lead), 5);
        let sig = 64 - u32::from(lead) - u32::from(trail);
        // 64 significant bits do not fit in 6 bits; 0 never occurs (delta != 0), so 0 stands for 64.
        self.w.write_bits(u64::from(sig & 63), 6);
        self.w.write_bits(delta >> trail, sig);
    }

    /// The encoded bytes (header included).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.w.to_bytes();
        b[..2].copy_from_slice(&self.num.to_be_bytes());
        b
    }

    /// Finishes the chunk.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut b = self.w.into_bytes();
        b[..2].copy_from_slice(&self.num.to_be_bytes());
        b.shrink_to_fit();
        b
    }
}

/// Iterates the samples of an encoded chunk; stops early on corrupt input
/// (check [`ChunkIter::corrupt`]).
#[derive(Clone, Debug)]
pub struct ChunkIter<'a> {
    r: BitReader<'a>,
    num: u16,
    i: u16,
    t: i64,
    t_delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
    corrupt: bool,
}

impl<'a> ChunkIter<'a> {
    /// Starts iterating `bytes` (a chunk as produced by [`ChunkAppender`]).
    pub fn new(bytes: &'a [u8]) -> Self {
        let (num, body) = if bytes.len() >= 2 {
            (u16::from_be_bytes([bytes[0], bytes[1]]), &bytes[2..])
        } else {
            (0, &bytes[0..0])
        };
        ChunkIter {
            r: BitReader::new(body),
            num,
            i: 0,
            t: 0,
            t_delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
            corrupt: bytes.len() == 1,
        }
    }

    /// Number of samples the header announces.
    pub fn len(&self) -> usize {
        self.num as usize
    }

    /// True when the chunk announces no samples.
    pub fn is_empty(&self) -> bool {
        self.num == 0
    }

    /// True when decoding stopped because the bytes were malformed.
    pub fn corrupt(&self) -> bool {
        self.corrupt
    }

    fn step(&mut self) -> Option<(i64, f64)> {
        match self.i {
            0 => {
                self.t = crate::enc::unzigzag(self.r.read_uvarint()?);
                self.v = self.r.read_bits(64)?;
            }
            1 => {
                self.t_delta = crate::enc::unzigzag(self.r.read_uvarint()?);
                self.t = self.t.wrapping_add(self.t_delta);
                self.read_xor()?;
            }
            _ => {
                let mut prefix = 0u32;
                while prefix < 4 {
                    if !self.r.read_bit()? {
                        break;
                    }
                    prefix += 1;
                }
                let dod = match prefix {
                    0 => 0,
                    4 => self.r.read_bits(64)? as i64,
                    p => {
                        let nb = DOD_BUCKETS[(p - 1) as usize].2;
                        let raw = self.r.read_bits(nb)? as i64;
                        // Undo the two's complement of an nb-bit field.
                        if raw > (1i64 << (nb - 1)) {
                            raw - (1i64 << nb)
                        } else {
                            raw
                        }
                    }
                };
                self.t_delta = self.t_delta.wrapping_add(dod);
                self.t = self.t.wrapping_add(self.t_delta);
                self.read_xor()?;
            }
        }
        self.i += 1;
        Some((self.t, f64::from_bits(self.v)))
    }

    #[inline]
    fn read_xor(&mut self) -> Option<()> {
        if !self.r.read_bit()? {
            return Some(());
        }
        if self.r.read_bit()? {
            self.leading = self.r.read_bits(5)? as u8;
            let mut sig = self.r.read_bits(6)? as u8;
            if sig == 0 {
                sig = 64;
            }
            if u32::from(self.leading) + u32::from(sig) > 64 {
                return None;
            }
            self.trailing = 64 - self.leading - sig;
        }
        let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
        let bits = self.r.read_bits(sig)?;
        self.v ^= bits << self.trailing;
        Some(())
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        if self.i >= self.num || self.corrupt {
            return None;
        }
        let s = self.step();
        if s.is_none() {
            self.corrupt = true;
        }
        s
    }
}

/// Appends the samples of `bytes` with `mint <= t <= maxt` to `out`; returns
/// false when the chunk was corrupt.
pub fn decode_range(bytes: &[u8], mint: i64, maxt: i64, out: &mut Vec<(i64, f64)>) -> bool {
    let mut it = ChunkIter::new(bytes);
    for (t, v) in &mut it {
        if t > maxt {
            break;
        }
        if t >= mint {
            out.push((t, v));
        }
    }
    !it.corrupt()
}

/// Encodes samples into one chunk (used by tests and compaction).
pub fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
    let mut a = ChunkAppender::new();
    for &(t, v) in samples {
        a.append(t, v);
    }
    a.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bit_writer_reader() {
        let mut w = BitWriter::new();
        w.write_bit(true);
        w.write_bits(0b1011, 4);
        w.write_bits(u64::MAX, 64);
        w.write_bits(0x1234, 13);
        w.write_bit(false);
        w.write_bits(0xdead_beef, 32);
        assert_eq!(w.bit_len(), 1 + 4 + 64 + 13 + 1 + 32);
        let b = w.into_bytes();
        let mut r = BitReader::new(&b);
        assert_eq!(r.read_bit(), Some(true));
        assert_eq!(r.read_bits(4), Some(0b1011));
        assert_eq!(r.read_bits(64), Some(u64::MAX));
        assert_eq!(r.read_bits(13), Some(0x1234 & 0x1fff));
        assert_eq!(r.read_bit(), Some(false));
        assert_eq!(r.read_bits(32), Some(0xdead_beef));
        assert_eq!(r.read_bits(9), None);
    }

    #[test]
    fn regular_series_compresses_well() {
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i * 3) as f64))
            .collect();
        let b = encode(&samples);
        let got: Vec<_> = ChunkIter::new(&b).collect();
        assert_eq!(got, samples);
        assert!(b.len() < 120 * 2, "{} bytes", b.len());
    }

    #[test]
    fn truncated_chunk_is_detected() {
        let samples: Vec<(i64, f64)> = (0..50).map(|i| (i * 1000, i as f64 * 0.5)).collect();
        let b = encode(&samples);
        let mut it = ChunkIter::new(&b[..b.len() / 2]);
        let n = it.by_ref().count();
        assert!(n < 50);
        assert!(it.corrupt());
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-0.0),
            (0u32..1000).prop_map(f64::from),
        ]
    }

    proptest! {
        #[test]
        fn write_bits_equals_bit_by_bit(ops in proptest::collection::vec((any::<u64>(), 0u32..=64), 0..64)) {
            let mut w = BitWriter::new();
            let mut bits = Vec::new();
            for &(v, n) in &ops {
                w.write_bits(v, n);
                bits.extend((0..n).rev().map(|i| (v >> i) & 1 == 1));
            }
            let mut want = vec![0u8; bits.len().div_ceil(8)];
            for (i, &b) in bits.iter().enumerate() {
                want[i / 8] |= u8::from(b) << (7 - i % 8);
            }
            prop_assert_eq!(w.bit_len(), bits.len());
            prop_assert_eq!(w.byte_len(), want.len());
            prop_assert_eq!(&w.to_bytes(), &want);
            prop_assert_eq!(w.into_bytes(), want);
        }

        #[test]
        fn chunk_roundtrip(
            start in any::<i64>().prop_map(|t| t / 4),
            steps in proptest::collection::vec(prop_oneof![1i64..100, 14_990i64..15_010, 1i64..(1 << 40)], 0..200),
            vals in proptest::collection::vec(value(), 200),
        ) {
            let mut t = start;
            let mut samples = Vec::new();
            for (i, d) in steps.iter().enumerate() {
                samples.push((t, vals[i]));
                t = t.saturating_add(*d);
            }
            let b = encode(&samples);
            let got: Vec<_> = ChunkIter::new(&b).collect();
            prop_assert_eq!(got.len(), samples.len());
            for (g, s) in got.iter().zip(samples.iter()) {
                prop_assert_eq!(g.0, s.0);
                prop_assert_eq!(g.1.to_bits(), s.1.to_bits());
            }
        }
    }
}
