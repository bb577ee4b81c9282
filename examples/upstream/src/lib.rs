//! Demo upstreams for tollgate's examples and end-to-end tests.
//!
//! std only: `std::net` and one thread per connection, no async runtime. The pieces:
//! - [`http`]: a bounded HTTP/1.1 parser and response writer (keep-alive, content-length and
//!   chunked request bodies, streamed chunked responses),
//! - [`server`]: the accept loop and the [`server::Handler`] trait every demo service implements,
//! - [`task_api`]: the Task API (v1/v2) that the rate-limit examples protect,
//! - [`llm`]: an OpenAI/Anthropic-compatible LLM mock (JSON and SSE streams, deterministic
//!   usage, fault modes), selected with `--app llm`.

pub mod http;
pub mod llm;
pub mod server;
pub mod task_api;
