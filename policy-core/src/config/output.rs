//! What a decision writes besides the decision itself: the `X-RateLimit-*` response fields and the
//! access-log record. Both are on by default (what tollgate always did); a policy that needs
//! neither drops them, and with them the host calls that write them — in Envoy each is a crossing
//! of the VM boundary on every decided request (three for the fields, one for the record;
//! BENCHMARKS.md §2).

use super::error::ConfigError;
use super::json::{boolean, Obj};

/// The policy's output switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Output {
    /// Whether request-limit responses carry `X-RateLimit-Limit/-Remaining/-Reset` besides the
    /// IETF `RateLimit-Policy`/`RateLimit` fields, which say the same and are always sent.
    pub(super) x_ratelimit_headers: bool,
    /// Whether a decided request sets its access-log record (filter state `wasm.tollgate`).
    pub(super) records: bool,
}

/// Reads the switches from the top-level object; an absent one is on.
pub(super) fn parse(top: &Obj<'_>) -> Result<Output, ConfigError> {
    let switch = |field: &str| match top.opt(field) {
        Some(v) => boolean(v, &top.at(field)),
        None => Ok(true),
    };
    Ok(Output {
        x_ratelimit_headers: switch("x_ratelimit_headers")?,
        records: switch("records")?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const TIER: &str =
        r#""tiers":[{"name":"t","identity":"shared","limits":[{"requests":5,"per":"minute"}]}]"#;

    fn policy(top: &str) -> Result<crate::Policy, alloc::string::String> {
        parse(alloc::format!("{{{top}{TIER}}}").as_bytes()).map_err(|e| alloc::format!("{e}"))
    }

    #[test]
    fn both_switches_default_on() {
        let p = policy("").unwrap();
        assert!(p.records());
        assert!(p.tiers()[0].x_ratelimit_headers);
    }

    #[test]
    fn each_switch_turns_off_alone() {
        let p = policy(r#""x_ratelimit_headers":false,"#).unwrap();
        assert!(!p.tiers()[0].x_ratelimit_headers && p.records());
        let p = policy(r#""records":false,"#).unwrap();
        assert!(p.tiers()[0].x_ratelimit_headers && !p.records());
        let p = policy(r#""records":true,"x_ratelimit_headers":true,"#).unwrap();
        assert!(p.tiers()[0].x_ratelimit_headers && p.records());
    }

    #[test]
    fn a_switch_must_be_a_boolean() {
        let e = policy(r#""records":"no","#).unwrap_err();
        assert!(e.starts_with("records: "), "{e}");
        let e = policy(r#""x_ratelimit_headers":0,"#).unwrap_err();
        assert!(e.starts_with("x_ratelimit_headers: "), "{e}");
    }
}
