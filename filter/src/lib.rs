//! tollgate's proxy-wasm filter: the glue between Envoy and [`policy_core`].
//!
//! Everything that can be decided without a VM lives in policy-core. This crate reads what Envoy
//! offers (configuration, headers, the clock, shared data), hands it to the policy, and turns the
//! policy's decisions into responses.

mod attributes;
mod global;
mod global_strict;
mod host;
mod http;
mod llm;
mod metrics;
mod plugin;
mod record;
mod reply;
mod root;
mod shared;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
