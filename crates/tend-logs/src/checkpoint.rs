//! `<dir>/checkpoint.json`: the capture-file offsets known to be durably ingested,
//! the sources to resume, and the fsynced length of each active segment.
//! Written atomically (temp file, fsync, rename, fsync of the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{io_err, LogError};

const FILE: &str = "checkpoint.json";

/// The persisted state of ingestion.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub version: u32,
    /// When it was written (ms since the epoch): the rate limit credits the downtime.
    pub written_at_ms: u64,
    pub sources: Vec<CkSource>,
    /// Instances whose files were deleted: block offsets of theirs up to `horizon`
    /// (a service seq) describe the deleted files, not a new file of the same name.
    pub tombstones: Vec<CkTombstone>,
    pub segments: Vec<CkSegment>,
}

/// A watched source and the consumed offsets of its files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct CkSource {
    pub service: String,
    pub team: String,
    pub release: u32,
    pub instance: String,
    pub stdout: CkFile,
    pub stderr: CkFile,
    /// `finish` was called: drain, then delete the files.
    #[serde(default)]
    pub finishing: bool,
}

/// A capture file's identity and consumed offset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct CkFile {
    pub path: PathBuf,
    /// Inode of the file the offset belongs to (0: not seen yet).
    pub ino: u64,
    pub offset: u64,
}

/// See [`Checkpoint::tombstones`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct CkTombstone {
    pub service: String,
    pub instance: String,
    pub horizon: u64,
    pub at_ms: u64,
}

/// The fsynced length of a segment: blocks below it need no crc check on open.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct CkSegment {
    pub service: String,
    pub name: String,
    pub len: u64,
}

impl Checkpoint {
    /// Loads the checkpoint; a missing one is empty, an unreadable one is an error
    /// (silently starting over would ingest every capture file twice).
    pub fn load(dir: &Path) -> Result<Checkpoint, LogError> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| LogError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Writes the checkpoint atomically and durably.
    pub fn store(&mut self, dir: &Path) -> Result<(), LogError> {
        self.version = 1;
        self.written_at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let path = dir.join(FILE);
        let tmp = dir.join("checkpoint.json.tmp");
        let json = serde_json::to_vec(self).map_err(|e| io_err(&tmp)(e.into()))?;
        {
            let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&json).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(dir)
    }
}

/// fsyncs a directory, so a rename or a new file in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
