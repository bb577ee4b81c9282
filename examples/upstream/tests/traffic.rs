//! `GET /__mock/traffic` counts what reached the server, including requests that never
//! completed. Its own binary: the counters are per process, and other tests would move them.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tollgate_upstream::server::{serve, ServerConfig, TRAFFIC_PATH};
use tollgate_upstream::task_api::{ApiVersion, TaskApi};

fn traffic(addr: std::net::SocketAddr) -> (u64, u64, u64, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {TRAFFIC_PATH} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut text = String::new();
    let mut head = String::new();
    reader.read_line(&mut head).unwrap();
    reader.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap().to_owned();
    // `{"requests":N,"bytes_received":N}`: the crate is std only, so read it by hand.
    let number = |key: &str| -> u64 {
        let at = body.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
        let digits: String = body[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    (
        number("requests"),
        number("completed"),
        number("bytes_received"),
        head,
    )
}

#[test]
fn counts_heads_and_bytes_of_complete_and_cut_requests_but_not_its_own() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        serve(
            &listener,
            Arc::new(TaskApi::new(ApiVersion::V1)),
            ServerConfig::default(),
        )
    });
    let (requests, completed, bytes, head) = traffic(addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        (requests, completed, bytes),
        (0, 0, 0),
        "its own requests are not counted"
    );

    // A complete request, answered.
    let complete =
        b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(complete).unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_to_string(&mut answer).unwrap();
    assert!(
        answer.contains("x-mock-saw-framing: content-length: 2"),
        "{answer}"
    );

    // A request cut inside its body: its head and the bytes that came still count.
    let cut = b"POST /api/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"a\":";
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(cut).unwrap();
    s.shutdown(Shutdown::Both).unwrap();

    // Two heads, one completed, every byte.
    let want = (2, 1, (complete.len() + cut.len()) as u64);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (requests, completed, bytes, _) = traffic(addr);
        if (requests, completed, bytes) == want || Instant::now() > deadline {
            assert_eq!((requests, completed, bytes), want);
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
