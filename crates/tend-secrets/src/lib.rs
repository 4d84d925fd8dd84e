//! tend's secrets: envelope encryption and output redaction. No store I/O.
//!
//! Each secret value is encrypted with XChaCha20-Poly1305 under a data key of
//! its own (random, 256 bits); the data key is encrypted ("wrapped") under the
//! master key. The store keeps only ciphertexts and wrapped keys; the master
//! key lives in a file outside the database ([`Keyring`]), so a copy of the
//! database alone reveals nothing.
//!
//! Associated data binds each ciphertext to where it belongs — the service,
//! the secret's name and its version ([`SecretRef`]) — and each wrapped data
//! key to its id, so moving a row to another secret, another service or
//! another version makes decryption fail just like a flipped byte does.
//!
//! Rotating the master key re-wraps the data keys only ([`Vault::rotate`]):
//! ciphertexts, and so every release that refers to them, stay as they are.
//!
//! [`Redactor`] replaces secret values in a byte stream with `[redacted:NAME]`
//! in one pass (Aho-Corasick), across chunk boundaries.

mod envelope;
mod keys;
mod redact;
mod vault;

pub use envelope::{open, rewrap, seal, SealedSecret, SecretRef, WrappedKey};
pub use keys::{Keyring, MasterKey, KEY_FILE};
pub use redact::{Redactor, RedactorBuilder};
pub use vault::{Rotation, Vault};
pub use zeroize::Zeroizing;

use std::path::PathBuf;

/// A secret's plaintext; wiped from memory when dropped.
pub type Plaintext = Zeroizing<String>;

/// Errors of the secrets domain. None of them ever carries a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The server has no usable master key: secrets can neither be set nor read.
    #[error("secrets are unavailable: {0}")]
    NoKey(String),
    /// A data key was wrapped by a master key that is not in the keyring.
    #[error("data key {key} was wrapped by master key {master}, which this server does not have")]
    UnknownMasterKey {
        /// The data key's id.
        key: String,
        /// The id of the master key it needs.
        master: String,
    },
    /// Authentication failed: the record was altered, moved, or the key is wrong.
    #[error("{what} cannot be decrypted: it was altered or moved, or the master key is wrong")]
    Tampered {
        /// What failed ("secret `DB_PASSWORD` v2 of checkout", "data key …").
        what: String,
    },
    /// A decrypted value is not UTF-8 (environment values must be text).
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
    /// The key file could not be read or written.
    #[error("master key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file exists but is not a key file.
    #[error("master key file {path}: {reason}")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another rotation of the master key is running.
    #[error("a master key rotation is already running; try again when it is done")]
    RotationInProgress,
    /// The operating system's random source failed.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// Fills `buf` from the operating system's CSPRNG.
fn random(buf: &mut [u8]) -> Result<(), SecretError> {
    getrandom::fill(buf).map_err(|e| SecretError::Random(e.to_string()))
}
