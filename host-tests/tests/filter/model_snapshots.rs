//! In the compiled filter, a dated snapshot's usage counts against its base model's budget.

use host_tests::{Outcome, Request, Response};

use crate::support::tollgate_with;

const POLICY: &str = r#"{"tiers":[{"name":"llm","identity":{"header":"x-user-id"},
    "tokens":[{"tokens":1000,"per":"week","model":"gpt-4o-mini"}]}]}"#;

fn chat(model: &str, max_tokens: u64, used: u64) -> Request {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let answer = format!(
        r#"{{"id":"c","object":"chat.completion","model":"{model}","choices":[],
            "usage":{{"prompt_tokens":{used},"completion_tokens":0,"total_tokens":{used}}}}}"#
    );
    Request::new("POST", "/v1/chat/completions")
        .header("x-user-id", "alice")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
        .respond_with(
            Response::ok()
                .header("content-type", "application/json")
                .body_chunk(answer),
        )
}

#[test]
fn a_snapshot_is_charged_to_its_base_models_budget() {
    let h = tollgate_with(2, POLICY);
    let first = h.send(0, &chat("gpt-4o-mini-2024-07-18", 10, 950)).unwrap();
    assert!(first.is_continue(), "{first:?}");
    assert_eq!(
        first.header("x-ratelimit-limit-tokens"),
        Some("1000"),
        "the snapshot is under the gpt-4o-mini budget: {first:?}"
    );
    // 950 of 1000 spent by the snapshot: the base model's next call of 100 does not fit.
    let second = h.send(1, &chat("gpt-4o-mini", 100, 1)).unwrap();
    assert!(
        matches!(second, Outcome::LocalReply { status: 429, .. }),
        "{second:?}"
    );
    // Another model is not under that budget at all.
    let other = h.send(1, &chat("gpt-4o", 100, 1)).unwrap();
    assert!(other.is_continue(), "{other:?}");
}
