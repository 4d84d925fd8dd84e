//! Envelope encryption: a value under a data key, the data key under the master key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::{random, Keyring, Plaintext, SecretError};

/// Where a secret value belongs; bound to its ciphertext as associated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef<'a> {
    /// The service.
    pub service: &'a str,
    /// The secret's name (the environment variable).
    pub name: &'a str,
    /// The version of this name's value.
    pub version: u32,
}

impl SecretRef<'_> {
    fn aad(&self) -> Vec<u8> {
        // NUL-separated: names cannot contain NUL, so no two refs share an encoding.
        format!(
            "tend secret v1\0{}\0{}\0{}",
            self.service, self.name, self.version
        )
        .into_bytes()
    }

    fn describe(&self) -> String {
        format!(
            "secret `{}` v{} of {}",
            self.name, self.version, self.service
        )
    }
}

/// A data key encrypted under a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Random id (hex); bound to the wrapping as associated data.
    pub id: String,
    /// The id of the master key that wrapped it.
    pub master_key_id: String,
    /// The wrapping's nonce (24 bytes).
    pub nonce: Vec<u8>,
    /// The encrypted key with its tag (48 bytes).
    pub wrapped: Vec<u8>,
}

/// A secret value as stored: ciphertext, nonce and its wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The value's nonce (24 bytes).
    pub nonce: Vec<u8>,
    /// The encrypted value with its tag.
    pub ciphertext: Vec<u8>,
    /// The data key it was encrypted with.
    pub key: WrappedKey,
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    format!("tend data key v1\0{key_id}").into_bytes()
}

fn nonce() -> Result<[u8; 24], SecretError> {
    let mut n = [0u8; 24];
    random(&mut n)?;
    Ok(n)
}

fn wrap(ring: &Keyring, id: String, dk: &[u8; 32]) -> Result<WrappedKey, SecretError> {
    let master = ring.current();
    let n = nonce()?;
    let wrapped = XChaCha20Poly1305::new(master.bytes().into())
        .encrypt(
            XNonce::from_slice(&n),
            Payload {
                msg: dk,
                aad: &wrap_aad(&id),
            },
        )
        .map_err(|_| SecretError::Random("encryption failed".into()))?;
    Ok(WrappedKey {
        id,
        master_key_id: master.id().to_string(),
        nonce: n.to_vec(),
        wrapped,
    })
}

fn unwrap(ring: &Keyring, key: &WrappedKey) -> Result<Zeroizing<[u8; 32]>, SecretError> {
    let master = ring
        .get(&key.master_key_id)
        .ok_or_else(|| SecretError::UnknownMasterKey {
            key: key.id.clone(),
            master: key.master_key_id.clone(),
        })?;
    let tampered = || SecretError::Tampered {
        what: format!("data key {}", key.id),
    };
    if key.nonce.len() != 24 {
        return Err(tampered());
    }
    let raw = Zeroizing::new(
        XChaCha20Poly1305::new(master.bytes().into())
            .decrypt(
                XNonce::from_slice(&key.nonce),
                Payload {
                    msg: &key.wrapped,
                    aad: &wrap_aad(&key.id),
                },
            )
            .map_err(|_| tampered())?,
    );
    let mut dk = Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return Err(tampered());
    }
    dk.copy_from_slice(&raw);
    Ok(dk)
}

/// Encrypts `value` for `at` under a fresh data key wrapped by the current master key.
pub fn seal(ring: &Keyring, at: &SecretRef<'_>, value: &str) -> Result<SealedSecret, SecretError> {
    let mut dk = Zeroizing::new([0u8; 32]);
    random(dk.as_mut())?;
    let mut id = [0u8; 16];
    random(&mut id)?;
    let key = wrap(ring, hex::encode(id), &dk)?;
    let n = nonce()?;
    let ciphertext = XChaCha20Poly1305::new(dk.as_ref().into())
        .encrypt(
            XNonce::from_slice(&n),
            Payload {
                msg: value.as_bytes(),
                aad: &at.aad(),
            },
        )
        .map_err(|_| SecretError::Random("encryption failed".into()))?;
    Ok(SealedSecret {
        nonce: n.to_vec(),
        ciphertext,
        key,
    })
}

/// Decrypts a sealed value, checking that it belongs at `at`.
pub fn open(
    ring: &Keyring,
    at: &SecretRef<'_>,
    sealed: &SealedSecret,
) -> Result<Plaintext, SecretError> {
    let dk = unwrap(ring, &sealed.key).map_err(|e| match e {
        SecretError::Tampered { what } => SecretError::Tampered {
            what: format!("{} ({what})", at.describe()),
        },
        other => other,
    })?;
    let tampered = || SecretError::Tampered {
        what: at.describe(),
    };
    if sealed.nonce.len() != 24 {
        return Err(tampered());
    }
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new(dk.as_ref().into())
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &at.aad(),
                },
            )
            .map_err(|_| tampered())?,
    );
    match std::str::from_utf8(&plain) {
        Ok(s) => Ok(Zeroizing::new(s.to_string())),
        Err(_) => Err(SecretError::NotUtf8(at.describe())),
    }
}

/// The same data key wrapped by the keyring's current master key (rotation).
/// Fails if the key cannot be unwrapped with any key of the ring.
pub fn rewrap(ring: &Keyring, key: &WrappedKey) -> Result<WrappedKey, SecretError> {
    let dk = unwrap(ring, key)?;
    wrap(ring, key.id.clone(), &dk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;

    fn ring() -> Keyring {
        Keyring::new(MasterKey::generate().unwrap(), vec![])
    }

    const AT: SecretRef<'static> = SecretRef {
        service: "checkout",
        name: "DB_PASSWORD",
        version: 1,
    };

    #[test]
    fn round_trip_and_fresh_keys_each_time() {
        let r = ring();
        let a = seal(&r, &AT, "hunter2").unwrap();
        let b = seal(&r, &AT, "hunter2").unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.key.id, b.key.id);
        assert!(!a.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(a.key.master_key_id, r.current().id());
        assert_eq!(open(&r, &AT, &a).unwrap().as_str(), "hunter2");
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let r = ring();
        let s = seal(&r, &AT, "a secret value").unwrap();
        for i in 0..s.ciphertext.len() {
            let mut t = s.clone();
            t.ciphertext[i] ^= 0x01;
            let e = open(&r, &AT, &t).unwrap_err();
            assert!(matches!(e, SecretError::Tampered { .. }), "{e}");
            assert!(!e.to_string().contains("a secret value"));
        }
        for i in 0..s.nonce.len() {
            let mut t = s.clone();
            t.nonce[i] ^= 0x80;
            assert!(open(&r, &AT, &t).is_err());
        }
        for i in 0..s.key.wrapped.len() {
            let mut t = s.clone();
            t.key.wrapped[i] ^= 0x01;
            let e = open(&r, &AT, &t).unwrap_err().to_string();
            assert!(e.contains("DB_PASSWORD") && e.contains("data key"), "{e}");
        }
        let mut t = s.clone();
        t.ciphertext.truncate(3);
        assert!(open(&r, &AT, &t).is_err());
    }

    #[test]
    fn moved_rows_are_detected() {
        let r = ring();
        let s = seal(&r, &AT, "v").unwrap();
        for other in [
            SecretRef {
                service: "billing",
                ..AT
            },
            SecretRef {
                name: "API_KEY",
                ..AT
            },
            SecretRef { version: 2, ..AT },
        ] {
            assert!(matches!(
                open(&r, &other, &s),
                Err(SecretError::Tampered { .. })
            ));
        }
        // A data key moved under another id does not unwrap either.
        let other = seal(&r, &AT, "w").unwrap();
        let mut t = s.clone();
        t.key.id = other.key.id.clone();
        assert!(open(&r, &AT, &t).is_err());
    }

    #[test]
    fn wrong_or_missing_master_key() {
        let s = seal(&ring(), &AT, "v").unwrap();
        assert!(matches!(
            open(&ring(), &AT, &s),
            Err(SecretError::UnknownMasterKey { .. })
        ));
        // Same id, other bytes (a replaced key file): authentication fails.
        let mut t = s.clone();
        let r2 = ring();
        t.key.master_key_id = r2.current().id().to_string();
        assert!(matches!(
            open(&r2, &AT, &t),
            Err(SecretError::Tampered { .. })
        ));
    }

    #[test]
    fn rewrap_moves_a_key_to_the_new_master_and_keeps_the_ciphertext() {
        let old = ring();
        let s = seal(&old, &AT, "kept").unwrap();
        let both = Keyring::new(MasterKey::generate().unwrap(), vec![old.current().clone()]);
        let key = rewrap(&both, &s.key).unwrap();
        assert_eq!(key.id, s.key.id);
        assert_eq!(key.master_key_id, both.current().id());
        let new_only = Keyring::new(both.current().clone(), vec![]);
        let moved = SealedSecret { key, ..s.clone() };
        assert_eq!(open(&new_only, &AT, &moved).unwrap().as_str(), "kept");
        assert!(open(&new_only, &AT, &s).is_err());
    }
}
