//! What one batch does to its buckets, as a pure function over policy-core's GCRA.
//!
//! The Lua script in [`crate::store::SCRIPT`] executes exactly this inside Redis (Redis's Lua has only
//! doubles, so it carries the same scaled integers as decimal limbs); the service replays every
//! batch through this model from the values the script read and compares, and the integration
//! tests run random batches through both. So the arithmetic has one definition —
//! `policy_core::bucket::Rate` — and the script is checked against it, not trusted.
//!
//! Semantics of a batch, in order of the descriptors:
//! 1. `tollgate.refund` gives back its cells first (never fuller than full).
//! 2. `op=sync` adds its cost unconditionally, into debt if need be.
//! 3. `op=check` adds its cost if it fits. If any check in the batch does not fit, **no** check in
//!    the batch adds anything (all or nothing, as Limitador does, so a request refused by its
//!    token budget does not also spend its request limit); refunds and syncs still apply.
//!
//! Descriptors naming the same key see each other's effects, in order.
//!
//! A calendar quota's state is the count of cells used in the period containing `now` (its key
//! names the period: an earlier period's count is another key), so its "TAT" here is that count;
//! it runs through policy-core's quota arithmetic in the layout the local table keeps it in
//! (period start in the high 64 bits, the count in the low ones).

use std::collections::HashMap;

use policy_core::bucket::{Rate, Tat};
use policy_core::Nanos;

use crate::descriptor::{Bucket, Op};

/// What happened to one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `false` only for a check that did not fit (the descriptor's code is `OVER_LIMIT`).
    pub fits: bool,
    /// The bucket's state right after this descriptor, as stored.
    pub tat: Tat,
}

/// Runs a batch at `now` from the states in `before` (absent keys are full buckets), returning
/// each descriptor's outcome; the last outcome per key is what ends up stored.
pub fn apply(now: Nanos, buckets: &[Bucket], before: &HashMap<&str, Tat>) -> Vec<Outcome> {
    let trial = run(now, buckets, before, true);
    if trial.iter().all(|o| o.fits) {
        return trial;
    }
    let mut outcomes = run(now, buckets, before, false);
    for (outcome, tried) in outcomes.iter_mut().zip(&trial) {
        outcome.fits = tried.fits;
    }
    outcomes
}

fn run(
    now: Nanos,
    buckets: &[Bucket],
    before: &HashMap<&str, Tat>,
    charge_checks: bool,
) -> Vec<Outcome> {
    let mut state: HashMap<&str, Tat> = HashMap::new();
    buckets
        .iter()
        .map(|b| {
            let current = state
                .get(b.key.as_str())
                .or_else(|| before.get(b.key.as_str()))
                .copied()
                .unwrap_or_default();
            let (current, unpack) = match b.calendar {
                Some(calendar) => (quota_state(calendar.start(now), current), true),
                None => (current, false),
            };
            let tat = normalize(&b.rate, b.rate.refund(current, b.refund), now);
            let (fits, tat) = match b.op {
                Op::Sync => (true, b.rate.charge(tat, now, b.cost)),
                Op::Check => {
                    let c = b.rate.check(tat, now, b.cost);
                    let tat = if c.allowed && charge_checks {
                        c.tat
                    } else {
                        tat
                    };
                    (c.allowed, tat)
                }
            };
            let tat = normalize(&b.rate, tat, now);
            let tat = if unpack {
                Tat(tat.0 & u128::from(u64::MAX))
            } else {
                tat
            };
            state.insert(b.key.as_str(), tat);
            Outcome { fits, tat }
        })
        .collect()
}

/// A quota's count `used` in the period starting at `start`, as policy-core's quota reads it.
fn quota_state(start: Nanos, used: Tat) -> Tat {
    let used = u64::try_from(used.0).unwrap_or(u64::MAX);
    Tat((u128::from(start.0) << 64) | u128::from(used))
}

/// A full bucket is stored as no key at all, so every full state is the same state: zero.
pub fn normalize(rate: &Rate, tat: Tat, now: Nanos) -> Tat {
    if rate.is_full(tat, now) {
        Tat::default()
    } else {
        tat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::Unit;

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    fn bucket(key: &str, op: Op, cost: u64, refund: u64) -> Bucket {
        Bucket {
            key: key.into(),
            calendar: None,
            rate: Rate::new(10, Nanos::SECOND, 10).unwrap(),
            requests_per_unit: 10,
            unit: Unit::Second,
            op,
            cost,
            refund,
        }
    }

    #[test]
    fn checks_are_all_or_nothing_while_syncs_and_refunds_always_apply() {
        let rate = Rate::new(10, Nanos::SECOND, 10).unwrap();
        let full_b = rate.charge(Tat::default(), T0, 10);
        let used_c = rate.charge(Tat::default(), T0, 5);
        let before = HashMap::from([("b", full_b), ("c", used_c)]);
        let batch = [
            bucket("a", Op::Check, 1, 0),
            bucket("b", Op::Check, 1, 0),
            bucket("c", Op::Sync, 2, 0),
            bucket("c", Op::Check, 1, 3),
        ];
        let out = apply(T0, &batch, &before);
        assert_eq!(
            out.iter().map(|o| o.fits).collect::<Vec<_>>(),
            [true, false, true, true]
        );
        assert_eq!(
            out[0].tat,
            Tat::default(),
            "a fitted but b did not: a adds nothing"
        );
        assert_eq!(out[1].tat, full_b);
        assert_eq!(out[2].tat, rate.charge(used_c, T0, 2));
        assert_eq!(
            out[3].tat,
            rate.refund(rate.charge(used_c, T0, 2), 3),
            "refund applied, check not"
        );
    }

    #[test]
    fn when_every_check_fits_each_adds_in_order() {
        let rate = Rate::new(10, Nanos::SECOND, 10).unwrap();
        let batch = [
            bucket("a", Op::Check, 4, 0),
            bucket("a", Op::Check, 6, 0),
            bucket("a", Op::Sync, 3, 0),
        ];
        let out = apply(T0, &batch, &HashMap::new());
        assert!(out.iter().all(|o| o.fits));
        assert_eq!(out[2].tat, rate.charge(Tat::default(), T0, 13));
        assert_eq!(rate.peek(out[2].tat, T0).remaining, 0);
    }

    #[test]
    fn a_refund_to_full_stores_nothing() {
        let rate = Rate::new(10, Nanos::SECOND, 10).unwrap();
        let before = HashMap::from([("a", rate.charge(Tat::default(), T0, 2))]);
        let out = apply(T0, &[bucket("a", Op::Check, 0, 5)], &before);
        assert_eq!(
            out[0],
            Outcome {
                fits: true,
                tat: Tat::default()
            }
        );
    }
}
