//! What an LLM request asks for, read from its path and its complete JSON body.
//!
//! The caller buffers the request body up to its own bound before calling in here; nothing in
//! this module allocates more than a small multiple of the body it is given.

use core::fmt;

use alloc::string::String;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::json::{keys, lenient, Count, FieldError, Flag, Seen};

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
    /// Anthropic messages: `…/v1/messages` (not `…/messages/count_tokens` or batches), and
    /// Anthropic on Vertex AI: `…/publishers/anthropic/models/{model}:rawPredict` and
    /// `:streamRawPredict` (the same body and answers, the model in the path).
    AnthropicMessages,
    /// Gemini (the Gemini API or Vertex AI): `…/models/{model}:generateContent`.
    GeminiGenerate,
    /// Gemini streamed: `…/models/{model}:streamGenerateContent`, SSE with `alt=sse`, a
    /// streamed JSON array without it.
    GeminiStream,
    /// Gemini embeddings: `…/models/{model}:embedContent` or `:batchEmbedContents`. Input
    /// only. (`:countTokens` is free and not an LLM call here.)
    GeminiEmbed,
    /// Ollama's native chat: `…/api/chat` (streams NDJSON unless `"stream": false`).
    OllamaChat,
    /// Ollama's native completion: `…/api/generate`.
    OllamaGenerate,
    /// AWS Bedrock Converse: `…/model/{modelId}/converse` (usage in `usage.inputTokens`…).
    BedrockConverse,
    /// AWS Bedrock ConverseStream: `…/model/{modelId}/converse-stream`, an
    /// `application/vnd.amazon.eventstream` stream, usage in its `metadata` event.
    BedrockConverseStream,
    /// AWS Bedrock InvokeModel: `…/model/{modelId}/invoke`, the model's own body (Anthropic's
    /// Messages body and usage for Claude).
    BedrockInvoke,
    /// AWS Bedrock InvokeModelWithResponseStream: `…/model/{modelId}/invoke-with-response-stream`,
    /// an event stream of `chunk` events, each an Anthropic stream event in base64.
    BedrockInvokeStream,
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
        let bedrock = bedrock_model_method(path).and_then(|(_, operation)| match operation {
            "converse" => Some(ApiKind::BedrockConverse),
            "converse-stream" => Some(ApiKind::BedrockConverseStream),
            "invoke" => Some(ApiKind::BedrockInvoke),
            "invoke-with-response-stream" => Some(ApiKind::BedrockInvokeStream),
            _ => None,
        });
        if let Some(kind) = bedrock {
            return kind;
        }
        if let Some((_, method)) = model_method(path) {
            return match method {
                "generatecontent" => ApiKind::GeminiGenerate,
                "streamgeneratecontent" => ApiKind::GeminiStream,
                "embedcontent" | "batchembedcontents" => ApiKind::GeminiEmbed,
                "rawpredict" | "streamrawpredict" if path.contains("/publishers/anthropic/") => {
                    ApiKind::AnthropicMessages
                }
                _ => ApiKind::Unknown,
            };
        }
        if path.ends_with("/api/chat") {
            ApiKind::OllamaChat
        } else if path.ends_with("/api/generate") {
            ApiKind::OllamaGenerate
        } else if path.ends_with("/chat/completions") {
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

    /// The model a request path names, for the APIs that name it there: Gemini and Vertex AI
    /// (`…/models/{model}:method`), Azure OpenAI (`/openai/deployments/{deployment}/…`: the
    /// deployment's name is the model for budgets) and AWS Bedrock (`…/model/{modelId}/…`,
    /// reduced to the model's own name by [`bedrock_model_name`]). Case is kept; the name is
    /// the path segment as the upstream routes it (percent-decoded). `None` when the path
    /// names none, or names one longer than [`MAX_MODEL_LEN`].
    pub fn model_in_path(path: &str) -> Option<String> {
        let normalized = crate::path::normalize_str(path);
        let path = normalized.split(['?', '#']).next().unwrap_or(&normalized);
        let path = path.strip_suffix('/').unwrap_or(path);
        let lower = path.to_ascii_lowercase();
        let bedrock = bedrock_model_method(path)
            .filter(|_| ApiKind::from_path(&lower).is_bedrock())
            .map(|(id, _)| id);
        let model = if let Some(id) = bedrock {
            bedrock_model_name(id)
        } else if let Some((model, _)) = model_method(path) {
            model
        } else {
            let lower = path.to_ascii_lowercase();
            let at = lower.find("/openai/deployments/")? + "/openai/deployments/".len();
            path.get(at..)?.split('/').next()?
        };
        (!model.is_empty() && model.len() <= MAX_MODEL_LEN).then(|| model.into())
    }

    /// The names `llm.routes[].api` accepts, in the order of [`ApiKind::NAMED`].
    pub const NAMES: &'static [&'static str] = &[
        "openai_chat",
        "openai_completions",
        "openai_embeddings",
        "openai_responses",
        "anthropic_messages",
        "gemini_generate",
        "gemini_stream",
        "gemini_embed",
        "ollama_chat",
        "ollama_generate",
        "bedrock_converse",
        "bedrock_converse_stream",
        "bedrock_invoke",
        "bedrock_invoke_stream",
    ];
    /// The kinds [`ApiKind::NAMES`] name.
    pub const NAMED: &'static [ApiKind] = &[
        ApiKind::OpenAiChat,
        ApiKind::OpenAiCompletions,
        ApiKind::OpenAiEmbeddings,
        ApiKind::OpenAiResponses,
        ApiKind::AnthropicMessages,
        ApiKind::GeminiGenerate,
        ApiKind::GeminiStream,
        ApiKind::GeminiEmbed,
        ApiKind::OllamaChat,
        ApiKind::OllamaGenerate,
        ApiKind::BedrockConverse,
        ApiKind::BedrockConverseStream,
        ApiKind::BedrockInvoke,
        ApiKind::BedrockInvokeStream,
    ];

    /// Whether this is one of Gemini's methods (the Gemini API or Vertex AI), whose refusals
    /// use Google's error format.
    pub fn is_gemini(self) -> bool {
        matches!(
            self,
            ApiKind::GeminiGenerate | ApiKind::GeminiStream | ApiKind::GeminiEmbed
        )
    }

    /// Whether this is one of Bedrock's operations, whose refusals use AWS's error format
    /// (`x-amzn-ErrorType: ThrottlingException`).
    pub fn is_bedrock(self) -> bool {
        matches!(
            self,
            ApiKind::BedrockConverse
                | ApiKind::BedrockConverseStream
                | ApiKind::BedrockInvoke
                | ApiKind::BedrockInvokeStream
        )
    }

    /// Whether the call consumes input only (embeddings): no output is reserved.
    pub fn input_only(self) -> bool {
        matches!(self, ApiKind::OpenAiEmbeddings | ApiKind::GeminiEmbed)
    }

    /// Whether a streamed response reports usage only when the request sets
    /// `stream_options.include_usage` (OpenAI chat and legacy completions). The Responses API
    /// and Anthropic always report usage in their streams.
    pub fn needs_stream_usage_option(self) -> bool {
        matches!(self, ApiKind::OpenAiChat | ApiKind::OpenAiCompletions)
    }
}

/// `(model, method)` of a path ending `…/models/{model}:{method}` (Gemini, Vertex AI), the
/// method as written (the caller lowercases the path to match it).
fn model_method(path: &str) -> Option<(&str, &str)> {
    let last = path.rsplit('/').next()?;
    let before = path.get(..path.len().saturating_sub(last.len()))?;
    if !before.to_ascii_lowercase().ends_with("/models/") {
        return None;
    }
    last.rsplit_once(':')
}

/// `(model id, operation)` of a Bedrock runtime path, `…/model/{modelId}/{operation}` (the
/// caller lowercases the path to match the operation). The model id is everything between the
/// first `/model/` and the last segment: the SDKs percent-encode an ARN's `/`
/// (`foundation-model%2Fanthropic.…`), which the path's normalisation decodes, so an ARN spans
/// several segments here.
fn bedrock_model_method(path: &str) -> Option<(&str, &str)> {
    let at = path.to_ascii_lowercase().find("/model/")? + "/model/".len();
    let rest = path.get(at..)?;
    let (id, operation) = rest.rsplit_once('/')?;
    (!id.is_empty()).then_some((id, operation))
}

/// The cross-region inference profiles' geography prefixes (`us.anthropic.claude-…`).
const BEDROCK_GEOGRAPHIES: &[&str] = &[
    "us-gov.", "us.", "eu.", "apac.", "jp.", "au.", "ca.", "global.",
];

/// The name a Bedrock model id stands for in budgets: the model's own name, so that a budget
/// written for `claude-sonnet-4-20250514` holds whether the model is called through
/// Anthropic's API, Vertex AI or Bedrock, and whatever form of id the Bedrock caller uses.
///
/// In order: an ARN keeps only its resource id (after the last `/`:
/// `arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-…` or
/// `…:inference-profile/us.anthropic.claude-…`); a cross-region inference profile's
/// geography prefix goes (`us.`, `eu.`, `apac.`, …); the provider's namespace goes (up to the
/// first `.`: `anthropic.`, `meta.`, `amazon.`); a version suffix `-v{N}:{M}` or `:{M}` goes.
/// `anthropic.claude-3-5-sonnet-20241022-v2:0` is `claude-3-5-sonnet-20241022`. An id
/// without a namespace (an application inference profile, a provisioned or custom model) is
/// kept as it is.
pub fn bedrock_model_name(id: &str) -> &str {
    let id = id.rsplit('/').next().unwrap_or(id);
    let lower = id.to_ascii_lowercase();
    let geo = BEDROCK_GEOGRAPHIES
        .iter()
        .find(|g| lower.starts_with(**g))
        .map_or(0, |g| g.len());
    let id = id.get(geo..).unwrap_or(id);
    let Some((_, name)) = id.split_once('.') else {
        return id;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let name = match name.rsplit_once(':') {
        Some((before, minor)) if digits(minor) => match before.rsplit_once("-v") {
            Some((base, major)) if digits(major) && !base.is_empty() => base,
            _ => before,
        },
        _ => name,
    };
    if name.is_empty() {
        id
    } else {
        name
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
    /// `max_output_tokens` (OpenAI Responses); Gemini's `generationConfig.maxOutputTokens`,
    /// Bedrock Converse's `inferenceConfig.maxTokens` and Ollama's `options.num_predict` (when
    /// not negative: -1 and -2 mean no cap) land here too.
    pub max_output_tokens: Option<u64>,
    /// `n`: how many choices to generate (OpenAI chat and legacy completions; Gemini's
    /// `generationConfig.candidateCount`), each up to the output limit.
    pub n: Option<u64>,
    /// The body's length in bytes.
    pub body_len: usize,
    /// The call continues input stored upstream (`previous_response_id` or `conversation` on
    /// the Responses API): its real input is not in the body and can be any size.
    pub stored_input: bool,
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
        PreviousResponseId = "previous_response_id",
        Conversation = "conversation",
        GenerationConfig = "generationConfig",
        Options = "options",
        InferenceConfig = "inferenceConfig",
    }
);

keys!(
    /// The output caps of Gemini's `generationConfig`, Ollama's `options` and Bedrock
    /// Converse's `inferenceConfig`.
    CapKey {
        MaxOutputTokens = "maxOutputTokens",
        CandidateCount = "candidateCount",
        NumPredict = "num_predict",
        MaxTokens = "maxTokens",
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
        RequestKey::PreviousResponseId => "previous_response_id",
        RequestKey::Conversation => "conversation",
        RequestKey::GenerationConfig => "generationConfig",
        RequestKey::Options => "options",
        RequestKey::InferenceConfig => "inferenceConfig",
        RequestKey::Other => "",
    }
}

/// Whether a value is there at all: anything but `null`.
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `Option<IgnoredAny>` reads `null` as `None` and skips anything else without
        // allocating.
        Option::<IgnoredAny>::deserialize(d).map(|v| Present(v.is_some()))
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
            lenient!(expecting "a model name");
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Model, E> {
                Ok(if v.len() > MAX_MODEL_LEN {
                    Model::Bad(FieldError::TooLong)
                } else {
                    Model::Name(v.into())
                })
            }
            lenient!(Model::Null => null);
            lenient!(Model::Bad(FieldError::WrongType) => bool numbers map seq);
        }
        d.deserialize_any(V)
    }
}

/// Gemini's `generationConfig` (`maxOutputTokens`, `candidateCount`), Ollama's `options`
/// (`num_predict`) or Bedrock Converse's `inferenceConfig` (`maxTokens`): the output cap and
/// the number of candidates, or the first problem.
#[derive(Default)]
struct Caps {
    max_output: Option<u64>,
    candidates: Option<u64>,
    bad: Option<(&'static str, FieldError)>,
}

impl<'de> Deserialize<'de> for Caps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Caps;
            lenient!(expecting "generation options");
            lenient!(Caps::default() => null);
            lenient!(Caps { bad: Some(("generationConfig", FieldError::WrongType)), ..Caps::default() } => scalars seq);
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Caps, A::Error> {
                let mut caps = Caps::default();
                let mut seen = Seen::default();
                while let Some(key) = map.next_key::<CapKey>()? {
                    let name = match key {
                        CapKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                        CapKey::MaxOutputTokens => "generationConfig.maxOutputTokens",
                        CapKey::CandidateCount => "generationConfig.candidateCount",
                        CapKey::NumPredict => "options.num_predict",
                        CapKey::MaxTokens => "inferenceConfig.maxTokens",
                    };
                    if !seen.first(key.bit()) {
                        map.next_value::<IgnoredAny>()?;
                        caps.bad = caps.bad.or(Some((name, FieldError::Duplicate)));
                        continue;
                    }
                    let slot = match key {
                        CapKey::CandidateCount => &mut caps.candidates,
                        _ => &mut caps.max_output,
                    };
                    match map.next_value::<Count>()? {
                        // Ollama's -1 (no limit) and -2 (fill the context): no cap given.
                        Count::Bad(FieldError::Negative) if key == CapKey::NumPredict => {}
                        count => {
                            if let Err(reason) = count.store(slot) {
                                caps.bad = caps.bad.or(Some((name, reason)));
                            }
                        }
                    }
                }
                Ok(caps)
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
            lenient!(expecting "stream options");
            lenient!(StreamOptions::Null => null);
            lenient!(Self::wrong() => scalars seq);
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
            lenient!(expecting "a request body");
            lenient!(Parsed::NotAnObject => null scalars seq);
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
                        RequestKey::PreviousResponseId | RequestKey::Conversation => {
                            if map.next_value::<Present>()?.0 {
                                request.stored_input = true;
                            }
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
                        RequestKey::GenerationConfig
                        | RequestKey::Options
                        | RequestKey::InferenceConfig => {
                            let caps = map.next_value::<Caps>()?;
                            // Gemini's cap per candidate, like OpenAI's per choice.
                            request.max_output_tokens =
                                caps.max_output.or(request.max_output_tokens);
                            request.n = caps.candidates.or(request.n);
                            // The visitor names the container Gemini's way.
                            caps.bad.map(|(field, reason)| match (key, field) {
                                (RequestKey::Options, "generationConfig") => ("options", reason),
                                (RequestKey::InferenceConfig, "generationConfig") => {
                                    ("inferenceConfig", reason)
                                }
                                _ => (field, reason),
                            })
                        }
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

    use super::super::rewrite::ensure_stream_usage;
    use alloc::{format, string::ToString};

    use super::*;

    fn parse(body: &str) -> Result<LlmRequest, RequestError> {
        LlmRequest::parse(body.as_bytes())
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
            // Gemini API and Vertex AI.
            (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                ApiKind::GeminiGenerate,
            ),
            (
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                ApiKind::GeminiStream,
            ),
            (
                "/v1beta/models/gemini-2.5-flash%3AstreamGenerateContent",
                ApiKind::GeminiStream,
            ),
            (
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
                ApiKind::GeminiGenerate,
            ),
            (
                "/v1beta/models/text-embedding-004:embedContent",
                ApiKind::GeminiEmbed,
            ),
            (
                "/v1beta/models/gemini-2.5-flash:countTokens",
                ApiKind::Unknown,
            ),
            ("/v1beta/models/gemini-2.5-flash", ApiKind::Unknown),
            (
                "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict",
                ApiKind::AnthropicMessages,
            ),
            (
                "/v1/projects/p/locations/l/publishers/meta/models/llama:rawPredict",
                ApiKind::Unknown,
            ),
            // Ollama's native API; its OpenAI-compatible one (and vLLM's) is OpenAI's.
            ("/api/chat", ApiKind::OllamaChat),
            ("/ollama/api/generate", ApiKind::OllamaGenerate),
            ("/api/tags", ApiKind::Unknown),
            ("/v1/chat/completions?vllm", ApiKind::OpenAiChat),
            // AWS Bedrock: a model id, or an ARN whose `/` the SDKs percent-encode.
            (
                "/model/anthropic.claude-3-5-sonnet-20241022-v2:0/converse",
                ApiKind::BedrockConverse,
            ),
            (
                "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream",
                ApiKind::BedrockConverseStream,
            ),
            (
                "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fanthropic.claude-3-haiku-20240307-v1%3A0/invoke",
                ApiKind::BedrockInvoke,
            ),
            (
                "/bedrock/model/m/Invoke-With-Response-Stream",
                ApiKind::BedrockInvokeStream,
            ),
            ("/model/m/converse/x", ApiKind::Unknown),
            ("/model//converse", ApiKind::Unknown),
            ("/model/converse", ApiKind::Unknown),
            ("/api/model/v1/chat/completions", ApiKind::OpenAiChat),
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
    fn model_in_path() {
        let cases = [
            (
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                Some("gemini-2.5-flash"),
            ),
            (
                "/v1/projects/p/locations/l/publishers/google/models/Gemini-2.5-Pro:generateContent",
                Some("Gemini-2.5-Pro"),
            ),
            (
                "/v1/projects/p/locations/l/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict",
                Some("claude-sonnet-4@20250514"),
            ),
            (
                "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
                Some("prod-gpt4o"),
            ),
            ("/OpenAI/Deployments/my%2Dgpt/embeddings", Some("my-gpt")),
            ("/openai/v1/chat/completions", None),
            ("/v1/chat/completions", None),
            ("/api/chat", None),
            ("/v1beta/models/:generateContent", None),
            (
                "/model/anthropic.claude-3-5-sonnet-20241022-v2:0/converse",
                Some("claude-3-5-sonnet-20241022"),
            ),
            (
                "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream",
                Some("claude-sonnet-4-20250514"),
            ),
            (
                "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fanthropic.claude-3-haiku-20240307-v1%3A0/invoke",
                Some("claude-3-haiku-20240307"),
            ),
            (
                "/model/arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.meta.llama3-2-1b-instruct-v1:0/converse",
                Some("llama3-2-1b-instruct"),
            ),
            (
                "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fa1b2c3/converse",
                Some("a1b2c3"),
            ),
            ("/model/US-GOV.amazon.nova-pro-v1:0/converse", Some("nova-pro")),
            ("/model/cohere.command-r-plus-v1:0/invoke", Some("command-r-plus")),
            ("/model/my-custom-model/converse", Some("my-custom-model")),
            ("/model/anthropic./converse", Some("anthropic.")),
            ("/model/m/tags", None),
        ];
        for (path, model) in cases {
            assert_eq!(ApiKind::model_in_path(path).as_deref(), model, "{path}");
        }
        let long = format!("/v1beta/models/{}:generateContent", "m".repeat(300));
        assert_eq!(ApiKind::model_in_path(&long), None);
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
    fn gemini_and_ollama_output_caps() {
        let r = parse(
            r#"{"contents":[{"parts":[{"text":"hi"}]}],
                "generationConfig":{"temperature":0.2,"maxOutputTokens":300,"candidateCount":2}}"#,
        )
        .unwrap();
        assert_eq!(
            (r.max_output(), r.max_output_all_choices()),
            (Some(300), Some(600))
        );
        // Bedrock Converse: the model is in the path, the cap in `inferenceConfig`.
        let r = parse(
            r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],
                "inferenceConfig":{"maxTokens":512,"temperature":0.5}}"#,
        )
        .unwrap();
        assert_eq!((r.model.as_deref(), r.max_output()), (None, Some(512)));
        assert_eq!(
            parse(r#"{"inferenceConfig":{"maxTokens":"5"}}"#),
            Err(RequestError::BadField {
                field: "inferenceConfig.maxTokens",
                reason: FieldError::WrongType
            })
        );
        assert_eq!(
            parse(r#"{"inferenceConfig":3}"#),
            Err(RequestError::BadField {
                field: "inferenceConfig",
                reason: FieldError::WrongType
            })
        );
        let r = parse(r#"{"model":"llama3.2","options":{"num_predict":128}}"#).unwrap();
        assert_eq!(r.max_output(), Some(128));
        for unbounded in [-1, -2] {
            let body = format!(r#"{{"model":"llama3.2","options":{{"num_predict":{unbounded}}}}}"#);
            assert_eq!(parse(&body).unwrap().max_output(), None);
        }
        let e = |field, reason| Err(RequestError::BadField { field, reason });
        assert_eq!(
            parse(r#"{"generationConfig":{"maxOutputTokens":-5}}"#),
            e("generationConfig.maxOutputTokens", FieldError::Negative)
        );
        assert_eq!(
            parse(r#"{"generationConfig":{"candidateCount":1,"candidateCount":9}}"#),
            e("generationConfig.candidateCount", FieldError::Duplicate)
        );
        assert_eq!(
            parse(r#"{"generationConfig":[]}"#),
            e("generationConfig", FieldError::WrongType)
        );
        assert_eq!(
            parse(r#"{"options":7}"#),
            e("options", FieldError::WrongType)
        );
    }

    #[test]
    fn ensure_stream_usage_rewrites_only_openai_streams_that_need_it() {
        let body = br#"{"model":"m","stream":true}"#;
        assert_eq!(
            ensure_stream_usage(ApiKind::OpenAiChat, body).unwrap(),
            Some(
                br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#.to_vec()
            )
        );
        assert_eq!(
            ensure_stream_usage(ApiKind::OpenAiCompletions, br#"{"stream":false}"#),
            Ok(None)
        );
        assert_eq!(
            ensure_stream_usage(ApiKind::AnthropicMessages, body),
            Ok(None)
        );
        assert_eq!(
            ensure_stream_usage(ApiKind::OpenAiResponses, body),
            Ok(None)
        );
    }

    #[test]
    fn input_stored_upstream_is_noticed() {
        for body in [
            r#"{"model":"gpt-4.1","previous_response_id":"resp_1","input":"and then?"}"#,
            r#"{"model":"gpt-4.1","conversation":"conv_1","input":"and then?"}"#,
            r#"{"model":"gpt-4.1","conversation":{"id":"conv_1"},"input":"x"}"#,
        ] {
            assert!(parse(body).unwrap().stored_input, "{body}");
        }
        for body in [
            r#"{"model":"gpt-4.1","input":"x"}"#,
            r#"{"model":"gpt-4.1","previous_response_id":null,"conversation":null}"#,
            r#"{"metadata":{"previous_response_id":"resp_1"}}"#,
        ] {
            assert!(!parse(body).unwrap().stored_input, "{body}");
        }
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

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = LlmRequest::parse(&bytes);
                let _ = ensure_stream_usage(ApiKind::OpenAiChat, &bytes);
            }
        }
    }
}
