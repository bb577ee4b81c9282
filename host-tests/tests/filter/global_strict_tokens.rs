//! Strict global mode for token budgets (README "Global mode", "Strict mode"): an LLM call
//! admitted by its local budgets is held at its last request event while one `ShouldRateLimit`
//! asks the service for the same holds (plain check, all or nothing); OK lets it go on, with the
//! global numbers; OVER_LIMIT answers the API's own 429 and gives the local holds back; no usable
//! answer follows `on_unavailable`. The settlement's correction (`tollgate.refund` = what the
//! check reserved, `op=sync`, `hits_addend` = the real charge) goes out with the next sync round.

use std::time::Duration;

use host_tests::{Action, Harness, StreamRecord};
use policy_core::global::proto::{
    DescriptorStatus, Duration as PbDuration, RateLimitRequest, RateLimitResponse,
};
use prost::Message;

use crate::support::tollgate_with;

const UNAVAILABLE: u32 = 14;
const OK: i32 = 1;
const OVER_LIMIT: i32 = 2;

/// One strict tier with a budget of 100,000 tokens a day (0.864 s a token), `on_unavailable` =
/// `fallback`, settlements sent every second.
fn policy(fallback: &str) -> String {
    format!(
        r#"{{"global":{{"cluster":"tollgate-sync","mode":"strict","timeout_ms":300,
            "sync_interval_ms":1000,"on_unavailable":"{fallback}"}},
          "tiers":[{{"name":"llm","identity":{{"header":"x-user-id"}},
            "tokens":[{{"tokens":100000,"per":"day"}}]}}]}}"#
    )
}

const BODY: &str = r#"{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;
const ANSWER: &str = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#;

/// Every pending callout of every worker: (worker, token, request).
fn calls(h: &Harness) -> Vec<(usize, u32, RateLimitRequest)> {
    (0..h.worker_count())
        .flat_map(|w| {
            h.worker(w)
                .unwrap()
                .pending_grpc_callouts()
                .into_iter()
                .map(move |c| {
                    assert_eq!(
                        (c.service.as_str(), c.method.as_str()),
                        (
                            "envoy.service.ratelimit.v3.RateLimitService",
                            "ShouldRateLimit"
                        )
                    );
                    let request = RateLimitRequest::decode(c.messages[0].0.as_slice()).unwrap();
                    (w, c.token, request)
                })
        })
        .collect()
}

fn entries(request: &RateLimitRequest) -> Vec<(String, String)> {
    request.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

fn hits(request: &RateLimitRequest) -> u64 {
    request.descriptors[0].hits_addend.map_or(0, |h| h.value)
}

fn answer(code: i32, remaining: u32, until_full: Duration) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code,
        statuses: vec![DescriptorStatus {
            code,
            current_limit: None,
            limit_remaining: remaining,
            duration_until_reset: Some(PbDuration {
                seconds: until_full.as_secs() as i64,
                nanos: until_full.subsec_nanos() as i32,
            }),
        }],
    }
    .encode_to_vec()
}

fn counter(h: &Harness, name: &str) -> i64 {
    h.metrics()
        .value(&format!("tollgate.llm.{name}"))
        .unwrap_or_default()
}

/// A chat call's request on worker 0, up to its check: the stream, the check's token and
/// request. Its headers go on; its body (held whole by Envoy) waits for the answer.
fn held_call<'h>(h: &'h Harness, user: &str) -> (host_tests::Stream<'h>, u32, RateLimitRequest) {
    let mut s = h.stream(0).unwrap();
    let head = [
        (":method", "POST".to_string()),
        (":path", "/v1/chat/completions".to_string()),
        ("x-user-id", user.to_string()),
        ("content-type", "application/json".to_string()),
        ("content-length", BODY.len().to_string()),
    ];
    assert_eq!(
        s.request_headers(head.as_slice(), false).unwrap(),
        Action::Continue
    );
    assert!(calls(h).is_empty(), "no check before the tokens are known");
    assert_eq!(
        s.request_body(BODY.as_bytes(), true).unwrap(),
        Action::Pause
    );
    let mut all = calls(h);
    assert_eq!(all.len(), 1, "one check");
    let (_, token, request) = all.remove(0);
    (s, token, request)
}

/// Answers the call's response: 13 tokens used.
fn respond(mut s: host_tests::Stream<'_>) -> StreamRecord {
    s.response_headers(
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    s.response_body(ANSWER.as_bytes(), true).unwrap();
    s.finish().unwrap()
}

#[test]
fn a_call_is_held_for_its_reservation_and_its_settlement_is_sent_with_the_refund() {
    let h = tollgate_with(2, &policy("deny"));
    let (s, token, check) = held_call(&h, "alice");
    // One descriptor: the budget, the caller's hash (never the raw id), the rate, the local
    // hold as the cost, plain RLS semantics.
    let e = entries(&check);
    assert_eq!(
        e[..2],
        [
            ("tier".into(), "llm".into()),
            ("budget".into(), "llm-tokens-day".into())
        ]
    );
    assert_eq!(e[2].0, "id");
    assert!(
        !e.iter()
            .any(|(k, v)| k.starts_with("tollgate.") || v.contains("alice")),
        "{e:?}"
    );
    let limit = check.descriptors[0].limit.unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (100_000, 4)); // 4 = DAY
    let reserved = hits(&check);
    assert!(reserved > 500, "max_tokens plus the prompt: {reserved}");
    let record = s.record().unwrap();
    assert!(record.continued.is_empty(), "held until the answer");

    // OK: 12,345 left globally (other replicas spent the rest).
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OK, 12_345, Duration::from_secs(75_734)))
        .unwrap();
    let record = respond(s);
    assert_eq!(record.continued.len(), 1, "resumed once");
    assert!(record.local_reply.is_none());
    let response = record.response_headers.unwrap();
    let shown: Vec<&[u8]> = response
        .iter()
        .filter(|(_, v)| *v == b"12345")
        .map(|(k, _)| k)
        .collect();
    assert!(
        !shown.is_empty(),
        "the global budget in the headers: {response:?}"
    );

    // The next round carries the correction: give back the reservation, add the real 13.
    h.advance(Duration::from_secs(2)).unwrap();
    let mut rounds = calls(&h);
    assert_eq!(rounds.len(), 1, "one round");
    let (worker, token, round) = rounds.remove(0);
    let e = entries(&round);
    assert_eq!(e[..3], entries(&check)[..3], "the same bucket as the check");
    assert_eq!(
        e[3..5],
        [
            ("tollgate.op".into(), "sync".into()),
            ("tollgate.refund".into(), reserved.to_string())
        ]
    );
    // The round's id (sent once per round, on its first descriptor), then nothing else.
    assert_eq!(e.len(), 6, "{e:?}");
    assert_eq!(e[5].0, "tollgate.round");
    assert_eq!(hits(&round), 13);
    // Answered, nothing more is sent.
    h.worker(worker)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OK, 0, Duration::from_secs(60)))
        .unwrap();
    h.advance(Duration::from_secs(2)).unwrap();
    assert!(calls(&h).is_empty());
    assert_eq!(counter(&h, "global_checks"), 1);
    assert_eq!(counter(&h, "allowed"), 1);
    assert_eq!(counter(&h, "tokens_charged"), 13);
}

#[test]
fn over_limit_is_the_apis_own_429_and_nothing_is_settled_globally() {
    let h = tollgate_with(1, &policy("local"));
    let (s, token, check) = held_call(&h, "bob");
    let reserved = hits(&check);
    // Spent elsewhere: 100 left, full again in 86,313.6 s (100 tokens short of full): the call's
    // tokens fit once `reserved - 100` more are back, at 0.864 s each.
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(
            token,
            0,
            &answer(OVER_LIMIT, 100, Duration::from_millis(86_313_600)),
        )
        .unwrap();
    let record = s.finish().unwrap();
    let reply = record.local_reply.expect("refused");
    assert_eq!(reply.status, 429);
    assert!(record.continued.is_empty());
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body["error"]["code"], "rate_limit_exceeded",
        "OpenAI's format: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("for tokens in tier llm (policy llm-tokens-day)"),
        "{message}"
    );
    let wait_ms = (reserved - 100) * 864;
    assert_eq!(
        reply.headers.get("retry-after"),
        Some(wait_ms.div_ceil(1000).to_string().as_str())
    );
    h.advance(Duration::from_secs(3)).unwrap();
    assert!(
        calls(&h).is_empty(),
        "refused: nothing reserved, nothing to settle"
    );
    assert_eq!(counter(&h, "denied"), 1);
    assert_eq!(counter(&h, "global_over_limit"), 1);
    assert_eq!(counter(&h, "allowed"), 0);
    // The local hold was given back and the answer is not folded into the local budget (it
    // may hold other replicas' reservations in flight): the next call asks the service again,
    // for the same reservation, and goes on when it fits.
    let (s, token, again) = held_call(&h, "bob");
    assert_eq!(hits(&again), reserved);
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OK, 10, Duration::from_secs(86_391)))
        .unwrap();
    let record = respond(s);
    assert!(record.local_reply.is_none());
    assert_eq!(record.continued.len(), 1);
}

#[test]
fn on_unavailable_deny_gives_the_local_holds_back_and_local_keeps_the_local_admission() {
    // deny: 503, and the local hold is given back (the next call finds the budget whole).
    let h = tollgate_with(1, &policy("deny"));
    for _ in 0..3 {
        let (s, token, _) = held_call(&h, "carol");
        h.worker(0)
            .unwrap()
            .deliver_grpc_reply(token, UNAVAILABLE, b"")
            .unwrap();
        let record = s.finish().unwrap();
        assert_eq!(record.local_reply.expect("refused").status, 503);
    }
    h.advance(Duration::from_secs(3)).unwrap();
    assert!(
        calls(&h).is_empty(),
        "no check succeeded: nothing to settle"
    );
    assert_eq!(counter(&h, "global_unavailable"), 3);
    assert_eq!(counter(&h, "tokens_charged"), 0);

    // local: admitted on the local budget and settled locally only.
    let h = tollgate_with(1, &policy("local"));
    let (s, token, _) = held_call(&h, "dave");
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(token, 4, b"") // DEADLINE_EXCEEDED
        .unwrap();
    let record = respond(s);
    assert!(record.local_reply.is_none());
    assert_eq!(record.continued.len(), 1);
    h.advance(Duration::from_secs(3)).unwrap();
    assert!(
        calls(&h).is_empty(),
        "its check failed: no global settlement"
    );
    assert_eq!(counter(&h, "global_unavailable"), 1);
    assert_eq!(counter(&h, "allowed"), 1);
    assert_eq!(counter(&h, "tokens_charged"), 13);
}
