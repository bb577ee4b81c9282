//! The upstream over real sockets: keep-alive, pipelining, bad requests.

// Helpers outside `#[test]` functions are not covered by clippy.toml's allow-*-in-tests; here too a
// failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use tollgate_upstream::server::{serve, ServerConfig};
use tollgate_upstream::task_api::{ApiVersion, TaskApi};

fn start(version: ApiVersion) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        serve(
            &listener,
            Arc::new(TaskApi::new(version)),
            ServerConfig::default(),
        )
    });
    addr
}

/// Reads one response (head + content-length body) from `reader`.
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
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
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

#[test]
fn serves_several_requests_on_one_connection() {
    let addr = start(ApiVersion::V2);
    let stream = TcpStream::connect(addr).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for path in ["/api/tasks", "/api/v1/tasks", "/healthz"] {
        write!(writer, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let (status, headers, body) = read_response(&mut reader);
        assert_eq!(status, 200, "{path}");
        assert!(headers.contains(&("x-upstream-version".into(), "v2".into())));
        assert!(body.starts_with('{'));
    }
    // Pipelined, with a body to skip in between.
    write!(
        writer,
        "POST /api/tasks HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /api/tasks HTTP/1.1\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut reader).0, 405);
    let (status, _, body) = read_response(&mut reader);
    assert_eq!(status, 200);
    assert!(body.contains(r#""version":"v2""#));
}

#[test]
fn answers_a_bad_request_and_closes() {
    let addr = start(ApiVersion::V1);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /api/tasks HTTP/1.1\r\nbad header\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
    assert!(all.contains("connection: close"));
}

#[test]
fn http10_closes_after_the_response() {
    let addr = start(ApiVersion::V1);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /api/tasks HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(all.contains(r#"{"version":"v1","tasks":["#), "{all}");
}
