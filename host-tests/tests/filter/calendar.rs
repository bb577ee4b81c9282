//! Calendar quotas through the compiled module: a clock-aligned minute that refuses until its
//! end and admits again on the boundary, and a month's token quota (in `+01:00`) whose every
//! reset header names the 1st of the next month.

use host_tests::{Request, Response};

use crate::support::{
    assert_consistent_admission, assert_consistent_denial, number, tollgate_with,
};

const SECOND: u64 = 1_000_000_000;
/// 2026-12-01T21:00:42Z.
const AT_21_00_42: u64 = 1_796_158_842 * SECOND;

fn minute_policy(requests: u64) -> String {
    format!(
        r#"{{"tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":{requests},"reset":"minute"}}]}}]}}"#
    )
}

#[test]
fn a_minute_quota_refuses_until_the_minute_ends_then_admits_a_full_quota() {
    let h = tollgate_with(2, &minute_policy(3));
    // Half a second into 21:00:42: 17.5 s to the end of the minute.
    h.set_time(AT_21_00_42 + SECOND / 2);
    for (i, left) in [2, 1, 0].into_iter().enumerate() {
        let out = h.request(i % 2, &[("x-user-id", "ann")]).unwrap();
        assert_eq!(assert_consistent_admission(&out, "users", 3), left);
        assert_eq!(number(&out, "x-ratelimit-reset"), 18);
        assert_eq!(
            out.header("ratelimit-policy"),
            Some("\"users\";q=3;w=60"),
            "w= is the period's length"
        );
    }
    let denied = h.request(0, &[("x-user-id", "ann")]).unwrap();
    assert_eq!(assert_consistent_denial(&denied, "users", 3, 60), 18);
    // No refill inside the minute: 1 ns before its end, still refused, told to wait 1 s.
    h.set_time(AT_21_00_42 + 18 * SECOND - 1);
    let denied = h.request(1, &[("x-user-id", "ann")]).unwrap();
    assert_eq!(assert_consistent_denial(&denied, "users", 3, 60), 1);
    // 21:01:00.000 exactly belongs to the new minute: the whole quota is back.
    h.set_time(AT_21_00_42 + 18 * SECOND);
    for left in [2, 1, 0] {
        let out = h.request(0, &[("x-user-id", "ann")]).unwrap();
        assert_eq!(assert_consistent_admission(&out, "users", 3), left);
        assert_eq!(number(&out, "x-ratelimit-reset"), 60);
    }
    assert_eq!(
        assert_consistent_denial(
            &h.request(1, &[("x-user-id", "ann")]).unwrap(),
            "users",
            3,
            60
        ),
        60
    );
    // Another user has a quota of their own.
    assert!(h.request(1, &[("x-user-id", "bo")]).unwrap().is_continue());
}

/// 2026-02-15T12:00:00Z.
const FEB_15_NOON: u64 = 1_771_156_800 * SECOND;
/// Seconds from then to 2026-03-01T00:00 in +01:00 = 2026-02-28T23:00:00Z.
const TO_MARCH_CET: u64 = 1_162_800;

fn call(path: &str, user: &str) -> Request {
    let body =
        r#"{"model":"claude-x","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    Request::new("POST", path)
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
        .respond_with(
            Response::ok()
                .header("content-type", "application/json")
                .body_chunk(r#"{"usage":{"input_tokens":3,"output_tokens":5}}"#),
        )
}

#[test]
fn a_month_token_quota_points_every_reset_header_at_the_first_of_next_month() {
    // 40 tokens a calendar month in +01:00; a call holds 36 (prompt 20 + max_tokens 16) and
    // uses 8, so after one call a second does not fit.
    let h = tollgate_with(
        1,
        r#"{"tiers":[{"name":"llm","identity":{"header":"x-user-id"},
            "tokens":[{"tokens":40,"reset":"month","utc_offset":"+01:00"}]}]}"#,
    );
    h.set_time(FEB_15_NOON);
    let first = h.send(0, &call("/v1/messages", "cy")).unwrap();
    assert!(first.is_continue(), "{first:?}");
    assert_eq!(
        first.header("anthropic-ratelimit-tokens-reset"),
        Some("2026-02-28T23:00:00Z")
    );
    let refused = h.send(0, &call("/v1/messages", "cy")).unwrap();
    assert_eq!(refused.status(), 429, "{refused:?}");
    assert_eq!(number(&refused, "retry-after"), TO_MARCH_CET);
    assert_eq!(
        refused.header("anthropic-ratelimit-tokens-reset"),
        Some("2026-02-28T23:00:00Z")
    );
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"llm-tokens-month\";q=40;w=2678400;qu=\"tokens\""),
        "w= is the longest a month can be (31 days)"
    );
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!("\"llm-tokens-month\";r=32;t={TO_MARCH_CET}").as_str())
    );
    // The OpenAI route says the same in its own vocabulary (Go durations).
    let openai = h.send(0, &call("/v1/chat/completions", "cy")).unwrap();
    assert_eq!(openai.status(), 429, "{openai:?}");
    assert_eq!(openai.header("x-ratelimit-reset-tokens"), Some("323h0m0s"));
    // 2026-02-28T23:00:00Z is March in +01:00: the quota is whole again.
    h.set_time(FEB_15_NOON + TO_MARCH_CET * SECOND);
    let march = h.send(0, &call("/v1/messages", "cy")).unwrap();
    assert!(march.is_continue(), "{march:?}");
    assert_eq!(
        march.header("anthropic-ratelimit-tokens-reset"),
        Some("2026-03-31T23:00:00Z"),
        "a fixed offset: no summer time, still 23:00 UTC"
    );
}
