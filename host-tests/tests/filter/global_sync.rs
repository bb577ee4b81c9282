//! Global mode, sync: four workers of one Envoy admit locally, exactly one (the lease holder)
//! sends their summed deltas each interval, and its answer is folded into the table they share.
//! The service is played by the test: it reads the filter's `RateLimitRequest` (policy-core's
//! prost types, themselves checked against Envoy's in `sync/tests/global_messages.rs`) and answers
//! with a chosen `duration_until_reset`.

use std::time::Duration;

use host_tests::{GrpcCallout, Harness};
use policy_core::global::proto::{
    DescriptorStatus, Duration as PbDuration, RateLimitRequest, RateLimitResponse,
};
use prost::Message;

use crate::support::{number, send_as, tollgate_with, users_policy};

const SECOND: Duration = Duration::from_secs(1);

fn global_policy() -> String {
    users_policy(
        100,
        "minute",
        r#""global":{"cluster":"tollgate-sync","sync_interval_ms":1000,"timeout_ms":250},"#,
    )
}

/// Every worker's pending callouts, with the worker that made each.
fn callouts(h: &Harness) -> Vec<(usize, GrpcCallout)> {
    (0..h.worker_count())
        .flat_map(|w| {
            h.worker(w)
                .unwrap()
                .pending_grpc_callouts()
                .into_iter()
                .map(move |c| (w, c))
        })
        .collect()
}

/// The one round on the wire: its worker, token and request.
fn the_round(h: &Harness) -> (usize, u32, RateLimitRequest) {
    let all = callouts(h);
    assert_eq!(all.len(), 1, "exactly one round in flight: {all:?}");
    let (worker, call) = all.into_iter().next().unwrap();
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        (
            "envoy.service.ratelimit.v3.RateLimitService",
            "ShouldRateLimit"
        )
    );
    assert_eq!(call.timeout_ms, Some(250));
    assert!(
        call.upstream.contains("tollgate-sync"),
        "{:?}",
        call.upstream
    );
    let request = RateLimitRequest::decode(call.messages[0].0.as_slice()).unwrap();
    (worker, call.token, request)
}

/// (user's `id` entry, hits) of each descriptor.
fn hits(request: &RateLimitRequest) -> Vec<(String, u64)> {
    request
        .descriptors
        .iter()
        .map(|d| {
            let id = d
                .entries
                .iter()
                .find(|e| e.key == "id")
                .map(|e| e.value.clone())
                .unwrap_or_default();
            (id, d.hits_addend.map_or(0, |h| h.value))
        })
        .collect()
}

fn answer(resets: &[Duration]) -> Vec<u8> {
    RateLimitResponse {
        overall_code: 1,
        statuses: resets
            .iter()
            .map(|r| DescriptorStatus {
                code: 1,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: Some(PbDuration {
                    seconds: r.as_secs() as i64,
                    nanos: r.subsec_nanos() as i32,
                }),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Sends `n` requests as `user` on `worker`, all admitted.
fn admit(h: &Harness, worker: usize, user: &str, n: usize) {
    for _ in 0..n {
        let out = send_as(h, worker, user).unwrap();
        assert!(out.is_continue(), "{out:?}");
    }
}

/// Four workers, traffic on each, then the first two ticks: the lease is taken at the first
/// (no round yet: every worker first hands over its deltas), the round goes out at the second.
fn four_workers_with_traffic() -> Harness {
    let h = tollgate_with(4, &global_policy());
    admit(&h, 0, "alice", 3);
    admit(&h, 1, "alice", 5);
    admit(&h, 2, "alice", 7);
    admit(&h, 3, "alice", 11);
    admit(&h, 3, "bob", 2);
    h.advance(SECOND).unwrap();
    assert!(
        callouts(&h).is_empty(),
        "the new lease holder waits one interval"
    );
    h.advance(SECOND).unwrap();
    h
}

#[test]
fn one_worker_sends_one_batch_per_interval_carrying_every_workers_deltas_summed() {
    let h = four_workers_with_traffic();
    let (_, token, request) = the_round(&h);
    assert_eq!(request.domain, "tollgate");
    let mut sent = hits(&request);
    sent.sort_by_key(|(_, n)| *n);
    assert_eq!(sent.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2, 26]);
    for d in &request.descriptors {
        let entries: Vec<(&str, &str)> = d
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(entries[..2], [("tier", "users"), ("limit", "users")]);
        assert_eq!(entries[3], ("tollgate.op", "sync"));
        assert!(!entries
            .iter()
            .any(|(_, v)| v.contains("alice") || v.contains("bob")));
        let limit = d.limit.unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (100, 2));
    }
    // Nothing more goes out while the round is in flight, whoever ticks.
    let holder = callouts(&h)[0].0;
    h.advance(SECOND).unwrap();
    assert_eq!(callouts(&h).len(), 1);
    // Answered: the next interval has nothing to send (the deltas were delivered).
    h.worker(holder)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(&[SECOND, SECOND]))
        .unwrap();
    h.advance(SECOND).unwrap();
    assert!(callouts(&h).is_empty());
    assert_eq!(h.metrics().value("tollgate.global.sync_rounds"), Some(1));
    assert_eq!(h.metrics().value("tollgate.global.sync_lag_ms"), Some(0));
    assert_eq!(h.metrics().value("tollgate.global.keys_synced"), Some(2));
    assert!(matches!(
        h.metrics().value("tollgate.global.sync_failures"),
        None | Some(0)
    ));
}

#[test]
fn an_answer_is_folded_so_the_next_request_on_any_worker_sees_the_global_state() {
    let h = four_workers_with_traffic();
    let (holder, token, request) = the_round(&h);
    let before = number(&send_as(&h, 2, "alice").unwrap(), "x-ratelimit-remaining");
    // 27 taken here, about 3 refilled in the 2 s since: ~76 left locally.
    assert!((75..=77).contains(&before), "{before}");
    // Globally (with the other replicas) 80 of alice's 100 are taken: full again in 48 s.
    let resets: Vec<Duration> = hits(&request)
        .iter()
        .map(|(_, n)| {
            if *n == 26 {
                Duration::from_secs(48)
            } else {
                Duration::ZERO
            }
        })
        .collect();
    h.worker(holder)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(&resets))
        .unwrap();
    for worker in 0..4 {
        let out = send_as(&h, worker, "alice").unwrap();
        let left = number(&out, "x-ratelimit-remaining");
        // 80 taken globally, then one more per request, whichever worker serves it.
        assert_eq!(left, 19 - worker as u64, "worker {worker}");
    }
    // Bob's answer said "full": his 2 cells have refilled in the 2 s since, and stay so.
    assert_eq!(
        number(&send_as(&h, 1, "bob").unwrap(), "x-ratelimit-remaining"),
        99
    );
    assert_eq!(h.metrics().value("tollgate.global.keys_changed"), Some(1));
}

/// The round's `tollgate.round` id (on its first descriptor).
fn round_id(request: &RateLimitRequest) -> String {
    let ids: Vec<&str> = request
        .descriptors
        .iter()
        .flat_map(|d| &d.entries)
        .filter(|e| e.key == "tollgate.round")
        .map(|e| e.value.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "one round id per round: {request:?}");
    assert!(
        request.descriptors[0]
            .entries
            .iter()
            .any(|e| e.key == "tollgate.round"),
        "on the first descriptor"
    );
    ids[0].to_owned()
}

/// The bytes of the one round on the wire other than `old`'s.
fn round_bytes(h: &Harness, old: Option<u32>) -> Vec<u8> {
    let mut all: Vec<GrpcCallout> = callouts(h)
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| Some(c.token) != old)
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0).messages.remove(0).0
}

#[test]
fn a_failed_round_is_resent_verbatim_with_its_id_and_new_deltas_wait_for_the_next() {
    let h = four_workers_with_traffic();
    let (holder, token, first) = the_round(&h);
    let first_bytes = round_bytes(&h, None);
    let id = round_id(&first);
    // UNAVAILABLE, as Envoy reports a dead cluster (or a service whose Redis timed out: Redis may
    // have applied the batch all the same, which is why it must come back with the same id).
    h.worker(holder)
        .unwrap()
        .deliver_grpc_reply(token, 14, b"no healthy upstream")
        .unwrap();
    admit(&h, 0, "alice", 4);
    h.advance(SECOND).unwrap();
    let (_, token, request) = the_round(&h);
    assert_eq!(
        round_bytes(&h, None),
        first_bytes,
        "the same round, byte for byte: the 4 new ones are not merged into it"
    );
    assert_eq!(round_id(&request), id);
    // A reply that is not a RateLimitResponse fails the round the same way.
    h.worker(holder)
        .unwrap()
        .deliver_grpc_reply(token, 0, b"\xff\xff\xff")
        .unwrap();
    h.advance(SECOND).unwrap();
    let (_, token, request) = the_round(&h);
    assert_eq!(round_bytes(&h, None), first_bytes);
    let mut sent: Vec<u64> = hits(&request).iter().map(|(_, n)| *n).collect();
    sent.sort();
    assert_eq!(sent, [2, 26], "alice's 26 and bob's 2, as first sent");
    assert_eq!(h.metrics().value("tollgate.global.sync_failures"), Some(2));
    // No answer folded, and deltas waiting, since the start 4 s ago.
    assert_eq!(
        h.metrics().value("tollgate.global.sync_lag_ms"),
        Some(4_000)
    );
    let warned = h.all_logs().unwrap().iter().any(|l| {
        l.message.contains("global sync to cluster tollgate-sync")
            && l.message.contains("deltas kept")
    });
    assert!(warned);
    // Answered at last: the next round is a new one, with a new id, carrying only the 4.
    h.worker(holder)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(&[SECOND; 2]))
        .unwrap();
    assert_eq!(h.metrics().value("tollgate.global.sync_rounds"), Some(1));
    h.advance(SECOND).unwrap();
    let (_, _, next) = the_round(&h);
    assert_ne!(round_id(&next), id);
    assert_eq!(hits(&next).iter().map(|(_, n)| *n).collect::<Vec<_>>(), [4]);
}

#[test]
fn a_round_never_answered_is_given_up_and_resent_with_the_same_id() {
    let h = four_workers_with_traffic();
    let (_, first, request) = the_round(&h);
    let bytes = round_bytes(&h, None);
    // No reply at all (not even Envoy's timeout): given up after the timeout and two ticks.
    h.advance(SECOND * 3).unwrap();
    let (_, second, again) = the_round_ignoring(&h, first);
    assert_ne!(first, second);
    assert_eq!(round_id(&again), round_id(&request));
    assert_eq!(round_bytes(&h, Some(first)), bytes);
    assert_eq!(hits(&again).iter().map(|(_, n)| *n).sum::<u64>(), 28);
}

#[test]
fn a_rounds_timeout_grows_with_its_size() {
    let h = tollgate_with(1, &global_policy());
    for i in 0..400 {
        admit(&h, 0, &format!("user-{i}"), 1);
    }
    h.advance(SECOND * 2).unwrap();
    let all = callouts(&h);
    assert_eq!(all.len(), 1, "{all:?}");
    let request = RateLimitRequest::decode(all[0].1.messages[0].0.as_slice()).unwrap();
    assert_eq!(request.descriptors.len(), 400);
    // timeout_ms 250 + 150 µs for each of 400 descriptors.
    assert_eq!(all[0].1.timeout_ms, Some(310));
}

/// The round in flight other than the abandoned `old` one (the host keeps unanswered callouts).
fn the_round_ignoring(h: &Harness, old: u32) -> (usize, u32, RateLimitRequest) {
    let all: Vec<(usize, GrpcCallout)> = callouts(h)
        .into_iter()
        .filter(|(_, c)| c.token != old)
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    let (worker, call) = all.into_iter().next().unwrap();
    let request = RateLimitRequest::decode(call.messages[0].0.as_slice()).unwrap();
    (worker, call.token, request)
}

#[test]
fn the_lease_moves_when_its_holder_stops_ticking() {
    let h = tollgate_with(3, &global_policy());
    h.advance(SECOND).unwrap();
    admit(&h, 1, "carol", 4);
    admit(&h, 2, "carol", 1);
    // Worker 0 holds the lease and stops ticking; the others keep their ticks.
    let tick = |from: usize| {
        for w in from..3 {
            h.worker(w).unwrap().tick().unwrap();
        }
    };
    for _ in 0..2 {
        h.set_time(h.now() + 1_000_000_000);
        tick(1);
        assert!(callouts(&h).is_empty(), "the lease has not lapsed yet");
    }
    // Three ticks without renewal: worker 1 takes over, waits one interval, then sends.
    h.set_time(h.now() + 1_000_000_001);
    tick(1);
    h.set_time(h.now() + 1_000_000_000);
    tick(1);
    let (worker, _, request) = the_round(&h);
    assert_eq!(worker, 1);
    assert_eq!(hits(&request).iter().map(|(_, n)| *n).sum::<u64>(), 5);
    // The old holder ticks again: it lost the lease and sends nothing.
    h.set_time(h.now() + 1_000_000_000);
    tick(0);
    assert_eq!(callouts(&h).len(), 1);
}

#[test]
fn the_request_path_makes_no_extra_host_call_in_sync_mode() {
    let count = |policy: &str| {
        let h = tollgate_with(1, policy);
        admit(&h, 0, "warmup", 1);
        let calls = h.shared().calls();
        let before = calls.snapshot();
        admit(&h, 0, "dave", 5);
        let after = calls.snapshot();
        after
            .iter()
            .map(|(name, n)| (*name, n - before.get(name).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    };
    let local = count(&users_policy(100, "minute", ""));
    let sync = count(&global_policy());
    assert!(!local.is_empty());
    assert_eq!(sync, local, "per-request host calls, local vs sync");
}

#[test]
fn a_policy_whose_global_section_is_wrong_is_refused_with_its_path() {
    let bad = users_policy(
        100,
        "minute",
        r#""global":{"cluster":"tollgate-sync","sync_interval_ms":10},"#,
    );
    let h = Harness::new(crate::support::tollgate())
        .workers(1)
        .start()
        .unwrap();
    let error = h.configure(&bad).unwrap_err().to_string();
    assert!(
        error.contains("global.sync_interval_ms: must be from 50 to 60000"),
        "{error}"
    );
}

#[test]
fn tokens_are_recorded_at_settlement_as_the_real_charge() {
    use host_tests::{Request, Response};
    let policy = r#"{"global":{"cluster":"tollgate-sync"},"tiers":[{"name":"llm",
        "identity":{"header":"x-user-id"},"tokens":[{"tokens":100000,"per":"day"}]}]}"#;
    let h = tollgate_with(2, policy);
    let body = r#"{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;
    let call = Request::new("POST", "/v1/chat/completions")
        .header("x-user-id", "erin")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
        .respond_with(
            Response::ok()
                .header("content-type", "application/json")
                .body_chunk(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#),
        );
    for worker in [0, 1] {
        let out = h.send(worker, &call).unwrap();
        assert!(out.is_continue(), "{out:?}");
    }
    h.advance(SECOND * 2).unwrap();
    let (_, _, request) = the_round(&h);
    assert_eq!(request.descriptors.len(), 1, "one budget, no request limit");
    let d = &request.descriptors[0];
    let entries: Vec<(&str, &str)> = d
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        entries[..2],
        [("tier", "llm"), ("budget", "llm-tokens-day")]
    );
    // 13 tokens a call, twice; not the 500 + prompt each call reserved.
    assert_eq!(d.hits_addend.map(|h| h.value), Some(26));
}
