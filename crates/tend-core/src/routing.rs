//! The routing table: which instances of which service are ready to take
//! traffic. The deploy controller publishes it; the router reads it.
//!
//! Readers get the whole table as one `Arc` from a `watch` channel, so a table
//! update is atomic and never blocks a reader.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A ready instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Instance id.
    pub instance: String,
    /// Release it runs.
    pub release: u32,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// How to reach one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `[http] host`, if any (besides `<service>.localhost`).
    pub host: Option<String>,
    /// `[http] paths`.
    pub paths: Vec<String>,
    /// Ready instances, in a stable order.
    pub endpoints: Vec<Endpoint>,
}

/// Every service's route, by service name.
pub type RoutingTable = Arc<BTreeMap<String, Route>>;
