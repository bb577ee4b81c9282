//! An OpenAI- and Anthropic-compatible LLM mock with deterministic usage and fault modes.
//!
//! Endpoints (matched on the end of the path, so a route prefix such as `/api/v1/…` works):
//! OpenAI `POST …/chat/completions`, `…/completions`, `…/embeddings`, `…/v1/responses`, and
//! Anthropic `POST …/v1/messages`; `GET /healthz`. Each answers in its API's real shape, as JSON
//! or, with `"stream": true`, as Server-Sent Events:
//! - chat and legacy completions: `data: {chunk}` events and `data: [DONE]`; the usage chunk
//!   (`"choices": []`) only when the request set `stream_options.include_usage: true`, in which
//!   case every other chunk carries `"usage": null`, exactly as OpenAI does;
//! - Responses: `response.created` … `response.output_text.delta` … `response.completed`
//!   carrying `response.usage`;
//! - messages: `message_start` (input usage), `content_block_start`, `ping`,
//!   `content_block_delta`s, `content_block_stop`, `message_delta` (cumulative output usage),
//!   `message_stop`.
//!
//! Usage is deterministic: 100 prompt and 200 completion tokens unless the request says
//! otherwise with `x-mock-prompt-tokens` / `x-mock-completion-tokens`. The generated text has 4
//! ASCII characters per completion token, split over up to [`MAX_DELTAS`] deltas, so a byte
//! count of the streamed text gives back the token count.
//!
//! Fault modes, by request header:
//! - `x-mock-status: N`: answer with status N (an error body in the API's format when N ≥ 400);
//! - `x-mock-delay-ms: N`: wait N ms before a JSON response, or between stream events;
//! - `x-mock-cut-after: N`: send N stream events (N bytes of a JSON body), then close the
//!   connection without finishing the response;
//! - `x-mock-no-usage: 1`: leave usage out (JSON and streams);
//! - `x-mock-malformed: 1`: a JSON body that is not JSON (in a stream: every event's data);
//! - `x-mock-big-body: N`: pad the JSON body to about N bytes, usage last;
//! - `x-mock-truncated-event: 1`: end the stream normally right after cutting its last
//!   usage-carrying event (or its last event) in the middle of its JSON;
//! - `x-mock-provider-headers: 1`: add the provider's own rate-limit headers, as OpenAI and
//!   Anthropic send them.
//!
//! Stream shape, by request header (a proxy must give the client the same bytes whatever the
//! chunking; these let a test choose it):
//! - `x-mock-chunk-bytes: N`: write the stream in pieces of N bytes (splitting events, lines
//!   and UTF-8 characters anywhere) instead of one piece per event; `x-mock-delay-ms` then
//!   pauses between pieces, so each reaches the proxy on its own, and `x-mock-cut-after`
//!   counts pieces;
//! - `x-mock-pad-final: N`: pad the stream's last usage-carrying event (chat's usage chunk,
//!   Anthropic's `message_delta`, the Responses API's `response.completed`) with an
//!   `"x_padding"` field of N bytes before its `usage`, as a long `response.completed` is.
//!
//! What the mock received is echoed in response headers, so a test can see what a proxy
//! changed: `x-mock-saw-include-usage: true|false`, `x-mock-saw-accept-encoding: <value>|none`,
//! `x-mock-saw-stream`, `x-mock-saw-model`, `x-mock-saw-body-bytes`; and, on every response of
//! the server, `x-mock-saw-framing: content-length: N|chunked|none`. `GET /__mock/traffic`
//! ([`crate::server::TRAFFIC_PATH`]) counts the request heads and bytes that reached the server,
//! complete or not, so a test can show that a refused call never reached it.

use std::fmt::Write as _;
use std::thread;
use std::time::Duration;

use crate::http::{Request, Response, Stream};
use crate::server::Handler;

/// Prompt tokens reported unless `x-mock-prompt-tokens` says otherwise.
pub const DEFAULT_PROMPT_TOKENS: u64 = 100;
/// Completion tokens reported unless `x-mock-completion-tokens` says otherwise.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 200;
/// Characters of generated text per completion token.
pub const CHARS_PER_TOKEN: u64 = 4;
/// The generated text is streamed in at most this many deltas.
pub const MAX_DELTAS: u64 = 10;
/// The most completion tokens a request may ask for (16 MiB of text).
pub const MAX_COMPLETION_TOKENS: u64 = 4 << 20;
/// The largest `x-mock-big-body`.
pub const MAX_BIG_BODY: usize = 64 << 20;
/// The longest `x-mock-delay-ms`.
pub const MAX_DELAY_MS: u64 = 60_000;
/// `created` in every response: a fixed time, so responses are byte-for-byte reproducible.
const CREATED: u64 = 1_700_000_000;

/// Which API a request speaks, from the end of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI chat completions.
    Chat,
    /// OpenAI legacy completions.
    Completions,
    /// OpenAI embeddings (never streams).
    Embeddings,
    /// OpenAI Responses.
    Responses,
    /// Anthropic messages.
    Messages,
}

impl Api {
    /// The API of a request path (query string ignored), if it is one the mock serves.
    pub fn from_path(path: &str) -> Option<Api> {
        let path = path.split('?').next().unwrap_or(path);
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.ends_with("/chat/completions") {
            Some(Api::Chat)
        } else if path.ends_with("/completions") {
            Some(Api::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Api::Embeddings)
        } else if path.ends_with("/v1/responses") {
            Some(Api::Responses)
        } else if path.ends_with("/v1/messages") {
            Some(Api::Messages)
        } else {
            None
        }
    }
}

/// What one request asked for and how the mock is to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The API.
    pub api: Api,
    /// `model` from the body (`"mock"` when absent).
    pub model: String,
    /// `stream: true` (never for embeddings).
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// Prompt (input) tokens to report.
    pub prompt_tokens: u64,
    /// Completion (output) tokens to report and generate text for.
    pub completion_tokens: u64,
    /// `x-mock-status`.
    pub status: u16,
    /// `x-mock-delay-ms`.
    pub delay: Duration,
    /// `x-mock-cut-after`.
    pub cut_after: Option<usize>,
    /// `x-mock-no-usage`.
    pub no_usage: bool,
    /// `x-mock-malformed`.
    pub malformed: bool,
    /// `x-mock-big-body`.
    pub big_body: Option<usize>,
    /// `x-mock-truncated-event`.
    pub truncated_event: bool,
    /// `x-mock-provider-headers`.
    pub provider_headers: bool,
    /// `x-mock-chunk-bytes`.
    pub chunk_bytes: Option<usize>,
    /// `x-mock-pad-final`.
    pub pad_final: Option<usize>,
}

/// Why a request cannot be answered as asked: a 400 in the API's error format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

fn number<T: std::str::FromStr>(request: &Request, name: &str) -> Result<Option<T>, BadRequest> {
    match request.header(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| BadRequest(format!("{name} must be a whole number, not {v:?}"))),
    }
}

fn flag(request: &Request, name: &str) -> bool {
    request
        .header(name)
        .is_some_and(|v| matches!(v, "1" | "true" | "yes"))
}

impl Scenario {
    /// Reads a request: its body (must be a JSON object) and its `x-mock-*` headers.
    ///
    /// # Errors
    /// A body that is not a JSON object, or an `x-mock-*` header out of range.
    pub fn from_request(api: Api, request: &Request) -> Result<Scenario, BadRequest> {
        let body = json::parse(&request.body)
            .ok_or_else(|| BadRequest("request body is not valid JSON".into()))?;
        let json::Value::Object(_) = body else {
            return Err(BadRequest("request body must be a JSON object".into()));
        };
        let model = match body.get("model") {
            Some(json::Value::String(m)) => m.clone(),
            _ => "mock".into(),
        };
        let stream = api != Api::Embeddings && body.get("stream") == Some(&json::Value::Bool(true));
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            == Some(&json::Value::Bool(true));
        let completion_tokens: u64 =
            number(request, "x-mock-completion-tokens")?.unwrap_or(DEFAULT_COMPLETION_TOKENS);
        if completion_tokens > MAX_COMPLETION_TOKENS {
            return Err(BadRequest(format!(
                "x-mock-completion-tokens must be at most {MAX_COMPLETION_TOKENS}"
            )));
        }
        let status: u16 = number(request, "x-mock-status")?.unwrap_or(200);
        if !(200..=599).contains(&status) {
            return Err(BadRequest("x-mock-status must be 200..=599".into()));
        }
        let delay_ms: u64 = number(request, "x-mock-delay-ms")?.unwrap_or(0);
        if delay_ms > MAX_DELAY_MS {
            return Err(BadRequest(format!(
                "x-mock-delay-ms must be at most {MAX_DELAY_MS}"
            )));
        }
        let chunk_bytes: Option<usize> = number(request, "x-mock-chunk-bytes")?;
        if chunk_bytes == Some(0) {
            return Err(BadRequest("x-mock-chunk-bytes must be at least 1".into()));
        }
        let pad_final: Option<usize> = number(request, "x-mock-pad-final")?;
        if pad_final.is_some_and(|n| n > MAX_BIG_BODY) {
            return Err(BadRequest(format!(
                "x-mock-pad-final must be at most {MAX_BIG_BODY}"
            )));
        }
        let big_body: Option<usize> = number(request, "x-mock-big-body")?;
        if big_body.is_some_and(|n| n > MAX_BIG_BODY) {
            return Err(BadRequest(format!(
                "x-mock-big-body must be at most {MAX_BIG_BODY}"
            )));
        }
        Ok(Scenario {
            api,
            model,
            stream,
            include_usage,
            prompt_tokens: number(request, "x-mock-prompt-tokens")?
                .unwrap_or(DEFAULT_PROMPT_TOKENS),
            completion_tokens,
            status,
            delay: Duration::from_millis(delay_ms),
            cut_after: number(request, "x-mock-cut-after")?,
            no_usage: flag(request, "x-mock-no-usage"),
            malformed: flag(request, "x-mock-malformed"),
            big_body,
            truncated_event: flag(request, "x-mock-truncated-event"),
            provider_headers: flag(request, "x-mock-provider-headers"),
            chunk_bytes,
            pad_final,
        })
    }

    /// Output tokens the API reports (embeddings have none).
    fn output_tokens(&self) -> u64 {
        if self.api == Api::Embeddings {
            0
        } else {
            self.completion_tokens
        }
    }
}

/// The generated text: `tokens` × [`CHARS_PER_TOKEN`] ASCII characters that need no escaping.
pub fn completion_text(tokens: u64) -> String {
    const WORDS: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do ";
    let len = usize::try_from(tokens.saturating_mul(CHARS_PER_TOKEN)).unwrap_or(usize::MAX);
    WORDS.chars().cycle().take(len).collect()
}

/// The text in deltas: at most [`MAX_DELTAS`], each a whole number of tokens.
pub fn deltas(text: &str) -> Vec<&str> {
    let tokens = (text.len() as u64).div_ceil(CHARS_PER_TOKEN);
    let per = tokens.div_ceil(MAX_DELTAS).max(1);
    let size = usize::try_from(per * CHARS_PER_TOKEN).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// A JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `usage` object of an API, as it reports it.
pub fn usage_json(s: &Scenario) -> String {
    let (p, c) = (s.prompt_tokens, s.output_tokens());
    let total = p.saturating_add(c);
    match s.api {
        Api::Chat => format!(
            r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{total},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#
        ),
        Api::Completions => {
            format!(r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{total}}}"#)
        }
        Api::Embeddings => format!(r#"{{"prompt_tokens":{p},"total_tokens":{p}}}"#),
        Api::Responses => format!(
            r#"{{"input_tokens":{p},"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{c},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{total}}}"#
        ),
        Api::Messages => format!(
            r#"{{"input_tokens":{p},"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":{c}}}"#
        ),
    }
}

/// The whole (non-streaming) response body, usage last.
pub fn json_body(s: &Scenario) -> String {
    let model = quote(&s.model);
    let text = quote(&completion_text(s.output_tokens()));
    let usage = if s.no_usage {
        String::new()
    } else {
        format!(r#","usage":{}"#, usage_json(s))
    };
    let mut body = match s.api {
        Api::Chat => format!(
            r#"{{"id":"chatcmpl-mock","object":"chat.completion","created":{CREATED},"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":{text},"refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"service_tier":"default","system_fingerprint":"fp_mock""#
        ),
        Api::Completions => format!(
            r#"{{"id":"cmpl-mock","object":"text_completion","created":{CREATED},"model":{model},"choices":[{{"text":{text},"index":0,"logprobs":null,"finish_reason":"stop"}}],"system_fingerprint":"fp_mock""#
        ),
        Api::Embeddings => format!(
            r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,-0.0028842222,0.021797747,-0.011229386,0.004583152,-0.017034538,0.0061236513]}}],"model":{model}"#
        ),
        Api::Responses => format!(
            r#"{{"id":"resp_mock","object":"response","created_at":{CREATED},"status":"completed","error":null,"incomplete_details":null,"model":{model},"output":[{{"type":"message","id":"msg_mock","status":"completed","role":"assistant","content":[{{"type":"output_text","text":{text},"annotations":[]}}]}}],"parallel_tool_calls":true,"store":true,"temperature":1.0,"tool_choice":"auto","tools":[],"top_p":1.0"#
        ),
        Api::Messages => format!(
            r#"{{"id":"msg_mock","type":"message","role":"assistant","model":{model},"content":[{{"type":"text","text":{text}}}],"stop_reason":"end_turn","stop_sequence":null"#
        ),
    };
    if let Some(size) = s.big_body {
        // Padding before the usage, so a reader must take in the whole body to find it.
        let fixed = body.len() + usage.len() + r#","x_padding":""}"#.len();
        let pad = size.saturating_sub(fixed);
        body.push_str(r#","x_padding":""#);
        body.extend(std::iter::repeat_n('x', pad));
        body.push('"');
    }
    body.push_str(&usage);
    body.push('}');
    if s.malformed {
        // Cut in the middle and finished with garbage: no JSON parser accepts it.
        let half = body.len() / 2;
        body.truncate(half);
        body.push_str("<<not json>>");
    }
    body
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field (Responses and Anthropic name their events; OpenAI chat does not).
    pub name: Option<String>,
    /// The `data:` field.
    pub data: String,
}

impl Event {
    fn data(data: String) -> Event {
        Event { name: None, data }
    }

    /// A named event whose `type` is its name.
    fn typed(kind: &str, data: String) -> Event {
        Event {
            name: Some(kind.to_owned()),
            data,
        }
    }

    /// The event on the wire, blank line included.
    pub fn to_wire(&self) -> String {
        match &self.name {
            Some(name) => format!("event: {name}\ndata: {}\n\n", self.data),
            None => format!("data: {}\n\n", self.data),
        }
    }
}

fn chat_events(s: &Scenario, model: &str, text: &str) -> Vec<Event> {
    let usage_null = if s.include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let chunk = |choices: String| {
        Event::data(format!(
            r#"{{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":{CREATED},"model":{model},"service_tier":"default","system_fingerprint":"fp_mock","choices":{choices}{usage_null}}}"#
        ))
    };
    let mut events = vec![chunk(
        r#"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#.into(),
    )];
    for d in deltas(text) {
        events.push(chunk(format!(
            r#"[{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}]"#,
            quote(d)
        )));
    }
    events.push(chunk(
        r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#.into(),
    ));
    if s.include_usage && !s.no_usage {
        events.push(Event::data(format!(
            r#"{{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":{CREATED},"model":{model},"service_tier":"default","system_fingerprint":"fp_mock","choices":[],"usage":{}}}"#,
            usage_json(s)
        )));
    }
    events.push(Event::data("[DONE]".into()));
    events
}

fn completions_events(s: &Scenario, model: &str, text: &str) -> Vec<Event> {
    let usage_null = if s.include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let chunk = |text: &str, finish: &str| {
        Event::data(format!(
            r#"{{"id":"cmpl-mock","object":"text_completion","created":{CREATED},"choices":[{{"text":{},"index":0,"logprobs":null,"finish_reason":{finish}}}],"model":{model},"system_fingerprint":"fp_mock"{usage_null}}}"#,
            quote(text)
        ))
    };
    let mut events: Vec<Event> = deltas(text).into_iter().map(|d| chunk(d, "null")).collect();
    events.push(chunk("", r#""stop""#));
    if s.include_usage && !s.no_usage {
        events.push(Event::data(format!(
            r#"{{"id":"cmpl-mock","object":"text_completion","created":{CREATED},"choices":[],"model":{model},"system_fingerprint":"fp_mock","usage":{}}}"#,
            usage_json(s)
        )));
    }
    events.push(Event::data("[DONE]".into()));
    events
}

fn responses_events(s: &Scenario, model: &str, text: &str) -> Vec<Event> {
    let quoted = quote(text);
    let response = |status: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_mock","object":"response","created_at":{CREATED},"status":"{status}","error":null,"incomplete_details":null,"model":{model},"output":[{output}],"parallel_tool_calls":true,"store":true,"temperature":1.0,"tool_choice":"auto","tools":[],"top_p":1.0,"usage":{usage}}}"#
        )
    };
    let message = format!(
        r#"{{"id":"msg_mock","type":"message","status":"completed","role":"assistant","content":[{{"type":"output_text","text":{quoted},"annotations":[]}}]}}"#
    );
    let final_usage = if s.no_usage {
        "null".to_owned()
    } else {
        usage_json(s)
    };
    let mut seq = 0u64;
    let mut next = |kind: &str, rest: String| {
        let e = Event::typed(
            kind,
            format!(r#"{{"type":"{kind}","sequence_number":{seq}{rest}}}"#),
        );
        seq += 1;
        e
    };
    let mut events = vec![
        next(
            "response.created",
            format!(r#","response":{}"#, response("in_progress", "", "null")),
        ),
        next(
            "response.in_progress",
            format!(r#","response":{}"#, response("in_progress", "", "null")),
        ),
        next(
            "response.output_item.added",
            r#","output_index":0,"item":{"id":"msg_mock","type":"message","status":"in_progress","role":"assistant","content":[]}"#.into(),
        ),
        next(
            "response.content_part.added",
            r#","item_id":"msg_mock","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}"#.into(),
        ),
    ];
    for d in deltas(text) {
        events.push(next(
            "response.output_text.delta",
            format!(
                r#","item_id":"msg_mock","output_index":0,"content_index":0,"delta":{}"#,
                quote(d)
            ),
        ));
    }
    events.push(next(
        "response.output_text.done",
        format!(r#","item_id":"msg_mock","output_index":0,"content_index":0,"text":{quoted}"#),
    ));
    events.push(next(
        "response.content_part.done",
        format!(
            r#","item_id":"msg_mock","output_index":0,"content_index":0,"part":{{"type":"output_text","text":{quoted},"annotations":[]}}"#
        ),
    ));
    events.push(next(
        "response.output_item.done",
        format!(r#","output_index":0,"item":{message}"#),
    ));
    events.push(next(
        "response.completed",
        format!(
            r#","response":{}"#,
            response("completed", &message, &final_usage)
        ),
    ));
    events
}

fn messages_events(s: &Scenario, model: &str, text: &str) -> Vec<Event> {
    let start_usage = if s.no_usage {
        String::new()
    } else {
        format!(
            r#","usage":{{"input_tokens":{},"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}"#,
            s.prompt_tokens
        )
    };
    let end_usage = if s.no_usage {
        String::new()
    } else {
        format!(r#","usage":{{"output_tokens":{}}}"#, s.completion_tokens)
    };
    let mut events = vec![
        Event::typed(
            "message_start",
            format!(
                r#"{{"type":"message_start","message":{{"id":"msg_mock","type":"message","role":"assistant","model":{model},"content":[],"stop_reason":null,"stop_sequence":null{start_usage}}}}}"#
            ),
        ),
        Event::typed(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
                .into(),
        ),
        Event::typed("ping", r#"{"type": "ping"}"#.into()),
    ];
    for d in deltas(text) {
        events.push(Event::typed(
            "content_block_delta",
            format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{}}}}}"#,
                quote(d)
            ),
        ));
    }
    events.push(Event::typed(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#.into(),
    ));
    events.push(Event::typed(
        "message_delta",
        format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}}{end_usage}}}"#
        ),
    ));
    events.push(Event::typed(
        "message_stop",
        r#"{"type":"message_stop"}"#.into(),
    ));
    events
}

/// The stream's events, faults applied.
pub fn stream_events(s: &Scenario) -> Vec<Event> {
    let model = quote(&s.model);
    let text = completion_text(s.output_tokens());
    let mut events = match s.api {
        Api::Chat => chat_events(s, &model, &text),
        Api::Completions | Api::Embeddings => completions_events(s, &model, &text),
        Api::Responses => responses_events(s, &model, &text),
        Api::Messages => messages_events(s, &model, &text),
    };
    if s.malformed {
        for e in events.iter_mut().filter(|e| e.data != "[DONE]") {
            let half = e.data.len() / 2;
            e.data.truncate(half);
            e.data.push_str("<<not json>>");
        }
    }
    if let Some(n) = s.pad_final {
        let padding = format!(r#""x_padding":"{}","#, "x".repeat(n));
        let last = events
            .iter_mut()
            .rev()
            .find(|e| e.data.contains(r#""usage":{"#));
        if let Some(event) = last {
            if let Some(at) = event.data.rfind(r#""usage":{"#) {
                event.data.insert_str(at, &padding);
            }
        }
    }
    if s.truncated_event {
        let last = events
            .iter()
            .rposition(|e| e.data.contains(r#""usage":{"#))
            .or_else(|| events.iter().rposition(|e| e.data != "[DONE]"));
        if let Some(i) = last {
            events.truncate(i + 1);
        }
    }
    events
}

/// The stream on the wire, one piece per event; with `truncated_event`, the last piece stops
/// in the middle of its JSON (no closing brace, no blank line).
pub fn stream_pieces(s: &Scenario) -> Vec<Vec<u8>> {
    let events = stream_events(s);
    let mut pieces: Vec<Vec<u8>> = events.iter().map(|e| e.to_wire().into_bytes()).collect();
    if s.truncated_event {
        if let (Some(piece), Some(event)) = (pieces.last_mut(), events.last()) {
            let head = piece.len() - event.data.len() - 2;
            piece.truncate(head + event.data.len() / 2);
        }
    }
    if let Some(n) = s.chunk_bytes {
        let wire: Vec<u8> = pieces.concat();
        pieces = wire.chunks(n).map(<[u8]>::to_vec).collect();
    }
    pieces
}

/// An error body in the API's format.
pub fn error_body(api: Api, status: u16, message: &str) -> String {
    let message = quote(message);
    if api == Api::Messages {
        let kind = match status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        format!(r#"{{"type":"error","error":{{"type":"{kind}","message":{message}}}}}"#)
    } else {
        let kind = match status {
            400 | 404 => "invalid_request_error",
            429 => "rate_limit_exceeded",
            _ => "server_error",
        };
        format!(r#"{{"error":{{"message":{message},"type":"{kind}","param":null,"code":null}}}}"#)
    }
}

fn provider_headers(api: Api, response: Response) -> Response {
    if api == Api::Messages {
        response
            .with_header("anthropic-ratelimit-tokens-limit", "400000")
            .with_header("anthropic-ratelimit-tokens-remaining", "399700")
            .with_header("anthropic-ratelimit-tokens-reset", "2025-01-01T00:00:01Z")
            .with_header("retry-after", "0")
    } else {
        response
            .with_header("x-ratelimit-limit-requests", "10000")
            .with_header("x-ratelimit-limit-tokens", "30000000")
            .with_header("x-ratelimit-remaining-requests", "9999")
            .with_header("x-ratelimit-remaining-tokens", "29999700")
            .with_header("x-ratelimit-reset-requests", "6ms")
            .with_header("x-ratelimit-reset-tokens", "0s")
    }
}

/// The LLM mock service.
#[derive(Debug, Clone, Copy, Default)]
pub struct LlmMock;

impl LlmMock {
    /// The mock.
    pub fn new() -> LlmMock {
        LlmMock
    }

    fn answer(api: Api, request: &Request) -> Response {
        let s = match Scenario::from_request(api, request) {
            Ok(s) => s,
            Err(BadRequest(message)) => {
                return Response::json(400, error_body(api, 400, &message));
            }
        };
        let mut response = if s.status >= 400 {
            thread::sleep(s.delay);
            Response::json(s.status, error_body(api, s.status, "mock upstream failure"))
        } else if s.stream {
            let stream = Stream {
                pieces: stream_pieces(&s),
                delay: s.delay,
                cut_after: s.cut_after,
                chunked: true,
            };
            Response::streamed(s.status, "text/event-stream; charset=utf-8", stream)
                .with_header("cache-control", "no-cache")
        } else {
            thread::sleep(s.delay);
            let body = json_body(&s);
            let mut response = Response::json(s.status, body);
            if let Some(n) = s.cut_after {
                let body = std::mem::take(&mut response.body);
                let n = n.min(body.len());
                response.stream = Some(Stream {
                    pieces: vec![body[..n].to_vec(), body[n..].to_vec()],
                    delay: Duration::ZERO,
                    cut_after: Some(1),
                    chunked: false,
                });
            }
            response
        };
        if s.provider_headers {
            response = provider_headers(api, response);
        }
        response
            .with_header("x-mock-saw-include-usage", s.include_usage.to_string())
            .with_header("x-mock-saw-stream", s.stream.to_string())
            .with_header(
                "x-mock-saw-model",
                s.model.replace(|c: char| c.is_control(), "?"),
            )
    }
}

impl Handler for LlmMock {
    fn handle(&self, request: &Request) -> Response {
        let saw_encoding = request
            .header("accept-encoding")
            .unwrap_or("none")
            .to_owned();
        let saw_bytes = request.body.len().to_string();
        let response = match (request.path(), Api::from_path(request.path())) {
            ("/healthz", _) => Response::json(200, r#"{"status":"ok","app":"llm"}"#),
            (_, Some(api)) if request.method == "POST" => Self::answer(api, request),
            (_, Some(api)) => {
                Response::json(405, error_body(api, 405, "use POST")).with_header("allow", "POST")
            }
            (_, None) => Response::json(404, error_body(Api::Chat, 404, "unknown endpoint")),
        };
        response
            .with_header("x-mock-saw-accept-encoding", saw_encoding)
            .with_header("x-mock-saw-body-bytes", saw_bytes)
    }
}

/// A small JSON reader: enough to read request bodies (and, in tests, to check every response
/// the mock writes). std only, bounded nesting, never panics.
pub mod json {
    /// A JSON value.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        /// `null`.
        Null,
        /// `true` / `false`.
        Bool(bool),
        /// A number.
        Number(f64),
        /// A string.
        String(String),
        /// An array.
        Array(Vec<Value>),
        /// An object, members in order.
        Object(Vec<(String, Value)>),
    }

    impl Value {
        /// A member of an object (the last one of that name, as most parsers do).
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Object(members) => {
                    members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
                }
                _ => None,
            }
        }

        /// An element of an array.
        pub fn at(&self, i: usize) -> Option<&Value> {
            match self {
                Value::Array(items) => items.get(i),
                _ => None,
            }
        }

        /// The number, if it is one.
        pub fn as_u64(&self) -> Option<u64> {
            match self {
                // Token counts are small whole numbers; the cast is exact for them.
                Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
                _ => None,
            }
        }

        /// The string, if it is one.
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }
    }

    const MAX_DEPTH: usize = 64;

    /// Parses a whole document; `None` if it is not exactly one JSON value.
    pub fn parse(text: &[u8]) -> Option<Value> {
        let mut p = Parser { s: text, i: 0 };
        let v = p.value(0)?;
        p.ws();
        (p.i == text.len()).then_some(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn eat(&mut self, word: &[u8]) -> Option<()> {
            let end = self.i.checked_add(word.len())?;
            (self.s.get(self.i..end)? == word).then(|| self.i = end)
        }

        fn value(&mut self, depth: usize) -> Option<Value> {
            if depth > MAX_DEPTH {
                return None;
            }
            self.ws();
            match self.peek()? {
                b'n' => self.eat(b"null").map(|()| Value::Null),
                b't' => self.eat(b"true").map(|()| Value::Bool(true)),
                b'f' => self.eat(b"false").map(|()| Value::Bool(false)),
                b'"' => self.string().map(Value::String),
                b'[' => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.eat(b"]").is_some() {
                        return Some(Value::Array(items));
                    }
                    loop {
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        match self.peek()? {
                            b',' => self.i += 1,
                            b']' => {
                                self.i += 1;
                                return Some(Value::Array(items));
                            }
                            _ => return None,
                        }
                    }
                }
                b'{' => {
                    self.i += 1;
                    let mut members = Vec::new();
                    self.ws();
                    if self.eat(b"}").is_some() {
                        return Some(Value::Object(members));
                    }
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.ws();
                        self.eat(b":")?;
                        members.push((key, self.value(depth + 1)?));
                        self.ws();
                        match self.peek()? {
                            b',' => self.i += 1,
                            b'}' => {
                                self.i += 1;
                                return Some(Value::Object(members));
                            }
                            _ => return None,
                        }
                    }
                }
                _ => self.number(),
            }
        }

        fn number(&mut self) -> Option<Value> {
            let start = self.i;
            while matches!(
                self.peek(),
                Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            ) {
                self.i += 1;
            }
            let text = std::str::from_utf8(self.s.get(start..self.i)?).ok()?;
            let first = text.bytes().next()?;
            if !(first == b'-' || first.is_ascii_digit()) {
                return None;
            }
            text.parse().ok().map(Value::Number)
        }

        fn hex4(&mut self) -> Option<u32> {
            let end = self.i.checked_add(4)?;
            let digits = std::str::from_utf8(self.s.get(self.i..end)?).ok()?;
            self.i = end;
            u32::from_str_radix(digits, 16).ok()
        }

        fn string(&mut self) -> Option<String> {
            self.eat(b"\"")?;
            let mut out = Vec::new();
            loop {
                let b = self.peek()?;
                self.i += 1;
                match b {
                    b'"' => return String::from_utf8(out).ok(),
                    b'\\' => {
                        let e = self.peek()?;
                        self.i += 1;
                        let c = match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let hi = self.hex4()?;
                                let code = if (0xD800..0xDC00).contains(&hi) {
                                    self.eat(b"\\u")?;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return None;
                                    }
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    hi
                                };
                                char::from_u32(code)?
                            }
                            _ => return None,
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    0..=0x1f => return None,
                    _ => out.push(b),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::json::{parse, Value};
    use super::*;
    use crate::http::Version;

    fn post(path: &str, body: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            target: path.into(),
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn call(path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
        LlmMock::new().handle(&post(path, body, headers))
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json_of(r: &Response) -> Value {
        parse(&r.body).unwrap_or_else(|| panic!("not JSON: {}", String::from_utf8_lossy(&r.body)))
    }

    /// The events of a streamed response: (event name, parsed data or the raw `[DONE]`).
    fn events_of(r: &Response) -> Vec<(Option<String>, Result<Value, String>)> {
        let stream = r.stream.as_ref().expect("a streamed response");
        let wire: Vec<u8> = stream.pieces.concat();
        let text = String::from_utf8(wire).unwrap();
        assert!(text.ends_with("\n\n"), "every event ends with a blank line");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut name = None;
                let mut data = None;
                for line in e.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_owned());
                    } else {
                        panic!("unexpected line {line:?}");
                    }
                }
                let data = data.expect("data");
                let parsed = parse(data.as_bytes()).ok_or(data);
                (name, parsed)
            })
            .collect()
    }

    fn u(v: Option<&Value>) -> u64 {
        v.and_then(Value::as_u64).expect("a count")
    }

    const CHAT: &str = "/v1/chat/completions";
    const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    const STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    const STREAM_USAGE: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;

    #[test]
    fn chat_json_reports_the_default_usage_and_text_of_matching_length() {
        let r = call(CHAT, BODY, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let v = json_of(&r);
        assert_eq!(
            v.get("object").and_then(Value::as_str),
            Some("chat.completion")
        );
        assert_eq!(v.get("model").and_then(Value::as_str), Some("gpt-4o-mini"));
        let usage = v.get("usage").unwrap();
        assert_eq!(u(usage.get("prompt_tokens")), 100);
        assert_eq!(u(usage.get("completion_tokens")), 200);
        assert_eq!(u(usage.get("total_tokens")), 300);
        let text = v
            .get("choices")
            .and_then(|c| c.at(0))
            .and_then(|c| c.get("message"))
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .unwrap();
        assert_eq!(text.len(), 800);
        assert_eq!(header(&r, "x-mock-saw-include-usage"), Some("false"));
        assert_eq!(header(&r, "x-mock-saw-accept-encoding"), Some("none"));
    }

    #[test]
    fn usage_follows_the_request_headers() {
        let r = call(
            "/v1/messages",
            BODY,
            &[
                ("x-mock-prompt-tokens", "7"),
                ("x-mock-completion-tokens", "13"),
            ],
        );
        let v = json_of(&r);
        let usage = v.get("usage").unwrap();
        assert_eq!(u(usage.get("input_tokens")), 7);
        assert_eq!(u(usage.get("output_tokens")), 13);
        let text = v
            .get("content")
            .and_then(|c| c.at(0))
            .and_then(|c| c.get("text"));
        assert_eq!(text.and_then(Value::as_str).map(str::len), Some(52));
        assert_eq!(v.get("type").and_then(Value::as_str), Some("message"));
    }

    #[test]
    fn every_api_answers_json_with_usage_last() {
        for (path, input, output) in [
            (
                "/v1/chat/completions",
                "prompt_tokens",
                Some("completion_tokens"),
            ),
            (
                "/v1/completions",
                "prompt_tokens",
                Some("completion_tokens"),
            ),
            ("/v1/embeddings", "prompt_tokens", None),
            ("/v1/responses", "input_tokens", Some("output_tokens")),
            ("/v1/messages", "input_tokens", Some("output_tokens")),
            (
                "/api/openai/v1/chat/completions?x=1",
                "prompt_tokens",
                Some("completion_tokens"),
            ),
        ] {
            let r = call(path, BODY, &[]);
            let v = json_of(&r);
            let Value::Object(members) = &v else { panic!() };
            assert_eq!(
                members.last().map(|(k, _)| k.as_str()),
                Some("usage"),
                "{path}"
            );
            let usage = v.get("usage").unwrap();
            assert_eq!(u(usage.get(input)), 100, "{path}");
            if let Some(output) = output {
                assert_eq!(u(usage.get(output)), 200, "{path}");
            }
        }
    }

    #[test]
    fn a_chat_stream_reports_usage_only_when_asked() {
        let plain = events_of(&call(CHAT, STREAM, &[]));
        assert_eq!(plain.last().unwrap().1, Err("[DONE]".to_owned()));
        assert!(plain
            .iter()
            .filter_map(|(_, d)| d.as_ref().ok())
            .all(|d| d.get("usage").is_none()));

        let r = call(CHAT, STREAM_USAGE, &[]);
        assert_eq!(
            header(&r, "content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        assert_eq!(header(&r, "x-mock-saw-include-usage"), Some("true"));
        let events = events_of(&r);
        let (last, chunks) = events.split_last().unwrap();
        assert_eq!(last.1, Err("[DONE]".to_owned()));
        let chunks: Vec<&Value> = chunks.iter().map(|(_, d)| d.as_ref().unwrap()).collect();
        let (usage_chunk, others) = chunks.split_last().unwrap();
        assert_eq!(usage_chunk.get("choices"), Some(&Value::Array(vec![])));
        assert_eq!(
            u(usage_chunk.get("usage").and_then(|u| u.get("total_tokens"))),
            300
        );
        assert!(others.iter().all(|c| c.get("usage") == Some(&Value::Null)));
        let text: usize = others
            .iter()
            .filter_map(|c| {
                c.get("choices")?
                    .at(0)?
                    .get("delta")?
                    .get("content")?
                    .as_str()
            })
            .map(str::len)
            .sum();
        assert_eq!(text, 800);
        assert!(others.len() > 5, "the text comes in several deltas");
    }

    #[test]
    fn a_legacy_completions_stream_has_the_same_usage_rule() {
        let events = events_of(&call("/v1/completions", STREAM_USAGE, &[]));
        let usage = events
            .iter()
            .filter_map(|(_, d)| d.as_ref().ok()?.get("usage")?.get("completion_tokens"))
            .next();
        assert_eq!(usage.and_then(Value::as_u64), Some(200));
        let none = events_of(&call("/v1/completions", STREAM, &[]));
        assert!(none
            .iter()
            .all(|(_, d)| d.as_ref().map_or(true, |d| d.get("usage").is_none())));
    }

    #[test]
    fn a_responses_stream_ends_with_response_completed_carrying_usage() {
        let events = events_of(&call("/v1/responses", STREAM, &[]));
        for (name, data) in &events {
            let data = data.as_ref().unwrap();
            assert_eq!(data.get("type").and_then(Value::as_str), name.as_deref());
        }
        let (name, data) = events.last().unwrap();
        assert_eq!(name.as_deref(), Some("response.completed"));
        let usage = data
            .as_ref()
            .unwrap()
            .get("response")
            .unwrap()
            .get("usage")
            .unwrap();
        assert_eq!(u(usage.get("input_tokens")), 100);
        assert_eq!(u(usage.get("output_tokens")), 200);
        let deltas = events
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("response.output_text.delta"))
            .count();
        assert!(deltas > 5);
    }

    #[test]
    fn an_anthropic_stream_has_the_event_sequence_and_cumulative_output() {
        let events = events_of(&call(
            "/v1/messages",
            STREAM,
            &[("x-mock-completion-tokens", "30")],
        ));
        let names: Vec<&str> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
        assert_eq!(
            &names[..3],
            ["message_start", "content_block_start", "ping"]
        );
        assert_eq!(
            &names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert!(names[3..names.len() - 3]
            .iter()
            .all(|n| *n == "content_block_delta"));
        let data = |i: usize| events[i].1.as_ref().unwrap();
        let start = data(0).get("message").unwrap().get("usage").unwrap();
        assert_eq!(u(start.get("input_tokens")), 100);
        let delta = data(events.len() - 2).get("usage").unwrap();
        assert_eq!(u(delta.get("output_tokens")), 30);
        let text: usize = events
            .iter()
            .filter_map(|(_, d)| d.as_ref().ok()?.get("delta")?.get("text")?.as_str())
            .map(str::len)
            .sum();
        assert_eq!(text, 120);
    }

    #[test]
    fn no_usage_leaves_usage_out_everywhere() {
        let v = json_of(&call(CHAT, BODY, &[("x-mock-no-usage", "1")]));
        assert!(v.get("usage").is_none());
        for path in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
            let events = events_of(&call(path, STREAM_USAGE, &[("x-mock-no-usage", "1")]));
            for (_, d) in events
                .iter()
                .filter_map(|(n, d)| Some((n, d.as_ref().ok()?)))
            {
                let usage = d
                    .get("usage")
                    .or_else(|| d.get("message")?.get("usage"))
                    .or_else(|| d.get("response")?.get("usage"));
                assert!(matches!(usage, None | Some(Value::Null)), "{path}: {d:?}");
            }
        }
    }

    #[test]
    fn malformed_and_big_bodies() {
        let r = call(CHAT, BODY, &[("x-mock-malformed", "1")]);
        assert_eq!(r.status, 200);
        assert!(parse(&r.body).is_none());
        let r = call(CHAT, BODY, &[("x-mock-big-body", "100000")]);
        assert!(
            (100_000..100_010).contains(&r.body.len()),
            "{}",
            r.body.len()
        );
        let v = json_of(&r);
        assert_eq!(u(v.get("usage").and_then(|u| u.get("total_tokens"))), 300);
        let events = events_of(&call(CHAT, STREAM_USAGE, &[("x-mock-malformed", "1")]));
        assert!(events.iter().all(|(_, d)| d.is_err()));
    }

    #[test]
    fn a_truncated_event_ends_the_stream_inside_its_json() {
        let r = call(CHAT, STREAM_USAGE, &[("x-mock-truncated-event", "1")]);
        let stream = r.stream.as_ref().unwrap();
        assert_eq!(stream.cut_after, None, "the stream itself ends normally");
        let text = String::from_utf8(stream.pieces.concat()).unwrap();
        let last = text.rsplit("\n\n").next().unwrap();
        assert!(
            last.starts_with("data: {\"id\":\"chatcmpl-mock\""),
            "{last}"
        );
        assert!(!text.contains("[DONE]"));
        assert!(parse(last.trim_start_matches("data: ").as_bytes()).is_none());
        let anthropic = call("/v1/messages", STREAM, &[("x-mock-truncated-event", "1")]);
        let text = String::from_utf8(anthropic.stream.unwrap().pieces.concat()).unwrap();
        assert!(text
            .rsplit("\n\n")
            .next()
            .unwrap()
            .starts_with("event: message_delta\ndata: {"));
        assert!(!text.contains("message_stop"));
    }

    #[test]
    fn faults_reach_the_stream_and_the_status() {
        let r = call(
            CHAT,
            STREAM,
            &[("x-mock-cut-after", "3"), ("x-mock-delay-ms", "20")],
        );
        let stream = r.stream.unwrap();
        assert_eq!(
            (stream.cut_after, stream.delay),
            (Some(3), Duration::from_millis(20))
        );
        let r = call("/v1/messages", BODY, &[("x-mock-status", "500")]);
        assert_eq!(r.status, 500);
        let v = json_of(&r);
        assert_eq!(v.get("type").and_then(Value::as_str), Some("error"));
        let r = call(CHAT, BODY, &[("x-mock-status", "503")]);
        assert_eq!(
            json_of(&r)
                .get("error")
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str),
            Some("server_error")
        );
        let r = call(CHAT, BODY, &[("x-mock-cut-after", "10")]);
        let stream = r.stream.unwrap();
        assert_eq!(stream.pieces[0].len(), 10);
        assert!(!stream.chunked);
    }

    #[test]
    fn bad_requests_are_refused_in_the_apis_format() {
        let r = call("/v1/messages", "{not json", &[]);
        assert_eq!(r.status, 400);
        assert_eq!(
            json_of(&r)
                .get("error")
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str),
            Some("invalid_request_error")
        );
        assert_eq!(call(CHAT, BODY, &[("x-mock-delay-ms", "soon")]).status, 400);
        assert_eq!(call(CHAT, "[1]", &[]).status, 400);
        assert_eq!(call("/v1/nothing", BODY, &[]).status, 404);
        let mut get = post(CHAT, "", &[]);
        get.method = "GET".into();
        assert_eq!(LlmMock::new().handle(&get).status, 405);
        get.target = "/healthz".into();
        assert_eq!(LlmMock::new().handle(&get).status, 200);
    }

    #[test]
    fn echoes_what_it_received() {
        let r = call(CHAT, STREAM_USAGE, &[("accept-encoding", "gzip, br")]);
        assert_eq!(header(&r, "x-mock-saw-accept-encoding"), Some("gzip, br"));
        assert_eq!(header(&r, "x-mock-saw-stream"), Some("true"));
        assert_eq!(header(&r, "x-mock-saw-model"), Some("gpt-4o-mini"));
        assert_eq!(
            header(&r, "x-mock-saw-body-bytes"),
            Some(STREAM_USAGE.len().to_string().as_str())
        );
        let r = call(CHAT, BODY, &[("x-mock-provider-headers", "1")]);
        assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), Some("29999700"));
    }

    #[test]
    fn the_json_reader_handles_escapes_and_refuses_garbage() {
        let v =
            parse(br#" {"a": [1, -2.5e3, true, null], "s": "\u00e9\ud83d\ude00\n\"", "a": {}} "#)
                .unwrap();
        assert_eq!(v.get("s").and_then(Value::as_str), Some("é😀\n\""));
        assert_eq!(
            v.get("a"),
            Some(&Value::Object(vec![])),
            "last duplicate wins"
        );
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "tru",
            "\"\\x\"",
            "1 2",
            "\"\u{1}\"",
            "-",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(deep.as_bytes()).is_none());
        assert_eq!(quote("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
    }

    /// Sends one raw request on `stream` and reads until the server closes or `until` appears.
    fn exchange(stream: &mut std::net::TcpStream, request: &str, until: &str) -> String {
        use std::io::{Read, Write};
        stream.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(until) {
            match stream.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn over_a_socket_streams_end_with_the_last_chunk_and_cut_streams_close_without_it() {
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            crate::server::serve(&listener, Arc::new(LlmMock::new()), Default::default())
        });
        let request = |extra: &str| {
            format!(
                "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{extra}\r\n{STREAM}",
                STREAM.len()
            )
        };
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let whole = exchange(
            &mut conn,
            &request("x-mock-delay-ms: 1\r\n"),
            "\r\n0\r\n\r\n",
        );
        assert!(whole.starts_with("HTTP/1.1 200 OK\r\n"), "{whole}");
        assert!(whole.contains("transfer-encoding: chunked\r\n"));
        assert!(whole
            .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n\r\n0\r\n\r\n"));
        // The connection is kept: a second request on it is cut after two events.
        let cut = exchange(&mut conn, &request("x-mock-cut-after: 2\r\n"), "\u{0}never");
        assert!(cut.contains("event: content_block_start"), "{cut}");
        assert!(
            !cut.contains("event: ping") && !cut.ends_with("0\r\n\r\n"),
            "{cut}"
        );
    }

    #[test]
    fn deltas_are_whole_tokens_and_few() {
        let text = completion_text(200);
        let d = deltas(&text);
        assert_eq!(d.len(), 10);
        assert!(d.iter().all(|p| p.len() == 80));
        assert_eq!(deltas(&completion_text(3)).len(), 3);
        assert!(deltas("").is_empty());
    }

    #[test]
    fn chunk_bytes_splits_the_same_stream_anywhere() {
        let whole = call(CHAT, STREAM_USAGE, &[]);
        let whole = whole.stream.as_ref().unwrap().pieces.concat();
        for n in ["1", "7", "100000"] {
            let r = call(CHAT, STREAM_USAGE, &[("x-mock-chunk-bytes", n)]);
            let pieces = &r.stream.as_ref().unwrap().pieces;
            let size: usize = n.parse().unwrap();
            assert!(pieces.iter().all(|p| p.len() <= size && !p.is_empty()));
            assert_eq!(pieces.concat(), whole, "{n}");
        }
        assert_eq!(
            call(CHAT, STREAM, &[("x-mock-chunk-bytes", "0")]).status,
            400
        );
    }

    #[test]
    fn pad_final_grows_the_last_usage_event_and_keeps_its_usage() {
        for path in [
            "/v1/chat/completions",
            "/v1/messages",
            "/v1/responses",
            "/v1/completions",
        ] {
            let r = call(path, STREAM_USAGE, &[("x-mock-pad-final", "300000")]);
            let events = events_of(&r);
            let (_, last) = events
                .iter()
                .rev()
                .find(|(_, d)| {
                    d.as_ref().is_ok_and(|d| {
                        d.get("x_padding").is_some()
                            || d.get("response").and_then(|r| r.get("x_padding")).is_some()
                    })
                })
                .unwrap_or_else(|| panic!("{path}: no padded event"));
            let last = last.as_ref().unwrap();
            let usage = last
                .get("usage")
                .or_else(|| last.get("response")?.get("usage"))
                .unwrap();
            assert!(matches!(usage, Value::Object(_)), "{path}");
            let wire: usize = r.stream.as_ref().unwrap().pieces.iter().map(Vec::len).sum();
            assert!(wire > 300_000, "{path}");
        }
    }
}
