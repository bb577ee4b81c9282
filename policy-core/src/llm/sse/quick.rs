//! The common stream events read by one hand-written pass over their bytes instead of serde:
//! OpenAI chat chunks (`choices[].delta` text, `"usage": null`), Anthropic and Responses deltas
//! (`type`, `delta`), Anthropic's `message_stop`, Ollama's NDJSON objects (`message.content` or
//! `response` text, `done`) without their final counts. A streamed answer is one such event per
//! token, so this is what a stream costs per chunk: the derived serde reader of
//! [`super::event`] spends about fifty times the bytes' count on one of them, this pass a few
//! operators a byte.
//!
//! It is an accelerator, never a second reader: it answers only for events it can read exactly
//! as serde would, and `None` for anything else, which [`super::event::read_event`] then reads
//! with serde as before. It is stricter than `serde_json` everywhere (an escaped key, a
//! surrogate escape, a number with an exponent or more than 18 digits, nesting deeper than
//! [`MAX_DEPTH`], a duplicated key it reads, a field of any other API's schema, a value of a
//! type the lenient readers would map to nothing): such events go to serde. The tests check
//! that whenever it answers, serde's answer is the same.

use super::event::{EventSummary, EventType};

/// Deeper nesting is left to serde (whose own limit is 128).
const MAX_DEPTH: u32 = 32;

/// Reads `data` (one event's data) if it is a JSON object of the shapes above; `None` when
/// serde must read it.
pub(super) fn read(data: &[u8]) -> Option<EventSummary> {
    let mut p = Parser { s: data, i: 0 };
    p.ws();
    let mut kind = EventType::Other;
    let (mut choices, mut delta, mut other) = (0u64, 0u64, 0u64);
    let mut done = false;
    let mut seen = 0u8;
    p.object(|p, key| {
        let bit = match key {
            b"type" => 1,
            b"usage" => 2,
            b"choices" => 4,
            b"delta" => 8,
            b"message" => 16,
            b"response" => 32,
            b"done" => 64,
            // Read by serde only: Gemini's fields and Ollama's counts, whose values matter.
            b"usageMetadata" | b"candidates" | b"prompt_eval_count" | b"eval_count" => return None,
            _ => return p.skip(0),
        };
        if seen & bit != 0 {
            return None; // a duplicated field: serde calls the event malformed
        }
        seen |= bit;
        match bit {
            1 => kind = event_type(p.string()?)?,
            2 => p.literal(b"null")?,
            4 => choices = p.choices()?,
            8 => delta = p.delta()?,
            16 => other = other.saturating_add(p.message()?),
            // Ollama generate's text (a Responses `response` object is left to serde).
            32 => other = other.saturating_add(p.string()?.decoded_len),
            _ => {
                done = p.peek()? == b't';
                p.literal(if done { b"true" } else { b"false" })?;
            }
        }
        Some(())
    })?;
    p.ws();
    if p.i != data.len() {
        return None;
    }
    let text = if kind == EventType::Audio {
        choices
    } else {
        choices.saturating_add(delta)
    };
    Some(EventSummary {
        usage: None,
        bad_usage: false,
        text_bytes: text.saturating_add(other),
        terminal: kind.is_terminal() || done,
    })
}

/// The event type a `type` string names, as [`EventType`]'s serde reader decides it (only for
/// a string without escapes).
fn event_type(raw: Raw<'_>) -> Option<EventType> {
    if raw.escaped {
        return None;
    }
    let v = core::str::from_utf8(raw.bytes).ok()?;
    Some(match v {
        "message_stop" => EventType::MessageStop,
        "response.completed" | "response.incomplete" | "response.failed" => EventType::ResponseDone,
        audio if audio.contains("audio") => EventType::Audio,
        _ => EventType::Other,
    })
}

/// A string's raw bytes between its quotes, valid JSON text (escapes checked, UTF-8 checked),
/// and the length of what it decodes to.
#[derive(Clone, Copy)]
struct Raw<'a> {
    bytes: &'a [u8],
    escaped: bool,
    decoded_len: u64,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.s.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// An object (at `depth`), handing each key (raw, unescaped only) to `member`, which reads
    /// its value. Whitespace around every token, no trailing comma, as serde_json reads it.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            if key.escaped {
                return None;
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            member(self, key.bytes)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, calling `element` for each element.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            element(self)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string, checked: no control character, known escapes only (no surrogate `\u`), valid
    /// UTF-8.
    fn string(&mut self) -> Option<Raw<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        let mut decoded_len = 0u64;
        let mut plain_from = start;
        loop {
            // The plain run up to the next quote, escape or control byte, in one pass.
            let run = self
                .s
                .get(self.i..)?
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            self.i += run;
            let b = self.peek()?;
            match b {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    decoded_len += u64::try_from(self.i - plain_from).ok()?;
                    let e = self.s.get(self.i + 1).copied()?;
                    self.i += 2;
                    decoded_len += match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 1,
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4)?;
                            let mut code = 0u32;
                            for &h in hex {
                                code = code * 16 + char::from(h).to_digit(16)?;
                            }
                            self.i += 4;
                            let c = char::from_u32(code)?; // `None` for a surrogate
                            c.len_utf8() as u64
                        }
                        _ => return None,
                    };
                    plain_from = self.i;
                }
                0..=0x1F => return None,
                _ => self.i += 1,
            }
        }
        let bytes = self.s.get(start..self.i)?;
        decoded_len += u64::try_from(self.i - plain_from).ok()?;
        self.i += 1;
        if !bytes.is_ascii() {
            core::str::from_utf8(bytes).ok()?;
        }
        Some(Raw {
            bytes,
            escaped,
            decoded_len,
        })
    }

    /// A number serde_json reads without question: `-?(0|[1-9][0-9]*)(.[0-9]+)?`, at most 18
    /// digits.
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        let digits = |p: &mut Self| {
            let start = p.i;
            while let Some(b'0'..=b'9') = p.peek() {
                p.i += 1;
            }
            p.i - start
        };
        let int_start = self.i;
        let int = digits(self);
        if int == 0 || (int > 1 && self.s.get(int_start) == Some(&b'0')) {
            return None;
        }
        let mut total = int;
        if self.eat(b'.').is_some() {
            let frac = digits(self);
            if frac == 0 {
                return None;
            }
            total += frac;
        }
        if total > 18 || matches!(self.peek(), Some(b'e' | b'E')) {
            return None;
        }
        Some(())
    }

    /// Any value, checked and skipped.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(|p, _| p.skip(depth + 1)),
            b'[' => self.array(|p| p.skip(depth + 1)),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// A text field read by `TextLen`: a string's decoded length, or `null`; any other type
    /// is left to serde.
    fn text(&mut self) -> Option<u64> {
        match self.peek()? {
            b'"' => self.string().map(|r| r.decoded_len),
            b'n' => self.literal(b"null").map(|_| 0),
            _ => None,
        }
    }

    /// `choices`: an array of objects, each with an optional `delta` (an object or `null`) and
    /// `text`; the text they hold, summed.
    fn choices(&mut self) -> Option<u64> {
        let mut sum = 0u64;
        self.array(|p| {
            let mut seen = 0u8;
            p.object(|p, key| {
                let bit = match key {
                    b"delta" => 1,
                    b"text" => 2,
                    _ => return p.skip(2),
                };
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                let n = if bit == 2 {
                    p.text()?
                } else if p.peek()? == b'n' {
                    p.literal(b"null").map(|_| 0)?
                } else {
                    p.chat_delta()?
                };
                sum = sum.saturating_add(n);
                Some(())
            })
        })?;
        Some(sum)
    }

    /// A chat `delta` object: its `content`, `reasoning_content`, `reasoning` and `refusal`
    /// (tool calls are left to serde).
    fn chat_delta(&mut self) -> Option<u64> {
        let mut sum = 0u64;
        let mut seen = 0u8;
        self.object(|p, key| {
            let bit = match key {
                b"content" => 1,
                b"reasoning_content" => 2,
                b"reasoning" => 4,
                b"refusal" => 8,
                b"tool_calls" => return None,
                _ => return p.skip(3),
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            sum = sum.saturating_add(p.text()?);
            Some(())
        })?;
        Some(sum)
    }

    /// Ollama chat's `message` object: its `content` (a `usage` in it is left to serde).
    fn message(&mut self) -> Option<u64> {
        let mut text = 0u64;
        let mut seen = 0u8;
        self.object(|p, key| {
            let bit = match key {
                b"content" => 1,
                b"usage" => 2,
                _ => return p.skip(2),
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            if bit == 1 {
                text = p.text()?;
            } else {
                p.literal(b"null")?;
            }
            Some(())
        })?;
        Some(text)
    }

    /// A top-level `delta`: a Responses delta string, or an Anthropic delta object (`text`,
    /// `thinking`, `partial_json`).
    fn delta(&mut self) -> Option<u64> {
        match self.peek()? {
            b'"' => self.string().map(|r| r.decoded_len),
            b'{' => {
                let mut sum = 0u64;
                let mut seen = 0u8;
                self.object(|p, key| {
                    let bit = match key {
                        b"text" => 1,
                        b"thinking" => 2,
                        b"partial_json" => 4,
                        _ => return p.skip(2),
                    };
                    if seen & bit != 0 {
                        return None;
                    }
                    seen |= bit;
                    sum = sum.saturating_add(p.text()?);
                    Some(())
                })?;
                Some(sum)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;

    use super::super::event::{read_json_event, EventOutcome};
    use super::*;

    /// Whenever the quick pass answers, serde's answer is the same.
    fn agrees(data: &[u8]) -> bool {
        let Some(quick) = read(data) else {
            return true;
        };
        match read_json_event(data) {
            EventOutcome::Read(slow) => {
                assert_eq!(quick, slow, "{}", String::from_utf8_lossy(data));
            }
            other => panic!("{other:?} for {}", String::from_utf8_lossy(data)),
        }
        true
    }

    /// The `data` of every event of the recorded streams.
    fn recorded_events() -> Vec<String> {
        let mut events = Vec::new();
        for sse in [
            include_str!("../../../../fixtures/llm/openai-chat.sse"),
            include_str!("../../../../fixtures/llm/openai-responses.sse"),
            include_str!("../../../../fixtures/llm/anthropic-messages.sse"),
            include_str!("../../../../fixtures/llm/gemini-stream.sse"),
            include_str!("../../../../fixtures/llm/vllm-chat.sse"),
        ] {
            for line in sse.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    events.push(String::from(data.trim_start()));
                }
            }
        }
        for ndjson in [
            include_str!("../../../../fixtures/llm/ollama-chat.ndjson"),
            include_str!("../../../../fixtures/llm/ollama-generate.ndjson"),
        ] {
            events.extend(ndjson.lines().map(String::from));
        }
        events
    }

    #[test]
    fn the_recorded_events_read_the_same_and_the_content_ones_quickly() {
        let events = recorded_events();
        assert!(events.len() > 30, "{}", events.len());
        let mut quick = 0;
        for data in &events {
            assert!(agrees(data.as_bytes()));
            quick += usize::from(read(data.as_bytes()).is_some());
            // Every byte cut off the end: never an answer serde would not give.
            for end in 0..data.len() {
                assert!(agrees(&data.as_bytes()[..end]));
            }
        }
        assert!(quick >= 15, "{quick} of {} read quickly", events.len());
    }

    #[test]
    fn the_common_deltas_are_read_quickly_with_their_text() {
        let text = |data: &str| read(data.as_bytes()).map(|s| (s.text_bytes, s.terminal));
        let chat = r#"{"id":"c","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"w3 "},"logprobs":null,"finish_reason":null}],"usage":null}"#;
        assert_eq!(text(chat), Some((3, false)));
        assert_eq!(
            text(r#"{"choices":[{"index":0,"delta":{"content":"h\u00e9\n\"x\""}}]}"#),
            Some((7, false))
        );
        assert_eq!(
            text(
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi ü"}}"#
            ),
            Some((5, false))
        );
        assert_eq!(
            text(
                r#"{"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":"abc","sequence_number":4}"#
            ),
            Some((3, false))
        );
        assert_eq!(
            text(r#"{"type":"response.output_audio.delta","delta":"AAAA"}"#),
            Some((0, false))
        );
        assert_eq!(text(r#"{"type":"message_stop"}"#), Some((0, true)));
        assert_eq!(text(r#" { "choices" : [ ] } "#), Some((0, false)));
        assert_eq!(
            text(
                r#"{"model":"llama3.2","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"w3 "},"done":false}"#
            ),
            Some((3, false))
        );
        assert_eq!(
            text(r#"{"model":"llama3.2","response":"ab","done":true,"done_reason":"stop"}"#),
            Some((2, true))
        );
    }

    #[test]
    fn what_it_cannot_read_exactly_is_left_to_serde() {
        for data in [
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"ch\u006fices":[]}"#,
            r#"{"choices":[{"delta":{"content":"\ud83d\ude00"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#,
            r#"{"choices":null}"#,
            r#"{"choices":[1]}"#,
            r#"{"x":1e5,"choices":[]}"#,
            r#"{"x":1234567890123456789,"choices":[]}"#,
            r#"{"x":01,"choices":[]}"#,
            r#"{"choices":[],}"#,
            r#"{"choices":[]} x"#,
            r#"[{"choices":[]}]"#,
            r#"{"type":"message_st\u006fp"}"#,
            r#"{"message":{"usage":{"input_tokens":1}},"delta":"a"}"#,
            r#"{"done":null,"choices":[]}"#,
            r#"{"done":false,"eval_count":3}"#,
            r#"{"message":null}"#,
            r#"{"response":{"usage":null}}"#,
            r#"{"candidates":[]}"#,
            "{\"x\":\"a\u{1}\",\"choices\":[]}",
            "{\"delta\":\"\\x\"}",
        ] {
            assert!(read(data.as_bytes()).is_none(), "{data}");
            assert!(agrees(data.as_bytes()));
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert!(read(deep.as_bytes()).is_none());
        assert!(read(b"{\"x\":\"\xff\",\"choices\":[]}").is_none());
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use alloc::vec;
        use proptest::prelude::*;

        /// JSON-ish text from the pieces stream events are made of, valid or not.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                " ",
                "\n",
                "\"",
                "null",
                "true",
                "fals",
                "0",
                "-1",
                "12.5",
                "1e3",
                "\"choices\"",
                "\"delta\"",
                "\"content\"",
                "\"text\"",
                "\"type\"",
                "\"usage\"",
                "\"message_stop\"",
                "\"response.completed\"",
                "\"audio\"",
                "\"thinking\"",
                "\"refusal\"",
                "\"x\"",
                "\"\\u00e9\"",
                "\"\\n\"",
                "\"\\ud800\"",
                "\"ü\"",
                "\\",
                "\"tool_calls\"",
                "\"message\"",
                "\"done\"",
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            #[test]
            fn any_answer_is_serdes(pieces in proptest::collection::vec(piece(), 0..40)) {
                let data: String = pieces.concat();
                prop_assert!(agrees(data.as_bytes()));
            }

            #[test]
            fn any_chat_chunk_reads_the_same(
                content in "[ -~é\u{1F600}]{0,12}",
                escaped in "(\\\\[nrt\"\\\\/]|\\\\u00[0-7][0-9a-f]|[a-z]){0,6}",
                extra in prop::sample::select(vec!["", r#","usage":null"#, r#","logprobs":null"#, r#","x":[{"y":[1,2.5,true]}]"#]),
                field in prop::sample::select(vec!["content", "reasoning_content", "reasoning", "refusal", "role"]),
            ) {
                let content = content.replace(['\\', '"'], "");
                let data = format!(
                    r#"{{"id":"c","choices":[{{"index":0,"delta":{{"{field}":"{content}{escaped}"}},"finish_reason":null}}]{extra}}}"#
                );
                prop_assert!(read(data.as_bytes()).is_some(), "{}", data);
                prop_assert!(agrees(data.as_bytes()));
            }
        }
    }
}
