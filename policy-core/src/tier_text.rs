//! The text of a tier's request-limit fields and refusal that is the same for every request,
//! written once when the policy loads.
//!
//! Of an admitted request's five fields, `RateLimit-Policy` (`"users";q=100;w=60`) and
//! `X-RateLimit-Limit` depend only on the tier's limits, and `RateLimit` and the refusal's JSON
//! body are constant text around a few numbers. Writing all of it per request cost the guest
//! ~4,500 Wasm operators per admission and ~7,900 per refusal more than now (BENCHMARKS.md §2,
//! "constant field text per tier"); here the constant parts are kept ready, and a request writes
//! only its numbers ([`crate::decimal`], no `core::fmt`) into a buffer the caller reuses.

use alloc::string::String;
use alloc::vec::Vec;

use crate::decimal::{push_u64, Digits};
use crate::decision::Decision;
use crate::tier::Tier;

/// A tier's constant text ([`Tier::text`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierText {
    /// `RateLimit-Policy`'s value for every limit: `"name";q=N;w=W`, joined by `, `.
    policy: String,
    /// Where each limit's entry ends in `policy`: a decision on fewer limits lists fewer.
    policy_ends: Vec<usize>,
    /// Per limit, what comes before its remaining count in `RateLimit`: `"name";r=`, after
    /// `, ` for all but the first.
    current: Vec<String>,
    /// The longest `RateLimit` can be (every limit's text and two numbers of 20 digits): its
    /// buffer is sized once.
    current_capacity: usize,
    /// Per limit, its quota in decimal (`X-RateLimit-Limit`).
    quotas: Vec<String>,
    /// Per limit, the refusal's JSON body up to its wait (`…,"retry_after_seconds":`).
    bodies: Vec<String>,
    /// The same for a decisive limit the tier does not have (no decision of its own says so):
    /// an empty policy name, 0 and 0, as the body always said then.
    body_without_limit: String,
    /// The gRPC message up to its wait: `rate limit exceeded for tier NAME; retry after `.
    grpc: String,
}

/// The refusal body's text before its wait, for one limit. Tier and limit names are restricted
/// to `[A-Za-z0-9._-]` by config, so they need no escaping.
fn body_head(tier: &str, limit: &str, quota: u64, window: u64) -> String {
    let mut out = String::with_capacity(130 + tier.len() + limit.len());
    out.push_str("{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"");
    out.push_str(tier);
    out.push_str("\",\"policy\":\"");
    out.push_str(limit);
    out.push_str("\",\"limit\":");
    push_u64(&mut out, quota);
    out.push_str(",\"window_seconds\":");
    push_u64(&mut out, window);
    out.push_str(",\"retry_after_seconds\":");
    out
}

impl TierText {
    /// The constant text of `tier`'s limits (its name and limits as they are now).
    pub fn of(tier: &Tier) -> TierText {
        let mut text = TierText {
            body_without_limit: body_head(&tier.name, "", 0, 0),
            grpc: String::from("rate limit exceeded for tier "),
            ..TierText::default()
        };
        text.grpc.push_str(&tier.name);
        text.grpc.push_str("; retry after ");
        for (i, limit) in tier.limits.iter().enumerate() {
            let (quota, window) = (limit.rate.amount(), limit.rate.period().as_secs_ceil());
            let mut current = String::with_capacity(limit.name.len() + 7);
            if i > 0 {
                text.policy.push_str(", ");
                current.push_str(", ");
            }
            for buf in [&mut text.policy, &mut current] {
                buf.push('"');
                buf.push_str(&limit.name);
                buf.push('"');
            }
            text.policy.push_str(";q=");
            push_u64(&mut text.policy, quota);
            text.policy.push_str(";w=");
            push_u64(&mut text.policy, window);
            text.policy_ends.push(text.policy.len());
            current.push_str(";r=");
            text.current_capacity += current.len() + 2 * crate::decimal::MAX_DIGITS + 3;
            text.current.push(current);
            text.quotas.push(String::from(Digits::of(quota).as_str()));
            text.bodies
                .push(body_head(&tier.name, &limit.name, quota, window));
        }
        text
    }

    /// `RateLimit`'s value for `d` in `out` (cleared first): each limit's remaining count and
    /// seconds until full, after its constant text.
    fn write_current(&self, d: &Decision, out: &mut String) {
        out.clear();
        out.reserve(self.current_capacity);
        for (head, s) in self.current.iter().zip(&d.limits) {
            out.push_str(head);
            push_u64(out, s.remaining);
            out.push_str(";t=");
            push_u64(out, s.reset_after.as_secs_ceil());
        }
    }

    /// Appends the JSON body of a refusal `d` to `out`.
    pub fn push_denial_body(&self, d: &Decision, out: &mut String) {
        let head = self
            .bodies
            .get(d.decisive)
            .unwrap_or(&self.body_without_limit);
        out.reserve(head.len() + crate::decimal::MAX_DIGITS + 1);
        out.push_str(head);
        push_u64(out, d.status().retry_after.as_secs_ceil());
        out.push('}');
    }

    /// Appends the gRPC status message of a refusal `d` to `out`.
    pub fn push_grpc_message(&self, d: &Decision, out: &mut String) {
        out.reserve(self.grpc.len() + crate::decimal::MAX_DIGITS + 2);
        out.push_str(&self.grpc);
        push_u64(out, d.status().retry_after.as_secs_ceil());
        out.push_str(" s");
    }
}

/// One decision's request-limit fields, as [`crate::headers::fields`] lists them, without an
/// allocation: the constant text borrowed from the tier, the numbers held in place, `RateLimit`
/// in a buffer of the caller's (reused from request to request, it stops growing).
#[derive(Debug)]
pub struct RequestFields<'a> {
    /// `RateLimit-Policy` and `RateLimit`, when the decision has limits of the tier's.
    ietf: Option<(&'a str, &'a str)>,
    /// `X-RateLimit-Limit/-Remaining/-Reset`, unless the tier leaves them out.
    x: Option<(&'a str, Digits, Digits)>,
    /// `Retry-After`, on a refusal.
    retry: Option<Digits>,
}

impl<'a> RequestFields<'a> {
    /// The fields of `d` on `tier`: the IETF fields, the `X-RateLimit-*` ones unless the tier's
    /// `x_ratelimit_headers` is off, and, when `retry_after` and `d` is a refusal,
    /// `Retry-After` (a shadow tier's headers leave it out: nothing was refused). `buf` is
    /// cleared and holds `RateLimit`'s value.
    pub fn new(
        tier: &'a Tier,
        d: &Decision,
        retry_after: bool,
        buf: &'a mut String,
    ) -> RequestFields<'a> {
        let none = RequestFields {
            ietf: None,
            x: None,
            retry: None,
        };
        if tier.limits.is_empty() {
            return none;
        }
        let text = tier.text();
        let listed = text.policy_ends.len().min(d.limits.len());
        let ietf = match listed.checked_sub(1).and_then(|i| text.policy_ends.get(i)) {
            Some(&end) => {
                text.write_current(d, buf);
                let buf: &'a String = buf;
                let policy = text.policy.get(..end).unwrap_or_default();
                Some((policy, buf.as_str()))
            }
            None => None,
        };
        let x = tier.x_ratelimit_headers.then(|| {
            let s = d.status();
            let quota = text.quotas.get(d.decisive).map_or("0", String::as_str);
            (
                quota,
                Digits::of(s.remaining),
                Digits::of(s.reset_after.as_secs_ceil()),
            )
        });
        let retry = d
            .retry_after()
            .filter(|_| retry_after)
            .map(|wait| Digits::of(wait.as_secs_ceil()));
        RequestFields { ietf, x, retry }
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        2 * usize::from(self.ietf.is_some())
            + 3 * usize::from(self.x.is_some())
            + usize::from(self.retry.is_some())
    }

    /// Whether there are none (a tier without request limits).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each field's name and value, in the order clients have always received them.
    pub fn each<'s>(&'s self, mut f: impl FnMut(&'static str, &'s str))
    where
        'a: 's,
    {
        if let Some((policy, current)) = self.ietf {
            f("ratelimit-policy", policy);
            f("ratelimit", current);
        }
        if let Some((quota, remaining, reset)) = &self.x {
            f("x-ratelimit-limit", quota);
            f("x-ratelimit-remaining", remaining.as_str());
            f("x-ratelimit-reset", reset.as_str());
        }
        if let Some(wait) = &self.retry {
            f("retry-after", wait.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::decision::LimitStatus;
    use crate::time::Nanos;
    use crate::Policy;
    use alloc::vec;

    fn policy(top: &str) -> Policy {
        let json = alloc::format!(
            r#"{{{top}"tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
                "limits":[{{"name":"burst","requests":5,"per":"second"}},
                          {{"name":"hourly","requests":1000,"per":"hour"}}]}}]}}"#
        );
        Policy::from_json(json.as_bytes()).unwrap()
    }

    fn decision(allowed: bool, decisive: usize, n: usize) -> Decision {
        let limits: Vec<LimitStatus> = (0..n as u64)
            .map(|i| LimitStatus {
                allowed: allowed || i != decisive as u64,
                remaining: 3 + i,
                reset_after: Nanos(1_500_000_000 + i * 1_000_000_000),
                retry_after: if allowed {
                    Nanos::ZERO
                } else {
                    Nanos(2_000_000_001)
                },
            })
            .collect();
        Decision {
            allowed,
            decisive,
            limits: limits.into(),
            applied: vec![],
        }
    }

    fn listed(f: &RequestFields<'_>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        f.each(|n, v| out.push((n, String::from(v))));
        assert_eq!(out.len(), f.len());
        out
    }

    #[test]
    fn the_constant_text_and_the_numbers_make_the_fields_clients_have_always_seen() {
        let p = policy("");
        let tier = &p.tiers()[0];
        let mut buf = String::from("left over from the last request");
        let refused = decision(false, 1, 2);
        let f = RequestFields::new(tier, &refused, true, &mut buf);
        assert_eq!(
            listed(&f),
            [
                (
                    "ratelimit-policy",
                    String::from("\"burst\";q=5;w=1, \"hourly\";q=1000;w=3600")
                ),
                (
                    "ratelimit",
                    String::from("\"burst\";r=3;t=2, \"hourly\";r=4;t=3")
                ),
                ("x-ratelimit-limit", String::from("1000")),
                ("x-ratelimit-remaining", String::from("4")),
                ("x-ratelimit-reset", String::from("3")),
                ("retry-after", String::from("3")),
            ]
        );
        // A shadow tier's headers: no wait.
        let f = RequestFields::new(tier, &refused, false, &mut buf);
        assert!(!listed(&f).iter().any(|(n, _)| *n == "retry-after"));
        // A decision on fewer limits than the tier has lists only those.
        let f = RequestFields::new(tier, &decision(true, 0, 1), true, &mut buf);
        assert_eq!(
            listed(&f)[..2],
            [
                ("ratelimit-policy", String::from("\"burst\";q=5;w=1")),
                ("ratelimit", String::from("\"burst\";r=3;t=2")),
            ]
        );
        // None at all: no IETF fields; the decisive limit's quota, nothing left.
        let f = RequestFields::new(tier, &decision(true, 0, 0), true, &mut buf);
        assert_eq!(
            listed(&f),
            [
                ("x-ratelimit-limit", String::from("5")),
                ("x-ratelimit-remaining", String::from("0")),
                ("x-ratelimit-reset", String::from("0")),
            ]
        );
    }

    #[test]
    fn without_x_ratelimit_headers_the_ietf_fields_and_the_wait_remain() {
        let p = policy(r#""x_ratelimit_headers":false,"#);
        let mut buf = String::new();
        let f = RequestFields::new(&p.tiers()[0], &decision(false, 0, 2), true, &mut buf);
        let names: Vec<_> = listed(&f).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ratelimit-policy", "ratelimit", "retry-after"]);
    }

    #[test]
    fn refusal_texts_name_the_decisive_limit_or_none() {
        let p = policy("");
        let text = p.tiers()[0].text();
        let mut body = String::new();
        text.push_denial_body(&decision(false, 1, 2), &mut body);
        assert_eq!(
            body,
            "{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"users\",\"policy\":\"hourly\",\"limit\":1000,\"window_seconds\":3600,\"retry_after_seconds\":3}"
        );
        let mut body = String::new();
        text.push_denial_body(&decision(false, 5, 2), &mut body);
        assert_eq!(
            body,
            "{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"users\",\"policy\":\"\",\"limit\":0,\"window_seconds\":0,\"retry_after_seconds\":0}"
        );
        let mut message = String::new();
        text.push_grpc_message(&decision(false, 0, 2), &mut message);
        assert_eq!(
            message,
            "rate limit exceeded for tier users; retry after 3 s"
        );
    }

    /// What the fields and the refusal texts were before the constant text was kept per tier
    /// (`c1ba948`'s `headers::fields`, `denial_body`, `denial_grpc_message`, in `core::fmt`):
    /// the oracle.
    fn as_before(tier: &Tier, d: &Decision) -> (Vec<(&'static str, String)>, String, String) {
        use alloc::format;
        let mut out = Vec::new();
        if !tier.limits.is_empty() {
            let entries: Vec<_> = tier.limits.iter().zip(&d.limits).collect();
            if !entries.is_empty() {
                let policy: Vec<_> = entries
                    .iter()
                    .map(|(l, _)| {
                        let w = l.rate.period().as_secs_ceil();
                        format!("\"{}\";q={};w={w}", l.name, l.rate.amount())
                    })
                    .collect();
                let current: Vec<_> = entries
                    .iter()
                    .map(|(l, s)| {
                        let t = s.reset_after.as_secs_ceil();
                        format!("\"{}\";r={};t={t}", l.name, s.remaining)
                    })
                    .collect();
                out.push(("ratelimit-policy", policy.join(", ")));
                out.push(("ratelimit", current.join(", ")));
            }
            if tier.x_ratelimit_headers {
                let s = d.status();
                let limit = tier.limits.get(d.decisive).map_or(0, |l| l.rate.amount());
                out.push(("x-ratelimit-limit", format!("{limit}")));
                out.push(("x-ratelimit-remaining", format!("{}", s.remaining)));
                let reset = s.reset_after.as_secs_ceil();
                out.push(("x-ratelimit-reset", format!("{reset}")));
            }
            if let Some(wait) = d.retry_after() {
                out.push(("retry-after", format!("{}", wait.as_secs_ceil())));
            }
        }
        let limit = tier.limits.get(d.decisive);
        let (name, amount) = limit.map_or(("", 0), |l| (l.name.as_str(), l.rate.amount()));
        let window = limit.map_or(0, |l| l.rate.period().as_secs_ceil());
        let wait = d.status().retry_after.as_secs_ceil();
        let body = format!(
            "{{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"{}\",\"policy\":\"{name}\",\"limit\":{amount},\"window_seconds\":{window},\"retry_after_seconds\":{wait}}}",
            tier.name
        );
        let message = format!(
            "rate limit exceeded for tier {}; retry after {wait} s",
            tier.name
        );
        (out, body, message)
    }

    #[test]
    fn fields_and_refusals_are_written_as_they_were_before() {
        let policies = [
            r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
                "limits":[{"requests":2,"per":"minute"}]}]}"#,
            r#"{"x_ratelimit_headers":false,"tiers":[{"name":"a.b-c_9","identity":"shared",
                "limits":[{"name":"per-sec","requests":1000000000,"per":"second"},
                          {"requests":7,"per":"day","burst":3}]}]}"#,
            r#"{"tiers":[{"name":"t","identity":"shared","limits":[
                {"name":"l1","requests":1,"per":"second"},{"name":"l2","requests":10,"per":"minute"},
                {"name":"l3","requests":100,"per":"hour"},{"name":"l4","requests":1000,"per":"day"},
                {"name":"l5","requests":10000,"per":"week"}]},
                {"name":"llm","identity":"shared","tokens":[{"tokens":100,"per":"hour"}]}]}"#,
        ];
        let waits = [
            0,
            1,
            999_999_999,
            1_000_000_000,
            86_400_000_000_123,
            u64::MAX,
        ];
        let mut buf = String::new();
        for json in policies {
            let p = Policy::from_json(json.as_bytes()).unwrap();
            for tier in p.tiers() {
                for n in 0..=tier.limits.len() + 1 {
                    for decisive in 0..=n {
                        for (k, &wait) in waits.iter().enumerate() {
                            let mut d = decision(k % 2 == 0, decisive, n);
                            for (j, s) in d.limits.iter_mut().enumerate() {
                                s.remaining = waits[(j + k) % waits.len()];
                                s.reset_after = Nanos(waits[(j + k + 1) % waits.len()]);
                                s.retry_after = Nanos(wait);
                            }
                            let (fields, body, message) = as_before(tier, &d);
                            let f = RequestFields::new(tier, &d, true, &mut buf);
                            assert_eq!(listed(&f), fields, "{json} {n} {decisive} {wait}");
                            let mut text = String::new();
                            tier.text().push_denial_body(&d, &mut text);
                            assert_eq!(text, body);
                            text.clear();
                            tier.text().push_grpc_message(&d, &mut text);
                            assert_eq!(text, message);
                        }
                    }
                }
            }
        }
    }
}
