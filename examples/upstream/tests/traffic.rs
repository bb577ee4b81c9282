//! `GET /__mock/traffic` counts what reached the server, including requests that never
//! completed, and not its own requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, exchange, read_reply, start};
use tollgate_upstream::task_api::{ApiVersion, TaskApi};
use tollgate_upstream::traffic::{Snapshot, TRAFFIC_PATH};

const GET_TRAFFIC: &str = "GET /__mock/traffic HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

fn parse(body: &[u8]) -> (u64, u64, u64) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let n = |key: &str| v.get(key).and_then(serde_json::Value::as_u64).unwrap();
    (n("requests"), n("completed"), n("bytes_received"))
}

fn traffic(addr: SocketAddr) -> (u64, u64, u64) {
    let reply = exchange(addr, GET_TRAFFIC.as_bytes());
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    parse(&reply.body)
}

/// Polls until the counters read `want` (the server counts a closed connection's bytes as it
/// reads them, a moment after the client sent them).
fn wait_for(addr: SocketAddr, want: (u64, u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = traffic(addr);
        if got == want || Instant::now() > deadline {
            assert_eq!(got, want, "(requests, completed, bytes_received)");
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counts_heads_and_bytes_of_complete_and_cut_requests_but_not_its_own() {
    let addr = start(Arc::new(TaskApi::new(ApiVersion::V1)));
    assert_eq!(traffic(addr), (0, 0, 0), "its own requests are not counted");

    // A complete request, answered.
    let complete =
        b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    let reply = exchange(addr, complete);
    assert_eq!(
        reply.header("x-mock-saw-framing"),
        Some("content-length: 2")
    );

    // A request cut inside its body: its head and the bytes that came still count.
    let cut = b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"a\":";
    let mut s = connect(addr);
    s.write_all(cut).unwrap();
    s.shutdown(Shutdown::Both).unwrap();

    // A head that never completes counts too.
    let partial = b"GET /api/ta";
    let mut s = connect(addr);
    s.write_all(partial).unwrap();
    s.shutdown(Shutdown::Both).unwrap();

    wait_for(
        addr,
        (3, 1, (complete.len() + cut.len() + partial.len()) as u64),
    );
}

#[test]
fn a_traffic_request_on_a_used_connection_is_left_out_and_pipelined_heads_count() {
    let addr = start(Arc::new(TaskApi::new(ApiVersion::V1)));
    let stream = connect(addr);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // Two pipelined requests in one write, then (after their answers) a traffic request on the
    // same connection.
    let two = b"GET /api/tasks HTTP/1.1\r\nhost: x\r\n\r\nGET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    writer.write_all(two).unwrap();
    assert_eq!(read_reply(&mut reader).status, 200);
    assert_eq!(read_reply(&mut reader).status, 200);
    write!(writer, "GET {TRAFFIC_PATH} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let counted = read_reply(&mut reader);
    assert_eq!(parse(&counted.body), (2, 2, two.len() as u64));
    wait_for(addr, (2, 2, two.len() as u64));
}

#[test]
fn the_snapshot_serialises_as_the_tests_read_it() {
    let s = Snapshot {
        requests: 1,
        completed: 2,
        bytes_received: 3,
    };
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"{"requests":1,"completed":2,"bytes_received":3}"#
    );
}
