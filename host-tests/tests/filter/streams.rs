//! Streams driven piece by piece through tollgate: bodies in chunks, trailers, interleaving.

use host_tests::{Action, Outcome, Request, Response};

use crate::support::{tollgate_with, TASK_API};

#[test]
fn chunked_request_and_response_bodies_pass_through_untouched() {
    let h = tollgate_with(2, TASK_API);
    let request = Request::new("POST", "/tasks")
        .header("x-user-id", "alice")
        .header("content-type", "application/json")
        .body_chunk(r#"{"title":"#)
        .body_chunk(r#""write tests"}"#)
        .respond_with(
            Response::status(201)
                .header("content-type", "application/json")
                .body_chunk(r#"{"id":1,"#)
                .body_chunk(r#""title":"write tests"}"#)
                .trailers(&[("x-checksum", "abc")]),
        );
    match h.send(1, &request).unwrap() {
        Outcome::Continue {
            response_body,
            record,
            response_headers,
            ..
        } => {
            assert_eq!(response_headers.get(":status"), Some("201"));
            assert_eq!(response_body, br#"{"id":1,"title":"write tests"}"#);
            assert_eq!(record.request_body.forwarded, br#"{"title":"write tests"}"#);
            assert_eq!(
                record.response_trailers.unwrap().get("x-checksum"),
                Some("abc")
            );
        }
        other => panic!("expected the request through, got {other:?}"),
    }
}

#[test]
fn interleaved_streams_on_one_worker_are_kept_apart() {
    let h = tollgate_with(1, TASK_API);
    let mut first = h.stream(0).unwrap();
    let mut second = h.stream(0).unwrap();
    let headers = |user| [(":path", "/"), ("x-user-id", user)];
    assert_eq!(
        first.request_headers(&headers("alice"), true).unwrap(),
        Action::Continue
    );
    assert_eq!(
        second.request_headers(&headers("bob"), true).unwrap(),
        Action::Continue
    );
    second
        .response_headers(&[(":status", "200")], true)
        .unwrap();
    first.response_headers(&[(":status", "204")], true).unwrap();
    let (first, second) = (first.finish().unwrap(), second.finish().unwrap());
    let remaining = |r: &host_tests::StreamRecord| {
        r.response_headers
            .as_ref()
            .unwrap()
            .get("x-ratelimit-remaining")
            .map(str::to_owned)
    };
    assert_eq!(remaining(&first).as_deref(), Some("99"));
    assert_eq!(remaining(&second).as_deref(), Some("99"));
    assert_eq!(first.response_headers.unwrap().get(":status"), Some("204"));
}
