//! The output switches through the compiled module: `"x_ratelimit_headers": false` leaves the
//! IETF fields (and `Retry-After` on a refusal) and drops `X-RateLimit-*`; `"records": false`
//! leaves no access-log record, an LLM call's settlement included. Both default on (the other
//! modules' tests pin what the defaults send).

use std::time::Duration;

use host_tests::{Outcome, Request, Response};

use crate::support::{send_as, tollgate_with, users_policy};

/// The record (property `tollgate`) a whole request left, if any.
fn record_of(out: &Outcome) -> Option<Vec<u8>> {
    match out {
        Outcome::Continue { record, .. } => {
            record.properties.get(&["tollgate"]).map(<[u8]>::to_vec)
        }
        Outcome::LocalReply { .. } => None,
    }
}

fn names(out: &Outcome) -> Vec<String> {
    let mut names: Vec<String> = out
        .headers()
        .iter()
        .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
        .filter(|name| name.contains("ratelimit") || name.contains("retry"))
        .collect();
    names.sort();
    names
}

#[test]
fn without_x_ratelimit_headers_a_response_carries_the_ietf_fields_only() {
    let h = tollgate_with(
        1,
        &users_policy(1, "minute", r#""x_ratelimit_headers":false,"#),
    );
    let ok = send_as(&h, 0, "alice").unwrap();
    assert!(ok.is_continue());
    assert_eq!(names(&ok), ["ratelimit", "ratelimit-policy"]);
    assert_eq!(ok.header("ratelimit"), Some("\"users\";r=0;t=60"));
    // The record is still there: the switches are independent.
    assert!(record_of(&ok).is_some());
    let refused = send_as(&h, 0, "alice").unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(
        names(&refused),
        ["ratelimit", "ratelimit-policy", "retry-after"]
    );
    // With the switch on (the default), the same request shows all three more.
    let h = tollgate_with(1, &users_policy(1, "minute", ""));
    let ok = send_as(&h, 0, "alice").unwrap();
    assert_eq!(
        names(&ok),
        [
            "ratelimit",
            "ratelimit-policy",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset"
        ]
    );
}

#[test]
fn without_records_a_decided_request_leaves_none() {
    let h = tollgate_with(1, &users_policy(1, "minute", r#""records":false,"#));
    let ok = send_as(&h, 0, "alice").unwrap();
    assert!(ok.is_continue());
    assert_eq!(record_of(&ok), None);
    // The fields are unchanged.
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("0"));
    let h = tollgate_with(1, &users_policy(1, "minute", ""));
    let ok = send_as(&h, 0, "alice").unwrap();
    assert!(record_of(&ok).is_some(), "on by default");
}

#[test]
fn without_records_an_llm_call_is_still_charged_and_leaves_none() {
    let policy = r#"{"records":false,"tiers":[{"name":"free","identity":{"header":"x-user-id"},
        "limits":[{"requests":10,"per":"minute"}],"tokens":[{"tokens":100000,"per":"hour"}]}],
        "llm":{"mode":"reserve"}}"#;
    let h = tollgate_with(1, policy);
    let body =
        r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let answer = r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
    let request = Request::new("POST", "/v1/chat/completions")
        .header("x-user-id", "alice")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
        .respond_with(
            Response::ok()
                .header("content-type", "application/json")
                .header("content-length", answer.len().to_string())
                .body_chunk(answer),
        );
    let out = h.send(0, &request).unwrap();
    assert!(out.is_continue());
    assert_eq!(record_of(&out), None);
    h.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(h.metrics().value("tollgate.free.tokens_charged"), Some(8));
}
