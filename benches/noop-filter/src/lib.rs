//! The do-nothing Wasm filter of the side-by-side benchmark (`benches/side-by-side`).
//!
//! Built with the same proxy-wasm SDK as tollgate, it is the floor any Rust proxy-wasm filter
//! pays in Envoy: a VM per worker, a context created and deleted per stream, and Envoy calling
//! every callback the SDK exports (request and response headers and bodies, log, done). It reads
//! nothing and calls no host function, so the gap between it and tollgate is tollgate's own work.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

/// The root context: hands out one [`Stream`] per HTTP stream, nothing else.
struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream: the SDK's default callbacks (each answers Continue) and nothing more.
struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {}
