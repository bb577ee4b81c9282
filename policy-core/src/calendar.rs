//! Calendar periods: where the minute, hour, day, ISO week, month or year containing an instant
//! starts and ends, on the UTC clock shifted by a fixed offset.
//!
//! Exact integer arithmetic on whole seconds since the Unix epoch; civil dates come from a count
//! of days and back through the proleptic Gregorian calendar (the era/day-of-era method: 400
//! years are exactly 146,097 days, so every date reduces to a day within one 400-year era). No
//! libc, no time-zone database: an offset is fixed (`+05:30`, `-08:00`), and daylight-saving
//! rules are deliberately not modelled — a quota that resets "at midnight in Berlin" resets at
//! 23:00 UTC with `+01:00` all year round.

use crate::time::Nanos;

const SECS_PER_DAY: i64 = 86_400;
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Days from 0000-03-01 (the start of era 0, in the shifted year that starts in March) to
/// 1970-01-01.
const EPOCH_SHIFT: i64 = 719_468;
const DAYS_PER_ERA: i64 = 146_097;

/// The largest offset from UTC accepted, in seconds (±18:00, as ISO 8601 and most libraries
/// bound it; real zones lie within −12:00 and +14:00).
pub const MAX_OFFSET_SECS: i32 = 18 * 3_600;

/// How long a calendar period is: clock-aligned fixed windows (`Minute`, `Hour`), or the
/// calendar's own (`Day`, `Week` from Monday 00:00, `Month` from the 1st, `Year` from 1 January).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// From :00 of each minute.
    Minute,
    /// From :00:00 of each hour.
    Hour,
    /// From 00:00 of each day.
    Day,
    /// From Monday 00:00 (ISO 8601 weeks).
    Week,
    /// From 00:00 on the 1st of each month.
    Month,
    /// From 00:00 on 1 January.
    Year,
}

impl Period {
    /// Every period, in the order the config words list them.
    pub const ALL: [Period; 6] = [
        Period::Minute,
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
        Period::Year,
    ];

    /// The config word.
    pub fn word(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Year => "year",
        }
    }

    /// The longest this period can be, in seconds: a month is 31 days and a year 366, so that a
    /// client dividing the quota by this length never overestimates the rate.
    pub fn longest_secs(self) -> u64 {
        match self {
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
            Period::Week => 7 * 86_400,
            Period::Month => 31 * 86_400,
            Period::Year => 366 * 86_400,
        }
    }

    fn code(self) -> u8 {
        match self {
            Period::Minute => 1,
            Period::Hour => 2,
            Period::Day => 3,
            Period::Week => 4,
            Period::Month => 5,
            Period::Year => 6,
        }
    }
}

/// A period and the fixed offset from UTC its boundaries are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Calendar {
    period: Period,
    offset_secs: i32,
}

impl Calendar {
    /// `period` on UTC shifted by `offset_secs` (east of Greenwich positive); `None` beyond
    /// ±[`MAX_OFFSET_SECS`].
    pub fn new(period: Period, offset_secs: i32) -> Option<Calendar> {
        (offset_secs.abs() <= MAX_OFFSET_SECS).then_some(Calendar {
            period,
            offset_secs,
        })
    }

    /// The period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// The offset from UTC, in seconds.
    pub fn offset_secs(&self) -> i32 {
        self.offset_secs
    }

    /// Bytes that identify this calendar (for the tag of a table whose states depend on it).
    pub fn tag(&self) -> [u8; 5] {
        let [a, b, c, d] = self.offset_secs.to_le_bytes();
        [self.period.code(), a, b, c, d]
    }

    /// The start of the period containing `at`: a request at exactly the boundary belongs to the
    /// new period. Instants before the first period boundary after the epoch map to 0.
    pub fn start(&self, at: Nanos) -> Nanos {
        let local = secs(at) + i64::from(self.offset_secs);
        nanos(self.local_start(local) - i64::from(self.offset_secs))
    }

    /// The end of the period containing `at` (the next period's start): always after `at`.
    pub fn end(&self, at: Nanos) -> Nanos {
        let local = secs(at) + i64::from(self.offset_secs);
        let start = self.local_start(local);
        let next = match self.period {
            Period::Minute | Period::Hour | Period::Day | Period::Week => {
                start + self.period.longest_secs() as i64
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(SECS_PER_DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * SECS_PER_DAY
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(start.div_euclid(SECS_PER_DAY));
                days_from_civil(y + 1, 1, 1) * SECS_PER_DAY
            }
        };
        nanos(next - i64::from(self.offset_secs))
    }

    /// The start, in local seconds, of the period containing the local second `local`.
    fn local_start(&self, local: i64) -> i64 {
        let fixed = |len: i64| local - local.rem_euclid(len);
        let day = local.div_euclid(SECS_PER_DAY);
        match self.period {
            Period::Minute => fixed(60),
            Period::Hour => fixed(3_600),
            Period::Day => fixed(SECS_PER_DAY),
            // 1970-01-01 was a Thursday: three days after a Monday.
            Period::Week => (day - (day + 3).rem_euclid(7)) * SECS_PER_DAY,
            Period::Month => {
                let (y, m, _) = civil_from_days(day);
                days_from_civil(y, m, 1) * SECS_PER_DAY
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(day);
                days_from_civil(y, 1, 1) * SECS_PER_DAY
            }
        }
    }
}

/// Whole seconds of an instant (`u64` nanoseconds: below 2^35 seconds, so always an `i64`).
fn secs(at: Nanos) -> i64 {
    (at.0 / NANOS_PER_SEC) as i64
}

/// Seconds back to nanoseconds: 0 before the epoch, saturating past `u64::MAX` nanoseconds.
fn nanos(secs: i64) -> Nanos {
    match u64::try_from(secs) {
        Ok(s) => Nanos(s.saturating_mul(NANOS_PER_SEC)),
        Err(_) => Nanos::ZERO,
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (`m` in 1..=12, `d` in 1..=31).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Years start in March, so that the leap day is the last day of its year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = i64::from((m + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(d) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - EPOCH_SHIFT
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of `days` since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + EPOCH_SHIFT;
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z - era * DAYS_PER_ERA;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The instant of a UTC date and time.
    fn at(y: i64, m: u32, d: u32, h: i64, min: i64, s: i64) -> Nanos {
        nanos(days_from_civil(y, m, d) * SECS_PER_DAY + h * 3_600 + min * 60 + s)
    }

    fn utc(period: Period) -> Calendar {
        Calendar::new(period, 0).unwrap()
    }

    #[test]
    fn known_dates_convert_both_ways() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (10_957, (2000, 1, 1)),
            (11_016, (2000, 2, 29)),
            (11_017, (2000, 3, 1)),
            (47_540, (2100, 2, 28)),
            (47_541, (2100, 3, 1)),
            (20_423, (2025, 12, 1)),
        ] {
            assert_eq!(civil_from_days(days), date, "day {days}");
            assert_eq!(days_from_civil(date.0, date.1, date.2), days, "{date:?}");
        }
    }

    #[test]
    fn month_ends_cover_every_month_length() {
        let month = utc(Period::Month);
        for (now, end) in [
            (at(2025, 1, 31, 12, 0, 0), at(2025, 2, 1, 0, 0, 0)),
            (at(2025, 2, 28, 23, 59, 59), at(2025, 3, 1, 0, 0, 0)),
            (at(2024, 2, 28, 10, 0, 0), at(2024, 3, 1, 0, 0, 0)),
            (at(2024, 2, 29, 23, 59, 59), at(2024, 3, 1, 0, 0, 0)),
            (at(2000, 2, 29, 0, 0, 0), at(2000, 3, 1, 0, 0, 0)),
            (at(2100, 2, 28, 23, 0, 0), at(2100, 3, 1, 0, 0, 0)),
            (at(2025, 4, 30, 0, 0, 0), at(2025, 5, 1, 0, 0, 0)),
            (at(2025, 12, 31, 23, 59, 59), at(2026, 1, 1, 0, 0, 0)),
        ] {
            assert_eq!(month.end(now), end, "{now:?}");
        }
        // 2100 is not a leap year: there is no 29 February, the day after the 28th is 1 March.
        assert_eq!(
            at(2100, 2, 28, 0, 0, 0).0 + 86_400 * NANOS_PER_SEC,
            at(2100, 3, 1, 0, 0, 0).0
        );
        assert_eq!(
            civil_from_days(days_from_civil(2100, 2, 28) + 1),
            (2100, 3, 1)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2000, 2, 28) + 1),
            (2000, 2, 29)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2024, 2, 28) + 1),
            (2024, 2, 29)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2025, 1, 31) + 1),
            (2025, 2, 1)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2025, 12, 31) + 1),
            (2026, 1, 1)
        );
    }

    #[test]
    fn an_instant_at_exactly_the_boundary_belongs_to_the_new_period() {
        for period in Period::ALL {
            let cal = utc(period);
            let boundary = cal.end(at(2025, 12, 31, 23, 59, 59));
            assert_eq!(cal.start(boundary), boundary, "{period:?}");
            assert!(cal.start(Nanos(boundary.0 - 1)) < boundary);
            assert_eq!(cal.end(Nanos(boundary.0 - 1)), boundary, "{period:?}");
            assert!(cal.end(boundary) > boundary);
        }
        let day = utc(Period::Day);
        let midnight = at(2026, 1, 1, 0, 0, 0);
        assert_eq!(day.start(midnight), midnight);
        assert_eq!(day.start(Nanos(midnight.0 - 1)), at(2025, 12, 31, 0, 0, 0));
    }

    #[test]
    fn iso_weeks_start_on_monday_across_a_year_end() {
        let week = utc(Period::Week);
        // Thursday 1 January 2026 is in the week of Monday 29 December 2025.
        assert_eq!(
            week.start(at(2026, 1, 1, 8, 0, 0)),
            at(2025, 12, 29, 0, 0, 0)
        );
        assert_eq!(week.end(at(2026, 1, 1, 8, 0, 0)), at(2026, 1, 5, 0, 0, 0));
        // Sunday 23:59:59 is still the old week; Monday 00:00 is the new one.
        assert_eq!(
            week.start(at(2026, 1, 4, 23, 59, 59)),
            at(2025, 12, 29, 0, 0, 0)
        );
        assert_eq!(week.start(at(2026, 1, 5, 0, 0, 0)), at(2026, 1, 5, 0, 0, 0));
        // The epoch was a Thursday.
        assert_eq!(week.start(at(1970, 1, 8, 0, 0, 0)), at(1970, 1, 5, 0, 0, 0));
    }

    #[test]
    fn offsets_shift_every_boundary_without_daylight_saving() {
        // +01:00: the month starts at 23:00 UTC on the last day of the previous month.
        let cet = Calendar::new(Period::Month, 3_600).unwrap();
        assert_eq!(
            cet.start(at(2026, 1, 15, 0, 0, 0)),
            at(2025, 12, 31, 23, 0, 0)
        );
        assert_eq!(cet.end(at(2026, 1, 15, 0, 0, 0)), at(2026, 1, 31, 23, 0, 0));
        // 23:30 UTC on 31 January is already February in +01:00.
        assert_eq!(
            cet.start(at(2026, 1, 31, 23, 30, 0)),
            at(2026, 1, 31, 23, 0, 0)
        );
        // The same offset in July (no summer time): still 23:00 UTC.
        assert_eq!(cet.end(at(2026, 7, 10, 0, 0, 0)), at(2026, 7, 31, 23, 0, 0));
        // -08:00: the day starts at 08:00 UTC.
        let pst = Calendar::new(Period::Day, -8 * 3_600).unwrap();
        assert_eq!(
            pst.start(at(2026, 3, 1, 7, 59, 59)),
            at(2026, 2, 28, 8, 0, 0)
        );
        assert_eq!(pst.start(at(2026, 3, 1, 8, 0, 0)), at(2026, 3, 1, 8, 0, 0));
        // +05:30: a half-hour offset puts the hour's start at :30 UTC.
        let ist = Calendar::new(Period::Hour, 5 * 3_600 + 1_800).unwrap();
        assert_eq!(
            ist.start(at(2026, 3, 1, 7, 45, 0)),
            at(2026, 3, 1, 7, 30, 0)
        );
        let year = Calendar::new(Period::Year, 5 * 3_600 + 1_800).unwrap();
        assert_eq!(
            year.end(at(2026, 6, 1, 0, 0, 0)),
            at(2026, 12, 31, 18, 30, 0)
        );
        assert!(Calendar::new(Period::Day, MAX_OFFSET_SECS + 1).is_none());
    }

    #[test]
    fn minutes_and_hours_are_clock_aligned_fixed_windows() {
        let minute = utc(Period::Minute);
        let t = Nanos(at(2026, 3, 1, 7, 45, 12).0 + 345_000_000);
        assert_eq!(minute.start(t), at(2026, 3, 1, 7, 45, 0));
        assert_eq!(minute.end(t), at(2026, 3, 1, 7, 46, 0));
        assert_eq!(utc(Period::Hour).end(t), at(2026, 3, 1, 8, 0, 0));
    }

    #[test]
    fn extremes_do_not_overflow() {
        for period in Period::ALL {
            for offset in [-MAX_OFFSET_SECS, 0, MAX_OFFSET_SECS] {
                let cal = Calendar::new(period, offset).unwrap();
                for t in [Nanos::ZERO, Nanos(1), Nanos(u64::MAX)] {
                    let _ = (cal.start(t), cal.end(t));
                }
            }
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod proptests {
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// Dates from 1970-01-01 on, one a day, by counting: no formula in common with the code.
    fn walk(days: usize) -> Vec<(i64, u32, u32)> {
        let mut out = Vec::with_capacity(days);
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for _ in 0..days {
            out.push((y, m, d));
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        out
    }

    /// Days to 2200, past the non-leap 2100.
    const DAYS: usize = 84_000;

    #[test]
    fn every_day_to_2200_matches_a_day_by_day_walk() {
        for (day, date) in walk(DAYS).into_iter().enumerate() {
            assert_eq!(civil_from_days(day as i64), date, "day {day}");
            assert_eq!(days_from_civil(date.0, date.1, date.2), day as i64);
        }
    }

    proptest! {
        /// Period starts and ends agree with walking back (and forward) one day at a time to
        /// the 1st, to Monday (1970-01-01 was a Thursday), or to 1 January.
        #[test]
        fn period_starts_match_a_brute_force_walk(
            secs in (400 * 86_400i64)..((DAYS as i64 - 400) * 86_400),
            offset in -MAX_OFFSET_SECS..=MAX_OFFSET_SECS,
            which in 0usize..3,
        ) {
            let dates = walk(DAYS);
            let period = [Period::Week, Period::Month, Period::Year][which];
            let cal = Calendar::new(period, offset).unwrap();
            let t = Nanos(secs as u64 * NANOS_PER_SEC + 123);
            let local_day = (secs + i64::from(offset)).div_euclid(86_400);
            let is_start = |day: i64| {
                let (_, m, d) = dates[day as usize];
                match period {
                    Period::Week => (day + 3).rem_euclid(7) == 0,
                    Period::Month => d == 1,
                    _ => m == 1 && d == 1,
                }
            };
            let mut start = local_day;
            while !is_start(start) {
                start -= 1;
            }
            let mut end = local_day + 1;
            while !is_start(end) {
                end += 1;
            }
            let utc = |day: i64| Nanos(((day * 86_400 - i64::from(offset)) as u64) * NANOS_PER_SEC);
            prop_assert_eq!(cal.start(t), utc(start));
            prop_assert_eq!(cal.end(t), utc(end));
        }
    }
}
