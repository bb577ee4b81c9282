//! The host-tests suite, one binary so wasmtime links once and the compiled filter is shared.
//!
//! `host` tests the host itself against a hand-written module (`probe.wat`); the other modules pin
//! tollgate's behaviour through `target/wasm32-unknown-unknown/release/tollgate.wasm`
//! (`scripts/build-wasm` builds it; `TOLLGATE_WASM` overrides the path).

// This whole binary is test code: a failed unwrap is a failed test. clippy.toml's
// allow-*-in-tests covers `#[test]` functions only, not the helpers they share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod calendar;
mod config;
mod costs;
mod global_scopes;
mod global_strict;
mod global_strict_tokens;
mod global_sync;
mod header_edges;
mod host;
mod host_calls;
mod host_faults;
mod identity_case;
mod imports;
mod key_table;
mod limits;
mod llm_apis;
mod llm_lifecycle;
mod llm_request;
mod llm_stream;
mod model_snapshots;
mod output;
mod readme;
mod reconfigure;
mod records;
mod refill;
mod regex_corpus;
mod replies;
mod scopes;
mod shadow;
mod store;
mod stream_cost;
mod streams;
