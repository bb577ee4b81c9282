//! What one LLM request asked for and how the mock is to answer it: its body (read with
//! serde_json) and its `x-mock-*` headers, each checked against its bound.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::request::Request;

/// Prompt tokens reported unless `x-mock-prompt-tokens` says otherwise.
pub const DEFAULT_PROMPT_TOKENS: u64 = 100;
/// Completion tokens reported unless `x-mock-completion-tokens` says otherwise.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 200;
/// The most completion tokens a request may ask for (16 MiB of text).
pub const MAX_COMPLETION_TOKENS: u64 = 4 << 20;
/// The largest `x-mock-big-body` and `x-mock-pad-final`.
pub const MAX_BIG_BODY: usize = 64 << 20;
/// The longest `x-mock-delay-ms`.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Which API a request speaks, from the end of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI chat completions (and Azure OpenAI's, and OpenAI-compatible servers').
    Chat,
    /// OpenAI legacy completions.
    Completions,
    /// OpenAI embeddings (never streams).
    Embeddings,
    /// OpenAI Responses.
    Responses,
    /// Anthropic messages (and Anthropic on Vertex AI: `:rawPredict`, `:streamRawPredict`).
    Messages,
    /// Gemini `…/models/{model}:generateContent` (the Gemini API or Vertex AI).
    GeminiGenerate,
    /// Gemini `…:streamGenerateContent`: SSE with `alt=sse`, else a streamed JSON array.
    GeminiStream,
    /// Gemini `…:embedContent` (reports no usage).
    GeminiEmbed,
    /// Gemini `…:countTokens` (free: a count, no usage).
    GeminiCountTokens,
    /// Ollama `/api/chat` (NDJSON unless `"stream": false`).
    OllamaChat,
    /// Ollama `/api/generate` (likewise).
    OllamaGenerate,
}

/// `(model, method)` of a path ending `…/models/{model}:{method}` (Gemini, Vertex AI; the colon
/// may come percent-encoded), query string ignored.
pub fn model_method(path: &str) -> Option<(&str, &str)> {
    let path = path.split('?').next().unwrap_or(path);
    let at = path.rfind("/models/")?;
    let rest = path.get(at + "/models/".len()..)?;
    let (model, method) = rest
        .split_once(':')
        .or_else(|| rest.split_once("%3A"))
        .or_else(|| rest.split_once("%3a"))?;
    (!model.is_empty() && !model.contains('/')).then_some((model, method))
}

/// The model a path names: Gemini's and Vertex AI's `…/models/{model}:…`, Azure OpenAI's
/// `/openai/deployments/{deployment}/…`.
pub fn model_in_path(path: &str) -> Option<&str> {
    if let Some((model, _)) = model_method(path) {
        return Some(model);
    }
    let path = path.split('?').next().unwrap_or(path);
    let at = path.find("/openai/deployments/")?;
    let rest = path.get(at + "/openai/deployments/".len()..)?;
    rest.split('/').next().filter(|d| !d.is_empty())
}

impl Api {
    /// The API of a request path (query string ignored), if it is one the mock serves.
    pub fn from_path(path: &str) -> Option<Api> {
        if let Some((_, method)) = model_method(path) {
            return match method {
                "generateContent" => Some(Api::GeminiGenerate),
                "streamGenerateContent" => Some(Api::GeminiStream),
                "embedContent" => Some(Api::GeminiEmbed),
                "countTokens" => Some(Api::GeminiCountTokens),
                "rawPredict" | "streamRawPredict" if path.contains("/publishers/anthropic/") => {
                    Some(Api::Messages)
                }
                _ => None,
            };
        }
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
        } else if path.ends_with("/api/chat") {
            Some(Api::OllamaChat)
        } else if path.ends_with("/api/generate") {
            Some(Api::OllamaGenerate)
        } else {
            None
        }
    }

    /// The API named as tollgate's `llm.routes` names it (`x-mock-api`), for a path that does
    /// not tell it (a custom prefix, a proxy path).
    pub fn from_name(name: &str) -> Option<Api> {
        Some(match name {
            "openai_chat" => Api::Chat,
            "openai_completions" => Api::Completions,
            "openai_embeddings" => Api::Embeddings,
            "openai_responses" => Api::Responses,
            "anthropic_messages" => Api::Messages,
            "gemini_generate" => Api::GeminiGenerate,
            "gemini_stream" => Api::GeminiStream,
            "gemini_embed" => Api::GeminiEmbed,
            "ollama_chat" => Api::OllamaChat,
            "ollama_generate" => Api::OllamaGenerate,
            _ => return None,
        })
    }

    /// A Gemini API (Gemini or Vertex AI): its error format and its `usageMetadata`.
    pub fn is_gemini(self) -> bool {
        matches!(
            self,
            Api::GeminiGenerate | Api::GeminiStream | Api::GeminiEmbed | Api::GeminiCountTokens
        )
    }

    /// Ollama's native API: its `{"error": "…"}` and its counts.
    pub fn is_ollama(self) -> bool {
        matches!(self, Api::OllamaChat | Api::OllamaGenerate)
    }

    /// An API whose answer has no output tokens.
    fn input_only(self) -> bool {
        matches!(
            self,
            Api::Embeddings | Api::GeminiEmbed | Api::GeminiCountTokens
        )
    }
}

/// What one request asked for and how the mock is to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The API.
    pub api: Api,
    /// The model the path names (Gemini, Vertex AI, an Azure deployment), else `model` from
    /// the body (`"mock"` when absent or not a string).
    pub model: String,
    /// The answer streams: `stream: true` (never for embeddings), `:streamGenerateContent`,
    /// `:streamRawPredict`, Ollama unless `"stream": false`.
    pub stream: bool,
    /// A Gemini stream asked for SSE (`alt=sse`); without it, a streamed JSON array.
    pub sse: bool,
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

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

/// The members of a request body the mock reads; anything else is ignored, and a member of
/// another type than expected reads as absent (the mock answers whatever it is sent).
#[derive(Debug, Default, Deserialize)]
struct Body {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    stream: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default, deserialize_with = "lenient")]
    include_usage: Option<bool>,
}

/// `Some` of a value of the expected type, `None` of any other JSON value.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

/// A header's number, if present.
fn number<T: FromStr>(request: &Request, name: &str) -> Result<Option<T>, BadRequest> {
    let Some(value) = request.headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            BadRequest(format!(
                "{name} must be a whole number, not {:?}",
                String::from_utf8_lossy(value.as_bytes())
            ))
        })
}

/// A header that is on when it says `1`, `true` or `yes`.
fn flag(request: &Request, name: &str) -> bool {
    request
        .header(name)
        .is_some_and(|v| matches!(v, "1" | "true" | "yes"))
}

/// `value`, unless it is over `max`.
fn at_most<T: PartialOrd + fmt::Display>(
    value: Option<T>,
    max: T,
    name: &str,
) -> Result<Option<T>, BadRequest> {
    match value {
        Some(v) if v > max => Err(BadRequest(format!("{name} must be at most {max}"))),
        other => Ok(other),
    }
}

impl Scenario {
    /// Reads a request: its body (must be a JSON object) and its `x-mock-*` headers.
    ///
    /// # Errors
    /// A body that is not a JSON object, or an `x-mock-*` header that is not a number or is out
    /// of range.
    pub fn from_request(api: Api, request: &Request) -> Result<Scenario, BadRequest> {
        let value: serde_json::Value = serde_json::from_slice(&request.body)
            .map_err(|_| BadRequest("request body is not valid JSON".into()))?;
        if !value.is_object() {
            return Err(BadRequest("request body must be a JSON object".into()));
        }
        let body: Body = serde_json::from_value(value).unwrap_or_default();
        let completion_tokens = at_most(
            number(request, "x-mock-completion-tokens")?,
            MAX_COMPLETION_TOKENS,
            "x-mock-completion-tokens",
        )?
        .unwrap_or(DEFAULT_COMPLETION_TOKENS);
        let status: u16 = number(request, "x-mock-status")?.unwrap_or(200);
        if !(200..=599).contains(&status) {
            return Err(BadRequest("x-mock-status must be 200..=599".into()));
        }
        let delay_ms = at_most(
            number(request, "x-mock-delay-ms")?,
            MAX_DELAY_MS,
            "x-mock-delay-ms",
        )?
        .unwrap_or(0);
        let chunk_bytes: Option<usize> = number(request, "x-mock-chunk-bytes")?;
        if chunk_bytes == Some(0) {
            return Err(BadRequest("x-mock-chunk-bytes must be at least 1".into()));
        }
        let path = request.path();
        let stream = match api {
            Api::GeminiStream => true,
            Api::OllamaChat | Api::OllamaGenerate => body.stream != Some(false),
            Api::Messages if model_method(path).is_some_and(|(_, m)| m == "streamRawPredict") => {
                true
            }
            _ if api.input_only() || api == Api::GeminiGenerate => false,
            _ => body.stream == Some(true),
        };
        let sse = request
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
        Ok(Scenario {
            api,
            model: model_in_path(path)
                .map(str::to_owned)
                .or(body.model)
                .unwrap_or_else(|| "mock".into()),
            stream,
            sse,
            include_usage: body.stream_options.and_then(|o| o.include_usage) == Some(true),
            prompt_tokens: number(request, "x-mock-prompt-tokens")?
                .unwrap_or(DEFAULT_PROMPT_TOKENS),
            completion_tokens,
            status,
            delay: Duration::from_millis(delay_ms),
            cut_after: number(request, "x-mock-cut-after")?,
            no_usage: flag(request, "x-mock-no-usage"),
            malformed: flag(request, "x-mock-malformed"),
            big_body: at_most(
                number(request, "x-mock-big-body")?,
                MAX_BIG_BODY,
                "x-mock-big-body",
            )?,
            truncated_event: flag(request, "x-mock-truncated-event"),
            provider_headers: flag(request, "x-mock-provider-headers"),
            chunk_bytes,
            pad_final: at_most(
                number(request, "x-mock-pad-final")?,
                MAX_BIG_BODY,
                "x-mock-pad-final",
            )?,
        })
    }

    /// Output tokens the API reports (embeddings have none).
    pub fn output_tokens(&self) -> u64 {
        if self.api.input_only() {
            0
        } else {
            self.completion_tokens
        }
    }
}
