//! An LLM call's lifecycle through the compiled module, event by event: a body held by Envoy or
//! followed as it passes, the `include_usage` rewrite on a followed body, an Anthropic stream
//! split at every byte, a stream reset mid-response, settlement in `on_log`, and the store
//! losing races or failing while a call settles — each checked by what the caller is charged
//! and what the metrics count. (`llm_request.rs` has the rewrite at every split of a chunked
//! body and the refusal at the headers; `llm_stream.rs` the OpenAI stream cleaned at every
//! chunk size.)

use std::time::Duration;

use host_tests::{Action, FailFor, Harness, Outcome, Request, Response, Stream};

use crate::support::{number, tollgate_with};

const BUDGET: u64 = 1_000_000;
/// `policy_core::table::MAX_ATTEMPTS`: how many CAS attempts an update makes before giving up.
const MAX_ATTEMPTS: u64 = 16;
/// What a body that may be rewritten announces beyond its own length.
const REWRITE_ROOM: usize = 40;

/// One tier `free` with one budget of [`BUDGET`] tokens a day; `llm` is spliced into `llm`.
fn policy(llm: &str) -> String {
    format!(
        r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
            "tokens":[{{"tokens":{BUDGET},"per":"day"}}]}}],
            "llm":{{"default_max_tokens":100{llm}}}}}"#
    )
}

fn request_headers<'a>(user: &'a str, path: &'a str, length: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "POST"),
        (":path", path),
        ("x-user-id", user),
        ("content-type", "application/json"),
        ("content-length", length),
    ]
}

const SSE: [(&str, &str); 2] = [(":status", "200"), ("content-type", "text/event-stream")];
const JSON: [(&str, &str); 2] = [(":status", "200"), ("content-type", "application/json")];

/// The estimate of a prompt of `len` bytes (bytes / 4, rounded up).
fn prompt(len: usize) -> u64 {
    len.div_ceil(4) as u64
}

/// What `user` has left, seen through a probe call's headers (its own hold shown too in
/// reserve mode: `prompt(PROBE.len()) + 1`).
fn left(h: &Harness, user: &str) -> u64 {
    let probe = Request::new("POST", "/v1/chat/completions")
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .header("content-length", PROBE.len().to_string())
        .body_chunk(PROBE)
        .respond_with(
            Response::ok()
                .header("content-type", "application/json")
                .body_chunk(r#"{"choices":[],"usage":{"prompt_tokens":0,"completion_tokens":0}}"#),
        );
    let out = h.send(0, &probe).unwrap();
    assert!(out.is_continue(), "{out:?}");
    number(&out, "x-ratelimit-remaining-tokens")
}

const PROBE: &str = r#"{"model":"m","max_tokens":1}"#;
/// What a probe holds for itself in reserve mode.
const PROBE_HOLD: u64 = 8; // prompt(28) + 1

/// The tier's counter `name`, flushed by a tick.
fn counter(h: &Harness, name: &str) -> i64 {
    h.advance(Duration::from_secs(1)).unwrap();
    h.metrics()
        .value(&format!("tollgate.free.{name}"))
        .unwrap_or(0)
}

/// Opens a call on worker 0 and sends its headers.
fn open<'h>(h: &'h Harness, user: &str, path: &str, length: usize) -> (Stream<'h>, Action) {
    let mut s = h.stream(0).unwrap();
    let length = length.to_string();
    let action = s
        .request_headers(request_headers(user, path, &length).as_slice(), false)
        .unwrap();
    (s, action)
}

#[test]
fn a_small_body_is_held_until_its_end_then_forwarded_rewritten_and_settled_from_the_usage() {
    let h = tollgate_with(1, &policy(""));
    let body =
        r#"{"model":"m","stream":false,"messages":[{"role":"user","content":"hello there"}]}"#;
    let (mut s, action) = open(&h, "held", "/v1/chat/completions", body.len());
    assert_eq!(action, Action::Continue);
    // Envoy holds every chunk until the body ends: nothing goes upstream before admission.
    let (a, b) = body.as_bytes().split_at(25);
    assert_eq!(s.request_body(a, false).unwrap(), Action::Pause);
    assert!(s.record().unwrap().request_body.forwarded.is_empty());
    assert_eq!(s.request_body(b, true).unwrap(), Action::Continue);
    let record = s.record().unwrap();
    let forwarded = String::from_utf8(record.request_body.forwarded).unwrap();
    // Not a stream: nothing to add, only padded to the length announced at the headers.
    assert_eq!(forwarded.len(), body.len() + REWRITE_ROOM);
    assert_eq!(forwarded.replace(' ', ""), body.replace(' ', ""));
    assert_eq!(
        record.request_headers.unwrap().get("content-length"),
        Some((body.len() + REWRITE_ROOM).to_string().as_str())
    );
    let estimate = prompt(body.len()) + 100;
    s.response_headers(&JSON, false).unwrap();
    s.response_body(
        br#"{"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7}}"#,
        true,
    )
    .unwrap();
    s.finish().unwrap();
    assert_eq!(left(&h, "held"), BUDGET - 18 - PROBE_HOLD);
    assert_eq!(counter(&h, "allowed"), 2);
    assert_eq!(
        counter(&h, "tokens_reserved"),
        (estimate + PROBE_HOLD) as i64
    );
    assert_eq!(counter(&h, "tokens_charged"), 18);
    assert_eq!(
        counter(&h, "tokens_refunded"),
        (estimate - 18 + PROBE_HOLD) as i64
    );
}

/// A body larger than `buffer_limit_bytes` passes chunk by chunk (one byte kept back until the
/// end), is asked for its usage on the way although the client said `include_usage: false`,
/// and the stream the client gets has no usage in it; the call is charged what it reported.
#[test]
fn a_followed_body_has_include_usage_turned_on_and_its_stream_cleaned_and_charged() {
    let h = tollgate_with(1, &policy(r#","buffer_limit_bytes":256"#));
    let text = "x".repeat(600);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{text}"}}],"stream":true,"stream_options":{{"include_usage":false}},"model":"m"}}"#
    );
    let (mut s, action) = open(&h, "followed", "/v1/chat/completions", body.len());
    assert_eq!(action, Action::Continue);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(200).collect();
    let mut upstream = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let end = i + 1 == chunks.len();
        assert_eq!(s.request_body(chunk, end).unwrap(), Action::Continue);
        let forwarded = s.record().unwrap().request_body.forwarded.len();
        if !end {
            // Forwarded as it came, but for the last byte so far.
            assert_eq!(forwarded, upstream + chunk.len() - usize::from(i == 0));
        }
        upstream = forwarded;
    }
    let forwarded = String::from_utf8(s.record().unwrap().request_body.forwarded).unwrap();
    assert_eq!(forwarded.len(), body.len() + REWRITE_ROOM);
    assert!(forwarded.contains(r#""include_usage":true"#), "{forwarded}");
    assert!(!forwarded.contains("false"), "{forwarded}");

    let chunk = |content: &str| {
        format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}],\"usage\":null}}\n\n"
        )
    };
    let usage = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":160,\"completion_tokens\":2,\"total_tokens\":162}}\n\n";
    let stream = format!("{}{}{usage}data: [DONE]\n\n", chunk("Hi"), chunk("!"));
    s.response_headers(&SSE, false).unwrap();
    for (i, part) in stream.as_bytes().chunks(50).enumerate() {
        s.response_body(part, (i + 1) * 50 >= stream.len()).unwrap();
    }
    let record = s.finish().unwrap();
    let got = String::from_utf8(record.response_body.forwarded).unwrap();
    assert!(!got.contains("usage"), "{got}");
    assert!(
        got.contains(r#""content":"Hi""#) && got.ends_with("data: [DONE]\n\n"),
        "{got}"
    );
    assert_eq!(left(&h, "followed"), BUDGET - 162 - PROBE_HOLD);
    assert_eq!(counter(&h, "tokens_charged"), 162);
}

/// On the first chunk of a followed body, before it is forwarded: a caller with room for the
/// least the call can cost at its headers, but not for its estimate, gets the 429 and the
/// upstream has the headers and no byte of the body.
#[test]
fn a_followed_body_is_refused_on_its_first_chunk_before_any_of_it_goes_upstream() {
    let h = tollgate_with(
        1,
        &policy(r#","buffer_limit_bytes":256,"default_max_tokens":5000"#),
    );
    // Take all but 992 tokens: room for the least this call costs (251), not for 5,250.
    {
        let spent = r#"{"model":"m","max_tokens":998999}"#; // holds 9 + 998,999
        let (mut spend, _) = open(&h, "first", "/v1/chat/completions", spent.len());
        spend.request_body(spent.as_bytes(), true).unwrap();
        assert!(spend.local_reply().unwrap().is_none());
    } // never ended: its hold stays
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y".repeat(960)
    );
    let (mut s, action) = open(&h, "first", "/v1/chat/completions", body.len());
    assert_eq!(action, Action::Continue);
    s.request_body(&body.as_bytes()[..300], false).unwrap();
    let reply = s.local_reply().unwrap().expect("refused");
    assert_eq!(reply.status, 429);
    assert!(s.record().unwrap().request_body.forwarded.is_empty());
    s.reset().unwrap();
    assert_eq!(counter(&h, "denied"), 1);
    assert_eq!(
        counter(&h, "tokens_charged"),
        0,
        "a refused call settles nothing"
    );
}

const ANTHROPIC_STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

/// An Anthropic stream cut in two at every byte passes unchanged and is charged its reported
/// usage (25 in + 15 out) each time, however the cut splits a line, a field or a number.
#[test]
fn an_anthropic_stream_split_at_every_byte_is_passed_unchanged_and_charged_its_usage() {
    let h = tollgate_with(1, &policy(r#","mode":"charge_after""#));
    let body = r#"{"model":"claude-x","max_tokens":50,"stream":true,"messages":[]}"#;
    let bytes = ANTHROPIC_STREAM.as_bytes();
    for cut in 0..=bytes.len() {
        let user = format!("anthropic-{cut}");
        let request = Request::new("POST", "/v1/messages")
            .header("x-user-id", &user)
            .header("content-type", "application/json")
            .header("content-length", body.len().to_string())
            .body_chunk(body)
            .respond_with(
                Response::ok()
                    .header("content-type", "text/event-stream")
                    .body_chunk(&bytes[..cut])
                    .body_chunk(&bytes[cut..]),
            );
        let Outcome::Continue { response_body, .. } = h.send(0, &request).unwrap() else {
            panic!("refused at cut {cut}");
        };
        assert_eq!(response_body, bytes, "cut at {cut}");
        assert_eq!(BUDGET - left(&h, &user), 40, "cut at {cut}");
    }
    assert_eq!(counter(&h, "tokens_charged"), 40 * (bytes.len() as i64 + 1));
}

/// A stream the client abandons (or the upstream resets) halfway is settled in `on_log`: what
/// was received (the prompt estimate plus the streamed text / 4), or with `on_incomplete:
/// "reservation"`, the whole hold.
#[test]
fn a_stream_reset_mid_response_is_settled_in_on_log_for_what_was_received() {
    for (rule, received) in [("received", true), ("reservation", false)] {
        let h = tollgate_with(1, &policy(&format!(r#","on_incomplete":"{rule}""#)));
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":900,"messages":[]}"#;
        let (mut s, _) = open(&h, "cut", "/v1/chat/completions", body.len());
        s.request_body(body.as_bytes(), true).unwrap();
        s.response_headers(&SSE, false).unwrap();
        let text = "abcd".repeat(50); // 50 tokens
        let event = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
        );
        s.response_body(event.as_bytes(), false).unwrap();
        s.response_body(b"data: {\"choices\":[{\"ind", false)
            .unwrap();
        let record = s.reset().unwrap();
        assert!(record.reset_by_downstream);
        let want = if received {
            prompt(body.len()) + 50
        } else {
            prompt(body.len()) + 900
        };
        assert_eq!(left(&h, "cut"), BUDGET - want - PROBE_HOLD, "{rule}");
        assert_eq!(counter(&h, "tokens_charged"), want as i64, "{rule}");
    }
}

/// Settlement in `on_log` for the calls that never reach a response: reset after the request
/// went upstream (the reservation stands: what the client got cannot be counted), and reset
/// while a followed body was still passing (an incomplete request is not served: all given
/// back).
#[test]
fn a_call_reset_before_its_response_is_settled_in_on_log() {
    let h = tollgate_with(1, &policy(r#","buffer_limit_bytes":256"#));
    let body = r#"{"model":"m","max_tokens":300,"messages":[]}"#;
    let (mut s, _) = open(&h, "waiting", "/v1/chat/completions", body.len());
    s.request_body(body.as_bytes(), true).unwrap();
    s.reset().unwrap();
    let estimate = prompt(body.len()) + 300;
    assert_eq!(left(&h, "waiting"), BUDGET - estimate - PROBE_HOLD);
    assert_eq!(counter(&h, "tokens_charged"), estimate as i64);

    let (mut s, _) = open(&h, "passing", "/v1/chat/completions", 5_000);
    s.request_body(&[b' '; 1_000], false).unwrap();
    assert!(s.local_reply().unwrap().is_none());
    assert!(left(&h, "passing") < BUDGET - 1_000, "held early");
    s.reset().unwrap();
    assert_eq!(left(&h, "passing"), BUDGET - PROBE_HOLD, "given back");
}

/// The budget's compare-and-swap races lost while a call settles: below the retry bound the
/// settlement lands; beyond it (or with the store down) the hold stays until it refills — the
/// call is never settled twice, and never left unsettled only to settle again in `on_log`.
#[test]
fn store_conflicts_and_failures_while_settling_leave_the_hold_but_never_settle_twice() {
    for (case, conflicts, failing, lands) in [
        ("a few lost races", MAX_ATTEMPTS - 1, None, true),
        ("every race lost", MAX_ATTEMPTS, None, false),
        ("the store refuses writes", 0, Some("store"), false),
        ("the host call fails", 0, Some("host"), false),
    ] {
        let h = tollgate_with(1, &policy(""));
        let body = r#"{"model":"m","max_tokens":500,"messages":[]}"#;
        let (mut s, _) = open(&h, "settle", "/v1/chat/completions", body.len());
        s.request_body(body.as_bytes(), true).unwrap();
        s.response_headers(&JSON, false).unwrap();
        h.store().inject_cas_conflicts(conflicts);
        let faults = h.shared().faults();
        match failing {
            Some("store") => h.store().fail_sets(FailFor::Always),
            // InternalFailure from proxy_set_shared_data, as a sick host might answer.
            Some(_) => faults
                .fail("proxy_set_shared_data", 10, FailFor::Always)
                .unwrap(),
            None => {}
        }
        s.response_body(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            true,
        )
        .unwrap();
        assert_eq!(
            h.store().pending_cas_conflicts(),
            0,
            "{case}: every race was tried"
        );
        if failing == Some("host") {
            assert!(faults.injected("proxy_set_shared_data") > 0, "{case}");
        }
        faults.clear();
        h.store().clear_faults();
        s.finish().unwrap(); // on_log: nothing left to settle
        let estimate = prompt(body.len()) + 500;
        let want = if lands { 7 } else { estimate };
        assert_eq!(left(&h, "settle"), BUDGET - want - PROBE_HOLD, "{case}");
        assert_eq!(
            counter(&h, "tokens_reserved"),
            (estimate + PROBE_HOLD) as i64,
            "{case}"
        );
        // Charged only when the charge was written; otherwise counted as a failed settlement.
        let (charged, failures) = if lands { (7, 0) } else { (0, 1) };
        assert_eq!(counter(&h, "tokens_charged"), charged, "{case}");
        assert_eq!(counter(&h, "settle_failures"), failures, "{case}");
    }
}

/// A store that fails while a passing body is admitted on its first chunk lets the call through
/// (`on_store_failure: "allow"`, the default), and the body still reaches the upstream whole:
/// every byte, rewritten to ask for usage, exactly as long as the `content-length` announced.
#[test]
fn a_store_failing_on_the_first_chunk_of_a_passing_body_lets_it_through_whole() {
    let h = tollgate_with(1, &policy(r#","buffer_limit_bytes":256"#));
    let body = format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "z".repeat(700)
    );
    let (mut s, action) = open(&h, "down", "/v1/chat/completions", body.len());
    assert_eq!(action, Action::Continue);
    h.store().fail_gets(FailFor::Always);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(300).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let action = s.request_body(chunk, i + 1 == chunks.len()).unwrap();
        assert_eq!(action, Action::Continue, "chunk {i}");
        assert!(s.local_reply().unwrap().is_none());
    }
    h.store().clear_faults();
    let record = s.finish().unwrap();
    let forwarded = String::from_utf8(record.request_body.forwarded).unwrap();
    assert_eq!(forwarded.len(), body.len() + REWRITE_ROOM, "{forwarded}");
    assert!(forwarded.contains(r#""include_usage":true"#), "{forwarded}");
    assert_eq!(counter(&h, "store_failures"), 1);
}

/// A passing body admitted on its first chunk, then refused with 400 because its rewrite would
/// outgrow the announced `content-length`, gives back what its first chunk held.
#[test]
fn a_passing_body_refused_for_its_rewrite_holds_nothing_afterwards() {
    let h = tollgate_with(1, &policy(r#","buffer_limit_bytes":256"#));
    let body = format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{}"}}],"stream_options":{{}},"stream_options":{{}},"stream_options":{{}}}}"#,
        "w".repeat(400)
    );
    let (mut s, _) = open(&h, "bad", "/v1/chat/completions", body.len());
    let (head, tail) = body.as_bytes().split_at(300);
    s.request_body(head, false).unwrap();
    assert!(s.local_reply().unwrap().is_none());
    s.request_body(tail, true).unwrap();
    assert_eq!(s.local_reply().unwrap().expect("refused").status, 400);
    s.finish().unwrap();
    assert_eq!(left(&h, "bad"), BUDGET - PROBE_HOLD);
}
