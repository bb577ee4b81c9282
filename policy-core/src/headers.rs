//! Rate-limit response headers and the 429 body.
//!
//! Three vocabularies, because clients speak all three: the IETF draft's structured fields
//! (`RateLimit-Policy: "name";q=100;w=60`, `RateLimit: "name";r=42;t=18`, draft -09/-10), the
//! widespread `X-RateLimit-Limit/Remaining/Reset` (reset as delta seconds, as Envoy's own
//! local_ratelimit sends it), and `Retry-After` on a denial. All values come from one
//! [`Decision`], so they always agree.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::decision::Decision;
use crate::tier::Tier;

/// `(name, value)` pairs to add to a response.
pub type Fields = Vec<(&'static str, String)>;

fn window_secs(tier: &Tier, i: usize) -> u64 {
    tier.limits
        .get(i)
        .map_or(0, |l| l.rate.period().as_secs_ceil())
}

/// The headers for a decision, allowed or denied.
pub fn fields(tier: &Tier, d: &Decision) -> Fields {
    let mut policy = String::new();
    let mut current = String::new();
    for (i, (limit, status)) in tier.limits.iter().zip(&d.limits).enumerate() {
        if i > 0 {
            policy.push_str(", ");
            current.push_str(", ");
        }
        policy.push_str(&format!(
            "\"{}\";q={};w={}",
            limit.name,
            limit.rate.amount(),
            window_secs(tier, i)
        ));
        current.push_str(&format!(
            "\"{}\";r={};t={}",
            limit.name,
            status.remaining,
            status.reset_after.as_secs_ceil()
        ));
    }
    let s = d.status();
    let limit = tier.limits.get(d.decisive).map_or(0, |l| l.rate.amount());
    let mut out = Vec::with_capacity(6);
    out.push(("ratelimit-policy", policy));
    out.push(("ratelimit", current));
    out.push(("x-ratelimit-limit", format!("{limit}")));
    out.push(("x-ratelimit-remaining", format!("{}", s.remaining)));
    out.push((
        "x-ratelimit-reset",
        format!("{}", s.reset_after.as_secs_ceil()),
    ));
    if let Some(wait) = d.retry_after() {
        out.push(("retry-after", format!("{}", wait.as_secs_ceil())));
    }
    out
}

/// The JSON body of a 429. Tier and limit names are restricted to `[A-Za-z0-9._-]` by config,
/// so they need no escaping.
pub fn denial_body(tier: &Tier, d: &Decision) -> String {
    let s = d.status();
    let (name, amount) = tier
        .limits
        .get(d.decisive)
        .map_or(("", 0), |l| (l.name.as_str(), l.rate.amount()));
    format!(
        "{{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"{}\",\"policy\":\"{}\",\"limit\":{},\"window_seconds\":{},\"retry_after_seconds\":{}}}",
        tier.name,
        name,
        amount,
        window_secs(tier, d.decisive),
        s.retry_after.as_secs_ceil()
    )
}

/// The gRPC status message of a denial (sent as `grpc-message`).
pub fn denial_grpc_message(tier: &Tier, d: &Decision) -> String {
    format!(
        "rate limit exceeded for tier {}; retry after {} s",
        tier.name,
        d.status().retry_after.as_secs_ceil()
    )
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::policy::Outcome;
    use crate::request::HeaderList;
    use crate::store::MemoryStore;
    use crate::time::Nanos;
    use crate::Policy;

    #[test]
    fn a_denial_carries_headers_that_agree() {
        let p = Policy::from_json(
            br#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
                "limits":[{"requests":100,"per":"minute"}]}]}"#,
        )
        .unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let h: HeaderList = [("x-user-id", "test")].into_iter().collect();
        let now = Nanos(1_000_000_000_000);
        let mut last = None;
        for _ in 0..101 {
            last = Some(p.check(&h, now, &mut s));
        }
        let Some(Outcome::Decided { tier, decision, .. }) = last else {
            panic!()
        };
        assert!(!decision.allowed);
        let f = fields(tier, &decision);
        let get = |n: &str| f.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("ratelimit-policy"), Some("\"users\";q=100;w=60"));
        assert_eq!(get("ratelimit"), Some("\"users\";r=0;t=60"));
        assert_eq!(get("x-ratelimit-limit"), Some("100"));
        assert_eq!(get("x-ratelimit-remaining"), Some("0"));
        assert_eq!(get("x-ratelimit-reset"), Some("60"));
        assert_eq!(get("retry-after"), Some("1"));
        let body = denial_body(tier, &decision);
        assert_eq!(
            body,
            "{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"users\",\"policy\":\"users\",\"limit\":100,\"window_seconds\":60,\"retry_after_seconds\":1}"
        );
    }
}
