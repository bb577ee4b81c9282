//! The response side of an LLM stream: what the client receives when tollgate asked the
//! upstream for usage the client did not ask for, chunk by chunk, and what it is charged.

use host_tests::{Harness, Outcome, Request, Response};

use crate::support::{number, tollgate_with};

const BUDGET: u64 = 1_000_000;

/// charge_after: a response's headers show the budget before its own charge, so a probe shows
/// everything charged before it.
fn policy() -> String {
    format!(
        r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
            "tokens":[{{"tokens":{BUDGET},"per":"day"}}]}}],
            "llm":{{"mode":"charge_after","on_missing_usage":"nothing"}}}}"#
    )
}

const ID: &str = r#""id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m""#;

/// A chat stream as OpenAI sends it: with `include_usage`, `"usage":null` on every chunk and a
/// last chunk with no choices and the usage (9 + 4 tokens).
fn chat_stream(include_usage: bool) -> String {
    let null = if include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let mut s = String::new();
    for delta in [
        r#"{"role":"assistant","content":""}"#,
        r#"{"content":"Hello"}"#,
        r#"{"content":" wörld"}"#,
        "{}",
    ] {
        s += &format!("data: {{{ID},\"choices\":[{{\"index\":0,\"delta\":{delta}}}]{null}}}\n\n");
    }
    if include_usage {
        s += &format!(
            "data: {{{ID},\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}}}\n\n"
        );
    }
    s + "data: [DONE]\n\n"
}

fn chat_request(user: &str, body: &str, response: Response) -> Request {
    Request::new("POST", "/v1/chat/completions")
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
        .respond_with(response)
}

fn sse(chunks: &[&[u8]]) -> Response {
    let mut response = Response::ok().header("content-type", "text/event-stream");
    for chunk in chunks {
        response = response.body_chunk(chunk);
    }
    response
}

/// What `user` has been charged so far.
fn charged(h: &Harness, user: &str) -> u64 {
    let probe = chat_request(
        user,
        r#"{"model":"m","max_tokens":1}"#,
        Response::ok()
            .header("content-type", "application/json")
            .body_chunk(r#"{"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0}}"#),
    );
    let out = h.send(0, &probe).unwrap();
    assert!(out.is_continue(), "{out:?}");
    BUDGET - number(&out, "x-ratelimit-remaining-tokens")
}

fn send(h: &Harness, request: &Request) -> (Vec<u8>, Vec<u8>) {
    match h.send(0, request).unwrap() {
        Outcome::Continue {
            response_body,
            record,
            ..
        } => (response_body, record.request_body.forwarded),
        other => panic!("expected the call through, got {other:?}"),
    }
}

#[test]
fn a_client_that_did_not_ask_for_usage_gets_the_stream_without_it_at_every_chunk_size() {
    let h = tollgate_with(1, &policy());
    let upstream = chat_stream(true);
    let want = chat_stream(false);
    let bytes = upstream.as_bytes();
    for (case, body) in [
        ("absent", r#"{"model":"m","stream":true,"messages":[]}"#),
        (
            "false",
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#,
        ),
    ] {
        for size in 1..=bytes.len() {
            let user = format!("{case}-{size}");
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            let (got, forwarded) = send(&h, &chat_request(&user, body, sse(&chunks)));
            let forwarded = String::from_utf8(forwarded).unwrap();
            assert!(forwarded.contains(r#""include_usage":true"#), "{forwarded}");
            assert_eq!(
                String::from_utf8_lossy(&got),
                want,
                "{case}, chunks of {size}"
            );
            assert_eq!(charged(&h, &user), 13, "{case}, chunks of {size}");
        }
    }
}

#[test]
fn a_client_that_asked_for_usage_gets_the_stream_unchanged() {
    let h = tollgate_with(1, &policy());
    let upstream = chat_stream(true);
    let body =
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    for size in [1, 7, upstream.len()] {
        let user = format!("asked-{size}");
        let chunks: Vec<&[u8]> = upstream.as_bytes().chunks(size).collect();
        let (got, forwarded) = send(&h, &chat_request(&user, body, sse(&chunks)));
        // Nothing is rewritten: at most padded with blanks to the content-length announced at
        // the headers (the original + the largest rewrite), which JSON ignores.
        let forwarded = String::from_utf8_lossy(&forwarded);
        let unpadded: String = forwarded.chars().filter(|c| *c != ' ').collect();
        assert_eq!(unpadded, body, "the request is not rewritten");
        assert_eq!(String::from_utf8_lossy(&got), upstream);
        assert_eq!(charged(&h, &user), 13);
    }
}

/// A stream that ends without usage is charged the prompt estimate plus its text / 4, even
/// under `on_missing_usage: "nothing"`: never less than the same stream cut short.
#[test]
fn a_stream_that_ends_without_usage_pays_what_it_visibly_consumed() {
    let h = tollgate_with(1, &policy());
    let text = "abcd".repeat(500); // 500 tokens
    let stream = format!(
        "data: {{{ID},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\ndata: [DONE]\n\n"
    );
    let body =
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (got, _) = send(
        &h,
        &chat_request("no-usage", body, sse(&[stream.as_bytes()])),
    );
    assert_eq!(got, stream.as_bytes());
    let prompt = body.len().div_ceil(4) as u64;
    assert_eq!(charged(&h, "no-usage"), prompt + 500);
}
