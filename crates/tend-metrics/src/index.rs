//! Label matchers and the inverted index (label pair → sorted series ids).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::labels::Labels;

/// A label matcher, as in a PromQL selector.
#[derive(Clone)]
pub enum Matcher {
    /// `name="value"`
    Eq(String, String),
    /// `name!="value"`
    Neq(String, String),
    /// `name=~"re"`; the regex must be anchored (`^(?:re)$`), see [`Matcher::re`].
    Re(String, regex::Regex),
    /// `name!~"re"`; anchored like `Re`.
    NotRe(String, regex::Regex),
}

impl Matcher {
    /// `name="value"`.
    pub fn eq(name: &str, value: &str) -> Matcher {
        Matcher::Eq(name.to_string(), value.to_string())
    }

    /// `name!="value"`.
    pub fn neq(name: &str, value: &str) -> Matcher {
        Matcher::Neq(name.to_string(), value.to_string())
    }

    /// `name=~"pattern"`, anchored like Prometheus (`^(?:pattern)$`).
    pub fn re(name: &str, pattern: &str) -> Result<Matcher, regex::Error> {
        Ok(Matcher::Re(name.to_string(), anchored(pattern)?))
    }

    /// `name!~"pattern"`, anchored like Prometheus.
    pub fn not_re(name: &str, pattern: &str) -> Result<Matcher, regex::Error> {
        Ok(Matcher::NotRe(name.to_string(), anchored(pattern)?))
    }

    /// The label name this matcher tests.
    pub fn name(&self) -> &str {
        match self {
            Matcher::Eq(n, _) | Matcher::Neq(n, _) | Matcher::Re(n, _) | Matcher::NotRe(n, _) => n,
        }
    }

    /// Whether a label value matches (an absent label is the empty value).
    #[inline]
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Matcher::Eq(_, x) => x == v,
            Matcher::Neq(_, x) => x != v,
            Matcher::Re(_, r) => r.is_match(v),
            Matcher::NotRe(_, r) => !r.is_match(v),
        }
    }

    /// Whether a whole label set matches.
    pub fn matches_labels(&self, l: &Labels) -> bool {
        self.matches(l.get(self.name()).unwrap_or(""))
    }
}

/// Compiles `^(?:pattern)$`.
pub fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Eq(n, v) => write!(f, "{n}={v:?}"),
            Matcher::Neq(n, v) => write!(f, "{n}!={v:?}"),
            Matcher::Re(n, r) => write!(f, "{n}=~{:?}", r.as_str()),
            Matcher::NotRe(n, r) => write!(f, "{n}!~{:?}", r.as_str()),
        }
    }
}

/// In-memory inverted index: name → value → sorted ids. Used by the head and
/// by loaded blocks.
#[derive(Default, Debug)]
pub(crate) struct Postings {
    map: HashMap<Arc<str>, HashMap<Arc<str>, Vec<u32>>>,
    all: Vec<u32>,
}

impl Postings {
    /// Indexes series `id` (ids must be added in increasing order) and
    /// returns its labels with strings shared with the index (interned), so
    /// that a million series do not hold a million copies of `__name__`.
    pub(crate) fn add(&mut self, id: u32, labels: &Labels) -> Labels {
        self.all.push(id);
        let mut interned = Vec::with_capacity(labels.len());
        for l in labels.as_slice() {
            let name = match self.map.get_key_value(&*l.name) {
                Some((k, _)) => k.clone(),
                None => {
                    self.map.insert(l.name.clone(), HashMap::new());
                    l.name.clone()
                }
            };
            let vals = self.map.entry(name.clone()).or_default();
            let value = match vals.get_key_value(&*l.value) {
                Some((k, _)) => k.clone(),
                None => l.value.clone(),
            };
            vals.entry(value.clone()).or_default().push(id);
            interned.push(crate::labels::Label { name, value });
        }
        Labels::from_sorted(interned)
    }

    /// Inserts a whole posting list (block loading).
    pub(crate) fn insert_list(&mut self, name: &str, value: &str, ids: Vec<u32>) {
        self.map
            .entry(name.into())
            .or_default()
            .insert(value.into(), ids);
    }

    /// Sets the list of all ids (block loading).
    pub(crate) fn set_all(&mut self, all: Vec<u32>) {
        self.all = all;
    }

    /// Iterates `(name, value, ids)` (block writing).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str, &[u32])> {
        self.map
            .iter()
            .flat_map(|(n, vs)| vs.iter().map(move |(v, ids)| (&**n, &**v, ids.as_slice())))
    }

    /// All label names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|k| &**k)
    }

    /// All values of a label name.
    pub(crate) fn values(&self, name: &str) -> impl Iterator<Item = &str> {
        self.map
            .get(name)
            .into_iter()
            .flat_map(|vs| vs.keys().map(|k| &**k))
    }

    fn union_where(&self, name: &str, pred: impl Fn(&str) -> bool) -> Vec<u32> {
        let Some(vals) = self.map.get(name) else {
            return Vec::new();
        };
        let lists: Vec<&[u32]> = vals
            .iter()
            .filter(|(v, _)| pred(v))
            .map(|(_, ids)| ids.as_slice())
            .collect();
        union(&lists)
    }

    /// Sorted ids of the series matching all matchers.
    pub(crate) fn resolve(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut positives: Vec<Vec<u32>> = Vec::new();
        let mut negatives: Vec<Vec<u32>> = Vec::new();
        for m in matchers {
            let name = m.name();
            if m.matches("") {
                // Matches series without the label too: subtract those whose value fails.
                let neg = match m {
                    Matcher::Neq(_, v) => self
                        .map
                        .get(name)
                        .and_then(|vs| vs.get(v.as_str()))
                        .cloned()
                        .unwrap_or_default(),
                    _ => self.union_where(name, |v| !m.matches(v)),
                };
                if !neg.is_empty() {
                    negatives.push(neg);
                }
            } else {
                let pos = match m {
                    Matcher::Eq(_, v) => self
                        .map
                        .get(name)
                        .and_then(|vs| vs.get(v.as_str()))
                        .cloned()
                        .unwrap_or_default(),
                    _ => self.union_where(name, |v| m.matches(v)),
                };
                if pos.is_empty() {
                    return Vec::new();
                }
                positives.push(pos);
            }
        }
        let mut base = if positives.is_empty() {
            self.all.clone()
        } else {
            positives.sort_by_key(|p| p.len());
            let mut it = positives.into_iter();
            let mut acc = it.next().unwrap_or_default();
            for p in it {
                acc = intersect(&acc, &p);
                if acc.is_empty() {
                    break;
                }
            }
            acc
        };
        for n in &negatives {
            if base.is_empty() {
                break;
            }
            base = subtract(&base, n);
        }
        base
    }
}

/// Intersection of two sorted lists.
pub(crate) fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// `a` minus `b`, both sorted.
pub(crate) fn subtract(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut j = 0;
    let mut out = Vec::with_capacity(a.len());
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            continue;
        }
        out.push(x);
    }
    out
}

/// Union of sorted lists.
pub(crate) fn union(lists: &[&[u32]]) -> Vec<u32> {
    match lists.len() {
        0 => Vec::new(),
        1 => lists[0].to_vec(),
        _ => {
            let mut out: Vec<u32> = lists.iter().flat_map(|l| l.iter().copied()).collect();
            out.sort_unstable();
            out.dedup();
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx() -> Postings {
        let mut p = Postings::default();
        let series = [
            Labels::from_pairs(&[("__name__", "up"), ("job", "a"), ("i", "1")]),
            Labels::from_pairs(&[("__name__", "up"), ("job", "b"), ("i", "2")]),
            Labels::from_pairs(&[("__name__", "up"), ("job", "b")]),
            Labels::from_pairs(&[("__name__", "down"), ("job", "a"), ("i", "1")]),
        ];
        for (i, s) in series.iter().enumerate() {
            p.add(i as u32, s);
        }
        p
    }

    #[test]
    fn resolve_all_matcher_kinds() {
        let p = idx();
        let m = |ms: &[Matcher]| p.resolve(ms);
        assert_eq!(m(&[Matcher::eq("__name__", "up")]), vec![0, 1, 2]);
        assert_eq!(
            m(&[Matcher::eq("__name__", "up"), Matcher::neq("job", "a")]),
            vec![1, 2]
        );
        assert_eq!(
            m(&[Matcher::eq("__name__", "up"), Matcher::eq("i", "")]),
            vec![2]
        );
        assert_eq!(
            m(&[Matcher::eq("__name__", "up"), Matcher::neq("i", "")]),
            vec![0, 1]
        );
        assert_eq!(
            m(&[
                Matcher::re("job", "a|b").unwrap(),
                Matcher::re("i", "1").unwrap()
            ]),
            vec![0, 3]
        );
        assert_eq!(
            m(&[
                Matcher::re("job", "b").unwrap(),
                Matcher::re("i", ".*").unwrap()
            ]),
            vec![1, 2]
        );
        assert_eq!(
            m(&[
                Matcher::eq("__name__", "up"),
                Matcher::not_re("i", "1|2").unwrap()
            ]),
            vec![2]
        );
        assert_eq!(m(&[Matcher::re("job", "a.").unwrap()]), Vec::<u32>::new());
        assert_eq!(m(&[Matcher::neq("job", "zzz")]), vec![0, 1, 2, 3]);
    }

    #[test]
    fn set_ops() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[3, 4, 5]), vec![3, 5]);
        assert_eq!(subtract(&[1, 3, 5, 7], &[3, 4, 5]), vec![1, 7]);
        assert_eq!(union(&[&[1, 5], &[2, 5, 9]]), vec![1, 2, 5, 9]);
    }
}
