//! The cells admitted locally and not yet sent: per bucket, bounded, mergeable, and encodable as
//! one shared-queue message.
//!
//! Each worker records what it admitted here (one map update on the request path, no host call);
//! on its tick it encodes its ledger as one message on the Envoy process's shared queue; the
//! worker holding the lease merges every message into its own ledger and sends it. A round that
//! fails puts its batch back ([`Ledger::restore`]) and is resent verbatim with its round id
//! (`tollgate.round`), which the service applies once: a round that timed out after Redis
//! applied it is not counted again (for ten minutes, how long the service remembers an id).
//!
//! Memory is bounded by `max_pending_keys`: a delta for a bucket that is not pending yet, when
//! the ledger is full, is dropped and counted ([`Ledger::take_dropped`]); deltas for pending
//! buckets always add up.
//!
//! A delta may also give cells back ([`Delta::refund`]): strict mode's token budgets reserve an
//! estimate with the service at admission and send the correction at settlement through the
//! same rounds (`tollgate.refund` = the reservation, `hits_addend` = the real charge).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use crate::global::descriptor::{BucketKey, TableId};

/// What one bucket is owed: cells to give back first, then cells to add.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Cells admitted (or tokens charged), added unconditionally (`op=sync`).
    pub cells: u64,
    /// Cells of earlier reservations to give back first (`tollgate.refund`).
    pub refund: u64,
}

impl Delta {
    /// `cells` admitted, nothing given back.
    pub fn cells(cells: u64) -> Delta {
        Delta { cells, refund: 0 }
    }

    /// A settlement: `reserved` given back, `charged` added.
    pub fn settlement(reserved: u64, charged: u64) -> Delta {
        Delta {
            cells: charged,
            refund: reserved,
        }
    }

    fn is_empty(&self) -> bool {
        self.cells == 0 && self.refund == 0
    }

    fn add(&mut self, other: Delta) {
        self.cells = self.cells.saturating_add(other.cells);
        self.refund = self.refund.saturating_add(other.refund);
    }
}

/// Deltas per bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    cells: BTreeMap<BucketKey, Delta>,
    max_keys: usize,
    dropped: u64,
}

/// Why a queue message could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a message of this format version.
    Version,
    /// Its length is not a whole number of records.
    Length(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Version => f.write_str("not a tollgate delta message (version byte)"),
            DecodeError::Length(n) => write!(f, "{n} bytes is not a whole number of records"),
        }
    }
}

impl core::error::Error for DecodeError {}

const VERSION: u8 = 2;
/// tier (2) + table (1) + set (4) + fingerprint (8) + cells (8) + refund (8).
const RECORD: usize = 31;
const LIMITS: u8 = 0xff;
/// The table byte of a scoped limit's table: this bit and the limit's index (a tier has at most
/// 8 limits and 8 budgets, so budget indices never set it).
const SCOPED: u8 = 0x80;

impl Ledger {
    /// An empty ledger holding at most `max_keys` buckets.
    pub fn new(max_keys: u32) -> Ledger {
        Ledger {
            cells: BTreeMap::new(),
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            dropped: 0,
        }
    }

    /// Adds `cells` to `key`. `false` when the ledger is full and `key` is not in it: the delta
    /// is dropped (and counted).
    pub fn record(&mut self, key: BucketKey, cells: u64) -> bool {
        self.add(key, Delta::cells(cells))
    }

    /// Adds `delta` to `key` (cells and refund alike). `false` when the ledger is full and
    /// `key` is not in it: the delta is dropped (and counted).
    pub fn add(&mut self, key: BucketKey, delta: Delta) -> bool {
        if delta.is_empty() {
            return true;
        }
        if let Some(pending) = self.cells.get_mut(&key) {
            pending.add(delta);
            return true;
        }
        if self.cells.len() >= self.max_keys {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        self.cells.insert(key, delta);
        true
    }

    /// Adds every entry of `batch` (a decoded message, or a failed round's batch).
    pub fn restore(&mut self, batch: impl IntoIterator<Item = (BucketKey, Delta)>) {
        for (key, delta) in batch {
            self.add(key, delta);
        }
    }

    /// Buckets pending.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Deltas dropped since the last call (each a bucket's delta refused for want of room).
    pub fn take_dropped(&mut self) -> u64 {
        core::mem::take(&mut self.dropped)
    }

    /// Removes and returns up to `max` buckets' deltas, in key order.
    pub fn take(&mut self, max: usize) -> Vec<(BucketKey, Delta)> {
        if max >= self.cells.len() {
            return core::mem::take(&mut self.cells).into_iter().collect();
        }
        let rest = match self.cells.keys().nth(max).copied() {
            Some(first_kept) => self.cells.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        let taken = core::mem::replace(&mut self.cells, rest);
        taken.into_iter().collect()
    }

    /// Removes everything as one queue message (empty when nothing is pending).
    pub fn drain_encoded(&mut self) -> Vec<u8> {
        if self.cells.is_empty() {
            return Vec::new();
        }
        encode(&self.take(usize::MAX))
    }
}

/// One queue message: a version byte, then fixed little-endian records.
pub fn encode(batch: &[(BucketKey, Delta)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + batch.len() * RECORD);
    out.push(VERSION);
    for (key, delta) in batch {
        out.extend_from_slice(&key.tier.to_le_bytes());
        out.push(match key.table {
            TableId::Limits => LIMITS,
            TableId::ScopedLimit(i) => SCOPED | (i & !SCOPED),
            TableId::Budget(b) => b,
        });
        out.extend_from_slice(&key.set.to_le_bytes());
        out.extend_from_slice(&key.fingerprint.to_le_bytes());
        out.extend_from_slice(&delta.cells.to_le_bytes());
        out.extend_from_slice(&delta.refund.to_le_bytes());
    }
    out
}

/// Reads a queue message written by [`encode`] (by any worker of this Envoy: same build, same
/// policy, or the version byte says otherwise).
pub fn decode(bytes: &[u8]) -> Result<Vec<(BucketKey, Delta)>, DecodeError> {
    let Some((&VERSION, records)) = bytes.split_first() else {
        return Err(DecodeError::Version);
    };
    if records.len() % RECORD != 0 {
        return Err(DecodeError::Length(bytes.len()));
    }
    Ok(records
        .chunks_exact(RECORD)
        .map(|r| {
            let mut tier = [0u8; 2];
            let mut set = [0u8; 4];
            let mut fp = [0u8; 8];
            let mut cells = [0u8; 8];
            let mut refund = [0u8; 8];
            let (t, rest) = r.split_at(2);
            let (table, rest) = rest.split_at(1);
            let (s, rest) = rest.split_at(4);
            let (f, rest) = rest.split_at(8);
            let (c, back) = rest.split_at(8);
            tier.copy_from_slice(t);
            set.copy_from_slice(s);
            fp.copy_from_slice(f);
            cells.copy_from_slice(c);
            refund.copy_from_slice(back);
            let table = match table.first().copied().unwrap_or(LIMITS) {
                LIMITS => TableId::Limits,
                b if b & SCOPED != 0 => TableId::ScopedLimit(b & !SCOPED),
                b => TableId::Budget(b),
            };
            let key = BucketKey {
                tier: u16::from_le_bytes(tier),
                table,
                set: u32::from_le_bytes(set),
                fingerprint: u64::from_le_bytes(fp),
            };
            let delta = Delta {
                cells: u64::from_le_bytes(cells),
                refund: u64::from_le_bytes(refund),
            };
            (key, delta)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn key(fingerprint: u64) -> BucketKey {
        BucketKey {
            tier: 3,
            table: TableId::Limits,
            set: 17,
            fingerprint,
        }
    }

    #[test]
    fn deltas_for_one_bucket_add_up_across_workers() {
        let mut a = Ledger::new(10);
        let mut b = Ledger::new(10);
        a.record(key(1), 2);
        a.record(key(1), 3);
        b.record(key(1), 4);
        b.record(key(2), 1);
        let mut leader = Ledger::new(10);
        leader.restore(decode(&a.drain_encoded()).unwrap());
        leader.restore(decode(&b.drain_encoded()).unwrap());
        assert!(a.is_empty() && b.is_empty());
        assert_eq!(
            leader.take(10),
            [(key(1), Delta::cells(9)), (key(2), Delta::cells(1))]
        );
    }

    #[test]
    fn a_full_ledger_drops_new_buckets_and_counts_them_but_keeps_adding_to_pending_ones() {
        let mut l = Ledger::new(2);
        assert!(l.record(key(1), 1));
        assert!(l.record(key(2), 1));
        assert!(!l.record(key(3), 5));
        assert!(l.record(key(1), 1), "a pending bucket still adds up");
        assert_eq!(l.take_dropped(), 1);
        assert_eq!(l.take_dropped(), 0);
        assert_eq!(
            l.take(10),
            [(key(1), Delta::cells(2)), (key(2), Delta::cells(1))]
        );
    }

    #[test]
    fn a_failed_batch_put_back_is_resent_with_what_came_since() {
        let mut l = Ledger::new(10);
        l.record(key(1), 2);
        let batch = l.take(10);
        l.record(key(1), 1);
        l.restore(batch);
        assert_eq!(l.take(10), [(key(1), Delta::cells(3))]);
    }

    #[test]
    fn settlements_add_up_their_refunds_and_charges_and_a_refund_alone_counts() {
        let mut l = Ledger::new(1);
        // Two calls on one budget settled: 500 and 300 reserved, 13 and 0 charged.
        assert!(l.add(key(1), Delta::settlement(500, 13)));
        assert!(l.add(key(1), Delta::settlement(300, 0)));
        assert!(l.record(key(1), 2));
        // Nothing owed: nothing recorded, not even against the bound.
        assert!(l.add(key(2), Delta::default()));
        assert_eq!(
            l.take(10),
            [(
                key(1),
                Delta {
                    cells: 15,
                    refund: 800
                }
            )]
        );
        assert_eq!(l.take_dropped(), 0);
    }

    #[test]
    fn take_stops_at_max_and_leaves_the_rest() {
        let mut l = Ledger::new(10);
        for fp in 1..=5 {
            l.record(key(fp), fp);
        }
        assert_eq!(
            l.take(2),
            [(key(1), Delta::cells(1)), (key(2), Delta::cells(2))]
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l.take(0), []);
        assert_eq!(l.take(3).len(), 3);
        assert!(l.is_empty());
    }

    #[test]
    fn every_field_survives_the_queue_and_bad_messages_are_refused() {
        let batch = [
            (
                BucketKey {
                    tier: u16::MAX,
                    table: TableId::Budget(7),
                    set: u32::MAX,
                    fingerprint: u64::MAX,
                },
                Delta {
                    cells: u64::MAX,
                    refund: u64::MAX - 1,
                },
            ),
            (key(9), Delta::cells(1)),
            (key(10), Delta::settlement(500, 13)),
        ];
        let bytes = encode(&batch);
        assert_eq!(bytes.len(), 1 + 3 * RECORD);
        assert_eq!(decode(&bytes).unwrap(), batch);
        assert_eq!(decode(&[]), Err(DecodeError::Version));
        assert_eq!(decode(&[1]), Err(DecodeError::Version));
        assert_eq!(decode(&bytes[..10]), Err(DecodeError::Length(10)));
        assert_eq!(decode(&[VERSION]).unwrap(), []);
    }
}
