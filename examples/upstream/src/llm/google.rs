//! Gemini, as the Gemini API and Vertex AI answer it (the same shapes on both): a
//! `GenerateContentResponse` whole or streamed, `embedContent`, `countTokens`, and Google's error
//! body. Field names are Google's camelCase, in the order Google sends them: `usageMetadata`
//! after `candidates`, then `modelVersion` and `responseId`.
//!
//! A stream (`:streamGenerateContent`) sends one response per text delta, each with the
//! `usageMetadata` so far: the prompt count on every chunk, the candidates count growing with the
//! text (so the sum over chunks is more than the usage: a reader must take the last). The last
//! chunk carries `finishReason`. With `alt=sse` the chunks are SSE events separated by
//! `\r\n\r\n`, as Google writes them; without it, one JSON array written an element at a time
//! (`[`, then `\n,\r\n` between elements, `]`).

use serde::Serialize;

use super::body::to_json;
use super::scenario::{Api, Scenario};
use super::schema::{Usage, EMBEDDING};
use super::stream::Event;
use super::text::{deltas, CHARS_PER_TOKEN};

/// A `GenerateContentResponse` (whole, or one chunk of a stream).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse<'a> {
    pub candidates: [Candidate<'a>; 1],
    /// Padding before the usage (`x-mock-big-body`, `x-mock-pad-final`).
    #[serde(rename = "x_padding", skip_serializing_if = "Option::is_none")]
    pub x_padding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<Usage>,
    pub model_version: &'a str,
    pub response_id: &'static str,
}

/// Its one candidate.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate<'a> {
    pub content: Content<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<&'static str>,
    pub index: u32,
}

/// The model's turn.
#[derive(Debug, Serialize)]
pub struct Content<'a> {
    pub parts: [Part<'a>; 1],
    pub role: &'static str,
}

/// A text part.
#[derive(Debug, Serialize)]
pub struct Part<'a> {
    pub text: &'a str,
}

/// `embedContent`'s answer (no usage: the Gemini API reports none for embeddings).
#[derive(Debug, Serialize)]
pub struct EmbedContentResponse {
    pub embedding: Values,
}

/// An embedding's values.
#[derive(Debug, Serialize)]
pub struct Values {
    pub values: [f64; 8],
}

/// `countTokens`' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountTokensResponse {
    pub total_tokens: u64,
}

/// Google's error body: `{"error": {"code", "message", "status"}}`.
#[derive(Debug, Serialize)]
pub struct GoogleError<'a> {
    pub error: GoogleErrorDetail<'a>,
}

/// Its detail.
#[derive(Debug, Serialize)]
pub struct GoogleErrorDetail<'a> {
    pub code: u16,
    pub message: &'a str,
    pub status: &'static str,
}

fn response<'a>(
    s: &'a Scenario,
    text: &'a str,
    last: bool,
    usage: Option<Usage>,
    x_padding: Option<String>,
) -> GenerateContentResponse<'a> {
    GenerateContentResponse {
        candidates: [Candidate {
            content: Content {
                parts: [Part { text }],
                role: "model",
            },
            finish_reason: last.then_some("STOP"),
            index: 0,
        }],
        x_padding,
        usage_metadata: usage,
        model_version: &s.model,
        response_id: "mock-response",
    }
}

/// The whole body of a non-streaming Gemini call, with `x_padding` before its usage.
pub fn json_body(s: &Scenario, text: &str, x_padding: Option<String>) -> Vec<u8> {
    match s.api {
        Api::GeminiEmbed => to_json(&EmbedContentResponse {
            embedding: Values { values: EMBEDDING },
        }),
        Api::GeminiCountTokens => to_json(&CountTokensResponse {
            total_tokens: s.prompt_tokens,
        }),
        _ => {
            let usage = (!s.no_usage).then(|| Usage::of(s));
            to_json(&response(s, text, true, usage, x_padding))
        }
    }
}

/// A stream's chunks: one per delta, each with the usage so far (the last padded by
/// `x-mock-pad-final` and carrying the final usage).
pub fn events(s: &Scenario, text: &str) -> Vec<Event> {
    let mut parts = deltas(text);
    if parts.is_empty() {
        parts.push("");
    }
    let count = parts.len();
    let mut so_far = 0u64;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, delta)| {
            let last = i + 1 == count;
            so_far += (delta.len() as u64).div_ceil(CHARS_PER_TOKEN);
            let usage = (!s.no_usage).then(|| Usage::gemini(s.prompt_tokens, so_far));
            let pad = if last && !s.no_usage {
                s.pad_final.map(|n| "x".repeat(n))
            } else {
                None
            };
            let event = Event::data(to_json(&response(s, delta, last, usage, pad)));
            if last && !s.no_usage {
                event.with_usage()
            } else {
                event
            }
        })
        .collect()
}

/// Google's error body for `status`.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    let kind = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    to_json(&GoogleError {
        error: GoogleErrorDetail {
            code: status,
            message,
            status: kind,
        },
    })
}
