//! What refused clients read: the request id, whether to retry (`x-should-retry`, gRPC's
//! `grpc-retry-pushback-ms`) and, on Anthropic's route, Anthropic's own rate-limit headers.

use host_tests::{Outcome, Request, Response};

use crate::support::{tollgate_with, users_policy};

/// One LLM tier: `requests` per `per` per `x-user-id`, a token budget, `llm` settings.
fn llm_policy(requests: u64, per: &str, llm: &str) -> String {
    format!(
        r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":{requests},"per":"{per}"}}],
            "tokens":[{{"tokens":100000,"per":"hour"}}]}}],"llm":{llm}}}"#
    )
}

fn call(path: &str, user: &str, request_id: &str) -> Request {
    let body =
        r#"{"model":"claude-x","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    Request::new("POST", path)
        .header("x-user-id", user)
        .header("x-request-id", request_id)
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
fn a_refusal_names_the_request_envoy_assigned() {
    let h = tollgate_with(1, &users_policy(1, "minute", ""));
    let ask = |id| h.request(0, &[("x-user-id", "alice"), ("x-request-id", id)]);
    assert!(ask("first").unwrap().is_continue());
    let refused = ask("0f6e3f4c-9d1b-4b7e-8f43-1f1d2a3b4c5d").unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.header("x-request-id"),
        Some("0f6e3f4c-9d1b-4b7e-8f43-1f1d2a3b4c5d")
    );
    // Not an Anthropic route, not an LLM tier: neither request-id nor x-should-retry.
    assert_eq!(refused.header("request-id"), None);
    assert_eq!(refused.header("x-should-retry"), None);
    // An id that is not a plain token is not echoed into a response header.
    let odd = ask("a b").unwrap();
    assert_eq!(odd.status(), 429);
    assert_eq!(odd.header("x-request-id"), None);
}

#[test]
fn a_grpc_refusal_carries_the_pushback_grpc_retries_obey() {
    let h = tollgate_with(1, &users_policy(2, "second", ""));
    let ask = || {
        h.request(
            0,
            &[("x-user-id", "alice"), ("content-type", "application/grpc")],
        )
    };
    assert!(ask().unwrap().is_continue());
    assert!(ask().unwrap().is_continue());
    let refused = ask().unwrap();
    let Outcome::LocalReply { grpc_status, .. } = &refused else {
        panic!("expected a local reply, got {refused:?}")
    };
    assert_eq!(*grpc_status, Some(8), "RESOURCE_EXHAUSTED");
    // Two per second: the next one in 500 ms.
    assert_eq!(refused.header("grpc-retry-pushback-ms"), Some("500"));
}

#[test]
fn a_wait_past_the_cap_tells_the_sdk_not_to_retry() {
    // One a minute: the second call waits 60 s, past a 30 s cap.
    let h = tollgate_with(
        1,
        &llm_policy(1, "minute", r#"{"max_client_wait_seconds":30}"#),
    );
    let path = "/v1/chat/completions";
    assert!(h.send(0, &call(path, "alice", "r1")).unwrap().is_continue());
    let refused = h.send(0, &call(path, "alice", "r2")).unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.header("retry-after-ms"), Some("60000"));
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    assert_eq!(refused.header("x-request-id"), Some("r2"));

    // Within the (default, 60 s) cap: retry, and honour retry-after-ms.
    let h = tollgate_with(1, &llm_policy(2, "second", "{}"));
    for id in ["a", "b"] {
        assert!(h.send(0, &call(path, "bob", id)).unwrap().is_continue());
    }
    let refused = h.send(0, &call(path, "bob", "c")).unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.header("retry-after-ms"), Some("500"));
    assert_eq!(refused.header("x-should-retry"), Some("true"));
}

#[test]
fn anthropic_routes_carry_request_id_and_anthropic_ratelimit_headers() {
    let h = tollgate_with(1, &llm_policy(1, "second", r#"{"count":"output"}"#));
    // 2000-02-29T23:59:59.5Z: a reset one second on falls on 1 March of a leap year.
    h.set_time(951_868_799_500_000_000);
    let admitted = h.send(0, &call("/v1/messages", "carol", "q1")).unwrap();
    assert!(admitted.is_continue(), "{admitted:?}");
    assert_eq!(
        admitted.header("anthropic-ratelimit-requests-limit"),
        Some("1")
    );
    assert_eq!(
        admitted.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert_eq!(
        admitted.header("anthropic-ratelimit-requests-reset"),
        Some("2000-03-01T00:00:01Z")
    );
    // count: "output": the budget is an output-token budget, and only that is claimed.
    assert_eq!(
        admitted.header("anthropic-ratelimit-tokens-limit"),
        Some("100000")
    );
    assert_eq!(
        admitted.header("anthropic-ratelimit-output-tokens-limit"),
        Some("100000")
    );
    assert_eq!(
        admitted.header("anthropic-ratelimit-input-tokens-limit"),
        None
    );

    let refused = h.send(0, &call("/v1/messages", "carol", "q2")).unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.header("request-id"), Some("q2"));
    assert_eq!(refused.header("x-request-id"), Some("q2"));
    assert_eq!(
        refused.header("anthropic-ratelimit-requests-reset"),
        Some("2000-03-01T00:00:01Z")
    );
    assert_eq!(refused.header("x-should-retry"), Some("true"));
    let body: serde_json::Value = serde_json::from_slice(refused.body()).unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");

    // OpenAI routes get none of Anthropic's headers.
    let openai = h
        .send(0, &call("/v1/chat/completions", "dave", "o1"))
        .unwrap();
    assert!(openai.is_continue());
    assert_eq!(openai.header("anthropic-ratelimit-requests-limit"), None);
}
