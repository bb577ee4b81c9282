//! Strict global mode (README "Global mode"): a request on a global-strict tier is held at its
//! headers until the rate limit service answers its one `ShouldRateLimit` check; the answer
//! admits it, refuses it with the tier's 429 (RESOURCE_EXHAUSTED for gRPC), and a failed call,
//! a timeout or an unreadable answer follow `on_unavailable`, each counted.

use host_tests::{Action, FailFor, Harness, StreamRecord};
use policy_core::global::proto::{
    DescriptorStatus, Duration as PbDuration, RateLimitRequest, RateLimitResponse,
};
use prost::Message;

use crate::support::tollgate_with;

/// gRPC status codes Envoy closes a failed call with.
const DEADLINE_EXCEEDED: u32 = 4;
const UNAVAILABLE: u32 = 14;

/// One strict tier, 100 a minute per `x-user-id`, with `on_unavailable` = `fallback`.
fn policy(fallback: &str) -> String {
    format!(
        r#"{{"global":{{"cluster":"tollgate-sync","mode":"strict","timeout_ms":300,
            "on_unavailable":"{fallback}"}},
          "tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":100,"per":"minute"}}]}}]}}"#
    )
}

fn headers(user: &str) -> Vec<(&'static str, String)> {
    vec![(":path", "/api".into()), ("x-user-id", user.into())]
}

/// The service's answer: `code` overall and for the one descriptor, what is left, and the time
/// until the bucket is full again.
fn answer(code: i32, remaining: u32, until_full_ms: u64) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code,
        statuses: vec![DescriptorStatus {
            code,
            current_limit: None,
            limit_remaining: remaining,
            duration_until_reset: Some(PbDuration {
                seconds: (until_full_ms / 1000) as i64,
                nanos: ((until_full_ms % 1000) * 1_000_000) as i32,
            }),
        }],
    }
    .encode_to_vec()
}

const OK: i32 = 1;
const OVER_LIMIT: i32 = 2;

/// The one gRPC call in flight on worker 0: its token and its decoded request.
fn the_call(h: &Harness) -> (u32, RateLimitRequest, u32) {
    let calls = h.worker(0).unwrap().pending_grpc_callouts();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    // The cluster, as a serialized GrpcService (see the filter's `global::dispatch`).
    assert!(
        call.upstream.contains("tollgate-sync"),
        "{:?}",
        call.upstream
    );
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    let (message, _) = &call.messages[0];
    let request = RateLimitRequest::decode(message.as_slice()).unwrap();
    (call.token, request, call.timeout_ms.unwrap_or_default())
}

fn counter(h: &Harness, name: &str) -> i64 {
    h.advance(std::time::Duration::from_secs(2)).unwrap();
    h.metrics()
        .value(&format!("tollgate.users.{name}"))
        .unwrap_or_default()
}

#[test]
fn a_request_is_held_until_the_service_admits_it_and_carries_the_global_numbers() {
    let h = tollgate_with(2, &policy("deny"));
    let mut s = h.stream(0).unwrap();
    assert_eq!(
        s.request_headers(headers("alice").as_slice(), true)
            .unwrap(),
        Action::Pause
    );
    let (token, request, timeout_ms) = the_call(&h);
    assert_eq!(timeout_ms, 300);
    // One check of one cell on the caller's bucket, named without the raw identity.
    assert_eq!(request.domain, "tollgate");
    assert_eq!(request.descriptors.len(), 1);
    let d = &request.descriptors[0];
    assert_eq!(d.hits_addend.map(|h| h.value), Some(1));
    let limit = d.limit.unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (100, 2)); // 2 = MINUTE
    let entries: Vec<(&str, &str)> = d
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(entries[0], ("tier", "users"));
    assert!(
        !entries.iter().any(|(_, v)| v.contains("alice")),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|(k, _)| *k == "tollgate.op"),
        "plain check: {entries:?}"
    );
    assert!(s.record().unwrap().continued.is_empty());

    // The service says OK with 41 left, full again in 35.4 s (others spent the rest).
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OK, 41, 35_400))
        .unwrap();
    let record = s.record().unwrap();
    assert_eq!(record.continued.len(), 1, "resumed once");
    assert!(record.local_reply.is_none());
    s.response_headers(&[(":status", "200")], true).unwrap();
    let record = s.finish().unwrap();
    let response = record.response_headers.unwrap();
    assert_eq!(response.get("x-ratelimit-remaining"), Some("41"));
    assert_eq!(response.get("x-ratelimit-reset"), Some("36"));
    assert_eq!(counter(&h, "global_checks"), 1);
    assert_eq!(counter(&h, "allowed"), 1);
}

#[test]
fn over_limit_is_the_tiers_429_waiting_until_one_request_fits() {
    let h = tollgate_with(1, &policy("allow"));
    let mut s = h.stream(0).unwrap();
    assert_eq!(
        s.request_headers(headers("bob").as_slice(), true).unwrap(),
        Action::Pause
    );
    let (token, _, _) = the_call(&h);
    // Empty: full again in 60 s, so one request fits in 0.6 s (Retry-After rounds up to 1).
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OVER_LIMIT, 0, 60_000))
        .unwrap();
    let reply = s.local_reply().unwrap().expect("refused");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after"), Some("1"));
    assert_eq!(reply.headers.get("x-ratelimit-remaining"), Some("0"));
    assert!(s.record().unwrap().continued.is_empty());
    s.finish().unwrap();
    // A longer debt: full in 90 s means a request fits in 30.6 s.
    let mut s = h.stream(0).unwrap();
    s.request_headers(headers("bob").as_slice(), true).unwrap();
    let (token, _, _) = the_call(&h);
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OVER_LIMIT, 0, 90_000))
        .unwrap();
    let reply = s.local_reply().unwrap().expect("refused");
    assert_eq!(reply.headers.get("retry-after"), Some("31"));
    s.finish().unwrap();
    assert_eq!(counter(&h, "global_over_limit"), 2);
    assert_eq!(counter(&h, "denied"), 2);
}

#[test]
fn a_grpc_request_over_the_global_limit_gets_resource_exhausted() {
    let h = tollgate_with(1, &policy("local"));
    let mut s = h.stream(0).unwrap();
    let mut grpc = headers("carol");
    grpc.push(("content-type", "application/grpc".into()));
    s.request_headers(grpc.as_slice(), true).unwrap();
    let (token, _, _) = the_call(&h);
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OVER_LIMIT, 0, 60_000))
        .unwrap();
    let reply = s.local_reply().unwrap().expect("refused");
    assert_eq!(reply.grpc_status, Some(8));
    s.finish().unwrap();
}

/// Sends one request, fails its call with gRPC `status` (or an unreadable OK), returns the
/// stream's record.
fn failed_call(h: &Harness, user: &str, status: u32) -> StreamRecord {
    let mut s = h.stream(0).unwrap();
    assert_eq!(
        s.request_headers(headers(user).as_slice(), true).unwrap(),
        Action::Pause
    );
    let (token, _, _) = the_call(h);
    let body: &[u8] = if status == 0 {
        b"\xff\xff not protobuf"
    } else {
        b"upstream connect error"
    };
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, status, body)
        .unwrap();
    let record = s.record().unwrap();
    s.finish().unwrap();
    record
}

#[test]
fn on_unavailable_deny_answers_503_to_a_timeout_a_dead_service_and_an_unreadable_answer() {
    let h = tollgate_with(1, &policy("deny"));
    for status in [DEADLINE_EXCEEDED, UNAVAILABLE, 0] {
        let record = failed_call(&h, "dave", status);
        let reply = record.local_reply.expect("refused");
        assert_eq!(reply.status, 503, "status {status}");
        assert!(record.continued.is_empty());
    }
    assert_eq!(counter(&h, "global_unavailable"), 3);
}

#[test]
fn on_unavailable_allow_lets_every_request_through() {
    let h = tollgate_with(1, &policy("allow"));
    for i in 0..150 {
        let record = failed_call(
            &h,
            "erin",
            if i % 2 == 0 {
                UNAVAILABLE
            } else {
                DEADLINE_EXCEEDED
            },
        );
        assert!(record.local_reply.is_none(), "request {i}");
        assert_eq!(record.continued.len(), 1, "request {i}");
    }
    assert_eq!(counter(&h, "global_unavailable"), 150);
}

#[test]
fn on_unavailable_local_decides_with_the_local_bucket_as_local_mode_would() {
    let h = tollgate_with(1, &policy("local"));
    let mut admitted = 0;
    for _ in 0..110 {
        let record = failed_call(&h, "frank", UNAVAILABLE);
        match record.local_reply {
            None => admitted += 1,
            Some(reply) => assert_eq!(reply.status, 429),
        }
    }
    // The local bucket, which strict mode leaves alone while the service answers: 100 of 110.
    assert_eq!(admitted, 100);
}

#[test]
fn a_call_envoy_cannot_start_falls_back_at_once_without_holding_the_request() {
    let h = tollgate_with(1, &policy("deny"));
    // ParseFailure: Envoy refuses to start the call (the SDK reports it; no answer will come).
    h.shared()
        .faults()
        .fail("proxy_grpc_call", 4, FailFor::Always)
        .unwrap();
    let mut s = h.stream(0).unwrap();
    s.request_headers(headers("gina").as_slice(), true).unwrap();
    assert!(h.worker(0).unwrap().pending_grpc_callouts().is_empty());
    assert_eq!(s.local_reply().unwrap().expect("denied").status, 503);
    s.finish().unwrap();
    assert_eq!(counter(&h, "global_unavailable"), 1);
}

#[test]
fn a_tier_that_opts_out_and_sync_mode_make_no_call_on_the_request_path() {
    let opted_out = r#"{"global":{"cluster":"tollgate-sync","mode":"strict"},
        "tiers":[{"name":"users","global":false,"identity":{"header":"x-user-id"},
          "limits":[{"requests":100,"per":"minute"}]}]}"#;
    let sync = r#"{"global":{"cluster":"tollgate-sync"},
        "tiers":[{"name":"users","identity":{"header":"x-user-id"},
          "limits":[{"requests":100,"per":"minute"}]}]}"#;
    for policy in [opted_out, sync] {
        let h = tollgate_with(1, policy);
        let out = h.request(0, &headers("hank")).unwrap();
        assert!(out.is_continue(), "{policy}");
        assert!(h.worker(0).unwrap().pending_grpc_callouts().is_empty());
    }
}

#[test]
fn the_local_fallback_continues_from_the_global_state_last_seen() {
    let h = tollgate_with(2, &policy("local"));
    // The service says the user's bucket is empty (others spent it): refused.
    let mut s = h.stream(0).unwrap();
    s.request_headers(headers("ivy").as_slice(), true).unwrap();
    let (token, _, _) = the_call(&h);
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OVER_LIMIT, 0, 60_000))
        .unwrap();
    assert_eq!(s.local_reply().unwrap().expect("refused").status, 429);
    s.finish().unwrap();
    // Then the service is gone: the local buckets decide, and they remember that answer.
    let record = failed_call(&h, "ivy", UNAVAILABLE);
    let reply = record.local_reply.expect("refused locally");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after"), Some("1"));
    // A caller the service never reported on starts full.
    assert!(failed_call(&h, "jack", UNAVAILABLE).local_reply.is_none());
}

/// A body chunk that arrives while the request waits for its check (Envoy delivers one when
/// the filter runs with `allow_on_headers_stop_iteration`) is held too: the request reaches the
/// upstream only after the answer, and a refusal still refuses it.
#[test]
fn a_body_waits_with_its_headers_for_the_check() {
    let h = tollgate_with(1, &policy("deny"));
    for (code, refused) in [(OK, false), (OVER_LIMIT, true)] {
        let mut s = h.stream(0).unwrap();
        assert_eq!(
            s.request_headers(headers("olga").as_slice(), false)
                .unwrap(),
            Action::Pause
        );
        assert_eq!(s.request_body(b"{\"a\":1}", true).unwrap(), Action::Pause);
        let (token, _, _) = the_call(&h);
        h.worker(0)
            .unwrap()
            .deliver_grpc_reply(token, 0, &answer(code, 0, 60_000))
            .unwrap();
        let record = s.record().unwrap();
        assert_eq!(record.local_reply.is_some(), refused, "code {code}");
        assert_eq!(record.continued.len(), usize::from(!refused), "code {code}");
        s.finish().unwrap();
    }
}

/// A shadow tier refuses nothing in strict mode either: a global `OVER_LIMIT` and an outage
/// under `on_unavailable: deny` are counted as `would_deny` and let through, with no headers
/// unless the tier asks for them.
#[test]
fn a_shadow_tier_in_strict_mode_lets_refusals_and_outages_through() {
    let shadow = r#"{"global":{"cluster":"tollgate-sync","mode":"strict","timeout_ms":300,
            "on_unavailable":"deny"},
          "tiers":[{"name":"users","identity":{"header":"x-user-id"},"mode":"shadow",
            "limits":[{"requests":100,"per":"minute"}]}]}"#;
    let h = tollgate_with(1, shadow);
    let mut s = h.stream(0).unwrap();
    assert_eq!(
        s.request_headers(headers("pia").as_slice(), true).unwrap(),
        Action::Pause
    );
    let (token, _, _) = the_call(&h);
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OVER_LIMIT, 0, 60_000))
        .unwrap();
    let record = s.record().unwrap();
    assert!(record.local_reply.is_none());
    assert_eq!(record.continued.len(), 1);
    s.response_headers(&[(":status", "200")], true).unwrap();
    let response = s.record().unwrap().response_headers.unwrap();
    for name in ["x-ratelimit-remaining", "ratelimit", "retry-after"] {
        assert_eq!(response.get(name), None, "{name}");
    }
    s.finish().unwrap();
    for status in [UNAVAILABLE, DEADLINE_EXCEEDED] {
        let record = failed_call(&h, "pia", status);
        assert!(record.local_reply.is_none(), "status {status}");
        assert_eq!(record.continued.len(), 1, "status {status}");
    }
    assert_eq!(counter(&h, "would_deny"), 3);
    assert_eq!(counter(&h, "denied"), 0);
}
