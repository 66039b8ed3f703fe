//! A cheap hasher for lookup tables whose keys all come from the config (route paths and
//! hosts, upstream names), looked up on every request.
//!
//! std's SipHash resists hash flooding, which matters when a peer chooses the keys that go
//! into a table. Here the peer only chooses what is looked up: the tables are filled from the
//! config and never grow, so a lookup costs one probe sequence of the config's own keys,
//! whatever is asked. What is left is the cost of hashing itself, which SipHash makes several
//! times that of this multiply-rotate hash (rustc's FxHash, eight bytes a step).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` for keys from the config (see the module documentation).
pub type ConfigMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_map_finds_what_was_put_in_and_nothing_else() {
        let keys: Vec<String> = (0..2_000)
            .map(|i| format!("/svc{i}/{}", "x".repeat(i % 19)))
            .collect();
        let mut map = ConfigMap::default();
        for (i, k) in keys.iter().enumerate() {
            map.insert(k.clone(), i);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k.as_str()), Some(&i));
            assert_eq!(map.get(&format!("{k}\0")[..]), None);
            assert_eq!(map.get(&k[..k.len() - 1]), None);
        }
    }

    #[test]
    fn keys_that_differ_in_any_byte_or_length_hash_apart() {
        let hash = |s: &str| {
            let mut h = KeyHasher::default();
            std::hash::Hash::hash(s, &mut h);
            h.finish()
        };
        let base = "/api/v1/orders/items";
        let mut seen = std::collections::HashSet::new();
        seen.insert(hash(base));
        for i in 0..base.len() {
            let mut other = base.as_bytes().to_vec();
            other[i] ^= 1;
            let other = String::from_utf8(other).unwrap_or_default();
            assert!(seen.insert(hash(&other)), "byte {i}");
        }
        for len in 0..base.len() {
            assert!(seen.insert(hash(&base[..len])), "length {len}");
        }
    }
}
