//! An LLM mock speaking every API tollgate meters, with deterministic usage and fault modes.
//!
//! Endpoints (matched on the end of the path, so a route prefix such as `/api/v1/…` works):
//! OpenAI `POST …/chat/completions`, `…/completions`, `…/embeddings`, `…/v1/responses` (and so
//! Azure OpenAI's `/openai/deployments/{deployment}/…` and `/openai/v1/…`, the deployment
//! answering as the model); Anthropic `POST …/v1/messages` (and Anthropic on Vertex AI,
//! `…/publishers/anthropic/models/{model}:rawPredict` / `:streamRawPredict`); Gemini, the Gemini
//! API's `…/models/{model}:{method}` or Vertex AI's `…/publishers/google/models/{model}:{method}`
//! with `generateContent`, `streamGenerateContent` (SSE with `alt=sse`, else a streamed JSON
//! array), `embedContent` (no usage) and `countTokens` ([`google`]); Ollama `POST …/api/chat`
//! and `…/api/generate` (NDJSON unless `"stream": false`, [`ollama`]); `GET /healthz`. Each
//! answers in its API's real shape ([`schema`], [`google`], [`ollama`]), as JSON ([`body`]) or
//! streamed ([`stream`]), and refuses in its API's error format. A model the path names is the
//! model answered (`x-mock-saw-model`).
//!
//! Usage is deterministic: 100 prompt and 200 completion tokens unless the request says
//! otherwise with `x-mock-prompt-tokens` / `x-mock-completion-tokens`. The generated text
//! ([`text`]) has 4 ASCII characters per completion token, split over up to 10 deltas, so a
//! byte count of the streamed text gives back the token count.
//!
//! Fault modes, by request header ([`scenario`] reads them):
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
//! Recorded transcripts: `x-mock-fixture: NAME` answers with `fixtures/llm/NAME` as stored
//! ([`fixture`]), with the status, pacing, cut and chunking of the headers above (a `.json`
//! transcript on a `:streamGenerateContent` path is a streamed JSON array: chunked, an element
//! per write).
//!
//! `x-mock-api: NAME` answers as that API whatever the path (a custom prefix, a proxy path),
//! with the names tollgate's `llm.routes` uses (`openai_chat`, `gemini_stream`,
//! `ollama_generate`, …).
//!
//! A fixture is served on any POST path (also the APIs the mock does not otherwise speak, such
//! as Bedrock's `/model/{id}/…`).
//!
//! Stream shape, by request header (a proxy must give the client the same bytes whatever the
//! chunking; these let a test choose it):
//! - `x-mock-chunk-bytes: N`: write the stream in pieces of N bytes (splitting events, lines
//!   and UTF-8 characters anywhere) instead of one piece per event; `x-mock-delay-ms` then
//!   pauses between pieces, so each reaches the proxy on its own, and `x-mock-cut-after`
//!   counts pieces. Every piece leaves in a write of its own ([`crate::writer`]);
//! - `x-mock-pad-final: N`: pad the stream's last usage-carrying event (chat's usage chunk,
//!   Anthropic's `message_delta`, the Responses API's `response.completed`, Gemini's last chunk,
//!   Ollama's final object) with an
//!   `"x_padding"` field of N bytes before its `usage`, as a long `response.completed` is.
//!
//! What the mock received is echoed in response headers, so a test can see what a proxy
//! changed: `x-mock-saw-include-usage: true|false`, `x-mock-saw-accept-encoding: <value>|none`,
//! `x-mock-saw-stream`, `x-mock-saw-model`, `x-mock-saw-body-bytes`; and, on every response of
//! the server, `x-mock-saw-framing: content-length: N|chunked|none`. `GET /__mock/traffic`
//! ([`crate::traffic`]) counts the request heads and bytes that reached the server, complete or
//! not, so a test can show that a refused call never reached it.

pub mod body;
pub mod fixture;
pub mod google;
pub mod ollama;
pub mod scenario;
pub mod schema;
pub mod stream;
pub mod text;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;

use crate::request::Request;
use crate::response::{Pieces, Response};
use crate::server::Handler;
use body::{error_body, json_body};
use scenario::{Api, BadRequest, Scenario};
use stream::stream_pieces;

/// `GET /healthz`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    app: &'static str,
}

fn provider_headers(api: Api, response: Response) -> Response {
    if api.is_gemini() || api.is_ollama() {
        // Neither sends rate-limit headers of its own.
        response
    } else if api == Api::Messages {
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

/// A status the scenario asked for (checked to be 200..=599 when read).
fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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
                return Response::json(StatusCode::BAD_REQUEST, error_body(api, 400, &message));
            }
        };
        let mut response = if let Some(name) = request.header("x-mock-fixture") {
            match fixture::load(name) {
                Ok(f) => Self::replay(&s, &f),
                Err(BadRequest(message)) => {
                    return Response::json(StatusCode::BAD_REQUEST, error_body(api, 400, &message));
                }
            }
        } else if s.status >= 400 {
            let body = error_body(api, s.status, "mock upstream failure");
            Response {
                delay: s.delay,
                ..Response::json(status(s.status), body)
            }
        } else if s.stream {
            let pieces = Pieces {
                pieces: stream_pieces(&s),
                delay: s.delay,
                cut_after: s.cut_after,
                chunked: true,
            };
            let framing = stream::Framing::of(&s);
            let response = Response::paced(status(s.status), framing.content_type(), pieces);
            if matches!(framing, stream::Framing::Sse | stream::Framing::SseCrlf) {
                response.with_header("cache-control", "no-cache")
            } else {
                response
            }
        } else {
            let body = Bytes::from(json_body(&s));
            let mut response = match s.cut_after {
                None => Response::json(status(s.status), body),
                // The first `n` bytes, then the connection closes (the whole length announced).
                Some(n) => {
                    let n = n.min(body.len());
                    let pieces = Pieces {
                        pieces: vec![body.slice(..n), body.slice(n..)],
                        cut_after: Some(1),
                        ..Pieces::default()
                    };
                    Response::paced(status(s.status), "application/json", pieces)
                }
            };
            response.delay = s.delay;
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

impl LlmMock {
    /// A recorded transcript as stored ([`fixture`]), with the scenario's status, pacing, cut and
    /// chunking.
    fn replay(s: &Scenario, f: &fixture::Fixture) -> Response {
        if f.kind == fixture::Kind::Json && s.api == Api::GeminiStream {
            // A streamed JSON array (Gemini without `alt=sse`): chunked, an element per write.
            let pieces = Pieces {
                pieces: fixture::array_pieces(&f.bytes, s.chunk_bytes),
                delay: s.delay,
                cut_after: s.cut_after,
                chunked: true,
            };
            let framing = stream::Framing::JsonArray;
            return Response::paced(status(s.status), framing.content_type(), pieces);
        }
        if f.kind == fixture::Kind::Json && s.cut_after.is_none() && s.chunk_bytes.is_none() {
            return Response {
                delay: s.delay,
                ..Response::json(status(s.status), f.bytes.clone())
            };
        }
        let pieces = Pieces {
            pieces: fixture::pieces(f, s.chunk_bytes),
            delay: s.delay,
            cut_after: s.cut_after,
            chunked: f.kind != fixture::Kind::Json,
        };
        Response::paced(status(s.status), f.kind.content_type(), pieces)
    }
}

impl Handler for LlmMock {
    fn handle(&self, request: &Request) -> Response {
        let saw_encoding = request
            .header("accept-encoding")
            .unwrap_or("none")
            .to_owned();
        let saw_bytes = request.body.len().to_string();
        let api = request
            .header("x-mock-api")
            .and_then(Api::from_name)
            .or_else(|| Api::from_path(request.path()));
        let response = match (request.path(), api) {
            ("/healthz", _) => Response::json_of(
                StatusCode::OK,
                &Health {
                    status: "ok",
                    app: "llm",
                },
            ),
            (_, Some(api)) if request.method == Method::POST => Self::answer(api, request),
            // A transcript is served as stored whatever the path (Bedrock's `/model/{id}/…`,
            // which the mock does not otherwise speak).
            (_, None)
                if request.method == Method::POST && request.header("x-mock-fixture").is_some() =>
            {
                Self::answer(Api::Chat, request)
            }
            (_, Some(api)) => Response::json(
                StatusCode::METHOD_NOT_ALLOWED,
                error_body(api, 405, "use POST"),
            )
            .with_header("allow", "POST"),
            (_, None) => Response::json(
                StatusCode::NOT_FOUND,
                error_body(Api::Chat, 404, "unknown endpoint"),
            ),
        };
        response
            .with_header("x-mock-saw-accept-encoding", saw_encoding)
            .with_header("x-mock-saw-body-bytes", saw_bytes)
    }
}
