//! A response as the demo services describe it: status, headers, and a body sent whole or in
//! paced pieces. Plain data: [`crate::writer`] puts it on the wire.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};

/// One response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// Header fields (`content-length` / `transfer-encoding` are the writer's).
    pub headers: HeaderMap,
    /// The body and how it is sent.
    pub body: Body,
    /// Wait this long before sending anything (a slow upstream).
    pub delay: Duration,
}

/// How a body is sent.
#[derive(Debug, Clone)]
pub enum Body {
    /// All at once, with `content-length`.
    Whole(Bytes),
    /// Piece by piece (an LLM API's Server-Sent Events, or a body cut short).
    Paced(Pieces),
}

/// A body written piece by piece, each piece flushed on its own (its own `write` on the socket),
/// with a pause between pieces: how an LLM API streams Server-Sent Events. Can also stop early
/// and drop the connection, as an upstream that dies mid-response does.
#[derive(Debug, Clone, Default)]
pub struct Pieces {
    /// The pieces, in order (empty pieces are skipped).
    pub pieces: Vec<Bytes>,
    /// Pause before every piece but the first.
    pub delay: Duration,
    /// Write at most this many (non-empty) pieces, then close the connection without ending the
    /// body (no last chunk, or fewer bytes than `content-length` said).
    pub cut_after: Option<usize>,
    /// `true`: `transfer-encoding: chunked`, one chunk per piece. `false`: `content-length` of
    /// all the pieces together, even when cut.
    pub chunked: bool,
}

impl Response {
    /// A JSON response; `body` is JSON text (or, for a fault mode, deliberately not).
    pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Self {
            status,
            headers,
            body: Body::Whole(body.into()),
            delay: Duration::ZERO,
        }
    }

    /// A JSON response serialised from `value`; a value that cannot be serialised (none of
    /// this crate's can) becomes a 500 naming the reason rather than a panic.
    pub fn json_of<T: serde::Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::json(status, body),
            Err(e) => Self::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": "serialisation", "reason": e.to_string() })
                    .to_string(),
            ),
        }
    }

    /// A response whose body is sent in `pieces`.
    pub fn paced(status: StatusCode, content_type: &'static str, pieces: Pieces) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        Self {
            status,
            headers,
            body: Body::Paced(pieces),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header field. A name or value that is not valid in a field (a control character)
    /// is left out rather than sent broken.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl AsRef<str>) -> Self {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.as_ref()),
        ) {
            self.headers.append(name, value);
        }
        self
    }

    /// The first value of a header, if visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The whole body as bytes: a whole body, or every piece of a paced one (what a reader
    /// would get if it were not cut). For tests.
    pub fn body_bytes(&self) -> Bytes {
        match &self.body {
            Body::Whole(body) => body.clone(),
            Body::Paced(p) => p.pieces.concat().into(),
        }
    }

    /// The paced pieces, if the body is paced.
    pub fn pieces(&self) -> Option<&Pieces> {
        match &self.body {
            Body::Whole(_) => None,
            Body::Paced(p) => Some(p),
        }
    }
}
