//! Calendar quotas on global tiers: what a quota's descriptor says of its period, for
//! `tollgate-sync` to count it in.
//!
//! A refilling rate's descriptor carries its rate (`limit`), and the service keeps one GCRA
//! bucket per descriptor. A calendar quota's carries its amount (`limit.requests_per_unit`) and
//! its period as two parameters, [`RESET`] (the `reset` word) and [`UTC_OFFSET`] (seconds east
//! of UTC, left out when 0). The service decides which period a request falls in from Redis's
//! clock with [`crate::calendar`], so every replica counts in the same period whatever its own
//! clock says; it keeps one counter per period (a new period is a new key, starting from zero,
//! with nothing deleted) and answers what is left in it and the time to its end
//! (`duration_until_reset`), which [`crate::bucket::Rate::state_of_answer`] reads back.
//!
//! A service that predates calendar quotas refuses these parameters (`INVALID_ARGUMENT`,
//! "unknown parameter") rather than counting the quota as a refilling rate: upgrade
//! `tollgate-sync` before the policy that makes a calendar quota global.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::bucket::Rate;
use crate::calendar::{Calendar, Period, MAX_OFFSET_SECS};
use crate::global::descriptor::Unit;
use crate::global::proto::Entry;
use crate::time::Nanos;

/// The descriptor parameter naming a calendar quota's period (`minute` … `year`).
pub const RESET: &str = "tollgate.reset";
/// The descriptor parameter with a calendar quota's offset from UTC, in seconds (`-28800`).
pub const UTC_OFFSET: &str = "tollgate.utc_offset";

/// How long the service keeps a period's counter after the period's end: the margin for a
/// clock (Redis's, on a failover) that is a little behind the one that wrote it.
pub const KEY_MARGIN: Nanos = Nanos(60_000_000_000);

/// The `limit` of a calendar quota's descriptor: its amount (`None` above `u32::MAX`, the
/// protocol's field) per the unit nearest its period (a week, which has no unit, as `DAY`). The
/// unit is only what a service that reads no [`RESET`] would show; tollgate-sync counts in the
/// period [`RESET`] names.
pub fn limit(rate: &Rate) -> Option<(u32, Unit)> {
    let calendar = rate.calendar_of()?;
    let amount = u32::try_from(rate.amount()).ok()?;
    let unit = match calendar.period() {
        Period::Minute => Unit::Minute,
        Period::Hour => Unit::Hour,
        Period::Day | Period::Week => Unit::Day,
        Period::Month => Unit::Month,
        Period::Year => Unit::Year,
    };
    Some((amount, unit))
}

/// Whether cells held at `held_at` still settle at `now`: always for a refilling rate; for a
/// calendar quota only while the period of `held_at` lasts, as [`Rate::settle`] does locally
/// (a later period must not get back a reservation it never held, nor pay a charge it never
/// lent).
pub fn same_period(rate: &Rate, held_at: Nanos, now: Nanos) -> bool {
    rate.calendar_of()
        .is_none_or(|c| c.start(held_at) == c.start(now))
}

/// The parameters naming `calendar` on a descriptor.
pub fn entries(calendar: &Calendar) -> Vec<Entry> {
    let mut entries = alloc::vec![Entry {
        key: RESET.into(),
        value: calendar.period().word().into(),
    }];
    if calendar.offset_secs() != 0 {
        entries.push(Entry {
            key: UTC_OFFSET.into(),
            value: calendar.offset_secs().to_string(),
        });
    }
    entries
}

/// The period a [`RESET`] value names.
pub fn period(word: &str) -> Option<Period> {
    Period::ALL.into_iter().find(|p| p.word() == word)
}

/// A [`UTC_OFFSET`] value: a whole number of seconds within ±[`MAX_OFFSET_SECS`], an optional
/// `-`, digits only.
pub fn offset(value: &str) -> Option<i32> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i32 = value.parse().ok()?;
    (n.abs() <= MAX_OFFSET_SECS).then_some(n)
}

/// What [`RESET`] and [`UTC_OFFSET`] expect, for the service's error messages.
pub const EXPECTED_RESET: &str = "minute, hour, day, week, month or year";
/// See [`EXPECTED_RESET`].
pub const EXPECTED_OFFSET: &str = "whole seconds east of UTC, from -64800 to 64800";

/// The Redis key suffix of the period starting at `start`: its start in whole seconds since
/// the epoch.
pub fn period_key(start: Nanos) -> String {
    alloc::format!("@{}", start.0 / 1_000_000_000)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_quotas_limit_is_its_amount_per_the_nearest_unit() {
        let month = Calendar::new(Period::Month, 3_600).unwrap();
        let rate = Rate::calendar(2_000_000, month).unwrap();
        assert_eq!(limit(&rate), Some((2_000_000, Unit::Month)));
        let week = Rate::calendar(7, Calendar::new(Period::Week, 0).unwrap()).unwrap();
        assert_eq!(limit(&week), Some((7, Unit::Day)));
        let huge = Rate::calendar(1 << 33, month).unwrap();
        assert_eq!(limit(&huge), None, "above the protocol's u32");
        let refilling = Rate::new(5, Nanos::from_secs(60), 5).unwrap();
        assert_eq!(limit(&refilling), None);
    }

    #[test]
    fn entries_name_the_period_and_a_nonzero_offset() {
        let utc = Calendar::new(Period::Day, 0).unwrap();
        let pairs = |c: &Calendar| {
            entries(c)
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&utc), [(RESET.into(), String::from("day"))]);
        let pst = Calendar::new(Period::Month, -28_800).unwrap();
        assert_eq!(
            pairs(&pst),
            [
                (RESET.into(), String::from("month")),
                (UTC_OFFSET.into(), String::from("-28800"))
            ]
        );
        // What the service reads back is the same calendar.
        assert_eq!(period("month"), Some(Period::Month));
        assert_eq!(offset("-28800"), Some(-28_800));
    }

    #[test]
    fn offsets_and_words_outside_the_calendar_are_refused() {
        for bad in [
            "",
            "-",
            "+3600",
            "64801",
            "-64801",
            "1e3",
            " 60",
            "99999999999",
        ] {
            assert_eq!(offset(bad), None, "{bad:?}");
        }
        assert_eq!(offset("64800"), Some(64_800));
        assert_eq!(offset("0"), Some(0));
        assert_eq!(period("fortnight"), None);
        assert_eq!(period("Month"), None);
    }

    #[test]
    fn a_period_key_is_its_start_in_seconds() {
        assert_eq!(period_key(Nanos::from_secs(1_767_225_600)), "@1767225600");
    }

    use crate::calendar::days_from_civil;
    use crate::global::descriptor::{describe, BucketKey, Op};
    use crate::global::fold::Round;
    use crate::global::ledger::Ledger;
    use crate::global::proto::{DescriptorStatus, Duration, RateLimitResponse};
    use crate::global::strict::{self, Verdict};
    use crate::policy::{Outcome, Policy};
    use crate::request::HeaderList;
    use crate::store::MemoryStore;
    use prost::Message;

    const SEC: u64 = 1_000_000_000;

    /// 2026-12-01 21:00:00 UTC, a minute boundary.
    fn minute_start() -> Nanos {
        let days = days_from_civil(2026, 12, 1) as u64;
        Nanos::from_secs(days * 86_400 + 21 * 3_600)
    }

    fn policy(mode: &str) -> Policy {
        let text = alloc::format!(
            r#"{{"global":{{"cluster":"rls","mode":"{mode}","domain":"api"}},"tiers":[
                {{"name":"users","identity":{{"header":"x-user-id"}},
                  "limits":[{{"requests":5,"reset":"minute"}},
                            {{"name":"monthly","requests":1000,"reset":"month","utc_offset":"-08:00"}},
                            {{"requests":100,"per":"hour"}}]}}]}}"#
        );
        Policy::from_json(text.as_bytes()).unwrap()
    }

    /// Time from `now` to the end of its month at -08:00.
    fn to_month_end(now: Nanos) -> Nanos {
        let pst = Calendar::new(Period::Month, -28_800).unwrap();
        Nanos(pst.end(now).0 - now.0)
    }

    fn user(id: &str) -> HeaderList {
        [("x-user-id", id)].into_iter().collect()
    }

    fn status(code: i32, remaining: u32, until_reset: Nanos) -> DescriptorStatus {
        DescriptorStatus {
            code,
            current_limit: None,
            limit_remaining: remaining,
            duration_until_reset: Some(Duration {
                seconds: (until_reset.0 / SEC) as i64,
                nanos: (until_reset.0 % SEC) as i32,
            }),
        }
    }

    fn answer(overall: i32, statuses: Vec<DescriptorStatus>) -> Vec<u8> {
        RateLimitResponse {
            overall_code: overall,
            statuses,
        }
        .encode_to_vec()
    }

    fn entry_pairs(d: &crate::global::proto::RateLimitDescriptor) -> Vec<(String, String)> {
        d.entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn a_quotas_descriptor_names_its_period_and_carries_its_amount() {
        let p = policy("sync");
        let key = BucketKey::limits(&p, 0, b"alice").unwrap();
        let d = describe(&p, &key, Op::Sync, 3);
        assert_eq!(d.len(), 3, "one per limit");
        let limits: Vec<(u32, i32)> = d
            .iter()
            .map(|d| {
                let l = d.descriptor.limit.unwrap();
                (l.requests_per_unit, l.unit)
            })
            .collect();
        assert_eq!(
            limits,
            [
                (5, Unit::Minute.to_wire()),
                (1_000, Unit::Month.to_wire()),
                (100, Unit::Hour.to_wire())
            ]
        );
        let id = crate::global::descriptor::hex(key.fingerprint);
        let want = |name: &str, extra: &[(&str, &str)]| {
            let mut v: Vec<(String, String)> = [("tier", "users"), ("limit", name), ("id", &id)]
                .iter()
                .chain(extra)
                .map(|(k, v)| (String::from(*k), String::from(*v)))
                .collect();
            v.push(("tollgate.op".into(), "sync".into()));
            v
        };
        assert_eq!(
            entry_pairs(&d[0].descriptor),
            want("users-minute", &[(RESET, "minute")])
        );
        assert_eq!(
            entry_pairs(&d[1].descriptor),
            want("monthly", &[(RESET, "month"), (UTC_OFFSET, "-28800")])
        );
        assert!(
            entry_pairs(&d[2].descriptor)
                .iter()
                .all(|(k, _)| !k.starts_with("tollgate.reset")),
            "a refilling limit names no period"
        );
        assert_eq!(d[0].descriptor.hits_addend.unwrap().value, 3);
    }

    #[test]
    fn a_sync_answer_folds_what_is_left_in_the_period_and_refuses_until_its_end() {
        let p = policy("sync");
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let now = Nanos(minute_start().0 + 42 * SEC);
        let until_end = Nanos(18 * SEC);
        let key = BucketKey::limits(&p, 0, b"alice").unwrap();
        let mut ledger = Ledger::new(10);
        ledger.record(key, 1);
        let round = Round::new(&p, ledger.take(10));
        // Globally the minute's quota is used up, 990 of the month left, the hour's bucket full.
        let body = answer(
            1,
            alloc::vec![
                status(1, 0, until_end),
                status(1, 990, to_month_end(now)),
                status(1, 100, Nanos::ZERO),
            ],
        );
        let folded = round.fold(&p, &body, now, &mut s).unwrap();
        assert_eq!(folded.changed, 1);
        let Outcome::Decided { decision, .. } = p.check(&user("alice"), now, &mut s) else {
            panic!("no decision")
        };
        assert!(!decision.allowed, "the minute is spent across the replicas");
        assert_eq!(decision.retry_after(), Some(until_end));
        assert_eq!(decision.limits[1].remaining, 990);
        // 1 ns before the minute's end still refused; at it, admitted with the quota full again.
        let end = Nanos(now.0 + until_end.0);
        let Outcome::Decided { decision, .. } = p.check(&user("alice"), Nanos(end.0 - 1), &mut s)
        else {
            panic!("no decision")
        };
        assert!(!decision.allowed);
        let Outcome::Decided { decision, .. } = p.check(&user("alice"), end, &mut s) else {
            panic!("no decision")
        };
        assert!(decision.allowed);
        assert_eq!(decision.limits[0].remaining, 4);
    }

    #[test]
    fn an_answer_lands_in_the_period_whose_end_is_nearest_on_a_skewed_clock() {
        let rate = Rate::calendar(5, Calendar::new(Period::Minute, 0).unwrap()).unwrap();
        let service_now = Nanos(minute_start().0 + 58 * SEC);
        let until_end = Nanos(2 * SEC);
        // A replica 1.5 s behind: its current minute is the one the service counted in.
        let behind = Nanos(service_now.0 - 1_500_000_000);
        let tat = rate.state_of_answer(behind, until_end, 1);
        assert_eq!(rate.peek(tat, behind).remaining, 1);
        assert_eq!(rate.peek(tat, behind).retry_after, Nanos::ZERO);
        // A replica 3 s ahead is in the next minute already: the answer is about its previous
        // minute, which counts no more (not carried into the new one).
        let ahead = Nanos(service_now.0 + 3 * SEC);
        let tat = rate.state_of_answer(ahead, until_end, 0);
        assert_eq!(rate.peek(tat, ahead).remaining, 5);
        // Unskewed, used up: refused until the minute's end.
        let tat = rate.state_of_answer(service_now, until_end, 0);
        let c = rate.check(tat, service_now, 1);
        assert!(!c.allowed);
        assert_eq!(c.retry_after, until_end);
        // Nothing used: the full state, whatever the end.
        assert_eq!(
            rate.state_of_answer(service_now, until_end, 5),
            Default::default()
        );
    }

    #[test]
    fn a_strict_refusal_waits_for_the_period_end_the_service_announced() {
        let p = policy("strict");
        let (tier, id) = strict::select(&p, &user("bob")).unwrap();
        let check = strict::check(&p, tier, &id, 1).unwrap();
        let now = Nanos(minute_start().0 + 10 * SEC);
        let until_end = Nanos(50 * SEC);
        let body = answer(
            2,
            alloc::vec![
                status(2, 0, until_end),
                status(1, 500, to_month_end(now)),
                status(1, 97, Nanos(108 * SEC)),
            ],
        );
        let Verdict::Refuse(decision) = strict::verdict(&check, &body, now) else {
            panic!("not refused")
        };
        assert_eq!(decision.retry_after(), Some(until_end));
        assert_eq!(decision.limits[0].reset_after, until_end);
        assert_eq!(decision.limits[0].remaining, 0);
        // The local fallback continues from the quota as the service left it.
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        strict::fold(&p, &check, &decision, now, &mut s).unwrap();
        let Outcome::Decided { decision, .. } = p.check(&user("bob"), now, &mut s) else {
            panic!("no decision")
        };
        assert!(!decision.allowed);
        assert_eq!(decision.limits[1].remaining, 500);
    }

    #[test]
    fn a_strict_token_settlement_goes_to_the_period_its_hold_was_taken_in() {
        use crate::budget::{Amount, Ask};
        use crate::global::strict_tokens;
        use crate::policy::TokenOutcome;
        let p = Policy::from_json(
            br#"{"global":{"cluster":"rls","mode":"strict"},"llm":{"default_max_tokens":100},
                "tiers":[{"name":"llm","identity":{"header":"x-user-id"},
                  "tokens":[{"tokens":1000,"reset":"minute"},{"tokens":6000,"per":"hour"}]}]}"#,
        )
        .unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let held_at = Nanos(minute_start().0 + 59 * SEC);
        let tier = &p.tiers()[0];
        let TokenOutcome::Admitted { reservation, .. } = p.admit_tokens_where(
            tier,
            b"erin",
            Some("m"),
            Ask::Tokens(Amount::tokens(800)),
            held_at,
            &mut s,
            |_, _| true,
        ) else {
            panic!("not admitted")
        };
        let check = strict_tokens::check(&p, 0, &reservation.holds, None).unwrap();
        let entries = |d: &[(BucketKey, crate::global::ledger::Delta)]| {
            d.iter()
                .map(|(k, d)| (k.table, d.refund, d.cells))
                .collect::<Vec<_>>()
        };
        use crate::global::descriptor::TableId::Budget;
        // Settled within the minute: both budgets get the correction.
        let within =
            strict_tokens::settlement(&p, &check, Amount::tokens(100), Nanos(held_at.0 + SEC - 1));
        assert_eq!(
            entries(&within),
            [(Budget(0), 800, 100), (Budget(1), 800, 100)]
        );
        // Settled in the next minute: the minute's quota is left alone (its reservation stays
        // in the minute that held it), the refilling hour's budget is corrected.
        let after =
            strict_tokens::settlement(&p, &check, Amount::tokens(100), Nanos(held_at.0 + SEC));
        assert_eq!(entries(&after), [(Budget(1), 800, 100)]);
        let rate = p.tiers()[0].budgets[0].rate;
        assert!(same_period(&rate, held_at, Nanos(held_at.0 + SEC - 1)));
        assert!(!same_period(&rate, held_at, Nanos(held_at.0 + SEC)));
    }
}
