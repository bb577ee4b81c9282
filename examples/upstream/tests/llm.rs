//! The LLM mock, handler by handler (no socket), and over a socket for what only the wire shows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufReader, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode, Uri};
use serde_json::Value;
use tollgate_upstream::llm::LlmMock;
use tollgate_upstream::request::Request;
use tollgate_upstream::response::Response;
use tollgate_upstream::server::Handler;

fn post(path: &str, body: &str, headers: &[(&str, &str)]) -> Request {
    let mut request = Request::new(Method::POST, path.parse::<Uri>().unwrap());
    for (n, v) in headers {
        request.headers.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    request.body = body.to_owned().into();
    request
}

fn call(path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    LlmMock::new().handle(&post(path, body, headers))
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.header(name)
}

fn parse(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

fn json_of(r: &Response) -> Value {
    let body = r.body_bytes();
    parse(&body).unwrap_or_else(|| panic!("not JSON: {}", String::from_utf8_lossy(&body)))
}

/// The events of a streamed response: (event name, parsed data or the raw `[DONE]`).
fn events_of(r: &Response) -> Vec<(Option<String>, Result<Value, String>)> {
    assert!(r.pieces().is_some(), "a streamed response");
    let text = String::from_utf8(r.body_bytes().to_vec()).unwrap();
    assert!(text.ends_with("\n\n"), "every event ends with a blank line");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = None;
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            let data = data.expect("data");
            let parsed = parse(data.as_bytes()).ok_or(data);
            (name, parsed)
        })
        .collect()
}

fn u(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).expect("a count")
}

/// `usage` is the body's last member: what follows `,"usage":` is exactly that object and `}`.
fn usage_is_last(r: &Response) -> bool {
    let body = String::from_utf8(r.body_bytes().to_vec()).unwrap();
    let Some(at) = body.rfind(r#","usage":"#) else {
        return false;
    };
    let rest = &body[at + r#","usage":"#.len()..body.len() - 1];
    body.ends_with('}') && parse(rest.as_bytes()) == json_of(r).get("usage").cloned()
}

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
const STREAM_USAGE: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;

#[test]
fn chat_json_reports_the_default_usage_and_text_of_matching_length() {
    let r = call(CHAT, BODY, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let v = json_of(&r);
    assert_eq!(
        v.get("object").and_then(Value::as_str),
        Some("chat.completion")
    );
    assert_eq!(v.get("model").and_then(Value::as_str), Some("gpt-4o-mini"));
    let usage = v.get("usage").unwrap();
    assert_eq!(u(usage.get("prompt_tokens")), 100);
    assert_eq!(u(usage.get("completion_tokens")), 200);
    assert_eq!(u(usage.get("total_tokens")), 300);
    let text = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap();
    assert_eq!(text.len(), 800);
    assert_eq!(header(&r, "x-mock-saw-include-usage"), Some("false"));
    assert_eq!(header(&r, "x-mock-saw-accept-encoding"), Some("none"));
}

#[test]
fn usage_follows_the_request_headers() {
    let r = call(
        "/v1/messages",
        BODY,
        &[
            ("x-mock-prompt-tokens", "7"),
            ("x-mock-completion-tokens", "13"),
        ],
    );
    let v = json_of(&r);
    let usage = v.get("usage").unwrap();
    assert_eq!(u(usage.get("input_tokens")), 7);
    assert_eq!(u(usage.get("output_tokens")), 13);
    let text = v
        .get("content")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("text"));
    assert_eq!(text.and_then(Value::as_str).map(str::len), Some(52));
    assert_eq!(v.get("type").and_then(Value::as_str), Some("message"));
}

#[test]
fn every_api_answers_json_with_usage_last() {
    for (path, input, output) in [
        (
            "/v1/chat/completions",
            "prompt_tokens",
            Some("completion_tokens"),
        ),
        (
            "/v1/completions",
            "prompt_tokens",
            Some("completion_tokens"),
        ),
        ("/v1/embeddings", "prompt_tokens", None),
        ("/v1/responses", "input_tokens", Some("output_tokens")),
        ("/v1/messages", "input_tokens", Some("output_tokens")),
        (
            "/api/openai/v1/chat/completions?x=1",
            "prompt_tokens",
            Some("completion_tokens"),
        ),
    ] {
        let r = call(path, BODY, &[]);
        let v = json_of(&r);
        assert!(usage_is_last(&r), "{path}");
        let usage = v.get("usage").unwrap();
        assert_eq!(u(usage.get(input)), 100, "{path}");
        if let Some(output) = output {
            assert_eq!(u(usage.get(output)), 200, "{path}");
        }
    }
}

#[test]
fn a_chat_stream_reports_usage_only_when_asked() {
    let plain = events_of(&call(CHAT, STREAM, &[]));
    assert_eq!(plain.last().unwrap().1, Err("[DONE]".to_owned()));
    assert!(plain
        .iter()
        .filter_map(|(_, d)| d.as_ref().ok())
        .all(|d| d.get("usage").is_none()));

    let r = call(CHAT, STREAM_USAGE, &[]);
    assert_eq!(
        header(&r, "content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(header(&r, "x-mock-saw-include-usage"), Some("true"));
    let events = events_of(&r);
    let (last, chunks) = events.split_last().unwrap();
    assert_eq!(last.1, Err("[DONE]".to_owned()));
    let chunks: Vec<&Value> = chunks.iter().map(|(_, d)| d.as_ref().unwrap()).collect();
    let (usage_chunk, others) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk.get("choices"), Some(&Value::Array(vec![])));
    assert_eq!(
        u(usage_chunk.get("usage").and_then(|u| u.get("total_tokens"))),
        300
    );
    assert!(others.iter().all(|c| c.get("usage") == Some(&Value::Null)));
    let text: usize = others
        .iter()
        .filter_map(|c| {
            c.get("choices")?
                .get(0)?
                .get("delta")?
                .get("content")?
                .as_str()
        })
        .map(str::len)
        .sum();
    assert_eq!(text, 800);
    assert!(others.len() > 5, "the text comes in several deltas");
}

#[test]
fn a_legacy_completions_stream_has_the_same_usage_rule() {
    let events = events_of(&call("/v1/completions", STREAM_USAGE, &[]));
    let usage = events
        .iter()
        .filter_map(|(_, d)| d.as_ref().ok()?.get("usage")?.get("completion_tokens"))
        .next();
    assert_eq!(usage.and_then(Value::as_u64), Some(200));
    let none = events_of(&call("/v1/completions", STREAM, &[]));
    assert!(none
        .iter()
        .all(|(_, d)| d.as_ref().map_or(true, |d| d.get("usage").is_none())));
}

#[test]
fn a_responses_stream_ends_with_response_completed_carrying_usage() {
    let events = events_of(&call("/v1/responses", STREAM, &[]));
    for (name, data) in &events {
        let data = data.as_ref().unwrap();
        assert_eq!(data.get("type").and_then(Value::as_str), name.as_deref());
    }
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.completed"));
    let usage = data
        .as_ref()
        .unwrap()
        .get("response")
        .unwrap()
        .get("usage")
        .unwrap();
    assert_eq!(u(usage.get("input_tokens")), 100);
    assert_eq!(u(usage.get("output_tokens")), 200);
    let deltas = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("response.output_text.delta"))
        .count();
    assert!(deltas > 5);
}

#[test]
fn an_anthropic_stream_has_the_event_sequence_and_cumulative_output() {
    let events = events_of(&call(
        "/v1/messages",
        STREAM,
        &[("x-mock-completion-tokens", "30")],
    ));
    let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(
        &names[..3],
        ["message_start", "content_block_start", "ping"]
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(names[3..names.len() - 3]
        .iter()
        .all(|n| *n == "content_block_delta"));
    let data = |i: usize| events[i].1.as_ref().unwrap();
    let start = data(0).get("message").unwrap().get("usage").unwrap();
    assert_eq!(u(start.get("input_tokens")), 100);
    let delta = data(events.len() - 2).get("usage").unwrap();
    assert_eq!(u(delta.get("output_tokens")), 30);
    let text: usize = events
        .iter()
        .filter_map(|(_, d)| d.as_ref().ok()?.get("delta")?.get("text")?.as_str())
        .map(str::len)
        .sum();
    assert_eq!(text, 120);
}

#[test]
fn no_usage_leaves_usage_out_everywhere() {
    let v = json_of(&call(CHAT, BODY, &[("x-mock-no-usage", "1")]));
    assert!(v.get("usage").is_none());
    for path in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
        let events = events_of(&call(path, STREAM_USAGE, &[("x-mock-no-usage", "1")]));
        for (_, d) in events
            .iter()
            .filter_map(|(n, d)| Some((n, d.as_ref().ok()?)))
        {
            let usage = d
                .get("usage")
                .or_else(|| d.get("message")?.get("usage"))
                .or_else(|| d.get("response")?.get("usage"));
            assert!(matches!(usage, None | Some(Value::Null)), "{path}: {d:?}");
        }
    }
}

#[test]
fn malformed_and_big_bodies() {
    let r = call(CHAT, BODY, &[("x-mock-malformed", "1")]);
    assert_eq!(r.status, 200);
    assert!(parse(&r.body_bytes()).is_none());
    let r = call(CHAT, BODY, &[("x-mock-big-body", "100000")]);
    assert!(
        (100_000..100_010).contains(&r.body_bytes().len()),
        "{}",
        r.body_bytes().len()
    );
    let v = json_of(&r);
    assert_eq!(u(v.get("usage").and_then(|u| u.get("total_tokens"))), 300);
    let events = events_of(&call(CHAT, STREAM_USAGE, &[("x-mock-malformed", "1")]));
    assert!(events.iter().all(|(_, d)| d.is_err()));
}

#[test]
fn a_truncated_event_ends_the_stream_inside_its_json() {
    let r = call(CHAT, STREAM_USAGE, &[("x-mock-truncated-event", "1")]);
    let stream = r.pieces().unwrap();
    assert_eq!(stream.cut_after, None, "the stream itself ends normally");
    let text = String::from_utf8(r.body_bytes().to_vec()).unwrap();
    let last = text.rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with("data: {\"id\":\"chatcmpl-mock\""),
        "{last}"
    );
    assert!(!text.contains("[DONE]"));
    assert!(parse(last.trim_start_matches("data: ").as_bytes()).is_none());
    let anthropic = call("/v1/messages", STREAM, &[("x-mock-truncated-event", "1")]);
    let text = String::from_utf8(anthropic.body_bytes().to_vec()).unwrap();
    assert!(text
        .rsplit("\n\n")
        .next()
        .unwrap()
        .starts_with("event: message_delta\ndata: {"));
    assert!(!text.contains("message_stop"));
}

#[test]
fn faults_reach_the_stream_and_the_status() {
    let r = call(
        CHAT,
        STREAM,
        &[("x-mock-cut-after", "3"), ("x-mock-delay-ms", "20")],
    );
    let stream = r.pieces().unwrap().clone();
    assert_eq!(
        (stream.cut_after, stream.delay),
        (Some(3), Duration::from_millis(20))
    );
    let r = call("/v1/messages", BODY, &[("x-mock-status", "500")]);
    assert_eq!(r.status, 500);
    let v = json_of(&r);
    assert_eq!(v.get("type").and_then(Value::as_str), Some("error"));
    let r = call(CHAT, BODY, &[("x-mock-status", "503")]);
    assert_eq!(
        json_of(&r)
            .get("error")
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str),
        Some("server_error")
    );
    let r = call(CHAT, BODY, &[("x-mock-cut-after", "10")]);
    let stream = r.pieces().unwrap().clone();
    assert_eq!(stream.pieces[0].len(), 10);
    assert!(!stream.chunked);
}

#[test]
fn bad_requests_are_refused_in_the_apis_format() {
    let r = call("/v1/messages", "{not json", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        json_of(&r)
            .get("error")
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str),
        Some("invalid_request_error")
    );
    assert_eq!(call(CHAT, BODY, &[("x-mock-delay-ms", "soon")]).status, 400);
    assert_eq!(call(CHAT, "[1]", &[]).status, 400);
    assert_eq!(call("/v1/nothing", BODY, &[]).status, 404);
    let mut get = post(CHAT, "", &[]);
    get.method = Method::GET;
    assert_eq!(LlmMock::new().handle(&get).status, 405);
    get.uri = Uri::from_static("/healthz");
    assert_eq!(LlmMock::new().handle(&get).status, 200);
}

#[test]
fn echoes_what_it_received() {
    let r = call(CHAT, STREAM_USAGE, &[("accept-encoding", "gzip, br")]);
    assert_eq!(header(&r, "x-mock-saw-accept-encoding"), Some("gzip, br"));
    assert_eq!(header(&r, "x-mock-saw-stream"), Some("true"));
    assert_eq!(header(&r, "x-mock-saw-model"), Some("gpt-4o-mini"));
    assert_eq!(
        header(&r, "x-mock-saw-body-bytes"),
        Some(STREAM_USAGE.len().to_string().as_str())
    );
    let r = call(CHAT, BODY, &[("x-mock-provider-headers", "1")]);
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some("29999700"));
}

#[test]
fn chunk_bytes_splits_the_same_stream_anywhere() {
    let whole = call(CHAT, STREAM_USAGE, &[]);
    let whole = whole.body_bytes();
    for n in ["1", "7", "100000"] {
        let r = call(CHAT, STREAM_USAGE, &[("x-mock-chunk-bytes", n)]);
        let pieces = &r.pieces().unwrap().pieces;
        let size: usize = n.parse().unwrap();
        assert!(pieces.iter().all(|p| p.len() <= size && !p.is_empty()));
        assert_eq!(pieces.concat(), whole.to_vec(), "{n}");
    }
    assert_eq!(
        call(CHAT, STREAM, &[("x-mock-chunk-bytes", "0")]).status,
        400
    );
}

#[test]
fn pad_final_grows_the_last_usage_event_and_keeps_its_usage() {
    for path in [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/responses",
        "/v1/completions",
    ] {
        let r = call(path, STREAM_USAGE, &[("x-mock-pad-final", "300000")]);
        let events = events_of(&r);
        let (_, last) = events
            .iter()
            .rev()
            .find(|(_, d)| {
                d.as_ref().is_ok_and(|d| {
                    d.get("x_padding").is_some()
                        || d.get("response").and_then(|r| r.get("x_padding")).is_some()
                })
            })
            .unwrap_or_else(|| panic!("{path}: no padded event"));
        let last = last.as_ref().unwrap();
        let usage = last
            .get("usage")
            .or_else(|| last.get("response")?.get("usage"))
            .unwrap();
        assert!(matches!(usage, Value::Object(_)), "{path}");
        let wire: usize = r.pieces().unwrap().pieces.iter().map(|p| p.len()).sum();
        assert!(wire > 300_000, "{path}");
    }
}

#[test]
fn a_json_answer_waits_its_delay_on_the_wire() {
    let r = call(CHAT, BODY, &[("x-mock-delay-ms", "40")]);
    assert_eq!(r.delay, Duration::from_millis(40));
    let addr = common::start(Arc::new(LlmMock::new()));
    let started = Instant::now();
    let reply = common::exchange(addr, &common::post(CHAT, BODY, "x-mock-delay-ms: 300\r\n"));
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn over_a_socket_streams_end_with_the_last_chunk_and_cut_streams_close_without_it() {
    let addr = common::start(Arc::new(LlmMock::new()));
    let stream = common::connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    writer
        .write_all(&common::post(
            "/v1/messages",
            STREAM,
            "x-mock-delay-ms: 1\r\n",
        ))
        .unwrap();
    let whole = common::read_reply(&mut reader);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("transfer-encoding"), Some("chunked"));
    assert!(whole.complete, "the last chunk came");
    assert!(whole
        .text()
        .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    // The connection is kept: a second request on it is cut after two events.
    writer
        .write_all(&common::post(
            "/v1/messages",
            STREAM,
            "x-mock-cut-after: 2\r\n",
        ))
        .unwrap();
    let cut = common::read_reply(&mut reader);
    assert!(!cut.complete, "no last chunk");
    assert!(cut.text().contains("event: content_block_start"));
    assert!(!cut.text().contains("event: ping"));
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap(),
        0,
        "and the connection closed"
    );
}

#[test]
fn a_json_body_cut_after_n_bytes_announces_its_whole_length_then_closes() {
    let addr = common::start(Arc::new(LlmMock::new()));
    let whole = common::exchange(addr, &common::post(CHAT, BODY, ""));
    let cut = common::exchange(addr, &common::post(CHAT, BODY, "x-mock-cut-after: 10\r\n"));
    assert_eq!(
        cut.header("content-length"),
        Some(whole.body.len().to_string().as_str())
    );
    assert!(!cut.complete);
    assert_eq!(cut.body, whole.body[..10]);
}

/// Reads a raw response until the connection closes, counting the reads it took.
fn read_counting(raw: &[u8], addr: std::net::SocketAddr) -> (Vec<u8>, usize) {
    let mut stream = common::connect(addr);
    stream.write_all(raw).unwrap();
    let (mut all, mut reads, mut buf) = (Vec::new(), 0, [0u8; 65536]);
    loop {
        match stream.read(&mut buf).unwrap() {
            0 => return (all, reads),
            n => {
                all.extend_from_slice(&buf[..n]);
                reads += 1;
            }
        }
    }
}

#[test]
fn each_piece_leaves_in_a_write_of_its_own() {
    // One byte per piece, 1 ms apart: a reader sees them one by one (as Envoy does), where a
    // server that buffered its writes would deliver them in a few large reads.
    let addr = common::start(Arc::new(LlmMock::new()));
    let raw = common::post(
        CHAT,
        STREAM,
        "x-mock-chunk-bytes: 1\r\nx-mock-delay-ms: 1\r\nx-mock-completion-tokens: 0\r\nconnection: close\r\n",
    );
    let (all, reads) = read_counting(&raw, addr);
    let body = call(CHAT, STREAM, &[("x-mock-completion-tokens", "0")]).body_bytes();
    assert!(all.ends_with(b"\r\n0\r\n\r\n"));
    assert!(
        reads > body.len() / 2,
        "{reads} reads for {} one-byte pieces",
        body.len()
    );
}

#[test]
fn a_big_body_and_a_padded_stream_go_out_whole() {
    let addr = common::start(Arc::new(LlmMock::new()));
    let big = common::exchange(
        addr,
        &common::post(CHAT, BODY, "x-mock-big-body: 3000000\r\n"),
    );
    assert!(big.complete);
    assert_eq!(big.body.len(), 3_000_000);
    let padded = common::exchange(
        addr,
        &common::post("/v1/responses", STREAM, "x-mock-pad-final: 300000\r\n"),
    );
    assert!(padded.complete);
    assert!(padded.body.len() > 300_000);
}

#[test]
fn status_and_bad_requests_over_the_wire() {
    let addr = common::start(Arc::new(LlmMock::new()));
    let failed = common::exchange(addr, &common::post(CHAT, BODY, "x-mock-status: 529\r\n"));
    assert_eq!(failed.status, 529);
    let bad = common::exchange(addr, &common::post(CHAT, "{oops", ""));
    assert_eq!(bad.status, StatusCode::BAD_REQUEST.as_u16());
    assert_eq!(bad.header("x-mock-saw-body-bytes"), Some("5"));
}
