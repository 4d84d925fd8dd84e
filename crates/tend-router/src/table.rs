//! The lookup structure the request path reads, and how it is rebuilt from a
//! [`RoutingTable`].
//!
//! A [`Lookup`] is immutable: every table change builds a new one off the
//! request path and publishes it with one atomic pointer swap ([`ArcSwap`]),
//! so readers never lock and never see half an update. The per-instance
//! [`Stats`] are the only shared mutable parts; they live in a [`Registry`]
//! that outlives lookups, so counters survive table changes and a removed
//! instance stays visible until its last request is done.

use std::collections::{hash_map::Entry, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tend_core::routing::RoutingTable;

use crate::fxhash::FxBuildHasher;
use crate::metrics::Stats;

/// Longest host we look up: a DNS name is at most 253 bytes. Longer Host
/// headers cannot match and are answered 404 without further work.
pub(crate) const MAX_HOST: usize = 255;

/// A removed instance whose counters nobody scraped is forgotten after this,
/// so a router that is never scraped does not grow with every deploy.
const RETIRED_TTL: Duration = Duration::from_secs(300);

/// Everything the request path needs to route a request, for one version of
/// the routing table.
pub(crate) struct Lookup {
    /// Lower-case host without port → routes on that host.
    hosts: HashMap<Box<str>, Box<[PathRoute]>, FxBuildHasher>,
}

/// One path prefix on a host.
struct PathRoute {
    /// Normalised: starts with `/`, no trailing `/` except for the root.
    prefix: Box<str>,
    service: Arc<Service>,
}

/// A service as the request path sees it.
pub(crate) struct Service {
    pub(crate) name: Box<str>,
    /// Ready instances; empty means 503.
    pub(crate) backends: Box<[Backend]>,
    /// Counters of requests the router answers itself for this service.
    pub(crate) local: Arc<Stats>,
}

/// One ready instance.
pub(crate) struct Backend {
    /// Where the instance listens.
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<Stats>,
}

/// Why a request matched no service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No service is reached at this host.
    Host,
    /// The host is known but none of its path prefixes matches.
    Path,
}

impl Lookup {
    /// The service for a normalised `host` (see [`normalize_host`]) and a
    /// request path. Longest prefix wins; routes are kept sorted for that.
    pub(crate) fn find(&self, host: &str, path: &str) -> Result<&Arc<Service>, Miss> {
        let routes = self.hosts.get(host).ok_or(Miss::Host)?;
        routes
            .iter()
            .find(|r| prefix_matches(&r.prefix, path))
            .map(|r| &r.service)
            .ok_or(Miss::Path)
    }
}

/// Segment-aware prefix match: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.as_bytes().get(prefix.len()) {
        None => path == prefix,
        Some(b'/') => path.starts_with(prefix),
        Some(_) => false,
    }
}

/// Lower-cases `raw` (a Host header or URI authority) into `buf`, without the
/// port and a trailing dot, so lookups need no allocation. `None` when the
/// host is too long or not ASCII, which no route can match.
pub(crate) fn normalize_host<'b>(raw: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let host = if raw.first() == Some(&b'[') {
        // IPv6 literal: the port, if any, follows the closing bracket.
        let end = raw.iter().position(|&b| b == b']')?;
        &raw[..=end]
    } else {
        match raw.iter().position(|&b| b == b':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST || !host.is_ascii() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

fn normalize_host_owned(raw: &str) -> Option<Box<str>> {
    let mut buf = [0; MAX_HOST];
    normalize_host(raw.trim().as_bytes(), &mut buf).map(Box::from)
}

fn normalize_prefix(raw: &str) -> Box<str> {
    let raw = raw.trim();
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else if trimmed.starts_with('/') {
        trimmed.into()
    } else {
        format!("/{trimmed}").into()
    }
}

/// A known instance and what the registry remembers about it.
struct Tracked {
    stats: Arc<Stats>,
    /// When it left the table; `None` while routable.
    retired_at: Option<Instant>,
    /// A scrape already saw it retired with nothing in flight: the next one
    /// can forget it, its final counts have been reported.
    reported_drained: bool,
}

/// Counters that outlive any one lookup structure.
struct Registry {
    instances: HashMap<String, Tracked>,
    /// Per service: requests the router answered itself (instance `-`).
    services: HashMap<String, Arc<Stats>>,
}

/// The published lookup structure and the registry behind it.
pub(crate) struct Tables {
    current: ArcSwap<Lookup>,
    registry: Mutex<Registry>,
    /// Requests that matched no service (service and instance `-`); outside
    /// the registry so a flood of unknown hosts takes no lock.
    pub(crate) unknown: Arc<Stats>,
}

impl Tables {
    pub(crate) fn new(table: &RoutingTable) -> Tables {
        let tables = Tables {
            current: ArcSwap::from_pointee(Lookup {
                hosts: HashMap::default(),
            }),
            registry: Mutex::new(Registry {
                instances: HashMap::new(),
                services: HashMap::new(),
            }),
            unknown: Stats::new("-", "-"),
        };
        tables.apply(table);
        tables
    }

    /// The current lookup structure. Cheap and lock-free; don't hold the
    /// guard across an `.await` (it pins a slot of arc-swap's fast path).
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Lookup>> {
        self.current.load()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // The registry stays consistent even if a holder panicked: every
        // mutation is a single insert/remove.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds and publishes the lookup structure for `table`.
    pub(crate) fn apply(&self, table: &RoutingTable) {
        let mut reg = self.registry();
        let reg = &mut *reg;
        let mut hosts: HashMap<Box<str>, Vec<PathRoute>> = HashMap::new();
        let mut explicit: Vec<(Box<str>, Box<str>, Arc<Service>)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();

        for (name, route) in table.iter() {
            let local = reg
                .services
                .entry(name.clone())
                .or_insert_with(|| Stats::new(name, "-"))
                .clone();
            let mut backends = Vec::with_capacity(route.endpoints.len());
            for ep in &route.endpoints {
                if !seen.insert(ep.instance.as_str()) {
                    tracing::warn!(instance = %ep.instance, "instance listed twice in the routing table; using its first entry");
                    continue;
                }
                let tracked = match reg.instances.entry(ep.instance.clone()) {
                    Entry::Occupied(mut e) => {
                        if *e.get().stats.service != **name {
                            // The id now belongs to another service: start
                            // fresh rather than mixing two services' counts.
                            e.insert(fresh(name, &ep.instance));
                        }
                        e.into_mut()
                    }
                    Entry::Vacant(e) => e.insert(fresh(name, &ep.instance)),
                };
                tracked.retired_at = None;
                tracked.reported_drained = false;
                // Routable before the swap: `drained` must never see a
                // routed instance as gone.
                tracked.stats.set_routable(true);
                backends.push(Backend {
                    addr: ep.addr,
                    stats: tracked.stats.clone(),
                });
            }
            let service = Arc::new(Service {
                name: name.as_str().into(),
                backends: backends.into(),
                local,
            });
            if let Some(own) = normalize_host_owned(&format!("{name}.localhost")) {
                hosts.insert(
                    own,
                    vec![PathRoute {
                        prefix: "/".into(),
                        service: service.clone(),
                    }],
                );
            }
            if let Some(host) = route.host.as_deref() {
                let Some(host) = normalize_host_owned(host) else {
                    tracing::warn!(service = %name, host, "unusable [http] host");
                    continue;
                };
                if route.paths.is_empty() {
                    explicit.push((host.clone(), "/".into(), service.clone()));
                }
                for path in &route.paths {
                    explicit.push((host.clone(), normalize_prefix(path), service.clone()));
                }
            }
        }

        // `<service>.localhost` belongs to that service alone, whatever other
        // manifests claim: another team must not be able to take over a
        // path of someone else's service by naming its host.
        let own_hosts: HashSet<Box<str>> = hosts.keys().cloned().collect();
        for (host, prefix, service) in explicit {
            if own_hosts.contains(&host) {
                let owner = hosts.get(&host).and_then(|r| r.first()).map(|r| &r.service);
                if !owner.is_some_and(|o| Arc::ptr_eq(o, &service)) {
                    tracing::warn!(service = %service.name, %host, "host is another service's own name; ignored");
                }
                continue;
            }
            hosts
                .entry(host)
                .or_default()
                .push(PathRoute { prefix, service });
        }
        let hosts = hosts
            .into_iter()
            .map(|(host, mut routes)| {
                // Longest prefix first; the sort is stable, so among equal
                // prefixes the service first in name order wins, every time.
                routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
                for pair in routes.windows(2) {
                    if pair[0].prefix == pair[1].prefix {
                        tracing::warn!(%host, prefix = %pair[0].prefix, winner = %pair[0].service.name, loser = %pair[1].service.name, "two services claim the same host and path");
                    }
                }
                (host, routes.into_boxed_slice())
            })
            .collect();

        self.current.store(Arc::new(Lookup { hosts }));

        // After the swap: an instance is marked gone only once no new
        // request can pick it.
        let now = Instant::now();
        reg.instances.retain(|id, t| {
            if seen.contains(id.as_str()) {
                return true;
            }
            if t.retired_at.is_none() {
                t.retired_at = Some(now);
                t.stats.set_routable(false);
            }
            let expired = t.retired_at.is_some_and(|at| now - at >= RETIRED_TTL);
            !(expired && t.stats.in_flight() == 0)
        });
        reg.services.retain(|name, _| table.contains_key(name));
    }

    /// The counters of `instance`, routable or still draining.
    pub(crate) fn instance(&self, instance: &str) -> Option<Arc<Stats>> {
        self.registry()
            .instances
            .get(instance)
            .map(|t| t.stats.clone())
    }

    /// Every counter set to report, sorted by (service, instance). Retired
    /// instances are reported one last time after they drained, then
    /// forgotten.
    pub(crate) fn report(&self) -> Vec<Arc<Stats>> {
        let mut reg = self.registry();
        let reg = &mut *reg;
        let mut out = Vec::with_capacity(1 + reg.services.len() + reg.instances.len());
        out.push(self.unknown.clone());
        out.extend(reg.services.values().cloned());
        reg.instances.retain(|_, t| {
            if t.retired_at.is_some() && t.stats.in_flight() == 0 {
                if t.reported_drained {
                    return false;
                }
                t.reported_drained = true;
            }
            out.push(t.stats.clone());
            true
        });
        out.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
        out
    }
}

fn fresh(service: &str, instance: &str) -> Tracked {
    Tracked {
        stats: Stats::new(service, instance),
        retired_at: None,
        reported_drained: false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tend_core::routing::{Endpoint, Route};

    use super::*;

    fn route(host: Option<&str>, paths: &[&str], instances: &[&str]) -> Route {
        Route {
            host: host.map(str::to_string),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            endpoints: instances
                .iter()
                .enumerate()
                .map(|(i, id)| Endpoint {
                    instance: id.to_string(),
                    release: 1,
                    addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
                })
                .collect(),
        }
    }

    fn find<'a>(lookup: &'a Lookup, host: &str, path: &str) -> Result<&'a str, Miss> {
        let mut buf = [0; MAX_HOST];
        let host = normalize_host(host.as_bytes(), &mut buf).ok_or(Miss::Host)?;
        lookup.find(host, path).map(|s| &*s.name)
    }

    #[test]
    fn hosts_are_normalised() {
        let mut buf = [0; MAX_HOST];
        assert_eq!(
            normalize_host(b"Web.LocalHost:7080", &mut buf),
            Some("web.localhost")
        );
        assert_eq!(
            normalize_host(b"web.localhost.", &mut buf),
            Some("web.localhost")
        );
        assert_eq!(normalize_host(b"[::1]:80", &mut buf), Some("[::1]"));
        assert_eq!(normalize_host(b"", &mut buf), None);
        assert_eq!(normalize_host(&[b'a'; 300], &mut buf), None);
    }

    #[test]
    fn routes_by_own_host_then_longest_prefix() {
        let mut t = BTreeMap::new();
        t.insert("web".into(), route(Some("shop.example"), &[], &["web-1"]));
        t.insert(
            "api".into(),
            route(Some("Shop.Example"), &["/api/", "/v2"], &["api-1"]),
        );
        t.insert(
            "admin".into(),
            route(Some("shop.example"), &["/api/admin"], &[]),
        );
        // Tries to take over a path of `web`'s own host: ignored.
        t.insert(
            "thief".into(),
            route(Some("web.localhost"), &["/login"], &["t-1"]),
        );
        let tables = Tables::new(&Arc::new(t));
        let l = tables.load();
        assert_eq!(find(&l, "web.localhost", "/login"), Ok("web"));
        assert_eq!(find(&l, "API.localhost:7080", "/anything"), Ok("api"));
        assert_eq!(find(&l, "shop.example", "/"), Ok("web"));
        assert_eq!(find(&l, "shop.example", "/apix"), Ok("web"));
        assert_eq!(find(&l, "shop.example", "/api"), Ok("api"));
        assert_eq!(find(&l, "shop.example", "/api/admin/users"), Ok("admin"));
        assert_eq!(find(&l, "shop.example", "/v2/x"), Ok("api"));
        assert_eq!(find(&l, "nope.localhost", "/"), Err(Miss::Host));
    }

    #[test]
    fn path_miss_on_known_host() {
        let mut t = BTreeMap::new();
        t.insert("api".into(), route(Some("x.example"), &["/api"], &["a-1"]));
        let tables = Tables::new(&Arc::new(t));
        assert_eq!(find(&tables.load(), "x.example", "/web"), Err(Miss::Path));
    }

    #[test]
    fn counters_survive_updates_and_retire() {
        let mut t = BTreeMap::new();
        t.insert("web".into(), route(None, &[], &["web-1", "web-2"]));
        let tables = Tables::new(&Arc::new(t.clone()));
        let s1 = tables.instance("web-1").expect("web-1 tracked");
        assert!(s1.is_routable());
        s1.enter();
        t.insert("web".into(), route(None, &[], &["web-2"]));
        tables.apply(&Arc::new(t));
        let again = tables
            .instance("web-1")
            .expect("still tracked while in flight");
        assert!(Arc::ptr_eq(&s1, &again));
        assert!(!s1.is_routable());
        let l = tables.load();
        let mut buf = [0; MAX_HOST];
        let host = normalize_host(b"web.localhost", &mut buf).expect("host");
        let svc = l.find(host, "/").expect("web");
        assert_eq!(svc.backends.len(), 1);
        assert!(!svc.backends.iter().any(|b| Arc::ptr_eq(&b.stats, &s1)));
        s1.leave();
        // Reported once drained, then forgotten.
        assert!(tables.report().iter().any(|s| &*s.instance == "web-1"));
        assert!(!tables.report().iter().any(|s| &*s.instance == "web-1"));
        assert!(tables.instance("web-1").is_none());
    }
}
