//! What an LLM request asks for, read from its path and its complete JSON body.
//!
//! The caller buffers the request body up to its own bound before calling in here; nothing in
//! this module allocates more than a small multiple of the body it is given.

use core::fmt;
use core::ops::Range;

use alloc::string::String;
use alloc::vec::Vec;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::json::{keys, Count, FieldError, Flag, Seen};

/// Which LLM API a request speaks, told by its path.
///
/// Matching is on the path's last segments (query string ignored, one trailing `/` allowed),
/// so that a route prefix (`/openai/v1/chat/completions`) or Azure's
/// `/openai/deployments/{name}/chat/completions?api-version=…` is still recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiKind {
    /// OpenAI chat completions: `…/chat/completions`.
    OpenAiChat,
    /// OpenAI legacy completions: `…/completions`.
    OpenAiCompletions,
    /// OpenAI embeddings: `…/embeddings`. Input only; never streams.
    OpenAiEmbeddings,
    /// OpenAI Responses: `…/v1/responses` (not `…/responses/{id}`, which reads a stored one).
    OpenAiResponses,
    /// Anthropic messages: `…/v1/messages` (not `…/messages/count_tokens` or batches).
    AnthropicMessages,
    /// Anything else.
    Unknown,
}

impl ApiKind {
    /// The API a request path belongs to.
    pub fn from_path(path: &str) -> ApiKind {
        // What the upstream routes: decoded, dot segments resolved, ASCII case ignored (crate::path).
        let normalized = crate::path::normalize_str(path).to_ascii_lowercase();
        let path = normalized.as_str();
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let path = path.strip_suffix('/').unwrap_or(path);
        if path.ends_with("/chat/completions") {
            ApiKind::OpenAiChat
        } else if path.ends_with("/completions") {
            ApiKind::OpenAiCompletions
        } else if path.ends_with("/embeddings") {
            ApiKind::OpenAiEmbeddings
        } else if path.ends_with("/v1/responses") {
            ApiKind::OpenAiResponses
        } else if path.ends_with("/v1/messages") {
            ApiKind::AnthropicMessages
        } else {
            ApiKind::Unknown
        }
    }

    /// Whether a streamed response reports usage only when the request sets
    /// `stream_options.include_usage` (OpenAI chat and legacy completions). The Responses API
    /// and Anthropic always report usage in their streams.
    pub fn needs_stream_usage_option(self) -> bool {
        matches!(self, ApiKind::OpenAiChat | ApiKind::OpenAiCompletions)
    }
}

/// Tokens estimated from a byte count: bytes / 4, rounded up.
///
/// Four bytes a token is the usual rule of thumb for English with OpenAI's and Anthropic's
/// tokenizers. Bytes rather than characters, because for scripts that need several UTF-8 bytes
/// a character (CJK, Cyrillic) the tokenizers spend roughly a token per character or two,
/// which bytes/4 approaches and characters/4 badly undercounts. Used only until the upstream
/// reports the real count.
pub fn estimate_tokens(bytes: u64) -> u64 {
    bytes.div_ceil(4)
}

/// The longest `model` accepted. Model names are short; a longer one is refused so that it
/// cannot bloat logs or keys derived from it.
pub const MAX_MODEL_LEN: usize = 256;

/// What a request body asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LlmRequest {
    /// `model`, if the body names one.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub stream_usage: bool,
    /// `max_tokens` (OpenAI legacy and chat, Anthropic).
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens` (OpenAI chat, newer models).
    pub max_completion_tokens: Option<u64>,
    /// `max_output_tokens` (OpenAI Responses).
    pub max_output_tokens: Option<u64>,
    /// `n`: how many choices to generate (OpenAI chat and legacy completions), each up to the
    /// output limit.
    pub n: Option<u64>,
    /// The body's length in bytes.
    pub body_len: usize,
}

impl LlmRequest {
    /// Reads the fields above from a complete JSON request body; everything else is skipped.
    ///
    /// # Errors
    /// [`RequestError::NotJson`] or [`RequestError::NotAnObject`] for a body that is not a
    /// JSON object; [`RequestError::BadField`] for a field of the wrong type or repeated
    /// (the upstream might read a different copy than we do).
    pub fn parse(body: &[u8]) -> Result<LlmRequest, RequestError> {
        match serde_json::from_slice::<Parsed>(body) {
            Err(_) => Err(RequestError::NotJson),
            Ok(Parsed::NotAnObject) => Err(RequestError::NotAnObject),
            Ok(Parsed::Bad { field, reason }) => Err(RequestError::BadField { field, reason }),
            Ok(Parsed::Request(mut request)) => {
                request.body_len = body.len();
                Ok(request)
            }
        }
    }

    /// The most output the client allowed: the largest of the three limit fields present
    /// (an API honours one of them; assuming the largest never under-reserves).
    pub fn max_output(&self) -> Option<u64> {
        [
            self.max_tokens,
            self.max_completion_tokens,
            self.max_output_tokens,
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// The most output the request can produce: [`max_output`](Self::max_output) times `n`.
    pub fn max_output_all_choices(&self) -> Option<u64> {
        self.max_output()
            .map(|max| max.saturating_mul(self.n.unwrap_or(1).max(1)))
    }

    /// The prompt's size in tokens, estimated from the whole body with [`estimate_tokens`].
    /// The JSON syntax and parameters around the prompt make this a slight over-estimate,
    /// which is the safe side for a reservation; the upstream's usage replaces it.
    pub fn estimated_input_tokens(&self) -> u64 {
        estimate_tokens(u64::try_from(self.body_len).unwrap_or(u64::MAX))
    }
}

/// Why a request body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// Not well-formed JSON (or nested deeper than 128 levels).
    NotJson,
    /// Well-formed JSON, but not an object.
    NotAnObject,
    /// A field we read has the wrong type or appears twice.
    BadField {
        /// The field's path, e.g. `stream_options.include_usage`.
        field: &'static str,
        /// What is wrong with it.
        reason: FieldError,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::NotJson => f.write_str("request body is not well-formed JSON"),
            RequestError::NotAnObject => f.write_str("request body is not a JSON object"),
            RequestError::BadField { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl core::error::Error for RequestError {}

/// Makes a streamed OpenAI chat or completions request ask for usage in its stream.
///
/// Returns `Ok(Some(body))` with `"include_usage": true` added to `stream_options` (creating
/// the object if needed) when `api` [needs it](ApiKind::needs_stream_usage_option), the
/// request streams, and it does not already ask; `Ok(None)` when the body can go upstream
/// unchanged. The caller must then fix `content-length`.
///
/// The edit is textual: every other byte of the body, key order and number spelling
/// included, is kept as it was. (serde_json's `preserve_order` would also keep key order and
/// does build without `std`, but it is a crate-wide feature and would still respell numbers
/// and whitespace.)
///
/// A client that did not ask for usage will see one extra last chunk with `"choices": []`
/// and a `"usage"` field on each chunk; OpenAI's SDKs handle both.
///
/// # Errors
/// As [`LlmRequest::parse`]; the body must be valid before it is edited.
pub fn ensure_stream_usage(api: ApiKind, body: &[u8]) -> Result<Option<Vec<u8>>, RequestError> {
    if !api.needs_stream_usage_option() {
        return Ok(None);
    }
    let request = LlmRequest::parse(body)?;
    if !request.stream || request.stream_usage {
        return Ok(None);
    }
    // The body parsed as an object, so the splice below finds its structure; if it somehow
    // did not, refuse rather than guess.
    splice_include_usage(body)
        .map(Some)
        .ok_or(RequestError::NotJson)
}

const INCLUDE_USAGE: &[u8] = b"\"include_usage\":true";

/// The most [`ensure_stream_usage`] can add to a body (`"stream_options":{"include_usage":true},`):
/// a filter that asks Envoy to buffer a body for rewriting must leave this much room.
pub const MAX_STREAM_USAGE_GROWTH: usize =
    b"\"stream_options\":{".len() + INCLUDE_USAGE.len() + b"},".len();

fn splice_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut cursor = Cursor { s: body, i: 0 };
    cursor.ws();
    let open = cursor.i;
    let members = cursor.object_members()?;
    let options = members
        .iter()
        .rev()
        .find(|m| key_is(body, &m.key, "stream_options"));
    let (at, remove, insert): (usize, Range<usize>, Vec<&[u8]>) = match options {
        None => {
            let at = open.checked_add(1)?;
            (
                at,
                at..at,
                alloc::vec![b"\"stream_options\":{", INCLUDE_USAGE, b"},"],
            )
        }
        Some(options) if body.get(options.value.start) == Some(&b'{') => {
            let mut inner = Cursor {
                s: body,
                i: options.value.start,
            };
            let inner_members = inner.object_members()?;
            match inner_members
                .iter()
                .rev()
                .find(|m| key_is(body, &m.key, "include_usage"))
            {
                Some(flag) => (flag.value.start, flag.value.clone(), alloc::vec![b"true"]),
                None => {
                    let at = options.value.start.checked_add(1)?;
                    let comma: &[u8] = if inner_members.is_empty() { b"" } else { b"," };
                    (at, at..at, alloc::vec![INCLUDE_USAGE, comma])
                }
            }
        }
        // `null`: [`LlmRequest::parse`] refused every other type.
        Some(options) => (
            options.value.start,
            options.value.clone(),
            alloc::vec![b"{", INCLUDE_USAGE, b"}"],
        ),
    };
    let extra: usize = insert.iter().map(|part| part.len()).sum();
    let mut out = Vec::with_capacity(body.len().saturating_add(extra));
    out.extend_from_slice(body.get(..at)?);
    for part in insert {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(body.get(remove.end..)?);
    Some(out)
}

/// Whether the raw key bytes at `range` (between the quotes) spell `name`, escapes decoded.
fn key_is(body: &[u8], range: &Range<usize>, name: &str) -> bool {
    let Some(raw) = body.get(range.clone()) else {
        return false;
    };
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    let quoted = range
        .start
        .checked_sub(1)
        .zip(range.end.checked_add(1))
        .and_then(|(a, b)| body.get(a..b));
    quoted
        .and_then(|q| serde_json::from_slice::<String>(q).ok())
        .is_some_and(|key| key == name)
}

/// One member of a JSON object: where its key's characters and its value sit in the text.
struct Member {
    key: Range<usize>,
    value: Range<usize>,
}

/// A structural walk over JSON text that serde_json has already accepted: just enough to find
/// where members start and end. Iterative, so nesting cannot exhaust the stack.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn bump(&mut self) {
        self.i = self.i.saturating_add(1);
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.bump())
    }

    /// At a `"`: skips the string, returning the range of its contents.
    fn string(&mut self) -> Option<Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => {
                    let end = self.i;
                    self.bump();
                    return Some(start..end);
                }
                b'\\' => {
                    self.bump();
                    self.bump();
                }
                _ => self.bump(),
            }
        }
    }

    /// Skips one value of any type, returning its range.
    fn value(&mut self) -> Option<Range<usize>> {
        let start = self.i;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth = depth.saturating_add(1),
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.bump();
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.bump();
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.bump();
                }
            }
        }
        Some(start..self.i)
    }

    /// At a `{`: the object's members, leaving the cursor after its `}`.
    fn object_members(&mut self) -> Option<Vec<Member>> {
        self.eat(b'{')?;
        let mut members = Vec::new();
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(members);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let value = self.value()?;
            members.push(Member { key, value });
            self.ws();
            match self.peek()? {
                b',' => self.bump(),
                b'}' => {
                    self.bump();
                    return Some(members);
                }
                _ => return None,
            }
        }
    }
}

keys!(
    /// The top-level request keys we read.
    RequestKey {
        Model = "model",
        Stream = "stream",
        StreamOptions = "stream_options",
        MaxTokens = "max_tokens",
        MaxCompletionTokens = "max_completion_tokens",
        MaxOutputTokens = "max_output_tokens",
        N = "n",
    }
);

keys!(
    /// The `stream_options` keys we read.
    StreamOptionsKey { IncludeUsage = "include_usage" }
);

/// A request body, or the first reason it cannot be read.
enum Parsed {
    Request(LlmRequest),
    NotAnObject,
    Bad {
        field: &'static str,
        reason: FieldError,
    },
}

fn request_key_name(key: RequestKey) -> &'static str {
    match key {
        RequestKey::Model => "model",
        RequestKey::Stream => "stream",
        RequestKey::StreamOptions => "stream_options",
        RequestKey::MaxTokens => "max_tokens",
        RequestKey::MaxCompletionTokens => "max_completion_tokens",
        RequestKey::MaxOutputTokens => "max_output_tokens",
        RequestKey::N => "n",
        RequestKey::Other => "",
    }
}

/// A `model` string, bounded.
enum Model {
    Null,
    Name(String),
    Bad(FieldError),
}

impl<'de> Deserialize<'de> for Model {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Model;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a model name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Model, E> {
                Ok(if v.len() > MAX_MODEL_LEN {
                    Model::Bad(FieldError::TooLong)
                } else {
                    Model::Name(v.into())
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Model, E> {
                Ok(Model::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Model, E> {
                Ok(Model::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Model, D::Error> {
                Model::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Model, E> {
                Ok(Model::Bad(FieldError::WrongType))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Model, E> {
                Ok(Model::Bad(FieldError::WrongType))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Model, E> {
                Ok(Model::Bad(FieldError::WrongType))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Model, E> {
                Ok(Model::Bad(FieldError::WrongType))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Model, A::Error> {
                IgnoredAny
                    .visit_map(map)
                    .map(|_| Model::Bad(FieldError::WrongType))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Model, A::Error> {
                IgnoredAny
                    .visit_seq(seq)
                    .map(|_| Model::Bad(FieldError::WrongType))
            }
        }
        d.deserialize_any(V)
    }
}

/// `stream_options`: `null`/absent, an object (with its `include_usage`), or a problem.
enum StreamOptions {
    Null,
    Object {
        include_usage: bool,
    },
    Bad {
        field: &'static str,
        reason: FieldError,
    },
}

impl<'de> Deserialize<'de> for StreamOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl V {
            fn wrong() -> StreamOptions {
                StreamOptions::Bad {
                    field: "stream_options",
                    reason: FieldError::WrongType,
                }
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stream options")
            }
            fn visit_unit<E: de::Error>(self) -> Result<StreamOptions, E> {
                Ok(StreamOptions::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<StreamOptions, E> {
                Ok(StreamOptions::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<StreamOptions, D::Error> {
                StreamOptions::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<StreamOptions, E> {
                Ok(Self::wrong())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<StreamOptions, E> {
                Ok(Self::wrong())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<StreamOptions, E> {
                Ok(Self::wrong())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<StreamOptions, E> {
                Ok(Self::wrong())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StreamOptions, E> {
                Ok(Self::wrong())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StreamOptions, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Self::wrong())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamOptions, A::Error> {
                let mut include_usage = false;
                let mut seen = Seen::default();
                let mut bad = None;
                while let Some(key) = map.next_key::<StreamOptionsKey>()? {
                    match key {
                        StreamOptionsKey::IncludeUsage if seen.first(key.bit()) => {
                            match map.next_value::<Flag>()? {
                                Flag::Null => {}
                                Flag::Bool(b) => include_usage = b,
                                Flag::Bad(reason) => bad = bad.or(Some(reason)),
                            }
                        }
                        StreamOptionsKey::IncludeUsage => {
                            map.next_value::<IgnoredAny>()?;
                            bad = bad.or(Some(FieldError::Duplicate));
                        }
                        StreamOptionsKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(match bad {
                    Some(reason) => StreamOptions::Bad {
                        field: "stream_options.include_usage",
                        reason,
                    },
                    None => StreamOptions::Object { include_usage },
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parsed;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a request body")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Parsed, E> {
                Ok(Parsed::NotAnObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Parsed, E> {
                Ok(Parsed::NotAnObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Parsed, E> {
                Ok(Parsed::NotAnObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Parsed, E> {
                Ok(Parsed::NotAnObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Parsed, E> {
                Ok(Parsed::NotAnObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Parsed, E> {
                Ok(Parsed::NotAnObject)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Parsed, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Parsed::NotAnObject)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
                let mut request = LlmRequest::default();
                let mut seen = Seen::default();
                let mut bad: Option<(&'static str, FieldError)> = None;
                while let Some(key) = map.next_key::<RequestKey>()? {
                    if !seen.first(key.bit()) {
                        map.next_value::<IgnoredAny>()?;
                        bad = bad.or(Some((request_key_name(key), FieldError::Duplicate)));
                        continue;
                    }
                    let problem = match key {
                        RequestKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                            None
                        }
                        RequestKey::Model => match map.next_value::<Model>()? {
                            Model::Null => None,
                            Model::Name(name) => {
                                request.model = Some(name);
                                None
                            }
                            Model::Bad(reason) => Some(("model", reason)),
                        },
                        RequestKey::Stream => match map.next_value::<Flag>()? {
                            Flag::Null => None,
                            Flag::Bool(b) => {
                                request.stream = b;
                                None
                            }
                            Flag::Bad(reason) => Some(("stream", reason)),
                        },
                        RequestKey::StreamOptions => match map.next_value::<StreamOptions>()? {
                            StreamOptions::Null => None,
                            StreamOptions::Object { include_usage } => {
                                request.stream_usage = include_usage;
                                None
                            }
                            StreamOptions::Bad { field, reason } => Some((field, reason)),
                        },
                        count_key => {
                            let slot = match count_key {
                                RequestKey::MaxTokens => &mut request.max_tokens,
                                RequestKey::MaxCompletionTokens => {
                                    &mut request.max_completion_tokens
                                }
                                RequestKey::MaxOutputTokens => &mut request.max_output_tokens,
                                _ => &mut request.n,
                            };
                            map.next_value::<Count>()?
                                .store(slot)
                                .err()
                                .map(|reason| (request_key_name(count_key), reason))
                        }
                    };
                    bad = bad.or(problem);
                }
                Ok(match bad {
                    Some((field, reason)) => Parsed::Bad { field, reason },
                    None => Parsed::Request(request),
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::{format, string::ToString, vec::Vec};

    use super::*;

    fn parse(body: &str) -> Result<LlmRequest, RequestError> {
        LlmRequest::parse(body.as_bytes())
    }

    fn rewrite(body: &str) -> Option<String> {
        ensure_stream_usage(ApiKind::OpenAiChat, body.as_bytes())
            .unwrap()
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn api_kind_from_path() {
        let cases = [
            ("/v1/chat/completions", ApiKind::OpenAiChat),
            ("/v1/chat/completions/", ApiKind::OpenAiChat),
            (
                "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                ApiKind::OpenAiChat,
            ),
            ("/api/openai/v1/chat/completions#x", ApiKind::OpenAiChat),
            ("/v1/completions", ApiKind::OpenAiCompletions),
            ("/v1/embeddings", ApiKind::OpenAiEmbeddings),
            ("/v1/responses", ApiKind::OpenAiResponses),
            ("/v1/responses?stream=true", ApiKind::OpenAiResponses),
            ("/v1/responses/resp_123", ApiKind::Unknown),
            ("/v1/messages", ApiKind::AnthropicMessages),
            ("/anthropic/v1/messages", ApiKind::AnthropicMessages),
            ("/v1/messages/count_tokens", ApiKind::Unknown),
            ("/v1/messages/batches", ApiKind::Unknown),
            ("/v1/threads/thread_abc/messages", ApiKind::Unknown),
            ("/v1/models", ApiKind::Unknown),
            ("/", ApiKind::Unknown),
            ("", ApiKind::Unknown),
            ("/V1/CHAT/COMPLETIONS", ApiKind::OpenAiChat),
            ("/v1/chat/completion%73", ApiKind::OpenAiChat),
            ("/v1//chat/./x/../completions", ApiKind::OpenAiChat),
        ];
        for (path, kind) in cases {
            assert_eq!(ApiKind::from_path(path), kind, "{path}");
        }
        assert!(ApiKind::OpenAiChat.needs_stream_usage_option());
        assert!(ApiKind::OpenAiCompletions.needs_stream_usage_option());
        assert!(!ApiKind::AnthropicMessages.needs_stream_usage_option());
        assert!(!ApiKind::OpenAiResponses.needs_stream_usage_option());
    }

    #[test]
    fn openai_chat_request() {
        let body = r#"{
          "model": "gpt-4o",
          "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What's in this image?"},
              {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}}]}
          ],
          "max_completion_tokens": 300,
          "temperature": 0.2,
          "n": 2,
          "stream": true,
          "stream_options": {"include_usage": true},
          "tools": [{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}]
        }"#;
        let r = parse(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o"));
        assert!(r.stream && r.stream_usage);
        assert_eq!(
            (r.max_completion_tokens, r.max_tokens, r.n),
            (Some(300), None, Some(2))
        );
        assert_eq!(r.max_output(), Some(300));
        assert_eq!(r.max_output_all_choices(), Some(600));
        assert_eq!(r.body_len, body.len());
        assert_eq!(r.estimated_input_tokens(), (body.len() as u64).div_ceil(4));
    }

    #[test]
    fn anthropic_and_responses_requests() {
        let r = parse(
            r#"{"model":"claude-sonnet-4-20250514","max_tokens":1024,"stream":true,
                "system":"Be brief.","messages":[{"role":"user","content":"Hello, Claude"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (r.model.as_deref(), r.stream, r.max_output()),
            (Some("claude-sonnet-4-20250514"), true, Some(1024))
        );
        let r = parse(r#"{"model":"gpt-4.1","input":"Tell me a story","max_output_tokens":50}"#)
            .unwrap();
        assert_eq!(
            (r.stream, r.max_output_tokens, r.max_output()),
            (false, Some(50), Some(50))
        );
    }

    #[test]
    fn the_largest_output_limit_is_reserved() {
        let r = parse(r#"{"max_tokens":10,"max_completion_tokens":500,"n":0}"#).unwrap();
        assert_eq!(r.max_output(), Some(500));
        assert_eq!(
            r.max_output_all_choices(),
            Some(500),
            "n: 0 is treated as 1"
        );
        let r = parse(r#"{"max_tokens":18446744073709551615,"n":3}"#).unwrap();
        assert_eq!(r.max_output_all_choices(), Some(u64::MAX));
        assert_eq!(parse("{}").unwrap().max_output(), None);
    }

    #[test]
    fn nulls_are_absent() {
        let r = parse(r#"{"model":null,"stream":null,"stream_options":null,"max_tokens":null}"#)
            .unwrap();
        assert_eq!(
            r,
            LlmRequest {
                body_len: r.body_len,
                ..LlmRequest::default()
            }
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let e = |field, reason| Err(RequestError::BadField { field, reason });
        assert_eq!(parse(r#"{"model":42}"#), e("model", FieldError::WrongType));
        assert_eq!(
            parse(&format!(r#"{{"model":"{}"}}"#, "m".repeat(300))),
            e("model", FieldError::TooLong)
        );
        assert_eq!(
            parse(r#"{"stream":"true"}"#),
            e("stream", FieldError::WrongType)
        );
        assert_eq!(
            parse(r#"{"stream":true,"stream":false}"#),
            e("stream", FieldError::Duplicate)
        );
        assert_eq!(
            parse(r#"{"max_tokens":-1}"#),
            e("max_tokens", FieldError::Negative)
        );
        assert_eq!(
            parse(r#"{"max_tokens":1.5}"#),
            e("max_tokens", FieldError::NotAnInteger)
        );
        assert_eq!(
            parse(r#"{"max_output_tokens":1e40}"#),
            e("max_output_tokens", FieldError::TooLarge)
        );
        assert_eq!(
            parse(r#"{"stream_options":true}"#),
            e("stream_options", FieldError::WrongType)
        );
        assert_eq!(
            parse(r#"{"stream_options":{"include_usage":"yes"}}"#),
            e("stream_options.include_usage", FieldError::WrongType)
        );
        assert_eq!(
            parse(r#"{"stream_options":{"include_usage":false,"include_usage":true}}"#),
            e("stream_options.include_usage", FieldError::Duplicate)
        );
        assert_eq!(
            parse(r#"{"stre\u0061m":true,"stream":false}"#),
            e("stream", FieldError::Duplicate)
        );
        assert_eq!(parse("[]"), Err(RequestError::NotAnObject));
        assert_eq!(parse("\"hi\""), Err(RequestError::NotAnObject));
        assert_eq!(parse("{\"model\":"), Err(RequestError::NotJson));
        assert_eq!(parse(""), Err(RequestError::NotJson));
        assert_eq!(
            RequestError::BadField {
                field: "max_tokens",
                reason: FieldError::Negative
            }
            .to_string(),
            "max_tokens: must not be negative"
        );
    }

    #[test]
    fn stream_usage_is_added_when_missing() {
        let body =
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
        let out = rewrite(body).unwrap();
        assert_eq!(
            out,
            r#"{"stream_options":{"include_usage":true},"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"stream":true}"#
        );
        let again = parse(&out).unwrap();
        assert!(again.stream && again.stream_usage);
        assert_eq!(rewrite(&out), None, "idempotent");
    }

    #[test]
    fn other_stream_options_are_kept() {
        let body = "{\n  \"stream\": true,\n  \"stream_options\": { \"continuous_usage_stats\": true },\n  \"temperature\": 0.70\n}";
        let out = rewrite(body).unwrap();
        assert_eq!(
            out,
            "{\n  \"stream\": true,\n  \"stream_options\": {\"include_usage\":true, \"continuous_usage_stats\": true },\n  \"temperature\": 0.70\n}"
        );
        assert_eq!(
            json(&out)["stream_options"],
            json(r#"{"include_usage":true,"continuous_usage_stats":true}"#)
        );
    }

    #[test]
    fn empty_null_and_false_stream_options_are_fixed() {
        let cases = [
            (
                r#"{"stream":true,"stream_options":{}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{ }}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true }}"#,
            ),
            (
                r#"{"stream":true,"stream_options":null}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{"a":[1,{"include_usage":false}],"include_usage":false}}"#,
                r#"{"stream":true,"stream_options":{"a":[1,{"include_usage":false}],"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage" : null , "b":"}"}}"#,
                r#"{"stream":true,"stream_options":{"include_usage" : true , "b":"}"}}"#,
            ),
            (
                r#"{"stream_\u006fptions":{"include_usage":false},"stream":true}"#,
                r#"{"stream_\u006fptions":{"include_usage":true},"stream":true}"#,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(rewrite(body).as_deref(), Some(want), "{body}");
            assert!(parse(want).unwrap().stream_usage);
        }
    }

    #[test]
    fn nested_lookalikes_are_not_touched() {
        let body = r#"{"messages":[{"role":"user","content":"{\"stream_options\":{}}","stream_options":1}],
            "metadata":{"stream_options":{"include_usage":false}},"stream":true}"#;
        let out = rewrite(body).unwrap();
        let mut want = json(body);
        want["stream_options"] = json(r#"{"include_usage":true}"#);
        assert_eq!(json(&out), want);
        assert!(out.ends_with(body.get(1..).unwrap()));
    }

    #[test]
    fn no_rewrite_when_not_needed() {
        assert_eq!(rewrite(r#"{"model":"m","stream":false}"#), None);
        assert_eq!(rewrite(r#"{"model":"m"}"#), None);
        assert_eq!(
            rewrite(r#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        let anthropic = br#"{"model":"claude","stream":true,"max_tokens":5}"#;
        assert_eq!(
            ensure_stream_usage(ApiKind::AnthropicMessages, anthropic),
            Ok(None)
        );
        assert_eq!(
            ensure_stream_usage(ApiKind::OpenAiResponses, anthropic),
            Ok(None)
        );
        assert_eq!(ensure_stream_usage(ApiKind::Unknown, b"not json"), Ok(None));
        assert!(ensure_stream_usage(
            ApiKind::OpenAiCompletions,
            br#"{"prompt":"x","stream":true}"#
        )
        .unwrap()
        .is_some());
    }

    #[test]
    fn invalid_bodies_are_not_rewritten() {
        assert_eq!(
            ensure_stream_usage(ApiKind::OpenAiChat, b"{\"stream\":true"),
            Err(RequestError::NotJson)
        );
        assert_eq!(
            ensure_stream_usage(
                ApiKind::OpenAiChat,
                br#"{"stream":true,"stream_options":"x"}"#
            ),
            Err(RequestError::BadField {
                field: "stream_options",
                reason: FieldError::WrongType
            })
        );
    }

    #[test]
    fn whitespace_everywhere_and_unicode_are_preserved() {
        let body = " \r\n\t{ \"stream\" :\ttrue , \"messages\" : [ { \"content\" : \"héllo \\\" } ] {\" } ] } \n";
        let out = rewrite(body).unwrap();
        assert_eq!(
            out,
            body.replacen('{', "{\"stream_options\":{\"include_usage\":true},", 1)
        );
        assert!(parse(&out).unwrap().stream_usage);
    }

    #[test]
    fn hostile_bodies_do_not_panic_or_overflow() {
        // serde_json skips ignored content iteratively, and so does the splice walker: deep
        // nesting in a field we do not read costs time linear in its size, and no stack.
        let deep = format!(
            "{{\"stream\":true,\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let out = ensure_stream_usage(ApiKind::OpenAiChat, deep.as_bytes())
            .unwrap()
            .unwrap();
        assert!(out.starts_with(
            b"{\"stream_options\":{\"include_usage\":true},\"stream\":true,\"x\":[[["
        ));
        assert_eq!(out.len(), deep.len() + 40);
        let unclosed = format!("{{\"stream\":true,\"x\":{}", "[".repeat(100_000));
        assert!(matches!(
            ensure_stream_usage(ApiKind::OpenAiChat, unclosed.as_bytes()),
            Err(RequestError::NotJson)
        ));
        let garbage: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(
            ensure_stream_usage(ApiKind::OpenAiChat, &garbage),
            Err(RequestError::NotJson)
        );
        // The splice walker on its own, over truncated and broken text: no panic, no answer.
        for text in [
            "",
            "{",
            "{\"a",
            "{\"a\":",
            "{\"a\":[",
            "{\"a\":\"\\",
            "{\"a\":1,",
            "{\"a\" 1}",
            "{]",
            "{\"a\":]]]}",
        ] {
            assert_eq!(splice_include_usage(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(
            (
                estimate_tokens(0),
                estimate_tokens(1),
                estimate_tokens(4),
                estimate_tokens(5)
            ),
            (0, 1, 1, 2)
        );
        assert_eq!(estimate_tokens(u64::MAX), u64::MAX / 4 + 1);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                "[ -~\\u{e9}\\u{4e2d}]{0,8}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4)
                        .prop_map(serde_json::Value::Array),
                    proptest::collection::btree_map("[a-z_]{0,14}", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// The rewrite changes only `stream_options.include_usage`, whatever else the body
            /// holds and however it is laid out.
            #[test]
            fn rewrite_sets_include_usage_and_keeps_everything_else(
                fields in proptest::collection::btree_map("[a-z_]{1,14}", arb_json(), 0..5),
                options in proptest::option::of(proptest::collection::btree_map("[a-z_]{1,14}", arb_json(), 0..3)),
                pretty in any::<bool>(),
            ) {
                let mut body = serde_json::Map::new();
                for (k, v) in fields {
                    body.insert(k, v);
                }
                body.insert("stream".into(), true.into());
                if let Some(options) = options {
                    body.insert("stream_options".into(), serde_json::Value::Object(options.into_iter().collect()));
                }
                let value = serde_json::Value::Object(body);
                let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
                let Ok(request) = LlmRequest::parse(text.as_bytes()) else {
                    // A generated field such as `model: 5` is refused; that is not under test.
                    return Ok(());
                };
                let out = ensure_stream_usage(ApiKind::OpenAiChat, text.as_bytes()).unwrap();
                let mut want = value.clone();
                if !request.stream_usage {
                    let options = want.as_object_mut().unwrap().entry("stream_options").or_insert(serde_json::json!({}));
                    if !options.is_object() {
                        *options = serde_json::json!({});
                    }
                    options.as_object_mut().unwrap().insert("include_usage".into(), true.into());
                }
                let got: serde_json::Value = match &out {
                    Some(bytes) => serde_json::from_slice(bytes).unwrap(),
                    None => value.clone(),
                };
                prop_assert_eq!(out.is_some(), !request.stream_usage);
                prop_assert_eq!(got, want);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = LlmRequest::parse(&bytes);
                let _ = ensure_stream_usage(ApiKind::OpenAiChat, &bytes);
                let _ = splice_include_usage(&bytes);
            }
        }
    }
}
