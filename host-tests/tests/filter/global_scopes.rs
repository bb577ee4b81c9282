//! Scopes on global tiers (README "Scopes", "Global mode"): in strict mode the check asks the
//! user's bucket and the team's together, so a team spent by another replica refuses a member
//! who still has room of his own, and a request without its team is refused with 400 before any
//! call; in sync mode the round carries the team's bucket (its own descriptor, `scope` entry,
//! hashed id) with every member's cells summed, and its answer refuses the whole team here.

use std::time::Duration;

use host_tests::{Action, GrpcCallout, Harness};
use policy_core::global::proto::{
    DescriptorStatus, Duration as PbDuration, RateLimitRequest, RateLimitResponse,
};
use prost::Message;

use crate::support::tollgate_with;

const OK: i32 = 1;
const OVER_LIMIT: i32 = 2;

/// Each user 10 requests a minute, each team (`x-team-id`) 3, in `mode` (`"strict"` or
/// `"sync"`, spliced into the `global` section).
fn policy(mode: &str) -> String {
    format!(
        r#"{{"hash_secret":"s","global":{{"cluster":"tollgate-sync","mode":{mode},
            "sync_interval_ms":1000}},
          "tiers":[{{"name":"members","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":10,"per":"minute","name":"user"}},
                      {{"requests":3,"per":"minute","name":"team","scope":{{"header":"x-team-id"}}}}]}}]}}"#
    )
}

fn headers(user: &str, team: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![(":path", "/api".into()), ("x-user-id", user.into())];
    h.extend(team.map(|t| ("x-team-id", t.to_string())));
    h
}

fn calls(h: &Harness) -> Vec<(usize, GrpcCallout)> {
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

/// The one call in flight: its worker, token and request.
fn the_call(h: &Harness) -> (usize, u32, RateLimitRequest) {
    let all = calls(h);
    assert_eq!(all.len(), 1, "{all:?}");
    let (worker, call) = all.into_iter().next().unwrap();
    let request = RateLimitRequest::decode(call.messages[0].0.as_slice()).unwrap();
    (worker, call.token, request)
}

/// Each descriptor's entries as `key=value`.
fn entries(request: &RateLimitRequest) -> Vec<Vec<String>> {
    request
        .descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| format!("{}={}", e.key, e.value))
                .collect()
        })
        .collect()
}

fn status(code: i32, remaining: u32, until_full: Duration) -> DescriptorStatus {
    DescriptorStatus {
        code,
        current_limit: None,
        limit_remaining: remaining,
        duration_until_reset: Some(PbDuration {
            seconds: until_full.as_secs() as i64,
            nanos: until_full.subsec_nanos() as i32,
        }),
    }
}

fn answer(overall: i32, statuses: Vec<DescriptorStatus>) -> Vec<u8> {
    RateLimitResponse {
        overall_code: overall,
        statuses,
    }
    .encode_to_vec()
}

#[test]
fn strict_a_team_spent_by_another_replica_refuses_a_member_with_room_of_his_own() {
    let h = tollgate_with(1, &policy(r#""strict","on_unavailable":"deny""#));
    let mut s = h.stream(0).unwrap();
    let alice = headers("alice", Some("alice"));
    assert_eq!(
        s.request_headers(alice.as_slice(), true).unwrap(),
        Action::Pause
    );
    let (_, token, request) = the_call(&h);
    let e = entries(&request);
    assert_eq!(
        e.len(),
        2,
        "the user's bucket and the team's, in one check: {e:?}"
    );
    assert_eq!(e[0][..2], ["tier=members", "limit=user"]);
    assert_eq!(e[1][..3], ["tier=members", "limit=team", "scope=x-team-id"]);
    // Hashed ids, never the raw one; a team `alice` is not the user `alice`.
    let id = |d: &[String]| d.iter().find(|x| x.starts_with("id=")).cloned().unwrap();
    assert_ne!(id(&e[0]), id(&e[1]));
    assert!(e.iter().flatten().all(|x| !x.contains("alice")), "{e:?}");
    // The user has 9 left; another replica's members spent the team's 3 (full in 60 s).
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(
            token,
            0,
            &answer(
                OVER_LIMIT,
                vec![
                    status(OK, 9, Duration::from_secs(6)),
                    status(OVER_LIMIT, 0, Duration::from_secs(60)),
                ],
            ),
        )
        .unwrap();
    let reply = s.local_reply().unwrap().expect("refused by the team");
    assert_eq!(reply.status, 429);
    // The team decides: 3 a minute, one back in 20 s.
    assert_eq!(reply.headers.get("retry-after"), Some("20"));
    assert_eq!(reply.headers.get("x-ratelimit-limit"), Some("3"));
    assert_eq!(reply.headers.get("x-ratelimit-remaining"), Some("0"));
    s.finish().unwrap();

    // A member of another team: its own team bucket, admitted.
    let mut s = h.stream(0).unwrap();
    let carol = headers("carol", Some("blue"));
    assert_eq!(
        s.request_headers(carol.as_slice(), true).unwrap(),
        Action::Pause
    );
    let (_, token, request) = the_call(&h);
    let c = entries(&request);
    assert_ne!(id(&c[1]), id(&e[1]), "another team, another bucket");
    h.worker(0)
        .unwrap()
        .deliver_grpc_reply(
            token,
            0,
            &answer(
                OK,
                vec![
                    status(OK, 9, Duration::from_secs(6)),
                    status(OK, 2, Duration::from_secs(20)),
                ],
            ),
        )
        .unwrap();
    assert!(s.local_reply().unwrap().is_none());
    assert_eq!(s.record().unwrap().continued.len(), 1);
    s.finish().unwrap();

    // Without its team: 400 missing_scope, and no call at all.
    let out = h.request(0, &headers("dave", None)).unwrap();
    assert_eq!(out.status(), 400);
    assert!(String::from_utf8_lossy(out.body()).contains("missing_scope"));
    assert!(calls(&h).is_empty());
}

#[test]
fn sync_the_round_carries_the_team_bucket_and_its_answer_refuses_the_whole_team() {
    let h = tollgate_with(2, &policy(r#""sync""#));
    // Two teammates on two workers, and one member of another team: all admitted locally.
    assert!(h
        .request(0, &headers("alice", Some("red")))
        .unwrap()
        .is_continue());
    assert!(h
        .request(1, &headers("bob", Some("red")))
        .unwrap()
        .is_continue());
    assert!(h
        .request(1, &headers("carol", Some("blue")))
        .unwrap()
        .is_continue());
    h.advance(Duration::from_secs(1)).unwrap();
    h.advance(Duration::from_secs(1)).unwrap();
    let (worker, token, request) = the_call(&h);
    let e = entries(&request);
    let hits: Vec<u64> = request
        .descriptors
        .iter()
        .map(|d| d.hits_addend.map_or(0, |h| h.value))
        .collect();
    // Three user buckets (1 each) and two team buckets: red with both teammates' cells.
    let teams: Vec<(usize, &Vec<String>)> = e
        .iter()
        .enumerate()
        .filter(|(_, d)| d.iter().any(|x| x == "scope=x-team-id"))
        .collect();
    assert_eq!((e.len(), teams.len()), (5, 2), "{e:?}");
    let mut team_hits: Vec<u64> = teams.iter().map(|(i, _)| hits[*i]).collect();
    team_hits.sort();
    assert_eq!(team_hits, [1, 2]);
    for (_, d) in &teams {
        assert!(d.contains(&"tollgate.op=sync".to_string()), "{d:?}");
        assert!(d.iter().all(|x| !x.contains("red") && !x.contains("blue")));
    }
    // Globally, red is spent (other replicas' members took the rest): full again in 60 s.
    let statuses = (0..e.len())
        .map(|i| {
            let spent = teams.iter().any(|(t, _)| *t == i) && hits[i] == 2;
            let full_in = if spent { 60 } else { 0 };
            status(OK, 0, Duration::from_secs(full_in))
        })
        .collect();
    h.worker(worker)
        .unwrap()
        .deliver_grpc_reply(token, 0, &answer(OK, statuses))
        .unwrap();
    // Every member of red is refused on every worker, by the team; blue is not.
    for w in 0..2 {
        let out = h.request(w, &headers("dave", Some("red"))).unwrap();
        assert_eq!(out.status(), 429, "worker {w}");
        assert_eq!(out.header("x-ratelimit-limit"), Some("3"));
        assert!(h
            .request(w, &headers("erin", Some("blue")))
            .unwrap()
            .is_continue());
    }
}
