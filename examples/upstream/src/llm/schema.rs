//! The wire shapes of the APIs the mock speaks, as serde types: fields are declared in the order
//! the real APIs send them, which is the order they are serialised in (`usage` last in a whole
//! body, as OpenAI and Anthropic put it, so a reader must take in the whole body to find it).
//!
//! `Option<T>` fields that the real API sends as `null` stay `null`; fields it leaves out are
//! `skip_serializing_if`. `[u8; 0]` is an always-empty array (`[]`).

use serde::Serialize;

use super::scenario::{Api, Scenario};

/// `created` in every response: a fixed time, so responses are byte-for-byte reproducible.
pub const CREATED: u64 = 1_700_000_000;

/// An always-empty JSON array.
pub type Empty = [u8; 0];

/// The `usage` object of an API, as it reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Usage {
    /// OpenAI chat completions.
    Chat {
        prompt_tokens: u64,
        completion_tokens: u64,
        total_tokens: u64,
        prompt_tokens_details: ChatPromptDetails,
        completion_tokens_details: ChatCompletionDetails,
    },
    /// OpenAI legacy completions.
    Completions {
        prompt_tokens: u64,
        completion_tokens: u64,
        total_tokens: u64,
    },
    /// OpenAI embeddings.
    Embeddings {
        prompt_tokens: u64,
        total_tokens: u64,
    },
    /// OpenAI Responses.
    Responses {
        input_tokens: u64,
        input_tokens_details: CachedTokens,
        output_tokens: u64,
        output_tokens_details: ReasoningTokens,
        total_tokens: u64,
    },
    /// Anthropic messages.
    Messages {
        input_tokens: u64,
        cache_creation_input_tokens: u64,
        cache_read_input_tokens: u64,
        output_tokens: u64,
    },
    /// Gemini's `usageMetadata` (the Gemini API and Vertex AI).
    #[serde(rename_all = "camelCase")]
    Gemini {
        prompt_token_count: u64,
        candidates_token_count: u64,
        total_token_count: u64,
    },
    /// Ollama's counts (top-level members of its final object).
    Ollama {
        prompt_eval_count: u64,
        eval_count: u64,
    },
}

/// Chat's `prompt_tokens_details`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatPromptDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

/// Chat's `completion_tokens_details`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatCompletionDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

/// Responses' `input_tokens_details`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CachedTokens {
    cached_tokens: u64,
}

/// Responses' `output_tokens_details`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReasoningTokens {
    reasoning_tokens: u64,
}

impl Usage {
    /// The usage `s` reports, in its API's shape.
    pub fn of(s: &Scenario) -> Usage {
        let (p, c) = (s.prompt_tokens, s.output_tokens());
        let total = p.saturating_add(c);
        match s.api {
            Api::Chat => Usage::Chat {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: total,
                prompt_tokens_details: ChatPromptDetails::default(),
                completion_tokens_details: ChatCompletionDetails::default(),
            },
            Api::Completions => Usage::Completions {
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: total,
            },
            Api::Embeddings => Usage::Embeddings {
                prompt_tokens: p,
                total_tokens: p,
            },
            Api::Responses => Usage::Responses {
                input_tokens: p,
                input_tokens_details: CachedTokens::default(),
                output_tokens: c,
                output_tokens_details: ReasoningTokens::default(),
                total_tokens: total,
            },
            Api::Messages => Usage::Messages {
                input_tokens: p,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                output_tokens: c,
            },
            Api::GeminiGenerate | Api::GeminiStream | Api::GeminiEmbed | Api::GeminiCountTokens => {
                Usage::gemini(p, c)
            }
            Api::OllamaChat | Api::OllamaGenerate => Usage::Ollama {
                prompt_eval_count: p,
                eval_count: c,
            },
        }
    }
}

impl Usage {
    /// Gemini's `usageMetadata` of `prompt` in and `candidates` out.
    pub fn gemini(prompt: u64, candidates: u64) -> Usage {
        Usage::Gemini {
            prompt_token_count: prompt,
            candidates_token_count: candidates,
            total_token_count: prompt.saturating_add(candidates),
        }
    }
}

/// The members every whole body ends with: the `x-mock-big-body` / `x-mock-pad-final` padding,
/// then `usage` (both left out when absent).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tail {
    /// Padding before the usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_padding: Option<String>,
    /// The usage (left out with `x-mock-no-usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

// ---- OpenAI chat completions -------------------------------------------------------------

/// A whole chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'static str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [ChatChoice<'a>; 1],
    pub service_tier: &'static str,
    pub system_fingerprint: &'static str,
    #[serde(flatten)]
    pub tail: Tail,
}

/// Its one choice.
#[derive(Debug, Serialize)]
pub struct ChatChoice<'a> {
    pub index: u32,
    pub message: ChatMessage<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    pub refusal: Option<()>,
    pub annotations: Empty,
}

/// One `data:` chunk of a chat stream.
#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'static str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub service_tier: &'static str,
    pub system_fingerprint: &'static str,
    pub choices: Vec<ChunkChoice<'a>>,
    /// `padding` of the usage chunk (`x-mock-pad-final`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_padding: Option<String>,
    /// Absent unless the request asked for usage; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// A choice of a chat chunk.
#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

/// What a chat chunk adds.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    /// `Some(None)`: `"refusal":null` (the first chunk only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Option<()>>,
}

// ---- OpenAI legacy completions -----------------------------------------------------------

/// A whole legacy completion.
#[derive(Debug, Serialize)]
pub struct TextCompletion<'a> {
    pub id: &'static str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [TextChoice<'a>; 1],
    pub system_fingerprint: &'static str,
    #[serde(flatten)]
    pub tail: Tail,
}

/// A legacy completion's choice (whole, or a stream's delta).
#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    pub text: &'a str,
    pub index: u32,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

/// One `data:` chunk of a legacy completions stream (`model` after `choices`, as OpenAI has it).
#[derive(Debug, Serialize)]
pub struct TextChunk<'a> {
    pub id: &'static str,
    pub object: &'static str,
    pub created: u64,
    pub choices: Vec<TextChoice<'a>>,
    pub model: &'a str,
    pub system_fingerprint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_padding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

// ---- OpenAI embeddings ---------------------------------------------------------------------

/// An embeddings answer: one fixed 8-dimensional vector.
#[derive(Debug, Serialize)]
pub struct Embeddings<'a> {
    pub object: &'static str,
    pub data: [Embedding; 1],
    pub model: &'a str,
    #[serde(flatten)]
    pub tail: Tail,
}

/// One embedding.
#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: u32,
    pub embedding: [f64; 8],
}

/// The vector every embedding has.
pub const EMBEDDING: [f64; 8] = [
    0.0023064255,
    -0.009327292,
    -0.0028842222,
    0.021797747,
    -0.011229386,
    0.004583152,
    -0.017034538,
    0.0061236513,
];

// ---- OpenAI Responses ----------------------------------------------------------------------

/// A Responses API `response` object (whole, with `M` = [`BodyOutputMessage`], or inside a
/// stream's events, with [`OutputMessage`]).
#[derive(Debug, Serialize)]
pub struct ResponseObject<'a, M = OutputMessage<'a>> {
    pub id: &'static str,
    pub object: &'static str,
    pub created_at: u64,
    pub status: &'static str,
    pub error: Option<()>,
    pub incomplete_details: Option<()>,
    pub model: &'a str,
    pub output: Vec<M>,
    pub parallel_tool_calls: bool,
    pub store: bool,
    pub temperature: f64,
    pub tool_choice: &'static str,
    pub tools: Empty,
    pub top_p: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_padding: Option<String>,
    /// Left out of a whole body without usage; `null` in a stream's events until the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// The output message of a whole response (`type` first, as the whole body has it).
#[derive(Debug, Serialize)]
pub struct BodyOutputMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'static str,
    pub status: &'static str,
    pub role: &'static str,
    pub content: Vec<OutputText<'a>>,
}

impl<'a> From<OutputMessage<'a>> for BodyOutputMessage<'a> {
    fn from(m: OutputMessage<'a>) -> Self {
        BodyOutputMessage {
            kind: m.kind,
            id: m.id,
            status: m.status,
            role: m.role,
            content: m.content,
        }
    }
}

/// The output message (`id` first, as the stream's events have it).
#[derive(Debug, Serialize)]
pub struct OutputMessage<'a> {
    pub id: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub role: &'static str,
    pub content: Vec<OutputText<'a>>,
}

/// Its text.
#[derive(Debug, Serialize)]
pub struct OutputText<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
    pub annotations: Empty,
}

impl<'a> OutputMessage<'a> {
    /// The completed message holding `text`.
    pub fn completed(text: &'a str) -> Self {
        OutputMessage {
            id: "msg_mock",
            kind: "message",
            status: "completed",
            role: "assistant",
            content: vec![OutputText::of(text)],
        }
    }
}

impl<'a> OutputText<'a> {
    /// An `output_text` part.
    pub fn of(text: &'a str) -> Self {
        OutputText {
            kind: "output_text",
            text,
            annotations: [],
        }
    }
}

impl<'a, M> ResponseObject<'a, M> {
    /// The response in `status` with `output`; `usage` as the field should read.
    pub fn new(
        model: &'a str,
        status: &'static str,
        output: Vec<M>,
        usage: Option<Option<Usage>>,
    ) -> Self {
        ResponseObject {
            id: "resp_mock",
            object: "response",
            created_at: CREATED,
            status,
            error: None,
            incomplete_details: None,
            model,
            output,
            parallel_tool_calls: true,
            store: true,
            temperature: 1.0,
            tool_choice: "auto",
            tools: [],
            top_p: 1.0,
            x_padding: None,
            usage,
        }
    }
}

// ---- Anthropic messages --------------------------------------------------------------------

/// A whole Anthropic message, or (with no content and no stop reason) `message_start`'s.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub id: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: Vec<TextBlock<'a>>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<()>,
    #[serde(flatten)]
    pub tail: Tail,
}

/// A text content block.
#[derive(Debug, Serialize)]
pub struct TextBlock<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
}

// ---- errors --------------------------------------------------------------------------------

/// An OpenAI error body.
#[derive(Debug, Serialize)]
pub struct OpenAiError<'a> {
    pub error: OpenAiErrorDetail<'a>,
}

/// Its detail.
#[derive(Debug, Serialize)]
pub struct OpenAiErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<()>,
    pub code: Option<()>,
}

/// An Anthropic error body.
#[derive(Debug, Serialize)]
pub struct AnthropicError<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub error: AnthropicErrorDetail<'a>,
}

/// Its detail.
#[derive(Debug, Serialize)]
pub struct AnthropicErrorDetail<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: &'a str,
}

// ---- stream events of the Responses API and Anthropic ----------------------------------------

/// A Responses API event: `type` and `sequence_number` first, then its own members.
#[derive(Debug, Serialize)]
pub struct ResponsesEvent<T> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sequence_number: u64,
    #[serde(flatten)]
    pub rest: T,
}

/// `response.created`, `response.in_progress`, `response.completed`.
#[derive(Debug, Serialize)]
pub struct WithResponse<'a> {
    pub response: ResponseObject<'a>,
}

/// `response.output_item.added` / `.done`.
#[derive(Debug, Serialize)]
pub struct WithItem<'a> {
    pub output_index: u32,
    pub item: OutputMessage<'a>,
}

/// `response.content_part.added` / `.done`.
#[derive(Debug, Serialize)]
pub struct WithPart<'a> {
    pub item_id: &'static str,
    pub output_index: u32,
    pub content_index: u32,
    pub part: OutputText<'a>,
}

/// `response.output_text.delta`.
#[derive(Debug, Serialize)]
pub struct WithDelta<'a> {
    pub item_id: &'static str,
    pub output_index: u32,
    pub content_index: u32,
    pub delta: &'a str,
}

/// `response.output_text.done`.
#[derive(Debug, Serialize)]
pub struct WithText<'a> {
    pub item_id: &'static str,
    pub output_index: u32,
    pub content_index: u32,
    pub text: &'a str,
}

/// `message_start`.
#[derive(Debug, Serialize)]
pub struct MessageStart<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: Message<'a>,
}

/// `content_block_start`.
#[derive(Debug, Serialize)]
pub struct ContentBlockStart {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub index: u32,
    pub content_block: TextBlock<'static>,
}

/// `content_block_delta`.
#[derive(Debug, Serialize)]
pub struct ContentBlockDelta<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub index: u32,
    pub delta: TextBlock<'a>,
}

/// `content_block_stop`.
#[derive(Debug, Serialize)]
pub struct ContentBlockStop {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub index: u32,
}

/// `message_delta`: the stop reason and the cumulative output usage.
#[derive(Debug, Serialize)]
pub struct MessageDelta {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub delta: StopDelta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_padding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<OutputUsage>,
}

/// `message_delta`'s `delta`.
#[derive(Debug, Serialize)]
pub struct StopDelta {
    pub stop_reason: &'static str,
    pub stop_sequence: Option<()>,
}

/// `message_delta`'s `usage`.
#[derive(Debug, Serialize)]
pub struct OutputUsage {
    pub output_tokens: u64,
}

/// `message_stop` (and any event that is only its type).
#[derive(Debug, Serialize)]
pub struct TypeOnly {
    #[serde(rename = "type")]
    pub kind: &'static str,
}
