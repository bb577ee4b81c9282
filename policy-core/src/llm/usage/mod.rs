//! Token usage as the upstream reports it, read from a complete JSON response body.
//!
//! Three shapes are understood, told apart by their fields rather than by the request path so
//! that an OpenAI-compatible server behind any path still counts:
//!
//! | API | input | output | cached input | reasoning | cache writes |
//! | --- | --- | --- | --- | --- | --- |
//! | OpenAI chat / completions / embeddings | `prompt_tokens` | `completion_tokens` | `prompt_tokens_details.cached_tokens` | `completion_tokens_details.reasoning_tokens` | — |
//! | OpenAI Responses | `input_tokens` | `output_tokens` | `input_tokens_details.cached_tokens` | `output_tokens_details.reasoning_tokens` | — |
//! | Anthropic messages | `input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens` | `output_tokens` | `cache_read_input_tokens` | — | `cache_creation_input_tokens` |
//! | Bedrock Converse | `inputTokens` + `cacheReadInputTokens` + `cacheWriteInputTokens` | `outputTokens` | `cacheReadInputTokens` | — | `cacheWriteInputTokens` |
//!
//! Anthropic's `input_tokens` counts only the tokens that were neither read from nor written to
//! the cache, while OpenAI's input counts include cached ones; [`Usage`] uses OpenAI's meaning
//! throughout so that one [`Cost`](super::cost::Cost) works for every API.
//!
//! This module maps what the APIs report onto [`Usage`]; `object` reads a `usage` object (and
//! a response body down to it) without allocating.

use core::fmt;

use serde::de::Deserialize;

use super::json::FieldError;
use object::Envelope;
pub(crate) use object::UsageValue;

mod object;

/// Tokens one request consumed, normalised across APIs.
///
/// The parsers in this module keep two invariants, raising the total when an upstream reports
/// a part larger than its whole (the stricter reading): `cached_input + cache_creation <= input`
/// and `reasoning <= output`. Code that builds a `Usage` by hand need not keep them:
/// [`Cost::tokens`](super::cost::Cost::tokens) saturates either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Every prompt token the model read, including the ones served from or written to a
    /// prompt cache. For Anthropic this is the sum of its three input counts.
    pub input: u64,
    /// Every token the model generated, including reasoning ("thinking") tokens, which both
    /// OpenAI and Anthropic bill as output.
    pub output: u64,
    /// The part of `input` served from a prompt cache (usually billed at a discount).
    pub cached_input: u64,
    /// The part of `output` spent on hidden reasoning, where the API reports it (OpenAI only;
    /// Anthropic folds thinking into `output_tokens` without a breakdown).
    pub reasoning: u64,
    /// The part of `input` written into a prompt cache (Anthropic's
    /// `cache_creation_input_tokens`, usually billed at a premium; 0 for OpenAI).
    pub cache_creation: u64,
}

impl Usage {
    /// `input + output`, saturating.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// Why no [`Usage`] could be read from a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// The body is not well-formed JSON (or is nested deeper than 128 levels, or has trailing
    /// bytes). Compressed bodies land here too: the filter must see identity-encoded bodies.
    NotJson,
    /// Well-formed JSON without a `usage` object holding any count: an error response, a JSON
    /// document that is not an object, `"usage": null`, or `"usage": {}`.
    NoUsage,
    /// A `usage` field holds something that is not a token count.
    BadUsage {
        /// The field's path from the body's root, e.g. `usage.prompt_tokens`.
        field: &'static str,
        /// What is wrong with it.
        reason: FieldError,
    },
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::NotJson => f.write_str("response body is not well-formed JSON"),
            UsageError::NoUsage => f.write_str("response body reports no token usage"),
            UsageError::BadUsage { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl core::error::Error for UsageError {}

/// Reads the token usage from a complete, identity-encoded JSON response body of any of the
/// supported APIs (see the module docs).
///
/// Only the top-level `usage` object is looked at; everything else is skipped without
/// allocating, so the cost is one linear pass over the body whatever it holds.
///
/// # Errors
/// [`UsageError::NotJson`] for a body that is not JSON, [`UsageError::NoUsage`] when there is
/// nothing to read, [`UsageError::BadUsage`] naming the first field that is not a whole number
/// in `0..=u64::MAX`, or a field that appears twice.
pub fn usage_from_json(body: &[u8]) -> Result<Usage, UsageError> {
    match serde_json::from_slice::<Envelope>(body) {
        Err(_) => Err(UsageError::NotJson),
        Ok(Envelope(UsageValue::Present(raw))) => Ok(raw.normalize()),
        Ok(Envelope(UsageValue::Absent)) => Err(UsageError::NoUsage),
        Ok(Envelope(UsageValue::Bad { field, reason })) => {
            Err(UsageError::BadUsage { field, reason })
        }
    }
}

/// Usage from the *end* of a JSON body too large to keep whole.
///
/// OpenAI, Anthropic and Gemini all write their usage after the generated content, so the last
/// bytes of a response hold it. The last `"usage"` (or Gemini's `"usageMetadata"`) key in `tail`
/// is read: inside a JSON string a quote is
/// escaped, so the raw bytes `"usage"` followed by `:` can only be a key. A nested `usage` key
/// after the top-level one would be read instead, which no API in use produces.
///
/// # Errors
/// [`UsageError::NoUsage`] when no `"usage":` is in the tail, otherwise as
/// [`usage_from_json`] for the object found.
pub fn usage_from_tail(tail: &[u8]) -> Result<Usage, UsageError> {
    match raw_usage_from_tail(tail) {
        None => Err(UsageError::NoUsage),
        Some(Err(())) => Err(UsageError::NotJson),
        Some(Ok(UsageValue::Present(raw))) => Ok(raw.normalize()),
        Some(Ok(UsageValue::Absent)) => Err(UsageError::NoUsage),
        Some(Ok(UsageValue::Bad { field, reason })) => Err(UsageError::BadUsage { field, reason }),
    }
}

/// The value of the last `"usage":` key in `tail` (see [`usage_from_tail`]): `None` when there
/// is no such key, `Some(Err(()))` when what follows it is not a JSON value. Streams merge the
/// raw counts, so the scanner reads an oversized event's tail with this.
pub(crate) fn raw_usage_from_tail(tail: &[u8]) -> Option<Result<UsageValue, ()>> {
    // Gemini's `usageMetadata` is read the same way, whichever of the two comes last.
    let usage = last_key_value(tail, b"\"usage\"");
    let metadata = last_key_value(tail, b"\"usageMetadata\"");
    let (value, gemini) = match (usage, metadata) {
        (Some(u), Some(m)) if m.0 > u.0 => (m.1, true),
        (Some(u), _) => (u.1, false),
        (None, Some(m)) => (m.1, true),
        (None, None) => return None,
    };
    let mut de = serde_json::Deserializer::from_slice(value);
    Some(if gemini {
        crate::llm::gemini::UsageMetadata::deserialize(&mut de)
            .map(|m| m.0)
            .map_err(|_| ())
    } else {
        UsageValue::deserialize(&mut de).map_err(|_| ())
    })
}

/// Where the last `key` followed by `:` starts in `tail`, and the bytes after the `:`.
pub(crate) fn last_key_value<'a>(tail: &'a [u8], key: &[u8]) -> Option<(usize, &'a [u8])> {
    let mut end = tail.len();
    while let Some(at) = tail
        .get(..end)
        .and_then(|hay| hay.windows(key.len()).rposition(|w| w == key))
    {
        let rest = trim_start(tail.get(at + key.len()..).unwrap_or(&[]));
        if let Some(value) = rest.strip_prefix(b":") {
            return Some((at, value));
        }
        end = at;
    }
    None
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    b.get(n..).unwrap_or(&[])
}

/// The raw counts of one `usage` object, as named by the APIs; `None` where absent or `null`.
///
/// Streams report usage piecemeal (Anthropic's input in `message_start`, output in
/// `message_delta`), so the scanner [`merge`](RawUsage::merge)s raw objects and normalises
/// only when asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RawUsage {
    pub(crate) prompt_tokens: Option<u64>,
    pub(crate) completion_tokens: Option<u64>,
    pub(crate) total_tokens: Option<u64>,
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cache_read_input_tokens: Option<u64>,
    pub(crate) cache_creation_input_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens` (chat) or `input_tokens_details.cached_tokens`
    /// (Responses).
    pub(crate) cached_tokens: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens` or `output_tokens_details.reasoning_tokens`.
    pub(crate) reasoning_tokens: Option<u64>,
    /// An `input_tokens_details` object was present: `input_tokens` has OpenAI's meaning
    /// (cached tokens included) rather than Anthropic's.
    pub(crate) openai_details: bool,
    /// Gemini's `candidatesTokenCount`: output *without* the thinking tokens, which Gemini
    /// counts apart (`thoughtsTokenCount`, read into `thoughts_tokens`).
    pub(crate) candidates_tokens: Option<u64>,
    /// Gemini's `thoughtsTokenCount`: billed as output, not included in `candidates_tokens`.
    pub(crate) thoughts_tokens: Option<u64>,
    /// Gemini's `toolUsePromptTokenCount`: input read from tool results, not included in
    /// `promptTokenCount`.
    pub(crate) tool_use_prompt_tokens: Option<u64>,
}

impl RawUsage {
    /// True when no count at all was reported.
    pub(crate) fn is_empty(&self) -> bool {
        self.prompt_tokens.is_none()
            && self.completion_tokens.is_none()
            && self.total_tokens.is_none()
            && self.input_tokens.is_none()
            && self.output_tokens.is_none()
            && self.cache_read_input_tokens.is_none()
            && self.cache_creation_input_tokens.is_none()
            && self.cached_tokens.is_none()
            && self.reasoning_tokens.is_none()
            && self.candidates_tokens.is_none()
            && self.thoughts_tokens.is_none()
            && self.tool_use_prompt_tokens.is_none()
    }

    /// True when an output count was reported (so the caller need not estimate it).
    pub(crate) fn has_output(&self) -> bool {
        self.completion_tokens.is_some()
            || self.output_tokens.is_some()
            || self.candidates_tokens.is_some()
    }

    /// True when an input count was reported (so the caller need not estimate it).
    pub(crate) fn has_input(&self) -> bool {
        self.prompt_tokens.is_some() || self.input_tokens.is_some() || self.total_tokens.is_some()
    }

    /// Takes in the counts `newer` reports. Streams report cumulative counts, which never go
    /// down, so the larger of the two values is kept: the same as taking the latest from a
    /// well-behaved server, and never cheaper when a server repeats a field as 0 later on.
    pub(crate) fn merge(&mut self, newer: &RawUsage) {
        fn take(slot: &mut Option<u64>, newer: Option<u64>) {
            if newer.is_some() {
                *slot = (*slot).max(newer);
            }
        }
        take(&mut self.prompt_tokens, newer.prompt_tokens);
        take(&mut self.completion_tokens, newer.completion_tokens);
        take(&mut self.total_tokens, newer.total_tokens);
        take(&mut self.input_tokens, newer.input_tokens);
        take(&mut self.output_tokens, newer.output_tokens);
        take(
            &mut self.cache_read_input_tokens,
            newer.cache_read_input_tokens,
        );
        take(
            &mut self.cache_creation_input_tokens,
            newer.cache_creation_input_tokens,
        );
        take(&mut self.cached_tokens, newer.cached_tokens);
        take(&mut self.reasoning_tokens, newer.reasoning_tokens);
        take(&mut self.candidates_tokens, newer.candidates_tokens);
        take(&mut self.thoughts_tokens, newer.thoughts_tokens);
        take(
            &mut self.tool_use_prompt_tokens,
            newer.tool_use_prompt_tokens,
        );
        self.openai_details |= newer.openai_details;
    }

    /// Turns the API's fields into [`Usage`]'s meaning (see the module docs).
    pub(crate) fn normalize(&self) -> Usage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_creation = self.cache_creation_input_tokens.unwrap_or(0);
        let (mut input, cached_input) = match (self.prompt_tokens, self.input_tokens) {
            // OpenAI chat shape. Some OpenAI-compatible proxies add Anthropic's cache fields
            // to it; `prompt_tokens` already includes those tokens, so they are not added.
            (Some(prompt), _) => (prompt, self.cached_tokens.unwrap_or(cache_read)),
            // Responses shape: input includes cached tokens.
            (None, Some(input)) if self.openai_details => (input, self.cached_tokens.unwrap_or(0)),
            // Anthropic shape (or a bare `input_tokens`): the three counts are disjoint.
            (None, input) => (
                input
                    .unwrap_or(0)
                    .saturating_add(cache_read)
                    .saturating_add(cache_creation),
                cache_read.saturating_add(self.cached_tokens.unwrap_or(0)),
            ),
        };
        // Gemini counts thinking apart from the candidates; both are output.
        let thoughts = self.thoughts_tokens.unwrap_or(0);
        let gemini_output = self.candidates_tokens.map(|c| c.saturating_add(thoughts));
        let mut output = self
            .completion_tokens
            .or(self.output_tokens)
            .or(gemini_output)
            .unwrap_or(0);
        input = input.saturating_add(self.tool_use_prompt_tokens.unwrap_or(0));
        // A server that reports only a total (embeddings-like) is charged it as input.
        if self.prompt_tokens.is_none() && self.input_tokens.is_none() && !self.has_output() {
            input = input.max(self.total_tokens.unwrap_or(0));
        }
        input = input.max(cached_input.saturating_add(cache_creation));
        let reasoning = self.reasoning_tokens.or(self.thoughts_tokens).unwrap_or(0);
        output = output.max(reasoning);
        Usage {
            input,
            output,
            cached_input,
            reasoning,
            cache_creation,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn usage_is_read_from_the_tail_of_a_large_body() {
        let body = br#"{"choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 9}"}}],"usage":{"prompt_tokens":100,"completion_tokens":200,"total_tokens":300}}"#;
        for cut in [0, 20, 60] {
            let u = super::usage_from_tail(&body[cut..]).unwrap();
            assert_eq!((u.input, u.output), (100, 200), "cut at {cut}");
        }
        assert_eq!(
            super::usage_from_tail(b"no usage here"),
            Err(UsageError::NoUsage)
        );
        assert_eq!(
            super::usage_from_tail(br#""usage": {"prompt_"#),
            Err(UsageError::NotJson)
        );
        let anthropic = br#"...text"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":34}}"#;
        let u = super::usage_from_tail(anthropic).unwrap();
        assert_eq!((u.input, u.output), (12, 34));
        let gemini = br#"...rain"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":23,"thoughtsTokenCount":24},"modelVersion":"gemini-2.5-flash"}"#;
        let u = super::usage_from_tail(gemini).unwrap();
        assert_eq!((u.input, u.output, u.reasoning), (9, 47, 24));
        // The key that comes last is the one read.
        let both =
            br#"{"text":"x","usage":{"prompt_tokens":1},"usageMetadata":{"promptTokenCount":5}}"#;
        assert_eq!(super::usage_from_tail(both).unwrap().input, 5);
    }

    use alloc::{format, string::String, vec::Vec};

    use super::*;

    fn usage(body: &str) -> Result<Usage, UsageError> {
        usage_from_json(body.as_bytes())
    }

    const OPENAI_CHAT: &str = include_str!("../../../../fixtures/llm/openai-chat.json");

    #[test]
    fn openai_chat_completion() {
        assert_eq!(
            usage(OPENAI_CHAT),
            Ok(Usage {
                input: 1117,
                output: 46,
                cached_input: 1024,
                reasoning: 0,
                cache_creation: 0
            })
        );
    }

    #[test]
    fn openai_reasoning_model_counts_reasoning_inside_output() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"o3-mini","choices":[],
            "usage":{"prompt_tokens":13,"completion_tokens":1843,"total_tokens":1856,
            "prompt_tokens_details":{"cached_tokens":0},
            "completion_tokens_details":{"reasoning_tokens":1792}}}"#;
        let u = usage(body).unwrap();
        assert_eq!((u.input, u.output, u.reasoning), (13, 1843, 1792));
        assert_eq!(u.total(), 1856);
    }

    #[test]
    fn openai_legacy_completion() {
        let body = include_str!("../../../../fixtures/llm/openai-completions.json");
        assert_eq!(
            usage(body),
            Ok(Usage {
                input: 5,
                output: 7,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn openai_embeddings() {
        let body = include_str!("../../../../fixtures/llm/openai-embeddings.json");
        assert_eq!(
            usage(body),
            Ok(Usage {
                input: 8,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn openai_responses() {
        let body = include_str!("../../../../fixtures/llm/openai-responses.json");
        assert_eq!(
            usage(body),
            Ok(Usage {
                input: 328,
                output: 52,
                cached_input: 128,
                reasoning: 10,
                cache_creation: 0
            })
        );
    }

    #[test]
    fn anthropic_messages_adds_cache_reads_and_writes_to_input() {
        let body = include_str!("../../../../fixtures/llm/anthropic-messages.json");
        assert_eq!(
            usage(body),
            Ok(Usage {
                input: 188_107,
                output: 393,
                cached_input: 0,
                reasoning: 0,
                cache_creation: 188_086
            })
        );
        let cached = r#"{"type":"message","usage":{"input_tokens":3,"cache_creation_input_tokens":0,
            "cache_read_input_tokens":2048,"output_tokens":10}}"#;
        assert_eq!(
            usage(cached),
            Ok(Usage {
                input: 2051,
                output: 10,
                cached_input: 2048,
                reasoning: 0,
                cache_creation: 0
            })
        );
    }

    #[test]
    fn openai_shape_with_proxy_added_cache_fields_is_not_double_counted() {
        let body = r#"{"usage":{"prompt_tokens":100,"completion_tokens":5,
            "cache_read_input_tokens":60,"cache_creation_input_tokens":0}}"#;
        assert_eq!(
            usage(body),
            Ok(Usage {
                input: 100,
                output: 5,
                cached_input: 60,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn parts_larger_than_their_whole_raise_the_whole() {
        let body = r#"{"usage":{"prompt_tokens":10,"completion_tokens":1,
            "prompt_tokens_details":{"cached_tokens":50},"completion_tokens_details":{"reasoning_tokens":7}}}"#;
        assert_eq!(
            usage(body),
            Ok(Usage {
                input: 50,
                output: 7,
                cached_input: 50,
                reasoning: 7,
                cache_creation: 0
            })
        );
    }

    #[test]
    fn a_total_alone_is_charged_as_input() {
        assert_eq!(
            usage(r#"{"usage":{"total_tokens":9}}"#),
            Ok(Usage {
                input: 9,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn null_details_and_null_counts_are_absent() {
        let body = r#"{"usage":{"prompt_tokens":4,"completion_tokens":null,
            "prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":null}}}"#;
        assert_eq!(
            usage(body),
            Ok(Usage {
                input: 4,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn no_usage() {
        assert_eq!(
            usage(r#"{"id":"x","choices":[]}"#),
            Err(UsageError::NoUsage)
        );
        assert_eq!(usage(r#"{"usage":null}"#), Err(UsageError::NoUsage));
        assert_eq!(usage(r#"{"usage":{}}"#), Err(UsageError::NoUsage));
        assert_eq!(
            usage(r#"{"usage":{"service_tier":"default"}}"#),
            Err(UsageError::NoUsage)
        );
        assert_eq!(
            usage(r#"[{"usage":{"prompt_tokens":1}}]"#),
            Err(UsageError::NoUsage)
        );
        assert_eq!(usage("42"), Err(UsageError::NoUsage));
        let err = include_str!("../../../../fixtures/llm/openai-error.json");
        assert_eq!(usage(err), Err(UsageError::NoUsage));
        let anthropic_err = include_str!("../../../../fixtures/llm/anthropic-error.json");
        assert_eq!(usage(anthropic_err), Err(UsageError::NoUsage));
    }

    #[test]
    fn usage_nested_elsewhere_is_not_taken() {
        assert_eq!(
            usage(r#"{"data":{"usage":{"prompt_tokens":1}}}"#),
            Err(UsageError::NoUsage)
        );
    }

    #[test]
    fn not_json() {
        for body in [
            "",
            "{",
            "{\"usage\":{\"prompt_tokens\":1}",
            "nope",
            "{\"usage\":1}}",
            "\u{1f}\u{8b}",
        ] {
            assert_eq!(usage(body), Err(UsageError::NotJson), "{body:?}");
        }
        assert_eq!(
            usage_from_json(&[0x1f, 0x8b, 0x08, 0x00]),
            Err(UsageError::NotJson)
        );
        assert_eq!(
            usage_from_json(b"{\"usage\":{\"prompt_tokens\":1}} trailing"),
            Err(UsageError::NotJson)
        );
    }

    #[test]
    fn bad_counts_are_errors_naming_the_field() {
        let bad = |json: &str| usage(&format!(r#"{{"usage":{json}}}"#));
        let e = |field, reason| Err(UsageError::BadUsage { field, reason });
        assert_eq!(
            bad(r#"{"prompt_tokens":-1}"#),
            e("usage.prompt_tokens", FieldError::Negative)
        );
        assert_eq!(
            bad(r#"{"completion_tokens":1.5}"#),
            e("usage.completion_tokens", FieldError::NotAnInteger)
        );
        assert_eq!(
            bad(r#"{"output_tokens":18446744073709551616}"#),
            e("usage.output_tokens", FieldError::TooLarge)
        );
        assert_eq!(
            bad(r#"{"input_tokens":"12"}"#),
            e("usage.input_tokens", FieldError::WrongType)
        );
        assert_eq!(
            bad(r#"{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":-5}}"#),
            e(
                "usage.prompt_tokens_details.cached_tokens",
                FieldError::Negative
            )
        );
        assert_eq!(
            bad(r#"{"output_tokens":1,"output_tokens_details":[1]}"#),
            e("usage.output_tokens_details", FieldError::WrongType)
        );
        assert_eq!(
            bad(r#"{"prompt_tokens":1,"prompt_tokens":2}"#),
            e("usage.prompt_tokens", FieldError::Duplicate)
        );
        assert_eq!(
            bad(
                r#"{"input_tokens":1,"input_tokens_details":{"cached_tokens":1,"cached_tokens":1}}"#
            ),
            e(
                "usage.input_tokens_details.cached_tokens",
                FieldError::Duplicate
            )
        );
        assert_eq!(bad("[1,2]"), e("usage", FieldError::WrongType));
        assert_eq!(bad("\"lots\""), e("usage", FieldError::WrongType));
        // The first problem is reported, and the body is still read to its end.
        assert_eq!(
            bad(r#"{"prompt_tokens":-1,"completion_tokens":1.5,"x":[{"y":[]}]}"#),
            e("usage.prompt_tokens", FieldError::Negative)
        );
        assert_eq!(
            usage(r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":1}}"#),
            e("usage", FieldError::Duplicate)
        );
    }

    #[test]
    fn u64_extremes() {
        let max = u64::MAX;
        let body = format!(
            r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":{max},"total_tokens":{max},
            "prompt_tokens_details":{{"cached_tokens":{max}}},"completion_tokens_details":{{"reasoning_tokens":{max}}}}}}}"#
        );
        let u = usage(&body).unwrap();
        assert_eq!(
            u,
            Usage {
                input: max,
                output: max,
                cached_input: max,
                reasoning: max,
                cache_creation: 0
            }
        );
        assert_eq!(u.total(), max);
        let anthropic = format!(
            r#"{{"usage":{{"input_tokens":{max},"cache_read_input_tokens":{max},"cache_creation_input_tokens":{max},"output_tokens":0}}}}"#
        );
        assert_eq!(usage(&anthropic).unwrap().input, max);
    }

    #[test]
    fn escaped_keys_are_understood() {
        assert_eq!(
            usage(r#"{"us\u0061ge":{"prompt_t\u006fkens":3}}"#),
            Ok(Usage {
                input: 3,
                ..Usage::default()
            })
        );
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        // serde_json skips ignored values iteratively; our own visitors nest a fixed few levels.
        let deep = format!(
            r#"{{"x":{}{},"usage":{{"prompt_tokens":1}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            usage(&deep),
            Ok(Usage {
                input: 1,
                ..Usage::default()
            })
        );
        let deep_usage = format!(
            r#"{{"usage":{{"prompt_tokens":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            usage(&deep_usage),
            Err(UsageError::BadUsage {
                field: "usage.prompt_tokens",
                reason: FieldError::WrongType
            })
        );
        let unclosed = format!(
            r#"{{"usage":{{"prompt_tokens":1}},"x":{}"#,
            "{\"a\":".repeat(100_000)
        );
        assert_eq!(usage(&unclosed), Err(UsageError::NotJson));
    }

    #[test]
    fn large_bodies_are_skipped_linearly() {
        // 4 MB of content before the usage object.
        let mut body = String::from(r#"{"choices":[{"message":{"content":""#);
        body.extend(core::iter::repeat_n("lorem ipsum \\\"quoted\\\" ", 200_000));
        body.push_str(r#""}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
        assert_eq!(
            usage(&body),
            Ok(Usage {
                input: 1,
                output: 2,
                ..Usage::default()
            })
        );
        let garbage: Vec<u8> = (0..10_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(usage_from_json(&garbage), Err(UsageError::NotJson));
    }

    #[test]
    fn errors_display_the_field_and_reason() {
        let e = UsageError::BadUsage {
            field: "usage.prompt_tokens",
            reason: FieldError::Negative,
        };
        assert_eq!(format!("{e}"), "usage.prompt_tokens: must not be negative");
    }

    #[test]
    fn merge_keeps_earlier_counts_the_newer_object_lacks() {
        let mut a = RawUsage {
            input_tokens: Some(10),
            output_tokens: Some(1),
            ..RawUsage::default()
        };
        a.merge(&RawUsage {
            output_tokens: Some(15),
            ..RawUsage::default()
        });
        assert_eq!(
            a.normalize(),
            Usage {
                input: 10,
                output: 15,
                ..Usage::default()
            }
        );
        a.merge(&RawUsage {
            input_tokens: Some(0),
            output_tokens: Some(12),
            ..RawUsage::default()
        });
        assert_eq!(
            a.normalize(),
            Usage {
                input: 10,
                output: 15,
                ..Usage::default()
            },
            "counts never go down"
        );
    }
}
