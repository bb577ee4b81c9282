//! Demo upstreams for tollgate's examples and end-to-end tests.
//!
//! An HTTP/1.1 server on tokio and hyper, with serde_json for every body. The pieces:
//! - [`server`]: the accept loop, one hyper connection per socket, and the [`server::Handler`]
//!   trait every demo service implements;
//! - [`request`] / [`response`]: what a handler reads and answers, plain data (handlers are
//!   tested without a socket);
//! - [`writer`]: puts a response on the wire, a paced body one piece per write;
//! - [`traffic`]: what reached the server (`GET /__mock/traffic`);
//! - [`task_api`]: the Task API (v1/v2) that the rate-limit examples protect;
//! - [`llm`]: an LLM mock speaking OpenAI, Azure OpenAI, Anthropic, Gemini, Vertex AI and
//!   Ollama (JSON and streams, deterministic usage, fault modes), selected with `--app llm`.

pub mod llm;
pub mod request;
pub mod response;
pub mod server;
pub mod task_api;
pub mod traffic;
pub mod writer;
