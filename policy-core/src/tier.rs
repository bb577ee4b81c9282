//! Tiers: ordered rules that sort requests, each with its identity and limits.
//!
//! Like HTTPRoute rules, the first tier whose match holds wins. A tier also needs its identity:
//! a tier keyed on `x-user-id` does not apply to a request without one, which then falls to the
//! next tier (typically "anonymous").

use alloc::string::String;
use alloc::vec::Vec;

use crate::bucket::Rate;
use crate::budget::{Budget, BudgetSet};
use crate::identity::IdentitySource;
use crate::pattern::Pattern;
use crate::request::Attributes;
use crate::table::Table;
use crate::tier_text::TierText;

/// One tier of a policy.
#[derive(Debug)]
pub struct Tier {
    /// Unique name, used in headers, metrics and state keys.
    pub name: String,
    /// All must hold.
    pub matchers: Vec<Matcher>,
    /// `:path` must start with this, segment-wise (`/api` matches `/api/x`, not `/apix`), both
    /// normalised ([`crate::path::normalize`]: `/%61pi//x` is `/api/x`).
    pub path_prefix: Option<String>,
    /// `:method` must be one of these, when set.
    pub methods: Vec<String>,
    /// Whom the limits count.
    pub identity: IdentitySource,
    /// All must allow a request.
    pub limits: Vec<Limit>,
    /// Where this tier's buckets live.
    pub table: Table,
    /// LLM token budgets (empty for plain request limits).
    pub budgets: Vec<Budget>,
    /// Where the budgets' buckets live: each budget in exactly one set, side by side with the
    /// budgets that count the same key.
    pub budget_sets: Vec<BudgetSet>,
    /// Whether its buckets are global ([`crate::global`]): the policy has a `global` section and
    /// the tier did not opt out with `"global": false`.
    pub global: bool,
    /// What a request costs against `limits`, first matching rule wins; 1 when none does.
    pub costs: Vec<CostRule>,
    /// Whether the tier refuses or only counts (see [`Enforcement`]).
    pub enforcement: Enforcement,
    /// In shadow mode, whether responses carry the tier's rate-limit headers (never
    /// `Retry-After`: nothing is refused, so no client should wait).
    pub shadow_headers: bool,
    /// The scopes its limits and budgets count against besides its identity
    /// ([`crate::scope`]); empty when they all count the identity.
    pub scoping: crate::scope::Scoping,
    /// Whether its request-limit responses carry `X-RateLimit-Limit/-Remaining/-Reset` besides
    /// the IETF fields (the policy's `x_ratelimit_headers`, default on): three host calls per
    /// response in Envoy for what `RateLimit` already says.
    pub x_ratelimit_headers: bool,
    /// The text of its fields and refusal that is the same for every request, written when
    /// the policy loads ([`Tier::text`]).
    pub(crate) text: TierText,
}

/// Whether a tier's refusals are carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// Refused requests get 429 (the default).
    #[default]
    Enforce,
    /// Shadow mode: decisions are made and counted, nothing is refused. A request the limits
    /// would refuse goes on and takes nothing (its buckets stay as a refusal leaves them), so
    /// the `would_deny` count is exactly what enforcing would have refused.
    Shadow,
}

/// What the filter does with a request, from the decision and the tier's [`Enforcement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The limits admit it.
    Allow,
    /// The limits refuse it: answer 429.
    Deny,
    /// The limits refuse it but the tier is in shadow mode: count it and let it through.
    WouldDeny,
}

/// A rule giving the requests it matches a cost other than 1 against the tier's request limits
/// (`POST /api/v1/tasks/bulk` costs 10). Matched like the tier itself, on the same fields.
#[derive(Debug)]
pub struct CostRule {
    /// All must hold.
    pub matchers: Vec<Matcher>,
    /// `:path` starts with it, segment-wise, both normalised (as [`Tier::path_prefix`]).
    pub path_prefix: Option<String>,
    /// `:method` is one of these, when set.
    pub methods: Vec<String>,
    /// Cells taken from every request limit of the tier: at least 1, at most the smallest
    /// `burst` of those limits (checked at load, so a matching request can always pass when the
    /// buckets are full).
    pub cost: u64,
}

/// One limit of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The quota policy's name in `RateLimit-Policy`.
    pub name: String,
    /// The rate.
    pub rate: Rate,
}

/// A condition on one request header.
#[derive(Debug)]
pub struct Matcher {
    /// Lowercase header name.
    pub header: String,
    /// What its value must be.
    pub test: ValueTest,
}

/// How a header value is tested. Values are bytes: a non-UTF-8 value is tested, never rejected.
#[derive(Debug)]
pub enum ValueTest {
    /// Present with a non-blank value (`true`) or absent/blank (`false`).
    Present(bool),
    /// Equal to.
    Exact(Vec<u8>),
    /// Starts with.
    Prefix(Vec<u8>),
    /// Matches (unanchored unless the pattern anchors itself, as in HTTPRoute's
    /// RegularExpression; ASCII classes; on raw bytes; linear time, bounded input).
    Regex(Pattern),
}

impl Matcher {
    fn holds<A: Attributes>(&self, attrs: &A) -> bool {
        let value = attrs.headers().combined(&self.header);
        let non_blank = value
            .as_deref()
            .is_some_and(|v| v.iter().any(|b| !matches!(b, b' ' | b'\t')));
        match (&self.test, value) {
            (ValueTest::Present(want), _) => *want == non_blank,
            (_, None) => false,
            (ValueTest::Exact(e), Some(v)) => v.as_ref() == e.as_slice(),
            (ValueTest::Prefix(p), Some(v)) => v.starts_with(p),
            (ValueTest::Regex(r), Some(v)) => r.is_match(v.as_ref()),
        }
    }
}

impl Tier {
    /// The constant text of its request-limit fields and refusal.
    pub fn text(&self) -> &TierText {
        &self.text
    }

    /// The set holding budget number `budget`, and its column there.
    pub fn budget_set(&self, budget: usize) -> Option<(&BudgetSet, usize)> {
        self.budget_sets
            .iter()
            .find_map(|set| Some((set, set.column_of(budget)?)))
    }

    /// Whether the tier's match rules hold for the request (identity is checked separately).
    pub fn matches<A: Attributes>(&self, attrs: &A) -> bool {
        holds(
            &self.matchers,
            self.path_prefix.as_deref(),
            &self.methods,
            attrs,
        )
    }

    /// What the filter does with a request the tier decided on.
    pub fn verdict(&self, decision: &crate::Decision) -> Verdict {
        match (decision.allowed, self.enforcement) {
            (true, _) => Verdict::Allow,
            (false, Enforcement::Enforce) => Verdict::Deny,
            (false, Enforcement::Shadow) => Verdict::WouldDeny,
        }
    }

    /// What the request costs against the tier's request limits: the first [`CostRule`] that
    /// holds, else 1.
    pub fn cost_of<A: Attributes>(&self, attrs: &A) -> u64 {
        self.costs
            .iter()
            .find(|r| holds(&r.matchers, r.path_prefix.as_deref(), &r.methods, attrs))
            .map_or(1, |r| r.cost)
    }
}

/// Whether a match (a tier's or a cost rule's) holds: path prefix, method and every header test.
fn holds<A: Attributes>(
    matchers: &[Matcher],
    path_prefix: Option<&str>,
    methods: &[String],
    attrs: &A,
) -> bool {
    if let Some(prefix) = path_prefix {
        let Some(path) = attrs.headers().values(":path").next() else {
            return false;
        };
        if !path_has_prefix(&crate::path::normalize(path), prefix.as_bytes()) {
            return false;
        }
    }
    if !methods.is_empty() {
        let Some(method) = attrs.headers().values(":method").next() else {
            return false;
        };
        if !methods.iter().any(|m| m.as_bytes() == method) {
            return false;
        }
    }
    matchers.iter().all(|m| m.holds(attrs))
}

/// Whether a normalised path (no query: [`crate::path::normalize`] cut it) starts with `prefix`.
pub(crate) fn path_has_prefix(path: &[u8], prefix: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(b"/"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn path_prefixes_match_whole_segments() {
        assert!(path_has_prefix(b"/api", b"/api"));
        assert!(path_has_prefix(b"/api/v1/tasks", b"/api"));
        assert!(path_has_prefix(b"/api/v1/tasks", b"/api/"));
        assert!(path_has_prefix(
            &crate::path::normalize(b"/api?x=1"),
            b"/api"
        ));
        assert!(!path_has_prefix(b"/apix", b"/api"));
        assert!(!path_has_prefix(b"/ap", b"/api"));
        assert!(path_has_prefix(b"/anything", b"/"));
    }

    #[test]
    fn a_tier_matches_the_normalised_path() {
        let policy = crate::Policy::from_json(
            br#"{"tiers":[{"name":"api","match":{"path_prefix":"/api"},"identity":"shared",
                "limits":[{"requests":1,"per":"minute"}]}]}"#,
        )
        .unwrap();
        let tier = &policy.tiers()[0];
        for (path, holds) in [
            ("/api/v1", true),
            ("/%61pi/v1", true),
            ("//api//v1", true),
            ("/x/../api", true),
            ("/./api?q", true),
            ("/apix", false),
            ("/API/v1", false),
            ("/api/../x", false),
        ] {
            let h: crate::HeaderList = [(":path", path)].into_iter().collect();
            assert_eq!(tier.matches(&h), holds, "{path}");
        }
    }
}
