//! Where a key lives in the table, and how it is recognised there.
//!
//! Keys are never stored, only a 64-bit fingerprint: a hostile 64 KiB header value costs the same
//! 8 bytes as "alice". The hash is keyed (SipHash-1-3, 128-bit) with a seed derived from the
//! policy's `hash_secret`, so that with a secret set, slot placement cannot be predicted from the
//! public algorithm; every worker derives the same seed, which keeps all workers on the same slots.
//!
//! The seed depends on nothing else in the policy on purpose: what places a caller is the seed,
//! the table's name and its set count (see `config`), so an edit of the policy that leaves a
//! tier's name, limits and size alone (a space, another tier, another order, an unrelated field)
//! leaves every caller in the slot that holds their state. Deriving it from the whole policy text,
//! as tollgate once did, reset every user on any edit and left their old ways active for up to a
//! window.

use core::hash::Hasher;
use siphasher::sip128::{Hasher128, SipHasher13};

/// A key's place: which set of the table, and the fingerprint that tells it apart from the other
/// keys of that set. A fingerprint is never 0: 0 marks an empty way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Index of the set, below the table's set count.
    pub set: u32,
    /// Non-zero fingerprint.
    pub fingerprint: u64,
}

/// The hashing key for slot placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed(pub [u8; 16]);

impl Seed {
    /// The seed for a policy's `hash_secret` (empty when it sets none).
    pub fn derive(secret: &[u8]) -> Seed {
        let mut h = SipHasher13::new_with_keys(0x746f_6c6c_6761_7465, 0x7365_6564_2d76_3200);
        h.write_u64(secret.len() as u64);
        h.write(secret);
        Seed(h.finish128().as_bytes())
    }

    /// Places the key made of `parts` in a table of `sets` sets.
    ///
    /// The parts are length-prefixed so that ("ab", "c") and ("a", "bc") differ.
    pub fn slot(&self, parts: &[&[u8]], sets: u32) -> Slot {
        self.prefix(&[]).slot(parts, sets)
    }

    /// The hash state after the leading `parts` of a key, to finish with the rest by
    /// [`Prefix::slot`]: `prefix(a).slot(b)` is `slot(a ++ b)`. A tier's name starts every key of
    /// its request limits, so its state is computed once per policy, and the request path hashes
    /// only the caller's identity.
    pub fn prefix(&self, parts: &[&[u8]]) -> Prefix {
        let (k0, k1) = self.keys();
        let mut h = SipHasher13::new_with_keys(k0, k1);
        absorb(&mut h, parts);
        Prefix(h)
    }

    fn keys(&self) -> (u64, u64) {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        let (lo, hi) = self.0.split_at(8);
        a.copy_from_slice(lo);
        b.copy_from_slice(hi);
        (u64::from_le_bytes(a), u64::from_le_bytes(b))
    }
}

/// A key's leading parts, hashed ([`Seed::prefix`]).
#[derive(Clone, Debug)]
pub struct Prefix(SipHasher13);

impl Prefix {
    /// Places the key made of this prefix's parts and then `parts` in a table of `sets` sets.
    pub fn slot(&self, parts: &[&[u8]], sets: u32) -> Slot {
        let mut h = self.0;
        absorb(&mut h, parts);
        let hash = h.finish128();
        let fingerprint = if hash.h1 == 0 { 1 } else { hash.h1 };
        let set = if sets == 0 {
            0
        } else {
            (hash.h2 % u64::from(sets)) as u32
        };
        Slot { set, fingerprint }
    }
}

/// Feeds length-prefixed `parts` to `h`. SipHash reads one stream of bytes whatever the writes
/// that carry it, so feeding them in two goes equals feeding them at once.
fn absorb(h: &mut SipHasher13, parts: &[&[u8]]) {
    for part in parts {
        h.write_u64(part.len() as u64);
        h.write(part);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn the_same_secret_places_keys_in_the_same_slot_on_every_worker() {
        let a = Seed::derive(b"s");
        let b = Seed::derive(b"s");
        assert_eq!(
            a.slot(&[b"t", b"alice"], 1024),
            b.slot(&[b"t", b"alice"], 1024)
        );
    }

    #[test]
    fn a_prefix_finished_is_the_whole_key_hashed() {
        let s = Seed::derive(b"secret");
        let parts: [&[u8]; 4] = [b"users", b"alice", b"", &[0xff; 100]];
        for split in 0..=parts.len() {
            let (head, tail) = parts.split_at(split);
            for sets in [0, 1, 7, 1 << 20] {
                assert_eq!(
                    s.prefix(head).slot(tail, sets),
                    s.slot(&parts, sets),
                    "{split} {sets}"
                );
            }
        }
    }

    /// Placement is stored state: a change of the hash would move every caller to another slot
    /// on upgrade. These values were computed before `Prefix` existed.
    #[test]
    fn placement_is_unchanged() {
        let s = Seed::derive(b"");
        assert_eq!(
            s.slot(&[b"users", b"alice"], 1024),
            Slot {
                set: 170,
                fingerprint: 10_748_972_212_514_754_851
            }
        );
    }

    #[test]
    fn part_boundaries_matter() {
        let s = Seed::derive(b"");
        assert_ne!(
            s.slot(&[b"ab", b"c"], 1 << 20),
            s.slot(&[b"a", b"bc"], 1 << 20)
        );
    }

    #[test]
    fn another_secret_moves_keys() {
        let a = Seed::derive(b"one");
        let b = Seed::derive(b"two");
        assert_ne!(a.slot(&[b"x"], 1 << 20), b.slot(&[b"x"], 1 << 20));
    }

    #[test]
    fn sets_stay_in_range_and_spread() {
        let s = Seed::derive(b"");
        let mut seen = [0u32; 16];
        for i in 0..1600u32 {
            let slot = s.slot(&[&i.to_le_bytes()], 16);
            assert!(slot.set < 16);
            assert_ne!(slot.fingerprint, 0);
            seen[slot.set as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
