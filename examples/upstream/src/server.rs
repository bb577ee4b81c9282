//! Thread-per-connection HTTP/1.1 server: `std::net` and OS threads, no async runtime.
//!
//! Connections are persistent (Envoy keeps a pool of upstream connections and reuses them), bounded
//! in number, and closed after an idle timeout. Every read is bounded by [`Limits`].

use std::io::{self, BufReader, BufWriter, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::http::{read_request, write_response, Limits, ReadError, Request, Response};

/// `GET` here answers what the server has received so far, as JSON:
/// `{"requests": N, "completed": N, "bytes_received": N}` — every request whose head arrived
/// (complete or not), those that arrived whole (and were answered), and every byte read from
/// any connection; requests to this path excluded. A test reads it
/// before and after a call to see what a proxy let through to the upstream (nothing at all, or
/// only part of a body), not only what the client got.
pub const TRAFFIC_PATH: &str = "/__mock/traffic";

/// Requests whose head was read (admin requests excluded).
static REQUESTS: AtomicU64 = AtomicU64::new(0);
/// Requests read whole (admin requests excluded).
static COMPLETED: AtomicU64 = AtomicU64::new(0);
/// Bytes read from all connections (admin requests excluded).
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Counts every byte read from a connection, into [`RECEIVED`] and for the connection.
struct Counting<R> {
    inner: R,
    read: u64,
    /// A request head (at least its first byte) arrived since the last complete request.
    started: bool,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let n64 = n as u64;
        self.read += n64;
        RECEIVED.fetch_add(n64, Ordering::SeqCst);
        if n > 0 && !self.started {
            self.started = true;
            REQUESTS.fetch_add(1, Ordering::SeqCst);
        }
        Ok(n)
    }
}

fn traffic() -> Response {
    Response::json(
        200,
        format!(
            r#"{{"requests":{},"completed":{},"bytes_received":{}}}"#,
            REQUESTS.load(Ordering::SeqCst),
            COMPLETED.load(Ordering::SeqCst),
            RECEIVED.load(Ordering::SeqCst)
        ),
    )
}

/// How the request body was framed, echoed as `x-mock-saw-framing` so a test sees what a
/// proxy sent: `content-length: N`, `chunked`, or `none`.
fn framing(request: &Request) -> String {
    if request
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        "chunked".into()
    } else if let Some(n) = request.header("content-length") {
        format!("content-length: {n}")
    } else {
        "none".into()
    }
}

/// Something that answers requests: the Task API today, the LLM mock later.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Must not panic; errors are responses (4xx/5xx).
    fn handle(&self, request: &Request) -> Response;
}

/// Server settings.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Per-request parsing bounds.
    pub limits: Limits,
    /// Connections served at once; more are answered with 503 and closed.
    pub max_connections: usize,
    /// A connection with no complete request for this long is closed. Longer than anything
    /// the tests do, so Envoy never races a close on a pooled connection.
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Accepts connections on `listener` forever, one thread each.
pub fn serve(
    listener: &TcpListener,
    handler: Arc<dyn Handler>,
    config: ServerConfig,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            // Per-connection accept errors (ECONNABORTED, EMFILE, ...) must not stop the server.
            Err(e) => {
                eprintln!("tollgate-upstream: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let slot = ConnectionSlot::acquire(&active, config.max_connections);
        let handler = Arc::clone(&handler);
        let spawned = thread::Builder::new()
            .name("conn".into())
            .spawn(move || match slot {
                Some(_slot) => serve_connection(stream, handler.as_ref(), &config),
                None => refuse(stream),
            });
        if let Err(e) = spawned {
            eprintln!("tollgate-upstream: cannot spawn a connection thread: {e}");
        }
    }
    Ok(())
}

/// Counts a live connection; released on drop.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn acquire(active: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let previous = active.fetch_add(1, Ordering::AcqRel);
        let slot = Self(Arc::clone(active));
        (previous < max).then_some(slot)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse(stream: TcpStream) {
    let response = Response::json(503, r#"{"error":"too_many_connections"}"#);
    let mut out = BufWriter::new(&stream);
    let _ = write_response(&mut out, &response, false, false);
    drop(out);
    let _ = stream.shutdown(Shutdown::Both);
}

fn serve_connection(stream: TcpStream, handler: &dyn Handler, config: &ServerConfig) {
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(config.idle_timeout)).is_err() {
        return;
    }
    let mut reader = BufReader::new(Counting {
        inner: &stream,
        read: 0,
        started: false,
    });
    let mut writer = BufWriter::new(&stream);
    loop {
        let before = reader.get_ref().read - reader.buffer().len() as u64;
        let result = read_request(&mut reader, &config.limits);
        // What the next request already has in the buffer counts as started by it.
        let counting = reader.get_mut();
        counting.started = false;
        match result {
            Ok(request) => {
                let response = if request.path() == TRAFFIC_PATH {
                    let after = reader.get_ref().read - reader.buffer().len() as u64;
                    RECEIVED.fetch_sub(after - before, Ordering::SeqCst);
                    REQUESTS.fetch_sub(1, Ordering::SeqCst);
                    traffic()
                } else {
                    COMPLETED.fetch_add(1, Ordering::SeqCst);
                    let framing = framing(&request);
                    handler
                        .handle(&request)
                        .with_header("x-mock-saw-framing", framing)
                };
                let keep_alive = request.keep_alive();
                let head_only = request.method == "HEAD";
                if write_response(&mut writer, &response, keep_alive, head_only).is_err()
                    || !keep_alive
                {
                    break;
                }
            }
            Err(ReadError::Closed | ReadError::Io(_)) => break,
            Err(ReadError::Rejected { status, reason }) => {
                let body =
                    format!(r#"{{"error":"bad_request","status":{status},"reason":"{reason}"}}"#);
                let _ = write_response(&mut writer, &Response::json(status, body), false, false);
                break;
            }
        }
    }
    drop(writer);
    let _ = stream.shutdown(Shutdown::Both);
}
