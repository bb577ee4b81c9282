//! LLM token budgets: what a request asks for, what its response reports, and what that costs.
//!
//! The flow in the filter, for one request to an LLM route:
//! 1. [`ApiKind::from_path`] tells the API (or the policy's `llm.routes`), and
//!    [`ApiKind::model_in_path`] the model where the path names it (Gemini, Vertex AI, Azure);
//!    [`LlmRequest::parse`] reads the buffered request
//!    body (model, `stream`, output limits, a prompt-size estimate) and, for OpenAI streams, a
//!    [`UsageRewriter`] rewrites the body as it passes (held or not) so the stream reports its
//!    usage.
//! 2. A JSON response is read whole with [`usage_from_json`]; a streamed one (SSE, Ollama's
//!    NDJSON, Gemini's JSON array or Bedrock's binary event stream: [`Framing`]) is observed
//!    chunk by chunk with an
//!    [`SseScanner`], which never holds a chunk back. Where tollgate
//!    added `include_usage`, an [`AddedUsageRemover`] takes what that added out of the stream
//!    before the client sees it.
//! 3. [`Cost::tokens`] turns the [`Usage`] (or the scanner's estimate for a stream cut short)
//!    into the number of budget tokens to charge; [`stream_charge`] decides it for a stream.
//!
//! Everything here reads bytes that came from the network: no input can make it panic, loop
//! without progress, or allocate beyond a small multiple of what the caller already buffered
//! (for the scanner, [`SseLimits`]). Response bodies must be identity-encoded: the filter
//! should keep `accept-encoding` from reaching the upstream on LLM routes (unless it asks for
//! `identity` only: [`encoding::accepts_encodings`]).

pub mod added_usage;
pub mod charge;
pub mod cost;
pub mod encoding;
pub mod eventstream;
mod gemini;
mod json;
mod json_array;
mod json_text;
pub mod lifecycle;
mod ollama;
pub mod price;
pub mod request;
pub mod rewrite;
pub mod sse;
pub mod usage;

pub use added_usage::AddedUsageRemover;
pub use charge::{stream_charge, stream_charge_by, StreamSeen};
pub use cost::{Cost, CostError, CostSpec, Weight, WeightError, WeightsSpec};
pub use json::FieldError;
pub use lifecycle::LlmCall;
pub use request::{bedrock_model_name, estimate_tokens, ApiKind, LlmRequest, RequestError};
pub use rewrite::{ensure_stream_usage, RewriteError, UsageRewriter, MAX_STREAM_USAGE_GROWTH};
// Its path before it moved into `sse/`.
pub use sse::frame as sse_frame;
pub use sse::{Framing, SseLimits, SseScanner};
pub use usage::{usage_from_json, usage_from_tail, Usage, UsageError};

/// Helpers shared by the property tests of the modules above.
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod testing {
    use alloc::vec::Vec;

    use proptest::sample::Index;

    /// `bytes` cut at the points `cuts` pick (in any order, repeats allowed), in order: every
    /// byte once, some pieces empty.
    pub(crate) fn cut<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::with_capacity(points.len() + 1);
        let mut last = 0;
        for p in points {
            pieces.extend(bytes.get(last..p));
            last = p;
        }
        pieces.extend(bytes.get(last..));
        pieces
    }
}
