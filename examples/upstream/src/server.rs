//! Thread-per-connection HTTP/1.1 server: `std::net` and OS threads, no async runtime.
//!
//! Connections are persistent (Envoy keeps a pool of upstream connections and reuses them), bounded
//! in number, and closed after an idle timeout. Every read is bounded by [`Limits`].

use std::io::{self, BufReader, BufWriter};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::http::{read_request, write_response, Limits, ReadError, Request, Response};

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
    let mut reader = BufReader::new(&stream);
    let mut writer = BufWriter::new(&stream);
    loop {
        match read_request(&mut reader, &config.limits) {
            Ok(request) => {
                let response = handler.handle(&request);
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
