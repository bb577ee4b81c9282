//! Whole (non-streaming) answers: each API's JSON body with usage last, its error body, and the
//! body fault modes (`x-mock-big-body`, `x-mock-malformed`).

use serde::Serialize;

use super::scenario::{Api, Scenario};
use super::schema::{
    AnthropicError, AnthropicErrorDetail, BodyOutputMessage, ChatChoice, ChatCompletion,
    ChatMessage, Embedding, Embeddings, Message, OpenAiError, OpenAiErrorDetail, OutputMessage,
    ResponseObject, Tail, TextBlock, TextChoice, TextCompletion, Usage, CREATED, EMBEDDING,
};
use super::text::completion_text;
use super::{google, ollama};

/// JSON text of `value`. The mock's own types always serialise; should one ever fail, the
/// reason goes out as the body (which the caller then sees is not the answer it wanted) rather
/// than a panic.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| format!("serialisation failed: {e}").into_bytes())
}

fn body_with(s: &Scenario, text: &str, tail: Tail) -> Vec<u8> {
    let model = s.model.as_str();
    match s.api {
        Api::Chat => to_json(&ChatCompletion {
            id: "chatcmpl-mock",
            object: "chat.completion",
            created: CREATED,
            model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: "assistant",
                    content: text,
                    refusal: None,
                    annotations: [],
                },
                logprobs: None,
                finish_reason: "stop",
            }],
            service_tier: "default",
            system_fingerprint: "fp_mock",
            tail,
        }),
        Api::Completions => to_json(&TextCompletion {
            id: "cmpl-mock",
            object: "text_completion",
            created: CREATED,
            model,
            choices: [TextChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason: Some("stop"),
            }],
            system_fingerprint: "fp_mock",
            tail,
        }),
        Api::Embeddings => to_json(&Embeddings {
            object: "list",
            data: [Embedding {
                object: "embedding",
                index: 0,
                embedding: EMBEDDING,
            }],
            model,
            tail,
        }),
        Api::Responses => {
            let output = vec![BodyOutputMessage::from(OutputMessage::completed(text))];
            let mut response =
                ResponseObject::new(model, "completed", output, tail.usage.map(Some));
            response.x_padding = tail.x_padding;
            to_json(&response)
        }
        Api::Messages => to_json(&Message {
            id: "msg_mock",
            kind: "message",
            role: "assistant",
            model,
            content: vec![TextBlock { kind: "text", text }],
            stop_reason: Some("end_turn"),
            stop_sequence: None,
            tail,
        }),
        Api::GeminiGenerate | Api::GeminiStream | Api::GeminiEmbed | Api::GeminiCountTokens => {
            google::json_body(s, text, tail.x_padding)
        }
        Api::OllamaChat | Api::OllamaGenerate => ollama::json_body(s, text, tail.x_padding),
    }
}

/// The whole response body, usage last; padded to about `x-mock-big-body` bytes (the padding
/// before the usage, so a reader must take in the whole body to find it), or made malformed.
pub fn json_body(s: &Scenario) -> Vec<u8> {
    let text = completion_text(s.output_tokens());
    let usage = (!s.no_usage).then(|| Usage::of(s));
    let mut body = match s.big_body {
        None => body_with(
            s,
            &text,
            Tail {
                x_padding: None,
                usage,
            },
        ),
        Some(size) => {
            let empty = Tail {
                x_padding: Some(String::new()),
                usage: usage.clone(),
            };
            let pad = size.saturating_sub(body_with(s, &text, empty).len());
            let padded = Tail {
                x_padding: Some("x".repeat(pad)),
                usage,
            };
            body_with(s, &text, padded)
        }
    };
    if s.malformed {
        malform(&mut body);
    }
    body
}

/// Cuts `json` in the middle and finishes it with garbage: no JSON parser accepts it.
pub fn malform(json: &mut Vec<u8>) {
    json.truncate(json.len() / 2);
    json.extend_from_slice(b"<<not json>>");
}

/// An error body in the API's format.
pub fn error_body(api: Api, status: u16, message: &str) -> Vec<u8> {
    if api.is_gemini() {
        return google::error_body(status, message);
    }
    if api.is_ollama() {
        return ollama::error_body(message);
    }
    if api == Api::Messages {
        let kind = match status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        to_json(&AnthropicError {
            kind: "error",
            error: AnthropicErrorDetail { kind, message },
        })
    } else {
        let kind = match status {
            400 | 404 => "invalid_request_error",
            429 => "rate_limit_exceeded",
            _ => "server_error",
        };
        to_json(&OpenAiError {
            error: OpenAiErrorDetail {
                message,
                kind,
                param: None,
                code: None,
            },
        })
    }
}
