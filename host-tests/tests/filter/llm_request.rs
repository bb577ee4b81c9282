//! The request side of an LLM call through the compiled filter: the body rewritten so an OpenAI
//! stream reports its usage however it is chunked, `content-length` kept exact, and a spent
//! budget refused at the request headers, before anything is forwarded.

use host_tests::{Action, Harness};

use crate::support::tollgate_with;

const POLICY: &str = r#"{
  "tiers": [{
    "name": "free",
    "match": { "headers": [{ "name": "x-user-id", "present": true }] },
    "identity": { "header": "x-user-id" },
    "tokens": [{ "tokens": 1000, "per": "day" }]
  }],
  "llm": { "mode": "reserve", "default_max_tokens": 100 }
}"#;

const CHAT: &str = "/v1/chat/completions";
const BODY: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi \"}\" {"}],"stream":true}"#;
const OPTION: &str = r#","stream_options":{"include_usage":true}"#;

fn headers<'a>(user: &'a str, path: &'a str, length: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        (":method", "POST"),
        (":path", path),
        ("x-user-id", user),
        ("content-type", "application/json"),
    ];
    if let Some(n) = length {
        h.push(("content-length", n));
    }
    h
}

/// Sends `chunks` as the request body; returns what went upstream and the request headers as
/// the filter left them.
fn send(
    h: &Harness,
    user: &str,
    path: &str,
    length: Option<&str>,
    chunks: &[&[u8]],
) -> (Vec<u8>, host_tests::Headers) {
    let mut s = h.stream(0).unwrap();
    assert_eq!(
        s.request_headers(headers(user, path, length).as_slice(), false)
            .unwrap(),
        Action::Continue
    );
    for (i, chunk) in chunks.iter().enumerate() {
        let action = s.request_body(chunk, i + 1 == chunks.len()).unwrap();
        assert!(s.local_reply().unwrap().is_none(), "refused: {action:?}");
    }
    let record = s.record().unwrap();
    (
        record.request_body.forwarded,
        record.request_headers.unwrap(),
    )
}

#[test]
fn a_chunked_stream_is_asked_for_its_usage_however_it_is_split() {
    let h = tollgate_with(1, POLICY);
    let want = format!("{}{OPTION}}}", &BODY[..BODY.len() - 1]);
    let body = BODY.as_bytes();
    for at in 0..=body.len() {
        for second in [at, body.len()] {
            let cut = second.max(at);
            let pieces: [&[u8]; 3] = [&body[..at], &body[at..cut], &body[cut..]];
            let user = format!("split-{at}-{cut}");
            let (forwarded, sent) = send(&h, &user, CHAT, None, &pieces);
            assert_eq!(
                String::from_utf8(forwarded).unwrap(),
                want,
                "split at {at}, {cut}"
            );
            assert!(!sent.contains("content-length"));
        }
    }
}

#[test]
fn a_small_chat_request_announces_and_gets_its_rewritten_length() {
    let h = tollgate_with(1, POLICY);
    let n = BODY.len().to_string();
    for (body, grown) in [
        (BODY.to_string(), OPTION.len()),
        // Nothing to change: padded with spaces to what was announced, still the same JSON.
        (BODY.replace("\"stream\":true", "\"stream\":false"), 0),
    ] {
        let n = body.len().to_string();
        let (forwarded, sent) = send(&h, "length", CHAT, Some(&n), &[body.as_bytes()]);
        let announced = body.len() + OPTION.len();
        assert_eq!(
            sent.get("content-length"),
            Some(announced.to_string().as_str())
        );
        assert_eq!(forwarded.len(), announced, "{body}");
        let got: serde_json::Value = serde_json::from_slice(&forwarded).unwrap();
        assert_eq!(
            got.get("stream_options").is_some(),
            grown > 0,
            "{}",
            String::from_utf8_lossy(&forwarded)
        );
    }
    // An API that never needs the rewrite keeps the client's own length and bytes.
    let (forwarded, sent) = send(&h, "length", "/v1/messages", Some(&n), &[BODY.as_bytes()]);
    assert_eq!(sent.get("content-length"), Some(n.as_str()));
    assert_eq!(forwarded, BODY.as_bytes());
}

#[test]
fn a_spent_budget_is_refused_at_the_headers_and_nothing_is_forwarded() {
    let h = tollgate_with(1, POLICY);
    // Spend the day's 1,000 tokens: a call whose response reports 1,500.
    let mut s = h.stream(0).unwrap();
    let small = r#"{"model":"m","max_tokens":5}"#;
    let n = small.len().to_string();
    s.request_headers(headers("spent", CHAT, Some(&n)).as_slice(), false)
        .unwrap();
    s.request_body(small.as_bytes(), true).unwrap();
    s.response_headers(
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    s.response_body(
        br#"{"usage":{"prompt_tokens":500,"completion_tokens":1000,"total_tokens":1500}}"#,
        true,
    )
    .unwrap();
    s.finish().unwrap();

    for length in [Some("20000"), None] {
        let mut s = h.stream(0).unwrap();
        let action = s
            .request_headers(headers("spent", CHAT, length).as_slice(), false)
            .unwrap();
        assert_eq!(action, Action::Pause, "{length:?}");
        let reply = s.local_reply().unwrap().expect("a 429 at the headers");
        assert_eq!(reply.status, 429);
        let record = s.record().unwrap();
        assert!(record.request_body.forwarded.is_empty());
    }
    // Someone else is served.
    let (forwarded, _) = send(&h, "fresh", CHAT, None, &[BODY.as_bytes()]);
    assert!(!forwarded.is_empty());
}

#[test]
fn a_body_whose_rewrite_cannot_fit_its_announced_length_is_refused_not_sent_wrong() {
    let h = tollgate_with(1, POLICY);
    // Two top-level stream_options each needing the key added: 2 × 21 bytes > the 40 announced.
    let body = r#"{"stream":true,"stream_options":{"a":1},"stream_options":{"b":2}}"#;
    let n = body.len().to_string();
    let mut s = h.stream(0).unwrap();
    s.request_headers(headers("dup", CHAT, Some(&n)).as_slice(), false)
        .unwrap();
    let announced = s.record().unwrap().request_headers.unwrap();
    assert_eq!(
        announced.get("content-length"),
        Some((body.len() + OPTION.len()).to_string().as_str())
    );
    let action = s.request_body(body.as_bytes(), true).unwrap();
    assert_eq!(action, Action::Pause);
    let reply = s.local_reply().unwrap().expect("a 400");
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("invalid_request_body"));
    assert!(s.record().unwrap().request_body.forwarded.is_empty());
}
