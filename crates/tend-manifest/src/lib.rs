//! `tend.toml` → a validated, typed [`ServiceSpec`], with diagnostics that
//! point at `file:line:col`.
//!
//! ```
//! let spec = tend_manifest::parse(
//!     "[service]\nname = \"web\"\nowner = \"team\"\n[run]\ncommand = \"./web\"\n",
//!     "tend.toml",
//! )
//! .unwrap();
//! assert_eq!(spec.name().as_str(), "web");
//! assert_eq!(spec.run.instances, 1);
//! ```
//!
//! Invalid manifests yield a [`ManifestError`] holding *every* problem found,
//! each with its span, message and help; [`ManifestError::render`] prints them
//! rustc-style and [`ManifestError::to_json`] gives the API's shape.
//!
//! Invariant: this crate does no I/O except [`load`] and [`resolve_path`]
//! reading the one file they are given.

#![warn(missing_docs)]

mod diagnostic;
mod duration;
mod parse;
mod schema;
mod size;
mod spec;

use std::io;
use std::path::{Path, PathBuf};

pub use diagnostic::{ManifestError, ManifestReport, Problem, ProblemReport};
pub use duration::format_duration;
pub use parse::MAX_MANIFEST_BYTES;
pub use spec::*;

/// The manifest's file name inside a service directory.
pub const MANIFEST_FILE: &str = "tend.toml";

/// Parses and validates a manifest; `file_name` is used in diagnostics only.
pub fn parse(source: &str, file_name: &str) -> Result<ServiceSpec, ManifestError> {
    parse::parse(source, file_name)
}

/// A manifest read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The manifest file that was read.
    pub path: PathBuf,
    /// Its text, as read.
    pub source: String,
    /// The validated spec.
    pub spec: ServiceSpec,
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    /// The path does not exist.
    #[error("{}: no such file or directory", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The path is a directory without a `tend.toml`.
    #[error("no tend.toml in {}", dir.display())]
    #[diagnostic(help("create one (see docs/manifest.md) or give the path to the manifest file"))]
    NoManifest {
        /// The directory given.
        dir: PathBuf,
    },
    /// Reading failed (permissions, not UTF-8, ...).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file was read but is not a valid manifest.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] ManifestError),
}

/// The manifest file for `path`: `path` itself, or `path/tend.toml` for a directory.
pub fn resolve_path(path: &Path) -> Result<PathBuf, LoadError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_dir() {
        return Ok(path.to_path_buf());
    }
    let file = path.join(MANIFEST_FILE);
    match std::fs::metadata(&file) {
        Ok(meta) if meta.is_file() => Ok(file),
        Ok(_) => Err(LoadError::NoManifest {
            dir: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LoadError::NoManifest {
            dir: path.to_path_buf(),
        }),
        Err(e) => Err(io_error(&file, e)),
    }
}

/// Reads and validates the manifest at `path` (a `tend.toml` or a directory holding one).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let path = resolve_path(path)?;
    let source = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
    // "./tend.toml" reads better as "tend.toml" in diagnostics.
    let shown = path.strip_prefix(".").unwrap_or(&path);
    let spec = parse(&source, &shown.display().to_string())?;
    Ok(Loaded { path, source, spec })
}

fn io_error(path: &Path, source: io::Error) -> LoadError {
    if source.kind() == io::ErrorKind::NotFound {
        LoadError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        LoadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
