//! Master keys and the key file.
//!
//! The key file holds one base64 key per line, the current key first. It has
//! more than one line only during a rotation (the new key first, the old one
//! after it), so a crash in the middle of a rotation leaves every data key
//! readable. Lines starting with `#` are comments.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{random, SecretError};

/// The key file's name in the data directory, when `TEND_MASTER_KEY_FILE` is not set.
pub const KEY_FILE: &str = "master.key";

const HEADER: &str =
    "# tend master key: keep this file secret and backed up apart from the data directory.\n\
# Without it, the secrets in state.db cannot be decrypted.\n";

/// A 256-bit master key with a short public id. Wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    bytes: [u8; 32],
    #[zeroize(skip)]
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = [0u8; 32];
        random(&mut bytes)?;
        Ok(Self::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; 32]) -> Self {
        // The id names the key in the store without revealing anything about it.
        let digest = Sha256::new()
            .chain_update(b"tend master key id\0")
            .chain_update(bytes)
            .finalize();
        Self {
            bytes,
            id: hex::encode(&digest[..8]),
        }
    }

    /// The key's id (16 hex digits), stored next to every data key it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// The master keys a server holds: the current one (wraps new data keys) and,
/// during a rotation, older ones (still unwrap).
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl Keyring {
    /// A keyring of `current` followed by `older` keys.
    pub fn new(current: MasterKey, older: Vec<MasterKey>) -> Self {
        let mut keys = vec![current];
        keys.extend(older);
        Self { keys }
    }

    /// The key new data keys are wrapped with.
    pub fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    /// The key with this id, if held.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Every key, current first.
    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            SecretError::KeyFile {
                path: path.to_path_buf(),
                source,
            }
        })?);
        let bad = |reason: String| SecretError::BadKeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let raw = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .map_err(|_| bad(format!("line {} is not base64", i + 1)))?,
            );
            let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
                bad(format!(
                    "line {} holds {} bytes; a key is 32 bytes",
                    i + 1,
                    raw.len()
                ))
            })?;
            keys.push(MasterKey::from_bytes(bytes));
        }
        if keys.is_empty() {
            return Err(bad("it holds no key".into()));
        }
        Ok(Self { keys })
    }

    /// Reads the key file, or creates it with a fresh key (mode 0600) if it
    /// does not exist. Refuses a file that others than its owner may read.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(SecretError::BadKeyFile {
                        path: path.to_path_buf(),
                        reason: format!(
                            "its mode is {:o}; it must be readable by its owner only (chmod 600)",
                            meta.permissions().mode() & 0o777
                        ),
                    });
                }
                Self::load(path)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::new(MasterKey::generate()?, vec![]);
                // create_new: two servers racing on one directory never overwrite a key.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(ring.file_text().as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                sync_dir(path);
                Ok(ring)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Replaces the key file with this keyring: written aside (0600), fsynced,
    /// renamed over the old one, so a crash leaves one file or the other.
    pub fn save(&self, path: &Path) -> Result<(), SecretError> {
        let io = |source| SecretError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(self.file_text().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        sync_dir(path);
        Ok(())
    }

    fn file_text(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::from(HEADER));
        for k in &self.keys {
            s.push_str(&base64::engine::general_purpose::STANDARD.encode(k.bytes));
            s.push('\n');
        }
        s
    }
}

/// Makes a rename or creation in `path`'s directory durable (best effort).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let a = Keyring::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Keyring::load_or_create(&path).unwrap();
        assert_eq!(a.current().id(), b.current().id());
        assert_eq!(a.current().bytes(), b.current().bytes());
    }

    #[test]
    fn refuses_a_readable_or_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        Keyring::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Keyring::load(&path).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        std::fs::write(&path, "# only a comment\n").unwrap();
        assert!(Keyring::load(&path).is_err());
    }

    #[test]
    fn save_keeps_order_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let ring = Keyring::new(
            MasterKey::generate().unwrap(),
            vec![MasterKey::generate().unwrap()],
        );
        ring.save(&path).unwrap();
        let back = Keyring::load(&path).unwrap();
        assert_eq!(back.keys().len(), 2);
        assert_eq!(back.current().id(), ring.current().id());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(format!("{:?}", back.current()).contains(back.current().id()));
    }
}
