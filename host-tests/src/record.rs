//! What the host remembers about a stream, a log line or a callout: the observable effects a test
//! asserts on.

use std::collections::HashMap;

use crate::abi::{LogLevel, StreamType};
use crate::headers::Headers;

/// Property values the filter reads with `proxy_get_property`, keyed by path segments
/// (`["source", "address"]`, `["metadata", "filter_metadata", "envoy.filters.http.jwt_authn",
/// "payload", "sub"]`). Values are the raw bytes Envoy would return (strings as their UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    values: HashMap<Vec<Vec<u8>>, Vec<u8>>,
}

impl Properties {
    /// Sets the value at `path`.
    pub fn set(&mut self, path: &[&str], value: impl AsRef<[u8]>) {
        let path = path.iter().map(|s| s.as_bytes().to_vec()).collect();
        self.values.insert(path, value.as_ref().to_vec());
    }

    /// The value at `path`.
    pub fn get(&self, path: &[&str]) -> Option<&[u8]> {
        let path: Vec<Vec<u8>> = path.iter().map(|s| s.as_bytes().to_vec()).collect();
        self.lookup(&path)
    }

    pub(crate) fn lookup(&self, path: &[Vec<u8>]) -> Option<&[u8]> {
        self.values.get(path).map(Vec::as_slice)
    }

    pub(crate) fn insert(&mut self, path: Vec<Vec<u8>>, value: Vec<u8>) {
        self.values.insert(path, value);
    }

    /// Copies every value of `other` over this one.
    pub fn extend(&mut self, other: &Properties) {
        self.values
            .extend(other.values.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// The SDK sends a path as its segments joined by NUL bytes.
    pub(crate) fn split_path(raw: &[u8]) -> Vec<Vec<u8>> {
        if raw.is_empty() {
            return Vec::new();
        }
        raw.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
    }
}

/// One `proxy_log` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: LogLevel,
    /// Its text (lossily decoded: a log line is for people).
    pub message: String,
    /// The context that was current when it was logged (the root context for start-up logs).
    pub context_id: u32,
}

/// A `proxy_send_local_response` call, as the filter made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// The HTTP status the filter asked for.
    pub status: u32,
    /// The response-code details (shows up in Envoy's access log as `%RESPONSE_CODE_DETAILS%`).
    pub details: String,
    /// The body.
    pub body: Vec<u8>,
    /// The headers the filter passed (before Envoy and the filter's own response callbacks).
    pub headers: Headers,
    /// The gRPC status, `None` when the filter passed -1 ("plain HTTP").
    pub grpc_status: Option<u32>,
}

/// A body as the host sees it: what the filter is holding and what it let through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    /// Bytes the filter can read and rewrite with `proxy_{get,set}_buffer_bytes`: the current
    /// chunk, plus earlier chunks while the filter keeps pausing (Envoy buffers them).
    pub buffered: Vec<u8>,
    /// Bytes forwarded past the filter (upstream for a request, downstream for a response).
    pub forwarded: Vec<u8>,
}

/// Everything observable about one HTTP stream (one `HttpContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamRecord {
    /// The stream's context id.
    pub context_id: u32,
    /// Request headers as they stand (after the filter's mutations), once received.
    pub request_headers: Option<Headers>,
    /// Request trailers, once received.
    pub request_trailers: Option<Headers>,
    /// Response headers as they stand, once received (from upstream or a local reply).
    pub response_headers: Option<Headers>,
    /// Response trailers, once received.
    pub response_trailers: Option<Headers>,
    /// The request body.
    pub request_body: Body,
    /// The response body.
    pub response_body: Body,
    /// The first local reply the filter sent.
    pub local_reply: Option<LocalReply>,
    /// How many times the filter called `proxy_send_local_response` (more than one is a bug Envoy
    /// punishes with a stuck connection).
    pub local_reply_calls: u32,
    /// `proxy_continue_stream` calls, in order.
    pub continued: Vec<StreamType>,
    /// `proxy_close_stream` calls, in order.
    pub closed: Vec<StreamType>,
    /// The filter sent a local reply after the response had started: Envoy resets the stream.
    pub reset_by_filter: bool,
    /// The downstream reset the stream (the test called `reset`).
    pub reset_by_downstream: bool,
    /// Per-stream properties (overlaying the VM's).
    pub properties: Properties,
    pub(crate) response_started: bool,
    pub(crate) local_reply_delivered: bool,
    pub(crate) in_log_phase: bool,
}

/// An HTTP callout (`proxy_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallout {
    /// The token the filter got back.
    pub token: u32,
    /// The context that made the call.
    pub context_id: u32,
    /// The cluster name.
    pub upstream: String,
    /// Request headers.
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// Timeout in milliseconds.
    pub timeout_ms: u32,
}

/// A gRPC callout (`proxy_grpc_call` or `proxy_grpc_stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallout {
    /// The token the filter got back.
    pub token: u32,
    /// The context that made the call.
    pub context_id: u32,
    /// The cluster name.
    pub upstream: String,
    /// The service.
    pub service: String,
    /// The method.
    pub method: String,
    /// Initial metadata.
    pub metadata: Headers,
    /// Messages sent: the unary request, or each `proxy_grpc_send`, with its end-of-stream flag.
    pub messages: Vec<(Vec<u8>, bool)>,
    /// Timeout in milliseconds (`None` for streams).
    pub timeout_ms: Option<u32>,
    /// `proxy_grpc_cancel` was called.
    pub cancelled: bool,
    /// `proxy_grpc_close` was called.
    pub closed: bool,
}

/// A reply the test injects for an HTTP callout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpReply {
    /// Response headers (include `:status`).
    pub headers: Headers,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Headers,
}

/// Buffers that exist only while a callout reply is being delivered.
#[derive(Debug, Default)]
pub(crate) struct CallReply {
    pub(crate) http_headers: Option<Headers>,
    pub(crate) http_body: Option<Vec<u8>>,
    pub(crate) http_trailers: Option<Headers>,
    pub(crate) grpc_initial_metadata: Option<Headers>,
    pub(crate) grpc_message: Option<Vec<u8>>,
    pub(crate) grpc_trailing_metadata: Option<Headers>,
}
