//! What the server has received, for `GET /__mock/traffic`: request heads, requests read whole,
//! and bytes, counted as they come off the socket.
//!
//! A test reads the counters before and after a call to see what a proxy let through to the
//! upstream — nothing at all, or only part of a body — not only what the client got. So they
//! count what really arrives: [`CountingIo`] sits between the socket and hyper and sees every
//! read; hyper then tells, through [`Connection::head`] and [`Connection::body_read`], where a
//! request starts and ends. Requests to the traffic path itself are not counted.
//!
//! What each counter means:
//! - `requests`: requests whose first byte arrived — counted at that byte, so a head that never
//!   completes (or a request whose head hyper already had buffered, pipelined behind another)
//!   counts too;
//! - `completed`: requests whose body was read whole (and were then answered);
//! - `bytes_received`: every byte read from any connection, heads and bodies, as received
//!   (chunked framing included). The traffic path's own bytes are taken back out: those read
//!   from the end of the connection's previous request up to its head, and its body. (A client
//!   that pipelines another request's bytes into the same read as a traffic request's would
//!   see them taken out too; tests send the traffic request on a connection of its own.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `GET` here answers the counters as JSON (see the module documentation).
pub const TRAFFIC_PATH: &str = "/__mock/traffic";

/// The counters of one server.
#[derive(Debug, Default)]
pub struct Traffic {
    requests: AtomicU64,
    completed: AtomicU64,
    bytes_received: AtomicU64,
}

/// A reading of the counters, as `GET /__mock/traffic` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Requests whose first byte arrived.
    pub requests: u64,
    /// Requests read whole.
    pub completed: u64,
    /// Bytes read from all connections.
    pub bytes_received: u64,
}

impl Traffic {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::SeqCst),
            bytes_received: self.bytes_received.load(Ordering::SeqCst),
        }
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the first byte of a request.
    Idle,
    /// Bytes of a request arrived, its head is not parsed yet; `pending` of them so far.
    Head,
    /// Inside a counted request (its body, until read whole).
    Request,
    /// Inside a traffic request: its bytes are not counted.
    Admin,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Bytes read in [`Phase::Head`]: taken back out if the head is a traffic request's.
    pending: u64,
}

/// The counting state of one connection.
#[derive(Debug)]
pub struct Connection {
    traffic: Arc<Traffic>,
    state: Mutex<State>,
}

impl Connection {
    /// A new connection of the server counting into `traffic`.
    pub fn new(traffic: Arc<Traffic>) -> Arc<Self> {
        Arc::new(Self {
            traffic,
            state: Mutex::new(State {
                phase: Phase::Idle,
                pending: 0,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `n` bytes were read from the socket.
    fn received(&self, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        let mut state = self.state();
        match state.phase {
            Phase::Admin => return,
            Phase::Idle => {
                state.phase = Phase::Head;
                state.pending = 0;
                self.traffic.requests.fetch_add(1, Ordering::SeqCst);
            }
            Phase::Head | Phase::Request => {}
        }
        if state.phase == Phase::Head {
            state.pending += n;
        }
        self.traffic.bytes_received.fetch_add(n, Ordering::SeqCst);
    }

    /// hyper parsed a request head; `admin`: it is a traffic request.
    pub fn head(&self, admin: bool) {
        let mut state = self.state();
        match (state.phase, admin) {
            (Phase::Head, true) => {
                self.traffic.requests.fetch_sub(1, Ordering::SeqCst);
                self.traffic
                    .bytes_received
                    .fetch_sub(state.pending, Ordering::SeqCst);
            }
            (Phase::Head, false) => {}
            // Its bytes came in an earlier read, with the previous request's: count it now.
            (Phase::Idle | Phase::Request | Phase::Admin, false) => {
                self.traffic.requests.fetch_add(1, Ordering::SeqCst);
            }
            (Phase::Idle | Phase::Request | Phase::Admin, true) => {}
        }
        state.phase = if admin { Phase::Admin } else { Phase::Request };
        state.pending = 0;
    }

    /// The request's body was read whole; `admin`: it is a traffic request.
    pub fn body_read(&self, admin: bool) {
        if !admin {
            self.traffic.completed.fetch_add(1, Ordering::SeqCst);
        }
        self.state().phase = Phase::Idle;
    }
}

/// A socket that reports every read to its [`Connection`].
#[derive(Debug)]
pub struct CountingIo<T> {
    inner: T,
    connection: Arc<Connection>,
}

impl<T> CountingIo<T> {
    /// `inner`, counted into `connection`.
    pub fn new(inner: T, connection: Arc<Connection>) -> Self {
        Self { inner, connection }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            self.connection
                .received(buf.filled().len().saturating_sub(before));
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(events: impl FnOnce(&Connection)) -> Snapshot {
        let traffic = Arc::new(Traffic::default());
        let connection = Connection::new(Arc::clone(&traffic));
        events(&connection);
        traffic.snapshot()
    }

    fn snapshot(requests: u64, completed: u64, bytes_received: u64) -> Snapshot {
        Snapshot {
            requests,
            completed,
            bytes_received,
        }
    }

    #[test]
    fn a_request_counts_at_its_first_byte_and_completes_when_read_whole() {
        let s = counted(|c| {
            c.received(10);
            c.received(5);
            c.head(false);
            c.received(7);
            c.body_read(false);
        });
        assert_eq!(s, snapshot(1, 1, 22));
    }

    #[test]
    fn a_head_that_never_completes_still_counts() {
        assert_eq!(counted(|c| c.received(3)), snapshot(1, 0, 3));
    }

    #[test]
    fn a_traffic_request_takes_its_own_bytes_back_out() {
        let s = counted(|c| {
            c.received(40);
            c.head(false);
            c.body_read(false);
            c.received(30);
            c.head(true);
            c.received(4);
            c.body_read(true);
            c.received(2);
        });
        assert_eq!(s, snapshot(2, 1, 42));
    }

    #[test]
    fn a_pipelined_head_already_buffered_is_counted_when_parsed() {
        let s = counted(|c| {
            c.received(80);
            c.head(false);
            c.body_read(false);
            c.head(false);
            c.body_read(false);
        });
        assert_eq!(s, snapshot(2, 2, 80));
    }
}
