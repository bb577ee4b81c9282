//! The HTTP/1.1 server: tokio accepts, hyper speaks HTTP, one task per connection.
//!
//! Connections are persistent (Envoy keeps a pool of upstream connections and reuses them),
//! bounded in number, and closed when no request head arrives for [`ServerConfig::idle_timeout`].
//! hyper bounds the head ([`ServerConfig::max_header_bytes`], [`ServerConfig::max_headers`]:
//! 431 beyond them) and answers a malformed one with 400 itself; the body is read whole, bounded
//! by [`ServerConfig::max_body_bytes`] (413), before the handler sees the request.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::request::Request;
use crate::response::Response;
use crate::traffic::{Connection, CountingIo, Traffic, TRAFFIC_PATH};
use crate::writer::{to_hyper, PacedBody};

/// Something that answers requests: the Task API or the LLM mock.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Must not panic; errors are responses (4xx/5xx).
    fn handle(&self, request: &Request) -> Response;
}

/// Server settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Request line plus header fields, in bytes (hyper answers 431 beyond).
    pub max_header_bytes: usize,
    /// Number of header fields (hyper answers 431 beyond).
    pub max_headers: usize,
    /// Decoded body size, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// A connection with no request head for this long is closed, and a body that stalls this
    /// long is given up. Longer than anything the tests do, so Envoy never races a close on a
    /// pooled connection.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// A server: its handler, settings and traffic counters.
struct Server {
    handler: Arc<dyn Handler>,
    config: ServerConfig,
    traffic: Arc<Traffic>,
    active: AtomicUsize,
}

/// Accepts connections on `listener` until the process ends, one task each.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    config: ServerConfig,
) -> io::Result<()> {
    let server = Arc::new(Server {
        handler,
        config,
        traffic: Arc::new(Traffic::default()),
        active: AtomicUsize::new(0),
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Per-connection accept errors (ECONNABORTED, EMFILE, ...) must not stop the server.
            Err(e) => {
                eprintln!("tollgate-upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.connection(stream).await });
    }
}

/// Counts a live connection; released on drop.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Server {
    async fn connection(self: Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let previous = self.active.fetch_add(1, Ordering::AcqRel);
        let _slot = Slot(&self.active);
        let refuse = previous >= self.config.max_connections;
        let counted = Connection::new(Arc::clone(&self.traffic));
        let io = TokioIo::new(CountingIo::new(stream, Arc::clone(&counted)));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.idle_timeout)
            .max_header_size(self.config.max_header_bytes)
            .max_headers(self.config.max_headers)
            // The responses are reproducible byte for byte, as before: no `date`.
            .auto_date_header(false)
            .keep_alive(!refuse);
        let server = Arc::clone(&self);
        let service = service_fn(move |request| {
            let server = Arc::clone(&server);
            let counted = Arc::clone(&counted);
            async move {
                if refuse {
                    let body = br#"{"error":"too_many_connections"}"#;
                    return Ok::<_, Infallible>(to_hyper(Response::json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Bytes::from_static(body),
                    )));
                }
                Ok(server.answer(request, &counted).await)
            }
        });
        // A connection ends in an error when the peer goes away mid-request or a response is
        // cut on purpose; neither is the server's problem, so neither is logged.
        let _ = builder.serve_connection(io, service).await;
    }

    async fn answer(
        &self,
        request: hyper::Request<Incoming>,
        counted: &Connection,
    ) -> http::Response<PacedBody> {
        let admin = request.uri().path() == TRAFFIC_PATH;
        counted.head(admin);
        let (parts, body) = request.into_parts();
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(status) => return to_hyper(bad_request(status)),
        };
        counted.body_read(admin);
        if admin {
            return to_hyper(Response::json_of(StatusCode::OK, &self.traffic.snapshot()));
        }
        let request = Request {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        };
        let response = self
            .handler
            .handle(&request)
            .with_header("x-mock-saw-framing", request.framing());
        if !response.delay.is_zero() {
            tokio::time::sleep(response.delay).await;
        }
        to_hyper(response)
    }

    /// The whole body, or the status to refuse it with.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, StatusCode> {
        let limited = Limited::new(body, self.config.max_body_bytes);
        match tokio::time::timeout(self.config.idle_timeout, limited.collect()).await {
            Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                Err(StatusCode::PAYLOAD_TOO_LARGE)
            }
            // The peer went away or broke the framing; this answer likely never arrives.
            Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        }
    }
}

/// Why a request was refused before its handler saw it.
#[derive(Debug, Serialize)]
struct Refusal {
    error: &'static str,
    status: u16,
    reason: &'static str,
}

fn bad_request(status: StatusCode) -> Response {
    let refusal = Refusal {
        error: "bad_request",
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("refused"),
    };
    Response::json_of(status, &refusal).with_header("connection", "close")
}
