//! Calendar quotas: `amount` per calendar period, no refill within it, full again at its end.
//!
//! A quota lives in the same 16-byte table cell as a GCRA bucket ([`Tat`]), as two halves: the
//! high 64 bits are the start of the period the count belongs to (nanoseconds since the epoch),
//! the low 64 bits the cells used in it. A counter whose period started before the current one
//! reads as unused, so a new period starts full without anyone writing, a zeroed slot is an
//! unused quota, and the `u128` order stays meaningful (a later period, or more use in the same
//! period, is larger), as the table's reclaiming and the global fold's `max` expect.
//!
//! The use is counted rather than stored as an anchored TAT because periods differ in length
//! (28 to 31 days): a count needs no unit that depends on the period, and a debt (tokens charged
//! after the fact beyond the quota) stays inside its own period instead of spilling into the
//! next one.

use crate::bucket::{Check, Tat};
use crate::calendar::Calendar;
use crate::time::Nanos;

/// The counter as stored: the period's start and the cells used in it.
fn decode(tat: Tat) -> (u64, u64) {
    ((tat.0 >> 64) as u64, tat.0 as u64)
}

fn encode(start: u64, used: u64) -> Tat {
    Tat((u128::from(start) << 64) | u128::from(used))
}

/// `amount` cells per period of `calendar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    pub(crate) amount: u64,
    pub(crate) calendar: Calendar,
}

impl Quota {
    /// The period the counter counts for at `now` and its use: an earlier period's counter is
    /// an unused one in the current period. A counter from a *later* period (written by a
    /// replica whose clock is ahead, or before this one's went back) is kept as it is: a clock
    /// going backwards never creates room.
    fn current(&self, tat: Tat, now: Nanos) -> (u64, u64) {
        let (start, used) = decode(tat);
        let now_start = self.calendar.start(now).0;
        if start < now_start {
            (now_start, 0)
        } else {
            (start, used)
        }
    }

    /// Time from `now` to the end of the period starting at `start`.
    fn until_end(&self, start: u64, now: Nanos) -> Nanos {
        Nanos(self.calendar.end(Nanos(start)).0.saturating_sub(now.0))
    }

    pub(crate) fn check(&self, tat: Tat, now: Nanos, cost: u64) -> Check {
        let (start, used) = self.current(tat, now);
        let next = used.saturating_add(cost);
        let reset_after = self.until_end(start, now);
        if next <= self.amount {
            Check {
                allowed: true,
                tat: encode(start, next),
                remaining: self.amount - next,
                reset_after,
                retry_after: Nanos::ZERO,
            }
        } else {
            Check {
                allowed: false,
                tat,
                remaining: self.amount.saturating_sub(used),
                reset_after,
                retry_after: reset_after,
            }
        }
    }

    pub(crate) fn peek(&self, tat: Tat, now: Nanos) -> Check {
        let c = self.check(tat, now, 1);
        Check {
            tat,
            remaining: if c.allowed {
                c.remaining + 1
            } else {
                c.remaining
            },
            ..c
        }
    }

    pub(crate) fn charge(&self, tat: Tat, now: Nanos, cost: u64) -> Tat {
        let (start, used) = self.current(tat, now);
        encode(start, used.saturating_add(cost))
    }

    pub(crate) fn refund(&self, tat: Tat, cells: u64) -> Tat {
        let (start, used) = decode(tat);
        encode(start, used.saturating_sub(cells))
    }

    /// Settles a hold taken at `held_at`: the difference between `actual` and `reserved` goes
    /// to the period the hold was taken in, and nowhere else. Once a later period has begun
    /// counting, the old one is closed: a late refund must not give the new period room it
    /// never had, nor a late charge take room it never lent.
    pub(crate) fn settle(&self, tat: Tat, held_at: Nanos, reserved: u64, actual: u64) -> Tat {
        let (start, used) = self.current(tat, held_at);
        if start != self.calendar.start(held_at).0 {
            return tat;
        }
        let used = if actual >= reserved {
            used.saturating_add(actual - reserved)
        } else {
            used.saturating_sub(reserved - actual)
        };
        encode(start, used)
    }

    pub(crate) fn is_full(&self, tat: Tat, now: Nanos) -> bool {
        self.current(tat, now).1 == 0
    }

    /// The state a global answer describes: the period ending `until_end` from `now` (on this
    /// replica's clock) with `remaining` of the quota left in it.
    ///
    /// The service counts on its own clock, so the end it announces lands near, not exactly on,
    /// a period boundary of ours: the period named is the one whose end is the boundary nearest
    /// to `now + until_end`. A replica whose clock is a little ahead (already in the next
    /// period) thus reads the answer as its previous period's, which no longer counts, instead
    /// of carrying a finished period's use into a new one; a replica a little behind reads it as
    /// its current period's.
    pub(crate) fn state_of_answer(&self, now: Nanos, until_end: Nanos, remaining: u64) -> Tat {
        let used = self.amount.saturating_sub(remaining);
        if used == 0 {
            return Tat::default();
        }
        let end = now.0.saturating_add(until_end.0);
        let before = self.calendar.start(Nanos(end)).0;
        let after = self.calendar.end(Nanos(end)).0;
        let boundary = if end.saturating_sub(before) <= after.saturating_sub(end) {
            before
        } else {
            after
        };
        let start = self.calendar.start(Nanos(boundary.saturating_sub(1))).0;
        encode(start, used)
    }

    /// Cells used beyond the quota in the current period.
    pub(crate) fn overshoot(&self, tat: Tat, now: Nanos) -> u64 {
        self.current(tat, now).1.saturating_sub(self.amount)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::bucket::Rate;
    use crate::calendar::{days_from_civil, Period};

    fn at(y: i64, m: u32, d: u32, h: u64, min: u64, s: u64) -> Nanos {
        let days = days_from_civil(y, m, d) as u64;
        Nanos::from_secs(days * 86_400 + h * 3_600 + min * 60 + s)
    }

    fn monthly(amount: u64) -> Rate {
        Rate::calendar(amount, Calendar::new(Period::Month, 0).unwrap()).unwrap()
    }

    #[test]
    fn a_month_admits_its_amount_then_refuses_until_the_first() {
        let rate = monthly(3);
        let now = at(2025, 2, 10, 12, 0, 0);
        let mut tat = Tat::default();
        for left in [2, 1, 0] {
            let c = rate.check(tat, now, 1);
            assert!(c.allowed);
            assert_eq!(c.remaining, left);
            assert_eq!(c.reset_after, Nanos(at(2025, 3, 1, 0, 0, 0).0 - now.0));
            tat = c.tat;
        }
        let denied = rate.check(tat, now, 1);
        assert!(!denied.allowed);
        let march = at(2025, 3, 1, 0, 0, 0);
        assert_eq!(denied.retry_after, Nanos(march.0 - now.0));
        // No refill within the period: 1 ns before its end still refused, at its end admitted.
        assert!(!rate.check(tat, Nanos(march.0 - 1), 1).allowed);
        let fresh = rate.check(tat, march, 1);
        assert!(fresh.allowed);
        assert_eq!(fresh.remaining, 2);
        assert_eq!(
            fresh.reset_after,
            Nanos(at(2025, 4, 1, 0, 0, 0).0 - march.0)
        );
    }

    #[test]
    fn peek_and_has_room_agree_with_a_one_cell_check() {
        let rate = monthly(2);
        let now = at(2024, 2, 29, 23, 59, 59);
        let mut tat = Tat::default();
        for _ in 0..3 {
            let (p, c) = (rate.peek(tat, now), rate.check(tat, now, 1));
            assert_eq!(p.allowed, c.allowed);
            assert_eq!(p.allowed, rate.has_room(tat, now));
            assert_eq!(p.retry_after, c.retry_after);
            assert_eq!(p.tat, tat, "peek writes nothing");
            if c.allowed {
                assert_eq!(p.remaining, c.remaining + 1);
                tat = c.tat;
            }
        }
        assert_eq!(rate.peek(tat, now).remaining, 0);
        assert!(rate.is_full(tat, at(2024, 3, 1, 0, 0, 0)));
        assert!(!rate.is_full(tat, now));
    }

    #[test]
    fn debt_stays_in_its_period() {
        let rate = monthly(1_000);
        let jan = at(2026, 1, 20, 0, 0, 0);
        let tat = rate.charge(Tat::default(), jan, 1_500);
        assert!(!rate.has_room(tat, jan));
        assert_eq!(rate.overshoot(tat, jan), 500);
        // A refund of less than the debt still leaves the quota used up.
        assert!(!rate.has_room(rate.refund(tat, 400), jan));
        assert!(rate.has_room(rate.refund(tat, 501), jan));
        // February starts full: no debt carried over.
        let feb = at(2026, 2, 1, 0, 0, 0);
        assert_eq!(rate.peek(tat, feb).remaining, 1_000);
        assert_eq!(rate.overshoot(tat, feb), 0);
    }

    #[test]
    fn a_settlement_after_the_period_rolled_over_leaves_the_new_period_alone() {
        let rate = monthly(1_000);
        let held_at = at(2026, 1, 31, 23, 59, 0);
        let feb = at(2026, 2, 1, 0, 1, 0);
        // January: 800 held for a call.
        let held = rate.check(Tat::default(), held_at, 800).tat;
        // The period rolls over; February's first call takes 300.
        let feb_state = rate.check(held, feb, 300).tat;
        assert_eq!(rate.peek(feb_state, feb).remaining, 700);
        // The January call finishes with 100 used (a refund of 700) or 2,000 (a charge of 1,200):
        // February's count is the same either way.
        for actual in [100, 800, 2_000] {
            let settled = rate.settle(feb_state, held_at, feb, 800, actual);
            assert_eq!(settled, feb_state, "actual {actual}");
            assert_eq!(rate.peek(settled, feb).remaining, 700);
        }
        // Settled before anything happened in February: January's counter takes it, February
        // still starts full.
        let late = rate.settle(held, held_at, feb, 800, 100);
        assert_eq!(rate.peek(late, held_at).remaining, 900);
        assert_eq!(rate.peek(late, feb).remaining, 1_000);
        let over = rate.settle(held, held_at, feb, 800, 2_000);
        assert_eq!(rate.peek(over, feb).remaining, 1_000);
    }

    #[test]
    fn a_refund_inside_the_period_gives_back() {
        let rate = monthly(1_000);
        let t = at(2026, 3, 3, 3, 3, 3);
        let held = rate.check(Tat::default(), t, 800).tat;
        let later = Nanos(t.0 + 60_000_000_000);
        let settled = rate.settle(held, t, later, 800, 100);
        assert_eq!(rate.peek(settled, later).remaining, 900);
        // Charge-after mode holds nothing: the usage is charged to the hold's period.
        let charged = rate.settle(Tat::default(), t, later, 0, 250);
        assert_eq!(rate.peek(charged, later).remaining, 750);
    }

    #[test]
    fn a_clock_going_backwards_never_creates_room() {
        let rate = monthly(1);
        let feb = at(2026, 2, 1, 0, 0, 0);
        let tat = rate.check(Tat::default(), feb, 1).tat;
        let jan = Nanos(feb.0 - 1);
        assert!(
            !rate.check(tat, jan, 1).allowed,
            "February's count holds in January"
        );
    }

    #[test]
    fn a_minute_quota_resets_on_the_clock() {
        let rate = Rate::calendar(5, Calendar::new(Period::Minute, 0).unwrap()).unwrap();
        let t = Nanos(at(2026, 12, 1, 21, 0, 42).0 + 500_000_000);
        let tat = rate.charge(Tat::default(), t, 5);
        let c = rate.check(tat, t, 1);
        assert!(!c.allowed);
        assert_eq!(c.retry_after, Nanos(17_500_000_000));
        assert!(rate.check(tat, at(2026, 12, 1, 21, 1, 0), 1).allowed);
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::bucket::Rate;
    use crate::calendar::Period;

    proptest! {
        /// Within any one period, admitted cells never exceed the quota; across any schedule,
        /// never more than the quota per period touched.
        #[test]
        fn never_admits_more_than_the_quota_per_period(
            amount in 1u64..50,
            which in 0usize..3,
            steps in proptest::collection::vec((0u64..20_000_000_000, 1u64..5), 1..200),
        ) {
            let period = [Period::Minute, Period::Hour, Period::Day][which];
            let cal = Calendar::new(period, 0).unwrap();
            let rate = Rate::calendar(amount, cal).unwrap();
            let mut now = Nanos(1_767_225_599_000_000_000);
            let mut tat = Tat::default();
            let mut admitted: alloc::collections::BTreeMap<u64, u64> = Default::default();
            for (dt, cost) in steps {
                now = Nanos(now.0 + dt);
                let c = rate.check(tat, now, cost);
                if c.allowed {
                    tat = c.tat;
                    *admitted.entry(cal.start(now).0).or_default() += cost;
                } else {
                    prop_assert_eq!(c.retry_after, Nanos(cal.end(now).0 - now.0));
                }
            }
            for (start, n) in admitted {
                prop_assert!(n <= amount, "{} admitted in the period from {}", n, start);
            }
        }
    }
}
