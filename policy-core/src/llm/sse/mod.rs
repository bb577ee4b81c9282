//! An incremental scanner for streamed (Server-Sent Events) LLM responses.
//!
//! The filter hands every response body chunk to [`SseScanner::feed`] and passes the chunk on
//! unchanged: the scanner only observes, so it never holds a stream back. Chunks may be split
//! anywhere (inside a line, between `\r` and `\n`, inside a UTF-8 character); the result does
//! not depend on where.
//!
//! What it tracks, per API:
//! - **OpenAI chat / completions**: the chunk carrying `usage` (sent last when the request set
//!   `stream_options.include_usage`, see [`ensure_stream_usage`](super::rewrite::ensure_stream_usage));
//!   completion is `data: [DONE]`.
//! - **OpenAI Responses**: `response.completed` (or the other terminal events,
//!   `response.incomplete` and `response.failed`) carrying `response.usage`.
//! - **Anthropic messages**: `message_start` carries `message.usage` (input and cache counts),
//!   each `message_delta` carries the cumulative `usage.output_tokens`; completion is
//!   `message_stop`.
//!
//! For a stream cut short before its usage arrived, the scanner estimates the output tokens
//! received so far from the generated text in the deltas (see
//! [`SseScanner::estimated_output_tokens`]), so an aborted stream is charged for what it got.
//!
//! Memory is bounded by [`SseLimits`]: a line or an event larger than the limit is not buffered
//! whole and is counted ([`SseScanner::oversize_events`]). Only its first
//! [`OVERSIZE_HEAD_BYTES`] (where every API names the event's type) and its last
//! [`OVERSIZE_TAIL_BYTES`] (where every API puts `usage`, after the content) are kept, and read
//! the way a large JSON body is (see [`usage_from_tail`](super::usage_from_tail)): the usage of
//! a Responses `response.completed` that repeats a long output, or of any oversized final
//! event, still counts. Its text is not estimated.
//!
//! This module is the framing (bytes → lines → events, within the bounds; [`frame`] cuts whole
//! events for code that rewrites them); what an event's data
//! says is read in `event` (the envelope all three APIs share), `chat` (OpenAI choices) and
//! `delta` (Anthropic and Responses deltas). The transcripts its tests replay are the files
//! in `fixtures/llm/` at the repository's root.

use alloc::vec::Vec;

use super::eventstream::EventStreamDecoder;
use super::json_array::ArrayLines;
use super::request::estimate_tokens;
use super::usage::{RawUsage, Usage};
use event::{read_event, read_oversize_event, EventOutcome};

mod bedrock;
mod chat;
mod delta;
mod event;
pub mod frame;
mod quick;
#[cfg(test)]
mod tests;

/// Bytes kept of the start of an oversized event's data: enough for its `type`.
pub const OVERSIZE_HEAD_BYTES: usize = 128;
/// Bytes kept of the end of an oversized event's data: enough for its `usage` and what follows
/// it (a Responses `response.completed` ends with `usage`, `user`, `metadata`).
pub const OVERSIZE_TAIL_BYTES: usize = 8 * 1024;

/// Memory bounds for an [`SseScanner`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseLimits {
    max_event_bytes: usize,
}

impl SseLimits {
    /// The default bound on one line and on one event's data: 1 MiB. Chat and message stream
    /// events are a few hundred bytes; the largest ordinary event is the Responses API's
    /// `response.completed`, which repeats the whole generated output, so the bound must
    /// exceed the longest response whose usage should be read exactly.
    pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
    /// The smallest bound accepted; smaller values are raised to it so that a line's field
    /// name is always seen even when its value is dropped.
    pub const MIN_MAX_EVENT_BYTES: usize = 64;

    /// Bounds one line, and one event's accumulated `data`, to `max_event_bytes` bytes (at
    /// least [`MIN_MAX_EVENT_BYTES`](Self::MIN_MAX_EVENT_BYTES)). A scanner holds at most
    /// about twice this.
    pub fn new(max_event_bytes: usize) -> Self {
        SseLimits {
            max_event_bytes: max_event_bytes.max(Self::MIN_MAX_EVENT_BYTES),
        }
    }

    /// The bound on one line and on one event's data, in bytes.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }
}

impl Default for SseLimits {
    fn default() -> Self {
        SseLimits::new(Self::DEFAULT_MAX_EVENT_BYTES)
    }
}

/// How a stream is cut into events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events: `data:` lines, an event ends at a blank line.
    #[default]
    Sse,
    /// Newline-delimited JSON (Ollama's streams): every non-blank line is one event's data.
    Ndjson,
    /// A streamed JSON array (Gemini's `:streamGenerateContent` without `alt=sse`): every
    /// element is one event's data.
    JsonArray,
    /// AWS's binary event stream (`application/vnd.amazon.eventstream`, Bedrock's
    /// ConverseStream and InvokeModelWithResponseStream): every message is one event, read by
    /// its `:event-type` (see [`crate::llm::eventstream`]). A message that fails its CRC or
    /// cannot be read makes the stream [untrusted](SseScanner::untrusted).
    EventStream,
}

/// Watches an SSE response body go by and keeps what the budget needs: the usage reported so
/// far, whether the stream completed, and an estimate of the output received.
#[derive(Debug)]
pub struct SseScanner {
    limits: SseLimits,
    framing: Framing,
    /// For [`Framing::JsonArray`]: turns the array into one element a line.
    array: Option<ArrayLines>,
    /// For [`Framing::EventStream`]: the binary framing's decoder.
    eventstream: Option<EventStreamDecoder>,
    /// A message of an event stream could not be trusted: nothing more is read from it.
    untrusted: bool,
    /// The start of a line whose end has not arrived yet (empty when none).
    line: Vec<u8>,
    /// The current line outgrew the limit: its bytes are dropped up to its end.
    discarding_line: bool,
    /// The previous chunk ended in `\r`: a `\n` opening the next one ends no further line.
    pending_cr: bool,
    /// No line has ended yet, so a leading byte-order mark is still to be stripped.
    first_line: bool,
    /// The current event's `data`, lines joined with `\n`.
    data: Vec<u8>,
    /// The current event has at least one `data` field (possibly empty).
    has_data: bool,
    /// The current event's data outgrew the limit: only its head and tail are kept.
    event_oversize: bool,
    /// The line being discarded is a `data` line: its bytes go to the oversized event's tail.
    discarding_data: bool,
    /// The first [`OVERSIZE_HEAD_BYTES`] of an oversized event's data.
    over_head: Vec<u8>,
    /// The last bytes of an oversized event's data (between one and two times
    /// [`OVERSIZE_TAIL_BYTES`], so that trimming is rare).
    over_tail: Vec<u8>,
    /// [`finish`](SseScanner::finish) was called; later input is ignored.
    finished: bool,
    usage: RawUsage,
    completed: bool,
    output_text_bytes: u64,
    events: u64,
    malformed: u32,
    oversize: u32,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseScanner {
    /// A scanner for one response stream.
    pub fn new(limits: SseLimits) -> Self {
        SseScanner::with_framing(limits, Framing::Sse)
    }

    /// A scanner for one response stream framed as `framing`. The events' data is read the
    /// same way whatever the framing; NDJSON lines and array elements are bounded by `limits`
    /// as SSE events are.
    pub fn with_framing(limits: SseLimits, framing: Framing) -> Self {
        SseScanner {
            limits,
            framing,
            array: (framing == Framing::JsonArray).then(ArrayLines::default),
            eventstream: (framing == Framing::EventStream)
                .then(|| EventStreamDecoder::new(limits.max_event_bytes)),
            untrusted: false,
            line: Vec::new(),
            discarding_line: false,
            pending_cr: false,
            first_line: true,
            data: Vec::new(),
            has_data: false,
            event_oversize: false,
            discarding_data: false,
            over_head: Vec::new(),
            over_tail: Vec::new(),
            finished: false,
            usage: RawUsage::default(),
            completed: false,
            output_text_bytes: 0,
            events: 0,
            malformed: 0,
            oversize: 0,
        }
    }

    /// Observes the next chunk of the response body. Cost is linear in the chunk (plus one
    /// JSON parse of each complete event that can carry usage or generated text).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.finished || chunk.is_empty() {
            return;
        }
        if let Some(mut decoder) = self.eventstream.take() {
            let mut outcomes = Vec::new();
            let decoded = decoder.push(chunk, |m| outcomes.push(bedrock::read_message(&m)));
            for outcome in outcomes {
                self.events = self.events.saturating_add(1);
                self.apply(outcome);
            }
            if decoded.is_err() {
                self.distrust();
            }
            self.eventstream = Some(decoder);
        } else if let Some(mut array) = self.array.take() {
            let mut lines = Vec::with_capacity(chunk.len().saturating_add(1));
            array.push(chunk, &mut lines);
            self.array = Some(array);
            self.feed_lines(&lines);
        } else {
            self.feed_lines(chunk);
        }
    }

    fn feed_lines(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while let Some(eol) = find_eol(rest) {
            let Some((line, after)) = rest.split_at_checked(eol) else {
                return;
            };
            self.end_line(line);
            // `after` starts with the terminator found by `find_eol`.
            rest = match after {
                [b'\r', b'\n', tail @ ..] => tail,
                [b'\r'] => {
                    self.pending_cr = true;
                    &[]
                }
                [_, tail @ ..] => tail,
                [] => &[],
            };
        }
        self.partial_line(rest);
    }

    /// A message of an event stream failed its CRC or could not be read: the stream's usage is
    /// not believed (what it reported so far is dropped, and it never completes), so it is
    /// charged as a stream without usage (`on_missing_usage`, and at least what was received).
    fn distrust(&mut self) {
        self.untrusted = true;
        self.usage = RawUsage::default();
        self.completed = false;
    }

    /// Whether an event-stream message failed its CRC or could not be read (see
    /// [`Framing::EventStream`]). The bytes still reach the client unchanged.
    pub fn untrusted(&self) -> bool {
        self.untrusted
    }

    /// Marks the end of the stream. A last event without its closing blank line is still
    /// read (a browser would drop it, but its usage was sent and should count); further
    /// [`feed`](SseScanner::feed) calls are ignored. Calling it twice is harmless.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        if self.discarding_line || !self.line.is_empty() {
            self.end_line(&[]);
        }
        if self.has_data || self.event_oversize {
            self.dispatch();
        }
        self.finished = true;
    }

    /// The usage the stream has reported so far, if any; for Anthropic this may be partial
    /// (input known from `message_start`, output still growing).
    pub fn usage(&self) -> Option<Usage> {
        if self.usage.is_empty() {
            None
        } else {
            Some(self.usage.normalize())
        }
    }

    /// Whether the stream reached its API's end marker (`[DONE]`, `message_stop`, or a
    /// terminal `response.*` event). A stream that ends without one was cut short.
    pub fn completed(&self) -> bool {
        self.completed
    }

    /// Output tokens estimated from the generated text seen so far: UTF-8 bytes / 4, rounded
    /// up (see [`estimate_tokens`]). Counts chat `delta.content`, `reasoning_content`,
    /// `refusal` and tool-call arguments, legacy completion `text`, Responses `*.delta` text,
    /// and Anthropic `text_delta`, `thinking_delta` and `input_json_delta`.
    pub fn estimated_output_tokens(&self) -> u64 {
        estimate_tokens(self.output_text_bytes)
    }

    /// The usage to charge: what the stream reported, with the output raised to the
    /// estimate unless the stream completed, and the input replaced by `estimated_input`
    /// (the caller's estimate from the request) when the stream never reported one.
    pub fn usage_or_estimate(&self, estimated_input: u64) -> Usage {
        let mut usage = self.usage().unwrap_or_default();
        if !self.usage.has_input() {
            usage.input = usage.input.max(estimated_input);
        }
        let output_reported = self.usage.has_output();
        if !(self.completed && output_reported) {
            usage.output = usage.output.max(self.estimated_output_tokens());
        }
        usage
    }

    /// Events whose data was read as JSON but was not (or held a malformed usage). A stream
    /// cut inside an event counts one here when [`finish`](SseScanner::finish) reads it.
    pub fn malformed_events(&self) -> u32 {
        self.malformed
    }

    /// Events dropped because a line or their data outgrew [`SseLimits`].
    pub fn oversize_events(&self) -> u32 {
        self.oversize
    }

    /// Events dispatched so far (blank-line terminated events with a `data` field), including
    /// the ones dropped or not worth parsing.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The end of a line has been seen; `tail` is its part in the current chunk.
    fn end_line(&mut self, tail: &[u8]) {
        if self.discarding_line {
            self.discarding_line = false;
            if core::mem::take(&mut self.discarding_data) {
                self.spill(tail);
            }
        } else if self.line.is_empty() {
            if tail.len() > self.limits.max_event_bytes {
                self.oversize_line(tail, &[]);
            } else {
                self.process_line(tail);
            }
        } else if self.line.len().saturating_add(tail.len()) > self.limits.max_event_bytes {
            let head = core::mem::take(&mut self.line);
            self.oversize_line(&head, tail);
            self.line = head;
            self.line.clear();
        } else {
            self.line.extend_from_slice(tail);
            let line = core::mem::take(&mut self.line);
            self.process_line(&line);
            self.line = line;
            self.line.clear();
        }
        self.first_line = false;
        if self.framing != Framing::Sse && (self.has_data || self.event_oversize) {
            // Every line is a whole event.
            self.dispatch();
        }
    }

    /// A line continues past the chunk: keep its start, unless it is too long already.
    fn partial_line(&mut self, part: &[u8]) {
        if part.is_empty() {
            return;
        }
        if self.discarding_line {
            if self.discarding_data {
                self.spill(part);
            }
            return;
        }
        if self.line.len().saturating_add(part.len()) > self.limits.max_event_bytes {
            let head = core::mem::take(&mut self.line);
            self.discarding_data = self.oversize_line(&head, part);
            self.line = head;
            self.line.clear();
            self.discarding_line = true;
        } else {
            self.line.extend_from_slice(part);
        }
    }

    /// A line longer than the limit, seen as `head` then `tail` (so far). A `data` line makes
    /// the event oversized and its value goes to the event's head and tail; any other field is
    /// ignored anyway. Returns whether it is a `data` line.
    fn oversize_line(&mut self, head: &[u8], tail: &[u8]) -> bool {
        let mut start = [0u8; 9];
        for (slot, byte) in start.iter_mut().zip(head.iter().chain(tail.iter())) {
            *slot = *byte;
        }
        let bom = if self.first_line && start.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        let field = start.get(bom..).unwrap_or(&[]);
        let skip = if self.framing != Framing::Sse {
            bom // the whole line is data
        } else if field.starts_with(b"data:") {
            // The value starts after `data:` and one optional space.
            bom + 5 + usize::from(field.get(5) == Some(&b' '))
        } else {
            return false;
        };
        self.begin_oversize();
        if self.has_data {
            self.spill(b"\n");
        }
        self.has_data = true;
        let (head_skip, tail_skip) = match skip.checked_sub(head.len()) {
            None => (skip, 0),
            Some(rest) => (head.len(), rest),
        };
        self.spill(head.get(head_skip..).unwrap_or(&[]));
        self.spill(tail.get(tail_skip..).unwrap_or(&[]));
        true
    }

    /// The current event is too large to keep whole: from now on only its head and tail are.
    fn begin_oversize(&mut self) {
        if self.event_oversize {
            return;
        }
        self.event_oversize = true;
        self.over_head.clear();
        self.over_tail.clear();
        if self.has_data {
            let data = core::mem::take(&mut self.data);
            self.spill(&data);
            self.data = data;
        }
        self.data.clear();
    }

    /// More data of an oversized event: keeps its first and last bytes.
    fn spill(&mut self, bytes: &[u8]) {
        let room = OVERSIZE_HEAD_BYTES.saturating_sub(self.over_head.len());
        self.over_head
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or(&[]));
        let keep = bytes
            .get(bytes.len().saturating_sub(2 * OVERSIZE_TAIL_BYTES)..)
            .unwrap_or(bytes);
        self.over_tail.extend_from_slice(keep);
        if self.over_tail.len() > 2 * OVERSIZE_TAIL_BYTES {
            let drop = self.over_tail.len() - OVERSIZE_TAIL_BYTES;
            self.over_tail.drain(..drop);
        }
    }

    /// One complete line, without its terminator.
    fn process_line(&mut self, line: &[u8]) {
        let line = if self.first_line {
            line.strip_prefix(BOM).unwrap_or(line)
        } else {
            line
        };
        if self.framing != Framing::Sse {
            if !line.trim_ascii().is_empty() {
                self.append_data(line);
            }
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment, such as `: keep-alive`
            Some(colon) => {
                let (name, value) = line.split_at_checked(colon).unwrap_or((line, &[]));
                let value = value.get(1..).unwrap_or(&[]);
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None if line.is_empty() => return self.dispatch(),
            None => (line, &[][..]),
        };
        // `event`, `id` and `retry` do not matter here: the event type is repeated inside
        // every JSON payload that does.
        if name == b"data" {
            self.append_data(value);
        }
    }

    fn append_data(&mut self, value: &[u8]) {
        let separator = usize::from(self.has_data);
        let needed = self
            .data
            .len()
            .saturating_add(separator)
            .saturating_add(value.len());
        if self.event_oversize || needed > self.limits.max_event_bytes {
            self.begin_oversize();
            if self.has_data {
                self.spill(b"\n");
            }
            self.spill(value);
            self.has_data = true;
            return;
        }
        if self.has_data {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }

    /// A blank line: the event is complete.
    fn dispatch(&mut self) {
        if self.event_oversize {
            self.oversize = self.oversize.saturating_add(1);
            self.events = self.events.saturating_add(1);
            let tail = self
                .over_tail
                .get(self.over_tail.len().saturating_sub(OVERSIZE_TAIL_BYTES)..)
                .unwrap_or(&[]);
            let outcome = read_oversize_event(&self.over_head, tail);
            self.apply(outcome);
            self.over_head.clear();
            self.over_tail.clear();
        } else if self.has_data {
            self.events = self.events.saturating_add(1);
            let outcome = read_event(&self.data);
            self.apply(outcome);
        }
        self.data.clear();
        self.has_data = false;
        self.event_oversize = false;
    }

    fn apply(&mut self, outcome: EventOutcome) {
        if self.untrusted {
            return;
        }
        match outcome {
            EventOutcome::Skipped => {}
            EventOutcome::Done => self.completed = true,
            EventOutcome::Malformed => self.malformed = self.malformed.saturating_add(1),
            EventOutcome::Read(event) => {
                self.output_text_bytes = self.output_text_bytes.saturating_add(event.text_bytes);
                if event.bad_usage {
                    self.malformed = self.malformed.saturating_add(1);
                }
                if let Some(usage) = &event.usage {
                    self.usage.merge(usage);
                }
                self.completed |= event.terminal;
            }
        }
    }
}

impl Default for SseScanner {
    fn default() -> Self {
        SseScanner::new(SseLimits::default())
    }
}

/// The first `\n` or `\r` in `bytes`.
///
/// Eight bytes at a time: SSE payloads are long lines of JSON, so most words hold no line end
/// and are rejected with a few arithmetic operations instead of eight comparisons.
fn find_eol(bytes: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    const CR: u64 = LO * b'\r' as u64;
    // A byte of `x` is zero iff the corresponding high bit of this is set (no false positives
    // are possible for the first zero byte, and we only need to know whether there is one).
    fn has_zero(x: u64) -> bool {
        x.wrapping_sub(LO) & !x & HI != 0
    }
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0usize;
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w);
        if has_zero(x ^ LF) || has_zero(x ^ CR) {
            break;
        }
        offset += 8;
    }
    let tail = bytes.get(offset..)?;
    tail.iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map(|i| offset + i)
}
