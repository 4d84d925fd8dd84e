//! Label sets: the identity of a series.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

/// The label holding the metric name.
pub const METRIC_NAME: &str = "__name__";

/// One `name="value"` pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Label name (shared: cloning a label never copies strings).
    pub name: Arc<str>,
    /// Label value (never empty inside a `Labels`: an empty value means "absent").
    pub value: Arc<str>,
}

struct Inner {
    // Precomputed so that the append path and every hash map keyed by labels
    // never re-hash the strings.
    hash: u64,
    pairs: Box<[Label]>,
    // Made by a `ScrapeCache`, which keeps this very `Arc` for the series:
    // the head remembers it to recognise the series by pointer next time.
    cached: bool,
}

/// A sorted set of (name, value) pairs including `__name__`; cloning is an `Arc` bump.
#[derive(Clone)]
pub struct Labels(Arc<Inner>);

impl Labels {
    /// Builds a label set from pairs: sorts by name, drops empty values, keeps the last duplicate.
    pub fn new<N: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Labels {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .filter(|l| !l.value.is_empty())
            .collect();
        Self::from_vec(&mut v)
    }

    /// Builds a label set from `(&str, &str)` pairs.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(n, v)| (*n, *v)))
    }

    /// The empty label set (shared, no allocation).
    pub fn empty() -> Labels {
        static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
        EMPTY
            .get_or_init(|| Labels::from_sorted(Vec::new()))
            .clone()
    }

    fn from_vec(v: &mut Vec<Label>) -> Labels {
        // Stable sort + keep last so that later pairs override earlier ones.
        v.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out: Vec<Label> = Vec::with_capacity(v.len());
        for l in v.drain(..) {
            match out.last_mut() {
                Some(last) if last.name == l.name => *last = l,
                _ => out.push(l),
            }
        }
        Labels::from_sorted(out)
    }

    /// Builds from pairs already sorted by name with unique names and non-empty values.
    pub(crate) fn from_sorted(pairs: Vec<Label>) -> Labels {
        let hash = hash_pairs(&pairs);
        Labels(Arc::new(Inner {
            hash,
            pairs: pairs.into_boxed_slice(),
            cached: false,
        }))
    }

    /// Marks a label set held by a scrape cache (see `Inner::cached`).
    pub(crate) fn into_cached(mut self) -> Labels {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.cached = true,
            None => {
                self = Labels(Arc::new(Inner {
                    hash: self.0.hash,
                    pairs: self.0.pairs.clone(),
                    cached: true,
                }))
            }
        }
        self
    }

    /// Whether this set was made by a scrape cache.
    #[inline]
    pub(crate) fn is_cached(&self) -> bool {
        self.0.cached
    }

    /// The same allocation (not merely equal).
    #[inline]
    pub(crate) fn ptr_eq(&self, other: &Labels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A 64-bit hash of the pairs (process-local, not stable across versions).
    #[inline]
    pub fn hash_value(&self) -> u64 {
        self.0.hash
    }

    /// The pairs, sorted by name.
    #[inline]
    pub fn as_slice(&self) -> &[Label] {
        &self.0.pairs
    }

    /// Iterates over `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.pairs.iter().map(|l| (&*l.name, &*l.value))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.pairs.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.pairs.is_empty()
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .pairs
            .binary_search_by(|l| (*l.name).cmp(name))
            .ok()
            .map(|i| &*self.0.pairs[i].value)
    }

    /// The metric name (`__name__`), if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// A copy with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut v: Vec<Label> = self
            .0
            .pairs
            .iter()
            .filter(|l| &*l.name != name)
            .cloned()
            .collect();
        if !value.is_empty() {
            let pos = v.partition_point(|l| &*l.name < name);
            v.insert(
                pos,
                Label {
                    name: name.into(),
                    value: value.into(),
                },
            );
        }
        Labels::from_sorted(v)
    }

    /// A copy with every label of `over` set, replacing same-named ones: the
    /// scrape path's "add the target's labels", in one allocation and no
    /// string copies (both sides are sorted: a merge).
    pub fn merged(&self, over: &Labels) -> Labels {
        let (a, b) = (&self.0.pairs, &over.0.pairs);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.name < y.name => {
                    out.push(x.clone());
                    i += 1;
                }
                (Some(x), Some(y)) if x.name == y.name => {
                    out.push(y.clone());
                    i += 1;
                    j += 1;
                }
                (_, Some(y)) => {
                    out.push(y.clone());
                    j += 1;
                }
                (Some(x), None) => {
                    out.push(x.clone());
                    i += 1;
                }
                (None, None) => break,
            }
        }
        Labels::from_sorted(out)
    }

    /// A copy without the given names.
    pub fn without(&self, names: &[&str]) -> Labels {
        if !self.0.pairs.iter().any(|l| names.contains(&&*l.name)) {
            return self.clone();
        }
        Labels::from_sorted(
            self.0
                .pairs
                .iter()
                .filter(|l| !names.contains(&&*l.name))
                .cloned()
                .collect(),
        )
    }

    /// A copy keeping only the given names.
    pub fn keep(&self, names: &[&str]) -> Labels {
        if names.is_empty() {
            return Labels::empty();
        }
        Labels::from_sorted(
            self.0
                .pairs
                .iter()
                .filter(|l| names.contains(&&*l.name))
                .cloned()
                .collect(),
        )
    }

    /// A copy without `__name__`.
    pub fn without_name(&self) -> Labels {
        if self.get(METRIC_NAME).is_none() {
            return self.clone();
        }
        self.without(&[METRIC_NAME])
    }

    /// Approximate heap bytes used (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.0
            .pairs
            .iter()
            .map(|l| l.name.len() + l.value.len() + 32)
            .sum::<usize>()
            + 32
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.pairs == other.0.pairs)
    }
}
impl Eq for Labels {}

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Labels {
    // Pairwise name-then-value comparison, as Prometheus orders label sets.
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&self.0.pairs, &other.0.pairs);
        for (x, y) in a.iter().zip(b.iter()) {
            // Interned strings are usually the same allocation: skip the memcmp.
            if !Arc::ptr_eq(&x.name, &y.name) {
                match x.name.cmp(&y.name) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            if !Arc::ptr_eq(&x.value, &y.value) {
                match x.value.cmp(&y.value) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
        }
        a.len().cmp(&b.len())
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        if let Some(n) = name {
            f.write_str(n)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for l in self.0.pairs.iter().filter(|l| &*l.name != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", l.name, &*l.value)?;
        }
        f.write_str("}")
    }
}

impl Default for Labels {
    fn default() -> Self {
        Labels::empty()
    }
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(SEED)
}

/// Fast word-at-a-time hash of a byte string (FxHash-like; collisions are
/// resolved by comparing the labels, so quality only affects speed).
#[inline]
pub(crate) fn hash_bytes(mut h: u64, b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(w));
    }
    mix(h, b.len() as u64)
}

fn hash_pairs(pairs: &[Label]) -> u64 {
    let mut h = 0u64;
    for l in pairs {
        h = hash_bytes(h, l.name.as_bytes());
        h = hash_bytes(h, l.value.as_bytes());
    }
    // Final avalanche so that low bits (used by hash tables) depend on all input.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A hasher that passes precomputed 64-bit hashes through.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Build-hasher for maps keyed by `Labels` or by precomputed `u64` hashes.
pub(crate) type BuildIdentity = BuildHasherDefault<IdentityHasher>;

/// A HashMap keyed by labels or label hashes without re-hashing.
pub(crate) type LabelsMap<K, V> = std::collections::HashMap<K, V, BuildIdentity>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_is_with_applied_for_every_label() {
        let base = Labels::from_pairs(&[
            ("__name__", "x"),
            ("instance", "own"),
            ("z", "1"),
            ("b", "2"),
        ]);
        for over in [
            Labels::from_pairs(&[("instance", "i"), ("service", "s"), ("a", "0")]),
            Labels::from_pairs(&[("zz", "9")]),
            Labels::empty(),
        ] {
            let mut want = base.clone();
            for (k, v) in over.iter() {
                want = want.with(k, v);
            }
            let got = base.merged(&over);
            assert_eq!(got, want);
            assert_eq!(got.hash_value(), want.hash_value());
            assert_eq!(Labels::empty().merged(&over), over);
        }
    }

    #[test]
    fn sorted_dedup_and_empty_values_dropped() {
        let l = Labels::from_pairs(&[("b", "2"), ("a", "1"), ("c", ""), ("a", "3")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "3"), ("b", "2")]);
        assert_eq!(l.get("a"), Some("3"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn eq_hash_ord() {
        let a = Labels::from_pairs(&[("__name__", "up"), ("job", "x")]);
        let b = Labels::from_pairs(&[("job", "x"), ("__name__", "up")]);
        assert_eq!(a, b);
        assert_eq!(a.hash_value(), b.hash_value());
        let c = a.with("job", "y");
        assert!(a < c);
        assert_eq!(c.without_name().to_string(), "{job=\"y\"}");
        assert_eq!(a.to_string(), "up{job=\"x\"}");
        assert_eq!(a.with("job", ""), Labels::from_pairs(&[("__name__", "up")]));
    }
}
