//! The server's hold on its master key: loaded at start, swapped by rotation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::{Keyring, MasterKey, Plaintext, SealedSecret, SecretError, SecretRef, WrappedKey};

/// The master key of a running server, or why there is none. Cheap to share.
///
/// A server without a key still runs; every secret operation then fails with
/// [`SecretError::NoKey`] and the reason (missing or unreadable key file).
#[derive(Debug)]
pub struct Vault {
    path: PathBuf,
    ring: RwLock<Result<Arc<Keyring>, String>>,
    rotating: AtomicBool,
}

/// A rotation in progress: the new key is current and in the key file, the
/// old keys still unwrap. Finish it once every data key is re-wrapped and
/// committed; dropped unfinished, the old keys simply stay (nothing is lost).
pub struct Rotation {
    vault: Arc<Vault>,
    /// The new master key's id.
    pub new_key_id: String,
}

impl Drop for Rotation {
    fn drop(&mut self) {
        self.vault.rotating.store(false, Ordering::Release);
    }
}

impl Vault {
    /// Opens the key file at `path`, creating it (mode 0600) when `create` and it
    /// does not exist. A failure does not fail the call: the vault remembers it.
    pub fn load(path: &Path, create: bool) -> Self {
        let loaded = if create {
            Keyring::load_or_create(path)
        } else {
            Keyring::load(path)
        };
        Self {
            path: path.to_path_buf(),
            ring: RwLock::new(loaded.map(Arc::new).map_err(|e| e.to_string())),
            rotating: AtomicBool::new(false),
        }
    }

    /// A vault holding `ring` (tests, tools).
    pub fn with_keyring(path: &Path, ring: Keyring) -> Self {
        Self {
            path: path.to_path_buf(),
            ring: RwLock::new(Ok(Arc::new(ring))),
            rotating: AtomicBool::new(false),
        }
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys, or [`SecretError::NoKey`] with the reason.
    pub fn keyring(&self) -> Result<Arc<Keyring>, SecretError> {
        match &*self.ring.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(r) => Ok(r.clone()),
            Err(why) => Err(SecretError::NoKey(format!(
                "the server has no master key ({why}); set TEND_MASTER_KEY_FILE to the key file and restart"
            ))),
        }
    }

    /// Whether secrets can be used, and if not, why.
    pub fn status(&self) -> Result<String, String> {
        self.keyring()
            .map(|r| r.current().id().to_string())
            .map_err(|e| e.to_string())
    }

    /// Encrypts a value for `at` under the current key.
    pub fn seal(&self, at: &SecretRef<'_>, value: &str) -> Result<SealedSecret, SecretError> {
        let ring = self.keyring()?;
        crate::seal(&ring, at, value)
    }

    /// Decrypts a value stored for `at`.
    pub fn open(
        &self,
        at: &SecretRef<'_>,
        sealed: &SealedSecret,
    ) -> Result<Plaintext, SecretError> {
        let ring = self.keyring()?;
        crate::open(&ring, at, sealed)
    }

    /// Starts a rotation: a new key becomes current and is written to the key
    /// file ahead of the old ones. Only one rotation runs at a time.
    pub fn rotate(self: &Arc<Self>) -> Result<Rotation, SecretError> {
        if self.rotating.swap(true, Ordering::AcqRel) {
            return Err(SecretError::RotationInProgress);
        }
        // From here on, the guard resets the flag however this ends.
        let mut rotation = Rotation {
            vault: self.clone(),
            new_key_id: String::new(),
        };
        let old = self.keyring()?;
        let next = Keyring::new(MasterKey::generate()?, old.keys().to_vec());
        // The file first: if we crash after this, both keys are on disk.
        next.save(&self.path)?;
        let new_key_id = next.current().id().to_string();
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Ok(Arc::new(next));
        rotation.new_key_id = new_key_id;
        Ok(rotation)
    }
}

impl Rotation {
    /// `key` wrapped by the new master key.
    pub fn rewrap(&self, key: &WrappedKey) -> Result<WrappedKey, SecretError> {
        let ring = self.vault.keyring()?;
        crate::rewrap(&ring, key)
    }

    /// Every data key is re-wrapped and committed: drops the old keys from the
    /// key file and from memory.
    pub fn finish(self) -> Result<(), SecretError> {
        let ring = self.vault.keyring()?;
        let only = Keyring::new(ring.current().clone(), vec![]);
        only.save(&self.vault.path)?;
        *self.vault.ring.write().unwrap_or_else(|p| p.into_inner()) = Ok(Arc::new(only));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_a_clear_error_not_a_failure_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::load(&dir.path().join("absent.key"), false);
        let at = SecretRef {
            service: "s",
            name: "K",
            version: 1,
        };
        let e = v.seal(&at, "x").unwrap_err().to_string();
        assert!(
            e.contains("no master key") && e.contains("TEND_MASTER_KEY_FILE"),
            "{e}"
        );
        assert!(v.status().is_err());
    }

    #[test]
    fn rotation_rewraps_and_survives_a_crash_midway() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let v = Arc::new(Vault::load(&path, true));
        let at = SecretRef {
            service: "s",
            name: "K",
            version: 1,
        };
        let sealed = v.seal(&at, "value").unwrap();
        let old_id = v.status().unwrap();
        let rot = v.rotate().unwrap();
        assert!(matches!(v.rotate(), Err(SecretError::RotationInProgress)));
        // Crash here: a server started now reads both keys and opens everything.
        let restarted = Vault::load(&path, false);
        assert_eq!(restarted.open(&at, &sealed).unwrap().as_str(), "value");
        let key = rot.rewrap(&sealed.key).unwrap();
        rot.finish().unwrap();
        let after = Vault::load(&path, false);
        assert_ne!(after.status().unwrap(), old_id);
        let moved = SealedSecret {
            key,
            ..sealed.clone()
        };
        assert_eq!(after.open(&at, &moved).unwrap().as_str(), "value");
        assert!(after.open(&at, &sealed).is_err(), "the old key is gone");
    }
}
