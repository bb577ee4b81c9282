#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use alloc::{format, string::String, vec::Vec};

use super::*;

/// Everything a scanner reports, to compare runs.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    usage: Option<Usage>,
    completed: bool,
    estimated_output: u64,
    malformed: u32,
    oversize: u32,
    events: u64,
}

fn summary(s: &SseScanner) -> Summary {
    Summary {
        usage: s.usage(),
        completed: s.completed(),
        estimated_output: s.estimated_output_tokens(),
        malformed: s.malformed_events(),
        oversize: s.oversize_events(),
        events: s.events(),
    }
}

fn scan_with(limits: SseLimits, chunks: &[&[u8]]) -> SseScanner {
    let mut s = SseScanner::new(limits);
    for chunk in chunks {
        s.feed(chunk);
    }
    s.finish();
    s
}

fn scan(stream: &str) -> SseScanner {
    scan_with(SseLimits::default(), &[stream.as_bytes()])
}

/// OpenAI chat completions, `stream: true` with `stream_options.include_usage: true`.
const OPENAI_CHAT: &str = include_str!("../../../../fixtures/llm/openai-chat.sse");

/// Anthropic messages, `stream: true`.
const ANTHROPIC: &str = include_str!("../../../../fixtures/llm/anthropic-messages.sse");

/// OpenAI Responses, `stream: true`.
const RESPONSES: &str = include_str!("../../../../fixtures/llm/openai-responses.sse");

/// vLLM's OpenAI-compatible server (`/v1/chat/completions`), `include_usage` with
/// `continuous_usage_stats`: every chunk repeats the usage so far.
const VLLM_CHAT: &str = include_str!("../../../../fixtures/llm/vllm-chat.sse");

#[test]
fn a_vllm_stream_with_usage_on_every_chunk_is_charged_its_last_at_every_split() {
    let s = scan(VLLM_CHAT);
    assert_eq!(
        summary(&s),
        Summary {
            // 17 in, 6 out: the last count, not the sum over the chunks (12 out).
            usage: Some(Usage {
                input: 17,
                output: 6,
                ..Usage::default()
            }),
            completed: true,
            // "Paris" + " is the capital." = 21 bytes -> 6 tokens.
            estimated_output: 6,
            malformed: 0,
            oversize: 0,
            events: 6,
        }
    );
    assert_split_invariant(VLLM_CHAT.as_bytes(), SseLimits::default());
}

#[test]
fn openai_chat_stream_with_usage() {
    let s = scan(OPENAI_CHAT);
    assert_eq!(
        summary(&s),
        Summary {
            usage: Some(Usage {
                input: 9,
                output: 4,
                ..Usage::default()
            }),
            completed: true,
            // "Hello" (5) + " wörld! \"ok\"" (13 bytes) = 18 bytes -> 5 tokens.
            estimated_output: 5,
            malformed: 0,
            oversize: 0,
            events: 6,
        }
    );
    // A completed stream is charged what it reported, not the estimate.
    assert_eq!(
        s.usage_or_estimate(1000),
        Usage {
            input: 9,
            output: 4,
            ..Usage::default()
        }
    );
}

#[test]
fn anthropic_stream_merges_message_start_and_message_delta() {
    let s = scan(ANTHROPIC);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 125,
            output: 15,
            cached_input: 100,
            reasoning: 0,
            cache_creation: 0
        })
    );
    assert!(s.completed());
    // "Hello" + ", Claude here!" + "{\"location\": \"San" = 5 + 14 + 17 = 36 bytes.
    assert_eq!(s.estimated_output_tokens(), 9);
    assert_eq!(
        (s.malformed_events(), s.oversize_events(), s.events()),
        (0, 0, 11)
    );
}

#[test]
fn responses_stream_reads_usage_from_response_completed() {
    let s = scan(RESPONSES);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 37,
            output: 11,
            ..Usage::default()
        })
    );
    assert!(s.completed());
    assert_eq!(s.estimated_output_tokens(), 25_u64.div_ceil(4));
    assert_eq!(s.malformed_events(), 0);
}

#[test]
fn responses_incomplete_and_failed_end_the_stream() {
    for kind in ["response.incomplete", "response.failed"] {
        let stream = format!(
                "event: {kind}\ndata: {{\"type\":\"{kind}\",\"response\":{{\"status\":\"incomplete\",\"usage\":{{\"input_tokens\":5,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":64}}}}}}\n\n"
            );
        let s = scan(&stream);
        assert!(s.completed(), "{kind}");
        assert_eq!(
            s.usage(),
            Some(Usage {
                input: 5,
                output: 64,
                ..Usage::default()
            })
        );
    }
}

#[test]
fn chat_stream_without_usage_is_estimated() {
    let stream: String = OPENAI_CHAT
        .split("\n\n")
        .filter(|e| !e.contains("prompt_tokens"))
        .map(|e| format!("{e}\n\n"))
        .collect();
    let s = scan(&stream);
    assert_eq!(s.usage(), None);
    assert!(s.completed());
    assert_eq!(
        s.usage_or_estimate(40),
        Usage {
            input: 40,
            output: 5,
            ..Usage::default()
        }
    );
}

#[test]
fn legacy_completions_and_tool_calls_and_reasoning_are_counted() {
    let stream = concat!(
        r#"data: {"id":"cmpl-1","object":"text_completion","choices":[{"text":"abcd","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
        "\n\n",
        r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#,
        "\n\n",
        r#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":\"Paris\"}"}}]}}]}"#,
        "\n\n",
        r#"data: {"id":"c","choices":[{"index":0,"delta":{"reasoning_content":"think"}},{"index":1,"delta":{"content":"xyz","refusal":null}}]}"#,
        "\n\n",
    );
    let s = scan(stream);
    // 4 + 11 ("get_weather") + 16 + 5 + 3 = 39 bytes.
    assert_eq!(s.estimated_output_tokens(), 10);
    assert!(!s.completed());
    assert_eq!(s.malformed_events(), 0);
}

#[test]
fn audio_deltas_are_not_text() {
    let stream = concat!(
        r#"data: {"type":"response.audio.delta","delta":"UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA="}"#,
        "\n\n",
        r#"data: {"type":"response.audio.transcript.delta","delta":"hi"}"#,
        "\n\n",
    );
    assert_eq!(scan(stream).estimated_output_tokens(), 0);
}

/// The result must not depend on where the stream is split.
fn assert_split_invariant(stream: &[u8], limits: SseLimits) {
    let whole = summary(&scan_with(limits, &[stream]));
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        assert_eq!(summary(&scan_with(limits, &[a, b])), whole, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(summary(&scan_with(limits, &bytes)), whole, "byte by byte");
    for step in [2, 3, 7, 13, 64] {
        let pieces: Vec<&[u8]> = stream.chunks(step).collect();
        assert_eq!(
            summary(&scan_with(limits, &pieces)),
            whole,
            "chunks of {step}"
        );
    }
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

fn cr(s: &str) -> String {
    s.replace('\n', "\r")
}

#[test]
fn every_split_point_gives_the_same_result() {
    for stream in [OPENAI_CHAT, ANTHROPIC, RESPONSES] {
        assert_split_invariant(stream.as_bytes(), SseLimits::default());
        assert_split_invariant(crlf(stream).as_bytes(), SseLimits::default());
        assert_split_invariant(cr(stream).as_bytes(), SseLimits::default());
    }
}

#[test]
fn every_split_point_gives_the_same_result_with_oversize_events() {
    // Small enough that the usage chunk (and some Anthropic events) are dropped.
    let limits = SseLimits::new(200);
    for stream in [OPENAI_CHAT, ANTHROPIC] {
        let s = scan_with(limits, &[stream.as_bytes()]);
        assert!(s.oversize_events() > 0);
        assert_split_invariant(stream.as_bytes(), limits);
        assert_split_invariant(crlf(stream).as_bytes(), limits);
    }
}

#[test]
fn line_endings_do_not_matter() {
    for stream in [OPENAI_CHAT, ANTHROPIC, RESPONSES] {
        let lf = summary(&scan(stream));
        assert_eq!(summary(&scan(&crlf(stream))), lf);
        assert_eq!(summary(&scan(&cr(stream))), lf);
        // Mixed: every other line ending converted.
        let mixed: String = stream
            .split('\n')
            .enumerate()
            .map(|(i, l)| {
                if i % 2 == 0 {
                    format!("{l}\r\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert_eq!(summary(&scan(&mixed)), lf);
    }
}

#[test]
fn crlf_split_between_cr_and_lf_is_one_line_end() {
    let stream = "data: {\"usage\":{\"prompt_tokens\":1}}\r\n\r\ndata: [DONE]\r\n\r\n";
    let cut = stream.find('\n').unwrap();
    let s = scan_with(
        SseLimits::default(),
        &[&stream.as_bytes()[..cut], b"", &stream.as_bytes()[cut..]],
    );
    assert_eq!(summary(&s), summary(&scan(stream)));
    assert_eq!(s.events(), 2);
    assert!(s.completed());
}

#[test]
fn comments_and_other_fields_are_ignored() {
    let stream = concat!(
        ": keep-alive\n\n",
        ":\n",
        "id: 1\nretry: 3000\nevent: message_start\n",
        r#"data: {"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}"#,
        "\n: comment inside an event\n\n",
        ": OPENROUTER PROCESSING\n\n",
        "unknown-field: whatever\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let s = scan(stream);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 3,
            output: 1,
            ..Usage::default()
        })
    );
    assert!(s.completed());
    assert_eq!((s.events(), s.malformed_events()), (2, 0));
}

#[test]
fn multi_line_data_is_joined_with_newlines() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":\n",
        "data: {\"content\":\"abcdefgh\"}}],\n",
        "data:\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2}}\n",
        "\n",
    );
    let s = scan(stream);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 2,
            output: 2,
            ..Usage::default()
        })
    );
    assert_eq!(s.estimated_output_tokens(), 2);
    assert_eq!(s.malformed_events(), 0);
}

#[test]
fn field_syntax_edge_cases() {
    // No space after the colon; only one space is stripped; `data` alone is an empty line.
    let s = scan("data:[DONE]\n\n");
    assert!(s.completed());
    let s = scan("data:  [DONE]\n\n");
    assert!(s.completed(), "surrounding whitespace is tolerated");
    // `data` alone adds an empty line: the event's data is "\n[DONE]", which trims to [DONE].
    let s = scan("data\ndata: [DONE]\n\n");
    assert!(s.completed());
}

#[test]
fn byte_order_mark_at_start_is_ignored() {
    let with_bom = format!("\u{feff}{OPENAI_CHAT}");
    assert_eq!(summary(&scan(&with_bom)), summary(&scan(OPENAI_CHAT)));
    assert_split_invariant(with_bom.as_bytes(), SseLimits::default());
}

#[test]
fn truncated_chat_stream_is_charged_for_what_arrived() {
    let cut = OPENAI_CHAT.find("\"finish_reason\":\"stop\"").unwrap();
    let mut s = SseScanner::default();
    s.feed(&OPENAI_CHAT.as_bytes()[..cut]);
    s.finish();
    assert_eq!(s.usage(), None);
    assert!(!s.completed());
    assert_eq!(s.estimated_output_tokens(), 5);
    // The partial last event is read at the end of the stream and is not JSON.
    assert_eq!(s.malformed_events(), 1);
    assert_eq!(
        s.usage_or_estimate(12),
        Usage {
            input: 12,
            output: 5,
            ..Usage::default()
        }
    );
}

#[test]
fn truncated_anthropic_stream_keeps_input_and_estimates_output() {
    let cut = ANTHROPIC.find("event: message_delta").unwrap();
    let mut s = SseScanner::default();
    s.feed(&ANTHROPIC.as_bytes()[..cut]);
    s.finish();
    assert!(!s.completed());
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 125,
            output: 1,
            cached_input: 100,
            ..Usage::default()
        })
    );
    assert_eq!(
        s.usage_or_estimate(999),
        Usage {
            input: 125,
            output: 9,
            cached_input: 100,
            ..Usage::default()
        },
        "the reported input is kept; output is raised to the estimate"
    );
}

#[test]
fn later_events_never_lower_a_count() {
    let stream = concat!(
        r#"data: {"type":"message_start","message":{"usage":{"input_tokens":40,"cache_read_input_tokens":8,"output_tokens":1}}}"#,
        "\n\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":0,"cache_read_input_tokens":0,"output_tokens":30}}"#,
        "\n\n",
        r#"data: {"type":"message_delta","delta":{},"usage":{"output_tokens":29}}"#,
        "\n\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    let s = scan(stream);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 48,
            output: 30,
            cached_input: 8,
            ..Usage::default()
        })
    );
    assert_eq!(s.usage_or_estimate(0), s.usage().unwrap());
}

#[test]
fn completed_streams_are_charged_what_they_report() {
    // More text than the reported output: trusted once the stream completed...
    let text = "x".repeat(400);
    let done = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n\
             data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":60}}}}\n\ndata: [DONE]\n\n"
        );
    let s = scan(&done);
    assert_eq!(s.estimated_output_tokens(), 100);
    assert_eq!(
        s.usage_or_estimate(0),
        Usage {
            input: 3,
            output: 60,
            ..Usage::default()
        }
    );
    // ...but raised to the estimate when the end marker never came.
    let cut = scan(done.trim_end_matches("data: [DONE]\n\n"));
    assert!(!cut.completed());
    assert_eq!(
        cut.usage_or_estimate(0),
        Usage {
            input: 3,
            output: 100,
            ..Usage::default()
        }
    );
}

#[test]
fn last_event_without_blank_line_is_read_at_finish() {
    let s = scan("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\ndata: [DONE]");
    assert!(s.completed());
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 4,
            output: 1,
            ..Usage::default()
        })
    );
}

#[test]
fn input_after_finish_is_ignored() {
    let mut s = SseScanner::default();
    s.feed(b"data: [DONE]\n\n");
    s.finish();
    s.feed(b"data: {\"usage\":{\"prompt_tokens\":1}}\n\n");
    s.finish();
    assert_eq!(s.usage(), None);
    assert_eq!(s.events(), 1);
}

#[test]
fn malformed_json_is_counted_and_skipped() {
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}]\n\n",
        "data: {\"usage\":{\"prompt_tokens\":-3}}\n\n",
        "data: {\"usage\": {\"prompt_tokens\": 7, \"completion_tokens\": 1.5}}\n\n",
        "data: {\"delta\": nope}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}]}\n\n",
        "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        "data: not json at all, but no keywords\n\n",
    );
    let s = scan(stream);
    assert_eq!(s.malformed_events(), 4);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 1,
            output: 2,
            ..Usage::default()
        })
    );
    assert_eq!(s.estimated_output_tokens(), 1);
    assert_eq!(s.events(), 7);
}

#[test]
fn usage_at_u64_extremes_does_not_wrap() {
    let max = u64::MAX;
    let stream = format!(
            "data: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{max},\"cache_read_input_tokens\":{max},\"output_tokens\":{max}}}}}}}\n\n\
             data: {{\"usage\":{{\"output_tokens\":18446744073709551616}}}}\n\n"
        );
    let s = scan(&stream);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: max,
            output: max,
            cached_input: max,
            ..Usage::default()
        })
    );
    assert_eq!(s.malformed_events(), 1);
}

#[test]
fn oversize_event_is_dropped_and_counted_and_the_next_one_read() {
    let limits = SseLimits::new(100);
    let big = "x".repeat(150);
    let stream = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{big}\"}}}}]}}\n\n\
             data: {{\"a\":\"{big}\"}}\n\
             data: {{\"b\":1}}\n\n\
             data: {{\"c\":\"{}\"}}\n\
             data: {{\"d\":\"{}\"}}\n\n\
             : {big}\n\n\
             event: {big}\n\n\
             data: {{\"usage\":{{\"prompt_tokens\":1}}}}\n\n",
        "y".repeat(60),
        "z".repeat(60),
    );
    let s = scan_with(limits, &[stream.as_bytes()]);
    assert_eq!(
        s.oversize_events(),
        3,
        "a long line, a long first line, data that adds up"
    );
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 1,
            ..Usage::default()
        })
    );
    assert_eq!(s.estimated_output_tokens(), 0);
    assert_split_invariant(stream.as_bytes(), limits);
}

/// A Responses stream whose `response.completed` repeats `text_bytes` of output.
fn long_responses_stream(text_bytes: usize) -> String {
    let text = "abcd".repeat(text_bytes / 4);
    format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"{text}\"}}\n\n\
             event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[{{\"type\":\"message\",\"content\":[{{\"type\":\"output_text\",\"text\":\"{text}\"}}]}}],\"tools\":[],\"usage\":{{\"input_tokens\":100,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":80000,\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":80100}},\"user\":null,\"metadata\":{{}}}}}}\n\n"
        )
}

#[test]
fn usage_in_a_response_completed_larger_than_the_limit_is_read() {
    // 320 KB of output, the default 256 KiB bound of max_response_body_bytes.
    let stream = long_responses_stream(320_000);
    let limits = SseLimits::new(256 * 1024);
    let whole = scan_with(limits, &[stream.as_bytes()]);
    assert_eq!(
        whole.oversize_events(),
        2,
        "the delta and response.completed"
    );
    assert!(whole.completed());
    assert_eq!(
        whole.usage(),
        Some(Usage {
            input: 100,
            output: 80_000,
            ..Usage::default()
        })
    );
    let bytes = stream.as_bytes();
    for step in [1, 3, 4096, 16 * 1024 + 1, 100_000] {
        let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
        assert_eq!(
            summary(&scan_with(limits, &pieces)),
            summary(&whole),
            "chunks of {step}"
        );
    }
    let completed = stream.find("data: {\"type\":\"response.completed").unwrap();
    let usage = stream.rfind("\"usage\"").unwrap();
    // Every boundary where the head and the tail are cut (the event's type, its usage and
    // what follows), and a sample of the rest.
    for cut in (0..bytes.len())
        .step_by(9973)
        .chain(completed - 3..completed + 140)
        .chain(usage - 20..usage + 40)
        .chain(bytes.len() - 40..bytes.len())
    {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(
            summary(&scan_with(limits, &[a, b])),
            summary(&whole),
            "cut at {cut}"
        );
    }
}

#[test]
fn oversized_final_events_of_every_format_keep_their_usage() {
    let pad = "x".repeat(3000);
    let streams = [
            // chat's usage chunk
            format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"abcd\"}}}}]}}\n\ndata: {{\"choices\":[],\"x_padding\":\"{pad}\",\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":9}}}}\n\ndata: [DONE]\n\n"),
            // legacy completions
            format!("data: {{\"choices\":[{{\"text\":\"abcd\"}}]}}\n\ndata: {{\"choices\":[],\"x_padding\":\"{pad}\",\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":9}}}}\n\ndata: [DONE]\n\n"),
            // Anthropic's message_delta (and message_start before it)
            format!("event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":7,\"output_tokens\":1}}}}}}\n\nevent: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{}},\"x_padding\":\"{pad}\",\"usage\":{{\"output_tokens\":9}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"),
            // Responses, with the data split over several lines
            format!("data: {{\"type\":\"response.completed\",\n:comment\ndata: \"response\":{{\"x\":\"{pad}\",\ndata: \"usage\":{{\"input_tokens\":7,\"input_tokens_details\":{{}},\"output_tokens\":9}}}}}}\n\n"),
        ];
    let limits = SseLimits::new(1000);
    for stream in &streams {
        for text in [stream.clone(), crlf(stream), cr(stream)] {
            let s = scan_with(limits, &[text.as_bytes()]);
            assert_eq!(s.oversize_events(), 1, "{stream}");
            assert!(s.completed(), "{stream}");
            assert_eq!(
                s.usage(),
                Some(Usage {
                    input: 7,
                    output: 9,
                    ..Usage::default()
                }),
                "{stream}"
            );
            assert_split_invariant(text.as_bytes(), limits);
        }
    }
}

#[test]
fn an_oversized_event_cut_short_is_malformed_not_read() {
    let stream = long_responses_stream(4000);
    let cut = stream.rfind("\"usage\"").unwrap() + 20;
    let s = scan_with(SseLimits::new(1000), &[&stream.as_bytes()[..cut]]);
    assert_eq!(s.usage(), None);
    assert!(!s.completed());
    assert_eq!(s.malformed_events(), 1);
}

#[test]
fn limits_have_a_floor() {
    assert_eq!(
        SseLimits::new(0).max_event_bytes(),
        SseLimits::MIN_MAX_EVENT_BYTES
    );
    assert_eq!(SseLimits::default().max_event_bytes(), 1 << 20);
}

/// A deterministic stream of pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

fn assert_bounded(s: &SseScanner) {
    let max = s.limits.max_event_bytes();
    // `Vec` may round capacity up, but never past twice what was asked for.
    assert!(
        s.line.capacity() <= 2 * max,
        "line buffer {}",
        s.line.capacity()
    );
    assert!(
        s.data.capacity() <= 2 * max,
        "data buffer {}",
        s.data.capacity()
    );
}

#[test]
fn ten_megabytes_of_garbage_is_bounded_and_fast() {
    let limits = SseLimits::new(64 * 1024);
    let garbage = noise(10 << 20, 0x9e37_79b9_7f4a_7c15);
    let mut s = SseScanner::new(limits);
    for chunk in garbage.chunks(16 * 1024) {
        s.feed(chunk);
        assert_bounded(&s);
    }
    s.finish();
    assert_eq!(s.usage(), None);
    assert!(!s.completed());

    // No line end at all.
    let mut s = SseScanner::new(limits);
    let no_newline: Vec<u8> = garbage
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b'x' } else { b })
        .collect();
    for chunk in no_newline.chunks(16 * 1024) {
        s.feed(chunk);
        assert_bounded(&s);
    }
    s.finish();
    assert_eq!(s.events(), 0);

    // One endless event: data lines that never reach a blank line.
    let mut s = SseScanner::new(limits);
    let line = b"data: {\"choices\":[{\"delta\":{\"content\":\"aaaa\"}}]}\n";
    for _ in 0..(10 << 20) / line.len() {
        s.feed(line);
    }
    assert_bounded(&s);
    s.finish();
    assert_eq!(
        (s.events(), s.oversize_events(), s.estimated_output_tokens()),
        (1, 1, 0)
    );

    // Ten megabytes of tiny, well-formed, uninteresting events.
    let mut s = SseScanner::new(limits);
    let event = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
    for _ in 0..(10 << 20) / event.len() {
        s.feed(event);
    }
    s.finish();
    assert_bounded(&s);
    assert_eq!(s.malformed_events(), 0);
}

#[test]
fn garbage_with_valid_events_between_still_counts_the_valid_ones() {
    let mut stream = noise(4096, 7);
    stream.extend_from_slice(
        b"\n\ndata: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n",
    );
    stream.extend_from_slice(&noise(4096, 8));
    let s = scan_with(SseLimits::default(), &[&stream]);
    assert_eq!(
        s.usage(),
        Some(Usage {
            input: 5,
            output: 6,
            ..Usage::default()
        })
    );
}

#[test]
fn find_eol_agrees_with_a_plain_search() {
    let bytes = noise(4096, 3);
    for start in 0..64 {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 1000] {
            let slice = &bytes[start..start + len];
            assert_eq!(
                find_eol(slice),
                slice.iter().position(|&b| b == b'\n' || b == b'\r')
            );
        }
    }
    let mut lf = [b'a'; 40];
    for i in 0..40 {
        lf[i] = b'\n';
        assert_eq!(find_eol(&lf), Some(i));
        lf[i] = b'a';
        let mut one = [0x8au8; 40];
        one[i] = b'\r';
        assert_eq!(find_eol(&one), Some(i));
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_split_of_a_real_stream_gives_the_same_result(
            which in 0usize..3,
            ending in 0usize..3,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let stream = [OPENAI_CHAT, ANTHROPIC, RESPONSES][which];
            let stream = match ending { 0 => String::from(stream), 1 => crlf(stream), _ => cr(stream) };
            let bytes = stream.as_bytes();
            let pieces = crate::llm::testing::cut(bytes, &cuts);
            let whole = summary(&scan_with(SseLimits::default(), &[bytes]));
            prop_assert_eq!(summary(&scan_with(SseLimits::default(), &pieces)), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            max in 0usize..400,
        ) {
            let mut s = SseScanner::new(SseLimits::new(max));
            for chunk in &chunks {
                s.feed(chunk);
                assert_bounded(&s);
            }
            s.finish();
            let joined: Vec<u8> = chunks.concat();
            prop_assert_eq!(summary(&s), summary(&scan_with(SseLimits::new(max), &[&joined])));
        }

        #[test]
        fn sse_shaped_noise_never_panics(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just(String::from("")),
                    Just(String::from("data: [DONE]")),
                    Just(String::from(": ping")),
                    "data: \\{\"(usage|delta|choices|type|message)\":[ -~]{0,40}",
                    "data: \\{\"usage\":\\{\"(prompt|input|output)_tokens\":-?[0-9]{1,22}\\}\\}",
                    "[a-z]{0,6}:?[ -~]{0,20}",
                ],
                0..40,
            ),
            sep in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        ) {
            let stream = lines.join(sep);
            assert_split_invariant(stream.as_bytes(), SseLimits::new(80));
        }
    }
}
