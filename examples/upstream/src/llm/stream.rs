//! Streamed answers: each API's Server-Sent Events, the stream fault modes, and the pieces the
//! stream is written in.
//!
//! - chat and legacy completions: `data: {chunk}` events and `data: [DONE]`; the usage chunk
//!   (`"choices": []`) only when the request set `stream_options.include_usage: true`, in which
//!   case every other chunk carries `"usage": null`, exactly as OpenAI does;
//! - Responses: `response.created` … `response.output_text.delta` … `response.completed`
//!   carrying `response.usage`;
//! - messages: `message_start` (input usage), `content_block_start`, `ping`,
//!   `content_block_delta`s, `content_block_stop`, `message_delta` (cumulative output usage),
//!   `message_stop`.

use bytes::Bytes;
use serde::Serialize;

use super::body::{malform, to_json};
use super::scenario::{Api, Scenario};
use super::schema::{
    ChatChunk, ChunkChoice, ContentBlockDelta, ContentBlockStart, ContentBlockStop, Delta, Message,
    MessageDelta, MessageStart, OutputMessage, OutputText, OutputUsage, ResponseObject,
    ResponsesEvent, StopDelta, Tail, TextBlock, TextChoice, TextChunk, TypeOnly, Usage, WithDelta,
    WithItem, WithPart, WithResponse, WithText, CREATED,
};
use super::text::{completion_text, deltas};
use super::{google, ollama};

/// Anthropic's keep-alive event, as Anthropic sends it (with the space).
const PING: &str = r#"{"type": "ping"}"#;
/// The end of an OpenAI chat or completions stream.
const DONE: &str = "[DONE]";

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field (Responses and Anthropic name their events; OpenAI chat does not).
    pub name: Option<&'static str>,
    /// The `data:` field.
    pub data: Vec<u8>,
    /// This event carries the stream's final usage (where `x-mock-pad-final` pads, and what
    /// `x-mock-truncated-event` cuts).
    pub carries_usage: bool,
}

impl Event {
    /// An unnamed event of `data`.
    pub(super) fn data(data: Vec<u8>) -> Event {
        Event {
            name: None,
            data,
            carries_usage: false,
        }
    }

    fn named(name: &'static str, data: Vec<u8>) -> Event {
        Event {
            name: Some(name),
            data,
            carries_usage: false,
        }
    }

    /// Marks the event as carrying the stream's final usage.
    pub(super) fn with_usage(mut self) -> Event {
        self.carries_usage = true;
        self
    }

    /// The event on the wire as SSE, blank line included.
    pub fn to_wire(&self) -> Vec<u8> {
        self.framed(Framing::Sse, 0)
    }

    /// The event on the wire as `framing` frames it, `index` being its place in the stream;
    /// what ends it is in the piece (the blank line, the newline; a JSON array's separator comes
    /// before the next element).
    pub fn framed(&self, framing: Framing, index: usize) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.data.len() + 32);
        match framing {
            Framing::Sse | Framing::SseCrlf => {
                if let Some(name) = self.name {
                    wire.extend_from_slice(b"event: ");
                    wire.extend_from_slice(name.as_bytes());
                    wire.push(b'\n');
                }
                wire.extend_from_slice(b"data: ");
                wire.extend_from_slice(&self.data);
                wire.extend_from_slice(if framing == Framing::Sse {
                    b"\n\n"
                } else {
                    b"\r\n\r\n"
                });
            }
            Framing::Ndjson => {
                wire.extend_from_slice(&self.data);
                wire.push(b'\n');
            }
            Framing::JsonArray => {
                wire.extend_from_slice(if index == 0 { b"[" } else { b"\n,\r\n" });
                wire.extend_from_slice(&self.data);
            }
        }
        wire
    }
}

/// How a stream is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events, `\n\n` after each (OpenAI, Anthropic).
    Sse,
    /// Server-Sent Events, `\r\n\r\n` after each (Gemini with `alt=sse`).
    SseCrlf,
    /// One JSON object a line (Ollama).
    Ndjson,
    /// One JSON array, an element per write (Gemini without `alt=sse`).
    JsonArray,
}

impl Framing {
    /// How `s`'s answer streams.
    pub fn of(s: &Scenario) -> Framing {
        match s.api {
            Api::OllamaChat | Api::OllamaGenerate => Framing::Ndjson,
            Api::GeminiStream if s.sse => Framing::SseCrlf,
            Api::GeminiStream => Framing::JsonArray,
            _ => Framing::Sse,
        }
    }

    /// The `content-type` the provider sends with it.
    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Sse => "text/event-stream; charset=utf-8",
            Framing::SseCrlf => "text/event-stream",
            Framing::Ndjson => "application/x-ndjson",
            Framing::JsonArray => "application/json; charset=UTF-8",
        }
    }
}

/// `"x"` × `pad_final`, when the scenario asks for it (for the final usage event only).
fn padding(s: &Scenario) -> Option<String> {
    s.pad_final.map(|n| "x".repeat(n))
}

fn chat_events(s: &Scenario, text: &str) -> Vec<Event> {
    let usage_null = s.include_usage.then_some(None);
    let chunk = |choices: Vec<ChunkChoice<'_>>| {
        Event::data(to_json(&ChatChunk {
            id: "chatcmpl-mock",
            object: "chat.completion.chunk",
            created: CREATED,
            model: &s.model,
            service_tier: "default",
            system_fingerprint: "fp_mock",
            choices,
            x_padding: None,
            usage: usage_null.clone(),
        }))
    };
    fn choice<'a>(delta: Delta<'a>, finish_reason: Option<&'static str>) -> ChunkChoice<'a> {
        ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        }
    }
    let first = Delta {
        role: Some("assistant"),
        content: Some(""),
        refusal: Some(None),
    };
    let mut events = vec![chunk(vec![choice(first, None)])];
    for d in deltas(text) {
        let delta = Delta {
            content: Some(d),
            ..Delta::default()
        };
        events.push(chunk(vec![choice(delta, None)]));
    }
    events.push(chunk(vec![choice(Delta::default(), Some("stop"))]));
    if s.include_usage && !s.no_usage {
        let usage = ChatChunk {
            id: "chatcmpl-mock",
            object: "chat.completion.chunk",
            created: CREATED,
            model: &s.model,
            service_tier: "default",
            system_fingerprint: "fp_mock",
            choices: Vec::new(),
            x_padding: padding(s),
            usage: Some(Some(Usage::of(s))),
        };
        events.push(Event::data(to_json(&usage)).with_usage());
    }
    events.push(Event::data(DONE.into()));
    events
}

fn completions_events(s: &Scenario, text: &str) -> Vec<Event> {
    let usage_null = s.include_usage.then_some(None);
    let chunk = |text, finish_reason| {
        Event::data(to_json(&TextChunk {
            id: "cmpl-mock",
            object: "text_completion",
            created: CREATED,
            choices: vec![TextChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason,
            }],
            model: &s.model,
            system_fingerprint: "fp_mock",
            x_padding: None,
            usage: usage_null.clone(),
        }))
    };
    let mut events: Vec<Event> = deltas(text).into_iter().map(|d| chunk(d, None)).collect();
    events.push(chunk("", Some("stop")));
    if s.include_usage && !s.no_usage {
        let usage = TextChunk {
            id: "cmpl-mock",
            object: "text_completion",
            created: CREATED,
            choices: Vec::new(),
            model: &s.model,
            system_fingerprint: "fp_mock",
            x_padding: padding(s),
            usage: Some(Some(Usage::of(s))),
        };
        events.push(Event::data(to_json(&usage)).with_usage());
    }
    events.push(Event::data(DONE.into()));
    events
}

/// A Responses API event, numbered from `seq` (which it advances).
fn responses_event<T: Serialize>(kind: &'static str, seq: &mut u64, rest: T) -> Event {
    let data = to_json(&ResponsesEvent {
        kind,
        sequence_number: *seq,
        rest,
    });
    *seq += 1;
    Event::named(kind, data)
}

fn responses_events(s: &Scenario, text: &str) -> Vec<Event> {
    let model = s.model.as_str();
    let mut seq = 0u64;
    let in_progress = || WithResponse {
        response: ResponseObject::new(model, "in_progress", Vec::new(), Some(None)),
    };
    let part = |text| WithPart {
        item_id: "msg_mock",
        output_index: 0,
        content_index: 0,
        part: OutputText::of(text),
    };
    let added = OutputMessage {
        status: "in_progress",
        content: Vec::new(),
        ..OutputMessage::completed("")
    };
    let mut events = vec![
        responses_event("response.created", &mut seq, in_progress()),
        responses_event("response.in_progress", &mut seq, in_progress()),
        responses_event(
            "response.output_item.added",
            &mut seq,
            WithItem {
                output_index: 0,
                item: added,
            },
        ),
        responses_event("response.content_part.added", &mut seq, part("")),
    ];
    for delta in deltas(text) {
        let delta = WithDelta {
            item_id: "msg_mock",
            output_index: 0,
            content_index: 0,
            delta,
        };
        events.push(responses_event(
            "response.output_text.delta",
            &mut seq,
            delta,
        ));
    }
    let done = WithText {
        item_id: "msg_mock",
        output_index: 0,
        content_index: 0,
        text,
    };
    events.push(responses_event("response.output_text.done", &mut seq, done));
    events.push(responses_event(
        "response.content_part.done",
        &mut seq,
        part(text),
    ));
    let item = WithItem {
        output_index: 0,
        item: OutputMessage::completed(text),
    };
    events.push(responses_event("response.output_item.done", &mut seq, item));
    let usage = (!s.no_usage).then(|| Usage::of(s));
    let mut response = ResponseObject::new(
        model,
        "completed",
        vec![OutputMessage::completed(text)],
        Some(usage),
    );
    if !s.no_usage {
        response.x_padding = padding(s);
    }
    let last = responses_event("response.completed", &mut seq, WithResponse { response });
    events.push(if s.no_usage { last } else { last.with_usage() });
    events
}

fn messages_events(s: &Scenario, text: &str) -> Vec<Event> {
    let start_usage = (!s.no_usage).then_some(Usage::Messages {
        input_tokens: s.prompt_tokens,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        output_tokens: 1,
    });
    let start = MessageStart {
        kind: "message_start",
        message: Message {
            id: "msg_mock",
            kind: "message",
            role: "assistant",
            model: &s.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            tail: Tail {
                x_padding: None,
                usage: start_usage,
            },
        },
    };
    let block_start = ContentBlockStart {
        kind: "content_block_start",
        index: 0,
        content_block: TextBlock {
            kind: "text",
            text: "",
        },
    };
    let mut events = vec![
        Event::named("message_start", to_json(&start)),
        Event::named("content_block_start", to_json(&block_start)),
        Event::named("ping", PING.into()),
    ];
    for text in deltas(text) {
        let delta = ContentBlockDelta {
            kind: "content_block_delta",
            index: 0,
            delta: TextBlock {
                kind: "text_delta",
                text,
            },
        };
        events.push(Event::named("content_block_delta", to_json(&delta)));
    }
    let stop = ContentBlockStop {
        kind: "content_block_stop",
        index: 0,
    };
    events.push(Event::named("content_block_stop", to_json(&stop)));
    let delta = MessageDelta {
        kind: "message_delta",
        delta: StopDelta {
            stop_reason: "end_turn",
            stop_sequence: None,
        },
        x_padding: if s.no_usage { None } else { padding(s) },
        usage: (!s.no_usage).then_some(OutputUsage {
            output_tokens: s.completion_tokens,
        }),
    };
    let delta = Event::named("message_delta", to_json(&delta));
    events.push(if s.no_usage {
        delta
    } else {
        delta.with_usage()
    });
    let stop = TypeOnly {
        kind: "message_stop",
    };
    events.push(Event::named("message_stop", to_json(&stop)));
    events
}

/// The stream's events, faults applied.
pub fn stream_events(s: &Scenario) -> Vec<Event> {
    let text = completion_text(s.output_tokens());
    let mut events = match s.api {
        Api::Chat => chat_events(s, &text),
        Api::Completions | Api::Embeddings => completions_events(s, &text),
        Api::Responses => responses_events(s, &text),
        Api::Messages => messages_events(s, &text),
        Api::GeminiGenerate | Api::GeminiStream | Api::GeminiEmbed | Api::GeminiCountTokens => {
            google::events(s, &text)
        }
        Api::OllamaChat | Api::OllamaGenerate => ollama::events(s, &text),
    };
    if s.malformed {
        for e in events.iter_mut().filter(|e| e.data != DONE.as_bytes()) {
            malform(&mut e.data);
        }
    }
    if s.truncated_event {
        let last = events
            .iter()
            .rposition(|e| e.carries_usage)
            .or_else(|| events.iter().rposition(|e| e.data != DONE.as_bytes()));
        if let Some(i) = last {
            events.truncate(i + 1);
        }
    }
    events
}

/// The stream on the wire, one piece per event (or `x-mock-chunk-bytes` each); with
/// `x-mock-truncated-event`, the last event stops in the middle of its JSON (no closing
/// brace, no blank line).
pub fn stream_pieces(s: &Scenario) -> Vec<Bytes> {
    let events = stream_events(s);
    let framing = Framing::of(s);
    let mut pieces: Vec<Vec<u8>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| e.framed(framing, i))
        .collect();
    if s.truncated_event {
        if let (Some(piece), Some(event)) = (pieces.last_mut(), events.last()) {
            // The data ends the piece but for what frames it after: keep what comes before the
            // data and half the data.
            let after = match framing {
                Framing::Sse => 2,
                Framing::SseCrlf => 4,
                Framing::Ndjson => 1,
                Framing::JsonArray => 0,
            };
            let head = piece.len().saturating_sub(event.data.len() + after);
            piece.truncate(head + event.data.len() / 2);
        }
    } else if framing == Framing::JsonArray {
        pieces.push(b"\n]".to_vec());
    }
    match s.chunk_bytes {
        Some(n) => pieces
            .concat()
            .chunks(n)
            .map(Bytes::copy_from_slice)
            .collect(),
        None => pieces.into_iter().map(Bytes::from).collect(),
    }
}
