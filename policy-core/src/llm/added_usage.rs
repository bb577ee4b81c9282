//! Takes out of an OpenAI stream what `stream_options.include_usage` added, for a client that
//! never asked for it.
//!
//! tollgate asks every OpenAI chat/completions stream for its usage (the only way to charge it
//! exactly), which changes the stream: every chunk gains `"usage": null` and a last chunk
//! arrives with `"choices": []` and the usage. A client that did not ask for that may break on
//! it (the common `chunk.choices[0].delta.content` raises `IndexError` on the extra chunk). So
//! when tollgate added the option (or turned the client's `false` into `true`), the filter
//! reads the usage from the untouched bytes and passes the stream through an
//! [`AddedUsageRemover`], which gives the client the stream it asked for:
//! - an event whose JSON has a non-null `usage` and no choices (`[]` or absent) is dropped;
//! - any other event with a top-level `usage` member loses that member, byte-exactly (the
//!   comma that joined it goes with it, nothing else moves);
//! - everything else (other events, comments, `[DONE]`, bytes that are not JSON) is unchanged.
//!
//! Framing is [`SseFramer`]'s job: events come out whole whatever the chunking, and an event
//! larger than the bound passes unchanged (a client then sees `usage` in that one event: a
//! `"usage": null` on a huge delta, never a lost or corrupted byte). Events whose JSON spans
//! several `data:` lines can be dropped but not edited, and pass unchanged otherwise; OpenAI
//! writes one line per event. An object with more than one `usage` key is left alone.

use core::ops::Range;

use alloc::vec::Vec;

use serde::de::IgnoredAny;

use super::json_text::{self, Member};
use super::sse::frame::{Piece, SseFramer};

/// What to do with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Pass it on as it is.
    Keep,
    /// Leave it out: it exists only because usage was asked for.
    Drop,
    /// Pass it on without these bytes (the `usage` member and its joining comma).
    Cut(Range<usize>),
}

/// Decides what happens to `event`: one whole event, through its closing blank line.
pub fn edit_event(event: &[u8]) -> Edit {
    // Only a member whose raw key is `usage` is ever dropped or cut, and a JSON key cannot
    // hold a line end, so an event without the bytes `"usage"` is kept: most of a stream's
    // events (every one of a stream whose chunks carry no `"usage": null`) are decided by this
    // scan instead of a JSON parse and a walk of the object's members.
    if !contains(event, b"\"usage\"") {
        return Edit::Keep;
    }
    let mut data_lines: Vec<Range<usize>> = Vec::new();
    let mut at = 0usize;
    while at < event.len() {
        let rest = event.get(at..).unwrap_or(&[]);
        let len = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        let line = rest.get(..len).unwrap_or(&[]);
        if let Some(value) = line.strip_prefix(b"data") {
            let skip = match value {
                [b':', b' ', ..] => 2,
                [b':', ..] => 1,
                [] => 0,
                _ => usize::MAX, // another field whose name starts with "data"
            };
            if skip != usize::MAX {
                let start = at + 4 + skip;
                data_lines.push(start..at + len);
            }
        }
        let terminator = if rest.get(len..len + 2) == Some(b"\r\n") {
            2
        } else {
            1
        };
        at += len + terminator;
    }
    // One data line (OpenAI writes one an event) is read in place; several are joined.
    let mut joined = Vec::new();
    let data: &[u8] = match data_lines.as_slice() {
        [] => return Edit::Keep,
        [one] => event.get(one.clone()).unwrap_or(&[]),
        many => {
            for (i, r) in many.iter().enumerate() {
                if i > 0 {
                    joined.push(b'\n');
                }
                joined.extend_from_slice(event.get(r.clone()).unwrap_or(&[]));
            }
            &joined
        }
    };
    let Some(members) = object_members(data) else {
        return Edit::Keep;
    };
    let mut usage = members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.key_is_raw(data, b"usage"));
    let (Some((index, member)), None) = (usage.next(), usage.next()) else {
        return Edit::Keep;
    };
    let null = data.get(member.value.clone()) == Some(b"null");
    let no_choices = match members.iter().find(|m| m.key_is_raw(data, b"choices")) {
        None => true,
        Some(choices) => {
            let v = data.get(choices.value.clone()).unwrap_or(&[]);
            v.first() == Some(&b'[')
                && v.get(1..v.len().saturating_sub(1))
                    .is_some_and(|inner| inner.trim_ascii().is_empty())
        }
    };
    if !null && no_choices {
        return Edit::Drop;
    }
    let [line] = data_lines.as_slice() else {
        return Edit::Keep;
    };
    // Remove the member with the comma that joins it to its neighbour.
    let cut = match (
        index.checked_sub(1).and_then(|p| members.get(p)),
        members.get(index + 1),
    ) {
        (Some(previous), _) => previous.value.end..member.value.end,
        (None, Some(next)) => member.quoted_key().start..next.quoted_key().start,
        (None, None) => member.quoted_key().start..member.value.end,
    };
    Edit::Cut(line.start + cut.start..line.start + cut.end)
}

/// Whether `needle` occurs in `hay`: a search for its second byte (`u` in `"usage"`, rarer in
/// JSON than the quote), then a compare around it.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&second) = needle.get(1) else {
        return needle.first().is_none_or(|first| hay.contains(first));
    };
    let mut at = 1usize;
    while let Some(i) = hay
        .get(at..)
        .and_then(|h| h.iter().position(|&b| b == second))
    {
        let start = at + i - 1;
        if hay.get(start..start + needle.len()) == Some(needle) {
            return true;
        }
        at += i + 1;
    }
    false
}

/// Removes what `include_usage` added from a stream, chunk by chunk. See the module docs.
#[derive(Debug)]
pub struct AddedUsageRemover {
    framer: SseFramer,
    dropped: u32,
    edited: u32,
}

impl AddedUsageRemover {
    /// A remover holding back at most `max_event_bytes` of an unfinished event.
    pub fn new(max_event_bytes: usize) -> Self {
        AddedUsageRemover {
            framer: SseFramer::new(max_event_bytes),
            dropped: 0,
            edited: 0,
        }
    }

    /// Whether `chunk`, pushed now, would pass as it is and leave nothing held: the common
    /// chunk, whole events (it ends with a blank line, and nothing was held before it) without
    /// the bytes `"usage"`. Every piece the framer would cut of it passes unchanged, so it is
    /// not framed at all ([`push`](Self::push) copies it; a caller may skip `push` instead).
    pub fn passes_unchanged(&self, chunk: &[u8]) -> bool {
        self.framer.at_event_start()
            && (chunk.ends_with(b"\n\n") || chunk.ends_with(b"\n\r\n"))
            && !contains(chunk, b"\"usage\"")
    }

    /// Takes the next chunk of the upstream's stream; appends to `out` what the client gets now.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.passes_unchanged(chunk) {
            out.extend_from_slice(chunk);
            return;
        }
        let (dropped, edited) = (&mut self.dropped, &mut self.edited);
        self.framer
            .push(chunk, &mut |piece| emit(piece, out, dropped, edited));
    }

    /// The stream ended: appends to `out` what is still held (an unfinished last event), as it
    /// is.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let (dropped, edited) = (&mut self.dropped, &mut self.edited);
        self.framer
            .finish(&mut |piece| emit(piece, out, dropped, edited));
    }

    /// Bytes held back, waiting for the rest of their event.
    pub fn held(&self) -> usize {
        self.framer.held()
    }

    /// Events left out so far.
    pub fn dropped_events(&self) -> u32 {
        self.dropped
    }

    /// Events passed on without their `usage` member so far.
    pub fn edited_events(&self) -> u32 {
        self.edited
    }
}

fn emit(piece: Piece<'_>, out: &mut Vec<u8>, dropped: &mut u32, edited: &mut u32) {
    match piece {
        Piece::Raw(bytes) => out.extend_from_slice(bytes),
        Piece::Event(event) => match edit_event(event) {
            Edit::Keep => out.extend_from_slice(event),
            Edit::Drop => *dropped = dropped.saturating_add(1),
            Edit::Cut(range) => {
                *edited = edited.saturating_add(1);
                out.extend_from_slice(event.get(..range.start).unwrap_or(&[]));
                out.extend_from_slice(event.get(range.end..).unwrap_or(&[]));
            }
        },
    }
}

/// The top-level members of `json` if it is one well-formed JSON object (else `None`).
fn object_members(json: &[u8]) -> Option<Vec<Member>> {
    serde_json::from_slice::<IgnoredAny>(json).ok()?;
    json_text::object_members(json)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;

    use super::*;
    use crate::llm::sse::{SseLimits, SseScanner};
    use crate::llm::usage::Usage;

    const ID: &str =
        r#""id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m""#;

    /// A chat stream as OpenAI sends it, with or without `include_usage`.
    fn chat(include_usage: bool, nl: &str) -> String {
        let null = if include_usage {
            r#","usage":null"#
        } else {
            ""
        };
        let mut s = String::new();
        for delta in [
            r#"{"role":"assistant","content":""}"#,
            r#"{"content":"Hel"}"#,
            r#"{"content":"lo \"x\" ünï"}"#,
            "{}",
        ] {
            s += &format!(
                r#"data: {{{ID},"choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]{null}}}"#
            );
            s += nl;
            s += nl;
        }
        if include_usage {
            s += &format!(
                r#"data: {{{ID},"choices":[],"usage":{{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}}}"#
            );
            s += nl;
            s += nl;
        }
        s += "data: [DONE]";
        s += nl;
        s += nl;
        s
    }

    fn remove(max: usize, chunks: &[&[u8]]) -> (Vec<u8>, AddedUsageRemover) {
        let mut r = AddedUsageRemover::new(max);
        let mut out = Vec::new();
        for c in chunks {
            r.push(c, &mut out);
            assert!(r.held() <= max);
        }
        r.finish(&mut out);
        (out, r)
    }

    /// The recorded OpenAI stream (fixtures/llm/openai-chat.sse) loses exactly what the option
    /// added: the `,"usage":null` of each chunk and the usage chunk, nothing else, at every split.
    #[test]
    fn a_recorded_chat_stream_loses_exactly_what_the_option_added() {
        let upstream = include_str!("../../../fixtures/llm/openai-chat.sse");
        let usage_chunk = upstream
            .split_inclusive("\n\n")
            .find(|event| event.contains(r#""choices":[],"usage":{"#))
            .unwrap();
        let want = upstream
            .replace(usage_chunk, "")
            .replace(r#","usage":null"#, "");
        assert_eq!(want.matches("data: ").count(), 5);
        let bytes = upstream.as_bytes();
        for cut in 0..=bytes.len() {
            let (out, r) = remove(4096, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {cut}");
            assert_eq!((r.dropped_events(), r.edited_events()), (1, 4));
        }
    }

    /// The client gets exactly the stream without the option, wherever the upstream's stream
    /// is split, and the scanner still reads the usage from the upstream's bytes.
    #[test]
    fn the_client_gets_the_stream_it_asked_for_at_every_split() {
        for nl in ["\n", "\r\n", "\r"] {
            let upstream = chat(true, nl);
            let want = chat(false, nl);
            let bytes = upstream.as_bytes();
            let (whole, r) = remove(1 << 16, &[bytes]);
            assert_eq!(String::from_utf8_lossy(&whole), want, "{nl:?}");
            assert_eq!((r.dropped_events(), r.edited_events()), (1, 4));
            for cut in 0..=bytes.len() {
                let (a, b) = bytes.split_at(cut);
                assert_eq!(
                    remove(1 << 16, &[a, b]).0,
                    want.as_bytes(),
                    "cut at {cut} {nl:?}"
                );
            }
            for step in [1, 2, 3, 7, 64] {
                let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
                assert_eq!(
                    remove(1 << 16, &pieces).0,
                    want.as_bytes(),
                    "chunks of {step}"
                );
            }
            let mut scanner = SseScanner::new(SseLimits::default());
            for piece in bytes.chunks(5) {
                scanner.feed(piece);
            }
            scanner.finish();
            assert_eq!(
                scanner.usage(),
                Some(Usage {
                    input: 9,
                    output: 4,
                    ..Usage::default()
                })
            );
        }
    }

    #[test]
    fn a_stream_that_asked_for_nothing_extra_is_unchanged() {
        let plain = chat(false, "\n");
        assert_eq!(remove(1 << 16, &[plain.as_bytes()]).0, plain.as_bytes());
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n: ping\n\n";
        // Not a chat chunk, but the rule is the same: a usage with no choices goes. The filter
        // only uses the remover on OpenAI streams it changed.
        assert_eq!(
            edit_event(anthropic.split("\n\n").next().unwrap().as_bytes()),
            Edit::Keep
        );
    }

    #[test]
    fn what_is_dropped_and_what_is_cut() {
        let e = |s: &str| edit_event(s.as_bytes());
        assert_eq!(
            e("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n"),
            Edit::Drop
        );
        assert_eq!(e("data: {\"choices\":[ ],\"usage\":{}}\n\n"), Edit::Drop);
        assert_eq!(e("data: {\"usage\":{\"prompt_tokens\":1}}\n\n"), Edit::Drop);
        // Azure's prompt-filter chunk has no choices either, but its usage is null: kept, edited.
        assert_eq!(
            e("data: {\"choices\":[],\"usage\":null}\n\n"),
            Edit::Cut(19..32)
        );
        // Usage on a chunk with choices (vLLM's continuous usage): the member goes.
        let s = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"a\":1}}\n\n";
        let Edit::Cut(r) = e(s) else { panic!() };
        assert_eq!(
            format!("{}{}", &s[..r.start], &s[r.end..]),
            "data: {\"choices\":[{\"delta\":{}}]}\n\n"
        );
        // First, only, spaced members.
        for (input, output) in [
            (
                "data:{\"usage\":null,\"choices\":[1]}\n\n",
                "data:{\"choices\":[1]}\n\n",
            ),
            ("data: {\"usage\" : null}\n\n", "data: {}\n\n"),
            (
                "data: { \"a\": 1 , \"usage\": null }\r\n\r\n",
                "data: { \"a\": 1 }\r\n\r\n",
            ),
            (
                "event: x\nid: 3\ndata: {\"a\":\"usage\",\"usage\":null}\n\n",
                "event: x\nid: 3\ndata: {\"a\":\"usage\"}\n\n",
            ),
        ] {
            let Edit::Cut(r) = e(input) else {
                panic!("{input}")
            };
            assert_eq!(format!("{}{}", &input[..r.start], &input[r.end..]), output);
        }
        // Left alone: not JSON, [DONE], no usage, a nested usage, two usage keys, an escaped key,
        // comments, a truncated object.
        for input in [
            "data: [DONE]\n\n",
            "data: {\"choices\":[]}\n\n",
            "data: {\"x\":{\"usage\":null}}\n\n",
            "data: {\"usage\":null,\"usage\":null}\n\n",
            "data: {\"us\\u0061ge\":null}\n\n",
            ": usage\n\n",
            "data: {\"usage\":null\n\n",
            "datax: {\"usage\":null}\n\n",
        ] {
            assert_eq!(e(input), Edit::Keep, "{input}");
        }
        // Several data lines: droppable, not editable.
        assert_eq!(
            e("data: {\"choices\":[],\ndata: \"usage\":{\"a\":1}}\n\n"),
            Edit::Drop
        );
        assert_eq!(
            e("data: {\"choices\":[1],\ndata: \"usage\":null}\n\n"),
            Edit::Keep
        );
    }

    /// Events without the bytes `"usage"` are kept without a parse; the ones that have them
    /// anywhere (a key, a string, a key spelled otherwise) are still decided by their JSON.
    #[test]
    fn only_an_event_naming_usage_is_read() {
        assert!(!contains(b"data: {\"choices\":[]}\n\n", b"\"usage\""));
        assert!(contains(b"\"usage\"", b"\"usage\""));
        assert!(contains(b"x\"\"usage\"", b"\"usage\""));
        assert!(!contains(b"\"usage", b"\"usage\""));
        assert!(contains(b"abc", b""));
        for (event, edit) in [
            // No `"usage"`: kept, even with no choices and usage-like words.
            (
                &b"data: {\"choices\":[],\"usages\":{\"prompt_tokens\":1}}\n\n"[..],
                Edit::Keep,
            ),
            // A key spelled with an escape is not matched, with the scan as before it.
            (
                b"data: {\"us\\u0061ge\":{\"prompt_tokens\":1}}\n\n",
                Edit::Keep,
            ),
            // `"usage"` as a string value, not a key: read, and kept.
            (b"data: {\"choices\":[],\"k\":\"usage\"}\n\n", Edit::Keep),
            // Split over two data lines: read, and dropped.
            (
                b"data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1}}\n\n",
                Edit::Drop,
            ),
            (
                b"data: {\"usage\":null,\"choices\":[1]}\n\n",
                Edit::Cut(7..20),
            ),
        ] {
            assert_eq!(
                edit_event(event),
                edit,
                "{}",
                String::from_utf8_lossy(event)
            );
        }
    }

    #[test]
    fn an_event_over_the_bound_passes_unchanged_and_nothing_is_lost() {
        let big = "x".repeat(300);
        let stream = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{big}\"}}}}],\"usage\":null}}\n\n\
             data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}],\"usage\":null}}\n\n\
             data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1}}}}\n\ndata: [DONE]\n\n"
        );
        let want = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{big}\"}}}}],\"usage\":null}}\n\n\
             data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]}}\n\ndata: [DONE]\n\n"
        );
        let bytes = stream.as_bytes();
        for step in [1, 5, 64, 1000] {
            let pieces: Vec<&[u8]> = bytes.chunks(step).collect();
            assert_eq!(
                String::from_utf8(remove(200, &pieces).0).unwrap(),
                want,
                "{step}"
            );
        }
    }

    #[test]
    fn a_stream_cut_inside_an_event_ends_with_what_arrived() {
        let stream = chat(true, "\n");
        let cut = stream.find("\"choices\":[]").unwrap();
        let (out, _) = remove(1 << 16, &[&stream.as_bytes()[..cut]]);
        let want = chat(false, "\n");
        let kept = want.find("data: [DONE]").unwrap();
        let tail = &stream[stream[..cut].rfind("data: ").unwrap()..cut];
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}{tail}", &want[..kept])
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Whatever the bytes and however they are split, the client gets the same output
            /// (and `remove` checks the remover never holds more than its bound).
            #[test]
            fn output_does_not_depend_on_the_split(
                lines in proptest::collection::vec(
                    prop_oneof![
                        Just(String::from("")),
                        Just(String::from("data: [DONE]")),
                        Just(String::from(": ping")),
                        Just(String::from(r#"data: {"choices":[],"usage":{"prompt_tokens":1}}"#)),
                        Just(String::from(r#"data: {"choices":[{"delta":{"content":"a"}}],"usage":null}"#)),
                        "data: \\{\"(usage|choices|x)\":[ -~]{0,40}",
                        "[a-z]{0,6}:?[ -~]{0,20}",
                    ],
                    0..30,
                ),
                sep in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
                max in 64usize..300,
            ) {
                let stream = lines.join(sep);
                let bytes = stream.as_bytes();
                let pieces = crate::llm::testing::cut(bytes, &cuts);
                let (whole, _) = remove(max, &[bytes]);
                let (split, _) = remove(max, &pieces);
                prop_assert_eq!(&split, &whole);
                prop_assert!(whole.len() <= bytes.len());
            }

            /// Chunks of whole events pass unframed when they hold no `"usage"`: the client gets
            /// what the framer gives byte by byte (which never takes that path).
            #[test]
            fn whole_events_pass_as_framing_would_pass_them(
                events in proptest::collection::vec(
                    prop_oneof![
                        Just(String::from("data: [DONE]")),
                        Just(String::from(": ping")),
                        Just(String::from(r#"data: {"choices":[],"usage":{"prompt_tokens":1}}"#)),
                        Just(String::from(r#"data: {"choices":[{"delta":{"content":"a"}}],"usage":null}"#)),
                        Just(String::from(r#"data: {"choices":[{"delta":{"content":"
        "}}]}"#)),
                        "data: \\{\"(usage|choices|x)\":[ -~]{0,40}",
                        "[a-z]{0,6}:?[ -~\r\n]{0,20}",
                    ],
                    0..12,
                ),
                sep in prop_oneof![Just("\n\n"), Just("\r\n\r\n"), Just("\r\r"), Just("\n")],
                max in 64usize..300,
            ) {
                let mut stream = String::new();
                for e in &events {
                    stream += e;
                    stream += sep;
                }
                let bytes = stream.as_bytes();
                let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
                let owned: Vec<String> = events.iter().map(|e| format!("{e}{sep}")).collect();
                let per_event: Vec<&[u8]> = owned.iter().map(|e| e.as_bytes()).collect();
                let (want, _) = remove(max, &bytewise);
                prop_assert_eq!(&remove(max, &[bytes]).0, &want);
                prop_assert_eq!(&remove(max, &per_event).0, &want);
            }
        }
    }
}
