//! A fast, non-cryptographic hasher for the maps the request path reads
//! (hosts, instance addresses), after rustc's FxHash.
//!
//! Not resistant to chosen collisions: only for maps whose keys come from
//! the routing table, never from clients. A client's Host header is only
//! ever looked up, which cannot make a map degrade.

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some((chunk, rest)) = bytes.split_first_chunk::<8>() {
            self.add(u64::from_le_bytes(*chunk));
            bytes = rest;
        }
        if let Some((chunk, rest)) = bytes.split_first_chunk::<4>() {
            self.add(u64::from(u32::from_le_bytes(*chunk)));
            bytes = rest;
        }
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Builds [`FxHasher`]s, for `HashMap::with_hasher`.
pub(crate) type FxBuildHasher = BuildHasherDefault<FxHasher>;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn maps_work_and_spread() {
        let mut m: HashMap<String, usize, FxBuildHasher> = HashMap::default();
        for i in 0..1000 {
            m.insert(format!("svc-{i}.localhost"), i);
        }
        for i in 0..1000 {
            assert_eq!(m[&format!("svc-{i}.localhost")], i);
        }
        let mut a = FxHasher::default();
        a.write(b"web.localhost");
        let mut b = FxHasher::default();
        b.write(b"web.localhosu");
        assert_ne!(a.finish(), b.finish());
    }
}
