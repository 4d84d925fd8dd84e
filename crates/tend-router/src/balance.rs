//! Load balancing: the power of two choices on in-flight counts.
//!
//! Pick two instances at random and send to the one with fewer requests in
//! flight. It needs no shared state beyond the per-instance counters the
//! router keeps anyway, reacts at once to a slow instance (its requests pile
//! up, it stops being chosen), and avoids the herd behaviour of "least loaded
//! overall" when many requests decide on the same stale view.

use std::cell::Cell;

use crate::table::Backend;

thread_local! {
    /// wyrand state. Choosing an instance needs speed, not cryptographic
    /// quality, and a thread-local `Cell` costs no synchronisation.
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A uniform-enough random number in `0..n` (`n > 0`).
fn below(n: usize) -> usize {
    let x = RNG.with(|s| {
        let v = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(v);
        let t = u128::from(v) * u128::from(v ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    });
    // Lemire's multiply-shift: no division, bias negligible for small n.
    ((u128::from(x) * n as u128) >> 64) as usize
}

/// Chooses a backend index, avoiding `exclude` when there is another one
/// (a retry goes elsewhere when it can, to the same one when it is alone).
pub(crate) fn pick(backends: &[Backend], exclude: Option<usize>) -> Option<usize> {
    let n = backends.len();
    let exclude = exclude.filter(|&e| e < n && n > 1);
    let m = n - usize::from(exclude.is_some());
    // Candidate `i` among the `m` allowed maps to a backend index skipping `exclude`.
    let real = |i: usize| match exclude {
        Some(e) if i >= e => i + 1,
        _ => i,
    };
    match m {
        0 => None,
        1 => Some(real(0)),
        _ => {
            let a = below(m);
            let mut b = below(m - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (real(a), real(b));
            if backends[b].stats.in_flight() < backends[a].stats.in_flight() {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Stats;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                addr: ([127, 0, 0, 1], 1).into(),
                stats: Stats::new("s", &format!("i{i}")),
            })
            .collect()
    }

    #[test]
    fn empty_single_and_excluded() {
        assert_eq!(pick(&backends(0), None), None);
        assert_eq!(pick(&backends(1), None), Some(0));
        assert_eq!(pick(&backends(1), Some(0)), Some(0));
        let two = backends(2);
        for _ in 0..100 {
            assert_eq!(pick(&two, Some(0)), Some(1));
            assert_eq!(pick(&two, Some(1)), Some(0));
        }
        let five = backends(5);
        for _ in 0..1000 {
            assert_ne!(pick(&five, Some(3)), Some(3));
        }
    }

    #[test]
    fn prefers_the_less_loaded_and_spreads() {
        let two = backends(2);
        for _ in 0..5 {
            two[0].stats.enter();
        }
        for _ in 0..100 {
            assert_eq!(pick(&two, None), Some(1));
        }
        let four = backends(4);
        let mut hits = [0; 4];
        for _ in 0..4000 {
            hits[pick(&four, None).expect("some")] += 1;
        }
        assert!(hits.iter().all(|&h| h > 500), "{hits:?}");
    }
}
