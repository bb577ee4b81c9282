//! Google Gemini's response schema (the Gemini API and Gemini on Vertex AI): the
//! `usageMetadata` object and the generated text of `candidates[]`.
//!
//! A `GenerateContentResponse` reports `usageMetadata` with `promptTokenCount` (including
//! `cachedContentTokenCount`), `candidatesTokenCount` (without the thinking tokens),
//! `thoughtsTokenCount` and `toolUsePromptTokenCount` (each counted apart) and
//! `totalTokenCount`. A stream (`:streamGenerateContent`, SSE or a JSON array) repeats it in
//! every chunk with counts that grow, so chunks are [merged](super::usage::RawUsage::merge)
//! (the largest, i.e. the last, count wins) rather than summed. The stream ends with a
//! candidate that has a `finishReason`.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

use super::json::{keys, lenient, Count, FieldError, Seen, TextLen};
use super::usage::{RawUsage, UsageValue};

keys!(
    /// The keys of a `usageMetadata` object that carry counts.
    MetadataKey {
        PromptTokenCount = "promptTokenCount",
        CandidatesTokenCount = "candidatesTokenCount",
        CachedContentTokenCount = "cachedContentTokenCount",
        ThoughtsTokenCount = "thoughtsTokenCount",
        ToolUsePromptTokenCount = "toolUsePromptTokenCount",
        TotalTokenCount = "totalTokenCount",
    }
);

fn metadata_key_name(key: MetadataKey) -> &'static str {
    match key {
        MetadataKey::PromptTokenCount => "usageMetadata.promptTokenCount",
        MetadataKey::CandidatesTokenCount => "usageMetadata.candidatesTokenCount",
        MetadataKey::CachedContentTokenCount => "usageMetadata.cachedContentTokenCount",
        MetadataKey::ThoughtsTokenCount => "usageMetadata.thoughtsTokenCount",
        MetadataKey::ToolUsePromptTokenCount => "usageMetadata.toolUsePromptTokenCount",
        MetadataKey::TotalTokenCount => "usageMetadata.totalTokenCount",
        MetadataKey::Other => "usageMetadata",
    }
}

/// A `usageMetadata` value, read into the same [`UsageValue`] as an OpenAI or Anthropic
/// `usage` object: Gemini's counts land in [`RawUsage`]'s `prompt_tokens`, `cached_tokens`,
/// `total_tokens` and its Gemini-only fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsageMetadata(pub(crate) UsageValue);

impl<'de> Deserialize<'de> for UsageMetadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl V {
            fn wrong_type() -> UsageMetadata {
                UsageMetadata(UsageValue::Bad {
                    field: "usageMetadata",
                    reason: FieldError::WrongType,
                })
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = UsageMetadata;
            lenient!(expecting "a usageMetadata object");
            lenient!(UsageMetadata(UsageValue::Absent) => null);
            lenient!(Self::wrong_type() => scalars seq);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UsageMetadata, A::Error> {
                let mut raw = RawUsage::default();
                let mut seen = Seen::default();
                let mut bad: Option<(&'static str, FieldError)> = None;
                while let Some(key) = map.next_key::<MetadataKey>()? {
                    if key == MetadataKey::Other {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    if !seen.first(key.bit()) {
                        map.next_value::<IgnoredAny>()?;
                        bad = bad.or(Some((metadata_key_name(key), FieldError::Duplicate)));
                        continue;
                    }
                    let slot = match key {
                        MetadataKey::PromptTokenCount => &mut raw.prompt_tokens,
                        MetadataKey::CandidatesTokenCount => &mut raw.candidates_tokens,
                        MetadataKey::CachedContentTokenCount => &mut raw.cached_tokens,
                        MetadataKey::ThoughtsTokenCount => &mut raw.thoughts_tokens,
                        MetadataKey::ToolUsePromptTokenCount => &mut raw.tool_use_prompt_tokens,
                        _ => &mut raw.total_tokens,
                    };
                    if let Err(reason) = map.next_value::<Count>()?.store(slot) {
                        bad = bad.or(Some((metadata_key_name(key), reason)));
                    }
                }
                Ok(UsageMetadata(match bad {
                    Some((field, reason)) => UsageValue::Bad { field, reason },
                    None if raw.is_empty() => UsageValue::Absent,
                    None => UsageValue::Present(raw),
                }))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a chunk's `candidates[]` say: the bytes of generated text in their parts, and whether
/// one of them finished (has a `finishReason`), which ends the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Candidates {
    /// UTF-8 bytes of `candidates[].content.parts[].text`.
    pub(crate) text_bytes: u64,
    /// A candidate has a non-null `finishReason`.
    pub(crate) finished: bool,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct Candidate {
    content: Option<Content>,
    #[serde(rename = "finishReason")]
    finish_reason: Option<IgnoredAny>,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct Content {
    parts: Parts,
}

/// `parts[].text`, summed; any other shape counts as no text.
#[derive(Default)]
struct Parts(u64);

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct Part {
    text: TextLen,
}

impl<'de> Deserialize<'de> for Parts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parts;
            lenient!(expecting "content parts");
            lenient!(Parts(0) => null scalars map);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parts, A::Error> {
                let mut sum = 0u64;
                while let Some(part) = seq.next_element::<Part>()? {
                    sum = sum.saturating_add(part.text.0);
                }
                Ok(Parts(sum))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Candidates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Candidates;
            lenient!(expecting "candidates");
            lenient!(Candidates::default() => null scalars map);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Candidates, A::Error> {
                let mut out = Candidates::default();
                while let Some(c) = seq.next_element::<Candidate>()? {
                    let text = c.content.map_or(0, |content| content.parts.0);
                    out.text_bytes = out.text_bytes.saturating_add(text);
                    out.finished |= c.finish_reason.is_some();
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::vec::Vec;

    use crate::llm::{usage_from_json, Framing, SseLimits, SseScanner, Usage, UsageError};

    /// `:generateContent`, thinking on, part of the prompt from a cached context.
    const GENERATE: &str = include_str!("../../../fixtures/llm/gemini-generate.json");
    /// `:streamGenerateContent?alt=sse`: three chunks, each with the usage so far.
    const STREAM_SSE: &str = include_str!("../../../fixtures/llm/gemini-stream.sse");
    /// `:streamGenerateContent` without `alt=sse`: the same chunks as a JSON array.
    const STREAM_ARRAY: &str = include_str!("../../../fixtures/llm/gemini-stream.json");
    /// A 429 `RESOURCE_EXHAUSTED`.
    const ERROR: &str = include_str!("../../../fixtures/llm/gemini-error.json");

    /// What the stream fixtures report in their last chunk: 9 prompt tokens, 23 candidate and
    /// 24 thinking tokens (both output). Summing the chunks would give 27 and 44.
    const STREAM_USAGE: Usage = Usage {
        input: 9,
        output: 47,
        cached_input: 0,
        reasoning: 24,
        cache_creation: 0,
    };

    fn scan(framing: Framing, chunks: &[&[u8]]) -> SseScanner {
        let mut s = SseScanner::with_framing(SseLimits::default(), framing);
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

    #[test]
    fn generate_content_usage() {
        assert_eq!(
            usage_from_json(GENERATE.as_bytes()),
            Ok(Usage {
                input: 1040,
                output: 47,
                cached_input: 1024,
                reasoning: 24,
                cache_creation: 0,
            })
        );
        assert_eq!(usage_from_json(ERROR.as_bytes()), Err(UsageError::NoUsage));
    }

    #[test]
    fn a_stream_is_charged_its_last_usage_not_the_sum_at_every_split() {
        for (framing, stream) in [
            (Framing::Sse, STREAM_SSE),
            (Framing::JsonArray, STREAM_ARRAY),
        ] {
            let stream = stream.as_bytes();
            let whole = seen(&scan(framing, &[stream]));
            // 84 bytes of text -> 21 tokens estimated; three chunks, all read.
            assert_eq!(whole, (Some(STREAM_USAGE), true, 21, 3, 0), "{framing:?}");
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                assert_eq!(
                    seen(&scan(framing, &[a, b])),
                    whole,
                    "{framing:?} cut at {cut}"
                );
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(
                seen(&scan(framing, &bytes)),
                whole,
                "{framing:?} byte by byte"
            );
        }
    }

    #[test]
    fn a_stream_cut_short_is_charged_what_it_reported_so_far() {
        for (framing, stream) in [
            (Framing::Sse, STREAM_SSE),
            (Framing::JsonArray, STREAM_ARRAY),
        ] {
            // Inside the last chunk, before its text and usage.
            let cut = stream.rfind("\"candidates\"").unwrap_or(0);
            let s = scan(framing, &[stream.as_bytes().get(..cut).unwrap_or(&[])]);
            assert!(!s.completed(), "{framing:?}");
            let usage = s.usage_or_estimate(1000);
            // The second chunk's usage: 9 in, 17 out (more than the text's estimate).
            assert_eq!((usage.input, usage.output), (9, 17), "{framing:?}");
        }
    }

    #[test]
    fn bad_usage_metadata_names_its_field() {
        assert_eq!(
            usage_from_json(br#"{"usageMetadata":{"promptTokenCount":-1}}"#),
            Err(UsageError::BadUsage {
                field: "usageMetadata.promptTokenCount",
                reason: crate::llm::FieldError::Negative
            })
        );
        assert_eq!(
            usage_from_json(br#"{"usageMetadata":{"totalTokenCount":1,"totalTokenCount":2}}"#),
            Err(UsageError::BadUsage {
                field: "usageMetadata.totalTokenCount",
                reason: crate::llm::FieldError::Duplicate
            })
        );
        assert_eq!(
            usage_from_json(br#"{"usageMetadata":[]}"#),
            Err(UsageError::BadUsage {
                field: "usageMetadata",
                reason: crate::llm::FieldError::WrongType
            })
        );
        // Tool-use prompt tokens are input too; a total alone is input.
        let u = usage_from_json(
            br#"{"usageMetadata":{"promptTokenCount":5,"toolUsePromptTokenCount":7,"candidatesTokenCount":2}}"#,
        )
        .unwrap();
        assert_eq!((u.input, u.output), (12, 2));
        let u = usage_from_json(br#"{"usageMetadata":{"totalTokenCount":8}}"#).unwrap();
        assert_eq!((u.input, u.output), (8, 0));
    }
}
