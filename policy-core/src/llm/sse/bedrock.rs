//! What one Bedrock event-stream message says: ConverseStream's events by their `:event-type`,
//! and InvokeModelWithResponseStream's `chunk` events, each an Anthropic stream event in base64.
//!
//! | `:event-type` | payload | read |
//! | --- | --- | --- |
//! | `messageStart`, `contentBlockStart`, `contentBlockStop`, `messageStop` | role, stop reason | nothing |
//! | `contentBlockDelta` | `{"delta": {"text": …}}` | the text, for a cut stream's estimate |
//! | `metadata` | `{"usage": {"inputTokens", "outputTokens", …}, "metrics"}` | the usage; the stream's last event, so it completes it |
//! | `chunk` | `{"bytes": "<base64>"}` | the decoded bytes, as an Anthropic SSE event's data |
//!
//! A message whose `:message-type` is `exception` or `error` (a throttling or model error in
//! the middle of a stream) counts as malformed and never completes the stream.

use alloc::vec::Vec;

use serde::Deserialize as DeriveDeserialize;

use super::event::{read_event, EventOutcome};
use crate::llm::eventstream::Message;

/// Reads one decoded message.
pub(super) fn read_message(message: &Message<'_>) -> EventOutcome {
    match message.message_type() {
        Some("event") | None => {}
        Some(_) => return EventOutcome::Malformed,
    }
    match message.event_type() {
        Some("chunk") => read_chunk(message.payload),
        Some("metadata") => match read_event(message.payload) {
            EventOutcome::Read(mut summary) => {
                summary.terminal = true;
                EventOutcome::Read(summary)
            }
            other => other,
        },
        Some("contentBlockDelta") => read_event(message.payload),
        _ => EventOutcome::Skipped,
    }
}

#[derive(DeriveDeserialize)]
struct Chunk {
    bytes: alloc::string::String,
}

/// A `chunk` event: `{"bytes": "<base64 of the model's own stream event>"}`.
fn read_chunk(payload: &[u8]) -> EventOutcome {
    let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
        return EventOutcome::Malformed;
    };
    match base64_decode(chunk.bytes.as_bytes()) {
        Some(data) => read_event(&data),
        None => EventOutcome::Malformed,
    }
}

/// Standard base64 (RFC 4648 §4, `=` padding optional); `None` for any other byte.
pub(crate) fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for group in text.chunks(4) {
        let mut n = 0u32;
        for &c in group {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * (4 - group.len() as u32);
        let bytes = n.to_be_bytes();
        out.extend_from_slice(bytes.get(1..group.len()).unwrap_or(&[]));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::vec::Vec;

    use super::base64_decode;
    use crate::budget::{OnIncomplete, OnMissingUsage};
    use crate::llm::eventstream::encode;
    use crate::llm::{
        stream_charge, usage_from_json, Cost, Framing, SseLimits, SseScanner, StreamSeen, Usage,
    };

    /// ConverseStream: messageStart, three text deltas (36 bytes), contentBlockStop,
    /// messageStop, metadata with the usage (cache reads).
    const CONVERSE_STREAM: &[u8] =
        include_bytes!("../../../../fixtures/llm/bedrock-converse-stream.eventstream");
    /// The same, one byte of the metadata event's payload flipped (its CRC no longer matches).
    const CONVERSE_STREAM_BAD_CRC: &[u8] =
        include_bytes!("../../../../fixtures/llm/bedrock-converse-stream-bad-crc.eventstream");
    /// InvokeModelWithResponseStream for Claude: seven `chunk` events, Anthropic's stream events
    /// in base64 (14 bytes of text).
    const INVOKE_STREAM: &[u8] =
        include_bytes!("../../../../fixtures/llm/bedrock-invoke-stream.eventstream");
    const CONVERSE: &str = include_str!("../../../../fixtures/llm/bedrock-converse.json");
    const INVOKE: &str = include_str!("../../../../fixtures/llm/bedrock-invoke.json");
    const ERROR: &str = include_str!("../../../../fixtures/llm/bedrock-error.json");

    fn scan(chunks: &[&[u8]]) -> SseScanner {
        let mut s = SseScanner::with_framing(SseLimits::default(), Framing::EventStream);
        for chunk in chunks {
            s.feed(chunk);
        }
        s.finish();
        s
    }

    type Seen = (Option<Usage>, bool, u64, u64, u32, bool);

    fn seen(s: &SseScanner) -> Seen {
        (
            s.usage(),
            s.completed(),
            s.estimated_output_tokens(),
            s.events(),
            s.malformed_events(),
            s.untrusted(),
        )
    }

    fn at_every_split(stream: &[u8]) -> Seen {
        let whole = seen(&scan(&[stream]));
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(seen(&scan(&[a, b])), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(seen(&scan(&bytes)), whole, "byte by byte");
        whole
    }

    #[test]
    fn converse_and_invoke_json_report_their_usage() {
        // inputTokens excludes the cache reads and writes, as Anthropic's input_tokens does:
        // totalTokens 2107 = 37 + 1800 + 248 + 22.
        assert_eq!(
            usage_from_json(CONVERSE.as_bytes()),
            Ok(Usage {
                input: 2085,
                output: 22,
                cached_input: 1800,
                reasoning: 0,
                cache_creation: 248,
            })
        );
        let invoke = usage_from_json(INVOKE.as_bytes()).unwrap();
        assert_eq!((invoke.input, invoke.output), (12, 13));
        assert!(usage_from_json(ERROR.as_bytes()).is_err());
        assert_eq!(
            usage_from_json(br#"{"usage":{"inputTokens":1,"input_tokens":2}}"#),
            Err(crate::llm::UsageError::BadUsage {
                field: "usage.input_tokens",
                reason: crate::llm::FieldError::Duplicate
            })
        );
        assert_eq!(
            usage_from_json(br#"{"usage":{"outputTokens":-1}}"#),
            Err(crate::llm::UsageError::BadUsage {
                field: "usage.outputTokens",
                reason: crate::llm::FieldError::Negative
            })
        );
    }

    #[test]
    fn converse_stream_at_every_split() {
        let usage = Usage {
            input: 1045,
            output: 14,
            cached_input: 1024,
            ..Usage::default()
        };
        // 36 bytes of text: 9 tokens; seven messages.
        assert_eq!(
            at_every_split(CONVERSE_STREAM),
            (Some(usage), true, 9, 7, 0, false)
        );
    }

    #[test]
    fn invoke_stream_chunks_are_anthropic_events() {
        let usage = Usage {
            input: 25,
            output: 15,
            ..Usage::default()
        };
        assert_eq!(
            at_every_split(INVOKE_STREAM),
            (Some(usage), true, 4, 7, 0, false)
        );
    }

    #[test]
    fn a_bad_crc_is_not_trusted_at_any_split() {
        // Six messages read (their text counts), the seventh fails: no usage, not completed.
        assert_eq!(
            at_every_split(CONVERSE_STREAM_BAD_CRC),
            (None, false, 9, 6, 0, true)
        );
        // Charged as a stream without usage: on_missing_usage, and at least what was received.
        let s = scan(&[CONVERSE_STREAM_BAD_CRC]);
        let seen = |estimate| StreamSeen {
            ended: true,
            completed: s.completed(),
            reported: s.usage(),
            received: s.usage_or_estimate(30),
            estimate,
        };
        let cost = Cost::default();
        for (missing, estimate, charged) in [
            (OnMissingUsage::Reservation, 500, 500),
            (OnMissingUsage::Nothing, 500, 39),
            (OnMissingUsage::Reservation, 10, 39),
        ] {
            assert_eq!(
                stream_charge(&seen(estimate), &cost, OnIncomplete::Received, missing),
                charged,
                "{missing:?} {estimate}"
            );
        }
        // Usage read before the corruption is dropped as well.
        let mut stream = encode(
            &[(":event-type", "metadata"), (":message-type", "event")],
            br#"{"usage":{"inputTokens":5,"outputTokens":5}}"#,
        );
        let mut bad = stream.clone();
        if let Some(last) = bad.last_mut() {
            *last ^= 1;
        }
        assert_eq!(scan(&[&stream]).usage().map(|u| u.total()), Some(10));
        stream.extend(bad);
        assert_eq!(seen_usage(&stream), (None, false, true));
    }

    fn seen_usage(stream: &[u8]) -> (Option<Usage>, bool, bool) {
        let s = scan(&[stream]);
        (s.usage(), s.completed(), s.untrusted())
    }

    #[test]
    fn exceptions_and_cut_streams_do_not_complete() {
        let mut stream = encode(
            &[
                (":event-type", "contentBlockDelta"),
                (":message-type", "event"),
            ],
            br#"{"contentBlockIndex":0,"delta":{"text":"abcdefgh"}}"#,
        );
        stream.extend(encode(
            &[
                (":exception-type", "throttlingException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        let s = scan(&[&stream]);
        assert_eq!(
            (
                s.completed(),
                s.malformed_events(),
                s.estimated_output_tokens()
            ),
            (false, 1, 2)
        );
        // Cut inside the metadata event: the text so far, no usage, not untrusted.
        let cut = CONVERSE_STREAM.len() - 10;
        let s = scan(&[CONVERSE_STREAM.get(..cut).unwrap_or(&[])]);
        assert_eq!(
            seen_usage(CONVERSE_STREAM.get(..cut).unwrap_or(&[])),
            (None, false, false)
        );
        assert_eq!(
            s.usage_or_estimate(30),
            Usage {
                input: 30,
                output: 9,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        for (text, bytes) in [
            (&b""[..], &b""[..]),
            (b"Zg==", b"f"),
            (b"Zm8=", b"fo"),
            (b"Zm9v", b"foo"),
            (b"Zm9vYg", b"foob"),
            (b"+/+/", &[0xFB, 0xFF, 0xBF]),
        ] {
            assert_eq!(base64_decode(text).as_deref(), Some(bytes));
        }
        assert_eq!(base64_decode(b"Zm9v!"), None);
        assert_eq!(base64_decode(b"Z"), None);
        assert_eq!(base64_decode(b"Zg=a"), None);
    }
}
