//! Packing a service directory for upload, and unpacking it on the server.
//!
//! The archive is a gzipped tar of the directory as git would see it: files
//! ignored by `.gitignore`, `.ignore` or `.tendignore` are left out, and so is
//! `.git` itself. Unpacking refuses absolute paths and `..` (the tar crate's
//! `unpack_in`) and stops at a size limit, so an upload cannot escape its
//! directory or fill the disk.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest archive accepted, packed or unpacked, by default: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Why packing or unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Walking the directory failed.
    #[error("cannot list {}: {source}", path.display())]
    Walk {
        /// The cause.
        source: ignore::Error,
        /// The directory being packed.
        path: PathBuf,
    },
    /// The content is over the size limit.
    #[error("the service directory is larger than {limit_mib} MiB (after .gitignore); add what is not needed at run time to .tendignore")]
    TooLarge {
        /// The limit.
        limit_mib: u64,
    },
    /// The archive is not a valid gzipped tar, or holds a bad path.
    #[error("invalid archive: {0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Packs `dir` into a gzipped tar, honouring ignore files, within `max_bytes`.
pub fn pack(dir: &Path, max_bytes: u64) -> Result<Vec<u8>, PackError> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    builder.follow_symlinks(false);
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .add_custom_ignore_filename(".tendignore")
        .filter_entry(|e| e.file_name() != ".git")
        .sort_by_file_name(|a, b| a.cmp(b))
        .build();
    let mut total: u64 = 0;
    for entry in walker {
        let entry = entry.map_err(|source| PackError::Walk {
            source,
            path: dir.to_path_buf(),
        })?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(dir) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
        if meta.is_file() {
            total += meta.len();
            if total > max_bytes {
                return Err(PackError::TooLarge {
                    limit_mib: max_bytes / (1024 * 1024),
                });
            }
        }
        builder.append_path_with_name(path, rel).map_err(io(path))?;
    }
    let gz = builder.into_inner().map_err(io(dir))?;
    gz.finish().map_err(io(dir))
}

/// Unpacks a gzipped tar made by [`pack`] into `dest`, within `max_bytes`.
pub fn unpack(archive: &[u8], dest: &Path, max_bytes: u64) -> Result<(), PackError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let decoder = flate2::read::GzDecoder::new(archive);
    let mut limited = LimitedReader {
        inner: decoder,
        left: max_bytes,
    };
    let mut ar = tar::Archive::new(&mut limited);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    let entries = ar
        .entries()
        .map_err(|e| PackError::Invalid(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid_or_too_large(e, max_bytes))?;
        let ok = entry
            .unpack_in(dest)
            .map_err(|e| invalid_or_too_large(e, max_bytes))?;
        if !ok {
            return Err(PackError::Invalid(format!(
                "entry {:?} points outside the archive's directory",
                entry.path().map(|p| p.into_owned()).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Reads one small file (such as `tend.toml`) at the top of an archive made by
/// [`pack`], without unpacking the rest. `Ok(None)` if it is not there.
pub fn read_file(archive: &[u8], name: &str, max_bytes: u64) -> Result<Option<String>, PackError> {
    let decoder = flate2::read::GzDecoder::new(archive);
    let mut ar = tar::Archive::new(decoder);
    let entries = ar
        .entries()
        .map_err(|e| PackError::Invalid(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| PackError::Invalid(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| PackError::Invalid(e.to_string()))?;
        if path.as_os_str() != name && path != Path::new(".").join(name) {
            continue;
        }
        if entry.header().size().unwrap_or(u64::MAX) > max_bytes {
            return Err(PackError::Invalid(format!(
                "{name} is larger than {max_bytes} bytes"
            )));
        }
        let mut text = String::new();
        entry
            .take(max_bytes)
            .read_to_string(&mut text)
            .map_err(|e| PackError::Invalid(format!("{name}: {e}")))?;
        return Ok(Some(text));
    }
    Ok(None)
}

fn invalid_or_too_large(e: std::io::Error, max_bytes: u64) -> PackError {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        PackError::TooLarge {
            limit_mib: max_bytes / (1024 * 1024),
        }
    } else {
        PackError::Invalid(e.to_string())
    }
}

/// Stops reading after `left` bytes, so a gzip bomb cannot fill the disk.
struct LimitedReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One more byte available means the limit was crossed.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    "archive over the size limit",
                )),
            };
        }
        let cap = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PackError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_what_git_would_see_and_unpacks_it() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::write(s.join("tend.toml"), "x").unwrap();
        std::fs::write(s.join(".gitignore"), "target/\n*.log\n").unwrap();
        std::fs::write(s.join(".tendignore"), "secret.txt\n").unwrap();
        std::fs::create_dir_all(s.join("target")).unwrap();
        std::fs::write(s.join("target/big"), "x").unwrap();
        std::fs::write(s.join("app.log"), "x").unwrap();
        std::fs::write(s.join("secret.txt"), "x").unwrap();
        std::fs::create_dir_all(s.join(".git")).unwrap();
        std::fs::write(s.join(".git/HEAD"), "x").unwrap();
        std::fs::create_dir_all(s.join("src")).unwrap();
        std::fs::write(s.join("src/main.sh"), "echo hi").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                s.join("src/main.sh"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        let bytes = pack(s, DEFAULT_MAX_BYTES).unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack(&bytes, dst.path(), DEFAULT_MAX_BYTES).unwrap();
        let d = dst.path();
        assert!(d.join("tend.toml").is_file());
        assert!(d.join("src/main.sh").is_file());
        assert!(!d.join("target").exists());
        assert!(!d.join("app.log").exists());
        assert!(!d.join("secret.txt").exists());
        assert!(!d.join(".git").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.join("src/main.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "executable bit kept");
        }
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a"), vec![0u8; 10_000]).unwrap();
        assert!(matches!(
            pack(src.path(), 1_000),
            Err(PackError::TooLarge { .. })
        ));
        let bytes = pack(src.path(), DEFAULT_MAX_BYTES).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = unpack(&bytes, dst.path(), 5_000).unwrap_err();
        assert!(
            matches!(err, PackError::TooLarge { .. } | PackError::Invalid(_)),
            "{err}"
        );
        assert!(matches!(
            unpack(b"not a tarball", dst.path(), 5_000),
            Err(PackError::Invalid(_))
        ));
        assert_eq!(
            read_file(&bytes, "a", 20_000).unwrap().map(|s| s.len()),
            Some(10_000)
        );
        assert_eq!(read_file(&bytes, "tend.toml", 20_000).unwrap(), None);
    }
}
