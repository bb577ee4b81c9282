//! One caller's token and spend budgets of a tier in one shared-data value: a *budget set*.
//!
//! An LLM call reserves in every budget of its tier that applies and settles them all when it
//! ends. With a table per budget that is a `get` and a CAS `set` per budget, twice per call;
//! with the budgets a caller is counted in side by side in one value it is one `get` and one
//! `set` per set, the same CAS retry loop and the same eviction as [`Table`]: a set's way is one
//! caller's budgets, reclaimed only when all of them are full again.
//!
//! Each budget keeps the reset rule it had as a table of its own: a column carries the budget's
//! tag (its name and rate), and a value written under another list of budgets is read column by
//! column. A budget whose tag is still there keeps its state wherever its column was; one whose
//! tag is not (new, renamed, another rate) starts full; a column no budget claims is dropped.
//! Adding, removing or reordering a tier's budgets, or editing one, so resets that one only.
//!
//! ```text
//! offset 0                          set_len(n)                         budget_set_len(n)
//!        [ set: tag, 8 ways of n cells ][ column tag 0 ] … [ column tag n-1 ]
//! ```
//! The first part is exactly a [`SetValue`] of `n` cells (one per budget); the column tags
//! (`u64`, little-endian) follow it. `n` is read from the value's length, so a value written for
//! another number of budgets is still understood.

use alloc::string::String;
use alloc::vec::Vec;

use super::set::{set_len, SetValue, Way, WrongLength, MAX_CELLS};
use super::{place, Placement, Table, TableError, Update, MAX_ATTEMPTS};
use crate::bucket::Tat;
use crate::hash::{Seed, Slot};
use crate::store::{Cas, Store, StoreError};

/// Byte ranges of the layout after the set part.
pub mod field {
    /// Bytes of one column's tag (`u64`).
    pub const COLUMN_TAG_LEN: usize = 8;
}

/// Bytes of a budget set's value with `columns` budgets.
pub const fn budget_set_len(columns: usize) -> usize {
    set_len(columns) + field::COLUMN_TAG_LEN * columns
}

/// The number of columns of a value of `len` bytes, if it is one a budget set can have.
pub fn columns_in(len: usize) -> Option<usize> {
    (1..=MAX_CELLS).find(|&n| budget_set_len(n) == len)
}

/// One budget set's value, read (and, over a mutable buffer, written) through its layout.
#[derive(Clone, Debug)]
pub struct BudgetSetValue<T> {
    buffer: T,
    columns: usize,
}

impl BudgetSetValue<Vec<u8>> {
    /// An empty set under `tag` whose columns carry `column_tags` (at most [`MAX_CELLS`]).
    pub fn empty(tag: u64, column_tags: &[u64]) -> BudgetSetValue<Vec<u8>> {
        let columns = column_tags.len().clamp(1, MAX_CELLS);
        let mut value = BudgetSetValue {
            buffer: alloc::vec![0; budget_set_len(columns)],
            columns,
        };
        value.ways_mut().set_tag(tag);
        for (c, t) in column_tags.iter().enumerate().take(columns) {
            value.set_column_tag(c, *t);
        }
        value
    }
}

impl<T: AsRef<[u8]>> BudgetSetValue<T> {
    /// Views `buffer` as a budget set of `columns` columns.
    ///
    /// # Errors
    /// [`WrongLength`] unless the buffer is exactly [`budget_set_len`]`(columns)` bytes (and
    /// `columns` is 1..=[`MAX_CELLS`]); after this check every accessor stays inside it.
    pub fn new_checked(buffer: T, columns: usize) -> Result<BudgetSetValue<T>, WrongLength> {
        let actual = buffer.as_ref().len();
        let expected = budget_set_len(columns.clamp(1, MAX_CELLS));
        if (1..=MAX_CELLS).contains(&columns) && actual == expected {
            Ok(BudgetSetValue { buffer, columns })
        } else {
            Err(WrongLength { expected, actual })
        }
    }

    /// How many budgets (cells per way) it holds.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// The set part: the layout tag and the ways.
    pub fn ways(&self) -> SetValue<&[u8]> {
        let bytes = self.buffer.as_ref();
        SetValue::view(
            bytes.get(..set_len(self.columns)).unwrap_or(bytes),
            self.columns,
        )
    }

    /// The tag of column `column` (0 past the last).
    pub fn column_tag(&self, column: usize) -> u64 {
        let mut b = [0u8; field::COLUMN_TAG_LEN];
        let src = self
            .column_field(column)
            .and_then(|r| self.buffer.as_ref().get(r));
        if let Some(src) = src {
            b.copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    }

    /// The underlying bytes.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn column_field(&self, column: usize) -> Option<core::ops::Range<usize>> {
        (column < self.columns).then(|| {
            let start = set_len(self.columns) + column * field::COLUMN_TAG_LEN;
            start..start + field::COLUMN_TAG_LEN
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BudgetSetValue<T> {
    /// The set part, to write ways.
    pub fn ways_mut(&mut self) -> SetValue<&mut [u8]> {
        let end = set_len(self.columns);
        let columns = self.columns;
        let bytes = self.buffer.as_mut();
        let len = bytes.len();
        SetValue::view(bytes.get_mut(..end.min(len)).unwrap_or_default(), columns)
    }

    /// Sets the tag of column `column` (nothing past the last).
    pub fn set_column_tag(&mut self, column: usize, tag: u64) {
        let Some(range) = self.column_field(column) else {
            return;
        };
        if let Some(dst) = self.buffer.as_mut().get_mut(range) {
            dst.copy_from_slice(&tag.to_le_bytes());
        }
    }
}

/// The table of one kind of budget set of a tier (its own budgets, a scope's, per model): one
/// value per set, each [`WAYS`](super::WAYS) callers' budgets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetTable {
    /// The keys, the set count and the layout tag (which holds the set count).
    table: Table,
    /// Each budget's tag, in column order.
    columns: Vec<u64>,
}

/// Tells a budget set's values from a request table's in the layout tag.
const BUDGET_SET_TAG: u64 = u64::from_le_bytes(*b"budgets1");

impl BudgetTable {
    /// A table whose keys start with `prefix`, with room for at least `max_keys` callers, whose
    /// columns are budgets tagged `columns` (at most [`MAX_CELLS`]; see [`column_tag`]).
    pub fn new(prefix: String, max_keys: u32, columns: Vec<u64>) -> BudgetTable {
        let mut columns = columns;
        columns.truncate(MAX_CELLS);
        BudgetTable {
            table: Table::new(prefix, max_keys, columns.len(), BUDGET_SET_TAG),
            columns,
        }
    }

    /// Number of sets (= shared-data keys this table will ever create).
    pub fn sets(&self) -> u32 {
        self.table.sets()
    }

    /// Bytes of one set's value.
    pub fn set_bytes(&self) -> usize {
        budget_set_len(self.columns.len().max(1))
    }

    /// How many budgets a caller's way holds.
    pub fn columns(&self) -> usize {
        self.columns.len()
    }

    /// The store key of set `set`.
    pub fn key(&self, set: u32) -> String {
        self.table.key(set)
    }

    fn empty(&self) -> BudgetSetValue<Vec<u8>> {
        BudgetSetValue::empty(self.table.tag, &self.columns)
    }

    /// Reads a stored value as this table's set. A value of no budget set's length or of
    /// another set count reads as empty; one written for other budgets keeps the columns of the
    /// budgets still here, each where this table has it, and leaves new ones full.
    pub fn read(&self, bytes: Vec<u8>) -> BudgetSetValue<Vec<u8>> {
        let Some(stored) = columns_in(bytes.len())
            .and_then(|n| BudgetSetValue::new_checked(bytes, n).ok())
            .filter(|v| v.ways().tag() == self.table.tag)
        else {
            return self.empty();
        };
        let same = stored.columns() == self.columns.len()
            && self
                .columns
                .iter()
                .enumerate()
                .all(|(c, t)| stored.column_tag(c) == *t);
        if same {
            return stored;
        }
        let from: Vec<Option<usize>> = self
            .columns
            .iter()
            .map(|t| (0..stored.columns()).find(|&j| stored.column_tag(j) == *t))
            .collect();
        let mut set = self.empty();
        let old = stored.ways();
        for way in Way::all() {
            let owner = old.fingerprint(way);
            if owner == 0 {
                continue;
            }
            let mut states = [Tat::default(); MAX_CELLS];
            for (state, j) in states.iter_mut().zip(&from) {
                *state = j.map_or(Tat::default(), |j| old.cell(way, j));
            }
            set.ways_mut()
                .set_way(way, owner, states.get(..self.columns.len()).unwrap_or(&[]));
        }
        set
    }

    /// Creates every set that does not exist yet (see [`Table::init`]). Returns how many.
    pub fn init<S: Store>(&self, store: &mut S) -> Result<u32, StoreError> {
        let empty = self.empty().into_inner();
        let mut created = 0;
        for set in 0..self.sets() {
            let key = self.key(set);
            if store.get(&key)?.is_none() {
                store.set(&key, &empty, None)?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// Reads the caller's budgets (one state per column), lets `decide` choose, and writes the
    /// result with CAS, retrying on conflict: one `get` and at most one `set` per attempt,
    /// whatever the number of budgets. `is_idle` says whether a way's states are all full.
    pub fn update<S, T>(
        &self,
        store: &mut S,
        slot: Slot,
        is_idle: impl Fn(&[Tat]) -> bool,
        decide: impl FnMut(&[Tat], Placement) -> Update<T>,
    ) -> Result<(T, Placement), TableError>
    where
        S: Store,
    {
        self.update_from(store, slot, None, is_idle, decide)
            .map(|(out, placement, _)| (out, placement))
    }

    /// As [`update`](Self::update), starting from `seen` (this set's value as an earlier pass
    /// of the same call read it) instead of a `get`, and returning the value it read when it
    /// wrote nothing (for a later pass to start from).
    ///
    /// Starting from `seen` never decides on stale data: a write made from it is a CAS write
    /// with the CAS it was read with, which fails if anyone wrote the set since (the set is then
    /// read afresh and decided again, as after any lost race); and a decision that would write
    /// nothing, which no CAS checks, is not taken from it but made again on a fresh read. So
    /// the outcome is the one a fresh `get` would give, one `get` fewer when nobody wrote in
    /// between. A `seen` of another set is ignored. The attempt made from `seen` counts as one
    /// of the [`MAX_ATTEMPTS`] when it tries a write.
    pub fn update_from<S, T>(
        &self,
        store: &mut S,
        slot: Slot,
        seen: Option<Seen>,
        is_idle: impl Fn(&[Tat]) -> bool,
        mut decide: impl FnMut(&[Tat], Placement) -> Update<T>,
    ) -> Result<(T, Placement, Option<Seen>), TableError>
    where
        S: Store,
    {
        let key = self.key(slot.set);
        let n = self.columns.len();
        let mut seen = seen.filter(|s| s.set == slot.set);
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            let known = seen.take();
            let from_seen = known.is_some();
            let (mut set, cas) = match known {
                Some(Seen { bytes, cas, .. }) => (self.read(bytes), Some(cas)),
                None => match store.get(&key) {
                    Ok(Some((bytes, cas))) => (self.read(bytes), cas),
                    Ok(None) => (self.empty(), None),
                    Err(StoreError::CasMismatch) => {
                        attempts += 1;
                        continue;
                    }
                    Err(StoreError::Unavailable) => return Err(TableError::Unavailable),
                },
            };
            let mut current = [Tat::default(); MAX_CELLS];
            let (way, placement) = place(&set.ways(), slot.fingerprint, &is_idle, &mut current);
            if placement == Placement::Fresh {
                current.fill(Tat::default());
            }
            if placement != Placement::Fresh {
                set.ways().cells_into(way, &mut current);
            }
            let (listed, cells, out);
            let states: &[Tat] = match decide(current.get(..n).unwrap_or(&[]), placement) {
                // Nothing to write, so no CAS to check the value read earlier: read afresh.
                Update::Keep(_) if from_seen => continue,
                Update::Keep(out) => {
                    let seen = cas.map(|cas| Seen {
                        set: slot.set,
                        bytes: set.into_inner(),
                        cas,
                    });
                    return Ok((out, placement, seen));
                }
                Update::Write(states, o) => {
                    out = o;
                    listed = states;
                    &listed
                }
                Update::WriteCells(states, o) => {
                    out = o;
                    cells = states;
                    cells.get(..n).unwrap_or(&cells)
                }
                // `decide` was given the states unchanged here: it wrote none of them.
                Update::WriteInPlace(o) => {
                    out = o;
                    current.get(..n).unwrap_or(&[])
                }
            };
            let owner = match placement {
                Placement::Shared => set.ways().fingerprint(way),
                _ => slot.fingerprint,
            };
            set.ways_mut().set_way(way, owner, states);
            attempts += 1;
            match store.set(&key, set.into_inner().as_slice(), cas) {
                Ok(()) => return Ok((out, placement, None)),
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Unavailable) => return Err(TableError::Unavailable),
            }
        }
        Err(TableError::Contended)
    }
}

/// A budget set's value as one pass read it, with its CAS token: what a later pass of the same
/// call may start from instead of a `get` (see [`BudgetTable::update_from`]). Kept only for a
/// value that has a CAS (a key that exists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The set (the number in its store key).
    pub set: u32,
    bytes: Vec<u8>,
    cas: Cas,
}

/// A budget's column tag: its name and its rate's tag, so that renaming a budget or changing
/// its rate starts that budget afresh, as a table of its own would.
pub fn column_tag(name: &str, rate_tag: u64) -> u64 {
    Seed([0; 16])
        .slot(&[b"budget", name.as_bytes(), &rate_tag.to_le_bytes()], 1)
        .fingerprint
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::store::{MemoryStore, Versioned};
    use alloc::vec;
    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;

    const A: u64 = 0xA;
    const B: u64 = 0xB;
    const C: u64 = 0xC;

    fn table(columns: &[u64]) -> BudgetTable {
        BudgetTable::new(String::from("b/"), 16, columns.to_vec())
    }

    fn slot(fingerprint: u64) -> Slot {
        Slot {
            set: 0,
            fingerprint,
        }
    }

    /// Writes `states` as the caller's way.
    fn write(t: &BudgetTable, s: &mut impl Store, fp: u64, states: &[u128]) -> Placement {
        let states: Vec<Tat> = states.iter().map(|&v| Tat(v)).collect();
        t.update(
            s,
            slot(fp),
            |_| false,
            |_, _| Update::Write(states.clone(), ()),
        )
        .unwrap()
        .1
    }

    /// The caller's states as stored (without writing).
    fn read(t: &BudgetTable, s: &mut impl Store, fp: u64) -> Vec<u128> {
        t.update(
            s,
            slot(fp),
            |_| false,
            |c, _| Update::Keep(c.iter().map(|t| t.0).collect()),
        )
        .unwrap()
        .0
    }

    #[test]
    fn lengths_follow_the_layout() {
        assert_eq!(budget_set_len(1), set_len(1) + 8);
        assert_eq!(budget_set_len(2), 8 + 8 * (8 + 2 * 16) + 2 * 8);
        for n in 1..=MAX_CELLS {
            assert_eq!(columns_in(budget_set_len(n)), Some(n));
            assert_eq!(columns_in(budget_set_len(n) + 1), None);
        }
        assert_eq!(columns_in(0), None);
        assert!(BudgetSetValue::new_checked(vec![0u8; budget_set_len(2)], 3).is_err());
        assert!(BudgetSetValue::new_checked(vec![0u8; budget_set_len(2)], 2).is_ok());
    }

    #[test]
    fn column_tags_follow_the_ways() {
        let mut v = BudgetSetValue::empty(7, &[A, B]);
        let way = Way::for_fingerprint(3);
        v.ways_mut().set_way(way, 3, &[Tat(5), Tat(6)]);
        let bytes = v.clone().into_inner();
        let tags = set_len(2);
        assert_eq!(bytes[..8], 7u64.to_le_bytes());
        assert_eq!(bytes[tags..tags + 8], A.to_le_bytes());
        assert_eq!(bytes[tags + 8..], B.to_le_bytes());
        assert_eq!(v.column_tag(1), B);
        assert_eq!(v.column_tag(2), 0, "past the last column");
        assert_eq!(v.ways().cell(way, 1), Tat(6));
        v.set_column_tag(5, 9);
        assert_eq!(
            v.into_inner(),
            bytes,
            "a column past the last is not written"
        );
    }

    #[test]
    fn a_callers_budgets_are_one_read_and_one_write() {
        let t = table(&[A, B, C]);
        let mut s = Counting::new();
        t.init(&mut s.store).unwrap();
        assert_eq!(write(&t, &mut s, 42, &[1, 2, 3]), Placement::Fresh);
        assert_eq!((s.gets, s.sets), (1, 1));
        assert_eq!(read(&t, &mut s, 42), [1, 2, 3]);
        assert_eq!((s.gets, s.sets), (2, 1));
        assert_eq!(
            s.store.len(),
            2,
            "16 callers: 2 sets, whatever the number of budgets"
        );
    }

    #[test]
    fn budgets_of_a_set_are_independent() {
        let t = table(&[A, B]);
        let mut s = MemoryStore::new();
        write(&t, &mut s, 1, &[10, 20]);
        write(&t, &mut s, 2, &[30, 40]);
        // Change one budget of caller 1: its other budget and caller 2's stay.
        t.update(
            &mut s,
            slot(1),
            |_| false,
            |c, _| Update::Write(vec![c[0], Tat(99)], ()),
        )
        .unwrap();
        assert_eq!(read(&t, &mut s, 1), [10, 99]);
        assert_eq!(read(&t, &mut s, 2), [30, 40]);
    }

    #[test]
    fn another_budget_list_keeps_each_budget_still_there() {
        let mut s = MemoryStore::new();
        let old = table(&[A, B]);
        write(&old, &mut s, 1, &[10, 20]);
        // B moved first, A was removed, C is new.
        let new = table(&[B, C]);
        assert_eq!(read(&new, &mut s, 1), [20, 0]);
        write(&new, &mut s, 1, &[21, 31]);
        // Back to the old list: A's column was dropped with the rewrite, B's is kept.
        assert_eq!(read(&old, &mut s, 1), [0, 21]);
        // A budget whose tag is not stored (new, renamed, another rate) starts full; the
        // others keep theirs.
        let edited = table(&[A, C]);
        assert_eq!(read(&edited, &mut s, 1), [0, 31]);
        let kept = table(&[B, C]);
        write(&kept, &mut s, 1, &[22, 32]);
        let more = table(&[C, A, B]);
        assert_eq!(read(&more, &mut s, 1), [32, 0, 22]);
    }

    #[test]
    fn a_value_of_another_size_or_kind_reads_as_empty() {
        let mut s = MemoryStore::new();
        let small = table(&[A]);
        write(&small, &mut s, 5, &[7]);
        let bigger = BudgetTable::new(String::from("b/"), 64, vec![A]);
        assert_eq!(read(&bigger, &mut s, 5), [0], "another set count");
        // A request table's value under the same key is not a budget set.
        let requests = Table::new(String::from("b/"), 16, 1, 1);
        requests.init(&mut s).unwrap();
        s.set("b/0", &vec![0xFF; set_len(1)], None).unwrap();
        assert_eq!(read(&small, &mut s, 5), [0]);
        s.set("b/0", b"torn", None).unwrap();
        assert_eq!(read(&small, &mut s, 5), [0]);
    }

    #[test]
    fn active_ways_are_kept_and_idle_ones_reclaimed() {
        let t = table(&[A, B]);
        let mut s = MemoryStore::new();
        for fp in 1..=8 {
            write(&t, &mut s, fp, &[100, 0]);
        }
        let idle_at = |now: u128| move |c: &[Tat]| c.iter().all(|t| t.0 <= now);
        let touch = |s: &mut MemoryStore, fp: u64, now: u128| {
            t.update(s, slot(fp), idle_at(now), |c, _| {
                Update::Write(c.to_vec(), ())
            })
            .unwrap()
            .1
        };
        assert_eq!(
            touch(&mut s, 99, 50),
            Placement::Shared,
            "one budget still in use"
        );
        assert_eq!(touch(&mut s, 99, 100), Placement::Fresh, "all full again");
    }

    /// A store that counts calls and fails the next `conflicts` writes with a CAS mismatch.
    struct Counting {
        store: MemoryStore,
        gets: u32,
        sets: u32,
        conflicts: u32,
    }

    impl Counting {
        fn new() -> Counting {
            Counting {
                store: MemoryStore::new(),
                gets: 0,
                sets: 0,
                conflicts: 0,
            }
        }
    }

    impl Store for Counting {
        fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
            self.gets += 1;
            self.store.get(key)
        }
        fn set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<crate::Cas>,
        ) -> Result<(), StoreError> {
            self.sets += 1;
            if self.conflicts > 0 {
                self.conflicts -= 1;
                // Another worker wrote in between: its write lands, ours is refused.
                let (bytes, _) = self.store.get(key)?.unwrap_or_default();
                self.store.set(key, &bytes, None)?;
                return Err(StoreError::CasMismatch);
            }
            self.store.set(key, value, cas)
        }
    }

    #[test]
    fn a_conflict_is_retried_on_a_fresh_read_then_reported() {
        let t = table(&[A, B]);
        let mut s = Counting::new();
        t.init(&mut s.store).unwrap();
        write(&t, &mut s, 1, &[10, 20]);
        s.conflicts = 3;
        let mut seen = Vec::new();
        t.update(
            &mut s,
            slot(1),
            |_| false,
            |c, _| {
                seen.push(c[1].0);
                Update::Write(vec![c[0], Tat(c[1].0 + 1)], ())
            },
        )
        .unwrap();
        assert_eq!(seen, [20, 20, 20, 20], "decided again on each attempt");
        assert_eq!(read(&t, &mut s, 1), [10, 21], "written once");
        s.conflicts = u32::MAX;
        let r = t.update(
            &mut s,
            slot(1),
            |_| false,
            |c, _| Update::Write(c.to_vec(), ()),
        );
        assert_eq!(r, Err(TableError::Contended));
    }

    /// What a pass that wrote nothing read, for [`BudgetTable::update_from`].
    fn peek(t: &BudgetTable, s: &mut impl Store, fp: u64) -> Option<Seen> {
        t.update_from(s, slot(fp), None, |_| false, |_, _| Update::Keep(()))
            .unwrap()
            .2
    }

    /// Adds 1 to the caller's second budget, starting from `seen`; returns the states decided on.
    fn bump(t: &BudgetTable, s: &mut impl Store, fp: u64, seen: Option<Seen>) -> Vec<Vec<u128>> {
        let mut decided = Vec::new();
        t.update_from(
            s,
            slot(fp),
            seen,
            |_| false,
            |c, _| {
                decided.push(c.iter().map(|t| t.0).collect());
                Update::Write(vec![c[0], Tat(c[1].0 + 1)], ())
            },
        )
        .unwrap();
        decided
    }

    #[test]
    fn a_write_from_a_value_read_earlier_needs_no_second_read() {
        let t = table(&[A, B]);
        let mut s = Counting::new();
        t.init(&mut s.store).unwrap();
        write(&t, &mut s, 1, &[10, 20]);
        let seen = peek(&t, &mut s, 1);
        assert!(seen.is_some());
        let (gets, sets) = (s.gets, s.sets);
        assert_eq!(bump(&t, &mut s, 1, seen), [vec![10, 20]]);
        assert_eq!((s.gets - gets, s.sets - sets), (0, 1), "the CAS write only");
        assert_eq!(read(&t, &mut s, 1), [10, 21]);
    }

    #[test]
    fn a_value_written_since_it_was_read_is_read_again_before_deciding() {
        let t = table(&[A, B]);
        let mut s = Counting::new();
        t.init(&mut s.store).unwrap();
        write(&t, &mut s, 1, &[10, 20]);
        let seen = peek(&t, &mut s, 1);
        // Another worker writes the set in between (the same caller's budgets, or another's).
        write(&t, &mut s, 1, &[10, 30]);
        let (gets, sets) = (s.gets, s.sets);
        assert_eq!(
            bump(&t, &mut s, 1, seen),
            [vec![10, 20], vec![10, 30]],
            "the stale value's write lost its CAS; decided again on the fresh one"
        );
        assert_eq!((s.gets - gets, s.sets - sets), (1, 2));
        assert_eq!(
            read(&t, &mut s, 1),
            [10, 31],
            "nothing of the stale value landed"
        );
        // A first write that loses its race counts as one of the attempts.
        let seen = peek(&t, &mut s, 1);
        s.conflicts = MAX_ATTEMPTS;
        let r = t.update_from(
            &mut s,
            slot(1),
            seen,
            |_| false,
            |c, _| Update::Write(c.to_vec(), ()),
        );
        assert_eq!(r.map(|(o, _, _)| o), Err(TableError::Contended));
        assert_eq!(
            s.conflicts, 0,
            "as many attempts as without a value read earlier"
        );
    }

    #[test]
    fn a_decision_that_writes_nothing_is_never_taken_from_a_value_read_earlier() {
        let t = table(&[A, B]);
        let mut s = Counting::new();
        t.init(&mut s.store).unwrap();
        write(&t, &mut s, 1, &[10, 20]);
        let seen = peek(&t, &mut s, 1);
        write(&t, &mut s, 1, &[10, 25]);
        let gets = s.gets;
        let mut decided = Vec::new();
        let (states, _, again) = t
            .update_from(
                &mut s,
                slot(1),
                seen,
                |_| false,
                |c, _| {
                    decided.push(c[1].0);
                    Update::Keep(c[1].0)
                },
            )
            .unwrap();
        assert_eq!(decided, [20, 25], "no CAS checks a kept value: read afresh");
        assert_eq!(states, 25);
        assert_eq!(s.gets - gets, 1);
        assert!(again.is_some(), "the fresh value, for a later pass");
    }

    #[test]
    fn a_value_of_another_set_is_not_used() {
        let t = table(&[A, B]);
        let mut s = Counting::new();
        t.init(&mut s.store).unwrap();
        let other = Slot {
            set: 1,
            fingerprint: 7,
        };
        write(&t, &mut s, 1, &[10, 20]);
        let seen = t
            .update_from(&mut s, other, None, |_| false, |_, _| Update::Keep(()))
            .unwrap()
            .2;
        assert_eq!(seen.as_ref().map(|s| s.set), Some(1));
        let gets = s.gets;
        assert_eq!(bump(&t, &mut s, 1, seen), [vec![10, 20]]);
        assert_eq!(s.gets - gets, 1, "set 0 read for itself");
    }

    #[test]
    fn a_key_never_written_leaves_nothing_to_start_from() {
        let t = table(&[A, B]);
        let mut s = Counting::new();
        assert_eq!(peek(&t, &mut s, 1), None, "no CAS to write with");
    }

    // proptest runs natively only (no wasm32 dev-dependency).
    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        /// Up to 8 callers in one set (each owns a way): every caller reads back exactly what
        /// it last wrote, and a table with the budgets in another order reads each budget's
        /// state in its new column.
        #[test]
        fn states_round_trip_and_follow_their_budget(
            columns in 1usize..=MAX_CELLS,
            writes in prop::collection::vec(
                (1u64..=8, prop::collection::vec(any::<u64>(), MAX_CELLS)),
                1..40,
            ),
        ) {
            let tags: Vec<u64> = (1..=columns as u64).collect();
            let t = table(&tags);
            let mut s = MemoryStore::new();
            let mut expect = alloc::collections::BTreeMap::new();
            for (fp, states) in &writes {
                let states: Vec<u128> =
                    states[..columns].iter().map(|&v| u128::from(v) << 32).collect();
                prop_assert_ne!(write(&t, &mut s, *fp, &states), Placement::Shared);
                expect.insert(*fp, states);
            }
            for (fp, states) in &expect {
                prop_assert_eq!(&read(&t, &mut s, *fp), states);
            }
            let reversed = table(&tags.iter().rev().copied().collect::<Vec<_>>());
            for (fp, states) in &expect {
                let mut back = read(&reversed, &mut s, *fp);
                back.reverse();
                prop_assert_eq!(&back, states);
            }
            let (bytes, _) = s.get("b/0").unwrap().unwrap();
            prop_assert_eq!(bytes.len(), budget_set_len(columns));
        }
    }
}
