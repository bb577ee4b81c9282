//! The calendar-quota fields of a limit or token budget: `"reset"` and `"utc_offset"`.
//!
//! `{"tokens": 2000000, "reset": "month", "utc_offset": "+01:00"}` reads beside
//! `{"tokens": 2000000, "per": "month"}`: `per` is a window that refills continuously, `reset`
//! a quota that empties out and is full again at each period's start. One limit is one or the
//! other, so both at once are refused, as is a `burst` (a quota has no refill to burst over).

use serde_json::Value;

use super::error::{err, ConfigError, Reason};
use super::json::{string, Obj};
use crate::bucket::{Rate, RateError};
use crate::calendar::{Calendar, Period, MAX_OFFSET_SECS};

/// The words `reset` accepts.
pub const RESET_WORDS: &[&str] = &["minute", "hour", "day", "week", "month", "year"];

/// The quota of a limit object `o` with `amount` if it has `reset` (and then its period word);
/// `None` for a limit without one, after refusing a `utc_offset` without a `reset`.
pub(super) fn quota(
    o: &Obj<'_>,
    amount: u64,
    amount_field: &str,
) -> Result<Option<(Rate, &'static str)>, ConfigError> {
    let Some(reset) = o.opt("reset") else {
        if o.opt("utc_offset").is_some() {
            return err(
                o.at("utc_offset"),
                Reason::Invalid {
                    why: "applies only to a calendar quota (with \"reset\")",
                },
            );
        }
        return Ok(None);
    };
    if o.opt("per").is_some() {
        return err(
            o.at("reset"),
            Reason::Invalid {
                why: "cannot be combined with \"per\": \"per\" is a continuously refilling \
                      window, \"reset\" a calendar quota; give one of them",
            },
        );
    }
    if o.opt("burst").is_some() {
        return err(
            o.at("burst"),
            Reason::Invalid {
                why: "does not apply to a calendar quota (with \"reset\"): it admits its whole \
                      amount within each period and never refills before the period's end",
            },
        );
    }
    let rpath = o.at("reset");
    let word = string(reset, &rpath)?;
    let Some(period) = Period::ALL.into_iter().find(|p| p.word() == word) else {
        return err(
            rpath,
            Reason::NotOneOf {
                expected: RESET_WORDS,
            },
        );
    };
    let offset = match o.opt("utc_offset") {
        Some(v) => utc_offset(v, &o.at("utc_offset"))?,
        None => 0,
    };
    let calendar = Calendar::new(period, offset).ok_or_else(|| ConfigError {
        path: o.at("utc_offset"),
        reason: Reason::Invalid { why: OFFSET_WHY },
    })?;
    let rate = Rate::calendar(amount, calendar).map_err(|e| ConfigError {
        path: match e {
            RateError::Burst => o.at("burst"),
            _ => o.at(amount_field),
        },
        reason: Reason::NotPositive,
    })?;
    Ok(Some((rate, period.word())))
}

const OFFSET_WHY: &str = "must be a fixed UTC offset from \"-18:00\" to \"+18:00\" such as \
                          \"+05:30\" or \"-08:00\" (daylight-saving time is not followed)";

/// `"+HH:MM"` or `"-HH:MM"` in seconds east of UTC.
fn utc_offset(v: &Value, path: &str) -> Result<i32, ConfigError> {
    let text = string(v, path)?;
    let bad = || ConfigError {
        path: path.into(),
        reason: Reason::Invalid { why: OFFSET_WHY },
    };
    let &[sign, h1, h2, b':', m1, m2] = text.as_bytes() else {
        return Err(bad());
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| i32::from(b - b'0'));
    let (Some(h1), Some(h2), Some(m1), Some(m2)) = (digit(h1), digit(h2), digit(m1), digit(m2))
    else {
        return Err(bad());
    };
    let (hours, minutes) = (h1 * 10 + h2, m1 * 10 + m2);
    if minutes > 59 {
        return Err(bad());
    }
    let secs = hours * 3_600 + minutes * 60;
    if secs > MAX_OFFSET_SECS {
        return Err(bad());
    }
    match sign {
        b'+' => Ok(secs),
        b'-' => Ok(-secs),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::format;
    use alloc::string::{String, ToString};

    use crate::budget::Amount;
    use crate::calendar::Period;
    use crate::config::parse;

    fn limit(fields: &str) -> Result<crate::Policy, String> {
        parse(
            format!(
                r#"{{"tiers":[{{"name":"u","identity":{{"header":"x-user-id"}},
                "limits":[{{"requests":100,{fields}}}]}}]}}"#
            )
            .as_bytes(),
        )
        .map_err(|e| e.to_string())
    }

    fn budget(fields: &str) -> Result<crate::Policy, String> {
        parse(
            format!(
                r#"{{"tiers":[{{"name":"u","identity":{{"header":"x-user-id"}},
                "tokens":[{{"tokens":2000000,{fields}}}]}}]}}"#
            )
            .as_bytes(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn reset_and_utc_offset_build_a_calendar_quota() {
        let p = budget(r#""reset":"month","utc_offset":"+01:00""#).unwrap();
        let b = &p.tiers()[0].budgets[0];
        let cal = b.rate.calendar_of().unwrap();
        assert_eq!((cal.period(), cal.offset_secs()), (Period::Month, 3_600));
        assert_eq!(b.rate.burst(), 2_000_000);
        assert_eq!(b.name, "u-tokens-month");
        let p = limit(r#""reset":"minute""#).unwrap();
        let l = &p.tiers()[0].limits[0];
        assert_eq!(l.rate.calendar_of().unwrap().offset_secs(), 0);
        assert_eq!(l.rate.period().as_secs_ceil(), 60);
        for (text, secs) in [
            ("-08:00", -28_800),
            ("+05:30", 19_800),
            ("+00:00", 0),
            ("-18:00", -64_800),
        ] {
            let p = limit(&format!(r#""reset":"day","utc_offset":"{text}""#)).unwrap();
            let cal = p.tiers()[0].limits[0].rate.calendar_of().unwrap();
            assert_eq!(cal.offset_secs(), secs, "{text}");
        }
    }

    #[test]
    fn mistakes_are_refused_with_their_paths() {
        let charge_after = parse(
            br#"{"tiers":[{"name":"u","identity":{"header":"x-user-id"},
                "tokens":[{"tokens":10,"per":"day"},{"tokens":99,"reset":"day","name":"q"}]}],
                "llm":{"mode":"charge_after"}}"#,
        )
        .map_err(|e| e.to_string())
        .unwrap_err();
        assert!(
            charge_after.starts_with(
                "tiers[0].tokens[1].reset: a calendar quota needs llm.mode \"reserve\""
            ),
            "{charge_after}"
        );
        assert_eq!(
            limit(r#""per":"month","reset":"month""#).unwrap_err(),
            "tiers[0].limits[0].reset: cannot be combined with \"per\": \"per\" is a \
             continuously refilling window, \"reset\" a calendar quota; give one of them"
        );
        assert!(budget(r#""reset":"month","burst":10"#)
            .unwrap_err()
            .starts_with("tiers[0].tokens[0].burst: does not apply to a calendar quota"));
        assert_eq!(
            limit(r#""reset":"fortnight""#).unwrap_err(),
            "tiers[0].limits[0].reset: must be one of: minute, hour, day, week, month, year"
        );
        assert_eq!(
            limit(r#""per":"day","utc_offset":"+01:00""#).unwrap_err(),
            "tiers[0].limits[0].utc_offset: applies only to a calendar quota (with \"reset\")"
        );
        for bad in [
            "+1:00",
            "01:00",
            "+01:60",
            "+18:01",
            "+24:00",
            "UTC",
            "+01:00 ",
            "Europe/Berlin",
        ] {
            let e = limit(&format!(r#""reset":"day","utc_offset":"{bad}""#)).unwrap_err();
            assert!(
                e.starts_with("tiers[0].limits[0].utc_offset: must be a fixed UTC offset"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            limit(r#""reset":"day","utc_offset":1"#).unwrap_err(),
            "tiers[0].limits[0].utc_offset: must be a string"
        );
        assert_eq!(
            limit(r#""burst":3"#).unwrap_err(),
            "tiers[0].limits[0].per: required field is missing"
        );
    }

    #[test]
    fn a_global_tier_takes_a_calendar_quota_up_to_the_protocols_u32() {
        let policy = |flag: &str, amount: u64| {
            parse(
                format!(
                    r#"{{"global":{{"cluster":"tollgate-sync"}},"tiers":[{{"name":"u",{flag}
                    "identity":{{"header":"x-user-id"}},"limits":[{{"requests":{amount},"reset":"day"}}]}}]}}"#
                )
                .as_bytes(),
            )
            .map_err(|e| e.to_string())
        };
        assert!(policy("", 100).is_ok());
        assert!(policy("", 4_294_967_295).is_ok());
        let e = policy("", 4_294_967_296).unwrap_err();
        assert!(
            e.starts_with("tiers[0].limits[0].requests: cannot be global: a global calendar quota holds at most 4294967295"),
            "{e}"
        );
        assert!(policy(r#""global":false,"#, 4_294_967_296).is_ok());
    }

    #[test]
    fn switching_between_per_and_reset_starts_the_table_afresh() {
        let tag = |p: &crate::Policy| {
            crate::config::rates_tag(p.tiers()[0].limits.iter().map(|l| &l.rate))
        };
        let per = limit(r#""per":"day""#).unwrap();
        let day = limit(r#""reset":"day""#).unwrap();
        let shifted = limit(r#""reset":"day","utc_offset":"+01:00""#).unwrap();
        assert_ne!(tag(&per), tag(&day));
        assert_ne!(tag(&day), tag(&shifted));
    }

    /// Through the policy and a store: a month's token quota held in January and settled in
    /// February leaves February's count as it was; one settled within its month gives back.
    #[test]
    fn token_quotas_settle_into_the_period_they_were_held_in() {
        use crate::calendar::days_from_civil;
        use crate::policy::TokenOutcome;
        use crate::time::Nanos;
        let p = budget(r#""reset":"month""#).unwrap();
        let tier = &p.tiers()[0];
        let mut store = crate::MemoryStore::new();
        p.init_store(&mut store).unwrap();
        let day = |y, m, d| Nanos::from_secs(days_from_civil(y, m, d) as u64 * 86_400);
        let (jan, feb) = (Nanos(day(2026, 2, 1).0 - 1), day(2026, 2, 1));
        let admit = |now: Nanos, store: &mut crate::MemoryStore| match p.admit_tokens(
            tier,
            b"alice",
            None,
            Amount::tokens(500_000),
            now,
            store,
        ) {
            TokenOutcome::Admitted {
                reservation,
                decision,
            } => (reservation, decision.limits[0]),
            other => panic!("{other:?}"),
        };
        let (in_jan, status) = admit(jan, &mut store);
        assert_eq!(status.remaining, 1_500_000);
        assert_eq!(status.reset_after, Nanos(1));
        // Settled within January: 100,000 used, 400,000 given back.
        let (second, _) = admit(jan, &mut store);
        let d = p
            .settle_tokens(tier, &second, Amount::tokens(100_000), jan, &mut store)
            .unwrap();
        assert_eq!(d.limits[0].remaining, 1_400_000);
        // February's first call holds 500,000 of a full quota.
        let (_, status) = admit(feb, &mut store);
        assert_eq!(status.remaining, 1_500_000);
        assert_eq!(status.reset_after, Nanos(day(2026, 3, 1).0 - feb.0));
        // January's first call ends in February: whether it used less or more than it held,
        // February's count does not move.
        for actual in [0, 3_000_000] {
            let d = p
                .settle_tokens(tier, &in_jan, Amount::tokens(actual), feb, &mut store)
                .unwrap();
            assert_eq!(d.limits[0].remaining, 1_500_000, "actual {actual}");
        }
    }
}
