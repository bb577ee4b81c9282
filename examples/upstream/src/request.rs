//! A request as the demo services see it: already read whole, independent of the server.
//!
//! The server ([`crate::server`]) builds one from what hyper parsed; handlers take it by
//! reference and need no socket, so they are unit-tested by building one by hand.

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};

/// One request, its body read whole (bounded by the server's
/// [`ServerConfig::max_body_bytes`](crate::server::ServerConfig::max_body_bytes)).
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target (path and query).
    pub uri: Uri,
    /// The header fields, as received (names are lower case in `http`'s representation).
    pub headers: HeaderMap,
    /// The decoded body (chunked framing removed); empty when there is none.
    pub body: Bytes,
}

impl Request {
    /// A request with no header and no body, for tests and examples.
    pub fn new(method: Method, uri: Uri) -> Self {
        Self {
            method,
            uri,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// The path, without the query string.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The first value of a header, if it is present and visible ASCII (a value with other
    /// bytes reads as absent: no demo header needs them).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// How the body was framed, as the `x-mock-saw-framing` header reports it: `chunked`,
    /// `content-length: N`, or `none`. A test reads it to see what a proxy sent upstream.
    pub fn framing(&self) -> String {
        let chunked = self
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .any(|v| {
                v.as_bytes()
                    .to_ascii_lowercase()
                    .windows(7)
                    .any(|w| w == b"chunked")
            });
        if chunked {
            "chunked".into()
        } else if let Some(n) = self.header("content-length") {
            format!("content-length: {n}")
        } else {
            "none".into()
        }
    }
}
