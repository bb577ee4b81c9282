//! The rate limit descriptors that name one of tollgate's buckets, and the limit they carry.
//!
//! A descriptor names a bucket by its tier, its limit (or token budget) and the caller's
//! fingerprint (`id`, 16 hex digits) — the keyed hash the local table already places the caller
//! with — never by the raw identity: an API key or user id does not leave the Envoy. The hash's
//! seed comes from the policy's `hash_secret`, so every replica running the policy names the same
//! caller the same way.
//!
//! Each descriptor carries its limit (`requests_per_unit` per `unit`), which is part of the
//! service's key: a limit edited in the policy starts a new global bucket, as it starts a new local
//! one. A policy period the protocol's units cannot express (`week`) is carried as the same rate
//! in another unit when that is exact (7,000 per week is 1,000 per day: one cell every 86.4 s
//! either way, the same GCRA bucket); a rate that no unit expresses exactly is refused for global
//! tiers when the policy is loaded ([`limit_of`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::bucket::Rate;
use crate::global::calendar as global_calendar;
use crate::global::proto::{Entry, RateLimitDescriptor, RateLimitOverride, UInt64Value};
use crate::global::scoped;
use crate::hash::Slot;
use crate::policy::Policy;
use crate::time::Nanos;

/// Entry keys tollgate-sync reads as parameters rather than as part of the key.
pub const OP: &str = "tollgate.op";
/// See [`OP`].
pub const BURST: &str = "tollgate.burst";
/// See [`OP`].
pub const REFUND: &str = "tollgate.refund";
/// The id of a sync round (on the request's first descriptor): `tollgate-sync` applies a round id
/// once, so a round resent after a timeout whose first attempt Redis did execute counts once.
pub const ROUND: &str = "tollgate.round";

/// A unit of `envoy.type.v3.RateLimitUnit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 1 h.
    Hour,
    /// 24 h.
    Day,
    /// 30 days, as tollgate's `month` (and tollgate-sync's MONTH).
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Every unit, shortest first.
    pub const ALL: [Unit; 6] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Month,
        Unit::Year,
    ];

    /// Its length.
    pub fn period(self) -> Nanos {
        const DAY: u64 = 86_400;
        Nanos::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        })
    }

    /// The unit with this value on the wire; `None` for `UNKNOWN` (0) and values past `YEAR`.
    pub fn from_wire(value: i32) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.to_wire() == value)
    }

    /// Its value on the wire (`envoy.type.v3.RateLimitUnit`).
    pub fn to_wire(self) -> i32 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 2,
            Unit::Hour => 3,
            Unit::Day => 4,
            Unit::Month => 5,
            Unit::Year => 6,
        }
    }
}

/// The `limit` a descriptor carries for `rate`: its own period when that is a unit, else the
/// first unit in which the same rate is a whole number of cells (up to `u32::MAX`, the
/// protocol's field). `None` when no unit expresses it exactly.
pub fn limit_of(rate: &Rate) -> Option<(u32, Unit)> {
    let exact = Unit::ALL.into_iter().find(|u| u.period() == rate.period());
    exact
        .into_iter()
        .chain(Unit::ALL)
        .find_map(|unit| per_unit(rate, unit).map(|n| (n, unit)))
}

fn per_unit(rate: &Rate, unit: Unit) -> Option<u32> {
    let scaled = u128::from(rate.amount()) * u128::from(unit.period().0);
    let period = u128::from(rate.period().0);
    if scaled % period != 0 {
        return None;
    }
    u32::try_from(scaled / period).ok().filter(|n| *n > 0)
}

/// Which table of a tier a bucket lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableId {
    /// The tier's request limits (one cell per limit that has no scope of its own).
    Limits,
    /// The table of the tier's request limit of this index, which counts against a scope of its
    /// own (one cell; see [`crate::global::scoped`]).
    ScopedLimit(u8),
    /// The tier's token budget of this index (one cell).
    Budget(u8),
}

/// One caller's buckets in one table: what a delta is recorded against and what an answer is
/// folded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketKey {
    /// The tier's index in the policy.
    pub tier: u16,
    /// Which of its tables.
    pub table: TableId,
    /// The caller's set in that table.
    pub set: u32,
    /// The caller's fingerprint (the descriptor's `id`).
    pub fingerprint: u64,
}

impl BucketKey {
    /// The key of a caller's slot in a tier's table.
    pub fn new(tier: usize, table: TableId, slot: Slot) -> BucketKey {
        BucketKey {
            tier: u16::try_from(tier).unwrap_or(u16::MAX),
            table,
            set: slot.set,
            fingerprint: slot.fingerprint,
        }
    }

    /// The key of `identity`'s request limits in tier number `tier` of `policy` (the slot
    /// [`Policy::check`] decided in).
    pub fn limits(policy: &Policy, tier: usize, identity: &[u8]) -> Option<BucketKey> {
        let t = policy.tiers().get(tier)?;
        let slot = policy
            .seed()
            .slot(&[t.name.as_bytes(), identity], t.table.sets());
        Some(BucketKey::new(tier, TableId::Limits, slot))
    }

    /// The key of `identity`'s token budget number `budget` of tier number `tier`, for `model`
    /// (the slot the budget's admission and settlement used: its budget set's).
    pub fn budget(
        policy: &Policy,
        tier: usize,
        budget: usize,
        identity: &[u8],
        model: Option<&str>,
    ) -> Option<BucketKey> {
        let t = policy.tiers().get(tier)?;
        let (set, _) = t.budget_set(budget)?;
        let slot = set.slot(policy.seed(), &t.name, identity, model);
        Some(BucketKey::new(
            tier,
            TableId::Budget(u8::try_from(budget).ok()?),
            slot,
        ))
    }

    /// The slot in its table.
    pub fn slot(&self) -> Slot {
        Slot {
            set: self.set,
            fingerprint: self.fingerprint,
        }
    }
}

/// What a descriptor asks the service to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Plain RLS semantics: add the cost if it fits (strict mode).
    Check,
    /// The cost was admitted locally already: add it unconditionally (sync mode).
    Sync,
}

/// One descriptor of a bucket, and which cell of the key's way it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// The cell (the limit's index; 0 for a budget).
    pub cell: usize,
    /// The bucket's rate (for folding the answer).
    pub rate: Rate,
    /// The descriptor.
    pub descriptor: RateLimitDescriptor,
}

/// The descriptors of `key`'s buckets under `policy`, each costing `hits`: one per limit of a
/// tier's request table (a scoped limit's table: its one limit, with a `scope` entry), one for a
/// token budget (with a `scope` entry when the budget is scoped). Empty when the policy has no
/// such tier or table (a key recorded under an earlier policy) or when a rate has no exact unit
/// (refused at load for global tiers, so only for a tier that is not global).
pub fn describe(policy: &Policy, key: &BucketKey, op: Op, hits: u64) -> Vec<Described> {
    let Some(tier) = policy.tiers().get(usize::from(key.tier)) else {
        return Vec::new();
    };
    let id = hex(key.fingerprint);
    let scope = scoped::scope_label(tier, key.table);
    let named: Vec<(&str, &str, &Rate)> = match key.table {
        TableId::Limits | TableId::ScopedLimit(_) => scoped::table_limits(tier, key.table)
            .into_iter()
            .filter_map(|i| tier.limits.get(i))
            .map(|l| ("limit", l.name.as_str(), &l.rate))
            .collect(),
        TableId::Budget(b) => tier
            .budgets
            .get(usize::from(b))
            .map(|b| ("budget", b.name.as_str(), &b.rate))
            .into_iter()
            .collect(),
    };
    named
        .into_iter()
        .enumerate()
        .filter_map(|(cell, (kind, name, rate))| {
            let mut entries = alloc::vec![entry("tier", &tier.name), entry(kind, name)];
            if let Some(label) = scope {
                // Part of the key: a scope's bucket is never a user's, whatever the names.
                entries.push(entry("scope", label));
            }
            entries.push(entry("id", &id));
            let (requests_per_unit, unit) = match rate.calendar_of() {
                Some(calendar) => {
                    entries.extend(global_calendar::entries(&calendar));
                    global_calendar::limit(rate)?
                }
                None => limit_of(rate)?,
            };
            if rate.calendar_of().is_none() && rate_burst_differs(rate, requests_per_unit) {
                entries.push(entry(BURST, &rate.burst().to_string()));
            }
            if op == Op::Sync {
                entries.push(entry(OP, "sync"));
            }
            Some(Described {
                cell,
                rate: *rate,
                descriptor: RateLimitDescriptor {
                    entries,
                    limit: Some(RateLimitOverride {
                        requests_per_unit,
                        unit: unit.to_wire(),
                    }),
                    hits_addend: Some(UInt64Value { value: hits }),
                },
            })
        })
        .collect()
}

/// The largest `tollgate.refund` tollgate-sync accepts (2^40 cells): a larger one, sent in one
/// round, would be refused with the whole round and resent forever. Giving back less than was
/// reserved is stricter, never looser.
pub const MAX_REFUND: u64 = 1 << 40;

/// Adds `tollgate.refund` = `refund` (at most [`MAX_REFUND`]) to `descriptor`: the service gives
/// back that many cells of an earlier reservation before it adds the descriptor's hits. Nothing
/// for 0.
pub fn with_refund(descriptor: &mut RateLimitDescriptor, refund: u64) {
    if refund > 0 {
        let refund = refund.min(MAX_REFUND);
        descriptor.entries.push(entry(REFUND, &refund.to_string()));
    }
}

/// The service's default burst is `requests_per_unit`; say it only when it is not the rate's.
fn rate_burst_differs(rate: &Rate, requests_per_unit: u32) -> bool {
    rate.burst() != u64::from(requests_per_unit)
}

fn entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.into(),
        value: value.into(),
    }
}

/// 16 lowercase hex digits.
pub fn hex(fingerprint: u64) -> String {
    alloc::format!("{fingerprint:016x}")
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn rate(amount: u64, secs: u64, burst: u64) -> Rate {
        Rate::new(amount, Nanos::from_secs(secs), burst).unwrap()
    }

    #[test]
    fn a_unit_period_is_kept() {
        assert_eq!(limit_of(&rate(100, 60, 100)), Some((100, Unit::Minute)));
        assert_eq!(limit_of(&rate(5, 30 * 86_400, 5)), Some((5, Unit::Month)));
    }

    #[test]
    fn a_week_becomes_the_same_rate_per_day_or_is_not_expressible() {
        assert_eq!(
            limit_of(&rate(7_000, 7 * 86_400, 7_000)),
            Some((1_000, Unit::Day))
        );
        // 1,000 per week is 1,000 / 7 per day, 30,000 / 7 per month, 365,000 / 7 per year.
        assert_eq!(limit_of(&rate(1_000, 7 * 86_400, 1_000)), None);
    }

    #[test]
    fn a_rate_above_the_protocols_u32_uses_a_shorter_exact_unit_or_none() {
        let per_hour = 3_600 * (1 << 21); // 7.5e9 per hour does not fit a u32
        assert_eq!(
            limit_of(&rate(per_hour, 3_600, per_hour)),
            Some((1 << 21, Unit::Second))
        );
        let huge = 1 << 40; // 2^40 per second: no unit holds it
        assert_eq!(limit_of(&rate(huge, 1, huge)), None);
    }

    #[test]
    fn hex_is_sixteen_lowercase_digits() {
        assert_eq!(hex(0xab), "00000000000000ab");
        assert_eq!(hex(u64::MAX), "ffffffffffffffff");
    }
}
