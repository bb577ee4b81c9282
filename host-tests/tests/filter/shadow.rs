//! Shadow mode through the compiled module: a shadow tier lets everything through, adds no
//! rate-limit headers, and counts what it would have refused as `would_deny`.

use std::time::Duration;

use crate::support::{send_as, tollgate_with};

/// `shadow` watches 5 a minute per user; `enforced` (the same limit, for `x-team` callers)
/// refuses as usual.
const POLICY: &str = r#"{"tiers":[
    {"name":"enforced","match":{"headers":[{"name":"x-team","present":true}]},
     "identity":{"header":"x-user-id"},"limits":[{"requests":5,"per":"minute"}]},
    {"name":"shadow","mode":"shadow","identity":{"header":"x-user-id"},
     "limits":[{"requests":5,"per":"minute"}]}]}"#;

#[test]
fn a_shadow_tier_refuses_nothing_and_counts_what_it_would_have_refused() {
    let h = tollgate_with(2, POLICY);
    for i in 0..8 {
        let out = send_as(&h, i % 2, "alice").unwrap();
        assert!(out.is_continue(), "request {i}: {out:?}");
        assert_eq!(out.status(), 200);
        assert!(
            out.header("x-ratelimit-remaining").is_none() && out.header("ratelimit").is_none(),
            "a shadow tier shows the client no limit: {out:?}"
        );
    }
    // The same traffic against the enforced tier: 3 of 8 refused.
    let statuses: Vec<u32> = (0..8)
        .map(|i| {
            h.request(i % 2, &[("x-user-id", "bob"), ("x-team", "t")])
                .unwrap()
                .status()
        })
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3);
    h.advance(Duration::from_secs(1)).unwrap();
    let counter = |tier: &str, name: &str| {
        h.metrics()
            .value(&format!("tollgate.{tier}.{name}"))
            .unwrap_or(0)
    };
    assert_eq!(counter("shadow", "allowed"), 5);
    assert_eq!(counter("shadow", "would_deny"), 3);
    assert_eq!(counter("shadow", "denied"), 0);
    assert_eq!(counter("enforced", "denied"), 3);
    assert_eq!(counter("enforced", "would_deny"), 0);
}

#[test]
fn a_shadow_tier_with_shadow_headers_shows_its_limit_but_never_a_wait() {
    let policy = POLICY.replace(
        r#""mode":"shadow","#,
        r#""mode":"shadow","shadow_headers":true,"#,
    );
    let h = tollgate_with(1, &policy);
    let remaining: Vec<Option<String>> = (0..7)
        .map(|_| {
            let out = send_as(&h, 0, "alice").unwrap();
            assert!(out.is_continue(), "{out:?}");
            assert_eq!(out.header("retry-after"), None, "{out:?}");
            out.header("x-ratelimit-remaining").map(str::to_owned)
        })
        .collect();
    let want: Vec<Option<String>> = ["4", "3", "2", "1", "0", "0", "0"]
        .into_iter()
        .map(|r| Some(r.to_owned()))
        .collect();
    assert_eq!(remaining, want);
}
