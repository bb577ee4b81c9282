//! The limits of the example policy, across several workers sharing one store.

use std::time::Duration;

use host_tests::{Outcome, Request, Response};

use crate::support::{
    assert_consistent_admission, assert_consistent_denial, send_as, tollgate_with, Rng, TASK_API,
};

/// Sends 110 requests as one user over 4 workers, in the order `pick` chooses, and checks that
/// exactly 100 pass, that `remaining` counts down across workers, and that every 429 agrees with
/// itself.
fn hundred_of_110(mut pick: impl FnMut(usize) -> usize) {
    let h = tollgate_with(4, TASK_API);
    let mut admitted = 0;
    let mut denied = 0;
    for i in 0..110 {
        let out = send_as(&h, pick(i), "alice").unwrap();
        if out.is_continue() {
            admitted += 1;
            let remaining = assert_consistent_admission(&out, "authenticated", 100);
            assert_eq!(remaining, 100 - admitted, "request {i}");
        } else {
            denied += 1;
            // 100 taken at one instant: the next token is 0.6 s away, full again in 60 s.
            assert_eq!(assert_consistent_denial(&out, "authenticated", 100, 60), 1);
            assert_eq!(out.header("x-ratelimit-reset"), Some("60"));
        }
    }
    assert_eq!((admitted, denied), (100, 10));
}

#[test]
fn a_100_per_minute_user_gets_exactly_100_of_110_round_robin_over_4_workers() {
    hundred_of_110(|i| i % 4);
}

#[test]
fn a_100_per_minute_user_gets_exactly_100_of_110_spread_randomly_over_4_workers() {
    let mut rng = Rng::seeded(0x7011_6a7e);
    hundred_of_110(|_| rng.below(4));
}

#[test]
fn premium_key_is_not_limited_at_110_requests() {
    let h = tollgate_with(2, TASK_API);
    for i in 0..110 {
        let out = h.request(i % 2, &[("x-api-key", "premium-abc")]).unwrap();
        assert_consistent_admission(&out, "premium", 1000);
    }
}

#[test]
fn anonymous_callers_share_10_per_minute() {
    let h = tollgate_with(2, TASK_API);
    let statuses: Vec<u32> = (0..12)
        .map(|i| {
            let headers: &[(&str, &str)] = if i % 2 == 0 {
                &[]
            } else {
                &[("x-api-key", "basic-key")]
            };
            h.request(i % 2, headers).unwrap().status()
        })
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10);
    let last = h.request(0, &[("user-agent", "curl")]).unwrap();
    assert_consistent_denial(&last, "anonymous", 10, 60);
}

#[test]
fn a_second_user_is_unaffected_by_the_first() {
    let h = tollgate_with(2, TASK_API);
    for i in 0..105 {
        send_as(&h, i % 2, "alice").unwrap();
    }
    for i in 0..100 {
        assert!(send_as(&h, i % 2, "bob").unwrap().is_continue(), "bob #{i}");
    }
}

#[test]
fn a_denied_user_passes_again_after_retry_after() {
    let h = tollgate_with(4, TASK_API);
    for i in 0..100 {
        assert!(send_as(&h, i % 4, "alice").unwrap().is_continue());
    }
    let denied = send_as(&h, 1, "alice").unwrap();
    let retry = assert_consistent_denial(&denied, "authenticated", 100, 60);
    h.advance(Duration::from_secs(retry)).unwrap();
    assert!(send_as(&h, 2, "alice").unwrap().is_continue());
}

#[test]
fn a_grpc_request_over_the_limit_gets_resource_exhausted() {
    let h = tollgate_with(2, TASK_API);
    let grpc = [("content-type", "application/grpc"), ("x-user-id", "alice")];
    for i in 0..100 {
        assert!(h.request(i % 2, &grpc).unwrap().is_continue());
    }
    match h.request(0, &grpc).unwrap() {
        Outcome::LocalReply {
            grpc_status,
            headers,
            ..
        } => {
            assert_eq!(grpc_status, Some(8));
            // What the client sees: a trailers-only gRPC response.
            assert_eq!(headers.get(":status"), Some("200"));
            assert_eq!(headers.get("grpc-status"), Some("8"));
            assert_eq!(headers.get("retry-after"), Some("1"));
            assert_eq!(headers.count("x-ratelimit-remaining"), 1);
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
}

#[test]
fn admissions_and_denials_are_counted_in_envoy_stats_on_the_tick() {
    let h = tollgate_with(4, TASK_API);
    for i in 0..103 {
        send_as(&h, i % 4, "alice").unwrap();
    }
    // Counters are flushed once a second per worker.
    h.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(
        h.metrics().value("tollgate.authenticated.allowed"),
        Some(100)
    );
    assert_eq!(h.metrics().value("tollgate.authenticated.denied"), Some(3));
}

#[test]
fn a_request_reset_by_the_client_after_admission_still_counts() {
    let h = tollgate_with(2, TASK_API);
    let mut stream = h.stream(0).unwrap();
    stream
        .request_headers(&[(":path", "/"), ("x-user-id", "alice")], true)
        .unwrap();
    let record = stream.reset().unwrap();
    assert!(record.reset_by_downstream);
    assert_eq!(record.response_headers, None);
    let out = send_as(&h, 1, "alice").unwrap();
    assert_eq!(assert_consistent_admission(&out, "authenticated", 100), 98);
}

#[test]
fn an_upstream_error_still_carries_the_rate_limit_headers() {
    let h = tollgate_with(1, TASK_API);
    let request = Request::get("/tasks")
        .header("x-user-id", "alice")
        .respond_with(Response::status(503).body_chunk("upstream down"));
    let out = h.send(0, &request).unwrap();
    assert_eq!(out.status(), 503);
    assert_eq!(out.body(), b"upstream down");
    assert_eq!(assert_consistent_admission(&out, "authenticated", 100), 99);
}
