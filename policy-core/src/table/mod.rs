//! A fixed, set-associative table of buckets in the shared store.
//!
//! Shared data has no delete and no TTL, so memory is bounded by never creating more keys than a
//! fixed number of *sets*, all created at configure time. A key is hashed to one set; the set's
//! value holds [`WAYS`] ways, each a fingerprint and the key's bucket states. A set is read and
//! written as one value, so a decision is one `get` and one CAS `set`.
//!
//! Reclaiming is lossless by construction: a way is only reused when all its buckets are full
//! again, and a full bucket is exactly what a fresh key gets. An active key (one whose bucket is
//! not full, including an abusive one in debt) keeps its way. When all ways of a set are active, a
//! newcomer *shares* a way chosen by its fingerprint: limits get stricter for the two keys that
//! share, never looser, and the caller is told so it can count it.

mod budgets;
mod key;
mod set;

use alloc::string::String;
use alloc::vec::Vec;

use crate::bucket::Tat;
use crate::decimal::push_u64;
use crate::hash::{Seed, Slot};
use crate::store::{Store, StoreError};

pub use budgets::{budget_set_len, column_tag, columns_in, BudgetSetValue, BudgetTable, Seen};
pub use key::StoreKey;
pub use set::{set_len, SetValue, Way, WrongLength, MAX_CELLS, WAYS};

/// Compare-and-swap attempts before giving up. Under Envoy's per-process lock a conflict means
/// another worker just wrote the same set, so a handful of retries suffices in practice.
pub const MAX_ATTEMPTS: u32 = 16;

/// How the key found its way in the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The key already had a way.
    Owned,
    /// The key took an empty or idle way (a full bucket).
    Fresh,
    /// Every way was active: the key shares another key's way.
    Shared,
}

/// What the caller wants done with the key's bucket states.
#[derive(Debug)]
pub enum Update<T> {
    /// Store these states and return `T`.
    Write(Vec<Tat>, T),
    /// The same, the states in a fixed-size array (states past the table's cells are ignored):
    /// the request path's, which allocates nothing.
    WriteCells([Tat; MAX_CELLS], T),
    /// The same, the states being those `decide` was given, as it left them (it updates them in
    /// place): nothing is copied or zeroed for the answer.
    WriteInPlace(T),
    /// Store nothing and return `T` (a denial changes nothing).
    Keep(T),
}

/// Why an update could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableError {
    /// The store kept reporting conflicts for [`MAX_ATTEMPTS`] attempts.
    Contended,
    /// The store failed.
    Unavailable,
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TableError::Contended => {
                "the key's set kept changing under every compare-and-swap attempt"
            }
            TableError::Unavailable => "shared data refused the read or the write",
        })
    }
}

/// One table: `sets` sets of [`WAYS`] ways, each way holding `cells` bucket states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    prefix: String,
    sets: u32,
    cells: usize,
    tag: u64,
}

impl Table {
    /// A table whose keys start with `prefix`, with room for at least `max_keys` keys of `cells`
    /// buckets each. `tag` identifies the bucket layout (rates): a set written under another tag
    /// is read as empty, so changing a tier's limits resets its state instead of misreading it.
    ///
    /// The set count is part of the stored tag too: a caller's set is its hash modulo the set
    /// count, so another count moves callers to other sets, and their old ways must read as
    /// empty rather than stay active (unreclaimable) for up to a window.
    pub fn new(prefix: String, max_keys: u32, cells: usize, tag: u64) -> Table {
        let sets = max_keys.div_ceil(WAYS as u32).max(1);
        let tag = Seed([0; 16])
            .slot(&[&tag.to_le_bytes(), &sets.to_le_bytes()], 1)
            .fingerprint;
        Table {
            prefix,
            sets,
            cells: cells.clamp(1, MAX_CELLS),
            tag,
        }
    }

    /// Number of sets (= shared-data keys this table will ever create).
    pub fn sets(&self) -> u32 {
        self.sets
    }

    /// Bytes of one set's value.
    pub fn set_bytes(&self) -> usize {
        set_len(self.cells)
    }

    /// The store key of set `set`.
    pub fn key(&self, set: u32) -> String {
        // On every decision: one exact allocation and no formatting machinery.
        let mut key = String::with_capacity(self.prefix.len() + 10);
        key.push_str(&self.prefix);
        push_u64(&mut key, u64::from(set));
        key
    }

    /// The store key of set `set`, built on the stack (see [`StoreKey`]).
    pub fn store_key(&self, set: u32) -> StoreKey {
        StoreKey::new(&self.prefix, set)
    }

    fn empty_set(&self) -> SetValue<Vec<u8>> {
        SetValue::empty(self.cells, self.tag)
    }

    /// Creates every set that does not exist yet, so that no request ever meets a missing key
    /// (a write to a missing key ignores the CAS, which would let two workers both "insert").
    /// Returns how many sets it created.
    pub fn init<S: Store>(&self, store: &mut S) -> Result<u32, StoreError> {
        let empty = self.empty_set().into_inner();
        let mut created = 0;
        for set in 0..self.sets {
            let key = self.key(set);
            if store.get(&key)?.is_none() {
                store.set(&key, &empty, None)?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// Reads the key's states, lets `decide` choose, and writes the result with CAS, retrying on
    /// conflict. `is_idle` says whether a way's states are all full buckets (reclaimable).
    ///
    /// Nothing here allocates: the store key is built on the stack ([`StoreKey`]), the set is
    /// read into a stack buffer ([`Store::get_into`]) and `decide` may answer with a fixed-size
    /// array of states ([`Update::WriteCells`]), so a store that copies out of its own memory
    /// makes the whole update allocation-free.
    pub fn update<S, T>(
        &self,
        store: &mut S,
        slot: Slot,
        is_idle: impl Fn(&[Tat]) -> bool,
        decide: impl FnMut(&mut [Tat], Placement) -> Update<T>,
    ) -> Result<(T, Placement), TableError>
    where
        S: Store,
    {
        let key = self.store_key(slot.set);
        let key = key.as_str();
        // The buffers are sized for the table: a stack array is zeroed before use, and zeroing
        // room for 8 cells (over a kilobyte for the set) cost ~1,100 Wasm operators per
        // decision where a tier has 1–3 limits.
        // Only the buffers are per size: the body is one function (four copies of it made the
        // module 13.7 kB larger).
        match self.cells {
            0..=1 => self.update_in(
                &mut [0u8; set_len(1)],
                &mut [Tat::default(); 1],
                key,
                store,
                slot,
                is_idle,
                decide,
            ),
            2 => self.update_in(
                &mut [0u8; set_len(2)],
                &mut [Tat::default(); 2],
                key,
                store,
                slot,
                is_idle,
                decide,
            ),
            3..=4 => self.update_in(
                &mut [0u8; set_len(4)],
                &mut [Tat::default(); 4],
                key,
                store,
                slot,
                is_idle,
                decide,
            ),
            _ => self.update_in(
                &mut [0u8; set_len(MAX_CELLS)],
                &mut [Tat::default(); MAX_CELLS],
                key,
                store,
                slot,
                is_idle,
                decide,
            ),
        }
    }

    /// [`update`](Self::update) with `buf` to read the set into and `scratch` for its cells (at
    /// least one set and the table's cells long).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn update_in<S, T>(
        &self,
        buf: &mut [u8],
        scratch: &mut [Tat],
        key: &str,
        store: &mut S,
        slot: Slot,
        is_idle: impl Fn(&[Tat]) -> bool,
        mut decide: impl FnMut(&mut [Tat], Placement) -> Update<T>,
    ) -> Result<(T, Placement), TableError>
    where
        S: Store,
    {
        let value = buf.get_mut(..self.set_bytes()).unwrap_or_default();
        for _ in 0..MAX_ATTEMPTS {
            let cas = match store.get_into(key, value) {
                Ok(Some((len, cas))) => {
                    if !self.is_ours(value, len) {
                        self.clear(value);
                    }
                    cas
                }
                // Missing: with no CAS in hand it is created unconditionally, exactly as init
                // would have.
                Ok(None) => {
                    self.clear(value);
                    None
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable) => return Err(TableError::Unavailable),
            };
            // The buffer is exactly one set long (`set_bytes`): this cannot fail.
            let Ok(mut set) = SetValue::new_checked(&mut *value, self.cells) else {
                return Err(TableError::Unavailable);
            };
            let (way, placement) = place(&set, slot.fingerprint, &is_idle, scratch);
            let current = match placement {
                Placement::Fresh => {
                    let fresh = scratch.get_mut(..self.cells).unwrap_or_default();
                    fresh.fill(Tat::default());
                    fresh
                }
                _ => set.cells_into(way, scratch),
            };
            let owner = match placement {
                Placement::Shared => set.fingerprint(way),
                _ => slot.fingerprint,
            };
            // Each arm writes its states where they are: the answer is moved once, not
            // repacked (a move of a decision is a `memcpy` of a few hundred bytes).
            let out = match decide(current, placement) {
                Update::Keep(out) => return Ok((out, placement)),
                Update::Write(states, out) => {
                    set.set_way(way, owner, &states);
                    out
                }
                Update::WriteCells(states, out) => {
                    set.set_way(way, owner, &states);
                    out
                }
                Update::WriteInPlace(out) => {
                    set.set_way(way, owner, current);
                    out
                }
            };
            match store.set(key, set.into_inner(), cas) {
                Ok(()) => return Ok((out, placement)),
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable) => return Err(TableError::Unavailable),
            }
        }
        Err(TableError::Contended)
    }

    /// Whether `value` (of stored length `len`) is a set of this table: of its length (not
    /// torn) and under its tag (not another layout). Anything else reads as empty.
    fn is_ours(&self, value: &[u8], len: usize) -> bool {
        len == value.len()
            && SetValue::new_checked(value, self.cells).is_ok_and(|set| set.tag() == self.tag)
    }

    /// Makes `value` (one set long) this table's empty set.
    fn clear(&self, value: &mut [u8]) {
        value.fill(0);
        if let Ok(mut set) = SetValue::new_checked(value, self.cells) {
            set.set_tag(self.tag);
        }
    }
}

/// The way a key uses: its own, else the first empty or idle one, else one it shares.
fn place<B: AsRef<[u8]>>(
    set: &SetValue<B>,
    fingerprint: u64,
    is_idle: &impl Fn(&[Tat]) -> bool,
    scratch: &mut [Tat],
) -> (Way, Placement) {
    let mut free = None;
    for way in Way::all() {
        let fp = set.fingerprint(way);
        if fp == fingerprint {
            return (way, Placement::Owned);
        }
        if free.is_none() && (fp == 0 || is_idle(set.cells_into(way, scratch))) {
            free = Some(way);
        }
    }
    match free {
        Some(way) => (way, Placement::Fresh),
        None => (Way::for_fingerprint(fingerprint), Placement::Shared),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::store::MemoryStore;
    use alloc::vec;

    fn table() -> Table {
        Table::new(String::from("t/"), 16, 1, 7)
    }

    fn slot(set: u32, fingerprint: u64) -> Slot {
        Slot { set, fingerprint }
    }

    /// Marks the key active (state 100) and reports its placement.
    fn touch(t: &Table, s: &mut MemoryStore, sl: Slot, now: u128) -> Placement {
        t.update(
            s,
            sl,
            |c| c[0].0 <= now,
            |_, _| Update::Write(vec![Tat(100)], ()),
        )
        .unwrap()
        .1
    }

    #[test]
    fn keys_are_the_prefix_and_the_set_number() {
        let t = table();
        for set in [0, 7, 10, 1234, u32::MAX] {
            assert_eq!(t.key(set), alloc::format!("t/{set}"));
            assert_eq!(t.store_key(set).as_str(), alloc::format!("t/{set}"));
        }
    }

    #[test]
    fn init_creates_every_set_once() {
        let t = table();
        let mut s = MemoryStore::new();
        assert_eq!(t.init(&mut s), Ok(2));
        assert_eq!(t.init(&mut s), Ok(0));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_key_keeps_its_way() {
        let t = table();
        let mut s = MemoryStore::new();
        t.init(&mut s).unwrap();
        assert_eq!(touch(&t, &mut s, slot(0, 42), 0), Placement::Fresh);
        assert_eq!(touch(&t, &mut s, slot(0, 42), 0), Placement::Owned);
    }

    #[test]
    fn active_ways_are_never_evicted_and_a_full_set_shares() {
        let t = table();
        let mut s = MemoryStore::new();
        t.init(&mut s).unwrap();
        for fp in 1..=WAYS as u64 {
            assert_eq!(touch(&t, &mut s, slot(1, fp), 0), Placement::Fresh);
        }
        assert_eq!(touch(&t, &mut s, slot(1, 999), 0), Placement::Shared);
        for fp in 1..=WAYS as u64 {
            assert_eq!(
                touch(&t, &mut s, slot(1, fp), 0),
                Placement::Owned,
                "fp {fp}"
            );
        }
    }

    #[test]
    fn idle_ways_are_reclaimed() {
        let t = table();
        let mut s = MemoryStore::new();
        t.init(&mut s).unwrap();
        for fp in 1..=WAYS as u64 {
            touch(&t, &mut s, slot(1, fp), 0);
        }
        // At "now" = 100 every state (100) is full again: the newcomer takes a way.
        assert_eq!(touch(&t, &mut s, slot(1, 999), 100), Placement::Fresh);
    }

    #[test]
    fn a_set_of_another_size_reads_as_empty() {
        let mut s = MemoryStore::new();
        let old = Table::new(String::from("t/"), 16, 1, 1);
        old.init(&mut s).unwrap();
        touch(&old, &mut s, slot(0, 5), 0);
        assert_eq!(touch(&old, &mut s, slot(0, 5), 0), Placement::Owned);
        let bigger = Table::new(String::from("t/"), 64, 1, 1);
        assert_eq!(touch(&bigger, &mut s, slot(0, 5), 0), Placement::Fresh);
    }

    #[test]
    fn a_set_of_another_layout_reads_as_empty() {
        let mut s = MemoryStore::new();
        let old = Table::new(String::from("t/"), 16, 1, 1);
        old.init(&mut s).unwrap();
        touch(&old, &mut s, slot(0, 5), 0);
        let new = Table::new(String::from("t/"), 16, 1, 2);
        assert_eq!(touch(&new, &mut s, slot(0, 5), 0), Placement::Fresh);
    }

    /// A store whose next `n` writes conflict.
    struct Conflicting(MemoryStore, u32);
    impl Store for Conflicting {
        fn get(&mut self, key: &str) -> Result<Option<crate::store::Versioned>, StoreError> {
            self.0.get(key)
        }
        fn set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<crate::Cas>,
        ) -> Result<(), StoreError> {
            if self.1 > 0 {
                self.1 -= 1;
                return Err(StoreError::CasMismatch);
            }
            self.0.set(key, value, cas)
        }
    }

    #[test]
    fn conflicts_are_retried_then_reported() {
        let t = table();
        let mut s = Conflicting(MemoryStore::new(), 3);
        t.init(&mut s.0).unwrap();
        let mut calls = 0;
        let r = t.update(
            &mut s,
            slot(0, 1),
            |_| false,
            |_, _| {
                calls += 1;
                Update::Write(vec![Tat(1)], ())
            },
        );
        assert!(r.is_ok());
        assert_eq!(calls, 4);
        let mut s = Conflicting(s.0, u32::MAX);
        let r = t.update(
            &mut s,
            slot(0, 1),
            |_| false,
            |_, _| Update::Write(vec![Tat(1)], ()),
        );
        assert_eq!(r, Err(TableError::Contended));
    }
}
