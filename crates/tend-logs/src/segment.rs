//! The block format: encoding the active block, compressing it into a block with
//! a skippable header, decoding, and scanning/recovering segment files.
//!
//! ```text
//! segment := "TENDSEG1" block*
//! block   := header payload
//! header  := "TLB1" crc32:u32 header_len:u32 payload_len:u32 raw_len:u32 count:u32
//!            min_time:u64 max_time:u64 first_seq:u64 level_mask:u8 stream_mask:u8
//!            n_labels:u16 label* [bloom_len:u32 bloom]  (little-endian; crc covers
//!                                                       header_len..end of payload)
//! label   := release:u32 (MAX = none) stream:u8 flags:u8 inst_len:u16 inst
//!            [ino:u64 end:u64 if flags&2]              (flags&1: has instance)
//! payload := zstd( meta_len:u32 text_len:u32 msgs_len:u32 meta text msgs ), as
//!            one frame or as two (the first ending after meta): decompressing the
//!            payload yields the same bytes either way
//! meta    := per line: zigzag varint time delta (ns), varint label, u8 level|flags,
//!            [varint raw_len unless flags&64: then the line ends at the text's next
//!            '\n'], [varint msg_len if flags&8], [varint app_time if flags&16:
//!            absolute, or if flags&32 a zigzag delta from the block's previous app_time]
//! text    := per line: raw '\n'        msgs := the lifted messages, concatenated
//! bloom   := bloom filter (2 bits per item) of the text's byte trigrams, ASCII
//!            lower-cased, leaving out trigrams of hex digits only that contain a
//!            decimal digit (ids and numbers: in every block, they only fill the
//!            filter); only for blocks with >= 4 KiB of text; folded in halves
//!            while at most MAX_BLOOM_FILL of its bits would be set
//! ```
//!
//! Blocks are written as two frames (metadata; text and messages): binary
//! metadata in the text's frame costs it about 5 % of compression.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::{Level, Stream};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"TENDSEG1";
pub(crate) const BLOCK_MAGIC: &[u8; 4] = b"TLB1";
/// Fixed part of a block header.
pub(crate) const FIXED_HEADER: usize = 52;
/// Sanity bounds while scanning: anything larger is corruption.
const MAX_HEADER: usize = 1 << 20;
const MAX_PAYLOAD: usize = 256 << 20;
/// zstd level of the text frame: higher levels buy a few percent (6: 7 % smaller)
/// for twice the ingest CPU; 2 to 3 do worse than 1 on typical request logs.
const ZSTD_LEVEL: i32 = 1;
/// zstd level of the (small) metadata frame: 6 saves a fifth of it for little CPU.
const META_ZSTD_LEVEL: i32 = 6;

/// Blocks with less text get no bloom filter (decompressing them is cheap).
const BLOOM_MIN_TEXT: usize = 4096;

const FLAG_MSG: u8 = 8;
const FLAG_APP_TIME: u8 = 16;
const FLAG_APP_DELTA: u8 = 32;
const FLAG_NL_END: u8 = 64;

/// A bloom filter is halved while no more than this share of its bits would be set
/// (2 bits per trigram: a false positive per trigram of about this squared).
const MAX_BLOOM_FILL: f64 = 0.5;

/// Where a line came from; a block's label table holds each distinct one once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Label {
    pub release: Option<u32>,
    pub instance: Option<Arc<str>>,
    pub stream: Stream,
    /// Capture file (inode) and the offset just past the block's last line from it.
    pub file: Option<(u64, u64)>,
}

impl Label {
    fn same_source(
        &self,
        release: Option<u32>,
        instance: Option<&str>,
        stream: Stream,
        ino: Option<u64>,
    ) -> bool {
        self.release == release
            && self.stream == stream
            && self.instance.as_deref() == instance
            && self.file.map(|f| f.0) == ino
    }
}

/// The block being filled in memory (also what a query reads for unflushed lines).
#[derive(Clone, Debug, Default)]
pub(crate) struct ActiveBlock {
    pub meta: Vec<u8>,
    pub text: Vec<u8>,
    pub msgs: Vec<u8>,
    pub labels: Vec<Label>,
    pub count: u32,
    pub min_time: u64,
    pub max_time: u64,
    pub first_seq: u64,
    pub level_mask: u8,
    pub stream_mask: u8,
    prev_time: u64,
    prev_app_time: u64,
    /// Bumped whenever the block is emptied, so callers can cache label indexes.
    pub generation: u64,
}

/// One line to append.
pub(crate) struct NewLine<'a> {
    pub time: u64,
    pub release: Option<u32>,
    pub instance: Option<&'a str>,
    pub stream: Stream,
    /// (inode, end offset) for lines from a capture file.
    pub file: Option<(u64, u64)>,
    pub level: Option<Level>,
    pub raw: &'a str,
    pub message: Option<&'a str>,
    pub app_time: Option<u64>,
}

impl ActiveBlock {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Raw bytes buffered (text and lifted messages).
    pub fn raw_len(&self) -> usize {
        self.text.len() + self.msgs.len() + self.meta.len()
    }

    /// Appends a line with sequence number `seq`; `label_hint` caches the label
    /// index across calls (valid while `generation` is unchanged).
    pub fn push(&mut self, l: &NewLine<'_>, seq: u64, label_hint: &mut Option<(u64, u32)>) {
        let ino = l.file.map(|f| f.0);
        let idx = match *label_hint {
            Some((g, i))
                if g == self.generation
                    && self.labels.get(i as usize).is_some_and(|lab| {
                        lab.same_source(l.release, l.instance, l.stream, ino)
                    }) =>
            {
                i
            }
            _ => {
                let found = self
                    .labels
                    .iter()
                    .position(|lab| lab.same_source(l.release, l.instance, l.stream, ino));
                let i = match found {
                    Some(i) => i,
                    None => {
                        self.labels.push(Label {
                            release: l.release,
                            instance: l.instance.map(Arc::from),
                            stream: l.stream,
                            file: l.file,
                        });
                        self.labels.len() - 1
                    }
                } as u32;
                *label_hint = Some((self.generation, i));
                i
            }
        };
        if let Some(f) = l.file {
            self.labels[idx as usize].file = Some(f);
        }
        if self.count == 0 {
            self.min_time = l.time;
            self.max_time = l.time;
            self.first_seq = seq;
            self.prev_time = 0;
            self.prev_app_time = 0;
        }
        self.min_time = self.min_time.min(l.time);
        self.max_time = self.max_time.max(l.time);
        self.count += 1;
        let delta = l.time.wrapping_sub(self.prev_time) as i64;
        self.prev_time = l.time;
        put_varint(&mut self.meta, zigzag(delta));
        put_varint(&mut self.meta, idx as u64);
        let mut flags = l.level.map_or(0, Level::code);
        self.level_mask |= 1 << flags;
        self.stream_mask |= 1 << l.stream.code();
        if l.message.is_some() {
            flags |= FLAG_MSG;
        }
        if l.app_time.is_some() {
            flags |= FLAG_APP_TIME | FLAG_APP_DELTA;
        }
        // A line ends at the text column's next '\n': its length need not be stored.
        let embedded_nl = memchr::memchr(b'\n', l.raw.as_bytes()).is_some();
        if !embedded_nl {
            flags |= FLAG_NL_END;
        }
        self.meta.push(flags);
        if embedded_nl {
            put_varint(&mut self.meta, l.raw.len() as u64);
        }
        if let Some(m) = l.message {
            put_varint(&mut self.meta, m.len() as u64);
            self.msgs.extend_from_slice(m.as_bytes());
        }
        if let Some(t) = l.app_time {
            put_varint(
                &mut self.meta,
                zigzag(t.wrapping_sub(self.prev_app_time) as i64),
            );
            self.prev_app_time = t;
        }
        self.text.extend_from_slice(l.raw.as_bytes());
        self.text.push(b'\n');
    }

    /// Empties the block (keeping allocations).
    pub fn clear(&mut self) {
        self.meta.clear();
        self.text.clear();
        self.msgs.clear();
        self.labels.clear();
        self.count = 0;
        self.level_mask = 0;
        self.stream_mask = 0;
        self.generation += 1;
    }

    /// A summary of the block as a header would describe it.
    pub fn summary(&self) -> BlockSummary {
        BlockSummary {
            min_time: self.min_time,
            max_time: self.max_time,
            first_seq: self.first_seq,
            count: self.count,
            level_mask: self.level_mask,
            stream_mask: self.stream_mask,
            raw_len: (self.meta.len() + self.text.len() + self.msgs.len() + 12) as u32,
        }
    }

    /// A decoded view of the block's columns.
    pub fn view(&self) -> BlockView<'_> {
        BlockView {
            labels: &self.labels,
            meta: &self.meta,
            text: &self.text,
            msgs: &self.msgs,
            first_seq: self.first_seq,
            count: self.count,
        }
    }
}

/// The fields of a block header used to skip blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockSummary {
    pub min_time: u64,
    pub max_time: u64,
    pub first_seq: u64,
    pub count: u32,
    pub level_mask: u8,
    pub stream_mask: u8,
    pub raw_len: u32,
}

/// Reusable buffers for compressing blocks.
pub(crate) struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
    meta_compressor: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    z: Vec<u8>,
    z2: Vec<u8>,
    bloom: Vec<u8>,
}

impl Encoder {
    pub fn new() -> io::Result<Self> {
        Ok(Encoder {
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
            raw: Vec::new(),
            z: Vec::new(),
            z2: Vec::new(),
            meta_compressor: zstd::bulk::Compressor::new(META_ZSTD_LEVEL)?,
            bloom: Vec::new(),
        })
    }

    /// Encodes `b` as a complete block (header + compressed payload) into `out`.
    pub fn encode(&mut self, b: &ActiveBlock, out: &mut Vec<u8>) -> io::Result<()> {
        // Frame 1: the column lengths and the metadata.
        self.raw.clear();
        self.raw
            .extend_from_slice(&(b.meta.len() as u32).to_le_bytes());
        self.raw
            .extend_from_slice(&(b.text.len() as u32).to_le_bytes());
        self.raw
            .extend_from_slice(&(b.msgs.len() as u32).to_le_bytes());
        self.raw.extend_from_slice(&b.meta);
        self.z.clear();
        self.z.reserve(
            zstd::zstd_safe::compress_bound(self.raw.len())
                + zstd::zstd_safe::compress_bound(b.text.len() + b.msgs.len()),
        );
        self.meta_compressor
            .compress_to_buffer(&self.raw, &mut self.z)?;
        // Frame 2: text and messages.
        self.raw.clear();
        self.raw.extend_from_slice(&b.text);
        self.raw.extend_from_slice(&b.msgs);
        self.z2.clear();
        self.z2
            .reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        self.compressor
            .compress_to_buffer(&self.raw, &mut self.z2)?;
        self.z.extend_from_slice(&self.z2);
        let raw_len = 12 + b.meta.len() + b.text.len() + b.msgs.len();

        out.clear();
        out.extend_from_slice(BLOCK_MAGIC);
        out.extend_from_slice(&[0; 4]); // crc, filled below
        out.extend_from_slice(&[0; 4]); // header_len, filled below
        out.extend_from_slice(&(self.z.len() as u32).to_le_bytes());
        out.extend_from_slice(&(raw_len as u32).to_le_bytes());
        out.extend_from_slice(&b.count.to_le_bytes());
        out.extend_from_slice(&b.min_time.to_le_bytes());
        out.extend_from_slice(&b.max_time.to_le_bytes());
        out.extend_from_slice(&b.first_seq.to_le_bytes());
        out.push(b.level_mask);
        out.push(b.stream_mask);
        out.extend_from_slice(&(b.labels.len() as u16).to_le_bytes());
        for l in &b.labels {
            out.extend_from_slice(&l.release.unwrap_or(u32::MAX).to_le_bytes());
            out.push(l.stream.code());
            let inst = l.instance.as_deref().unwrap_or("").as_bytes();
            let inst = &inst[..inst.len().min(u16::MAX as usize)];
            out.push(u8::from(l.instance.is_some()) | (u8::from(l.file.is_some()) << 1));
            out.extend_from_slice(&(inst.len() as u16).to_le_bytes());
            out.extend_from_slice(inst);
            if let Some((ino, end)) = l.file {
                out.extend_from_slice(&ino.to_le_bytes());
                out.extend_from_slice(&end.to_le_bytes());
            }
        }
        build_bloom(&b.text, &mut self.bloom);
        if !self.bloom.is_empty() {
            out.extend_from_slice(&(self.bloom.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.bloom);
        }
        let header_len = out.len() as u32;
        out[8..12].copy_from_slice(&header_len.to_le_bytes());
        out.extend_from_slice(&self.z);
        let crc = crc32fast::hash(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

/// A parsed block header.
#[derive(Clone, Debug)]
pub(crate) struct BlockHeader {
    pub crc: u32,
    pub header_len: usize,
    pub payload_len: usize,
    pub raw_len: usize,
    pub summary: BlockSummary,
    pub labels: Vec<Label>,
    /// Trigram bloom filter of the text (empty: none).
    pub bloom: Vec<u8>,
}

impl BlockHeader {
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Lengths from the first 20 bytes of a block: (header_len, payload_len).
fn prefix_lengths(b: &[u8]) -> Result<(usize, usize), String> {
    if b.len() < 20 || &b[0..4] != BLOCK_MAGIC {
        return Err("bad block magic".into());
    }
    let header_len = u32_at(b, 8) as usize;
    let payload_len = u32_at(b, 12) as usize;
    if !(FIXED_HEADER..=MAX_HEADER).contains(&header_len) || payload_len > MAX_PAYLOAD {
        return Err(format!(
            "implausible block lengths {header_len}/{payload_len}"
        ));
    }
    Ok((header_len, payload_len))
}

/// Parses a complete header (`b` holds at least `header_len` bytes).
pub(crate) fn parse_header(b: &[u8]) -> Result<BlockHeader, String> {
    let (header_len, payload_len) = prefix_lengths(b)?;
    if b.len() < header_len {
        return Err("short header".into());
    }
    let h = &b[..header_len];
    let summary = BlockSummary {
        raw_len: u32_at(h, 16),
        count: u32_at(h, 20),
        min_time: u64_at(h, 24),
        max_time: u64_at(h, 32),
        first_seq: u64_at(h, 40),
        level_mask: h[48],
        stream_mask: h[49],
    };
    let n = u16::from_le_bytes([h[50], h[51]]) as usize;
    let mut labels = Vec::with_capacity(n);
    let mut p = FIXED_HEADER;
    for _ in 0..n {
        if p + 8 > h.len() {
            return Err("label table overruns the header".into());
        }
        let release = u32_at(h, p);
        let stream = Stream::from_code(h[p + 4]).ok_or("bad stream code")?;
        let flags = h[p + 5];
        let ilen = u16::from_le_bytes([h[p + 6], h[p + 7]]) as usize;
        p += 8;
        if p + ilen > h.len() {
            return Err("label table overruns the header".into());
        }
        let instance = (flags & 1 != 0)
            .then(|| Arc::<str>::from(String::from_utf8_lossy(&h[p..p + ilen]).as_ref()));
        p += ilen;
        let file = if flags & 2 != 0 {
            if p + 16 > h.len() {
                return Err("label table overruns the header".into());
            }
            let f = (u64_at(h, p), u64_at(h, p + 8));
            p += 16;
            Some(f)
        } else {
            None
        };
        labels.push(Label {
            release: (release != u32::MAX).then_some(release),
            instance,
            stream,
            file,
        });
    }
    // Optional trailing fields (older or smaller blocks have none).
    let mut bloom = Vec::new();
    if p + 4 <= h.len() {
        let n = u32_at(h, p) as usize;
        if p + 4 + n <= h.len() && n.is_power_of_two() {
            bloom.extend_from_slice(&h[p + 4..p + 4 + n]);
        }
    }
    Ok(BlockHeader {
        bloom,
        crc: u32_at(h, 4),
        header_len,
        payload_len,
        raw_len: summary.raw_len as usize,
        summary,
        labels,
    })
}

/// Per byte: 1 for a hex letter, 2 for a decimal digit, 0 otherwise.
const HEX_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            b'0'..=b'9' => 2,
            b'a'..=b'f' | b'A'..=b'F' => 1,
            _ => 0,
        };
        c += 1;
    }
    t
};

/// Whether a trigram is left out of bloom filters: hex digits only, at least one
/// of them decimal (request ids, hashes, numbers, timestamps: present in nearly
/// every block, they would fill the filter and skip nothing).
#[inline]
fn uninformative(hex3: u8, dec3: u8) -> bool {
    hex3 == 7 && dec3 != 0
}

/// The bloom filter of a text column: 2 bits per distinct byte trigram (ASCII
/// lower-cased, [`uninformative`] ones left out), built at about one bit per 8
/// bytes of text and then halved while sparse; empty for small texts.
pub(crate) fn build_bloom(text: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if text.len() < BLOOM_MIN_TEXT {
        return;
    }
    let mut n = (text.len() / 64).next_power_of_two().clamp(64, 4096);
    out.resize(n, 0);
    let mask = (n as u64 * 8) - 1;
    let (mut v, mut hex3, mut dec3) = (0u32, 0u8, 0u8);
    for (i, &c) in text.iter().enumerate() {
        v = ((v << 8) | c.to_ascii_lowercase() as u32) & 0xFF_FFFF;
        let k = HEX_CLASS[c as usize];
        hex3 = ((hex3 << 1) | u8::from(k != 0)) & 7;
        dec3 = ((dec3 << 1) | (k >> 1)) & 7;
        if i >= 2 && !uninformative(hex3, dec3) {
            let (a, b) = bloom_bits(v, mask);
            out[(a >> 3) as usize] |= 1 << (a & 7);
            out[(b >> 3) as usize] |= 1 << (b & 7);
        }
    }
    // Bit positions are taken modulo the size (a power of two), so OR-ing the
    // upper half into the lower one is the filter the smaller size would have built.
    while n > 64 {
        let half = n / 2;
        let ones: u32 = (0..half)
            .map(|j| (out[j] | out[j + half]).count_ones())
            .sum();
        if ones as f64 > MAX_BLOOM_FILL * (half * 8) as f64 {
            break;
        }
        for j in 0..half {
            out[j] |= out[j + half];
        }
        out.truncate(half);
        n = half;
    }
}

/// The two bit positions of trigram `v` in a filter of `mask + 1` bits.
#[inline]
fn bloom_bits(v: u32, mask: u64) -> (u64, u64) {
    let h = (v as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 40) & mask, (h >> 20) & mask)
}

/// The trigrams of a literal that `build_bloom` records, as it hashes them (empty
/// if shorter than 3 or made of uninformative trigrams only).
pub(crate) fn trigrams(lit: &[u8]) -> Vec<u32> {
    let mut out: Vec<u32> = lit
        .windows(3)
        .filter(|w| {
            let k = [w[0], w[1], w[2]].map(|c| HEX_CLASS[c as usize]);
            let hex3 = k.iter().fold(0, |m, &x| (m << 1) | u8::from(x != 0));
            let dec3 = k.iter().fold(0, |m, &x| (m << 1) | (x >> 1));
            !uninformative(hex3, dec3)
        })
        .map(|w| {
            (w[0].to_ascii_lowercase() as u32) << 16
                | (w[1].to_ascii_lowercase() as u32) << 8
                | w[2].to_ascii_lowercase() as u32
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether every trigram may be in the text the filter describes (true without a filter).
pub(crate) fn bloom_may_contain(bloom: &[u8], trigrams: &[u32]) -> bool {
    if bloom.is_empty() {
        return true;
    }
    let mask = (bloom.len() as u64 * 8) - 1;
    trigrams.iter().all(|&v| {
        let (a, b) = bloom_bits(v, mask);
        bloom[(a >> 3) as usize] & (1 << (a & 7)) != 0
            && bloom[(b >> 3) as usize] & (1 << (b & 7)) != 0
    })
}

/// Checks the crc of a whole block (`b` = header + payload).
pub(crate) fn check_crc(h: &BlockHeader, b: &[u8]) -> bool {
    b.len() == h.total_len() && crc32fast::hash(&b[8..]) == h.crc
}

/// Decompresses a block's payload into `raw` and returns a view over it.
pub(crate) fn decode<'a>(
    h: &'a BlockHeader,
    block: &[u8],
    dec: &mut zstd::bulk::Decompressor<'static>,
    raw: &'a mut Vec<u8>,
) -> Result<BlockView<'a>, String> {
    if !check_crc(h, block) {
        return Err("crc mismatch".into());
    }
    raw.clear();
    raw.reserve(h.raw_len);
    dec.decompress_to_buffer(&block[h.header_len..], raw)
        .map_err(|e| format!("zstd: {e}"))?;
    if raw.len() != h.raw_len || raw.len() < 12 {
        return Err("raw length mismatch".into());
    }
    let (ml, tl, sl) = (
        u32_at(raw, 0) as usize,
        u32_at(raw, 4) as usize,
        u32_at(raw, 8) as usize,
    );
    if 12 + ml + tl + sl != raw.len() {
        return Err("column lengths mismatch".into());
    }
    let raw: &'a [u8] = raw;
    Ok(BlockView {
        labels: &h.labels,
        meta: &raw[12..12 + ml],
        text: &raw[12 + ml..12 + ml + tl],
        msgs: &raw[12 + ml + tl..],
        first_seq: h.summary.first_seq,
        count: h.summary.count,
    })
}

/// The columns of a block, stored or active.
pub(crate) struct BlockView<'a> {
    pub labels: &'a [Label],
    pub meta: &'a [u8],
    pub text: &'a [u8],
    pub msgs: &'a [u8],
    pub first_seq: u64,
    pub count: u32,
}

/// One line's metadata, decoded from the meta column.
#[derive(Clone, Debug, Default)]
pub(crate) struct LineMeta {
    pub time: u64,
    pub label: u32,
    /// 0 = none, else `Level::code`.
    pub level: u8,
    /// Range of the raw line in the text column (without its '\n').
    pub raw: Range<usize>,
    pub msg: Option<Range<usize>>,
    pub app_time: Option<u64>,
}

impl BlockView<'_> {
    /// Decodes the meta column into `out` (cleared first), checking every range.
    pub fn metas(&self, out: &mut Vec<LineMeta>) -> Result<(), String> {
        out.clear();
        out.reserve(self.count as usize);
        let m = self.meta;
        let mut p = 0usize;
        let (mut time, mut text_pos, mut msg_pos) = (0u64, 0usize, 0usize);
        let mut prev_app_time = 0u64;
        for _ in 0..self.count {
            let d = unzigzag(get_varint(m, &mut p)?);
            time = time.wrapping_add(d as u64);
            let label = get_varint(m, &mut p)? as u32;
            if label as usize >= self.labels.len() {
                return Err("label index out of range".into());
            }
            let flags = *m.get(p).ok_or("meta truncated")?;
            p += 1;
            let raw = if flags & FLAG_NL_END != 0 {
                let rest = self.text.get(text_pos..).ok_or("text column truncated")?;
                let n = memchr::memchr(b'\n', rest).ok_or("text column truncated")?;
                text_pos..text_pos + n
            } else {
                let rl = get_varint(m, &mut p)? as usize;
                text_pos..text_pos.checked_add(rl).ok_or("overflow")?
            };
            if raw.end >= self.text.len() {
                return Err("text column truncated".into());
            }
            text_pos = raw.end + 1;
            let msg = if flags & FLAG_MSG != 0 {
                let ml = get_varint(m, &mut p)? as usize;
                let r = msg_pos..msg_pos.checked_add(ml).ok_or("overflow")?;
                if r.end > self.msgs.len() {
                    return Err("message column truncated".into());
                }
                msg_pos = r.end;
                Some(r)
            } else {
                None
            };
            let app_time = if flags & FLAG_APP_TIME != 0 {
                let v = get_varint(m, &mut p)?;
                let t = if flags & FLAG_APP_DELTA != 0 {
                    prev_app_time.wrapping_add(unzigzag(v) as u64)
                } else {
                    v
                };
                prev_app_time = t;
                Some(t)
            } else {
                None
            };
            out.push(LineMeta {
                time,
                label,
                level: flags & 7,
                raw,
                msg,
                app_time,
            });
        }
        Ok(())
    }
}

/// What scanning a segment file found.
pub(crate) struct ScannedSegment {
    pub len: u64,
    /// (offset, header) of every valid block, in file order.
    pub blocks: Vec<(u64, BlockHeader)>,
}

/// Reads every block header of a segment, verifying the crc of blocks that
/// start at or after `verify_from` (those not known to be fsynced), and
/// truncates the file at the first block that does not check out.
pub(crate) fn scan_segment(path: &Path, verify_from: u64) -> io::Result<ScannedSegment> {
    let mut f = File::options().read(true).write(true).open(path)?;
    let file_len = f.metadata()?.len();
    let mut magic = [0u8; 8];
    if file_len < 8 || {
        f.read_exact(&mut magic)?;
        &magic != SEGMENT_MAGIC
    } {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a tend log segment",
        ));
    }
    let mut r = io::BufReader::with_capacity(64 * 1024, f);
    r.seek(SeekFrom::Start(8))?;
    let mut pos = 8u64;
    let mut blocks = Vec::new();
    let mut buf = Vec::new();
    let mut bad: Option<String> = None;
    while pos < file_len {
        let remaining = file_len - pos;
        if remaining < FIXED_HEADER as u64 {
            bad = Some("torn block header".into());
            break;
        }
        buf.resize(FIXED_HEADER, 0);
        r.read_exact(&mut buf)?;
        let (hl, pl) = match prefix_lengths(&buf) {
            Ok(x) => x,
            Err(e) => {
                bad = Some(e);
                break;
            }
        };
        if (hl + pl) as u64 > remaining {
            bad = Some("torn block".into());
            break;
        }
        let verify = pos >= verify_from;
        let want = if verify { hl + pl } else { hl };
        buf.resize(want, 0);
        r.read_exact(&mut buf[FIXED_HEADER..])?;
        let h = match parse_header(&buf) {
            Ok(h) => h,
            Err(e) => {
                bad = Some(e);
                break;
            }
        };
        if verify && !check_crc(&h, &buf) {
            bad = Some("crc mismatch".into());
            break;
        }
        if !verify {
            r.seek_relative(pl as i64)?;
        }
        blocks.push((pos, h));
        pos += (hl + pl) as u64;
    }
    if let Some(reason) = bad {
        tracing::warn!(segment = %path.display(), offset = pos, %reason, "tend-logs: truncating a torn or corrupt segment tail");
        let f = r.into_inner();
        f.set_len(pos)?;
        f.sync_all()?;
    }
    Ok(ScannedSegment { len: pos, blocks })
}

/// Reads `len` bytes at `offset` of `f` into `buf`.
pub(crate) fn read_range(f: &File, offset: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.resize(len, 0);
    f.read_exact_at(buf, offset)
}

fn u32_at(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]])
}

fn u64_at(b: &[u8], p: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[p..p + 8]);
    u64::from_le_bytes(a)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], p: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let c = *b.get(*p).ok_or("meta truncated")?;
        *p += 1;
        if shift >= 64 {
            return Err("varint too long".into());
        }
        v |= ((c & 0x7f) as u64) << shift;
        if c < 0x80 {
            return Ok(v);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_of_the_first_format_still_decodes() {
        // Absolute app_time, explicit raw lengths (no flags 32 and 64).
        let text = b"first\nsecond line\n";
        let mut meta = Vec::new();
        put_varint(&mut meta, zigzag(1_000));
        put_varint(&mut meta, 0);
        meta.push(Level::Info.code() | FLAG_APP_TIME);
        put_varint(&mut meta, 5);
        put_varint(&mut meta, 777_000);
        put_varint(&mut meta, zigzag(5));
        put_varint(&mut meta, 0);
        meta.push(FLAG_APP_TIME);
        put_varint(&mut meta, 11);
        put_varint(&mut meta, 778_000);
        let labels = [Label {
            release: Some(1),
            instance: None,
            stream: Stream::Stdout,
            file: None,
        }];
        let v = BlockView {
            labels: &labels,
            meta: &meta,
            text,
            msgs: b"",
            first_seq: 0,
            count: 2,
        };
        let mut metas = Vec::new();
        v.metas(&mut metas).unwrap();
        assert_eq!(&text[metas[1].raw.clone()], b"second line");
        assert_eq!(metas[0].time, 1_000);
        assert_eq!(metas[1].time, 1_005);
        assert_eq!(metas[0].app_time, Some(777_000));
        assert_eq!(metas[1].app_time, Some(778_000));
        assert_eq!(metas[0].level, Level::Info.code());
    }

    #[test]
    fn bloom_leaves_out_ids_and_shrinks_to_what_it_holds() {
        let mut text = Vec::new();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        while text.len() < 256 << 10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.extend_from_slice(format!("req={x:016x} took {}ms\n", x % 977).as_bytes());
        }
        text.extend_from_slice(b"ConnectionResetError while reading\n");
        let mut bloom = Vec::new();
        build_bloom(&text, &mut bloom);
        // Ids and numbers are not in it, so it folded well below its 4 KiB.
        assert!(bloom.len() < 1024, "{}", bloom.len());
        assert!(bloom_may_contain(
            &bloom,
            &trigrams(b"ConnectionResetError")
        ));
        assert!(bloom_may_contain(&bloom, &trigrams(b"took 12ms")));
        assert!(!bloom_may_contain(&bloom, &trigrams(b"OutOfMemoryError")));
        // Of an id only its runs of hex letters count; a number has no trigram
        // (never skipped by the filter).
        assert_eq!(trigrams(b"0123abcd").len(), 2);
        assert!(trigrams(b"48213").is_empty());
        assert_eq!(trigrams(b"deadline").len(), 6, "words of hex letters count");
    }

    #[test]
    fn block_roundtrip() {
        let mut b = ActiveBlock::default();
        let mut hint = None;
        for i in 0..100u64 {
            let raw = format!("line {i}");
            b.push(
                &NewLine {
                    time: 1_000_000 + i * 7,
                    release: Some(3),
                    instance: Some(if i % 2 == 0 { "a" } else { "b" }),
                    stream: Stream::Stdout,
                    file: Some((42 + i % 2, i * 10)),
                    level: (i % 3 == 0).then_some(Level::Warn),
                    raw: &raw,
                    message: (i % 5 == 0).then_some("msg"),
                    app_time: (i % 7 == 0).then_some(1_000_000 - i * 3), // deltas < 0
                },
                10 + i,
                &mut hint,
            );
        }
        let mut enc = Encoder::new().unwrap();
        let mut out = Vec::new();
        enc.encode(&b, &mut out).unwrap();
        let h = parse_header(&out).unwrap();
        assert_eq!(h.total_len(), out.len());
        assert_eq!(h.labels.len(), 2);
        assert_eq!(h.labels[1].file, Some((43, 990)));
        let mut dec = zstd::bulk::Decompressor::new().unwrap();
        let mut raw = Vec::new();
        let v = decode(&h, &out, &mut dec, &mut raw).unwrap();
        let mut metas = Vec::new();
        v.metas(&mut metas).unwrap();
        assert_eq!(metas.len(), 100);
        assert_eq!(&v.text[metas[99].raw.clone()], b"line 99");
        assert_eq!(metas[99].time, 1_000_000 + 99 * 7);
        assert_eq!(metas[3].level, Level::Warn.code());
        assert_eq!(metas[5].msg.clone().map(|r| &v.msgs[r]), Some(&b"msg"[..]));
        assert_eq!(metas[7].app_time, Some(1_000_000 - 21));
        assert_eq!(metas[14].app_time, Some(1_000_000 - 42));
        assert_eq!(metas[0].app_time, Some(1_000_000));
        assert_eq!(metas[1].app_time, None);
        assert_eq!(&v.text[metas[0].raw.clone()], b"line 0");
        // Two frames: metadata, then text and messages.
        let payload = &out[h.header_len..];
        let first = zstd::zstd_safe::find_frame_compressed_size(payload).unwrap();
        assert!(first < payload.len());
        // A flipped byte is caught by the crc.
        let mut bad = out.clone();
        let n = bad.len() - 3;
        bad[n] ^= 1;
        assert!(decode(&h, &bad, &mut dec, &mut raw).is_err());
    }
}
