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

use crate::decimal::push_u64;
use crate::decision::Decision;
use crate::tier::Tier;
use crate::time::Nanos;

/// `(name, value)` pairs to add to a response.
pub type Fields = Vec<(&'static str, String)>;

fn window_secs(tier: &Tier, i: usize) -> u64 {
    tier.limits
        .get(i)
        .map_or(0, |l| l.rate.period().as_secs_ceil())
}

/// One quota policy as the structured fields show it.
struct Entry<'a> {
    name: &'a str,
    quota: u64,
    window: u64,
    tokens: bool,
    remaining: u64,
    reset: u64,
}

fn request_entries<'a>(tier: &'a Tier, d: &'a Decision) -> impl Iterator<Item = Entry<'a>> + 'a {
    tier.limits.iter().zip(&d.limits).map(|(l, s)| Entry {
        name: &l.name,
        quota: l.rate.amount(),
        window: l.rate.period().as_secs_ceil(),
        tokens: false,
        remaining: s.remaining,
        reset: s.reset_after.as_secs_ceil(),
    })
}

fn token_entries<'a>(tier: &'a Tier, d: &'a Decision) -> impl Iterator<Item = Entry<'a>> + 'a {
    d.applied
        .iter()
        .zip(&d.limits)
        .filter_map(|(i, s)| tier.budgets.get(*i).map(|b| (b, s)))
        .map(|(b, s)| Entry {
            name: &b.name,
            quota: b.rate.amount(),
            window: b.rate.period().as_secs_ceil(),
            tokens: true,
            remaining: s.remaining,
            reset: s.reset_after.as_secs_ceil(),
        })
}

/// `RateLimit-Policy` and `RateLimit` for a list of quota policies.
fn structured<'a>(entries: impl Iterator<Item = Entry<'a>>, out: &mut Fields) {
    let mut policy = String::new();
    let mut current = String::new();
    for (i, e) in entries.enumerate() {
        if i > 0 {
            policy.push_str(", ");
            current.push_str(", ");
        }
        for (buf, (k1, v1), (k2, v2)) in [
            (&mut policy, ("q", e.quota), ("w", e.window)),
            (&mut current, ("r", e.remaining), ("t", e.reset)),
        ] {
            buf.push('"');
            buf.push_str(e.name);
            buf.push('"');
            for (k, v) in [(k1, v1), (k2, v2)] {
                buf.push(';');
                buf.push_str(k);
                buf.push('=');
                push_u64(buf, v);
            }
        }
        if e.tokens {
            policy.push_str(";qu=\"tokens\"");
        }
    }
    if !policy.is_empty() {
        out.push(("ratelimit-policy", policy));
        out.push(("ratelimit", current));
    }
}

/// The headers for a decision on request limits, allowed or denied.
pub fn fields(tier: &Tier, d: &Decision) -> Fields {
    let mut out = Vec::with_capacity(6);
    if tier.limits.is_empty() {
        return out;
    }
    structured(request_entries(tier, d), &mut out);
    let s = d.status();
    let limit = tier.limits.get(d.decisive).map_or(0, |l| l.rate.amount());
    out.push(("x-ratelimit-limit", number(limit)));
    out.push(("x-ratelimit-remaining", number(s.remaining)));
    out.push(("x-ratelimit-reset", number(s.reset_after.as_secs_ceil())));
    if let Some(wait) = d.retry_after() {
        out.push(("retry-after", number(wait.as_secs_ceil())));
    }
    out
}

fn number(n: u64) -> String {
    let mut s = String::with_capacity(20);
    push_u64(&mut s, n);
    s
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's format): `6m0s`, `1.5s`,
/// `250ms`. Rounded up to the millisecond so a client never comes back early.
pub fn go_duration(n: Nanos) -> String {
    let ms = n.0.div_ceil(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (sec, frac) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{sec}s"));
    } else {
        let f = format!("{frac:03}");
        out.push_str(&format!("{sec}.{}s", f.trim_end_matches('0')));
    }
    out
}

/// The headers of an LLM response: OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
/// (what the SDKs read), and the IETF fields listing request limits and token budgets together.
/// `requests` is the request-limit decision, `tokens` the token-budget one, either may be absent.
pub fn llm_fields(tier: &Tier, requests: Option<&Decision>, tokens: Option<&Decision>) -> Fields {
    let mut out = Vec::with_capacity(10);
    let req_entries = requests.into_iter().flat_map(|d| request_entries(tier, d));
    let tok_entries = tokens.into_iter().flat_map(|d| token_entries(tier, d));
    structured(req_entries.chain(tok_entries), &mut out);
    if let Some(d) = requests.filter(|d| !d.limits.is_empty()) {
        let s = d.status();
        let limit = tier.limits.get(d.decisive).map_or(0, |l| l.rate.amount());
        out.push(("x-ratelimit-limit-requests", format!("{limit}")));
        out.push(("x-ratelimit-remaining-requests", format!("{}", s.remaining)));
        out.push(("x-ratelimit-reset-requests", go_duration(s.reset_after)));
    }
    if let Some(d) = tokens.filter(|d| !d.limits.is_empty()) {
        let s = d.status();
        let limit = d
            .applied
            .get(d.decisive)
            .and_then(|i| tier.budgets.get(*i))
            .map_or(0, |b| b.rate.amount());
        out.push(("x-ratelimit-limit-tokens", format!("{limit}")));
        out.push(("x-ratelimit-remaining-tokens", format!("{}", s.remaining)));
        out.push(("x-ratelimit-reset-tokens", go_duration(s.reset_after)));
    }
    let wait = [requests, tokens]
        .into_iter()
        .flatten()
        .filter_map(Decision::retry_after)
        .max();
    if let Some(wait) = wait {
        out.push(("retry-after", format!("{}", wait.as_secs_ceil())));
        out.push(("retry-after-ms", format!("{}", wait.0.div_ceil(1_000_000))));
    }
    out
}

/// Which error vocabulary an LLM client expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// The body of an LLM 429, in the format the client's SDK parses, so that it backs off.
pub fn llm_denial_body(
    style: ErrorStyle,
    tier: &Tier,
    requests: Option<&Decision>,
    tokens: Option<&Decision>,
) -> String {
    let token_denied = tokens.is_some_and(|d| !d.allowed);
    let (what, policy, wait) = if token_denied {
        let d = tokens.map(|d| {
            (
                d.applied.get(d.decisive).and_then(|i| tier.budgets.get(*i)),
                d.status(),
            )
        });
        let name = d.and_then(|(b, _)| b).map_or("", |b| b.name.as_str());
        (
            "tokens",
            name,
            d.map_or(Nanos::ZERO, |(_, s)| s.retry_after),
        )
    } else {
        let d = requests.map(|d| (tier.limits.get(d.decisive), d.status()));
        let name = d.and_then(|(l, _)| l).map_or("", |l| l.name.as_str());
        (
            "requests",
            name,
            d.map_or(Nanos::ZERO, |(_, s)| s.retry_after),
        )
    };
    let message = format!(
        "Rate limit reached for {what} in tier {} (policy {policy}). Please try again in {}.",
        tier.name,
        go_duration(wait)
    );
    match style {
        ErrorStyle::OpenAi => format!(
            "{{\"error\":{{\"message\":\"{message}\",\"type\":\"rate_limit_exceeded\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}}}"
        ),
        ErrorStyle::Anthropic => format!(
            "{{\"type\":\"error\",\"error\":{{\"type\":\"rate_limit_error\",\"message\":\"{message}\"}}}}"
        ),
    }
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
    use crate::Policy;

    #[test]
    fn durations_read_like_openai_headers() {
        assert_eq!(go_duration(Nanos(0)), "0ms");
        assert_eq!(go_duration(Nanos(1)), "1ms");
        assert_eq!(go_duration(Nanos(250_000_000)), "250ms");
        assert_eq!(go_duration(Nanos::SECOND), "1s");
        assert_eq!(go_duration(Nanos(1_500_000_000)), "1.5s");
        assert_eq!(go_duration(Nanos::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Nanos::from_secs(3_723)), "1h2m3s");
    }

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
