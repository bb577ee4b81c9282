//! Ollama's native API (`/api/chat`, `/api/generate`): its counts are top-level fields of the
//! response object, not a `usage` object. `prompt_eval_count` is the prompt's tokens and
//! `eval_count` the generated ones; a stream (NDJSON, one object a line) reports them only in
//! its final object, the one with `"done": true`. Ollama reports no cache or reasoning counts.

use serde::Deserialize;

use super::json::{Count, FieldError};
use super::usage::{last_key_value, RawUsage, UsageValue};

/// The usage an Ollama object's `prompt_eval_count` and `eval_count` (each `None` when
/// absent) amount to.
pub(crate) fn ollama_usage(
    prompt_eval_count: Option<Count>,
    eval_count: Option<Count>,
) -> UsageValue {
    let mut raw = RawUsage::default();
    let prompt = prompt_eval_count.map_or(Ok(()), |c| c.store(&mut raw.prompt_tokens));
    let eval = eval_count.map_or(Ok(()), |c| c.store(&mut raw.completion_tokens));
    let bad: Option<(&'static str, FieldError)> = match (prompt, eval) {
        (Err(reason), _) => Some(("prompt_eval_count", reason)),
        (_, Err(reason)) => Some(("eval_count", reason)),
        _ => None,
    };
    match bad {
        Some((field, reason)) => UsageValue::Bad { field, reason },
        None if raw.is_empty() => UsageValue::Absent,
        None => UsageValue::Present(raw),
    }
}

/// The counts at the end of an Ollama object too large to keep whole (`tail`: its last bytes),
/// each read after the last `"prompt_eval_count":` / `"eval_count":` key in it.
pub(crate) fn ollama_usage_from_tail(tail: &[u8]) -> UsageValue {
    let count = |key: &[u8]| {
        last_key_value(tail, key).and_then(|(_, value)| {
            let mut de = serde_json::Deserializer::from_slice(value);
            Count::deserialize(&mut de).ok()
        })
    };
    ollama_usage(count(b"\"prompt_eval_count\""), count(b"\"eval_count\""))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::vec::Vec;

    use crate::llm::{
        usage_from_json, FieldError, Framing, SseLimits, SseScanner, Usage, UsageError,
    };

    /// `/api/chat` with `"stream": false`.
    const CHAT: &str = include_str!("../../../fixtures/llm/ollama-chat.json");
    /// `/api/chat`, streamed (the default): NDJSON, counts in the `"done": true` object.
    const CHAT_STREAM: &str = include_str!("../../../fixtures/llm/ollama-chat.ndjson");
    /// `/api/generate`, streamed.
    const GENERATE_STREAM: &str = include_str!("../../../fixtures/llm/ollama-generate.ndjson");

    fn scan(chunks: &[&[u8]]) -> SseScanner {
        let mut s = SseScanner::with_framing(SseLimits::default(), Framing::Ndjson);
        for chunk in chunks {
            s.feed(chunk);
        }
        s.finish();
        s
    }

    fn seen(s: &SseScanner) -> (Option<Usage>, bool, u64, u64, u32) {
        (
            s.usage(),
            s.completed(),
            s.estimated_output_tokens(),
            s.events(),
            s.malformed_events(),
        )
    }

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input,
            output,
            ..Usage::default()
        }
    }

    #[test]
    fn a_whole_answer_reports_its_counts() {
        assert_eq!(usage_from_json(CHAT.as_bytes()), Ok(usage(26, 298)));
        assert_eq!(
            usage_from_json(br#"{"error":"model 'x' not found"}"#),
            Err(UsageError::NoUsage)
        );
        assert_eq!(
            usage_from_json(br#"{"eval_count":"12"}"#),
            Err(UsageError::BadUsage {
                field: "eval_count",
                reason: FieldError::WrongType
            })
        );
        assert_eq!(
            usage_from_json(br#"{"prompt_eval_count":1,"prompt_eval_count":2}"#),
            Err(UsageError::BadUsage {
                field: "prompt_eval_count",
                reason: FieldError::Duplicate
            })
        );
    }

    #[test]
    fn ndjson_streams_at_every_split() {
        // chat: 57 bytes of text -> 15 tokens; generate: 31 bytes -> 8; four objects each.
        for (stream, expected) in [
            (CHAT_STREAM, (Some(usage(26, 12)), true, 15, 4, 0)),
            (GENERATE_STREAM, (Some(usage(30, 5)), true, 8, 4, 0)),
        ] {
            let stream = stream.as_bytes();
            let whole = seen(&scan(&[stream]));
            assert_eq!(whole, expected);
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                assert_eq!(seen(&scan(&[a, b])), whole, "cut at {cut}");
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(seen(&scan(&bytes)), whole, "byte by byte");
            let crlf: Vec<u8> = stream
                .iter()
                .flat_map(|&b| {
                    if b == b'\n' {
                        b"\r\n".to_vec()
                    } else {
                        alloc::vec![b]
                    }
                })
                .collect();
            assert_eq!(seen(&scan(&[&crlf])), whole, "CRLF");
        }
    }

    #[test]
    fn an_object_larger_than_the_limit_is_read_from_its_head_and_tail() {
        let text = "x".repeat(5000);
        let stream = alloc::format!(
            "{{\"model\":\"m\",\"message\":{{\"content\":\"{text}\"}},\"done\":false}}\n\
             {{\"model\":\"m\",\"message\":{{\"content\":\"{text}\"}},\"done\":true,\"prompt_eval_count\":3,\"eval_count\":2500}}\n"
        );
        let mut s = SseScanner::with_framing(SseLimits::new(1024), Framing::Ndjson);
        for piece in stream.as_bytes().chunks(300) {
            s.feed(piece);
        }
        s.finish();
        assert_eq!((s.oversize_events(), s.completed()), (2, true));
        assert_eq!(s.usage(), Some(usage(3, 2500)));
    }

    #[test]
    fn a_stream_cut_before_its_last_object_is_charged_its_text() {
        let cut = CHAT_STREAM.rfind("{\"model\"").unwrap_or(0);
        let s = scan(&[CHAT_STREAM.as_bytes().get(..cut).unwrap_or(&[])]);
        assert!(!s.completed());
        assert_eq!(s.usage(), None);
        // The prompt from the request's estimate, the output from the text received.
        assert_eq!(s.usage_or_estimate(40), usage(40, 15));
    }
}
