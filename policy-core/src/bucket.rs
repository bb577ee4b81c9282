//! Token buckets as GCRA: one number of state per key and limit.
//!
//! A bucket of `burst` cells that refills `amount` cells every `period` is kept as its *theoretical
//! arrival time* (TAT): the instant at which the bucket would be full again. That single number is
//! what makes shared-data updates cheap (one compare-and-swap per request), and GCRA's update is a
//! pure function of `(tat, now, cost)`, so it is tested here without any host.
//!
//! Time is kept in *scaled* units of `1 / amount` nanoseconds, so that one cell costs exactly
//! `period` units: "7 per minute" admits 7 at once and refills one every 60/7 s without rounding
//! drift. With `amount` capped at [`MAX_AMOUNT`] (2^40) and nanosecond instants below 2^64, every
//! scaled value fits in a `u128` with room to spare; all arithmetic saturates anyway, so extreme
//! clocks cannot overflow.

use crate::calendar::Calendar;
use crate::quota::Quota;
use crate::time::Nanos;

/// The largest `amount` or `burst` a limit may have: large enough for a trillion tokens, small
/// enough that scaled time never overflows a `u128`.
pub const MAX_AMOUNT: u64 = 1 << 40;

/// The state of one bucket: its theoretical arrival time in scaled units.
///
/// Zero (and any value at or before `now`) means a full bucket, so a fresh, zeroed slot is a full
/// bucket and an idle slot is indistinguishable from a fresh one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tat(pub u128);

/// A validated rate: `amount` cells per `period`, with room for `burst` at once; or, built by
/// [`Rate::calendar`], a calendar quota of `amount` per calendar period (see [`crate::quota`]),
/// which every method below then follows instead of GCRA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    amount: u64,
    period: Nanos,
    burst: u64,
    quota: Option<Quota>,
}

/// Why a [`Rate`] could not be built. Config parsing turns these into path-named errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateError {
    /// `amount` was zero or above [`MAX_AMOUNT`].
    Amount,
    /// `burst` was zero or above [`MAX_AMOUNT`].
    Burst,
    /// `period` was zero.
    Period,
}

/// What a bucket says about one request, before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    /// Whether the request fits.
    pub allowed: bool,
    /// The state to store if the request goes ahead (equal to the old state when denied).
    pub tat: Tat,
    /// Whole cells left after this request (or now, when denied).
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset_after: Nanos,
    /// When denied: the shortest wait after which the same request would pass.
    pub retry_after: Nanos,
}

impl Rate {
    /// A rate of `amount` per `period` with `burst` capacity.
    pub fn new(amount: u64, period: Nanos, burst: u64) -> Result<Rate, RateError> {
        if amount == 0 || amount > MAX_AMOUNT {
            return Err(RateError::Amount);
        }
        if burst == 0 || burst > MAX_AMOUNT {
            return Err(RateError::Burst);
        }
        if period.0 == 0 {
            return Err(RateError::Period);
        }
        Ok(Rate {
            amount,
            period,
            burst,
            quota: None,
        })
    }

    /// A calendar quota: `amount` per period of `calendar`, no refill within a period, full
    /// again at its end. Its [`period`](Rate::period) is the longest the calendar period can be
    /// (what `RateLimit-Policy` shows as `w=`), its [`burst`](Rate::burst) the amount.
    pub fn calendar(amount: u64, calendar: Calendar) -> Result<Rate, RateError> {
        if amount == 0 || amount > MAX_AMOUNT {
            return Err(RateError::Amount);
        }
        Ok(Rate {
            amount,
            period: Nanos::from_secs(calendar.period().longest_secs()),
            burst: amount,
            quota: Some(Quota { amount, calendar }),
        })
    }

    /// The calendar of a calendar quota; `None` for a refilling (GCRA) rate.
    pub fn calendar_of(&self) -> Option<Calendar> {
        self.quota.map(|q| q.calendar)
    }

    /// Cells per period.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The refill period.
    pub fn period(&self) -> Nanos {
        self.period
    }

    /// The bucket's capacity.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn scaled(&self, now: Nanos) -> u128 {
        u128::from(now.0).saturating_mul(u128::from(self.amount))
    }

    /// Scaled cost of `cells`.
    fn cost(&self, cells: u64) -> u128 {
        u128::from(cells).saturating_mul(u128::from(self.period.0))
    }

    /// The tolerance: how far the TAT may run ahead of `now` (a full burst).
    fn window(&self) -> u128 {
        self.cost(self.burst)
    }

    /// Scaled units to nanoseconds, rounded up so waits are never too short.
    fn nanos_of(&self, scaled: u128) -> Nanos {
        // A 64-bit division when the value fits (always, for windows up to months): the
        // 128-bit one is a libcall on wasm32 and the costliest step of a decision.
        if let Ok(small) = u64::try_from(scaled) {
            return Nanos(small.div_ceil(self.amount));
        }
        let ns = scaled.div_ceil(u128::from(self.amount));
        Nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn remaining(&self, ahead: u128) -> u64 {
        let room = self.window().saturating_sub(ahead);
        if let Ok(small) = u64::try_from(room) {
            return small / self.period.0;
        }
        let cells = room / u128::from(self.period.0);
        u64::try_from(cells).unwrap_or(u64::MAX)
    }

    /// Whether `cost` cells fit now, and the state if they are taken.
    ///
    /// A clock that goes backwards only makes the bucket look emptier: the TAT never moves back.
    pub fn check(&self, tat: Tat, now: Nanos, cost: u64) -> Check {
        if let Some(q) = &self.quota {
            return q.check(tat, now, cost);
        }
        let now_s = self.scaled(now);
        let start = tat.0.max(now_s);
        let next = start.saturating_add(self.cost(cost));
        let ahead = next - now_s;
        if ahead <= self.window() {
            Check {
                allowed: true,
                tat: Tat(next),
                remaining: self.remaining(ahead),
                reset_after: self.nanos_of(ahead),
                retry_after: Nanos::ZERO,
            }
        } else {
            let current = start - now_s;
            Check {
                allowed: false,
                tat,
                remaining: self.remaining(current),
                reset_after: self.nanos_of(current),
                retry_after: self.nanos_of(ahead - self.window()),
            }
        }
    }

    /// Takes `cost` cells whether or not they fit, letting the bucket go into debt.
    ///
    /// Used where the cost is only known after the fact (tokens an LLM already produced): the
    /// debt is paid back by refill before the next request is admitted.
    pub fn charge(&self, tat: Tat, now: Nanos, cost: u64) -> Tat {
        if let Some(q) = &self.quota {
            return q.charge(tat, now, cost);
        }
        let start = tat.0.max(self.scaled(now));
        Tat(start.saturating_add(self.cost(cost)))
    }

    /// Gives back `cells` taken earlier (an over-estimated reservation).
    ///
    /// Never fuller than full: a TAT at or before `now` already means a full bucket.
    pub fn refund(&self, tat: Tat, cells: u64) -> Tat {
        if let Some(q) = &self.quota {
            return q.refund(tat, cells);
        }
        Tat(tat.0.saturating_sub(self.cost(cells)))
    }

    /// Replaces `reserved` cells held at `held_at` by the `actual` cost, at `now`: charges the
    /// rest (into debt if need be) or refunds what was over-reserved. A calendar quota settles
    /// into the period the hold was taken in, never into a later one.
    pub fn settle(&self, tat: Tat, held_at: Nanos, now: Nanos, reserved: u64, actual: u64) -> Tat {
        if let Some(q) = &self.quota {
            return q.settle(tat, held_at, reserved, actual);
        }
        if actual >= reserved {
            self.charge(tat, now, actual - reserved)
        } else {
            self.refund(tat, reserved - actual)
        }
    }

    /// Whether at least one whole cell is left (used to admit in "charge after" mode): the
    /// same test as a one-cell [`check`](Rate::check), so a refusal's retry-after agrees.
    pub fn has_room(&self, tat: Tat, now: Nanos) -> bool {
        if let Some(q) = &self.quota {
            return q.check(tat, now, 1).allowed;
        }
        let now_s = self.scaled(now);
        tat.0.saturating_sub(now_s).saturating_add(self.cost(1)) <= self.window()
    }

    /// The bucket as seen at `now` without taking anything: `allowed` says whether a one-cell
    /// request would pass (exactly [`check`](Rate::check)`(tat, now, 1).allowed`), `retry_after`
    /// how long until one would.
    pub fn peek(&self, tat: Tat, now: Nanos) -> Check {
        if let Some(q) = &self.quota {
            return q.peek(tat, now);
        }
        let now_s = self.scaled(now);
        let ahead = tat.0.saturating_sub(now_s);
        Check {
            allowed: ahead.saturating_add(self.cost(1)) <= self.window(),
            tat,
            remaining: self.remaining(ahead),
            reset_after: self.nanos_of(ahead),
            retry_after: self.nanos_of(
                ahead
                    .saturating_add(self.cost(1))
                    .saturating_sub(self.window()),
            ),
        }
    }

    /// Whether a bucket in this state is full at `now`: such a slot may be reclaimed for another
    /// key without giving anyone more than a fresh bucket would.
    pub fn is_full(&self, tat: Tat, now: Nanos) -> bool {
        if let Some(q) = &self.quota {
            return q.is_full(tat, now);
        }
        tat.0 <= self.scaled(now)
    }

    /// The state of a bucket that is full again `after` from `now`: how a global answer
    /// (`duration_until_reset`, measured on the service's clock) becomes a local state measured
    /// on this replica's clock, with no comparison between the two clocks.
    ///
    /// A calendar quota's state needs what is left too ([`Rate::state_of_answer`]); here a wait
    /// reads as the period used up, never as room.
    pub fn full_after(&self, now: Nanos, after: Nanos) -> Tat {
        if let Some(q) = &self.quota {
            return match after {
                Nanos::ZERO => Tat::default(),
                _ => q.charge(Tat::default(), now, q.amount),
            };
        }
        Tat(self.scaled(Nanos(now.0.saturating_add(after.0))))
    }

    /// The state a rate limit service's answer describes, on this replica's clock: for a
    /// refilling rate the bucket full again `until_reset` from `now` ([`Rate::full_after`];
    /// `remaining` follows from it), for a calendar quota the period ending `until_reset` from
    /// `now` with `remaining` left in it (the service answers a quota's period end, which says
    /// nothing of its use).
    pub fn state_of_answer(&self, now: Nanos, until_reset: Nanos, remaining: u64) -> Tat {
        match &self.quota {
            Some(q) => q.state_of_answer(now, until_reset, remaining),
            None => self.full_after(now, until_reset),
        }
    }

    /// Whole cells a bucket in this state is beyond its capacity at `now`: the debt that cells
    /// admitted elsewhere, or charged after the fact, ran it into (0 for a bucket within its
    /// burst).
    pub fn overshoot(&self, tat: Tat, now: Nanos) -> u64 {
        if let Some(q) = &self.quota {
            return q.overshoot(tat, now);
        }
        let ahead = tat.0.saturating_sub(self.scaled(now));
        let beyond = ahead.saturating_sub(self.window());
        u64::try_from(beyond / u128::from(self.period.0)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const MINUTE: Nanos = Nanos(60_000_000_000);
    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    fn per_minute(n: u64) -> Rate {
        Rate::new(n, MINUTE, n).unwrap()
    }

    /// Runs `count` requests at `now`, returning how many were allowed and the final state.
    fn burst(rate: &Rate, mut tat: Tat, now: Nanos, count: u32) -> (u32, Tat) {
        let mut allowed = 0;
        for _ in 0..count {
            let c = rate.check(tat, now, 1);
            if c.allowed {
                allowed += 1;
                tat = c.tat;
            }
        }
        (allowed, tat)
    }

    #[test]
    fn hundred_per_minute_admits_exactly_100_of_110_at_once() {
        let (allowed, _) = burst(&per_minute(100), Tat::default(), T0, 110);
        assert_eq!(allowed, 100);
    }

    #[test]
    fn seven_per_minute_admits_seven_at_once_without_rounding_loss() {
        let (allowed, _) = burst(&per_minute(7), Tat::default(), T0, 8);
        assert_eq!(allowed, 7);
    }

    #[test]
    fn one_nanosecond_before_refill_is_denied_and_at_refill_is_allowed() {
        let rate = Rate::new(5, Nanos::from_secs(5), 5).unwrap();
        let (_, tat) = burst(&rate, Tat::default(), T0, 5);
        let denied = rate.check(tat, T0, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Nanos::SECOND);
        let refill = Nanos(T0.0 + Nanos::SECOND.0);
        assert!(!rate.check(tat, Nanos(refill.0 - 1), 1).allowed);
        assert_eq!(
            rate.check(tat, Nanos(refill.0 - 1), 1).retry_after,
            Nanos(1)
        );
        let at = rate.check(tat, refill, 1);
        assert!(at.allowed);
        assert_eq!(at.remaining, 0);
    }

    #[test]
    fn retry_after_of_a_fractional_rate_is_exact_to_the_nanosecond() {
        let rate = per_minute(7); // one cell every 8_571_428_571.43 ns
        let (_, tat) = burst(&rate, Tat::default(), T0, 7);
        let wait = rate.check(tat, T0, 1).retry_after;
        assert_eq!(wait, Nanos(8_571_428_572));
        assert!(!rate.check(tat, Nanos(T0.0 + wait.0 - 1), 1).allowed);
        assert!(rate.check(tat, Nanos(T0.0 + wait.0), 1).allowed);
    }

    #[test]
    fn peek_admits_only_when_a_whole_cell_is_back() {
        let rate = per_minute(10);
        let (_, tat) = burst(&rate, Tat::default(), T0, 10);
        for (after, allowed) in [(1, false), (5_999_999_999, false), (6_000_000_000, true)] {
            let now = Nanos(T0.0 + after);
            assert_eq!(rate.peek(tat, now).allowed, allowed, "{after} ns after");
            assert_eq!(rate.check(tat, now, 1).allowed, allowed, "{after} ns after");
        }
    }

    #[test]
    fn remaining_and_reset_count_down_and_back_up() {
        let rate = per_minute(100);
        let c = rate.check(Tat::default(), T0, 1);
        assert_eq!(c.remaining, 99);
        assert_eq!(c.reset_after, Nanos(600_000_000));
        let (_, tat) = burst(&rate, Tat::default(), T0, 100);
        let p = rate.peek(tat, T0);
        assert_eq!(p.remaining, 0);
        assert_eq!(p.reset_after, MINUTE);
        let later = rate.peek(tat, Nanos(T0.0 + 30_000_000_000));
        assert_eq!(later.remaining, 50);
    }

    #[test]
    fn a_clock_going_backwards_never_creates_tokens() {
        let rate = per_minute(10);
        let (_, tat) = burst(&rate, Tat::default(), T0, 10);
        for back in [1, 1_000, 60_000_000_000, T0.0] {
            let earlier = Nanos(T0.0 - back);
            let c = rate.check(tat, earlier, 1);
            assert!(!c.allowed, "went back {back}ns");
            assert_eq!(c.remaining, 0);
        }
    }

    #[test]
    fn u64_extremes_do_not_overflow() {
        let rate = Rate::new(MAX_AMOUNT, Nanos(u64::MAX), MAX_AMOUNT).unwrap();
        for now in [Nanos(0), Nanos(1), Nanos(u64::MAX - 1), Nanos(u64::MAX)] {
            let c = rate.check(Tat(u128::MAX), now, u64::MAX);
            assert!(!c.allowed);
            let c = rate.check(Tat::default(), now, MAX_AMOUNT);
            assert!(c.allowed);
            let _ = rate.charge(Tat(u128::MAX), now, u64::MAX);
            let _ = rate.peek(Tat(u128::MAX), now);
        }
        let tiny = Rate::new(1, Nanos(1), 1).unwrap();
        assert!(tiny.check(Tat::default(), Nanos(u64::MAX), 1).allowed);
    }

    #[test]
    fn a_cost_larger_than_the_burst_is_denied_without_changing_state() {
        let rate = per_minute(10);
        let c = rate.check(Tat::default(), T0, 11);
        assert!(!c.allowed);
        assert_eq!(c.tat, Tat::default());
    }

    #[test]
    fn charging_into_debt_blocks_until_paid_back() {
        let rate = Rate::new(1000, MINUTE, 1000).unwrap();
        let mut tat = Tat::default();
        for _ in 0..3 {
            assert!(rate.has_room(tat, T0));
            tat = rate.charge(tat, T0, 300);
        }
        assert!(rate.has_room(tat, T0), "100 tokens left");
        tat = rate.charge(tat, T0, 300); // goes 200 into debt
        assert!(!rate.has_room(tat, T0));
        // 200 tokens of debt take 12 s to pay back, and one whole token 60 ms more.
        assert!(!rate.has_room(tat, Nanos(T0.0 + 12_059_999_999)));
        assert!(rate.has_room(tat, Nanos(T0.0 + 12_060_000_000)));
    }

    #[test]
    fn a_refund_never_fills_beyond_full() {
        let rate = per_minute(100);
        let c = rate.check(Tat::default(), T0, 10);
        let back = rate.refund(c.tat, 1_000);
        assert!(rate.is_full(back, T0));
        assert_eq!(rate.peek(back, T0).remaining, 100);
    }

    #[test]
    fn invalid_rates_are_refused() {
        assert_eq!(Rate::new(0, MINUTE, 1), Err(RateError::Amount));
        assert_eq!(Rate::new(MAX_AMOUNT + 1, MINUTE, 1), Err(RateError::Amount));
        assert_eq!(Rate::new(1, MINUTE, 0), Err(RateError::Burst));
        assert_eq!(Rate::new(1, Nanos(0), 1), Err(RateError::Period));
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `peek` and a one-cell `check` never disagree on whether a request would pass, nor on
        /// how long it must wait.
        #[test]
        fn peek_agrees_with_a_one_cell_check(
            amount in 1u64..1_000,
            burst in 1u64..1_000,
            taken in 0u64..2_000,
            // Mostly close to a cell boundary, where peek and check could disagree.
            at in prop_oneof![0u64..120_000_000_000, 0u64..1_000],
        ) {
            let minute = Nanos(60_000_000_000);
            let t0 = Nanos(1_700_000_000_000_000_000);
            let rate = Rate::new(amount, minute, burst).unwrap();
            let tat = rate.charge(Tat::default(), t0, taken);
            let now = Nanos(t0.0 + at);
            let (p, c) = (rate.peek(tat, now), rate.check(tat, now, 1));
            prop_assert_eq!(p.allowed, c.allowed);
            prop_assert_eq!(p.allowed, rate.has_room(tat, now));
            if !c.allowed {
                prop_assert_eq!(p.retry_after, c.retry_after);
            }
        }

        /// governor's invariant: over any schedule, admitted cells never exceed
        /// burst + amount × elapsed / period.
        #[test]
        fn never_admits_more_than_burst_plus_refill(
            amount in 1u64..500,
            burst in 1u64..500,
            period_ms in 1u64..100_000,
            steps in proptest::collection::vec((0u64..5_000_000_000, 1u64..5), 1..200),
        ) {
            let period = Nanos(period_ms * 1_000_000);
            let rate = Rate::new(amount, period, burst).unwrap();
            let start = Nanos(1_000_000_000_000);
            let mut now = start;
            let mut tat = Tat::default();
            let mut admitted: u128 = 0;
            for (dt, cost) in steps {
                now = Nanos(now.0 + dt);
                let c = rate.check(tat, now, cost);
                if c.allowed {
                    tat = c.tat;
                    admitted += u128::from(cost);
                }
                let elapsed = u128::from(now.0 - start.0);
                let bound = u128::from(burst)
                    + (u128::from(amount) * elapsed) / u128::from(period.0);
                prop_assert!(admitted <= bound, "admitted {} > bound {}", admitted, bound);
            }
        }

        /// A denial's retry-after is the earliest instant at which the same request passes.
        #[test]
        fn retry_after_is_the_earliest_passing_instant(
            amount in 1u64..1000,
            burst in 1u64..1000,
            period_ms in 1u64..3_600_000,
            used in 0u64..2000,
            cost in 1u64..50,
        ) {
            let rate = Rate::new(amount, Nanos(period_ms * 1_000_000), burst).unwrap();
            let now = Nanos(1_700_000_000_000_000_000);
            let tat = rate.charge(Tat::default(), now, used);
            let c = rate.check(tat, now, cost);
            if !c.allowed && cost <= burst {
                let at = Nanos(now.0 + c.retry_after.0);
                prop_assert!(rate.check(tat, at, cost).allowed);
                prop_assert!(!rate.check(tat, Nanos(at.0 - 1), cost).allowed);
            }
        }
    }
}
