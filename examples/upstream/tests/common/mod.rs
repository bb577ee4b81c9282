//! A server on 127.0.0.1:0 in a runtime of its own, and a raw HTTP/1.1 client over std sockets
//! (so the tests see exactly the bytes the server wrote, and how many reads they took).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tollgate_upstream::server::{serve, Handler, ServerConfig};

/// Starts a server for `handler`; its address.
pub fn start(handler: Arc<dyn Handler>) -> SocketAddr {
    start_with(handler, ServerConfig::default())
}

/// Starts a server for `handler` with `config`; its address.
pub fn start_with(handler: Arc<dyn Handler>, config: ServerConfig) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(listener, handler, config).await
        })
    });
    addr
}

/// A connection with a 10 s read timeout.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// One response as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header fields, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, chunked framing removed.
    pub body: Vec<u8>,
    /// The body ended as its framing says (last chunk, or all of content-length).
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// Reads one response from `reader` (content-length or chunked body; a HEAD-less client).
pub fn read_reply<R: BufRead>(reader: &mut R) -> Reply {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {status_line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(": ").unwrap();
        headers.push((n.to_owned(), v.to_owned()));
    }
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
        complete: false,
    };
    if let Some(length) = reply.header("content-length") {
        let length: usize = length.parse().unwrap();
        let mut body = Vec::new();
        reader
            .take(length as u64)
            .read_to_end(&mut body)
            .unwrap_or(0);
        reply.complete = body.len() == length;
        reply.body = body;
    } else if reply
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
            if size == 0 {
                let mut end = String::new();
                reader.read_line(&mut end).unwrap();
                reply.complete = end == "\r\n";
                break;
            }
            let mut chunk = vec![0; size + 2];
            if reader.read_exact(&mut chunk).is_err() {
                break;
            }
            reply.body.extend_from_slice(&chunk[..size]);
        }
    }
    reply
}

/// Sends `raw` on a new connection and reads one response.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = connect(addr);
    stream.write_all(raw).unwrap();
    read_reply(&mut BufReader::new(stream))
}

/// A POST of `body` to `path` with `extra` header lines (each ending in CRLF).
pub fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}
