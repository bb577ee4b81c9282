//! How a whole request ended, from the client's point of view.

use crate::headers::Headers;
use crate::record::StreamRecord;

/// The result of [`crate::Harness::request`]: the request went upstream, or the filter answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The filter let the request through and the upstream's response came back.
    Continue {
        /// Request headers as forwarded upstream (after the filter's mutations).
        request_headers: Headers,
        /// Response headers as sent downstream (after the filter's mutations).
        response_headers: Headers,
        /// Response body as sent downstream.
        response_body: Vec<u8>,
        /// Everything else the host saw of the stream.
        record: Box<StreamRecord>,
    },
    /// The filter answered with `proxy_send_local_response`.
    LocalReply {
        /// The HTTP status the filter asked for (for gRPC the wire status is 200).
        status: u32,
        /// Response headers as the client receives them: Envoy's local-reply headers plus whatever
        /// the filter's own response callbacks did to them.
        headers: Headers,
        /// The body the filter sent.
        body: Vec<u8>,
        /// The gRPC status the filter passed, `None` for -1.
        grpc_status: Option<u32>,
    },
}

impl Outcome {
    /// The HTTP status the client sees (the filter's status for a local reply).
    pub fn status(&self) -> u32 {
        match self {
            Self::Continue {
                response_headers, ..
            } => response_headers
                .get(":status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            Self::LocalReply { status, .. } => *status,
        }
    }

    /// Whether the request reached the upstream.
    pub fn is_continue(&self) -> bool {
        matches!(self, Self::Continue { .. })
    }

    /// The response headers the client sees.
    pub fn headers(&self) -> &Headers {
        match self {
            Self::Continue {
                response_headers, ..
            } => response_headers,
            Self::LocalReply { headers, .. } => headers,
        }
    }

    /// The first response header named `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers().get(name)
    }

    /// The response body the client sees.
    pub fn body(&self) -> &[u8] {
        match self {
            Self::Continue { response_body, .. } => response_body,
            Self::LocalReply { body, .. } => body,
        }
    }
}
