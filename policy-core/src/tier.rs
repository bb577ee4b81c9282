//! Tiers: ordered rules that sort requests, each with its identity and limits.
//!
//! Like HTTPRoute rules, the first tier whose match holds wins. A tier also needs its identity:
//! a tier keyed on `x-user-id` does not apply to a request without one, which then falls to the
//! next tier (typically "anonymous").

use alloc::string::String;
use alloc::vec::Vec;

use crate::bucket::Rate;
use crate::budget::Budget;
use crate::identity::IdentitySource;
use crate::pattern::Pattern;
use crate::request::Attributes;
use crate::table::Table;

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
    /// Whether its buckets are global ([`crate::global`]): the policy has a `global` section and
    /// the tier did not opt out with `"global": false`.
    pub global: bool,
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
    /// Whether the tier's match rules hold for the request (identity is checked separately).
    pub fn matches<A: Attributes>(&self, attrs: &A) -> bool {
        if let Some(prefix) = &self.path_prefix {
            let Some(path) = attrs.headers().values(":path").next() else {
                return false;
            };
            if !path_has_prefix(&crate::path::normalize(path), prefix.as_bytes()) {
                return false;
            }
        }
        if !self.methods.is_empty() {
            let Some(method) = attrs.headers().values(":method").next() else {
                return false;
            };
            if !self.methods.iter().any(|m| m.as_bytes() == method) {
                return false;
            }
        }
        self.matchers.iter().all(|m| m.holds(attrs))
    }
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
