//! The upstream over real sockets: keep-alive, pipelining, framing, bad requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::sync::Arc;

use common::{connect, exchange, read_reply, start, start_with};
use tollgate_upstream::server::ServerConfig;
use tollgate_upstream::task_api::{ApiVersion, TaskApi};

fn task_api(version: ApiVersion) -> std::net::SocketAddr {
    start(Arc::new(TaskApi::new(version)))
}

#[test]
fn serves_several_requests_on_one_connection() {
    let addr = task_api(ApiVersion::V2);
    let stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for path in ["/api/tasks", "/api/v1/tasks", "/healthz"] {
        write!(writer, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let reply = read_reply(&mut reader);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("x-upstream-version"), Some("v2"));
        assert_eq!(reply.header("x-mock-saw-framing"), Some("none"));
        assert!(reply.text().starts_with('{'));
    }
    // Pipelined, with a body to skip in between.
    write!(
        writer,
        "POST /api/tasks HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /api/tasks HTTP/1.1\r\n\r\n"
    )
    .unwrap();
    let refused = read_reply(&mut reader);
    assert_eq!(refused.status, 405);
    assert_eq!(
        refused.header("x-mock-saw-framing"),
        Some("content-length: 3")
    );
    let reply = read_reply(&mut reader);
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains(r#""version":"v2""#));
}

#[test]
fn reports_a_chunked_request_body_as_chunked() {
    let addr = task_api(ApiVersion::V1);
    let reply = exchange(
        addr,
        b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("x-mock-saw-framing"), Some("chunked"));
}

#[test]
fn answers_malformed_requests_with_4xx_and_closes() {
    let addr = task_api(ApiVersion::V1);
    let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
    let many: String = (0..200).map(|i| format!("h{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    for (raw, status) in [
        (&b"GET /api/tasks HTTP/1.1\r\nbad header\r\n\r\n"[..], 400),
        (b"GET /api/tasks HTTP/1.1\r\nbad name: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
            400,
        ),
        (b"GET /\r\n\r\n", 400),
        (huge.as_bytes(), 431),
        (many.as_bytes(), 431),
    ] {
        let mut stream = connect(addr);
        stream.write_all(raw).unwrap();
        let mut all = Vec::new();
        // The server answers and closes: read to the end.
        stream.read_to_end(&mut all).unwrap();
        let all = String::from_utf8_lossy(&all);
        assert!(
            all.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {all}",
            String::from_utf8_lossy(&raw[..raw.len().min(40)])
        );
    }
    // Still serving.
    let ok = exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(ok.status, 200);
}

#[test]
fn a_body_over_the_limit_gets_413() {
    let config = ServerConfig {
        max_body_bytes: 10,
        ..ServerConfig::default()
    };
    let addr = start_with(Arc::new(TaskApi::new(ApiVersion::V1)), config);
    let reply = exchange(
        addr,
        b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n01234567890",
    );
    assert_eq!(reply.status, 413);
    assert_eq!(reply.header("connection"), Some("close"));
    let chunked = exchange(
        addr,
        b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n012345\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 413);
}

#[test]
fn never_panics_on_truncated_or_random_input() {
    let addr = task_api(ApiVersion::V1);
    let raw =
        b"POST /api/tasks HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    for end in (0..raw.len()).step_by(3) {
        let mut stream = connect(addr);
        stream.write_all(&raw[..end]).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut stream = connect(addr);
    let _ = stream.write_all(&bytes);
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    assert_eq!(
        exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").status,
        200,
        "the server survived"
    );
}

#[test]
fn http10_closes_after_the_response() {
    let addr = task_api(ApiVersion::V1);
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /api/tasks HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.0 200 OK\r\n"), "{all}");
    assert!(all.contains(r#"{"version":"v1","tasks":["#), "{all}");
}

#[test]
fn connections_over_the_limit_get_503() {
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let addr = start_with(Arc::new(TaskApi::new(ApiVersion::V1)), config);
    let first = connect(addr);
    let mut first_reader = BufReader::new(first.try_clone().unwrap());
    (&first)
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_reply(&mut first_reader).status,
        200,
        "the first is served"
    );
    let refused = exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.text(), r#"{"error":"too_many_connections"}"#);
}
