//! Ollama's native API (`/api/chat`, `/api/generate`), as Ollama answers it: NDJSON unless the
//! request says `"stream": false`, one object per line with the text so far in `message.content`
//! (chat) or `response` (generate), `"done": false`; the final object (`"done": true`) carries
//! `done_reason`, the durations and the counts, `prompt_eval_count` in and `eval_count` out.
//! A whole answer is that final object with all the text. Errors are `{"error": "…"}`.

use serde::Serialize;

use super::body::to_json;
use super::scenario::{Api, Scenario};
use super::stream::Event;
use super::text::deltas;

/// `created_at` in every object: a fixed time, so answers are reproducible.
const CREATED_AT: &str = "2026-11-30T09:13:44.120071Z";

/// One object of an answer (a stream's line, or the whole answer).
#[derive(Debug, Serialize)]
pub struct OllamaObject<'a> {
    pub model: &'a str,
    pub created_at: &'static str,
    /// `/api/chat`: the assistant's message (its text in this object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessage<'a>>,
    /// `/api/generate`: the text in this object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a str>,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<&'static str>,
    /// `/api/generate`'s final object: the conversation's context tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<[u32; 3]>,
    #[serde(flatten)]
    pub end: Option<Final>,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

/// The members of the final object: durations (ns) and, unless `x-mock-no-usage`, the counts.
#[derive(Debug, Serialize)]
pub struct Final {
    pub total_duration: u64,
    pub load_duration: u64,
    #[serde(rename = "x_padding", skip_serializing_if = "Option::is_none")]
    pub x_padding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_eval_count: Option<u64>,
    pub prompt_eval_duration: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_count: Option<u64>,
    pub eval_duration: u64,
}

/// Ollama's error body.
#[derive(Debug, Serialize)]
pub struct OllamaError<'a> {
    pub error: &'a str,
}

fn object<'a>(s: &'a Scenario, text: &'a str, end: Option<Final>) -> OllamaObject<'a> {
    let done = end.is_some();
    OllamaObject {
        model: &s.model,
        created_at: CREATED_AT,
        message: (s.api == Api::OllamaChat).then_some(ChatMessage {
            role: "assistant",
            content: text,
        }),
        response: (s.api == Api::OllamaGenerate).then_some(text),
        done,
        done_reason: done.then_some("stop"),
        context: (done && s.api == Api::OllamaGenerate).then_some([128_006, 882, 128_007]),
        end,
    }
}

fn end(s: &Scenario, x_padding: Option<String>) -> Final {
    Final {
        total_duration: 1_000_000_000,
        load_duration: 1_000_000,
        x_padding,
        prompt_eval_count: (!s.no_usage).then_some(s.prompt_tokens),
        prompt_eval_duration: 10_000_000,
        eval_count: (!s.no_usage).then_some(s.completion_tokens),
        eval_duration: 900_000_000,
    }
}

/// The whole answer (`"stream": false`), the counts last but for the durations.
pub fn json_body(s: &Scenario, text: &str, x_padding: Option<String>) -> Vec<u8> {
    to_json(&object(s, text, Some(end(s, x_padding))))
}

/// The stream's objects: one per delta, then the final one with the counts.
pub fn events(s: &Scenario, text: &str) -> Vec<Event> {
    let mut events: Vec<Event> = deltas(text)
        .into_iter()
        .map(|d| Event::data(to_json(&object(s, d, None))))
        .collect();
    let pad = if s.no_usage {
        None
    } else {
        s.pad_final.map(|n| "x".repeat(n))
    };
    let last = Event::data(to_json(&object(s, "", Some(end(s, pad)))));
    events.push(if s.no_usage { last } else { last.with_usage() });
    events
}

/// Ollama's error body.
pub fn error_body(message: &str) -> Vec<u8> {
    to_json(&OllamaError { error: message })
}
