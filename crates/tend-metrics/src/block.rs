//! Immutable on-disk blocks.
//!
//! A block is a directory `block_<mint>_<maxt>` holding:
//! - `chunks`: magic `TCHK`, version byte, then chunks back to back, each
//!   followed by its crc32 (LE). A series' chunks are contiguous.
//! - `index`: magic `TIDX`, version byte, then (varints) the symbol table
//!   (sorted unique strings), the series table in label order (labels as
//!   symbol refs; chunk metas: min t, max t − min t, offset, length), the
//!   postings (name ref, value ref, count, delta-coded series ids), and a
//!   crc32 of everything before it.
//! - `meta.json`: time range and counts.
//!
//! Blocks are written into `tmp_<name>` and renamed into place, so a crash
//! never leaves a half-written block under a real name.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::enc::{put_str, put_uvarint, put_varint, Decoder};
use crate::head::HeadChunk;
use crate::index::{Matcher, Postings};
use crate::labels::{Label, Labels};
use crate::wal::sync_dir;
use crate::TsdbError;

const CHUNKS_MAGIC: &[u8; 4] = b"TCHK";
const INDEX_MAGIC: &[u8; 4] = b"TIDX";
const VERSION: u8 = 1;

/// `meta.json` of a block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BlockMeta {
    pub(crate) version: u32,
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) series: u64,
    pub(crate) samples: u64,
    pub(crate) chunks: u64,
    pub(crate) chunk_bytes: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkMeta {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

pub(crate) struct BlockSeries {
    pub(crate) labels: Labels,
    pub(crate) chunks: Vec<ChunkMeta>,
}

/// A loaded block: index in memory, chunks read on demand.
pub(crate) struct Block {
    pub(crate) dir: PathBuf,
    pub(crate) meta: BlockMeta,
    pub(crate) series: Vec<BlockSeries>,
    pub(crate) postings: Postings,
    chunks: File,
    pub(crate) size_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TsdbError + '_ {
    move |source| TsdbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, detail: &str) -> TsdbError {
    TsdbError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// Name of a block directory.
pub(crate) fn block_name(min_t: i64, max_t: i64) -> String {
    format!("block_{min_t}_{max_t}")
}

/// Writes a block from sorted `(labels, chunks)` into `blocks_dir` and loads it.
pub(crate) fn write(
    blocks_dir: &Path,
    series: &[(Labels, Vec<HeadChunk>)],
) -> Result<Option<Block>, TsdbError> {
    if series.is_empty() {
        return Ok(None);
    }
    let min_t = series
        .iter()
        .filter_map(|s| s.1.first())
        .map(|c| c.min_t)
        .min()
        .unwrap_or(0);
    let max_t = series
        .iter()
        .filter_map(|s| s.1.last())
        .map(|c| c.max_t)
        .max()
        .unwrap_or(0);
    let name = block_name(min_t, max_t);
    let tmp = blocks_dir.join(format!("tmp_{name}"));
    let dst = blocks_dir.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;

    // Chunks file.
    let mut cbuf: Vec<u8> = Vec::with_capacity(1 << 20);
    cbuf.extend_from_slice(CHUNKS_MAGIC);
    cbuf.push(VERSION);
    let mut metas: Vec<Vec<ChunkMeta>> = Vec::with_capacity(series.len());
    let (mut samples, mut nchunks, mut chunk_bytes) = (0u64, 0u64, 0u64);
    for (_, chunks) in series {
        let mut m = Vec::with_capacity(chunks.len());
        for c in chunks {
            m.push(ChunkMeta {
                min_t: c.min_t,
                max_t: c.max_t,
                offset: cbuf.len() as u64,
                len: c.bytes.len() as u32,
            });
            cbuf.extend_from_slice(&c.bytes);
            cbuf.extend_from_slice(&crc32fast::hash(&c.bytes).to_le_bytes());
            samples += u64::from(c.num);
            nchunks += 1;
            chunk_bytes += c.bytes.len() as u64;
        }
        metas.push(m);
    }
    write_file(&tmp.join("chunks"), &cbuf)?;
    drop(cbuf);

    // Symbols.
    let mut syms: BTreeSet<&str> = BTreeSet::new();
    for (l, _) in series {
        for (n, v) in l.iter() {
            syms.insert(n);
            syms.insert(v);
        }
    }
    let syms: Vec<&str> = syms.into_iter().collect();
    let sym = |s: &str| syms.binary_search(&s).unwrap_or(0) as u64;

    let mut ibuf: Vec<u8> = Vec::with_capacity(1 << 16);
    ibuf.extend_from_slice(INDEX_MAGIC);
    ibuf.push(VERSION);
    put_uvarint(&mut ibuf, syms.len() as u64);
    for s in &syms {
        put_str(&mut ibuf, s);
    }
    put_uvarint(&mut ibuf, series.len() as u64);
    let mut postings = Postings::default();
    for (i, ((l, _), m)) in series.iter().zip(metas.iter()).enumerate() {
        let _ = postings.add(i as u32, l);
        put_uvarint(&mut ibuf, l.len() as u64);
        for (n, v) in l.iter() {
            put_uvarint(&mut ibuf, sym(n));
            put_uvarint(&mut ibuf, sym(v));
        }
        put_uvarint(&mut ibuf, m.len() as u64);
        for c in m {
            put_varint(&mut ibuf, c.min_t);
            put_uvarint(&mut ibuf, (c.max_t - c.min_t) as u64);
            put_uvarint(&mut ibuf, c.offset);
            put_uvarint(&mut ibuf, u64::from(c.len));
        }
    }
    let mut lists: Vec<(&str, &str, &[u32])> = postings.iter().collect();
    lists.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    put_uvarint(&mut ibuf, lists.len() as u64);
    for (n, v, ids) in lists {
        put_uvarint(&mut ibuf, sym(n));
        put_uvarint(&mut ibuf, sym(v));
        put_uvarint(&mut ibuf, ids.len() as u64);
        let mut prev = 0u32;
        for &id in ids {
            put_uvarint(&mut ibuf, u64::from(id - prev));
            prev = id;
        }
    }
    let crc = crc32fast::hash(&ibuf);
    ibuf.extend_from_slice(&crc.to_le_bytes());
    write_file(&tmp.join("index"), &ibuf)?;

    let meta = BlockMeta {
        version: 1,
        min_t,
        max_t,
        series: series.len() as u64,
        samples,
        chunks: nchunks,
        chunk_bytes,
    };
    let mj = serde_json::to_vec_pretty(&meta).map_err(|e| corrupt(&tmp, &e.to_string()))?;
    write_file(&tmp.join("meta.json"), &mj)?;
    sync_dir(&tmp)?;
    if dst.exists() {
        fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
    }
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(blocks_dir)?;
    Block::open(&dst).map(Some)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), TsdbError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

impl Block {
    /// Loads a block's meta and index; chunks stay on disk.
    pub(crate) fn open(dir: &Path) -> Result<Block, TsdbError> {
        let mpath = dir.join("meta.json");
        let meta: BlockMeta = serde_json::from_slice(&fs::read(&mpath).map_err(io_err(&mpath))?)
            .map_err(|e| corrupt(&mpath, &e.to_string()))?;
        let ipath = dir.join("index");
        let ibuf = fs::read(&ipath).map_err(io_err(&ipath))?;
        let (series, postings) =
            parse_index(&ibuf).ok_or_else(|| corrupt(&ipath, "malformed index"))?;
        let cpath = dir.join("chunks");
        let chunks = File::open(&cpath).map_err(io_err(&cpath))?;
        let clen = chunks.metadata().map_err(io_err(&cpath))?.len();
        let mut magic = [0u8; 5];
        chunks
            .read_exact_at(&mut magic, 0)
            .map_err(io_err(&cpath))?;
        if &magic[..4] != CHUNKS_MAGIC || magic[4] != VERSION {
            return Err(corrupt(&cpath, "bad magic"));
        }
        let size_bytes =
            clen + ibuf.len() as u64 + fs::metadata(&mpath).map(|m| m.len()).unwrap_or(0);
        Ok(Block {
            dir: dir.to_path_buf(),
            meta,
            series,
            postings,
            chunks,
            size_bytes,
        })
    }

    /// Reads the chunks of series `id` overlapping `[mint, maxt]`.
    pub(crate) fn read_chunks(
        &self,
        id: u32,
        mint: i64,
        maxt: i64,
        out: &mut Vec<Arc<[u8]>>,
    ) -> Result<(), TsdbError> {
        let s = &self.series[id as usize];
        let sel: Vec<&ChunkMeta> = s
            .chunks
            .iter()
            .filter(|c| c.max_t >= mint && c.min_t <= maxt)
            .collect();
        let (Some(first), Some(last)) = (sel.first(), sel.last()) else {
            return Ok(());
        };
        // One read for the contiguous run of this series' chunks.
        let start = first.offset;
        let end = last.offset + u64::from(last.len) + 4;
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        let cpath = self.dir.join("chunks");
        self.chunks
            .read_exact_at(&mut buf, start)
            .map_err(io_err(&cpath))?;
        for c in sel {
            let o = c.offset.saturating_sub(start) as usize;
            let n = c.len as usize;
            let (Some(body), Some(crc)) = (buf.get(o..o + n), buf.get(o + n..o + n + 4)) else {
                return Err(corrupt(&cpath, "chunk reference out of range"));
            };
            if crc32fast::hash(body).to_le_bytes() != crc {
                return Err(corrupt(
                    &cpath,
                    &format!("chunk crc mismatch at offset {}", c.offset),
                ));
            }
            out.push(Arc::from(body));
        }
        Ok(())
    }

    /// Ids of series matching `matchers`.
    pub(crate) fn resolve(&self, matchers: &[Matcher]) -> Vec<u32> {
        self.postings.resolve(matchers)
    }
}

fn parse_index(buf: &[u8]) -> Option<(Vec<BlockSeries>, Postings)> {
    if buf.len() < 9 || &buf[..4] != INDEX_MAGIC || buf[4] != VERSION {
        return None;
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let mut d = Decoder::new(&body[5..]);
    let nsyms = usize::try_from(d.uvarint()?).ok()?;
    let mut syms: Vec<Arc<str>> = Vec::with_capacity(nsyms.min(1 << 20));
    for _ in 0..nsyms {
        syms.push(d.str()?.into());
    }
    let sym = |i: u64| syms.get(i as usize).cloned();
    let nseries = usize::try_from(d.uvarint()?).ok()?;
    let mut series = Vec::with_capacity(nseries.min(1 << 20));
    for _ in 0..nseries {
        let nl = d.uvarint()?;
        let mut pairs = Vec::with_capacity(nl.min(64) as usize);
        for _ in 0..nl {
            let name = sym(d.uvarint()?)?;
            let value = sym(d.uvarint()?)?;
            pairs.push(Label { name, value });
        }
        let nc = d.uvarint()?;
        let mut chunks = Vec::with_capacity(nc.min(1 << 16) as usize);
        for _ in 0..nc {
            let min_t = d.varint()?;
            let max_t = min_t.checked_add(i64::try_from(d.uvarint()?).ok()?)?;
            let offset = d.uvarint()?;
            let len = u32::try_from(d.uvarint()?).ok()?;
            chunks.push(ChunkMeta {
                min_t,
                max_t,
                offset,
                len,
            });
        }
        series.push(BlockSeries {
            labels: Labels::from_sorted(pairs),
            chunks,
        });
    }
    let mut postings = Postings::default();
    let nlists = d.uvarint()?;
    for _ in 0..nlists {
        let name = sym(d.uvarint()?)?;
        let value = sym(d.uvarint()?)?;
        let n = d.uvarint()?;
        let mut ids = Vec::with_capacity(n.min(1 << 20) as usize);
        let mut prev = 0u32;
        for _ in 0..n {
            prev = prev.checked_add(u32::try_from(d.uvarint()?).ok()?)?;
            if prev as usize >= nseries {
                return None;
            }
            ids.push(prev);
        }
        postings.insert_list(&name, &value, ids);
    }
    postings.set_all((0..nseries as u32).collect());
    Some((series, postings))
}
