//! The host calls of the request path, per request: every crossing of the VM boundary costs
//! Envoy CPU (BENCHMARKS.md §2), so the paths are pinned here as `benches/count-hostcalls`
//! counts them in real Envoy. A change that adds a call to a path changes these lists on
//! purpose, with its measurement. The guest's own work between the calls (Wasm operators,
//! wasmtime's fuel) is bounded here too.

use std::collections::BTreeMap;
use std::time::Duration;

use host_tests::{Harness, Request, Response};

use crate::support::{tollgate_with, users_policy};

/// The host calls `run` makes on `h`, by import, without the zeros.
fn calls_of(h: &Harness, run: impl FnOnce()) -> BTreeMap<&'static str, u64> {
    let calls = h.shared().calls();
    let before = calls.snapshot();
    run();
    calls
        .snapshot()
        .into_iter()
        .map(|(name, n)| (name, n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn list(calls: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    calls.iter().copied().collect()
}

#[test]
fn an_allowed_request_reads_its_headers_once_and_the_clock_once() {
    let h = tollgate_with(1, &users_policy(2, "minute", ""));
    let calls = calls_of(&h, || {
        let ok = h
            .request(0, &[("x-user-id", "alice"), ("x-request-id", "r1")])
            .unwrap();
        assert!(ok.is_continue());
    });
    assert_eq!(
        calls,
        list(&[
            ("proxy_get_header_map_pairs", 1),
            ("proxy_get_current_time_nanoseconds", 1),
            ("proxy_get_shared_data", 1),
            ("proxy_set_shared_data", 1),
            // The access-log record (filter state `wasm.tollgate`).
            ("proxy_set_property", 1),
            // ratelimit-policy, ratelimit, x-ratelimit-limit, -remaining, -reset.
            ("proxy_replace_header_map_value", 5),
        ])
    );
}

/// The lean policy: the IETF fields only and no access-log record.
const LEAN: &str = r#""x_ratelimit_headers":false,"records":false,"#;

#[test]
fn a_lean_policy_makes_six_host_calls_on_an_allowed_request() {
    let h = tollgate_with(1, &users_policy(2, "minute", LEAN));
    let calls = calls_of(&h, || {
        let ok = h
            .request(0, &[("x-user-id", "alice"), ("x-request-id", "r1")])
            .unwrap();
        assert!(ok.is_continue());
    });
    assert_eq!(
        calls,
        list(&[
            ("proxy_get_header_map_pairs", 1),
            ("proxy_get_current_time_nanoseconds", 1),
            ("proxy_get_shared_data", 1),
            ("proxy_set_shared_data", 1),
            // ratelimit-policy, ratelimit.
            ("proxy_replace_header_map_value", 2),
        ])
    );
    assert!(calls.values().sum::<u64>() <= 6);
}

#[test]
fn each_switch_saves_its_own_calls() {
    let allowed = |top: &str| {
        let h = tollgate_with(1, &users_policy(2, "minute", top));
        calls_of(&h, || {
            assert!(h
                .request(0, &[("x-user-id", "alice")])
                .unwrap()
                .is_continue());
        })
    };
    let fields = allowed(r#""x_ratelimit_headers":false,"#);
    assert_eq!(fields.get("proxy_replace_header_map_value"), Some(&2));
    assert_eq!(fields.get("proxy_set_property"), Some(&1));
    let records = allowed(r#""records":false,"#);
    assert_eq!(records.get("proxy_replace_header_map_value"), Some(&5));
    assert_eq!(records.get("proxy_set_property"), None);
}

#[test]
fn a_lean_policy_refuses_in_four_host_calls() {
    let h = tollgate_with(1, &users_policy(1, "minute", LEAN));
    assert!(h
        .request(0, &[("x-user-id", "alice")])
        .unwrap()
        .is_continue());
    let mut refused = None;
    let calls = calls_of(&h, || {
        refused = Some(h.request(0, &[("x-user-id", "alice")]).unwrap());
    });
    assert_eq!(refused.unwrap().status(), 429);
    assert_eq!(
        calls,
        list(&[
            ("proxy_get_header_map_pairs", 1),
            ("proxy_get_current_time_nanoseconds", 1),
            ("proxy_get_shared_data", 1),
            ("proxy_send_local_response", 1),
        ])
    );
}

#[test]
fn a_refusal_at_the_request_headers_takes_the_request_id_from_the_headers_it_read() {
    let h = tollgate_with(1, &users_policy(1, "minute", ""));
    let ask = |id| {
        let request = Request::get("/v1/messages")
            .header("x-user-id", "alice")
            .header("x-request-id", id);
        h.send(0, &request).unwrap()
    };
    assert!(ask("first").is_continue());
    let mut refused = None;
    let calls = calls_of(&h, || refused = Some(ask("second")));
    let refused = refused.unwrap();
    assert_eq!(refused.status(), 429);
    // Still echoed, under both names on Anthropic's route: read from the headers already held.
    assert_eq!(refused.header("x-request-id"), Some("second"));
    assert_eq!(refused.header("request-id"), Some("second"));
    assert_eq!(
        calls,
        list(&[
            ("proxy_get_header_map_pairs", 1),
            ("proxy_get_current_time_nanoseconds", 1),
            ("proxy_get_shared_data", 1),
            ("proxy_set_property", 1),
            ("proxy_send_local_response", 1),
        ])
    );
}

#[test]
fn an_llm_call_reads_the_response_fields_it_needs_in_one_crossing() {
    let policy = r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
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
                .header("x-upstream", "1")
                .body_chunk(answer),
        );
    let mut outcome = None;
    let calls = calls_of(&h, || outcome = Some(h.send(0, &request).unwrap()));
    let outcome = outcome.unwrap();
    assert!(outcome.is_continue());
    // Charged from the answer's usage: the response fields were read (status, content type).
    h.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(h.metrics().value("tollgate.free.tokens_charged"), Some(8));
    // The request map and the response map, once each; no per-name reads.
    assert_eq!(
        calls.get("proxy_get_header_map_pairs"),
        Some(&2),
        "{calls:?}"
    );
    assert_eq!(calls.get("proxy_get_header_map_value"), None, "{calls:?}");
}

/// `benches/count-hostcalls --llm`'s policy: a request limit and two token budgets of the
/// caller (one per model, one for every model).
const LLM_POLICY: &str = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":6000,"per":"minute","burst":100}],
    "tokens":[{"tokens":1000000000,"per":"hour","model":"gpt-4o-mini"},
              {"tokens":1000000000,"per":"day"}]}],
    "llm":{"mode":"reserve","count":"total","default_max_tokens":1024}}"#;

/// A chat completion as Envoy delivers it: the body, then an empty chunk ending each side.
fn chat_call(stream: bool, answer: Response) -> Request {
    let body = format!(
        r#"{{"model":"gpt-4o-mini",{}"max_tokens":256,"messages":[{{"role":"user","content":"hi"}}]}}"#,
        if stream { r#""stream":true,"# } else { "" }
    );
    Request::new("POST", "/v1/chat/completions")
        .header("x-user-id", "alice")
        .header("accept-encoding", "identity")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
        .body_chunk("")
        .respond_with(answer)
}

#[test]
fn an_llm_call_settles_its_budgets_in_one_read_and_one_write() {
    let h = tollgate_with(1, LLM_POLICY);
    let answer = r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
    let request = chat_call(
        false,
        Response::ok()
            .header("content-type", "application/json")
            .header("content-length", answer.len().to_string())
            .body_chunk(answer)
            .body_chunk(""),
    );
    let mut outcome = None;
    let calls = calls_of(&h, || outcome = Some(h.send(0, &request).unwrap()));
    assert!(outcome.unwrap().is_continue());
    h.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(h.metrics().value("tollgate.users.tokens_charged"), Some(8));
    assert_eq!(
        calls,
        list(&[
            // The request map, the response map.
            ("proxy_get_header_map_pairs", 2),
            // The request limit (at the headers) and settlement (the response's end). The held
            // body is admitted at the headers' instant, without a reading of its own (m1).
            ("proxy_get_current_time_nanoseconds", 2),
            // The request limit's set: a get and a set. The caller's budget set (both budgets):
            // a peek at the headers (a get), then a CAS set to admit, made from the peek's value
            // and CAS (the admission's own get went with m1; a set written since is read again),
            // a get and a set to settle.
            ("proxy_get_shared_data", 3),
            ("proxy_set_shared_data", 3),
            // The access-log record: at the decision and at settlement.
            ("proxy_set_property", 2),
            // No accept-encoding removal: the request asks for `identity` only (as Python's
            // urllib does), which it may keep (m1); `gzip` is still removed (below).
            // content-length of the request; 8 response fields.
            ("proxy_replace_header_map_value", 9),
            // The request body and the answer; not the empty chunks.
            ("proxy_get_buffer_bytes", 2),
            // The request body as announced at the headers.
            ("proxy_set_buffer_bytes", 1),
        ])
    );
}

#[test]
fn a_streamed_llm_call_reads_each_chunk_once_and_no_empty_one() {
    let h = tollgate_with(1, LLM_POLICY);
    let mut answer = Response::ok().header("content-type", "text/event-stream");
    for i in 0..19 {
        answer = answer.body_chunk(format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
        ));
    }
    answer = answer
        .body_chunk(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":19,\
             \"total_tokens\":22}}\n\ndata: [DONE]\n\n",
        )
        .body_chunk("");
    let request = chat_call(true, answer);
    let mut outcome = None;
    let calls = calls_of(&h, || outcome = Some(h.send(0, &request).unwrap()));
    assert!(outcome.unwrap().is_continue());
    h.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(h.metrics().value("tollgate.users.tokens_charged"), Some(22));
    // The 20 chunks are one read each; the empty last one and the request's are not read.
    assert_eq!(calls.get("proxy_get_buffer_bytes"), Some(&21), "{calls:?}");
    // Admission writes from the peek's read (see the JSON call above).
    assert_eq!(calls.get("proxy_get_shared_data"), Some(&3), "{calls:?}");
    assert_eq!(calls.get("proxy_set_shared_data"), Some(&3), "{calls:?}");
    let total: u64 = calls.values().sum();
    // The removals: content-length (the client gets fewer bytes than the upstream sent); not
    // accept-encoding, which asks for `identity` only.
    assert_eq!(
        calls.get("proxy_remove_header_map_value"),
        Some(&1),
        "{calls:?}"
    );
    // Two clock readings: the held body is admitted at the headers' instant.
    assert_eq!(
        calls.get("proxy_get_current_time_nanoseconds"),
        Some(&2),
        "{calls:?}"
    );
    assert_eq!(total, 45, "{calls:?}");
}

/// `accept-encoding` goes from an LLM request unless it asks for `identity` only (or is
/// absent): the answer must come back unencoded for its usage to be read (README
/// "`strip_accept_encoding`").
#[test]
fn accept_encoding_is_removed_only_when_it_allows_an_encoding() {
    let h = tollgate_with(1, LLM_POLICY);
    let answer = r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
    let json = || {
        Response::ok()
            .header("content-type", "application/json")
            .body_chunk(answer)
    };
    let body = r#"{"model":"gpt-4o-mini","max_tokens":256,"messages":[]}"#;
    let removals = |encoding: Option<&str>| {
        let mut request = Request::new("POST", "/v1/chat/completions")
            .header("x-user-id", "alice")
            .header("content-type", "application/json")
            .header("content-length", body.len().to_string());
        if let Some(value) = encoding {
            request = request.header("accept-encoding", value);
        }
        let request = request.body_chunk(body).respond_with(json());
        let calls = calls_of(&h, || assert!(h.send(0, &request).unwrap().is_continue()));
        calls
            .get("proxy_remove_header_map_value")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(removals(None), 0);
    assert_eq!(removals(Some("identity")), 0);
    assert_eq!(removals(Some("gzip, deflate, br")), 1);
    assert_eq!(removals(Some("identity, gzip")), 1);
}

/// Admission writes the caller's budget set from what the peek at the headers read (its value
/// and CAS), with no read of its own; when another call wrote the set in between, that CAS write
/// fails and the set is read again before deciding.
#[test]
fn admission_starts_from_the_peek_unless_the_budgets_were_written_since() {
    let h = tollgate_with(2, LLM_POLICY);
    let body = r#"{"model":"gpt-4o-mini","max_tokens":256,"messages":[]}"#;
    let length = body.len().to_string();
    let headers = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("x-user-id", "alice"),
        ("content-type", "application/json"),
        ("content-length", length.as_str()),
    ];
    let store_calls = |calls: &BTreeMap<&str, u64>| {
        (
            calls.get("proxy_get_shared_data").copied().unwrap_or(0),
            calls.get("proxy_set_shared_data").copied().unwrap_or(0),
        )
    };
    let mut quiet = h.stream(0).unwrap();
    quiet.request_headers(headers.as_slice(), false).unwrap();
    let calls = calls_of(&h, || {
        assert_eq!(
            quiet.request_body(body.as_bytes(), true).unwrap(),
            host_tests::Action::Continue
        );
    });
    assert_eq!(store_calls(&calls), (0, 1), "{calls:?}");
    let mut raced = h.stream(0).unwrap();
    raced.request_headers(headers.as_slice(), false).unwrap();
    // Another call of the same caller on the other worker writes the set meanwhile.
    let answer = r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
    let other = chat_call(
        false,
        Response::ok()
            .header("content-type", "application/json")
            .body_chunk(answer),
    );
    assert!(h.send(1, &other).unwrap().is_continue());
    let calls = calls_of(&h, || {
        assert_eq!(
            raced.request_body(body.as_bytes(), true).unwrap(),
            host_tests::Action::Continue
        );
    });
    assert_eq!(
        store_calls(&calls),
        (1, 2),
        "the stale CAS write, a fresh read, the write: {calls:?}"
    );
}

/// The request `benches/count-hostcalls` sends, with the headers Envoy hands over.
fn envoy_request(user: &str) -> Request {
    Request::get("/api/v1/tasks")
        .header(":authority", "127.0.0.1:10000")
        .header("accept-encoding", "identity")
        .header("user-agent", "Python-urllib/3.13")
        .header("x-user-id", user)
        .header("x-forwarded-proto", "http")
        .header("x-request-id", "6a3c1f0e-8d2b-4c5a-9e7f-000000000001")
}

/// The Wasm operators (wasmtime fuel) the guest spends on `request`, and where: each host call
/// it made with the operators spent up to it.
fn operators(h: &host_tests::Harness, request: &Request) -> (u64, Vec<(&'static str, u64)>) {
    let shared = h.shared();
    shared.trace_fuel();
    shared.take_fuel_trace();
    h.send(0, request).unwrap();
    let trace = shared.take_fuel_trace();
    (trace.iter().map(|(_, n)| n).sum(), trace)
}

/// The guest's own work per request, counted exactly (BENCHMARKS.md §2, "a lean policy"):
/// generous bounds well under what it was before the request map stayed in the host's buffer
/// (36,364 operators per admission, 55,560 per refusal, 10,510 to decode the map), so that a
/// change giving that back fails here rather than only in a benchmark.
#[test]
fn the_guest_decodes_the_request_map_without_copying_each_header() {
    let h = tollgate_with(1, &users_policy(1, "minute", ""));
    h.send(0, &envoy_request("warm-up")).unwrap();
    let (admitted, trace) = operators(&h, &envoy_request("alice"));
    // From the map's arrival to the clock read: decoding 10 headers (and the gRPC check).
    let decoding = trace
        .iter()
        .find(|(what, _)| *what == "proxy_get_current_time_nanoseconds")
        .map(|(_, n)| *n);
    assert!(decoding.is_some_and(|n| n < 5_000), "{trace:?}");
    assert!(admitted < 30_000, "{admitted} operators: {trace:?}");
    let (refused, trace) = operators(&h, &envoy_request("alice"));
    assert!(refused < 42_000, "{refused} operators: {trace:?}");
}

/// The operators of `trace` spent in callback `callback` up to host call (or `return`) `what`,
/// the first time it is reached there.
fn segment(trace: &[(&'static str, u64)], callback: &str, what: &str) -> Option<u64> {
    let mut current = "";
    for &(name, used) in trace {
        if used == 0 && name.starts_with("proxy_on_") {
            current = name;
        } else if current == callback && name == what {
            return Some(used);
        }
    }
    None
}

/// The access-log record and the stream's own cost (BENCHMARKS.md §2, "Issue 14: the record and
/// the stream's own cost"): the record's hash finishes a head hashed at configure time, its line
/// is written into a reused buffer from borrowed parts and set without a joined path, and a
/// stream that follows no LLM call keeps no record to free at its end; header lookups pass over
/// names of another length. Bounds between what `c1ba948`'s module spent (4,329 operators from
/// the table write to `set_property`, 749 in `proxy_on_delete`, 24,853 per admission with 11
/// header lines) and what this one does (2,604, 451, 21,321), so that giving any of it back fails
/// here.
#[test]
fn the_record_costs_the_guest_no_copy_and_the_stream_keeps_none() {
    let h = tollgate_with(1, &users_policy(1, "minute", ""));
    h.send(0, &envoy_request("warm-up")).unwrap();
    let (admitted, trace) = operators(&h, &envoy_request("alice"));
    let record = segment(&trace, "proxy_on_request_headers", "proxy_set_property");
    assert!(record.is_some_and(|n| n < 3_300), "{trace:?}");
    // From the map's arrival to the table read: the decoding and the header lookups (gRPC, the
    // identity), the hash and the store key; 6,899 before `values` passed over names of another
    // length by their span, 6,053 after.
    let lookups = segment(
        &trace,
        "proxy_on_request_headers",
        "proxy_get_current_time_nanoseconds",
    )
    .zip(segment(
        &trace,
        "proxy_on_request_headers",
        "proxy_get_shared_data",
    ));
    assert!(
        lookups.is_some_and(|(a, b)| a + b < 6_500),
        "{lookups:?}: {trace:?}"
    );
    let end = segment(&trace, "proxy_on_delete", "return");
    assert!(end.is_some_and(|n| n < 600), "{trace:?}");
    assert!(admitted < 23_500, "{admitted} operators: {trace:?}");
    let (refused, trace) = operators(&h, &envoy_request("alice"));
    let record = segment(&trace, "proxy_on_request_headers", "proxy_set_property");
    // A refusal's record comes straight after the table read (no write).
    assert!(record.is_some_and(|n| n < 5_800), "{trace:?}");
    assert!(refused < 35_500, "{refused} operators: {trace:?}");
}

/// The operators each callback spent, split at its host calls: `(callback, [(mark, n)])`, where
/// a mark is the host call the guest made after spending `n`, or `return`.
fn by_callback(trace: &[(&'static str, u64)]) -> Vec<(&'static str, Vec<(&'static str, u64)>)> {
    let mut out: Vec<(&'static str, Vec<(&'static str, u64)>)> = Vec::new();
    for &(what, n) in trace {
        match out.last_mut() {
            Some((_, marks)) if !what.starts_with("proxy_on_") => marks.push((what, n)),
            _ => out.push((what, Vec::new())),
        }
    }
    out
}

/// The segments of `callback`: what it spent before each host call and before returning.
fn segments_of(trace: &[(&'static str, u64)], callback: &str) -> Vec<(&'static str, u64)> {
    by_callback(trace)
        .into_iter()
        .find(|(name, _)| *name == callback)
        .map(|(_, marks)| marks)
        .unwrap_or_default()
}

/// The response fields' constant text is written once per tier when the policy loads
/// (BENCHMARKS.md §2, "constant field text per tier"): an admitted request formats nothing in its
/// request callback after its last host call and writes the fields at its response with the
/// numbers only; a refusal builds its reply from the same text. Wasm operators at `c1ba948`
/// (before) and after the change, default policy / lean policy; the bounds leave about 10% over
/// what it reached, so that giving it back fails here.
///
/// | this test's request | before (`c1ba948`) | after (`d136e8d`) |
/// |---|---|---|
/// | admitted, whole | 24,869 / 18,042 | 19,472 / 14,710 |
/// | refused, whole | 36,501 / 28,331 | 26,668 / 20,922 |
/// | admitted: the request callback after its last host call | 5,982 / 4,793 | 1,387 / 1,746 |
/// | admitted: the response-headers callback | 2,017 / 1,098 | 2,202 / 1,656 |
/// | refused: the last host call to `send_local_response` | 17,013 / 16,854 | 9,733 / 11,089 |
#[test]
fn the_response_fields_are_written_from_each_tiers_constant_text() {
    for (top, after_last_call, response, to_reply, admitted_max, refused_max) in [
        ("", 1_600, 2_450, 10_700, 21_400, 29_300),
        (LEAN, 2_000, 1_850, 12_200, 16_200, 23_000),
    ] {
        let h = tollgate_with(1, &users_policy(1, "minute", top));
        h.send(0, &envoy_request("warm-up")).unwrap();
        let (admitted, trace) = operators(&h, &envoy_request("alice"));
        assert!(admitted < admitted_max, "{top}: {admitted}: {trace:?}");
        let request = segments_of(&trace, "proxy_on_request_headers");
        let tail = request.last().copied();
        assert!(
            tail.is_some_and(|(mark, n)| mark == "return" && n < after_last_call),
            "{top}: {request:?}"
        );
        let fields = segments_of(&trace, "proxy_on_response_headers");
        let spent: u64 = fields.iter().map(|(_, n)| n).sum();
        assert!(spent < response, "{top}: {fields:?}");
        let (refused, trace) = operators(&h, &envoy_request("alice"));
        assert!(refused < refused_max, "{top}: {refused}: {trace:?}");
        let request = segments_of(&trace, "proxy_on_request_headers");
        let reply = request
            .iter()
            .find(|(mark, _)| *mark == "proxy_send_local_response")
            .map(|(_, n)| *n);
        assert!(reply.is_some_and(|n| n < to_reply), "{top}: {request:?}");
    }
}
