//! What one chunk of a streamed LLM answer costs the guest (BENCHMARKS.md §2, "Issue 14: a
//! streamed call's cost per chunk"), counted exactly in Wasm operators (wasmtime fuel): a
//! 1,000-token answer is about 1,000 chunks, so this, not the call's fixed cost, is what a
//! streamed call costs. Each format's content event is sent as 19 chunks of one event; the
//! middle chunks' `proxy_on_response_body` is bounded.

use host_tests::{Request, Response};

use super::support::tollgate_with;

const LLM_POLICY: &str = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":6000,"per":"minute","burst":100}],
    "tokens":[{"tokens":1000000000,"per":"day"}]}],
    "llm":{"mode":"reserve","count":"total","default_max_tokens":1024}}"#;

/// The operators each `proxy_on_response_body` of a call to `path` with `body`, answered by
/// 19 copies of `event` then `last` then the empty end, spent (in order).
fn per_chunk(path: &str, body: &str, content_type: &str, event: &str, last: &str) -> Vec<u64> {
    let h = tollgate_with(1, LLM_POLICY);
    let call = |user: &str| {
        let mut answer = Response::ok().header("content-type", content_type);
        for _ in 0..19 {
            answer = answer.body_chunk(event);
        }
        Request::new("POST", path)
            .header("x-user-id", user)
            .header("accept-encoding", "identity")
            .header("content-type", "application/json")
            .header("content-length", body.len().to_string())
            .body_chunk(body)
            .body_chunk("")
            .respond_with(answer.body_chunk(last).body_chunk(""))
    };
    // The VM's first call pays one-off set-up (allocator growth): not counted.
    assert!(h.send(0, &call("warm-up")).unwrap().is_continue());
    let shared = h.shared();
    shared.trace_fuel();
    shared.take_fuel_trace();
    assert!(h.send(0, &call("alice")).unwrap().is_continue());
    let mut chunks = Vec::new();
    let mut current = None;
    for (what, used) in shared.take_fuel_trace() {
        if used == 0 && what.starts_with("proxy_on_") {
            if let Some(n) = current.take() {
                chunks.push(n);
            }
            current = (what == "proxy_on_response_body").then_some(0);
        } else if let Some(n) = current.as_mut() {
            *n += used;
        }
    }
    chunks.extend(current);
    assert_eq!(chunks.len(), 21, "{chunks:?}");
    chunks
}

/// The most any of the content chunks after the first cost (the first also sets up the
/// stream's readers; the last two are the usage and the end).
fn content_chunk_cost(chunks: &[u64]) -> u64 {
    chunks
        .get(1..19)
        .into_iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
}

const CHAT: &str = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":256,"messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":19,\"total_tokens\":22}}\n\ndata: [DONE]\n\n";

/// A chat chunk of `benches/count-hostcalls --llm`'s stream (the request asked for no usage,
/// so tollgate added `include_usage` and passes the stream through the remover): `c1ba948`'s
/// module spent 22,508 operators on each (a JSON parse of the event to see it had no `usage`
/// to take out, then a serde parse to measure its text, then a copy of the chunk compared with
/// it); 17,020 without the first parse; 9,774 with the event read by one hand-written pass;
/// 6,563 with a chunk of whole events without `"usage"` neither framed, copied nor compared by
/// the remover. The bound fails each of the earlier steps.
#[test]
fn a_chat_chunk_is_read_once_without_serde() {
    let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w3 \"}}]}\n\n";
    let chunks = per_chunk(
        "/v1/chat/completions",
        CHAT,
        "text/event-stream",
        event,
        CHAT_USAGE,
    );
    let cost = content_chunk_cost(&chunks);
    assert!(cost < 8_000, "{cost} operators per chunk: {chunks:?}");
}

/// One content event of each other format the scanner reads (the remover only edits OpenAI
/// chat streams): (name, path, request body, content type, content event, last chunk).
const FORMATS: [(&str, &str, &str, &str, &str, &str); 4] = [
    (
        "anthropic",
        "/v1/messages",
        r#"{"model":"claude-3-5-haiku-latest","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        "text/event-stream",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"w3 \"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":19}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ),
    (
        "responses",
        "/v1/responses",
        r#"{"model":"gpt-4o-mini","stream":true,"max_output_tokens":256,"input":"hi"}"#,
        "text/event-stream",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"w3 \"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":19,\"total_tokens\":22}}}\n\n",
    ),
    (
        "gemini",
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        r#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":256}}"#,
        "text/event-stream",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"w3 \"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\".\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":19,\"totalTokenCount\":22}}\r\n\r\n",
    ),
    (
        "ollama",
        "/api/chat",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"options":{"num_predict":256}}"#,
        "application/x-ndjson",
        "{\"model\":\"llama3.2\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"w3 \"},\"done\":false}\n",
        "{\"model\":\"llama3.2\",\"created_at\":\"2024-01-01T00:00:01Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"prompt_eval_count\":3,\"eval_count\":19}\n",
    ),
];

/// The other formats' content chunks: `c1ba948`'s module spent 16,707 (Anthropic), 19,701
/// (Responses), 14,673 (Gemini) and 22,336 (Ollama) operators on each; their events read by
/// the hand-written pass, 11,025, 14,744 and 15,386 (Gemini's, still read by serde, 15,352).
/// Each bound fails the old cost of a format now read quickly.
#[test]
fn each_formats_content_chunk_is_bounded() {
    let bounds = [13_000, 17_000, 16_500, 18_000];
    for ((name, path, body, content_type, event, last), bound) in FORMATS.into_iter().zip(bounds) {
        let chunks = per_chunk(path, body, content_type, event, last);
        let cost = content_chunk_cost(&chunks);
        assert!(
            cost < bound,
            "{name}: {cost} operators per chunk: {chunks:?}"
        );
    }
}

/// A chat chunk as OpenAI sends it once `include_usage` is on (tollgate added it): every chunk
/// carries `"usage":null`, which the remover cuts. `c1ba948`'s module spent 24,328 operators on
/// each; with its text read by the hand-written pass, 19,576; its one data line read in place,
/// 19,066. The cut itself (the event's JSON
/// checked by serde, its members found, the event copied without the member) is what is left.
#[test]
fn a_chat_chunk_with_usage_null_is_cut_and_read_once() {
    let event =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w3 \"}}],\"usage\":null}\n\n";
    let chunks = per_chunk(
        "/v1/chat/completions",
        CHAT,
        "text/event-stream",
        event,
        CHAT_USAGE,
    );
    let cost = content_chunk_cost(&chunks);
    assert!(cost < 19_400, "{cost} operators per chunk: {chunks:?}");
}
