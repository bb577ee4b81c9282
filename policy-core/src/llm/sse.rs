//! An incremental scanner for streamed (Server-Sent Events) LLM responses.
//!
//! The filter hands every response body chunk to [`SseScanner::feed`] and passes the chunk on
//! unchanged: the scanner only observes, so it never holds a stream back. Chunks may be split
//! anywhere (inside a line, between `\r` and `\n`, inside a UTF-8 character); the result does
//! not depend on where.
//!
//! What it tracks, per API:
//! - **OpenAI chat / completions**: the chunk carrying `usage` (sent last when the request set
//!   `stream_options.include_usage`, see [`ensure_stream_usage`](super::request::ensure_stream_usage));
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

use alloc::vec::Vec;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

use super::json::{lenient, TextLen, TextLenVisitor};
use super::request::estimate_tokens;
use super::usage::{raw_usage_from_tail, RawUsage, Usage, UsageValue};

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

/// Watches an SSE response body go by and keeps what the budget needs: the usage reported so
/// far, whether the stream completed, and an estimate of the output received.
#[derive(Debug)]
pub struct SseScanner {
    limits: SseLimits,
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
        SseScanner {
            limits,
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
        let output_reported =
            self.usage.output_tokens.is_some() || self.usage.completion_tokens.is_some();
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
        if !field.starts_with(b"data:") {
            return false;
        }
        // The value starts after `data:` and one optional space.
        let skip = bom + 5 + usize::from(field.get(5) == Some(&b' '));
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

/// What one event's data amounted to.
#[derive(Debug)]
enum EventOutcome {
    /// Nothing in it can carry usage, text or an end marker.
    Skipped,
    /// `[DONE]`.
    Done,
    /// Not JSON.
    Malformed,
    /// A JSON event, reduced to what matters.
    Read(EventSummary),
}

#[derive(Debug, Default)]
struct EventSummary {
    usage: Option<RawUsage>,
    bad_usage: bool,
    text_bytes: u64,
    terminal: bool,
}

fn read_event(data: &[u8]) -> EventOutcome {
    if data.trim_ascii() == b"[DONE]" {
        return EventOutcome::Done;
    }
    if !worth_parsing(data) {
        return EventOutcome::Skipped;
    }
    let Ok(event) = serde_json::from_slice::<StreamEvent>(data) else {
        return EventOutcome::Malformed;
    };
    let mut summary = EventSummary {
        text_bytes: if event.kind == EventType::Audio {
            // Base64 audio is not text: counting it would charge thousands of tokens a second.
            event.choices.0
        } else {
            event.choices.0.saturating_add(event.delta.0)
        },
        terminal: event.kind.is_terminal(),
        ..EventSummary::default()
    };
    let holders = [
        event.usage,
        event.message.map(|m| m.usage).unwrap_or_default(),
        event.response.map(|r| r.usage).unwrap_or_default(),
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
fn read_oversize_event(head: &[u8], tail: &[u8]) -> EventOutcome {
    const TERMINAL: [&[u8]; 4] = [
        b"\"response.completed\"",
        b"\"response.incomplete\"",
        b"\"response.failed\"",
        b"\"message_stop\"",
    ];
    let terminal = TERMINAL
        .iter()
        .any(|t| head.windows(t.len()).any(|w| w == *t));
    let mut summary = EventSummary {
        terminal,
        ..EventSummary::default()
    };
    match raw_usage_from_tail(tail) {
        None | Some(Ok(UsageValue::Absent)) => {}
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
fn worth_parsing(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(quote) = rest.iter().position(|&b| b == b'"') {
        rest = rest.get(quote.saturating_add(1)..).unwrap_or(&[]);
        if rest.starts_with(b"usage\"")
            || rest.starts_with(b"delta\"")
            || rest.starts_with(b"choices\"")
            || rest.starts_with(b"message_stop\"")
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
    /// Anthropic's `message_start`.
    message: Option<UsageHolder>,
    /// Responses' terminal events.
    response: Option<UsageHolder>,
    /// Anthropic's `content_block_delta` (an object) and Responses' `*.delta` (a string).
    delta: DeltaText,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct UsageHolder {
    usage: UsageValue,
}

/// The event types that change what we track.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum EventType {
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
    fn is_terminal(self) -> bool {
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

/// Generated text in `choices[]`: chat's `delta` and legacy completions' `text`, summed over
/// the choices without collecting them.
#[derive(Clone, Copy, Debug, Default)]
struct ChoicesText(u64);

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct Choice {
    delta: Option<ChatDelta>,
    text: TextLen,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct ChatDelta {
    content: TextLen,
    /// DeepSeek and vLLM reasoning models.
    reasoning_content: TextLen,
    /// OpenRouter and some other OpenAI-compatible servers.
    reasoning: TextLen,
    refusal: TextLen,
    tool_calls: ToolCallsText,
}

/// `tool_calls[].function.{name, arguments}`, summed.
#[derive(Clone, Copy, Debug, Default)]
struct ToolCallsText(u64);

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct ToolCall {
    function: Option<ToolFunction>,
}

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct ToolFunction {
    name: TextLen,
    arguments: TextLen,
}

/// Anthropic's `content_block_delta.delta` (text, thinking or tool input), or a Responses
/// delta string.
#[derive(Clone, Copy, Debug, Default)]
struct DeltaText(u64);

#[derive(DeriveDeserialize, Default)]
#[serde(default)]
struct AnthropicDelta {
    text: TextLen,
    thinking: TextLen,
    partial_json: TextLen,
}

/// Sums a text measure over a JSON array; any other shape counts as no text.
struct SumSeq<T>(core::marker::PhantomData<T>);

trait Measured {
    fn bytes(&self) -> u64;
}

impl Measured for Choice {
    fn bytes(&self) -> u64 {
        let delta = self.delta.as_ref().map_or(0, |d| {
            d.content
                .0
                .saturating_add(d.reasoning_content.0)
                .saturating_add(d.reasoning.0)
                .saturating_add(d.refusal.0)
                .saturating_add(d.tool_calls.0)
        });
        delta.saturating_add(self.text.0)
    }
}

impl Measured for ToolCall {
    fn bytes(&self) -> u64 {
        self.function
            .as_ref()
            .map_or(0, |f| f.name.0.saturating_add(f.arguments.0))
    }
}

impl<'de, T: Deserialize<'de> + Measured> Visitor<'de> for SumSeq<T> {
    type Value = u64;
    lenient!(expecting "an array");
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut sum = 0u64;
        while let Some(item) = seq.next_element::<T>()? {
            sum = sum.saturating_add(item.bytes());
        }
        Ok(sum)
    }
    lenient!(0 => null scalars map);
}

impl<'de> Deserialize<'de> for ChoicesText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SumSeq::<Choice>(core::marker::PhantomData))
            .map(ChoicesText)
    }
}

impl<'de> Deserialize<'de> for ToolCallsText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SumSeq::<ToolCall>(core::marker::PhantomData))
            .map(ToolCallsText)
    }
}

impl<'de> Deserialize<'de> for DeltaText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DeltaText;
            lenient!(expecting "a delta");
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DeltaText, A::Error> {
                let delta = AnthropicDelta::deserialize(MapAccessDeserializer::new(map))?;
                Ok(DeltaText(
                    delta
                        .text
                        .0
                        .saturating_add(delta.thinking.0)
                        .saturating_add(delta.partial_json.0),
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DeltaText, E> {
                TextLenVisitor.visit_str(v).map(|t| DeltaText(t.0))
            }
            lenient!(DeltaText(0) => null bool numbers seq);
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
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
    const OPENAI_CHAT: &str = concat!(
        r#"data: {"id":"chatcmpl-AbC","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-AbC","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-AbC","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":" wörld! \"ok\""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-AbC","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-AbC","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
        "\n\n",
        "data: [DONE]\n\n",
    );

    /// Anthropic messages, `stream: true`.
    const ANTHROPIC: &str = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\n",
        "event: ping\n",
        r#"data: {"type": "ping"}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", Claude here!"}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"San"}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":1}"#,
        "\n\n",
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );

    /// OpenAI Responses, `stream: true`.
    const RESPONSES: &str = concat!(
        "event: response.created\n",
        r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf488190","object":"response","created_at":1741290958,"status":"in_progress","model":"gpt-4.1-2025-04-14","output":[],"usage":null}}"#,
        "\n\n",
        "event: response.in_progress\n",
        r#"data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9fdcecf488190","object":"response","status":"in_progress","output":[],"usage":null}}"#,
        "\n\n",
        "event: response.output_item.added\n",
        r#"data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
        "\n\n",
        "event: response.content_part.added\n",
        r#"data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}"#,
        "\n\n",
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,"delta":"Hi"}"#,
        "\n\n",
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,"delta":" there, how can I help?"}"#,
        "\n\n",
        "event: response.output_text.done\n",
        r#"data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_67c9fdcf","output_index":0,"content_index":0,"text":"Hi there, how can I help?"}"#,
        "\n\n",
        "event: response.completed\n",
        r#"data: {"type":"response.completed","sequence_number":7,"response":{"id":"resp_67c9fdcecf488190","object":"response","created_at":1741290958,"status":"completed","model":"gpt-4.1-2025-04-14","output":[{"id":"msg_67c9fdcf","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there, how can I help?","annotations":[]}]}],"usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48}}}"#,
        "\n\n",
    );

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
                let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
                points.sort_unstable();
                let mut pieces = Vec::new();
                let mut last = 0;
                for p in points {
                    pieces.push(&bytes[last..p]);
                    last = p;
                }
                pieces.push(&bytes[last..]);
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
}
