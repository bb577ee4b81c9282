//! One event's data, read: the envelope every supported API's stream events share.
//!
//! The three APIs are told apart by the fields an event has, not by the request's path, so that
//! an OpenAI-compatible server behind any path still counts; one [`StreamEvent`] reads the union
//! of the fields that matter, in one pass:
//!
//! | field | OpenAI chat / completions | OpenAI Responses | Anthropic messages |
//! | --- | --- | --- | --- |
//! | `type` | — | `response.completed`, `.incomplete`, `.failed` end the stream; `*audio*` deltas are not text | `message_stop` ends the stream |
//! | `usage` | the last chunk's | — | `message_delta`'s (cumulative output) |
//! | `message.usage` | — | — | `message_start`'s (input and cache counts) |
//! | `response.usage` | — | the terminal events' | — |
//! | `choices` | generated text ([`super::chat`]) | — | — |
//! | `delta` | — | a text delta (a string) | a content block delta (an object), see [`super::delta`] |
//!
//! A chat stream's `data: [DONE]` is not JSON and is recognised before parsing.
//!
//! Gemini's chunks and Ollama's NDJSON objects are read by the same envelope, from fields the
//! other APIs do not use: `usageMetadata` (cumulative, see [`crate::llm::gemini`]) and
//! `candidates[]` (text; a `finishReason` ends the stream); Ollama's top-level
//! `prompt_eval_count` and `eval_count`, its text in `message.content` (chat) or `response`
//! (generate, a string where the Responses API has an object), and `"done": true` ending the
//! stream.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::Deserialize as DeriveDeserialize;

use super::chat::ChoicesText;
use super::delta::DeltaText;
use crate::llm::gemini::{Candidates, UsageMetadata};
use crate::llm::json::{lenient, Count, Flag, TextLen};
use crate::llm::ollama::{ollama_usage, ollama_usage_from_tail};
use crate::llm::usage::{raw_usage_from_tail, RawUsage, UsageValue};

/// What one event's data amounted to.
#[derive(Debug)]
// Returned and matched at once, never stored: boxing the summary would cost an allocation an
// event for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum EventOutcome {
    /// Nothing in it can carry usage, text or an end marker.
    Skipped,
    /// `[DONE]`.
    Done,
    /// Not JSON.
    Malformed,
    /// A JSON event, reduced to what matters.
    Read(EventSummary),
}

/// What a JSON event says that the scanner keeps.
#[derive(Debug, Default, PartialEq)]
pub(super) struct EventSummary {
    /// Its usage counts, merged where it has several `usage` objects.
    pub(super) usage: Option<RawUsage>,
    /// A `usage` object in it is malformed.
    pub(super) bad_usage: bool,
    /// UTF-8 bytes of generated text in it.
    pub(super) text_bytes: u64,
    /// It ends the stream.
    pub(super) terminal: bool,
}

/// Reads one complete event's data (its `data` lines joined with `\n`).
pub(super) fn read_event(data: &[u8]) -> EventOutcome {
    if data.trim_ascii() == b"[DONE]" {
        return EventOutcome::Done;
    }
    if !worth_parsing(data) {
        return EventOutcome::Skipped;
    }
    // The events a stream is mostly made of, read without serde (the same answer, or none).
    if let Some(summary) = super::quick::read(data) {
        return EventOutcome::Read(summary);
    }
    read_json_event(data)
}

/// Reads one event's data with serde: what [`read_event`] answers for an event worth parsing
/// that is not `[DONE]`.
pub(super) fn read_json_event(data: &[u8]) -> EventOutcome {
    let Ok(event) = serde_json::from_slice::<StreamEvent>(data) else {
        return EventOutcome::Malformed;
    };
    let message = event.message.unwrap_or_default();
    let other_text = event
        .candidates
        .text_bytes
        .saturating_add(message.content.0)
        .saturating_add(event.response.text);
    let mut summary = EventSummary {
        text_bytes: if event.kind == EventType::Audio {
            // Base64 audio is not text: counting it would charge thousands of tokens a second.
            event.choices.0
        } else {
            event.choices.0.saturating_add(event.delta.0)
        }
        .saturating_add(other_text),
        terminal: event.kind.is_terminal()
            || event.candidates.finished
            || event.done == Some(Flag::Bool(true)),
        ..EventSummary::default()
    };
    let holders = [
        event.usage,
        message.usage,
        event.response.usage,
        event.usage_metadata.0,
        ollama_usage(event.prompt_eval_count, event.eval_count),
    ];
    for value in holders {
        match value {
            UsageValue::Absent => {}
            UsageValue::Present(raw) => match &mut summary.usage {
                Some(merged) => merged.merge(&raw),
                None => summary.usage = Some(raw),
            },
            UsageValue::Bad { .. } => summary.bad_usage = true,
        }
    }
    EventOutcome::Read(summary)
}

/// An event too large to keep, from its first and last bytes: its usage (the last `"usage"`
/// key in its tail) and whether it ends the stream (its type, near its start). Its text is not
/// counted: the bytes in between are gone.
pub(super) fn read_oversize_event(head: &[u8], tail: &[u8]) -> EventOutcome {
    const TERMINAL: [&[u8]; 4] = [
        b"\"response.completed\"",
        b"\"response.incomplete\"",
        b"\"response.failed\"",
        b"\"message_stop\"",
    ];
    let has = |hay: &[u8], t: &[u8]| hay.windows(t.len()).any(|w| w == t);
    // Gemini's `finishReason` closes its candidate, Ollama's `"done":true` its final object:
    // both sit near an event's end.
    let terminal = TERMINAL.iter().any(|t| has(head, t))
        || has(tail, b"\"finishReason\"")
        || has(tail, b"\"done\":true");
    let mut summary = EventSummary {
        terminal,
        ..EventSummary::default()
    };
    match raw_usage_from_tail(tail) {
        None | Some(Ok(UsageValue::Absent)) => match ollama_usage_from_tail(tail) {
            UsageValue::Present(raw) => summary.usage = Some(raw),
            UsageValue::Bad { .. } => summary.bad_usage = true,
            UsageValue::Absent => {}
        },
        Some(Ok(UsageValue::Present(raw))) => summary.usage = Some(raw),
        Some(Ok(UsageValue::Bad { .. })) => summary.bad_usage = true,
        // Cut inside its usage (a stream that ended there): not JSON, so nothing it says counts.
        Some(Err(())) => return EventOutcome::Malformed,
    }
    EventOutcome::Read(summary)
}

/// A cheap look for the quoted words that an event we care about must contain: `"usage"`,
/// `"delta"` (Anthropic and Responses deltas), `"choices"` (chat and legacy completion chunks)
/// or `"message_stop"`. Skips the
/// JSON parse of pings, block starts and stops, and the Responses API's many bookkeeping
/// events. A key spelled with escapes would be missed; only a hostile upstream does that, and
/// it loses nothing but the estimate.
pub(super) fn worth_parsing(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(quote) = rest.iter().position(|&b| b == b'"') {
        rest = rest.get(quote.saturating_add(1)..).unwrap_or(&[]);
        if rest.starts_with(b"usage\"")
            || rest.starts_with(b"delta\"")
            || rest.starts_with(b"choices\"")
            || rest.starts_with(b"message_stop\"")
            || rest.starts_with(b"usageMetadata\"")
            || rest.starts_with(b"candidates\"")
            || rest.starts_with(b"done\"")
        {
            return true;
        }
    }
    false
}

/// One JSON stream event of any of the supported APIs, reduced to what we need. Unknown keys
/// are skipped; a duplicated known key makes the event malformed.
#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct StreamEvent {
    /// Anthropic and Responses events name their type here.
    #[serde(rename = "type")]
    kind: EventType,
    /// Chat's final chunk and Anthropic's `message_delta`.
    usage: UsageValue,
    /// Chat and legacy completion chunks.
    choices: ChoicesText,
    /// Anthropic's `message_start`; Ollama chat's generated `message`.
    message: Option<UsageHolder>,
    /// Responses' terminal events (an object); Ollama generate's text (a string).
    response: ResponseField,
    /// Anthropic's `content_block_delta` (an object) and Responses' `*.delta` (a string).
    delta: DeltaText,
    /// Gemini's cumulative counts.
    #[serde(rename = "usageMetadata")]
    usage_metadata: UsageMetadata,
    /// Gemini's generated candidates.
    candidates: Candidates,
    /// Ollama's counts, in its final object.
    prompt_eval_count: Option<Count>,
    eval_count: Option<Count>,
    /// Ollama's end of stream.
    done: Option<Flag>,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct UsageHolder {
    usage: UsageValue,
    /// Ollama chat's generated text (Anthropic's `message.content` is an array: no text).
    content: TextLen,
}

/// `response`: an object holding `usage` (the Responses API) or a string of generated text
/// (Ollama's `/api/generate`).
#[derive(Default)]
struct ResponseField {
    usage: UsageValue,
    text: u64,
}

impl<'de> Deserialize<'de> for ResponseField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResponseField;
            lenient!(expecting "a response object or text");
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ResponseField, E> {
                Ok(ResponseField {
                    text: u64::try_from(v.len()).unwrap_or(u64::MAX),
                    ..ResponseField::default()
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ResponseField, A::Error> {
                let holder = UsageHolder::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ResponseField {
                    usage: holder.usage,
                    text: 0,
                })
            }
            lenient!(ResponseField::default() => null bool numbers seq);
        }
        d.deserialize_any(V)
    }
}

/// The event types that change what we track.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum EventType {
    #[default]
    Other,
    /// Anthropic's end of stream.
    MessageStop,
    /// The Responses API's terminal events.
    ResponseDone,
    /// A Responses audio event, whose `delta` is base64 audio rather than text.
    Audio,
}

impl EventType {
    pub(super) fn is_terminal(self) -> bool {
        matches!(self, EventType::MessageStop | EventType::ResponseDone)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventType;
            lenient!(expecting "an event type");
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EventType, E> {
                Ok(match v {
                    "message_stop" => EventType::MessageStop,
                    "response.completed" | "response.incomplete" | "response.failed" => {
                        EventType::ResponseDone
                    }
                    audio if audio.contains("audio") => EventType::Audio,
                    _ => EventType::Other,
                })
            }
            lenient!(EventType::Other => null bool numbers map seq);
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn worth_parsing_looks_for_quoted_keywords_only() {
        assert!(worth_parsing(br#"{"usage":null}"#));
        assert!(worth_parsing(br#"{"type":"message_stop"}"#));
        assert!(worth_parsing(br#"{"delta":{}}"#));
        assert!(worth_parsing(br#"{"choices":[{"text":"a"}]}"#));
        assert!(!worth_parsing(br#"{"type":"ping"}"#));
        assert!(!worth_parsing(br#"{"text":"the usage and delta words"}"#));
        assert!(!worth_parsing(br#"{"text":"\"usage\\""}"#));
        assert!(!worth_parsing(b"\""));
    }
}
