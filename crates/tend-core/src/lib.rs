//! Domain types shared by every tend crate.
//!
//! This crate does no I/O: no files, no sockets, no clock. Everything here is a
//! plain value that other crates store, send and validate.

pub mod env;
pub mod incident;
pub mod model;
pub mod names;
pub mod routing;

pub mod time;

pub use names::{NameError, ServiceName, TeamName, TokenName};
pub use time::Timestamp;
