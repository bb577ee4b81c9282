//! The top-level `global` section and what it requires of the tiers it makes global.

use alloc::format;
use alloc::string::String;

use serde_json::Value;

use super::error::{err, ConfigError, Reason};
use super::json::{positive, string, Obj};
use crate::bucket::Rate;
use crate::budget::Meter;
use crate::global::descriptor::limit_of;
use crate::global::{
    GlobalMode, GlobalSettings, OnUnavailable, MAX_PENDING_KEYS, SYNC_INTERVAL_MS, TIMEOUT_MS,
};
use crate::tier::Tier;
use crate::time::Nanos;

const FIELDS: &[&str] = &[
    "cluster",
    "mode",
    "domain",
    "sync_interval_ms",
    "timeout_ms",
    "max_pending_keys",
    "on_unavailable",
];
/// Envoy's gRPC callout takes the cluster inside a serialized `GrpcService`, passed as a string:
/// up to 120 characters every length in it is one byte, so the bytes stay ASCII.
const MAX_CLUSTER: usize = 120;
const MODES: &[&str] = &["sync", "strict"];
const FALLBACKS: &[&str] = &["local", "allow", "deny"];

/// Parses `global` at `path`.
pub(super) fn parse_global(v: &Value, path: &str) -> Result<GlobalSettings, ConfigError> {
    let o = Obj::new(v, path, FIELDS)?;
    let cluster = text(o.req("cluster")?, &o.at("cluster"))?;
    if cluster.len() > MAX_CLUSTER {
        return err(
            o.at("cluster"),
            Reason::Invalid {
                why: "must be at most 120 characters",
            },
        );
    }
    let mode = match o.opt("mode") {
        None => GlobalMode::Sync,
        Some(m) => match string(m, &o.at("mode"))? {
            "sync" => GlobalMode::Sync,
            "strict" => GlobalMode::Strict,
            _ => return err(o.at("mode"), Reason::NotOneOf { expected: MODES }),
        },
    };
    let domain = match o.opt("domain") {
        Some(d) => text(d, &o.at("domain"))?,
        None => String::from("tollgate"),
    };
    let sync_interval = millis(
        o.opt("sync_interval_ms"),
        &o.at("sync_interval_ms"),
        1_000,
        SYNC_INTERVAL_MS,
        "must be from 50 to 60000 (milliseconds)",
    )?;
    let timeout = millis(
        o.opt("timeout_ms"),
        &o.at("timeout_ms"),
        250,
        TIMEOUT_MS,
        "must be from 10 to 10000 (milliseconds)",
    )?;
    let max_pending_keys = match o.opt("max_pending_keys") {
        Some(n) => positive(n, &o.at("max_pending_keys"), u64::from(MAX_PENDING_KEYS.1))? as u32,
        None => MAX_PENDING_KEYS.0,
    };
    let on_unavailable = match o.opt("on_unavailable") {
        None => OnUnavailable::Local,
        Some(_) if mode != GlobalMode::Strict => {
            return err(
                o.at("on_unavailable"),
                Reason::Invalid {
                    why: "applies only to mode \"strict\" (sync mode never waits on the service)",
                },
            )
        }
        Some(f) => match string(f, &o.at("on_unavailable"))? {
            "local" => OnUnavailable::Local,
            "allow" => OnUnavailable::Allow,
            "deny" => OnUnavailable::Deny,
            _ => {
                return err(
                    o.at("on_unavailable"),
                    Reason::NotOneOf {
                        expected: FALLBACKS,
                    },
                )
            }
        },
    };
    Ok(GlobalSettings {
        cluster,
        mode,
        domain,
        sync_interval,
        timeout,
        max_pending_keys,
        on_unavailable,
    })
}

/// A non-empty string of visible ASCII (a cluster name or an RLS domain).
fn text(v: &Value, path: &str) -> Result<String, ConfigError> {
    let s = string(v, path)?;
    if s.is_empty() {
        return err(path, Reason::Empty);
    }
    if s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return err(
            path,
            Reason::Invalid {
                why: "must be at most 256 visible ASCII characters",
            },
        );
    }
    Ok(s.into())
}

fn millis(
    v: Option<&Value>,
    path: &str,
    default: u64,
    (min, max): (u64, u64),
    why: &'static str,
) -> Result<Nanos, ConfigError> {
    let ms = match v {
        Some(v) => positive(v, path, max)?,
        None => default,
    };
    if ms < min {
        return err(path, Reason::Invalid { why });
    }
    Ok(Nanos(ms * 1_000_000))
}

/// The tier's own `global` flag: `None` when absent (follows the policy).
pub(super) fn tier_flag(v: Option<&Value>, path: &str) -> Result<Option<bool>, ConfigError> {
    v.map(|b| super::json::boolean(b, path)).transpose()
}

/// Checks that every rate of a global tier can be carried by a descriptor ([`limit_of`]).
/// `path` is the tier's.
pub(super) fn check_tier(tier: &Tier, path: &str) -> Result<(), ConfigError> {
    for (i, l) in tier.limits.iter().enumerate() {
        expressible(&l.rate, &format!("{path}.limits[{i}]"), "requests")?;
    }
    for (i, b) in tier.budgets.iter().enumerate() {
        // A spend budget's cells are micro-units: its limit is about 4,294.97 of the currency
        // per unit of time, named at the field the operator wrote.
        let amount = match b.meter {
            Meter::Tokens => "tokens",
            Meter::Spend => "spend",
        };
        expressible(&b.rate, &format!("{path}.tokens[{i}]"), amount)?;
    }
    Ok(())
}

fn expressible(rate: &Rate, path: &str, amount: &str) -> Result<(), ConfigError> {
    if rate.calendar_of().is_some() {
        return quota_expressible(rate, path, amount);
    }
    if limit_of(rate).is_some() {
        return Ok(());
    }
    err(
        format!("{path}.{amount}"),
        Reason::Invalid {
            why: "cannot be global: no rate limit service unit (second, minute, hour, day, \
                  month = 30 days, year = 365 days) holds this rate as a whole number of at most \
                  4294967295 (for a week: make it a multiple of 7; a spend budget counts \
                  micro-units, so at most 4294.967295 of its currency per unit), or set \
                  \"global\": false on the tier",
        },
    )
}

/// A calendar quota's descriptor carries its amount in the protocol's `u32`
/// ([`crate::global::calendar::limit`]).
fn quota_expressible(rate: &Rate, path: &str, amount: &str) -> Result<(), ConfigError> {
    if crate::global::calendar::limit(rate).is_some() {
        return Ok(());
    }
    err(
        format!("{path}.{amount}"),
        Reason::Invalid {
            why: "cannot be global: a global calendar quota holds at most 4294967295 per period \
                  (the rate limit service protocol's limit; a spend budget counts micro-units, \
                  so at most 4294.967295 of its currency per period), or set \"global\": false \
                  on the tier",
        },
    )
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::ToString;

    use super::*;
    use crate::config::parse;

    const TIERS: &str = r#""tiers":[
        {"name":"user","identity":{"header":"x-user-id"},"limits":[{"requests":100,"per":"minute"}]},
        {"name":"anon","identity":"shared","global":false,"limits":[{"requests":10,"per":"minute"}]}]"#;

    fn policy(global: &str) -> Result<crate::Policy, String> {
        let text = alloc::format!(r#"{{"global":{global},{TIERS}}}"#);
        parse(text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_per_tier_opt_out() {
        let p = policy(r#"{"cluster":"tollgate-sync"}"#).unwrap();
        let g = p.global().unwrap();
        assert_eq!(
            *g,
            GlobalSettings {
                cluster: "tollgate-sync".into(),
                mode: GlobalMode::Sync,
                domain: "tollgate".into(),
                sync_interval: Nanos::from_secs(1),
                timeout: Nanos(250_000_000),
                max_pending_keys: 10_000,
                on_unavailable: OnUnavailable::Local,
            }
        );
        let flags: alloc::vec::Vec<bool> = p.tiers().iter().map(|t| t.global).collect();
        assert_eq!(flags, [true, false]);
        let local = parse(alloc::format!("{{{TIERS}}}").as_bytes()).unwrap();
        assert!(local.global().is_none());
        assert!(local.tiers().iter().all(|t| !t.global));
    }

    #[test]
    fn every_field_is_read() {
        let p = policy(
            r#"{"cluster":"rls","mode":"strict","domain":"api","sync_interval_ms":50,
                "timeout_ms":10000,"max_pending_keys":7,"on_unavailable":"deny"}"#,
        )
        .unwrap();
        let g = p.global().unwrap();
        assert_eq!(
            (g.mode, g.domain.as_str(), g.sync_interval, g.timeout),
            (
                GlobalMode::Strict,
                "api",
                Nanos(50_000_000),
                Nanos::from_secs(10)
            )
        );
        assert_eq!(
            (g.max_pending_keys, g.on_unavailable),
            (7, OnUnavailable::Deny)
        );
    }

    #[test]
    fn bad_values_name_their_path() {
        for (global, want) in [
            (r#"{}"#, "global.cluster: required field is missing"),
            (r#"{"cluster":""}"#, "global.cluster: must not be empty"),
            (
                r#"{"cluster":"a b"}"#,
                "global.cluster: must be at most 256 visible",
            ),
            (
                r#"{"cluster":"c","mode":"fast"}"#,
                "global.mode: must be one of: sync, strict",
            ),
            (
                r#"{"cluster":"c","sync_interval_ms":49}"#,
                "global.sync_interval_ms: must be from 50 to 60000",
            ),
            (
                r#"{"cluster":"c","sync_interval_ms":60001}"#,
                "global.sync_interval_ms: must be at most 60000",
            ),
            (
                r#"{"cluster":"c","timeout_ms":0}"#,
                "global.timeout_ms: must be greater than 0",
            ),
            (
                r#"{"cluster":"c","timeout_ms":9}"#,
                "global.timeout_ms: must be from 10 to 10000",
            ),
            (
                r#"{"cluster":"c","max_pending_keys":1000001}"#,
                "global.max_pending_keys: must be at most 1000000",
            ),
            (
                r#"{"cluster":"c","on_unavailable":"allow"}"#,
                "global.on_unavailable: applies only to mode \"strict\"",
            ),
            (
                r#"{"cluster":"c","mode":"strict","on_unavailable":"maybe"}"#,
                "global.on_unavailable: must be one of: local, allow, deny",
            ),
            (
                r#"{"cluster":"c","clustr":"d"}"#,
                "global.clustr: unknown field",
            ),
            (r#"{"cluster":"c","domain":7}"#, "global.domain: must be"),
            (r#""tollgate-sync""#, "global: must be"),
        ] {
            let e = policy(global).unwrap_err();
            assert!(e.starts_with(want), "{global}: {e}");
        }
    }

    #[test]
    fn a_cluster_name_is_at_most_120_characters() {
        let ok = alloc::format!(r#"{{"cluster":"{}"}}"#, "c".repeat(120));
        assert!(policy(&ok).is_ok());
        let long = alloc::format!(r#"{{"cluster":"{}"}}"#, "c".repeat(121));
        assert_eq!(
            policy(&long).unwrap_err(),
            "global.cluster: must be at most 120 characters"
        );
    }

    #[test]
    fn a_tier_flag_needs_the_section_and_must_be_a_boolean() {
        let e = parse(
            br#"{"tiers":[{"name":"a","identity":"shared","global":true,
                "limits":[{"requests":1,"per":"minute"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("tiers[0].global: needs the policy's top-level"),
            "{e}"
        );
        let e = parse(
            br#"{"global":{"cluster":"c"},"tiers":[{"name":"a","identity":"shared","global":"yes",
                "limits":[{"requests":1,"per":"minute"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "tiers[0].global: must be true or false");
    }

    #[test]
    fn a_global_rate_no_unit_holds_is_refused_unless_the_tier_stays_local() {
        let week = |n: u64, flag: &str| {
            alloc::format!(
                r#"{{"global":{{"cluster":"c"}},"tiers":[{{"name":"a","identity":"shared"{flag},
                "limits":[{{"requests":5,"per":"minute"}},{{"requests":{n},"per":"week"}}],
                "tokens":[{{"tokens":{n},"per":"week"}}]}}]}}"#
            )
        };
        let e = parse(week(1_000, "").as_bytes()).unwrap_err().to_string();
        assert!(
            e.starts_with("tiers[0].limits[1].requests: cannot be global"),
            "{e}"
        );
        assert!(
            parse(week(7_000, "").as_bytes()).is_ok(),
            "1,000 per day exactly"
        );
        assert!(parse(week(1_000, r#","global":false"#).as_bytes()).is_ok());
        let e = parse(
            br#"{"global":{"cluster":"c"},"tiers":[{"name":"a","identity":"shared",
                "tokens":[{"tokens":1000,"per":"week"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("tiers[0].tokens[0].tokens: cannot be global"),
            "{e}"
        );
    }

    #[test]
    fn the_check_report_names_the_global_tiers() {
        let text = alloc::format!(r#"{{"global":{{"cluster":"tollgate-sync"}},{TIERS}}}"#);
        let report = crate::config::check_report("p.json", text.as_bytes()).unwrap();
        assert!(
            report.ends_with(
                "; global (sync, cluster tollgate-sync, domain tollgate, every 1000 ms): user"
            ),
            "{report}"
        );
    }
}
