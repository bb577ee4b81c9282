//! Request and response bodies of LLM calls, built from a few numbers so test and trace authors
//! give a model and a usage, not JSON: OpenAI's chat completions and Anthropic's messages, as a
//! JSON answer or a server-sent-event stream (one event per body chunk, so a stream can be cut
//! after any event).

use serde_json::json;

use crate::spec::{Api, Usage};

/// The path a call goes to.
pub fn path(api: Api) -> &'static str {
    match api {
        Api::Openai => "/v1/chat/completions",
        Api::Anthropic => "/v1/messages",
    }
}

/// The request body.
pub fn request_body(
    api: Api,
    model: &str,
    max_tokens: Option<u64>,
    prompt: &str,
    stream: bool,
) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "messages": [{ "role": "user", "content": prompt }],
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(max) = max_tokens {
            obj.insert("max_tokens".to_owned(), json!(max));
        } else if api == Api::Anthropic {
            // Anthropic requires max_tokens; a call without one would be refused upstream.
            obj.insert("max_tokens".to_owned(), json!(1024));
        }
        if stream {
            obj.insert("stream".to_owned(), json!(true));
        }
    }
    body.to_string().into_bytes()
}

/// The response body as chunks: one for JSON, one per event for a stream.
pub fn response_chunks(api: Api, model: &str, usage: Option<Usage>, stream: bool) -> Vec<Vec<u8>> {
    match (api, stream) {
        (Api::Openai, false) => {
            let mut body = json!({
                "id": "chatcmpl-tollgate", "object": "chat.completion", "model": model,
                "choices": [{ "index": 0, "finish_reason": "stop",
                              "message": { "role": "assistant", "content": "ok" } }],
            });
            if let (Some(u), Some(obj)) = (usage, body.as_object_mut()) {
                obj.insert("usage".to_owned(), openai_usage(u));
            }
            vec![body.to_string().into_bytes()]
        }
        (Api::Openai, true) => {
            let chunk = |extra: serde_json::Value| {
                let mut c = json!({ "id": "chatcmpl-tollgate", "object": "chat.completion.chunk",
                                    "model": model });
                if let (Some(obj), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                    obj.extend(extra.clone());
                }
                format!("data: {c}\n\n").into_bytes()
            };
            let mut out = vec![
                chunk(
                    json!({ "choices": [{ "index": 0, "delta": { "role": "assistant", "content": "o" } }] }),
                ),
                chunk(
                    json!({ "choices": [{ "index": 0, "delta": { "content": "k" }, "finish_reason": "stop" }] }),
                ),
            ];
            if let Some(u) = usage {
                out.push(chunk(json!({ "choices": [], "usage": openai_usage(u) })));
            }
            out.push(b"data: [DONE]\n\n".to_vec());
            out
        }
        (Api::Anthropic, false) => {
            let mut body = json!({
                "id": "msg_tollgate", "type": "message", "role": "assistant", "model": model,
                "content": [{ "type": "text", "text": "ok" }], "stop_reason": "end_turn",
            });
            if let (Some(u), Some(obj)) = (usage, body.as_object_mut()) {
                obj.insert(
                    "usage".to_owned(),
                    json!({ "input_tokens": u.input, "output_tokens": u.output }),
                );
            }
            vec![body.to_string().into_bytes()]
        }
        (Api::Anthropic, true) => {
            let event = |name: &str, data: serde_json::Value| {
                format!("event: {name}\ndata: {data}\n\n").into_bytes()
            };
            let (input, output) = usage.map_or((None, None), |u| (Some(u.input), Some(u.output)));
            let mut start = json!({ "type": "message_start", "message": {
                "id": "msg_tollgate", "type": "message", "role": "assistant", "model": model,
                "content": [] } });
            if let (Some(i), Some(msg)) = (
                input,
                start.get_mut("message").and_then(|m| m.as_object_mut()),
            ) {
                msg.insert(
                    "usage".to_owned(),
                    json!({ "input_tokens": i, "output_tokens": 1 }),
                );
            }
            let mut delta =
                json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" } });
            if let (Some(o), Some(obj)) = (output, delta.as_object_mut()) {
                obj.insert("usage".to_owned(), json!({ "output_tokens": o }));
            }
            vec![
                event("message_start", start),
                event(
                    "content_block_start",
                    json!({ "type": "content_block_start", "index": 0,
                    "content_block": { "type": "text", "text": "" } }),
                ),
                event(
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "text_delta", "text": "ok" } }),
                ),
                event(
                    "content_block_stop",
                    json!({ "type": "content_block_stop", "index": 0 }),
                ),
                event("message_delta", delta),
                event("message_stop", json!({ "type": "message_stop" })),
            ]
        }
    }
}

fn openai_usage(u: Usage) -> serde_json::Value {
    json!({ "prompt_tokens": u.input, "completion_tokens": u.output,
            "total_tokens": u.input + u.output })
}
